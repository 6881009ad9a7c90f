"""Cost of the sha256 check robustzoo runs on every load, against the load itself.

Usage: .venv/bin/python benchmarks/checksum_cost.py [--repeats 5]
Prints a markdown table (file size, sha256 time, robustzoo.load_file time, overhead) for full-width
resnet18 and resnet50v2 (10 classes). Files are written to a temp folder and read warm (page cache),
which is the case for a cached weight; the hash is the part robustzoo adds on each load.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from robustzoo._download import file_sha256
from robustzoo.models import create_model
from robustzoo.weights import load_file, save_pretrained

EPILOG = ("Runtime: seconds (under a minute). Writes nothing: prints a markdown table (weights go to a temp "
          "folder).")

def timed(fn, repeats: int) -> float:
    fn()  # warm-up: page cache, allocator, lazy imports
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=EPILOG)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"machine: {platform.machine()} {platform.processor() or ''}, torch {torch.__version__}, 1 thread")
    print("| model | file size | sha256 (median) | sha256 speed | load_file (median) | hash / load |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ("resnet18", "resnet50v2"):
            path = save_pretrained(create_model(arch, num_classes=10), Path(tmp) / arch, name=arch)
            size = path.stat().st_size
            t_hash = timed(lambda p=path: file_sha256(p), args.repeats)
            t_load = timed(lambda p=path: load_file(p), args.repeats)
            print(f"| {arch} | {size / 1e6:.1f} MB | {t_hash * 1e3:.0f} ms | {size / t_hash / 1e9:.2f} GB/s "
                  f"| {t_load * 1e3:.0f} ms | {100 * t_hash / t_load:.0f}% |")


if __name__ == "__main__":
    main()
