"""Fashion-MNIST loaders: the embedded subset (always) and the full Debian set (when installed)."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest
import torch

from robustzoo import fmnist
from robustzoo.errors import DataError

HAVE_FULL = all((fmnist.DEFAULT_ROOT / f).is_file() for pair in fmnist.FILES.values() for f, _ in pair)


@pytest.mark.parametrize("split,n", [("train", 10_000), ("test", 2_000)])
def test_embedded_subset_loads_balanced(split, n):
    x, y = fmnist.load_embedded(split)
    assert x.shape == (n, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (n,) and y.dtype == torch.int64
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0 and float(x.max()) > 0.99
    counts = torch.bincount(y, minlength=10)
    assert counts.tolist() == [n // 10] * 10
    # the stored arrays hash to the recorded value (load_embedded checks it; recompute independently)
    with np.load(fmnist.embedded_path(split), allow_pickle=False) as npz:
        assert fmnist.content_sha256(npz["images"], npz["labels"]) == fmnist.EMBEDDED[split][2]
        assert np.array_equal(npz["images"].astype(np.float32) / 255, x[:, 0].numpy())


def test_embedded_subset_is_small():
    total = sum(fmnist.embedded_path(s).stat().st_size for s in ("train", "test"))
    assert total < 10e6


def test_embedded_corruption_detected(tmp_path, monkeypatch):
    with np.load(fmnist.embedded_path("test"), allow_pickle=False) as npz:
        images, labels = npz["images"].copy(), npz["labels"].copy()
    images[0, 0, 0] ^= 1  # one flipped bit
    bad = tmp_path / "bad.npz"
    np.savez_compressed(bad, images=images, labels=labels)
    monkeypatch.setattr(fmnist, "embedded_path", lambda split: bad)
    with pytest.raises(DataError, match="sha256"):
        fmnist.load_embedded("test")


def test_bad_split():
    with pytest.raises(DataError, match="split"):
        fmnist.load_embedded("val")


def test_missing_full_set_says_how_to_install(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        fmnist.load_fashion_mnist("test", root=tmp_path)


@pytest.mark.skipif(not HAVE_FULL, reason="dataset-fashion-mnist not installed at /usr/share/datasets/fashion-mnist")
def test_full_test_set_loads_and_contains_subset():
    x, y = fmnist.load_fashion_mnist("test")
    assert x.shape == (10_000, 1, 28, 28) and y.shape == (10_000,)
    assert torch.bincount(y).tolist() == [1000] * 10
    with np.load(fmnist.embedded_path("test"), allow_pickle=False) as npz:
        idx = torch.from_numpy(npz["indices"].astype(np.int64))
    xs, ys = fmnist.load_embedded("test")
    assert torch.equal(x[idx], xs) and torch.equal(y[idx], ys)


@pytest.mark.skipif(not HAVE_FULL, reason="dataset-fashion-mnist not installed at /usr/share/datasets/fashion-mnist")
def test_full_set_checksum_mismatch(tmp_path):
    for f, _ in fmnist.FILES["test"]:
        shutil.copy(fmnist.DEFAULT_ROOT / f, tmp_path / f)
    labels = tmp_path / fmnist.FILES["test"][1][0]
    raw = bytearray(gzip.decompress(labels.read_bytes()))
    raw[-1] = (raw[-1] + 1) % 10
    labels.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DataError, match="sha256"):
        fmnist.load_fashion_mnist("test", root=tmp_path)
