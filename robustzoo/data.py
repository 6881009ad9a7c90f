"""Turn any reasonable data source into checked in-memory tensors ``x`` (float32 [0,1] NCHW), ``y`` (int64).

Every dataset this project uses (CIFAR-10/100, SVHN, STL-10, Fashion-MNIST) fits in memory, and
in-memory tensors let fine-tuning crop, flip and batch on the device without a DataLoader (the
airbench pattern, KellerJordan/cifar10-airbench). All checks run here, *before* any training
or attack starts: empty data, NaN/inf, pixels outside [0, 1] (e.g. 0-255 data), channel count
versus the model, labels out of range for the head.
"""

from __future__ import annotations

import difflib
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .errors import DataError

__all__ = ["DATASETS", "load_data", "check_data", "default_root"]

# name -> number of classes; the torchvision ones need root/download, the Fashion-MNIST ones are local.
DATASETS = {"cifar10": 10, "cifar100": 100, "svhn": 10, "stl10": 10, "fashion-mnist": 10, "fmnist-mini": 10}
_ALIASES = {"fmnist": "fashion-mnist", "fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist",
            "cifar-10": "cifar10", "cifar-100": "cifar100", "stl-10": "stl10"}


def default_root() -> Path:
    """``$ROBUSTZOO_DATA`` or ``~/.cache/robustzoo/data``: where named torchvision datasets live."""
    return Path(os.environ.get("ROBUSTZOO_DATA", Path.home() / ".cache" / "robustzoo" / "data"))


def _to_tensor(x, what: str = "x") -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise DataError(f"{what} must be a tensor or numpy array, got {type(x).__name__}")
    return x


def _images(x) -> torch.Tensor:
    """uint8 -> /255; (N,H,W) -> (N,1,H,W); NHWC (last dim 1 or 3) -> NCHW; float32."""
    x = _to_tensor(x).detach().cpu()
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim != 4:
        raise DataError(f"images must have shape (N, C, H, W) or (N, H, W), got {tuple(x.shape)}")
    if x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.permute(0, 3, 1, 2)  # channels-last input (numpy/PIL convention)
    if x.dtype == torch.uint8:
        return x.float().div_(255)
    if not x.is_floating_point():
        raise DataError(f"images must be uint8 or floating point, got {x.dtype}")
    return x.float().contiguous()


def _labels(y, n: int) -> torch.Tensor:
    y = _to_tensor(y, "y").detach().cpu()
    if y.is_floating_point() or y.dtype == torch.bool:
        if y.is_floating_point() and not torch.equal(y, y.round()):
            raise DataError("labels must be integer class indices; got non-integer floats (one-hot? use argmax)")
    y = y.long().flatten() if y.ndim <= 1 or y.numel() == n else y.long()
    if y.ndim != 1 or len(y) != n:
        raise DataError(f"expected {n} integer labels of shape ({n},), got {tuple(y.shape)}")
    return y


def _from_items(items) -> tuple[torch.Tensor, torch.Tensor]:
    """Collect (image, label) pairs from a Dataset or (x, y) batches from a DataLoader."""
    from torchvision.transforms.functional import pil_to_tensor

    xs, ys = [], []
    for item in items:
        if not (isinstance(item, (tuple, list)) and len(item) >= 2):
            raise DataError(f"each item must be an (image, label) pair, got {type(item).__name__}")
        img, label = item[0], item[1]
        if not isinstance(img, (torch.Tensor, np.ndarray)):  # a PIL image
            img = pil_to_tensor(img)
        xs.append(_to_tensor(img))
        ys.append(torch.as_tensor(label))
    if not xs:
        raise DataError("the dataset is empty")
    batched = xs[0].ndim == 4 or (xs[0].ndim == 3 and ys[0].ndim == 1 and len(ys[0]) == len(xs[0]))
    try:
        x = torch.cat(xs) if batched else torch.stack(xs)
    except RuntimeError as e:
        raise DataError(f"images have different shapes ({tuple(xs[0].shape)} vs others); pass image_size= "
                        "or resize them in a transform") from e
    y = torch.cat([t.flatten() for t in ys]) if batched else torch.stack([t.flatten()[0] for t in ys])
    return x, y


