"""AutoAttack on an embedded zoo classifier, in chunks that add up across processes and sessions.

Standard AutoAttack (APGD-CE, APGD-T, FAB-T, Square) costs about 8 s per Fashion-MNIST test image
on one core of this machine for ``at-baseline-r18-w16-fmnist`` (each chunk file records its
seconds: 1,579-1,695 s per 200 images on 2026-11-28), so all 10,000 images would take about 22 CPU
hours: more than a session. Each chunk of test images is
therefore attacked on its own and written to ``benchmarks/aa/<name>/<start>-<end>.json`` (counts
plus the per-image outcome), tagged with the weight's sha256; ``--merge`` sums the contiguous
chunks from image 0 and writes the figure into ``benchmarks/zoo_metrics.json`` (the release step,
``training/publish.py``, copies it into the registry). AutoAttack decides
each image on its own, so disjoint chunks add up to the same estimate as one run over their union.

    python benchmarks/aa_chunks.py NAME --end 1000 --worker 0 --workers 2   # one process per core
    python benchmarks/aa_chunks.py NAME --end 1000 --worker 1 --workers 2
    python benchmarks/aa_chunks.py NAME --merge

``--attack aa-fast`` does the same for the cheaper ``aa-fast`` cascade (robustzoo/aafast.py; about
0.6 s per image here), under ``benchmarks/aa-fast/<name>/``; its ``--merge`` writes the contiguous
total, with a 95 % Wilson interval, into the same ``benchmarks/zoo_metrics.json`` entry under its own
``aa_fast*`` keys (never into the AutoAttack fields: aa-fast is not AutoAttack).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
from mini_lib import EPS, MACHINE, ROOT, for_eval

from robustzoo._download import file_sha256
from robustzoo.card import wilson
from robustzoo.weights import atomic_write

OUT = ROOT / "benchmarks" / "aa"
METRICS_JSON = ROOT / "benchmarks" / "zoo_metrics.json"  # {name: {"sha256", "metrics"}}: measured here
OUT_FAST = ROOT / "benchmarks" / "aa-fast"
STARTED_AT: dict = {}  # the commit this process started from (set once in main; the code it runs)



EPILOG = ("Runtime: hours (about 8 CPU seconds per test image; a chunk of 200 takes about 27 minutes on one "
          "core). Writes benchmarks/aa/<name>/<start>-<end>.json per chunk; --merge writes "
          "benchmarks/zoo_metrics.json.")

def run_chunk(name: str, model, x, y, start: int, end: int, sha: str) -> dict:
    from robustzoo.evaluation import evaluate

    t0 = time.perf_counter()
    res = evaluate(model, (x[start:end], y[start:end]), eps=EPS, attacks=("clean", "autoattack"), progress=False)
    return {"name": name, "sha256": sha, "start": start, "end": end, "n": res.n,
            "clean": int(res.correct["clean"].sum()), "robust": int(res.correct["autoattack"].sum()),
            "robust_per_image": "".join("1" if c else "0" for c in res.correct["autoattack"].tolist()),
            "attack": f"AutoAttack standard, Linf eps {EPS}, seed 0", "versions": res.settings["versions"],
            "seconds": round(time.perf_counter() - t0, 1), "machine": MACHINE, "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d"), "threads": torch.get_num_threads()}


def git_commit() -> str:
    """The commit of the code that produced a record (``+dirty`` when tracked files differ from it)."""
    import subprocess

    def git(*a):
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    return git("rev-parse", "HEAD") + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def run_fast_chunk(name: str, model, x, y, start: int, end: int, sha: str) -> dict:
    from robustzoo.evaluation import evaluate

    t0 = time.perf_counter()
    res = evaluate(model, (x[start:end], y[start:end]), eps=EPS, attacks=("clean", "aa-fast"), progress=False)
    fast = res.settings["aa-fast"]
    return {"name": name, "sha256": sha, "start": start, "end": end, "n": res.n,
            "clean": int(res.correct["clean"].sum()), "robust": int(res.correct["aa-fast"].sum()),
            "robust_per_image": "".join("1" if c else "0" for c in res.correct["aa-fast"].tolist()),
            "attack": f"aa-fast (robustzoo.aafast, NOT AutoAttack), Linf eps {EPS}, seed 0",
            "commit": STARTED_AT.get("commit") or git_commit(),
            "aa_fast": {k: v for k, v in fast.items() if k not in ("robust_accuracy", "n")},
            "passes": fast["passes"], "versions": res.settings["versions"],
            "seconds": round(time.perf_counter() - t0, 1), "machine": MACHINE, "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d"), "threads": torch.get_num_threads()}


def fast_metrics(name: str, sha: str) -> dict:
    """aa-fast figures summed over the contiguous chunks from image 0, with a 95 % Wilson interval."""
    n = clean = robust = passes = 0
    seconds, dates = 0.0, []
    for c in chunks_on_file(name, sha, OUT_FAST):
        if c["start"] != n:
            break
        n, clean, robust = c["end"], clean + c["clean"], robust + c["robust"]
        passes, seconds = passes + c["passes"], seconds + c["seconds"]
        dates.append(c["date"])
    if not n:
        return {}
    return {"aa_fast": round(100 * robust / n, 2), "aa_fast_ci95": [round(v, 2) for v in wilson(robust, n)],
            "aa_fast_n": n, "aa_fast_robust": robust, "clean_on_aa_fast_subset": round(100 * clean / n, 2),
            "aa_fast_passes": passes, "aa_fast_seconds": round(seconds, 1),
            "aa_fast_date": ", ".join(sorted(set(dates))),
            "aa_fast_label": "aa-fast (APGD-CE + MALT-targeted APGD-T cascade), not AutoAttack"}


def merge_fast(name: str, sha: str) -> dict:
    """Write :func:`fast_metrics` into the figures measured for this file (``benchmarks/zoo_metrics.json``)."""
    got = fast_metrics(name, sha)
    if not got:
        raise SystemExit(f"no aa-fast chunk starting at image 0 for {name} (sha256 {sha[:12]})")
    return record_metrics(METRICS_JSON, name, sha, got)


def chunks_on_file(name: str, sha: str, out: Path | None = None) -> list[dict]:
    """Chunk records for this exact weight file, sorted by start; other files' chunks are ignored."""
    found = [json.loads(p.read_text()) for p in sorted(((out or OUT) / name).glob("*.json"))]
    return sorted((c for c in found if c["sha256"] == sha), key=lambda c: c["start"])


