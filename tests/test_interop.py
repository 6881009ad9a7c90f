"""torch.hub (hubconf.py, source="local") and timm (`import robustzoo.timm`) build zoo entries,
and load published weights through the same verified loader (here: from the loopback Hub)."""

import dataclasses
import hashlib
import importlib.util
from pathlib import Path

import pytest
import torch

import robustzoo
from robustzoo import registry
from robustzoo.errors import NotPublishedError

REPO_DIR = str(Path(__file__).resolve().parents[1])


@pytest.fixture
def published_rot_adv_r18(monkeypatch, hub_server, tiny_weights):
    """Pretend `rot-adv-r18` is published on the loopback Hub at a pinned commit (tiny weights)."""
    commit = hub_server.add_commit("robustzoo/rot-adv-r18", {"model.safetensors": tiny_weights})
    spec = dataclasses.replace(registry.model_info("rot-adv-r18"), revision=commit,
                               sha256=hashlib.sha256(tiny_weights).hexdigest(), width=0.0625)
    table = dict(registry.REGISTRY, **{"rot-adv-r18": spec})
    monkeypatch.setattr(registry, "REGISTRY", table)
    monkeypatch.setenv("ROBUSTZOO_ENDPOINT", hub_server.endpoint)
    return tiny_weights


def test_torch_hub_local_builds_every_entry_point():
    # torch.hub.list/help only take GitHub repos, so read the entry points the way torch.hub does
    spec = importlib.util.spec_from_file_location("hubconf", Path(REPO_DIR) / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    names = {n for n in dir(hubconf) if callable(getattr(hubconf, n)) and not n.startswith("_")}
    for name in registry.REGISTRY:
        assert name.replace("-", "_") in names
        assert getattr(hubconf, name.replace("-", "_")).__doc__
    assert {"resnet18", "resnet50v2"} <= names
    model = torch.hub.load(REPO_DIR, "rot_adv_r18", source="local", pretrained=False)
    assert model.arch == "resnet18" and model.num_classes == 0
    assert "rotation" in hubconf.rot_adv_r18.__doc__


def test_torch_hub_local_refuses_unpublished_pretrained_weights():
    with pytest.raises(NotPublishedError, match="training/reproduce.py rot-adv-r50"):
        torch.hub.load(REPO_DIR, "rot_adv_r50", source="local")


def test_torch_hub_local_loads_published_weights(published_rot_adv_r18, tmp_path):
    model = torch.hub.load(REPO_DIR, "rot_adv_r18", source="local", progress=False)
    (tmp_path / "model.safetensors").write_bytes(published_rot_adv_r18)
    ref = robustzoo.load_file(tmp_path)
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(model(x), ref(x))


def test_timm_create_model_builds_and_loads(published_rot_adv_r18, tmp_path):
    import timm

    import robustzoo.timm as rz_timm

    assert len(rz_timm.registered) == len(registry.REGISTRY)
    assert "robustzoo_rot_adv_r50" in timm.list_models("robustzoo_*")
    bare = timm.create_model("robustzoo_at_baseline_r50")
    assert bare.arch == "resnet50v2" and bare.num_classes == 10
    model = timm.create_model("robustzoo_rot_adv_r18", pretrained=True, num_classes=3)
    (tmp_path / "model.safetensors").write_bytes(published_rot_adv_r18)
    ref = robustzoo.load_file(tmp_path)
    assert torch.equal(model.conv1.weight, ref.conv1.weight) and model.num_classes == 3
    cfg = timm.models.get_pretrained_cfg("robustzoo_rot_adv_r18")
    assert cfg.input_size == (3, 32, 32) and cfg.classifier == "linear"


def test_timm_unpublished_pretrained_is_a_clear_error():
    import timm

    import robustzoo.timm  # noqa: F401

    with pytest.raises(NotPublishedError, match="not published"):
        timm.create_model("robustzoo_selfie_adv_r50", pretrained=True)


def test_timm_data_config_is_the_real_one_not_imagenet():
    import timm
    from timm.data import create_transform, resolve_data_config

    import robustzoo.timm  # noqa: F401

    model = timm.create_model("robustzoo_at_baseline_r18_w16_fmnist", pretrained=True)
    cfg = resolve_data_config({}, model=model)
    assert cfg["input_size"] == (1, 28, 28) and cfg["mean"] == (0.0,) and cfg["std"] == (1.0,)
    assert model.pretrained_cfg["num_classes"] == 10
    # the pipeline timm builds from it hands the model plain [0, 1] pixels (it normalises inside)
    from PIL import Image

    x = create_transform(**cfg)(Image.new("L", (28, 28), color=255))
    assert x.shape == (1, 28, 28) and float(x.max()) == 1.0
    bare = timm.create_model("robustzoo_rot_adv_r50", num_classes=7)
    assert resolve_data_config({}, model=bare)["input_size"] == (3, 32, 32)
    assert bare.pretrained_cfg["num_classes"] == 7
    listed = timm.list_pretrained("robustzoo_*")
    assert "robustzoo_rot_adv_r18_w8_fmnist" in listed and "robustzoo_rot_adv_r50" not in listed


def test_timm_hf_hub_config_builds_the_model_and_its_real_input_pipeline(hub_server, tmp_path):
    """Issue 12 point 12: `timm.create_model("hf-hub:...")` reads the config.json that save_pretrained writes
    (architecture, arguments, real input size and [0, 1] pipeline); the weights load through robustzoo.load."""
    import json
    import os
    import subprocess
    import sys

    name = "at-baseline-r18-w16-fmnist"
    robustzoo.save_pretrained(robustzoo.load(name), tmp_path / "w", name=name)
    files = {f: (tmp_path / "w" / f).read_bytes() for f in ("model.safetensors", "config.json")}
    hub_server.add_commit("someone/fmnist-at", files)
    code = ("import json, timm, torch, robustzoo, robustzoo.timm\n"
            "from timm.data import resolve_data_config\n"
            "m = timm.create_model('hf-hub:someone/fmnist-at', pretrained=True)\n"
            f"ref = robustzoo.load({name!r})\n"
            "same = all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), ref.state_dict().values()))\n"
            "print(json.dumps({'same': same, 'cfg': resolve_data_config(model=m), 'classes': m.num_classes}))\n")
    env = {**os.environ, "HF_ENDPOINT": hub_server.endpoint, "ROBUSTZOO_ENDPOINT": hub_server.endpoint,
           "HF_HUB_CACHE": str(tmp_path / "hf"), "ROBUSTZOO_CACHE": str(tmp_path / "rz"),
           "HF_HUB_DISABLE_TELEMETRY": "1"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["same"] and got["classes"] == 10
    assert got["cfg"]["input_size"] == [1, 28, 28] and got["cfg"]["mean"] == [0.0] and got["cfg"]["std"] == [1.0]
