"""The converter against checkpoints written by a re-implementation of the official networks.

The reference classes below copy the module names of ``TAMU-VITA/Adv-SS-Pretraining``
(``resnetv2.py``: conv1, bn1, layer1-4 of bottlenecks with bn0/conv1/bn1/conv2/bn2/conv3/shortcut,
linear; ``model_ensemble.py``: blocks/layer4_rotation/...; advertorch's normaliser with 1-D
mean/std buffers), so ``state_dict()`` produces exactly the key names of the released files.
Weights and BN running statistics are random; every conversion is checked by comparing outputs
with the source network (eval mode).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import robustzoo
from robustzoo.converter import convert
from robustzoo.errors import ConversionError
from robustzoo.weights import load_file

torch.set_num_threads(1)
CIFAR_MEAN, CIFAR_STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
W = 0.125  # reduced width: stem 8, planes 8/16/32/64, 256 features


# ----------------------------------------------------------------------------- reference nets
class NormalizeByChannelMeanStd(nn.Module):
    """advertorch.utils.NormalizeByChannelMeanStd: 1-D mean/std buffers."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("std", torch.tensor(std))

    def forward(self, x):
        return (x - self.mean[None, :, None, None]) / self.std[None, :, None, None]


class Bottleneck(nn.Module):
    """resnetv2.py PreActBottleneck (bn0 pre-activation, projection on the pre-activated input)."""

    expansion = 4

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.bn0 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, 4 * planes, 1, bias=False)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != 4 * planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, 4 * planes, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(4 * planes))

    def forward(self, x):
        out = F.relu(self.bn0(x))
        shortcut = self.shortcut(out) if len(self.shortcut) else x
        out = F.relu(self.bn1(self.conv1(out)))
        out = F.relu(self.bn2(self.conv2(out)))
        return self.conv3(out) + shortcut


class ResNet50(nn.Module):
    """resnetv2.py ResNet50 (``stages=3`` gives the selfie patch encoder ``P`` without layer4/linear)."""

    def __init__(self, num_classes=10, width=1.0, stages=4):
        super().__init__()
        self.in_planes = int(64 * width)
        self.conv1 = nn.Conv2d(3, self.in_planes, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.in_planes)
        for i, (p, n) in enumerate(zip((64, 128, 256, 512)[:stages], (3, 4, 6, 3))):
            strides = [1 if i == 0 else 2] + [1] * (n - 1)
            layers = []
            for s in strides:
                layers.append(Bottleneck(self.in_planes, int(p * width), s))
                self.in_planes = 4 * int(p * width)
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
        self.stages = stages
        if stages == 4:
            self.linear = nn.Linear(self.in_planes, num_classes)

    def trunk(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(out)))

    def features(self, x):
        return torch.flatten(F.avg_pool2d(self.layer4(self.trunk(x)), 4), 1)

    def forward(self, x):
        return self.linear(self.features(x)) if self.stages == 4 else self.trunk(x)


class PretrainEnsembleModel(nn.Module):
    """model_ensemble.py: shared blocks (conv1 + layer1-3, no stem BN) and two task branches."""

    def __init__(self, width=1.0):
        super().__init__()
        nets = [ResNet50(width=width) for _ in range(3)]
        self.blocks = nn.Sequential(nets[0].conv1, nets[0].layer1, nets[0].layer2, nets[0].layer3)
        self.layer4_rotation, self.layer4_jigsaw = nets[1].layer4, nets[2].layer4
        self.fc_rotation, self.fc_jigsaw = nn.Linear(nets[0].in_planes, 4), nn.Linear(nets[0].in_planes, 31)
        self.norm = (torch.tensor(IMAGENET_MEAN)[None, :, None, None], torch.tensor(IMAGENET_STD)[None, :, None, None])

    def forward(self, x):
        return self.blocks((x - self.norm[0]) / self.norm[1])

    def branch(self, x, task):
        feat = getattr(self, f"layer4_{task}")(self(x))
        return getattr(self, f"fc_{task}")(torch.flatten(F.adaptive_avg_pool2d(feat, 1), 1))


