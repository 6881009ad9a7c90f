"""Pretraining throughput (images/s) per pretext task x {std, adv} x {ResNet-18, ResNet-50v2}.

Times the exact step of ``training/pretrain.py`` (``train_step``: pretext batch, PGD-10 in train
mode for adv, (clean + adv) / 2, SGD) on random data already on the device, after warm-up, with one
device sync per measurement. Each configuration runs ``--warmup`` steps (cudnn autotuning and, with
``--compile``, the compilation), times one step, then times as many steps as fill ``--seconds``
(at least 2, at most ``--iters``).

Model FLOPs are counted, not modelled: ``torch.utils.flop_counter.FlopCounterMode`` over one task
forward (``F``, per image) and over one whole training step (per image). For the paper's pretext step
the step is ``26F`` with PGD-10 (10 x (forward + input gradient) = 20F, then clean and adversarial
forward + backward = 6F) and ``3F`` without attack; the counted step is printed beside ``F`` so the
multiplier can be checked. Achieved TFLOP/s = counted step FLOPs per image x images/s.

    python benchmarks/train_speed.py                     # GPU: width 1, batch 512, bf16 + channels_last
    python benchmarks/train_speed.py --precision=fp32,bf16-cl --compile=off,on --json=speed.json
    python benchmarks/train_speed.py --width=0.25 --batch=32 --iters=3 --warmup=1   # 2-core CPU

Prints a markdown table (device, torch version, settings) for benchmarks/RESULTS.md. Target on one
H100/H200: >= 5,000 img/s for rotation-adv ResNet-18 at batch 512. The ensemble step (double
back-prop through three tasks) runs at ``--ens_batch`` (default 128; the paper trains it at 32).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from robustzoo.models import ResNet  # noqa: E402
from training.data import augment  # noqa: E402
from training.pretrain import generator, train_step  # noqa: E402
from training.recipes import resolve  # noqa: E402
from training.tasks import PretextModel, make_task  # noqa: E402

TASKS = {"rotation": "rot", "jigsaw": "jig", "selfie": "selfie", "ensemble": "ens"}
ARCHS = {"r18": "resnet18", "r50": "resnet50v2"}
PRECISIONS = ("fp32", "bf16-cl")  # fp32 NCHW (cudnn's TF32 setting as found) | bf16 autocast + channels_last


def configs(tasks, modes=("std", "adv"), archs=("r18", "r50")) -> list[tuple[str, str, str]]:
    """(task, mode, arch) in table order; the paper has no standard ensemble pretraining."""
    return [(t, m, a) for t in tasks for m in modes for a in archs if not (t == "ensemble" and m == "std")]


def _setup(task: str, mode: str, arch: str, *, width: float, batch: int, device: torch.device,
           in_chans: int = 3) -> tuple:
    name = f"{TASKS[task]}-{'adv' if task == 'ensemble' else mode}-{arch}"
    recipe = resolve(name, {"width": float(width), "adversarial": mode == "adv" or task == "ensemble",
                            "batch_size": int(batch), "in_chans": int(in_chans)})
    torch.manual_seed(0)
    bb = ResNet(ARCHS[arch], num_classes=0, in_chans=in_chans, width=width)
    model = PretextModel(bb, make_task(recipe, bb)).to(device)
    return recipe, model


class _GlobalOnly:
    """Stands in for FlopCounterMode's per-module tracker, whose backward hooks make ``torch.autograd.grad``
    (the attacks' input gradients) raise; the total count does not need the per-module split."""

    parents = ("Global",)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


def flop_counter():
    """``FlopCounterMode`` counting totals only (so that it works through the attacks' autograd.grad)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    if hasattr(counter, "mod_tracker"):
        counter.mod_tracker = _GlobalOnly()
    return counter


def count_flops(task: str, mode: str, arch: str, *, width: float, device: torch.device, in_chans: int = 3,
                size: int = 32, batch: int = 4) -> dict:
    """Counted FLOPs per image of one task forward (F) and of one whole fp32 training step."""
    recipe, model = _setup(task, mode, arch, width=width, batch=batch, device=device, in_chans=in_chans)
    g, g_atk = generator(device, 0), generator(device, 1)
    x = torch.rand(batch, in_chans, size, size, generator=g, device=device)
    inputs, targets = model.task.make_batch(x, g)
    with flop_counter() as fwd, torch.no_grad():
        model.train()
        model.task.per_sample(model.backbone, inputs, targets)
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=0.0)
    with flop_counter() as step:
        train_step(model, opt, params, recipe, x, g, g_atk, slice(None), amp=False, cl=False)
    f, s = fwd.get_total_flops() / batch, step.get_total_flops() / batch
    return {"fwd_flops": f, "step_flops": s, "step_over_fwd": s / f if f else None}


def bench(task: str, mode: str, arch: str, *, width: float, batch: int, device: torch.device,
          precision: str = "bf16-cl", compile: bool = False, compile_backend: str = "inductor",
          warmup: int = 3, iters: int = 20, seconds: float = 1.0, in_chans: int = 3, size: int = 32) -> dict:
    """Images/s of ``train_step`` for one configuration (random uint8 data on ``device``)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    recipe, model = _setup(task, mode, arch, width=width, batch=batch, device=device, in_chans=in_chans)
    amp = cl = precision == "bf16-cl"
    if cl:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        model.backbone.compile(backend=compile_backend)
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
    data = torch.randint(0, 256, (batch, in_chans, size, size), dtype=torch.uint8, device=device)
    g, g_atk = generator(device, 0), generator(device, 1)

    def run(n: int) -> float:
        sync(device)
        t0 = time.perf_counter()
        for _ in range(n):
            x = augment(data, g, recipe.crop_pad, recipe.flip)
            train_step(model, opt, params, recipe, x, g, g_atk, slice(None), amp=amp, cl=cl)
        sync(device)
        return time.perf_counter() - t0

    warm = run(warmup) if warmup else 0.0
    one = run(1)
    n = max(2, min(iters, math.ceil(seconds / max(one, 1e-9))))
    t = run(n)
    return {"task": task, "mode": "adv" if task == "ensemble" else mode, "arch": arch, "width": width,
            "batch": batch, "precision": precision, "compile": compile_backend if compile else "off",
            "img_s": n * batch / t, "timed_iters": n, "timed_s": t, "warmup_s": warm, "warmup_iters": warmup}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine() or 'cpu'}, {torch.get_num_threads()} threads"


