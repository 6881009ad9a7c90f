"""Data for pretraining: uint8 tensors on the device, a seeded held-out split, vectorised augmentation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from training.recipes import Recipe

__all__ = ["synthetic", "load_images", "train_val_split", "augment"]


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


def load_images(recipe: Recipe, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(x uint8 (N, C, H, W), y) on the CPU; named datasets through :func:`robustzoo.data.load_data`."""
    if recipe.dataset.startswith("synthetic-"):
        return synthetic(recipe.dataset, split)
    from robustzoo.data import load_data

    x, y = load_data(recipe.dataset, split=split, root=recipe.data_root or None, in_chans=recipe.in_chans)
    return (x * 255).round().to(torch.uint8), y  # 8-bit datasets: exact, and 4x less device memory


def train_val_split(recipe: Recipe, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded shuffle of the training set; the first ``val_fraction`` is held out (paper: 5k of 50k)."""
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(recipe.seed))
    if recipe.subset:
        idx = idx[: recipe.subset]
    n_val = max(1, round(recipe.val_fraction * len(idx)))
    return idx[n_val:], idx[:n_val]


def augment(x: torch.Tensor, gen: torch.Generator, pad: int, flip: bool) -> torch.Tensor:
    """uint8 batch -> float [0, 1] with RandomCrop(size, padding=pad) (zero fill) and horizontal flip."""
    x = x.float().div_(255)
    b, c, h, w = x.shape
    if pad:
        xp = F.pad(x, (pad, pad, pad, pad))
        off = torch.randint(2 * pad + 1, (2, b), generator=gen, device=x.device)
        rows = (off[0][:, None] + torch.arange(h, device=x.device))[:, None, :, None].expand(b, c, h, w + 2 * pad)
        x = xp.gather(2, rows)
        cols = (off[1][:, None] + torch.arange(w, device=x.device))[:, None, None, :].expand(b, c, h, w)
        x = x.gather(3, cols)
    if flip:
        x = torch.where(torch.rand(b, 1, 1, 1, generator=gen, device=x.device) < 0.5, x.flip(3), x)
    return x