def _named(name: str, split: str, root, download: bool) -> tuple:
    if name in ("fashion-mnist", "fmnist-mini"):
        from . import fmnist

        return fmnist.load_fashion_mnist(split, root) if name == "fashion-mnist" else fmnist.load_embedded(split)
    import torchvision.datasets as tvd

    root = Path(root) if root is not None else default_root()
    try:
        if name in ("cifar10", "cifar100"):
            if split not in ("train", "test"):
                raise DataError(f"{name} has splits 'train' and 'test', got {split!r}")
            cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
            ds = cls(str(root), train=split == "train", download=download)
            return ds.data, np.asarray(ds.targets)
        splits = ("train", "test", "extra") if name == "svhn" else ("train", "test")
        if split not in splits:
            raise DataError(f"{name} has splits {splits}, got {split!r}")
        ds = (tvd.SVHN if name == "svhn" else tvd.STL10)(str(root), split=split, download=download)
        return ds.data, np.asarray(ds.labels)
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted"
        raise DataError(f"{name} ({split}) not found under {root}: pass download=True or root= the folder "
                        f"holding it ({e})") from e


def _image_folder(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision.datasets import ImageFolder

    try:
        ds = ImageFolder(str(path), loader=lambda p: _open_rgb(p))
    except (FileNotFoundError, RuntimeError) as e:
        raise DataError(f"{path} is not an ImageFolder (one sub-folder of images per class): {e}") from e
    return _from_items(ds)


def _open_rgb(path: str):
    from PIL import Image

    with Image.open(path) as img:
        return img.convert("RGB")


def check_data(x: torch.Tensor, y: torch.Tensor, *, in_chans: int | None = None, num_classes: int | None = None,
               what: str = "data") -> tuple[torch.Tensor, torch.Tensor]:
    """Validate ``(x, y)`` and adapt the channel count to the model; returns the (possibly adapted) pair.

    Raises:
        DataError: empty data, NaN/inf, pixels outside [0, 1], channel mismatch that cannot be
            fixed (colour data for a grey-level model), labels outside ``[0, num_classes)``.
    """
    if len(x) == 0:
        raise DataError(f"{what} is empty")
    if len(x) != len(y):
        raise DataError(f"{what}: {len(x)} images but {len(y)} labels")
    if not torch.isfinite(x).all():
        raise DataError(f"{what} contains NaN or inf pixel values")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 1:
        hint = " (looks like 0-255 data: divide by 255)" if hi > 1 and hi <= 255 and lo >= 0 else ""
        hint = hint or (" (looks normalised: robustzoo models normalise inside; pass raw [0, 1] pixels)"
                        if lo < 0 else "")
        raise DataError(f"{what} pixel values must lie in [0, 1], got [{lo:.4g}, {hi:.4g}]{hint}")
    if in_chans == 1 and x.shape[1] == 3 and torch.equal(x[:, :1].expand_as(x), x):
        x = x[:, :1].contiguous()  # grey images stored as RGB (an ImageFolder of PNGs): lossless
    if in_chans is not None and x.shape[1] != in_chans:
        if x.shape[1] == 1:
            warnings.warn(f"{what} is grey-level but the model takes {in_chans} channels: repeating the channel",
                          UserWarning, stacklevel=3)
            x = x.expand(-1, in_chans, -1, -1).contiguous()
        else:
            raise DataError(f"{what} has {x.shape[1]} channels but the model takes {in_chans} "
                            f"(e.g. colour images for a grey-level model); convert the data or use a "
                            f"model with in_chans={x.shape[1]}")
    if len(y) and int(y.min()) < 0:
        raise DataError(f"{what} has negative labels (min {int(y.min())}); unlabeled data cannot be used here")
    if num_classes and int(y.max()) >= num_classes:
        raise DataError(f"{what} has labels up to {int(y.max())} but the model's head has {num_classes} classes; "
                        f"pass num_classes={int(y.max()) + 1} to fine-tuning to swap the head")
    return x, y


def dataset_name(text: object) -> str | None:
    """The canonical name of a named data set (``"fmnist"`` -> ``"fashion-mnist"``), None for anything else
    (an ImageFolder path, a typo). Only such names are recorded in or read from a weight file's metadata."""
    if not isinstance(text, str):
        return None
    key = _ALIASES.get(text.lower(), text.lower())
    return key if key in DATASETS else None


def load_data(
    data,
    *,
    split: str = "train",
    root: str | os.PathLike | None = None,
    download: bool = False,
    n: int | None = None,
    in_chans: int | None = None,
    image_size: int | None = None,
    num_classes: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load ``data`` as checked in-memory tensors.

    Args:
        data: ``(x, y)`` tensors or arrays (uint8 is divided by 255; float must already be in [0, 1]),
            a ``torch.utils.data.Dataset`` of ``(image, label)`` (tensor or PIL images), a
            ``DataLoader``, a dataset name (``"cifar10"``, ``"cifar100"``, ``"svhn"``, ``"stl10"``
            via torchvision; ``"fashion-mnist"`` from the Debian files; ``"fmnist-mini"`` the
            subset shipped with robustzoo) or a path to an ImageFolder directory.
        split: ``"train"`` or ``"test"`` (``"extra"`` for SVHN) when ``data`` is a name.
        root: dataset folder for names (default :func:`default_root`; Fashion-MNIST: its own default).
        download: let torchvision download a named dataset.
        n: keep the first ``n`` samples (deterministic, file order).
        in_chans: the model's input channels: grey-level data is repeated (with a warning) for a
            colour model; colour data for a grey-level model raises.
        image_size: resize (bilinear, antialiased) to ``image_size`` x ``image_size`` when different.
        num_classes: the model's head size; labels must lie in ``[0, num_classes)``.

    Returns:
        ``(x, y)``: float32 (N, C, H, W) in [0, 1] on the CPU, int64 (N,).
    """
    if isinstance(data, (tuple, list)) and len(data) == 2 and not isinstance(data[0], (str, Path)):
        x = _images(data[0])
        y = _labels(data[1], len(x))
    elif isinstance(data, (str, Path)):
        key = dataset_name(str(data))
        if key is not None:
            raw_x, raw_y = _named(key, split, root, download)
        elif Path(data).expanduser().is_dir():
            raw_x, raw_y = _image_folder(Path(data).expanduser())
        else:
            close = difflib.get_close_matches(str(data).lower(), [*DATASETS, *_ALIASES], n=2)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise DataError(f"unknown dataset {str(data)!r}{hint} (names: {', '.join(DATASETS)}; "
                            "or a path to an ImageFolder directory)")
        x = _images(raw_x)
        y = _labels(raw_y, len(x))
    elif isinstance(data, torch.utils.data.Dataset | torch.utils.data.DataLoader):
        raw_x, raw_y = _from_items(data)
        x = _images(raw_x)
        y = _labels(raw_y, len(x))
    else:
        raise DataError(f"cannot load data from {type(data).__name__}: pass (x, y) tensors, a Dataset, a "
                        "DataLoader, a dataset name or an ImageFolder path")
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise DataError(f"n must be an int >= 1, got {n!r}")
        x, y = x[:n], y[:n]
    if image_size is not None and len(x) and tuple(x.shape[-2:]) != (image_size, image_size):
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True,
                          align_corners=False).clamp_(0, 1)
    return check_data(x, y, in_chans=in_chans, num_classes=num_classes)
