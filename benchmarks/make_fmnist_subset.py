"""Rebuild the Fashion-MNIST subset shipped in ``robustzoo/_data/`` (deterministic, class-balanced).

Source: Fashion-MNIST (Xiao, Rasul, Vollgraf 2017, Zalando Research, MIT licence), read from the
original IDX files of the Debian package ``dataset-fashion-mnist`` (sha256-checked by
``robustzoo.fmnist.read_raw``). For each split and each class, a seeded permutation (numpy
``default_rng(seed)``) of that class's indices gives the first ``per_class`` images; the kept
indices are sorted, so the subset keeps the original order. The written arrays are checked
against the content hashes recorded in ``robustzoo.fmnist.EMBEDDED`` (``--update`` prints the new
hashes instead of failing, for use after a deliberate change).

    python benchmarks/make_fmnist_subset.py [--root DIR] [--out DIR] [--seed 0] [--update]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from robustzoo.fmnist import EMBEDDED, content_sha256, embedded_path, read_raw

EPILOG = ("Runtime: seconds. Needs Debian's dataset-fashion-mnist; writes robustzoo/_data/*.npz (or --out DIR).")

def balanced_indices(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    keep = []
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        keep.append(idx[rng.permutation(len(idx))[:per_class]])
    return np.sort(np.concatenate(keep))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=EPILOG)
    ap.add_argument("--root", default=None, help="folder with the original *-ubyte.gz files")
    ap.add_argument("--out", default=None, help="output folder (default: robustzoo/_data)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--update", action="store_true", help="print new hashes instead of failing on a mismatch")
    args = ap.parse_args(argv)
    ok = True
    for split, (fname, per_class, expected) in EMBEDDED.items():
        images, labels = read_raw(split, args.root)
        keep = balanced_indices(labels, per_class, args.seed + (split == "test"))
        sub_x, sub_y = np.ascontiguousarray(images[keep]), np.ascontiguousarray(labels[keep])
        digest = content_sha256(sub_x, sub_y)
        out = Path(args.out) / fname if args.out else embedded_path(split)
        out.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(out, images=sub_x, labels=sub_y, indices=keep.astype(np.int32))
        status = "ok" if digest == expected else "MISMATCH"
        ok &= digest == expected
        print(f"{split}: {len(keep)} images ({per_class}/class) -> {out} ({out.stat().st_size / 1e6:.2f} MB) "
              f"content sha256 {digest} [{status}]")
    if not ok and not args.update:
        print("content hashes differ from robustzoo.fmnist.EMBEDDED", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
