"""Pretext pretraining (Chen et al., CVPR 2020): one entry point for every task, std or adversarial.

    python training/pretrain.py rot-adv-r50 [--epochs=1 --width=0.25 ...] [--resume]
    torchrun --nproc_per_node=8 training/pretrain.py selfie-adv-r50          # data parallel

Reads top to bottom: setup, data, model, optimiser, loop, eval, save. The run directory
(``--out_dir``, default ``runs/<recipe>``) receives ``recipe.json`` (resolved recipe + git commit),
``metrics.jsonl`` (one line per epoch), ``report.json``, ``ckpt.safetensors`` (atomic, every epoch
and, on one process, every 5 minutes inside an epoch: model, best model, optimiser, epoch, and
inside an epoch the iteration, generator states and running sums; the RNG streams are a function of
(seed, epoch, rank), so a killed run resumes with ``--resume`` to the same result),
``model.safetensors`` + ``config.json`` (the headless backbone, :func:`robustzoo.save_pretrained`)
and ``pretext.safetensors`` (backbone + task head, for pretext evaluation). Only rank 0 writes.

Data live on the device as uint8 tensors; crop-with-padding and flip run there, vectorised. No
host sync inside an epoch but the 5-minute checkpoint: metrics accumulate on the device and are read
once per epoch.
Data parallel: each rank computes its slice of every global batch (labels and augmentation are
drawn for the whole batch from the same seed on every rank), gradients are averaged with one
flat all-reduce after backward (not the DDP wrapper: its reducer does not support the ensemble's
double back-prop or several forward passes per step; overlap would save <4 % of a PGD-10 step),
BatchNorm is per rank by default (``--bn=sync`` for SyncBatchNorm; running stats are averaged
over ranks at each epoch end).

Runtime: GPU hours for the paper's CIFAR-10 recipes (training/README.md models each one); minutes on a CPU
for the tiny Fashion-MNIST recipes. Writes the run folder (checkpoint, metrics.jsonl, the exported
``pretext.safetensors`` backbone and its report) under the recipe's ``out_dir``.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from robustzoo.checkpoint import (  # noqa: E402
    CHECKPOINT_NAME,
    RunLock,
    capture_rng,
    data_digest,
    describe_model,
    load_checkpoint,
    pack_optimizer,
    prefixed,
    restore_rng,
    save_checkpoint,
    tensor_digest,
    unpack_optimizer,
)
from robustzoo.errors import RobustZooError  # noqa: E402
from robustzoo.models import ResNet  # noqa: E402
from robustzoo.schedules import augment  # noqa: E402
from robustzoo.trainer import run_iterations  # noqa: E402
from robustzoo.weights import atomic_write  # noqa: E402
from training.checkpoint import export, git_commit, write_jsonl  # noqa: E402
from training.data import load_images, train_val_split  # noqa: E402
from training.recipes import Recipe, RecipeError, resolve  # noqa: E402
from training.step import (  # noqa: E402,F401  (generator, lr_at, train_step: also imported from here)
    average_bn_stats,
    evaluate_pretext,
    generator,
    lr_at,
    setup,
    train_step,
)
from training.tasks import PretextModel, make_task  # noqa: E402

# ------------------------------------------------------------------------------------------ main


def pretrain(recipe: Recipe, *, resume: bool = False, save_every_s: float = 300) -> dict:
    """Run one pretext pretraining; returns the report (also written to ``report.json``).

    ``resume`` continues from ``<out_dir>/ckpt.safetensors`` when it exists, after verifying it
    (:func:`robustzoo.checkpoint.load_checkpoint`: content hash, then the run's fingerprint: recipe,
    model, starting weights, data). One run per folder: a second process gets a ``CheckpointError``.
    The checkpoint is written after every epoch and, on one process, also every ``save_every_s``
    seconds inside an epoch (0: only after epochs), with the epoch's generator states and running
    sums, so a run killed mid-epoch resumes to exactly the result of an uninterrupted one.
    """
    if recipe.kind != "backbone" or recipe.task == "none":
        raise RecipeError(f"{recipe.name!r} is not a pretext recipe (kind={recipe.kind}); use reproduce.py")
    device, rank, world = setup(recipe)
    out = Path(recipe.out_dir or f"runs/{recipe.name}")
    if recipe.batch_size % world:
        raise RecipeError(f"batch_size {recipe.batch_size} is not divisible by the {world} ranks")
    with RunLock(out) if rank == 0 else contextlib.nullcontext():
        return _pretrain(recipe, resume, out, device, rank, world, save_every_s)


def _build(recipe: Recipe, device, world: int, cl: bool) -> PretextModel:
    m = recipe.model
    torch.manual_seed(recipe.seed)  # same init on every rank
    backbone = ResNet(m.arch, num_classes=0, in_chans=m.in_chans, width=m.width)
    model = PretextModel(backbone, make_task(recipe.pretext, backbone, recipe.seed), freeze_bn=m.bn == "frozen")
    model = model.to(device)
    if m.bn == "sync":
        if world == 1 or device.type != "cuda":
            raise RecipeError("--bn=sync needs CUDA and more than one rank")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cl:
        model = model.to(memory_format=torch.channels_last)
    if recipe.compile:
        model.backbone.compile()
    return model


def _save(path: Path, model, best: dict, opt, state: dict, fingerprint: dict, extra: dict | None = None) -> None:
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"best/{k}": v for k, v in best.items()})
    optim, packed = pack_optimizer(opt)
    tensors.update(optim)
    tensors.update(capture_rng({}))  # torch's global RNG (dropout); the epoch generators are re-seeded
    tensors.update(extra or {})  # mid-epoch: the epoch's generators and running sums
    save_checkpoint(path, tensors, dict(state, optimizer=packed), fingerprint)


def _restore(path: Path, model, opt, fingerprint: dict) -> tuple[dict, dict, dict | None]:
    """Weights, optimiser and RNG back from the checkpoint; returns the best weights, the state, and
    for a mid-epoch checkpoint what the epoch needs to go on (iteration, seconds so far, tensors)."""
    ckpt = load_checkpoint(path, fingerprint)  # verified before anything touches the model
    model.load_state_dict(prefixed(ckpt.tensors, "model"))
    unpack_optimizer(opt, ckpt.tensors, ckpt.state.pop("optimizer"))
    restore_rng({}, ckpt.tensors)
    device = next(model.parameters()).device
    mid = None
    if ckpt.state.get("it"):
        mid = dict(it=ckpt.state["it"], seconds=ckpt.state["seconds"],
                   tensors={k: v for k, v in ckpt.tensors.items() if k.startswith(("rng/", "mid/"))})
    return {k: v.to(device) for k, v in prefixed(ckpt.tensors, "best").items()}, ckpt.state, mid


def _pretrain(recipe: Recipe, resume: bool, out: Path, device, rank: int, world: int, save_every_s: float) -> dict:
    amp = device.type == "cuda" and recipe.bf16
    cl = device.type == "cuda" and recipe.channels_last
    if rank == 0:
        info = dict(recipe=recipe.to_dict(), git_commit=git_commit(), world_size=world, torch=torch.__version__)
        atomic_write(out / "recipe.json", lambda tmp: Path(tmp).write_text(json.dumps(info, indent=2)))

    # data: uint8 on the device, held-out split from the training set
    x_all, _ = load_images(recipe.data, "train", recipe.model.in_chans)
    tr, va = train_val_split(recipe.data, len(x_all), recipe.seed)
    x_train, x_val = x_all[tr].to(device), x_all[va].to(device)
    iters = len(x_train) // recipe.batch_size
    if iters == 0:
        raise RecipeError(f"{len(x_train)} training images < batch_size {recipe.batch_size}")
    local = recipe.batch_size // world
    shard = slice(rank * local, (rank + 1) * local)
    model = _build(recipe, device, world, cl)
    evaluation = dict(batch_size=recipe.eval_batch_size, seed=recipe.seed, device=device, rank=rank, world=world,
                      amp=amp)
    fingerprint = {"recipe": _semantic(json.loads(json.dumps(recipe.to_dict()))), "model": describe_model(
        model.backbone), "weights": tensor_digest(model.state_dict()), "data": data_digest(x_all[tr])}

    # optimiser: SGD over every parameter, weight decay on all of them (as the official code)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.nesterov,
                          weight_decay=recipe.weight_decay)
    start, history, mid = 0, [], None
    best = {k: v.detach().clone() for k, v in model.state_dict().items()}
    best_score, best_epoch = -1.0, -1
    ckpt = out / CHECKPOINT_NAME
    if resume and ckpt.is_file():
        best, state, mid = _restore(ckpt, model, opt, fingerprint)
        start, history, best_score, best_epoch = state["epoch"], state["history"], state["best"], state["best_epoch"]

    # loop
    t_start = time.time()
    for epoch in range(start, recipe.epochs):
        t0 = time.time() - (mid["seconds"] if mid else 0)
        at = dict(epoch=epoch, history=history, best=best_score, best_epoch=best_epoch)

        def save_mid(it: int, gens: dict, stats, at=at, t0=t0, best=best) -> None:  # a checkpoint inside the epoch
            _save(ckpt, model, best, opt, dict(at, it=it, seconds=time.time() - t0), fingerprint,
                  extra={**capture_rng(gens), "mid/stats": stats})

        # DDP runs save per epoch only: every rank's attack generator would have to be gathered
        saver = (save_every_s, save_mid) if save_every_s > 0 and world == 1 else None
        stats, lr = _train_epoch(model, opt, params, recipe, x_train, epoch, shard, rank, world, amp=amp, cl=cl,
                                 mid=mid, saver=saver)
        mid = None

        # eval: one host sync per epoch
        if world > 1:
            dist.all_reduce(stats)
            if recipe.bn == "batch":
                average_bn_stats(model, world)
        row = _epoch_row(model, recipe, epoch, lr, stats, iters, t0)  # the epoch's one host sync
        row.update(evaluate_pretext(model, x_val, recipe.attack, **evaluation))
        row["seconds"] = time.time() - t0
        history.append(row)
        if row["val_score"] > best_score:
            best_score, best_epoch = row["val_score"], epoch
            best = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if rank == 0:
            state = dict(epoch=epoch + 1, history=history, best=best_score, best_epoch=best_epoch)
            _save(ckpt, model, best, opt, state, fingerprint)
            write_jsonl(out / "metrics.jsonl", history)
            if recipe.progress:
                print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)

    report = _test_report(model, best, recipe, device, evaluation, out, world=world, best_epoch=best_epoch,
                          best_score=best_score, history=history, seconds=time.time() - t_start)
    if rank == 0:
        export(model, recipe, out, report)
    if world > 1:
        dist.barrier()
    return report


def _test_report(model, best: dict, recipe: Recipe, device, evaluation: dict, out: Path, *, world: int,
                 best_epoch: int, best_score: float, history: list, seconds: float) -> dict:
    # save: the best epoch's weights (selection on the held-out split), tested once on the test split
    model.load_state_dict(best)
    x_test = load_images(recipe.data, "test", recipe.model.in_chans)[0]
    x_test = (x_test[: recipe.test_n] if recipe.test_n else x_test).to(device)
    test = evaluate_pretext(model, x_test, recipe.attack, **evaluation, prefix="test")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    report = dict(name=recipe.name, task=recipe.task, best_epoch=best_epoch, best_val_score=best_score,
                  test=test, epochs=recipe.epochs, world_size=world, device=name,
                  git_commit=git_commit(), seconds=seconds, recipe=recipe.to_dict(),
                  history=history, out_dir=str(out))
    return report


def _train_epoch(model, opt, params, recipe: Recipe, x_train, epoch: int, shard: slice, rank: int, world: int, *,
                 amp: bool, cl: bool, mid: dict | None = None, saver: tuple | None = None):
    """One epoch of :func:`training.step.train_step` through the loop fine-tuning uses too
    (:func:`robustzoo.trainer.run_iterations`); returns the device-side sums and the last lr.
    ``mid`` (from a mid-epoch checkpoint) continues the epoch at its iteration; ``saver`` =
    (seconds, save) calls ``save(iteration, generators, sums)`` that often."""
    device, bs = x_train.device, recipe.batch_size
    model.train()
    g = generator(device, recipe.seed, epoch)  # augmentation + pretext labels: same on every rank
    g_atk = generator(device, recipe.seed, epoch, rank, 1)  # attack random starts: per rank
    torch.manual_seed(hash((recipe.seed, epoch, rank)) % (2**62))  # dropout (selfie transformer)
    order = torch.randperm(len(x_train), generator=g, device=device)
    stats = torch.zeros(2, len(model.task.metric_names) + 1, device=device)
    iters, first = len(x_train) // bs, 0
    if mid is not None:  # after the order is drawn: the generators as they were at iteration mid["it"]
        first = mid["it"]
        restore_rng({"aug": g, "atk": g_atk}, mid["tensors"])
        stats.copy_(mid["tensors"]["mid/stats"])
    last_save = time.time()

    def step(it: int) -> None:  # pretraining's step: the pretext batch, (PGD), one SGD step
        nonlocal last_save
        x = augment(x_train[order[it * bs:(it + 1) * bs]], g, padding=recipe.crop_pad, flip=recipe.flip)
        clean, robust = train_step(model, opt, params, recipe.attack, x, g, g_atk, shard, amp=amp, cl=cl, world=world)
        stats[0, 0] += clean[0]
        stats[0, 1:] += clean[1]
        if robust is not None:
            stats[1, 0] += robust[0]
            stats[1, 1:] += robust[1]
        if saver and it + 1 < iters and time.time() - last_save >= saver[0]:  # the epoch's end saves anyway
            saver[1](it + 1, {"aug": g, "atk": g_atk}, stats)
            last_save = time.time()

    lr = run_iterations(iters, opt, step, lr_at=lambda it: lr_at(recipe.optim, epoch, it, iters), start=first,
                        desc=f"epoch {epoch}", live=recipe.progress and rank == 0 and sys.stderr.isatty())
    return stats, lr


def _epoch_row(model, recipe: Recipe, epoch: int, lr: float, stats, iters: int, t0: float) -> dict:
    """The epoch's training metrics (the epoch's one host sync) and its throughput."""
    n = iters * recipe.batch_size
    s = (stats / n).tolist()
    row = {"epoch": epoch, "lr": lr, "train_loss": s[0][0],
           **{f"train_clean_{k}": a for k, a in zip(model.task.metric_names, s[0][1:])}}
    if recipe.adversarial:
        row.update({"train_adv_loss": s[1][0],
                    **{f"train_adv_{k}": a for k, a in zip(model.task.metric_names, s[1][1:])}})
    row["images_per_s"] = n / (time.time() - t0)  # training only, validation excluded
    return row


def _semantic(recipe: dict) -> dict:
    """The recipe fields that change the result (a resume may switch the progress bar or the folder)."""
    return {k: v for k, v in recipe.items() if k not in ("progress", "out_dir", "device")}


def main(argv: list[str]) -> None:
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return
    if not argv or argv[0].startswith("-"):
        raise SystemExit("usage: python training/pretrain.py RECIPE [--key=value ...] [--resume]")
    resume = "--resume" in argv
    try:
        recipe = resolve(argv[0], [a for a in argv[1:] if a != "--resume"])
        pretrain(recipe, resume=resume)
    except RobustZooError as e:  # recipe, data and checkpoint errors: one line, no traceback
        raise SystemExit(f"error: {e}") from None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
