"""robustzoo.data.load_data: every accepted source, and every bad input raising DataError."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from robustzoo.data import check_data, load_data
from robustzoo.errors import DataError


def test_tensors_numpy_uint8_nhwc():
    x = torch.rand(10, 3, 8, 8)
    y = torch.arange(10) % 3
    x2, y2 = load_data((x, y))
    assert torch.equal(x2, x) and torch.equal(y2, y) and x2.dtype == torch.float32 and y2.dtype == torch.int64
    u8 = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)  # NHWC uint8 (CIFAR .data)
    x3, _ = load_data((u8, np.arange(6)))
    assert x3.shape == (6, 3, 8, 8)
    assert torch.allclose(x3[2, 1], torch.from_numpy(u8[2, :, :, 1]).float() / 255)
    x4, _ = load_data((torch.rand(5, 8, 8), torch.zeros(5, dtype=torch.long)))  # (N, H, W) grey
    assert x4.shape == (5, 1, 8, 8)


def test_dataset_and_loader_agree():
    x, y = torch.rand(13, 1, 6, 6), torch.randint(0, 10, (13,))
    ds = TensorDataset(x, y)
    for source in (ds, DataLoader(ds, batch_size=4), DataLoader(ds, batch_size=5, shuffle=False)):
        xs, ys = load_data(source)
        assert torch.equal(xs, x) and torch.equal(ys, y)


def test_pil_dataset_and_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    x, y = load_data(tmp_path)
    assert x.shape == (6, 3, 10, 12) and y.tolist() == [0, 0, 0, 1, 1, 1]
    x, _ = load_data(str(tmp_path), image_size=8)
    assert x.shape == (6, 3, 8, 8) and x.min() >= 0 and x.max() <= 1


def test_names_and_n():
    x, y = load_data("fmnist-mini", split="test", n=64)
    assert x.shape == (64, 1, 28, 28) and y.max() <= 9
    x2, _ = load_data("FMNIST", split="test", n=8)  # alias, case-insensitive: the full Debian set
    assert x2.shape == (8, 1, 28, 28)


def test_missing_torchvision_dataset_is_clear(tmp_path):
    with pytest.raises(DataError, match="download=True"):
        load_data("cifar10", root=tmp_path)
    with pytest.raises(DataError, match="splits"):
        load_data("svhn", split="valid", root=tmp_path)


def test_channels_against_model():
    grey = (torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long))
    with pytest.warns(UserWarning, match="repeating"):
        x, _ = load_data(grey, in_chans=3)
    assert x.shape == (4, 3, 8, 8) and torch.equal(x[:, 0], x[:, 2])
    with pytest.raises(DataError, match="3 channels but the model takes 1"):
        load_data((torch.rand(4, 3, 8, 8), torch.zeros(4, dtype=torch.long)), in_chans=1)


@pytest.mark.parametrize(
    "x, y, kw, match",
    [
        (torch.rand(3, 3, 4, 4) * 255, torch.zeros(3), {}, "divide by 255"),
        (torch.rand(3, 3, 4, 4) - 0.5, torch.zeros(3), {}, "normalise inside"),
        (torch.full((3, 3, 4, 4), float("nan")), torch.zeros(3), {}, "NaN"),
        (torch.full((3, 3, 4, 4), float("inf")), torch.zeros(3), {}, "NaN or inf"),
        (torch.rand(0, 3, 4, 4), torch.zeros(0), {}, "empty"),
        (torch.rand(3, 3, 4, 4), torch.tensor([0, 1, 10]), {"num_classes": 10}, "num_classes=11"),
        (torch.rand(3, 3, 4, 4), torch.tensor([0, -1, 1]), {}, "negative labels"),
        (torch.rand(3, 3, 4, 4), torch.tensor([0.5, 1.0, 0.0]), {}, "integer"),
        (torch.rand(3, 3, 4, 4), torch.zeros(4), {}, "labels"),
        (torch.rand(3, 4, 4, 4, 4), torch.zeros(3), {}, "shape"),
        (torch.zeros(3, 3, 4, 4, dtype=torch.int32), torch.zeros(3), {}, "uint8 or floating"),
    ],
)
def test_bad_inputs(x, y, kw, match):
    with pytest.raises(DataError, match=match):
        load_data((x, y), **kw)


def test_unknown_name_suggests():
    with pytest.raises(DataError, match="did you mean cifar-10"):
        load_data("cifar-1O")
    with pytest.raises(DataError, match="cannot load"):
        load_data(42)
    with pytest.raises(DataError, match="n must be"):
        load_data((torch.rand(2, 1, 2, 2), torch.zeros(2)), n=0)


def test_check_data_is_public():
    x, y = check_data(torch.rand(2, 1, 2, 2), torch.tensor([0, 1]), num_classes=2)
    assert x.shape == (2, 1, 2, 2)


def test_grey_images_stored_as_rgb_feed_a_grey_model_and_colour_ones_do_not():
    grey = torch.rand(4, 1, 8, 8)
    x, _ = check_data(grey.expand(-1, 3, -1, -1), torch.zeros(4, dtype=torch.long), in_chans=1)
    assert x.shape == (4, 1, 8, 8) and torch.equal(x, grey)  # lossless: the three channels were one
    colour = grey.expand(-1, 3, -1, -1).clone()
    colour[0, 2, 0, 0] = 1 - colour[0, 2, 0, 0]
    with pytest.raises(DataError, match="3 channels but the model takes 1"):
        check_data(colour, torch.zeros(4, dtype=torch.long), in_chans=1)
