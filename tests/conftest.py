"""Shared fixtures: every test gets its own caches and no network; a loopback Hub on request."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # so tests can `from hubserver import HubServer`

from hubserver import HubServer  # noqa: E402

torch.set_num_threads(1)  # 2 shared cores: parallel BLAS threads only fight each other

_NETWORK_VARS = ("ROBUSTZOO_ENDPOINT", "ROBUSTZOO_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
                 "ROBUSTZOO_DOWNLOAD_TIMEOUT", "HF_HUB_ETAG_TIMEOUT", "HF_HUB_DOWNLOAD_TIMEOUT")


@pytest.fixture(autouse=True)
def _isolate(tmp_path, monkeypatch):
    """Per-test caches under tmp_path; no endpoint or offline switch leaks in from the environment.

    HF_ENDPOINT points at a closed local port so that a test that forgets its endpoint fails fast
    instead of reaching (or waiting for) huggingface.co.
    """
    for var in _NETWORK_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf_home" / "hub"))
    monkeypatch.setenv("ROBUSTZOO_CACHE", str(tmp_path / "robustzoo_cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:  # read once at its import: undo whatever the environment said then
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One BLAS thread per test module (a test may raise it; the next module starts at 1 again)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def hub_server():
    """A fresh loopback Hub (see tests/hubserver.py): ``.endpoint``, ``.add_commit``, ``.inject``, ``.log``."""
    with HubServer() as server:
        yield server


@pytest.fixture
def no_sleep(monkeypatch):
    """Keep retry counts real but skip the backoff sleeps (huggingface_hub's and robustzoo's)."""
    import types

    from huggingface_hub import file_download
    from huggingface_hub.utils import _http

    import robustzoo._download as dl

    sleeps: list[float] = []
    fake = types.SimpleNamespace(sleep=sleeps.append, time=__import__("time").time,
                                 monotonic=__import__("time").monotonic)
    monkeypatch.setattr(_http, "time", fake)
    monkeypatch.setattr(file_download, "time", fake)
    monkeypatch.setattr(dl, "time", fake)
    return sleeps


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> bytes:
    """The bytes of a robustzoo ``model.safetensors`` for a tiny ResNet-18 (width 1/16, ~180 KB)."""
    from robustzoo.models import create_model
    from robustzoo.weights import save_pretrained

    torch.manual_seed(0)
    model = create_model("resnet18", width=0.0625, num_classes=10)
    return save_pretrained(model, tmp_path_factory.mktemp("tiny"), name="tiny").read_bytes()


@pytest.fixture(scope="session")
def fmnist_logistic():
    """A logistic-regression classifier on the first 2,000 embedded Fashion-MNIST training images (real data),
    trained the same way every time (seed 0, Adam, 150 full-batch steps); eval mode, no gradients left."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from robustzoo.fmnist import load_embedded

    torch.manual_seed(0)
    x, y = load_embedded("train")
    x, y = x[:2000], y[:2000]
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(150):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model.eval()
