"""Data for pretraining: uint8 tensors on the device and a seeded held-out split (augmentation:
:func:`robustzoo.schedules.augment`, shared with fine-tuning)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from robustzoo.schedules import augment  # noqa: F401  (re-exported: the one augmentation, for old imports)
from training.recipe import DataPart

__all__ = ["synthetic", "load_images", "train_val_split"]


def synthetic(name: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Tiny learnable stand-ins for tests: 10 class templates (8x8 upsampled) + noise, uint8."""
    c, s = (3, 32) if name == "synthetic-cifar" else (1, 28)
    g = torch.Generator().manual_seed(0 if split == "train" else 1)
    n = 512 if split == "train" else 128
    templates = torch.rand(10, c, 4, 4, generator=torch.Generator().manual_seed(123))
    y = torch.randint(10, (n,), generator=g)
    x = F.interpolate(templates[y], size=s, mode="bilinear", align_corners=False)
    x = (x + 0.15 * torch.randn(n, c, s, s, generator=g)).clamp(0, 1)
    return (x * 255).round().to(torch.uint8), y


def load_images(data: DataPart, split: str, in_chans: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x uint8 (N, C, H, W), y) on the CPU; named datasets through :func:`robustzoo.data.load_data`.

    ``data`` is a recipe's data part (or a whole recipe, whose ``in_chans`` is then used)."""
    in_chans = getattr(data, "in_chans", None) if in_chans is None else in_chans
    if data.dataset.startswith("synthetic-"):
        return synthetic(data.dataset, split)
    from robustzoo.data import load_data

    x, y = load_data(data.dataset, split=split, root=data.data_root or None, in_chans=in_chans)
    return (x * 255).round().to(torch.uint8), y  # 8-bit datasets: exact, and 4x less device memory


def train_val_split(data: DataPart, n: int, seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded shuffle of the training set; the first ``val_fraction`` is held out (paper: 5k of 50k).

    ``data`` is a recipe's data part (pass ``seed``) or a whole recipe (its ``seed`` is used)."""
    seed = data.seed if seed is None else seed
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    if data.subset:
        idx = idx[: data.subset]
    n_val = max(1, round(data.val_fraction * len(idx)))
    return idx[n_val:], idx[:n_val]
