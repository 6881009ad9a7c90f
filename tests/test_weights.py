"""The weight format: save_pretrained / load_file round trip, strict loading, metadata."""

import json

import pytest
import torch
from safetensors.torch import save_file

import robustzoo
from robustzoo.errors import WeightFormatError
from robustzoo.models import SoftmaxEnsemble, create_model
from robustzoo.weights import load_file, read_metadata, save_pretrained


def _trained_like(model):
    """Randomise weights and BN statistics so a round trip is a real check."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) + 0.1)
    return model


@pytest.mark.parametrize("arch,in_chans,num_classes", [("resnet18", 1, 10), ("resnet50v2", 3, 0)])
def test_round_trip_is_bit_identical(tmp_path, arch, in_chans, num_classes):
    model = _trained_like(create_model(arch, width=0.0625, in_chans=in_chans, num_classes=num_classes)).eval()
    path = save_pretrained(model, tmp_path, name="unit")
    loaded = load_file(tmp_path)
    x = torch.rand(3, in_chans, 32, 32)
    assert torch.equal(model(x), loaded(x))
    assert not loaded.training
    assert path.name == "model.safetensors" and (tmp_path / "config.json").is_file()
    meta, _ = read_metadata(path)
    for key in ("arch", "width", "in_chans", "num_classes", "mean", "std", "name", "robustzoo_version"):
        assert key in meta
    assert meta["name"] == "unit" and json.loads(meta["in_chans"]) == in_chans
    assert loaded.pretrained_meta["name"] == "unit"
    assert json.loads((tmp_path / "config.json").read_text())["arch"] == arch


def test_ensemble_round_trip(tmp_path):
    ens = SoftmaxEnsemble([_trained_like(create_model("resnet18", width=0.0625)) for _ in range(3)]).eval()
    save_pretrained(ens, tmp_path)
    loaded = load_file(tmp_path / "model.safetensors")
    x = torch.rand(2, 3, 32, 32)
    assert isinstance(loaded, SoftmaxEnsemble) and torch.equal(ens(x), loaded(x))


def test_num_classes_swaps_the_head_after_a_strict_load(tmp_path):
    model = _trained_like(create_model("resnet18", width=0.0625, num_classes=0)).eval()
    save_pretrained(model, tmp_path)
    loaded = load_file(tmp_path, num_classes=5)
    assert loaded.num_classes == 5 and loaded(torch.rand(1, 3, 32, 32)).shape == (1, 5)
    assert torch.equal(loaded.conv1.weight, model.conv1.weight)


def test_wrong_shape_file_gives_a_clear_error(tmp_path):
    model = create_model("resnet18", width=0.0625)
    save_pretrained(model, tmp_path)
    meta, _ = read_metadata(tmp_path / "model.safetensors")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["linear.weight"] = torch.zeros(11, model.num_features)
    save_file(state, str(tmp_path / "model.safetensors"), metadata=meta)
    with pytest.raises(WeightFormatError, match=r"linear.weight: shape \[11, 32\]"):
        load_file(tmp_path)


def test_missing_key_is_named(tmp_path):
    model = create_model("resnet18", width=0.0625)
    save_pretrained(model, tmp_path)
    meta, _ = read_metadata(tmp_path / "model.safetensors")
    state = {k: v for k, v in model.state_dict().items() if k != "bn1.running_var"}
    save_file(state, str(tmp_path / "model.safetensors"), metadata=meta)
    with pytest.raises(WeightFormatError, match="missing keys bn1.running_var"):
        load_file(tmp_path)


def test_plain_safetensors_without_robustzoo_metadata_is_refused(tmp_path):
    save_file({"w": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(WeightFormatError, match="not a robustzoo one"):
        load_file(tmp_path / "x.safetensors")


def test_html_page_is_named(tmp_path):
    (tmp_path / "model.safetensors").write_text("<!DOCTYPE html><html><body>Quota exceeded</body></html>")
    with pytest.raises(WeightFormatError, match="HTML page"):
        load_file(tmp_path)


def test_truncated_file_is_named(tmp_path):
    save_pretrained(create_model("resnet18", width=0.0625), tmp_path)
    path = tmp_path / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightFormatError, match="truncated"):
        load_file(path)


def test_save_rejects_non_string_metadata(tmp_path):
    with pytest.raises(TypeError, match="metadata values must be str"):
        save_pretrained(create_model("resnet18", width=0.0625), tmp_path, metadata={"x": 1.0})


def test_exports():
    assert robustzoo.save_pretrained is save_pretrained and robustzoo.load_file is load_file


def test_saved_files_get_normal_permissions(tmp_path):
    import os
    import stat

    path = save_pretrained(create_model("resnet18", width=0.0625), tmp_path)
    umask = os.umask(0)
    os.umask(umask)
    for p in (path, tmp_path / "config.json"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask
