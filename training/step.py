"""The pretext step of ``training/pretrain.py`` and what surrounds it: device set-up, generators, the
learning rate, data-parallel helpers, the pretext evaluation.

Everything random is drawn from generators seeded by (seed, epoch, rank), so an epoch is a pure
function of its index and a killed run resumes exactly (the checkpoint needs no generator state).
"""

from __future__ import annotations

import math
import os

import torch
import torch.distributed as dist

from robustzoo.schedules import augment, linear_warmup, lr_factor
from training.pretext import PretextModel
from training.recipe import AttackPart, OptimPart, Recipe

__all__ = ["setup", "generator", "lr_at", "allreduce_grads", "average_bn_stats", "train_step", "evaluate_pretext"]


# ----------------------------------------------------------------------------------------- setup


def setup(recipe: Recipe) -> tuple[torch.device, int, int]:
    """Device and (rank, world); joins the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available() and recipe.device in ("auto", "cuda")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    if cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    else:
        device = torch.device("cpu" if recipe.device == "auto" else recipe.device)
    return device, rank, world


# ------------------------------------------------------------------------------------------ data


def generator(device: torch.device, *seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(hash(seed) % (2**62))


# ------------------------------------------------------------------------------------- optimiser


def lr_at(optim: OptimPart, epoch: int, it: int, iters: int) -> float:
    """Warm-up in epoch 0 (hard-coded 0.01 -> 0.1 in the paper), else per-iteration cosine to final_lr."""
    if optim.warmup_iters and epoch == 0:
        return linear_warmup(it, start=optim.warmup_from, end=optim.warmup_to, iters=optim.warmup_iters)
    return optim.lr * lr_factor("cosine", step=epoch * iters + it, epoch=epoch, total_steps=optim.epochs * iters,
                                floor=optim.final_lr / optim.lr)


def allreduce_grads(params: list[torch.nn.Parameter], world: int) -> None:
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch._utils._flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat /= world
    for g, v in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
        g.copy_(v)


def average_bn_stats(model: torch.nn.Module, world: int) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            for buf in (m.running_mean, m.running_var):
                dist.all_reduce(buf)
                buf /= world


def train_step(model: PretextModel, opt, params, attack: AttackPart, x, g, g_atk, shard: slice, *, amp: bool,
               cl: bool, world: int = 1):
    """One optimisation step on the augmented global batch ``x`` (this rank's ``shard`` of it).

    Pretext batch -> (adversarial: PGD on the task loss, train mode) -> (clean + adv) / 2 -> SGD.
    Returns the device-side (loss sum, correct sums) of the clean and adversarial passes.
    """
    inputs, targets = model.task.make_batch(x, g, shard)
    if cl:
        inputs = _to_cl(inputs)
    adv = None
    if attack.adversarial:
        adv = model.task.attack(model, inputs, targets, eps=attack.eps, alpha=attack.alpha,
                                steps=attack.attack_steps, mode=attack.attack_mode, generator=g_atk, amp=amp)
    model.train()
    with torch.autocast(x.device.type, torch.bfloat16, enabled=amp):
        loss, clean, robust = model(inputs, targets, adv)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if world > 1:
        allreduce_grads(params, world)
    opt.step()
    return clean, robust




# ------------------------------------------------------------------------------------------ eval


@torch.no_grad()
def evaluate_pretext(model, x_val, attack: AttackPart, *, batch_size: int, seed: int, device, rank: int,
                     world: int, amp: bool, prefix: str = "val") -> dict:
    """Clean (and, for adversarial recipes, PGD-``val_attack_steps`` eval-mode) pretext accuracy on the
    held-out split. Pretext labels of eval batch b come from seed (seed, b): fixed across epochs and ranks."""
    model.eval()
    tsk, bs, n_t = model.task, batch_size, len(model.task.metric_names)
    sums = torch.zeros(2, n_t + 1, device=device)  # rows: clean, robust; last column: count
    for b in range(rank, math.ceil(len(x_val) / bs), world):
        g = generator(device, seed, 999_983, b)
        xb = x_val[b * bs:(b + 1) * bs]
        inputs, targets = tsk.make_batch(augment(xb, g, padding=0, flip=False), g)
        with torch.autocast(device.type, torch.bfloat16, enabled=amp):
            sums[0, :n_t] += tsk.per_sample(model.backbone, inputs, targets)[1].sum(0)
        sums[:, n_t] += len(xb)
        if attack.adversarial:
            with torch.enable_grad():
                adv = tsk.eval_attack(model, inputs, targets, eps=attack.eps, alpha=attack.alpha,
                                      steps=attack.val_attack_steps, mode="eval", generator=g, amp=amp)
            with torch.autocast(device.type, torch.bfloat16, enabled=amp):
                sums[1, :n_t] += tsk.per_sample(model.backbone, adv, targets)[1].sum(0)
    if world > 1:
        dist.all_reduce(sums)
    acc = (sums[:, :n_t] / sums[:, n_t:]).tolist()
    out = {f"{prefix}_clean_{k}": a for k, a in zip(tsk.metric_names, acc[0])}
    if attack.adversarial:
        out.update({f"{prefix}_robust_{k}": a for k, a in zip(tsk.metric_names, acc[1])})
    out[f"{prefix}_score"] = sum(acc[1 if attack.adversarial else 0]) / n_t  # selection: robust if adversarial
    return out


def _to_cl(inputs):
    if isinstance(inputs, tuple):
        return tuple(_to_cl(i) for i in inputs)
    return inputs.contiguous(memory_format=torch.channels_last)