def main() -> None:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=float, default=1.0 if cuda else 0.25)
    p.add_argument("--batch", type=int, default=512 if cuda else 32, help="global batch (bigger hides launch cost)")
    p.add_argument("--ens_batch", type=int, default=128 if cuda else 16)
    p.add_argument("--iters", type=int, default=20 if cuda else 3, help="at most this many timed steps")
    p.add_argument("--seconds", type=float, default=1.0, help="timed steps fill about this long (at least 2)")
    p.add_argument("--warmup", type=int, default=3 if cuda else 1)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch default)")
    p.add_argument("--precision", default="bf16-cl" if cuda else "fp32", help="comma list of fp32, bf16-cl")
    p.add_argument("--fp32", action="store_true", help="same as --precision=fp32")
    p.add_argument("--compile", default="off", help="comma list of off, on (torch.compile the backbone)")
    p.add_argument("--compile-backend", default="inductor")
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--archs", default="r18,r50")
    p.add_argument("--flops", action="store_true", help="also count FLOPs per image (FlopCounterMode)")
    p.add_argument("--json", default="", help="also write the results here (rewritten after every row)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if cuda else "cpu")
    torch.backends.cudnn.benchmark = True
    precisions = ["fp32"] if args.fp32 else args.precision.split(",")
    compiles = [c == "on" for c in args.compile.split(",")]
    rows = []
    for task, mode, arch in configs(args.tasks.split(","), archs=args.archs.split(",")):
        batch = args.ens_batch if task == "ensemble" else args.batch
        flops = count_flops(task, mode, arch, width=args.width, device=device) if args.flops else {}
        for prec in precisions:
            for comp in compiles:
                try:
                    r = bench(task, mode, arch, width=args.width, batch=batch, device=device, precision=prec,
                              compile=comp, compile_backend=args.compile_backend, warmup=args.warmup,
                              iters=args.iters, seconds=args.seconds)
                except torch.OutOfMemoryError:
                    torch.cuda.empty_cache()
                    r = {"task": task, "mode": mode, "arch": arch, "precision": prec, "img_s": None,
                         "error": "out of memory"}
                r.update(flops)
                if flops and r["img_s"]:
                    r["tflops"] = r["img_s"] * flops["step_flops"] / 1e12
                rows.append(r)
                print(json.dumps(r), file=sys.stderr, flush=True)
                if args.json:
                    Path(args.json).write_text(json.dumps({"device": device_name(device), "torch": torch.__version__,
                                                           "args": vars(args), "rows": rows}, indent=2))
    print(f"\n{device_name(device)}, torch {torch.__version__}, {datetime.date.today()}; width {args.width}, batch "
          f"{args.batch} (ensemble {args.ens_batch}), 32x32; adv = PGD-10 train-mode + (clean + adv) / 2\n")
    print("| task | arch | precision | compile | img/s |\n|---|---|---|---|---|")
    for r in rows:
        v = r["img_s"]
        cell = "OOM" if v is None else (f"{v:,.0f}" if v >= 100 else f"{v:.2g}")
        print(f"| {r['task']}-{r['mode']} | {r['arch']} | {r['precision']} | {r.get('compile', 'off')} | {cell} |")


if __name__ == "__main__":
    main()
