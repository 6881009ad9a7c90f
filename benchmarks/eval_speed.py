"""Channels-last weights vs the default layout for PGD evaluation on this CPU (``mini_lib.for_eval``).

One PGD step is one forward + input-gradient backward in eval mode with frozen weights; this
times that step for the Fashion-MNIST ResNet-18 at the zoo's widths, both layouts interleaved
(repeats alternate, medians reported) so that load from other jobs hits both alike.

    python benchmarks/eval_speed.py [--repeats 5] [--seconds 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from robustzoo.models import ResNet  # noqa: E402


def rate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, seconds: float) -> float:
    """Images per second through forward + input-gradient backward."""
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        xb = x.clone().requires_grad_(True)
        F.cross_entropy(model(xb), y).backward()
        n += len(x)
    return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=256)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x, y = torch.rand(args.batch_size, 1, 28, 28), torch.randint(0, 10, (args.batch_size,))
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch {args.batch_size}, "
          f"{args.repeats} interleaved repeats of {args.seconds:g} s")
    print("| width | default (img/s) | channels-last (img/s) | ratio |\n|---|---|---|---|")
    for width in (0.125, 0.25):
        model = ResNet("resnet18", num_classes=10, in_chans=1, width=width).eval().requires_grad_(False)
        got: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.repeats):
            for cl in (False, True):
                model.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
                got[cl].append(rate(model, x, y, args.seconds))
        a, b = statistics.median(got[False]), statistics.median(got[True])
        print(f"| {width} | {a:.0f} | {b:.0f} | {b / a:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