def prefix_metrics(name: str, sha: str) -> dict:
    """AutoAttack figures summed over the contiguous chunks from image 0 (empty if there is none)."""
    n = clean = robust = 0
    dates = []
    for c in chunks_on_file(name, sha):
        if c["start"] != n:
            break  # a gap: only a prefix of the test set counts as "the first n images"
        n, clean, robust = c["end"], clean + c["clean"], robust + c["robust"]
        dates.append(c["date"])
    if not n:
        return {}
    return {"autoattack": round(100 * robust / n, 2), "autoattack_n": n,
            "clean_on_autoattack_subset": round(100 * clean / n, 2), "autoattack_date": ", ".join(sorted(set(dates)))}


def record_metrics(path: Path, name: str, sha: str, metrics: dict, *, replace: bool = False) -> dict:
    """Add ``metrics`` to the figures measured for weight file ``sha`` of ``name`` in ``path`` (atomically).

    ``replace`` starts the entry afresh (a new measurement of a new file); otherwise the entry must exist
    for this very file, so figures of two different files are never mixed.
    """
    table = json.loads(path.read_text()) if path.exists() else {}
    entry = table.get(name)
    if replace:
        entry = table[name] = {"sha256": sha, "metrics": {}}
    elif entry is None or entry["sha256"] != sha:
        raise SystemExit(f"{path} has no figures for this file of {name} (sha256 {sha[:12]}); "
                         f"run benchmarks/train_zoo.py --only {name} first")
    entry["metrics"].update(metrics)
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(table, indent=1, sort_keys=True) + "\n"))
    return entry["metrics"]


def merge(name: str, sha: str) -> dict:
    """Write :func:`prefix_metrics` into the figures measured for this file (``benchmarks/zoo_metrics.json``)."""
    got = prefix_metrics(name, sha)
    if not got:
        raise SystemExit(f"no chunk starting at image 0 for {name} (sha256 {sha[:12]})")
    return record_metrics(METRICS_JSON, name, sha, got)


def main(argv: list[str] | None = None) -> int:
    from robustzoo.fmnist import load_fashion_mnist
    from robustzoo.hub import load
    from robustzoo.registry import REGISTRY

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=EPILOG)
    ap.add_argument("name", help="an embedded classifier, e.g. at-baseline-r18-w16-fmnist")
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--end", type=int, default=1000)
    ap.add_argument("--chunk", type=int, default=100, help="test images per chunk file")
    ap.add_argument("--worker", type=int, default=0, help="this process takes chunk k if k %% workers == worker")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--merge", action="store_true", help="write the contiguous chunks' total into "
                    "benchmarks/zoo_metrics.json (the release step, training/publish.py, copies it into the registry)")
    ap.add_argument("--attack", choices=("autoattack", "aa-fast"), default="autoattack")
    args = ap.parse_args(argv)
    spec = REGISTRY.get(args.name)
    if spec is None or not spec.embedded or spec.kind != "classifier":
        ap.error(f"{args.name!r} is not an embedded classifier")
    sha = file_sha256(ROOT / "robustzoo" / "zoo" / spec.filename)
    fast = args.attack == "aa-fast"
    out, run = (OUT_FAST, run_fast_chunk) if fast else (OUT, run_chunk)
    if args.merge:
        print(json.dumps(merge_fast(args.name, sha) if fast else merge(args.name, sha)))
        return 0
    torch.set_num_threads(1)
    STARTED_AT["commit"] = git_commit()
    model = for_eval(load(args.name))
    x, y = load_fashion_mnist("test")
    if not 0 <= args.start < args.end <= len(x):
        ap.error(f"need 0 <= --start < --end <= {len(x)}")
    done = {(c["start"], c["end"]) for c in chunks_on_file(args.name, sha, out)}
    (out / args.name).mkdir(parents=True, exist_ok=True)
    for k, s in enumerate(range(args.start, args.end, args.chunk)):
        e = min(s + args.chunk, args.end)
        if k % args.workers != args.worker or (s, e) in done:
            continue
        rec = run(args.name, model, x, y, s, e, sha)
        atomic_write(out / args.name / f"{s:05d}-{e:05d}.json",  # a killed run leaves no half-written chunk
                     lambda tmp, rec=rec: Path(tmp).write_text(json.dumps(rec, indent=1) + "\n"))
        print(f"{s}-{e}: robust {rec['robust']}/{rec['n']} (clean {rec['clean']}) in {rec['seconds']:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
