"""The training loop behind :func:`robustzoo.finetuning.finetune`: epochs, validation, atomic checkpoints.

Everything random comes from three seeded ``torch.Generator`` objects (data order on the CPU,
augmentation and attack starts on the device) whose states go into every checkpoint together with
the model, the optimizer (momentum buffers), the history and the best weights. The learning rate is
a pure function of the step counter (:mod:`robustzoo.schedules`). So a run killed at any moment and
resumed from its last checkpoint repeats exactly what the uninterrupted run would have done.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ._io import terminal
from .attacks import pgd, trades_adv
from .checkpoint import (
    CHECKPOINT_NAME,
    Checkpoint,
    capture_rng,
    pack_optimizer,
    prefixed,
    restore_rng,
    save_checkpoint,
    unpack_optimizer,
)
from .schedules import augment, lr_factor

__all__ = ["Run", "fit", "restore", "validate", "LOSSES", "run_iterations"]

_STATE_KEYS = ("epoch", "step", "history", "best_epoch", "best_value", "bad_epochs")


@dataclass
class Run:
    """Everything one fine-tuning run needs; built and validated by :func:`robustzoo.finetuning.finetune`."""

    model: nn.Module
    forward: Any  # model or torch.compile(model)
    optimizer: torch.optim.Optimizer
    frozen: list[nn.Module]
    loss: str  # a key of LOSSES
    x: torch.Tensor
    y: torch.Tensor
    x_val: torch.Tensor | None
    y_val: torch.Tensor | None
    cfg: dict
    device: torch.device
    generators: dict[str, torch.Generator]
    checkpoint_dir: Path | None = None
    fingerprint: dict = field(default_factory=dict)
    progress: bool = True
    state: dict = field(default_factory=lambda: {"epoch": 0, "step": 0, "history": [], "best_epoch": None,
                                                 "best_value": None, "best_state": None, "bad_epochs": 0})


def _train_mode(run: Run) -> None:
    """Train mode, except frozen parts, which stay in eval so their BN running stats never move."""
    run.model.train()
    for m in run.frozen:
        m.eval()


def _autocast(run: Run):
    return torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.cfg["amp"])


def _attack_args(run: Run) -> dict:
    cfg = run.cfg
    # attack_mode "train" = the paper: attack the model as it is in training (BN batch stats);
    # None leaves frozen parts in eval, which a blanket model.train() would break.
    return dict(eps=cfg["eps"], alpha=cfg["alpha"], steps=cfg["steps"],
                mode=None if cfg["attack_mode"] == "train" else "eval", generator=run.generators["attack"],
                amp=cfg["amp"])


def clean_loss(run: Run, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy on the clean batch."""
    with _autocast(run):
        logits = run.forward(xb).float()
    return F.cross_entropy(logits, yb), logits


