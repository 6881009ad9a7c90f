"""Pretraining throughput (images/s) per pretext task x {std, adv} x {ResNet-18, ResNet-50v2}.

Times the exact step of ``training/pretrain.py`` (``train_step``: pretext batch, PGD-10 in train
mode for adv, (clean + adv) / 2, SGD) on random 32x32 data already on the device, after warm-up,
with one device sync per measurement.

    python benchmarks/train_speed.py                     # GPU: width 1, batch 512, bf16, channels_last
    python benchmarks/train_speed.py --width=0.25 --batch=32 --iters=3 --warmup=1   # 2-core CPU

Prints a markdown table (device, torch version, settings) for benchmarks/RESULTS.md. Target on one
H100: >= 5,000 img/s for rotation-adv ResNet-18 (performance_notes.md 2b models ~7,800 at 200 TFLOP/s).
The ensemble step (double back-prop through three tasks) runs at ``--ens_batch`` (default 128; the
paper trains it at 32).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from robustzoo.models import ResNet  # noqa: E402
from training.data import augment  # noqa: E402
from training.pretrain import generator, train_step  # noqa: E402
from training.recipes import resolve  # noqa: E402
from training.tasks import PretextModel, make_task  # noqa: E402

TASKS = {"rotation": "rot", "jigsaw": "jig", "selfie": "selfie", "ensemble": "ens"}


def bench(task: str, mode: str, arch: str, args, device: torch.device) -> float:
    name = f"{TASKS[task]}-{'adv' if task == 'ensemble' else mode}-{arch}"
    batch = args.ens_batch if task == "ensemble" else args.batch
    recipe = replace(resolve(name), width=args.width, adversarial=mode == "adv", batch_size=batch)
    torch.manual_seed(0)
    bb = ResNet(recipe.arch, num_classes=0, width=recipe.width)
    model = PretextModel(bb, make_task(recipe, bb)).to(device)
    amp = cl = device.type == "cuda" and not args.fp32
    if cl:
        model = model.to(memory_format=torch.channels_last)
    if args.compile:
        model.backbone.compile()
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
    data = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8, device=device)
    g, g_atk = generator(device, 0), generator(device, 1)

    def step():
        x = augment(data, g, recipe.crop_pad, recipe.flip)
        train_step(model, opt, params, recipe, x, g, g_atk, slice(None), amp=amp, cl=cl)

    for _ in range(args.warmup):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(args.iters):
        step()
    _sync(device)
    return args.iters * batch / (time.perf_counter() - t0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=float, default=1.0 if cuda else 0.25)
    p.add_argument("--batch", type=int, default=512 if cuda else 32, help="global batch (bigger hides launch cost)")
    p.add_argument("--ens_batch", type=int, default=128 if cuda else 16)
    p.add_argument("--iters", type=int, default=20 if cuda else 3)
    p.add_argument("--warmup", type=int, default=3 if cuda else 1)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch default)")
    p.add_argument("--fp32", action="store_true", help="no bf16 autocast / channels_last on CUDA")
    p.add_argument("--compile", action="store_true", help="torch.compile the backbone (not the ensemble)")
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--json", default="", help="also write the results here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if cuda else "cpu")
    name = torch.cuda.get_device_name(device) if cuda else f"{platform.processor() or 'cpu'}, " \
                                                           f"{torch.get_num_threads()} threads"
    torch.backends.cudnn.benchmark = True
    rows = []
    for task in args.tasks.split(","):
        for mode in ("std", "adv"):
            if task == "ensemble" and mode == "std":
                continue  # the paper has no standard ensemble pretraining
            cells = []
            for arch in ("r18", "r50"):
                try:
                    v = bench(task, mode, arch, args, device)
                    cells.append(f"{v:,.0f}" if v >= 100 else f"{v:.2g}")
                except torch.OutOfMemoryError:
                    cells.append("OOM")
                    torch.cuda.empty_cache()
                print(f"{task}-{mode}-{arch}: {cells[-1]} img/s", file=sys.stderr, flush=True)
            rows.append((f"{task}-{mode}", *cells))
    precision = "bf16 autocast + channels_last" if cuda and not args.fp32 else "fp32, NCHW"
    print(f"\n{name}, torch {torch.__version__}, {datetime.date.today()}; width {args.width}, batch {args.batch} "
          f"(ensemble {args.ens_batch}), 32x32, {precision}, {args.iters} timed iterations after {args.warmup} "
          f"warm-up; adv = PGD-10 train-mode + (clean + adv) / 2\n")
    print("| task | ResNet-18 img/s | ResNet-50v2 img/s |\n|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": name, "args": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
