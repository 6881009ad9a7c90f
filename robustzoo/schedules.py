"""Learning-rate schedules and on-device augmentation, shared by fine-tuning and pretraining.

Both are pure functions of their inputs (step counters, a ``torch.Generator``), so a resumed run
recomputes exactly what an uninterrupted one would: there is no scheduler or loader state to save
beyond the generators. Fine-tuning (``robustzoo.trainer``) and pretext pretraining
(``training/pretrain.py``) call the same :func:`lr_factor`, :func:`linear_warmup` and :func:`augment`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["SCHEDULES", "default_milestones", "lr_factor", "linear_warmup", "augment"]

SCHEDULES = ("multistep", "cosine", "onecycle")


def default_milestones(epochs: int) -> list[int]:
    """The paper's decays at epochs 60 and 80 of 100 (``finetune/main.py``), scaled to ``epochs``."""
    ms = sorted({round(0.6 * epochs), round(0.8 * epochs)})
    return [m for m in ms if 0 < m < epochs]


def linear_warmup(step: int, *, start: float, end: float, iters: int) -> float:
    """``start`` -> ``end`` linearly over ``iters`` iterations, then ``end`` (the paper's epoch-0 ramp is
    ``min(0.01 + i * 0.09 / 200, 0.1)``: start 0.01, end 0.1, 200 iterations)."""
    return min(start + step * (end - start) / iters, end)


def lr_factor(schedule: str, *, step: int, epoch: int, total_steps: int, milestones: list[int] = (),
              warmup: int = 0, gamma: float = 0.1, floor: float = 0.0) -> float:
    """Multiplier on the base learning rate at global iteration ``step`` (0-based) in ``epoch`` (0-based).

    * ``"multistep"``: times ``gamma`` at each milestone epoch (paper: 0.1 at 60 and 80).
    * ``"cosine"``: half-cosine from 1 to ``floor`` over ``total_steps`` iterations (pretraining: the
      official code's per-iteration cosine to ``final_lr / lr``).
    * ``"onecycle"``: linear 0 -> 1 over the first 40 % of iterations, then 1 -> 0 (Wong et al. 2020's
      cyclic schedule for short adversarial runs).

    A linear warm-up from 0.1 to 1 over the first ``warmup`` iterations multiplies the result; this
    is the paper's epoch-0 ramp ``lr_i = min(0.01 + i * 0.09 / 200, 0.1)`` for lr 0.1 and warmup 200,
    except that it may continue past the first epoch when an epoch has fewer than 200 iterations.
    """
    if schedule == "multistep":
        factor = gamma ** sum(epoch >= m for m in milestones)
    elif schedule == "cosine":
        factor = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))
    elif schedule == "onecycle":
        t, peak = (step + 1) / max(total_steps, 1), 0.4
        factor = t / peak if t <= peak else max(0.0, (1 - t) / (1 - peak))
    else:
        raise ValueError(f"unknown schedule {schedule!r}")
    if warmup > 0 and step < warmup:
        factor *= linear_warmup(step, start=0.1, end=1.0, iters=warmup)
    return factor


def augment(x: torch.Tensor, generator: torch.Generator | None, padding: int = 4,
            flip: bool = True) -> torch.Tensor:
    """Random crop with zero padding + random horizontal flip on a device batch (B, C, H, W).

    A uint8 batch (pretraining keeps its data as 8-bit images) is first scaled to float [0, 1].

    Same distribution as ``RandomCrop(H, padding=4)`` + ``RandomHorizontalFlip()`` in the paper's
    torchvision pipeline (spec 2.1), but vectorised: one gather for the whole batch, no DataLoader.
    ``generator`` must live on ``x.device``.
    """
    if x.dtype == torch.uint8:
        x = x.float().div_(255)
    b, _, h, w = x.shape
    if padding > 0:
        padded = F.pad(x, (padding, padding, padding, padding))
        off = torch.randint(0, 2 * padding + 1, (2, b), generator=generator, device=x.device)
        rows = (off[0][:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (B, 1, H, 1)
        cols = (off[1][:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (B, 1, 1, W)
        batch = torch.arange(b, device=x.device)[:, None, None, None]
        chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        x = padded[batch, chans, rows, cols]
    if flip:
        mask = torch.rand((b,), generator=generator, device=x.device) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x