def pgd_loss(run: Run, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Madry et al. 2018, as the paper's ``finetune/main.py``: CE on the PGD batch only."""
    f = run.forward
    x_adv = pgd(lambda z: F.cross_entropy(f(z), yb, reduction="none"), xb, model=run.model,
                channels_last=run.cfg["channels_last"], **_attack_args(run))
    with _autocast(run):
        logits = f(x_adv).float()
    return F.cross_entropy(logits, yb), logits


def trades_loss(run: Run, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Zhang et al. 2019: CE(clean) + beta * KL(p_clean || p_adv); accuracy on the adversarial logits."""
    f = run.forward
    x_adv = trades_adv(f, xb, **_attack_args(run))
    with _autocast(run):
        logits, logits_adv = f(xb).float(), f(x_adv).float()
    kl = F.kl_div(F.log_softmax(logits_adv, 1), F.softmax(logits, 1), reduction="batchmean")
    return F.cross_entropy(logits, yb) + run.cfg["beta"] * kl, logits_adv


# loss name (column ``loss`` of robustzoo.finetune_settings.MODES) -> (run, x, y) -> (loss, logits for accuracy)
LOSSES = {"clean": clean_loss, "pgd": pgd_loss, "trades": trades_loss}


def validate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, alpha: float, steps: int,
             batch_size: int, seed: int, device: torch.device, amp: bool = False) -> tuple[float, float | None]:
    """Clean and PGD-``steps`` robust accuracy (percent, eval mode, robust = correct clean AND attacked)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)  # the same starts every epoch: epochs are compared on equal terms
    clean = robust = 0
    was = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
            xb, yb = xb.to(device), yb.to(device)
            with torch.no_grad():
                ok = model(xb).argmax(1) == yb
            clean += int(ok.sum())
            if steps > 0:
                x_adv = pgd(lambda z, yb=yb: F.cross_entropy(model(z), yb, reduction="none"), xb, eps=eps,
                            alpha=alpha, steps=steps, mode=None, generator=gen, amp=amp)
                with torch.no_grad():
                    robust += int((ok & (model(x_adv).argmax(1) == yb)).sum())
    finally:
        for m, training in was:
            m.training = training
    return 100.0 * clean / len(x), (100.0 * robust / len(x) if steps > 0 else None)


def _checkpoint(run: Run) -> None:
    """Write ``checkpoint_dir/ckpt.safetensors``: model, optimizer, RNG states, history, best weights."""
    if run.checkpoint_dir is None:
        return
    s = run.state
    tensors = {f"model/{k}": v for k, v in run.model.state_dict().items()}
    if s["best_state"] is not None:
        tensors.update({f"best/{k}": v for k, v in s["best_state"].items()})
    optim, packed = pack_optimizer(run.optimizer)
    tensors.update(optim)
    tensors.update(capture_rng(run.generators))
    state = {k: s[k] for k in _STATE_KEYS} | {"optimizer": packed, "has_best": s["best_state"] is not None}
    save_checkpoint(run.checkpoint_dir / CHECKPOINT_NAME, tensors, state, run.fingerprint)


def restore(run: Run, ckpt: Checkpoint) -> None:
    """Put a verified checkpoint (:func:`robustzoo.checkpoint.load_checkpoint`) back into ``run``."""
    t, state = ckpt.tensors, ckpt.state
    run.model.load_state_dict(prefixed(t, "model"))
    unpack_optimizer(run.optimizer, t, state["optimizer"])
    restore_rng(run.generators, t)
    run.state = {k: state[k] for k in _STATE_KEYS}
    run.state["best_state"] = prefixed(t, "best") if state["has_best"] else None


def _better(run: Run, value: float) -> bool:
    return run.state["best_value"] is None or value > run.state["best_value"]


def run_iterations(n: int, optimizer: torch.optim.Optimizer, step: Callable[[int], None], *,
                   lr_at: Callable[[int], float], desc: str, live: bool,
                   postfix: Callable[[], str] | None = None, start: int = 0) -> float:
    """The inner loop both trainers share (fine-tuning here, pretraining in ``training/pretrain.py``):
    for each of ``n`` iterations set the learning rate ``lr_at(i)``, then run ``step(i)``, the one
    thing the two loops do differently. A tqdm bar only when ``live`` (a terminal), its text from
    ``postfix()`` every 10 iterations; ``start`` > 0 continues a resumed epoch. Returns the last learning rate."""
    lr = float("nan")
    bar = tqdm(range(start, n), desc=desc, disable=not live, leave=False, initial=start, total=n)
    for i in bar:
        lr = lr_at(i)
        for group in optimizer.param_groups:
            group["lr"] = lr
        step(i)
        if live and postfix is not None and (i % 10 == 0 or i == n - 1):
            bar.set_postfix_str(postfix())
    bar.close()
    return lr


def _step(run: Run, order: torch.Tensor, sums: dict, i: int) -> None:
    """Fine-tuning's step: batch ``i`` of ``order``, augmented on the device, one SGD step on the mode's loss."""
    cfg, n, bs = run.cfg, len(run.x), run.cfg["batch_size"]
    idx = order[i * bs:(i + 1) * bs] if n >= bs else order
    xb, yb = run.x[idx].to(run.device, non_blocking=True), run.y[idx].to(run.device, non_blocking=True)
    if cfg["augment"]:
        xb = augment(xb, run.generators["aug"], padding=cfg["padding"], flip=cfg["flip"])
    if cfg["channels_last"]:
        xb = xb.contiguous(memory_format=torch.channels_last)
    loss, logits = LOSSES[run.loss](run, xb, yb)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    run.state["step"] += 1
    sums["loss"] += loss.detach() * len(yb)
    sums["correct"] += (logits.argmax(1) == yb).sum()
    sums["seen"] += len(yb)


def _running(sums: dict) -> str:  # .item() syncs: only for the live bar
    seen = sums["seen"]
    return (f"mean loss {sums['loss'].item() / seen:.3f}, train acc {100 * sums['correct'].item() / seen:.1f}% "
            f"of the {seen} examples seen this epoch")


def _train_epoch(run: Run, epoch: int, per_epoch: int) -> dict:
    """One epoch through :func:`run_iterations`; the epoch's training row (loss, accuracy, last lr)."""
    cfg, first = run.cfg, run.state["step"]
    _train_mode(run)
    order = torch.randperm(len(run.x), generator=run.generators["data"])
    sums = {"loss": torch.zeros((), device=run.device), "seen": 0,
            "correct": torch.zeros((), device=run.device, dtype=torch.long)}
    lr = run_iterations(
        per_epoch, run.optimizer, functools.partial(_step, run, order, sums),
        lr_at=lambda i: cfg["lr"] * lr_factor(cfg["schedule"], step=first + i, epoch=epoch,
                                              total_steps=per_epoch * cfg["epochs"], milestones=cfg["milestones"],
                                              warmup=cfg["warmup"]),
        desc=f"epoch {epoch + 1}/{cfg['epochs']}", live=run.progress and _terminal(),
        postfix=functools.partial(_running, sums))
    seen = sums["seen"]
    return {"epoch": epoch + 1, "loss": sums["loss"].item() / seen, "train_acc": 100.0 * sums["correct"].item() / seen,
            "val_clean": None, "val_robust": None, "lr": lr}


def fit(run: Run) -> None:
    """Train from ``run.state["epoch"]`` to ``cfg["epochs"]`` (or early stop), checkpointing every epoch."""
    cfg, state = run.cfg, run.state
    per_epoch = max(1, len(run.x) // cfg["batch_size"])  # drop the last partial batch: no 1-sample BN batch
    if cfg["early_stopping"] and state["bad_epochs"] >= cfg["early_stopping"]:
        return  # a resumed run that had already stopped early
    for epoch in range(state["epoch"], cfg["epochs"]):
        t0 = time.perf_counter()
        row = _train_epoch(run, epoch, per_epoch)
        if run.x_val is not None:
            row["val_clean"], row["val_robust"] = validate(
                run.model, run.x_val, run.y_val, eps=cfg["eps"], alpha=cfg["eval_alpha"], steps=cfg["eval_steps"],
                batch_size=max(cfg["batch_size"], 256), seed=cfg["seed"], device=run.device, amp=cfg["amp"])
        row["seconds"] = round(time.perf_counter() - t0, 3)
        state["history"].append(row)
        state["epoch"] = epoch + 1
        value = row[cfg["select"]] if row[cfg["select"]] is not None else row["val_clean"]
        if value is None or _better(run, value):  # no validation data: the last epoch is the best
            state.update(best_epoch=epoch + 1, best_value=value, bad_epochs=0,
                         best_state={k: v.detach().cpu().clone() for k, v in run.model.state_dict().items()})
        else:
            state["bad_epochs"] += 1
        if run.progress:  # one line per epoch, terminal or log file
            tqdm.write(_summary(row, cfg["select"]), file=sys.stdout)
        _checkpoint(run)
        if cfg["early_stopping"] and state["bad_epochs"] >= cfg["early_stopping"]:
            break


def _terminal() -> bool:
    return terminal()  # a module-level name, so tests can pretend to be on a terminal


def _summary(row: dict, select: str) -> str:
    fmt = lambda v: "-" if v is None else f"{v:.2f}"
    return (f"epoch {row['epoch']}: loss {row['loss']:.4f}  train acc (whole epoch) {row['train_acc']:.2f}%  val clean "
            f"{fmt(row['val_clean'])}%  val robust {fmt(row['val_robust'])}%  lr {row['lr']:.4g}  "
            f"({row['seconds']:.1f} s; best by {select})")

