"""Architecture: parameter counts from the spec, timm contract, normalisation inside, ensemble."""

import pytest
import torch

import robustzoo
from robustzoo.models import ResNet, SoftmaxEnsemble, create_model


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_resnet50v2_param_count_matches_spec():
    # official resnetv2.py (TAMU-VITA/Adv-SS-Pretraining): ResNet-50v2 with 10 classes has 23,516,874 parameters
    assert n_params(create_model("resnet50v2", num_classes=10)) == 23_516_874
    assert n_params(create_model("resnet50v2", num_classes=4)) == 23_504_580
    assert n_params(create_model("resnet50v2", num_classes=31)) == 23_559_903


def test_resnet50v2_stage_counts_match_spec():
    m = create_model("resnet50v2")
    counts = {k: n_params(getattr(m, k)) for k in ("layer1", "layer2", "layer3", "layer4")}
    assert counts == {"layer1": 215_424, "layer2": 1_219_072, "layer3": 7_097_344, "layer4": 14_962_688}
    theta_p = n_params(m.conv1) + n_params(m.bn1) + sum(counts[f"layer{i}"] for i in (1, 2, 3))
    assert theta_p == 8_533_696


def test_resnet18v2_param_count():
    assert n_params(create_model("resnet18", num_classes=10)) == 11_173_066


@pytest.mark.parametrize("arch", ["resnet18", "resnet50v2"])
@pytest.mark.parametrize("in_chans,size", [(3, 32), (1, 28)])
def test_timm_contract(arch, in_chans, size):
    m = create_model(arch, width=0.0625, in_chans=in_chans, num_classes=7).eval()
    x = torch.rand(2, in_chans, size, size)
    feats = m.forward_features(x)
    assert feats.shape[:2] == (2, m.num_features)
    assert m.forward_head(feats, pre_logits=True).shape == (2, m.num_features)
    assert torch.equal(m.forward_head(feats), m(x))
    assert m(x).shape == (2, 7)
    m.reset_classifier(0)
    assert m(x).shape == (2, m.num_features) and m.num_classes == 0
    m.reset_classifier(3)
    assert m(x).shape == (2, 3)


def test_normalisation_is_first_module_and_uses_buffers():
    m = create_model("resnet18", width=0.0625).eval()
    assert list(dict(m.named_children()))[0] == "normalize"
    buffers = dict(m.named_buffers())
    assert torch.allclose(buffers["normalize.mean"].flatten(), torch.tensor([0.485, 0.456, 0.406]))
    x = torch.rand(2, 3, 32, 32)
    out = m(x)
    m.normalize.mean.fill_(0.0)  # the buffer is really used
    assert not torch.allclose(out, m(x))


def test_backbone_is_headless():
    m = create_model("resnet18", width=0.125, num_classes=0)
    assert not any("linear" in k for k in m.state_dict())


def test_ensemble_returns_log_of_mean_softmax():
    members = [create_model("resnet18", width=0.0625, num_classes=5).eval() for _ in range(3)]
    ens = SoftmaxEnsemble(members).eval()
    x = torch.rand(4, 3, 32, 32)
    expected = torch.stack([torch.softmax(m(x), 1) for m in members]).mean(0)
    assert torch.allclose(ens(x).exp(), expected, atol=1e-6)
    assert torch.allclose(torch.softmax(ens(x), 1), expected, atol=1e-6)


def test_ensemble_rejects_mismatched_members():
    with pytest.raises(ValueError, match="num_classes"):
        SoftmaxEnsemble([create_model("resnet18", width=0.0625, num_classes=5),
                         create_model("resnet18", width=0.0625, num_classes=3)])


@pytest.mark.parametrize("kwargs,match", [
    (dict(arch="resnet19"), "did you mean resnet18"),
    (dict(arch="resnet18", num_classes=-1), "num_classes"),
    (dict(arch="resnet18", width=0), "width"),
    (dict(arch="resnet18", in_chans=1, mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2)), "mean has 3"),
])
def test_bad_model_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        create_model(**kwargs)


def test_create_model_is_exported():
    assert robustzoo.create_model is create_model
    assert isinstance(robustzoo.resnet18(width=0.0625), ResNet)