def randomise(net: nn.Module, seed: int) -> nn.Module:
    """Random BN affine parameters and running statistics (convs/linears keep their random init)."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=g) + 0.5
            m.bias.data = torch.randn(n, generator=g) * 0.1
            m.running_mean = torch.randn(n, generator=g) * 0.1
            m.running_var = torch.rand(n, generator=g) + 0.5
            m.num_batches_tracked.fill_(int(torch.randint(1, 10**6, (1,), generator=g)))
    return net.eval()


def official(num_classes=10, width=W, seed=0, mean=CIFAR_MEAN, std=CIFAR_STD, stages=4) -> nn.Sequential:
    """``nn.Sequential(NormalizeByChannelMeanStd, ResNet50)`` as built by the official scripts."""
    torch.manual_seed(seed)
    return randomise(nn.Sequential(NormalizeByChannelMeanStd(mean, std), ResNet50(num_classes, width, stages)), seed)


def images(n=4):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(123))


def close(a, b):
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def checkpoint(state, **extra):
    return {"epoch": 99, "state_dict": state, "best_prec1": 51.05, **extra}


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- formats
@torch.no_grad()
def test_finetune_full_width_matches_official(tmp_path):
    """One full-width ResNet-50v2 (23.5 M parameters): outputs, normaliser shapes, provenance."""
    net = official(width=1.0, seed=1)
    src = tmp_path / "model_best.pt"
    torch.save(checkpoint(net.state_dict()), src)
    path = convert("finetune", [src], tmp_path / "out", name="ft")
    model = load_file(path)
    assert sum(p.numel() for p in model.parameters()) == 23_516_874
    assert (model.arch, model.width, model.num_classes) == ("resnet50v2", 1.0, 10)
    assert model.normalize.mean.shape == (1, 3, 1, 1)
    close(model.normalize.std.flatten(), torch.tensor(CIFAR_STD))
    close(model(images()), net(images()))
    meta = model.pretrained_meta
    assert meta["source_format"] == "finetune" and meta["name"] == "ft"
    assert json.loads(meta["source_files"]) == ["model_best.pt"]
    assert json.loads(meta["source_sha256"]) == [sha256(src)]
    assert meta["converted_by"] == f"robustzoo {robustzoo.__version__}"
    assert meta["ignored_entries"] == "best_prec1,epoch"


@torch.no_grad()
def test_finetune_bare_state_dict(tmp_path):
    net = official(seed=2)
    torch.save(net.state_dict(), tmp_path / "bare.pt")  # main.py's loader expects bare files (spec 4.4)
    model = load_file(convert("finetune", [tmp_path / "bare.pt"], tmp_path / "out"))
    assert model.width == W
    close(model(images()), net(images()))


@torch.no_grad()
def test_robustbench_three_files_are_the_softmax_ensemble(tmp_path):
    """Chen2020Adversarial: normalise outside, three branches, mean of the softmaxes."""
    nets = [official(width=W, seed=10 + i)[1] for i in range(3)]
    files = [tmp_path / f"Chen2020Adversarial.pt_m{i}.pt" for i in range(3)]
    torch.save(nets[0].state_dict(), files[0])  # raw dict
    torch.save({"state_dict": nets[1].state_dict()}, files[1])  # wrapped
    torch.save({"state_dict": {f"module.{k}": v for k, v in nets[2].state_dict().items()}}, files[2])  # DataParallel
    model = load_file(convert("robustbench", files, tmp_path / "out"))
    assert type(model).__name__ == "SoftmaxEnsemble" and len(model.members) == 3
    x = images()
    z = (x - torch.tensor(IMAGENET_MEAN)[None, :, None, None]) / torch.tensor(IMAGENET_STD)[None, :, None, None]
    probs = torch.stack([F.softmax(n(z), 1) for n in nets]).mean(0)
    close(model(x).exp(), probs)
    assert len(json.loads(model.pretrained_meta["source_sha256"])) == 3


@torch.no_grad()
def test_robustbench_single_file_is_a_classifier(tmp_path):
    net = official(seed=3)[1]
    torch.save(net.state_dict(), tmp_path / "b.pt")
    model = load_file(convert("robustbench", [tmp_path / "b.pt"], tmp_path / "out"))
    z = (images() - torch.tensor(IMAGENET_MEAN)[None, :, None, None]) / torch.tensor(IMAGENET_STD)[None, :, None, None]
    close(model(images()), net(z))


@pytest.mark.parametrize("fmt,classes", [("rotation", 4), ("jigsaw", 31)])
@torch.no_grad()
def test_pretext_checkpoints_with_and_without_head(tmp_path, fmt, classes):
    net = official(num_classes=classes, seed=classes, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    torch.save(checkpoint(net.state_dict()), tmp_path / "best_model.pt")
    pretext = load_file(convert(fmt, [tmp_path / "best_model.pt"], tmp_path / "head", keep_pretext_head=True))
    assert pretext.num_classes == classes
    close(pretext(images()), net(images()))
    backbone = load_file(convert(fmt, [tmp_path / "best_model.pt"], tmp_path / "headless"))
    assert backbone.num_classes == 0 and backbone.pretrained_meta["dropped"] == "1.linear"
    close(backbone(images()), net[1].features(net[0](images())))


@torch.no_grad()
def test_selfie_exports_theta_p_and_a_seeded_layer4(tmp_path):
    p_net = official(seed=5, stages=3)
    selfie_state = {"u0": torch.zeros(1, 1, 8), "at_pool.layer_stack.0.fc.weight": torch.randn(8, 8)}
    optimizer = {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}
    ckpt = {"epoch": 7, "P_state": p_net.state_dict(), "selfie_state": selfie_state, "optimizer": optimizer,
            "best_prec1": 3.0}
    torch.save(ckpt, tmp_path / "selfie.pth.tar")
    model = load_file(convert("selfie", [tmp_path / "selfie.pth.tar"], tmp_path / "a"))
    assert (model.arch, model.num_classes) == ("resnet50v2", 0)
    trunk = model.layer3(model.layer2(model.layer1(F.relu(model.bn1(model.conv1(model.normalize(images())))))))
    close(trunk, p_net(images()))
    meta = model.pretrained_meta
    assert meta["trained_stages"] == "conv1,bn1,layer1,layer2,layer3"
    assert meta["initialised"] == "layer4 (seed 0)" and "selfie_state" in meta["ignored_entries"]
    assert "transformer" in meta["note"]
    again = load_file(convert("selfie", [tmp_path / "selfie.pth.tar"], tmp_path / "b"))
    other = load_file(convert("selfie", [tmp_path / "selfie.pth.tar"], tmp_path / "c", seed=1))
    w = "layer4.0.conv1.weight"
    assert torch.equal(model.state_dict()[w], again.state_dict()[w])
    assert not torch.equal(model.state_dict()[w], other.state_dict()[w])


@pytest.mark.parametrize("branch", ["none", "rotation", "jigsaw"])
@torch.no_grad()
def test_ensemble_pretraining_trunk_and_branches(tmp_path, branch):
    torch.manual_seed(6)
    ens = randomise(PretrainEnsembleModel(width=W), 6)
    ckpt = {"epoch": 149, "selfie_state": {"u0": torch.zeros(1, 1, 8)}, "state_dict": ens.state_dict(),
            "best_prec1": 180.0}
    torch.save(ckpt, tmp_path / "ens.pt")
    model = load_file(convert("ensemble", [tmp_path / "ens.pt"], tmp_path / "out", branch=branch))
    x = images()
    # the trunk has no stem BN-ReLU: compare conv1 -> layer1-3 directly (bn1 is documented as untrained)
    trunk = model.layer3(model.layer2(model.layer1(model.conv1(model.normalize(x)))))
    close(trunk, ens(x))
    bn = model.bn1
    assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and torch.equal(bn.running_var, torch.ones_like(bn.bias))
    meta = model.pretrained_meta
    assert "bn1" in meta["initialised"] and meta["branch"] == branch and "bn1" in meta["note"]
    if branch == "none":
        assert meta["initialised"] == "bn1,layer4 (seed 0)"
        return
    close(model.layer4(trunk), getattr(ens, f"layer4_{branch}")(ens(x)))
    pretext = load_file(convert("ensemble", [tmp_path / "ens.pt"], tmp_path / "h", branch=branch,
                                keep_pretext_head=True))
    trunk = pretext.layer3(pretext.layer2(pretext.layer1(pretext.conv1(pretext.normalize(x)))))
    close(pretext.forward_head(pretext.layer4(trunk)), ens.branch(x, branch))


# ----------------------------------------------------------------------------- refusals
def _saved(tmp_path, mutate, fmt_net=None):
    state = dict((fmt_net or official(seed=8)).state_dict())
    mutate(state)
    torch.save(checkpoint(state), tmp_path / "bad.pt")
    return tmp_path / "bad.pt"


@pytest.mark.parametrize("mutate,needle", [
    (lambda s: s.pop("1.layer2.0.conv1.weight"), "1.layer2.0.conv1.weight"),
    (lambda s: s.pop("0.std"), "0.std"),
    (lambda s: s.pop("1.bn1.num_batches_tracked"), "1.bn1.num_batches_tracked"),
    (lambda s: s.update({"1.layer5.0.conv1.weight": torch.zeros(1)}), "1.layer5.0.conv1.weight"),
    (lambda s: s.update({"1.fc.weight": torch.zeros(1)}), "1.fc.weight"),
    (lambda s: s.update({"1.layer1.0.conv2.weight": torch.zeros(8, 8, 1, 1)}), "1.layer1.0.conv2.weight"),
    (lambda s: s.update({"1.linear.bias": torch.zeros(11)}), "1.linear.bias"),
    (lambda s: s.update({"1.layer3.1.bn0.weight": torch.ones(128, dtype=torch.int64)}), "1.layer3.1.bn0.weight"),
    (lambda s: s.update({"1.layer4.2.bn2.running_var": torch.full((64,), float("nan"))}), "1.layer4.2.bn2"),
    (lambda s: s.update({"0.mean": torch.tensor([0.5, 0.5])}), "normaliser mean"),
    (lambda s: s.update({"1.conv1.weight": torch.zeros(8, 3, 7, 7)}), "3x3"),
    (lambda s: s.update({"1.conv1.weight": torch.zeros(8, 3)}), "1.conv1.weight"),
    (lambda s: s.update({"1.conv1.weight": torch.zeros(64_000, 3, 3, 3)}), "the model needs"),  # width 1000
], ids=["missing", "missing-normaliser", "missing-counter", "unexpected-layer", "unexpected-head", "shape",
        "head-shape", "dtype", "nan", "normaliser-shape", "stem-kernel", "stem-ndim", "huge-stem"])
def test_mismatches_name_the_key(tmp_path, mutate, needle):
    bad = _saved(tmp_path, mutate)
    with pytest.raises(ConversionError, match=needle.replace(".", r"\.")):
        convert("finetune", [bad], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_wrong_format_is_explained(tmp_path):
    src = _saved(tmp_path, lambda s: None)
    with pytest.raises(ConversionError, match="does not look like a 'robustbench' checkpoint"):
        convert("robustbench", [src], tmp_path / "out")
    with pytest.raises(ConversionError, match="rotation head has 4 classes"):
        convert("rotation", [src], tmp_path / "out", keep_pretext_head=True)
    with pytest.raises(ConversionError, match="is this a 'selfie' checkpoint"):
        convert("selfie", [src], tmp_path / "out")


def test_non_tensor_entries_and_garbage_are_refused(tmp_path):
    bad = _saved(tmp_path, lambda s: s.update({"1.conv1.weight": "not a tensor"}))
    with pytest.raises(ConversionError, match="not a tensor"):
        convert("finetune", [bad], tmp_path / "out")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ConversionError, match="not a checkpoint dict"):
        convert("finetune", [tmp_path / "list.pt"], tmp_path / "out")
    (tmp_path / "junk.pt").write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(ConversionError, match=r"not a readable torch checkpoint \(unrecognised data\)"):
        convert("finetune", [tmp_path / "junk.pt"], tmp_path / "out")
    with pytest.raises(ConversionError, match="no checkpoint file"):
        convert("finetune", [tmp_path / "absent.pt"], tmp_path / "out")


@pytest.mark.parametrize("kwargs,needle", [
    (dict(format="onnx"), "unknown format"),
    (dict(format="selfie", keep_pretext_head=True), "keep_pretext_head"),
    (dict(format="finetune", branch="rotation"), "branch"),
    (dict(format="ensemble", keep_pretext_head=True), "without a branch"),
    (dict(format="rotation", n=2), "exactly one file"),
    (dict(format="finetune", n=0), "no source files"),
])
def test_bad_arguments(tmp_path, kwargs, needle):
    n = kwargs.pop("n", 1)
    fmt = kwargs.pop("format")
    with pytest.raises(ConversionError, match=needle):
        convert(fmt, [tmp_path / "x.pt"] * n, tmp_path / "out", **kwargs)


def test_ensemble_members_must_agree(tmp_path):
    torch.save(checkpoint(official(num_classes=10, seed=1).state_dict()), tmp_path / "a.pt")
    torch.save(checkpoint(official(num_classes=7, seed=2).state_dict()), tmp_path / "b.pt")
    with pytest.raises(ConversionError, match="one ensemble"):
        convert("finetune", [tmp_path / "a.pt", tmp_path / "b.pt"], tmp_path / "out")


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor")  # deprecated, but old checkpoints hold them
@pytest.mark.parametrize("poison, needle", [
    ("overflow", "overflow"),  # float64 1e300 became inf after the finiteness check (issue 11, point 8)
    ("negative_var", "negative BatchNorm running variance"),  # NaN outputs
    ("sparse", "sparse"),  # raw NotImplementedError
    ("quantized", "quantized"),
])
@torch.no_grad()
def test_values_that_become_wrong_are_refused_naming_the_key(tmp_path, poison, needle):
    state = dict(official(num_classes=10, seed=3).state_dict())
    key = {"overflow": "1.layer1.0.conv1.weight", "negative_var": "1.layer2.0.bn1.running_var"}.get(poison,
                                                                                               "1.linear.weight")
    t = state[key]
    if poison == "overflow":
        t = t.double()
        t.view(-1)[0] = 1e300
    elif poison == "negative_var":
        t = t.clone()
        t[0] = -0.5
    elif poison == "sparse":
        t = t.to_sparse()
    else:
        t = torch.quantize_per_tensor(t, 0.1, 0, torch.qint8)
    state[key] = t
    torch.save(checkpoint(state), tmp_path / "bad.pt")
    with pytest.raises(ConversionError, match=needle) as e:
        convert("finetune", [tmp_path / "bad.pt"], tmp_path / "out")
    assert key in str(e.value)
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_no_dead_cli_entry_points():
    import robustzoo.converter as c

    assert not hasattr(c, "add_cli_arguments") and not hasattr(c, "cli")  # robustzoo/cli.py calls convert()


def test_package_export_is_the_function():
    """``robustzoo.convert`` is the function in whatever order the package and the module are imported."""
    for code in ("import robustzoo; f = robustzoo.convert; from robustzoo.converter import convert; "
                 "print(f is convert)",
                 "import robustzoo.converter, robustzoo; print(robustzoo.convert is robustzoo.converter.convert)"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert out.stdout.strip() == "True", out.stderr[-2000:]
