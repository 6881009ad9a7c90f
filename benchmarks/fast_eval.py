"""aa-fast against standard AutoAttack, image by image, for every embedded classifier.

Standard AutoAttack's per-image outcomes come from the committed chunks in ``benchmarks/aa/<name>/``
(``benchmarks/aa_chunks.py``; used only where the chunk's sha256 matches the weight file), so it need
not re-run on them: it costs about 8 s per image per core here. aa-fast (``robustzoo/aafast.py``) runs
on the same images in this process. Its defaults were chosen on the TUNE block (the first 400 test
images, ``--tune`` prints how many images each extra target rank breaks there); the figures to quote
are those of the HELD-OUT block (images 400-800), which played no part in that choice.

Cost: both are wrapped in the same pass counter (``robustzoo.aafast.PassCounter``: images sent forward
and backward through the model). AutoAttack's pass count is measured by actually running it, counted,
on a small block of the held-out images (``--count-n``), next to aa-fast on the same images; that run
also checks that AutoAttack reproduces the committed per-image outcomes there.

    python benchmarks/fast_eval.py --tune        # 9 targets on the tune block: agreement if stopped at k
    python benchmarks/fast_eval.py               # held-out block + counted block (benchmarks/fast_eval.json)
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
from aa_chunks import OUT, chunks_on_file, git_commit, wilson
from mini_lib import EPS, MACHINE, ROOT, for_eval

from robustzoo._download import file_sha256

TUNE, HELD_OUT = (0, 400), (400, 800)
JSON_OUT = ROOT / "benchmarks" / "fast_eval.json"


def committed_aa(name: str, sha: str) -> tuple[int, torch.Tensor]:
    """Per-image AutoAttack robustness over the contiguous committed chunks from image 0."""
    bits, n = "", 0
    for c in chunks_on_file(name, sha, OUT):
        if c["start"] != n:
            break
        bits, n = bits + c["robust_per_image"], c["end"]
    return n, torch.tensor([b == "1" for b in bits], dtype=torch.bool)


def paired_diff_ci(b: int, c: int, n: int, z: float = 1.96) -> tuple[float, float, float]:
    """Difference of two paired proportions (b - c) / n, in points, with the Agresti-Min 95 % interval
    (0.5 added to each of the four cells, then Wald; Agresti and Min, Biometrics 2005)."""
    bb, cc, nn = b + 0.5, c + 0.5, n + 2.0
    d = (bb - cc) / nn
    se = ((bb + cc) / nn - d * d) ** 0.5 / nn ** 0.5
    return round(100 * (b - c) / n, 3), round(100 * (d - z * se), 3), round(100 * (d + z * se), 3)


def agreement(aa: torch.Tensor, fast: torch.Tensor) -> dict:
    """Four-cell table over all images (a clean error counts as broken by both)."""
    n = len(aa)
    cells = {"robust_both": int((aa & fast).sum()), "broken_both": int((~aa & ~fast).sum()),
             "broken_only_by_aa": int((~aa & fast).sum()), "broken_only_by_aa_fast": int((aa & ~fast).sum())}
    diff, lo, hi = paired_diff_ci(cells["broken_only_by_aa"], cells["broken_only_by_aa_fast"], n)
    only_aa = cells["broken_only_by_aa"]
    return {"n": n, **cells, "autoattack": round(100 * float(aa.double().mean()), 2),
            "aa_fast": round(100 * float(fast.double().mean()), 2), "diff_points": diff, "diff_ci95": [lo, hi],
            "broken_only_by_aa_pct": round(100 * only_aa / n, 3), "broken_only_by_aa_ci95": list(wilson(only_aa, n))}


def run_fast(model, x, y, k=None) -> dict:
    from robustzoo.aafast import DEFAULTS, aa_fast

    res = aa_fast(model, x, y, eps=EPS, k=k or DEFAULTS["k"], batch_size=256)  # evaluate()'s default
    return {"robust": res.robust, "broken_by": res.broken_by, "counts": res.counts, "seconds": res.seconds,
            "settings": res.settings}


def counted_aa(model, x, y) -> dict:
    from robustzoo.evaluation import evaluate

    t0 = time.perf_counter()
    res = evaluate(model, (x, y), eps=EPS, attacks=("autoattack",), progress=False, batch_size=len(x))
    return {"robust": res.correct["autoattack"], "counts": res.settings["passes"]["autoattack"],
            "seconds": round(time.perf_counter() - t0, 2)}


def tune(name, model, x, y, sha) -> dict:
    """All 9 targets on the tune block: per k, the agreement with AutoAttack had the cascade stopped
    after the k-th MALT target (an image broken at rank r > k would have stayed robust)."""
    s, e = TUNE
    _, aa = committed_aa(name, sha)
    got = run_fast(model, x[s:e], y[s:e], k=9)
    per_k = {}
    for k in range(0, 10):
        late = {f"apgd-t{r}" for r in range(k + 1, 10)}
        fast = torch.tensor([b == "" or b in late for b in got["broken_by"]], dtype=torch.bool)
        per_k[k] = agreement(aa[s:e], fast)
    return {"block": [s, e], "broken_per_stage": got["settings"]["broken_per_stage"],
            "attacked_per_stage": got["settings"]["attacked_per_stage"], "passes": got["counts"],
            "seconds": got["seconds"], "agreement_if_k": per_k, "broken_by": got["broken_by"]}


def report(name, model, x, y, sha, count_n, blocks) -> dict:
    n_aa, aa = committed_aa(name, sha)
    out = {"sha256": sha, "autoattack_source": f"benchmarks/aa/{name}/ (committed chunks, images 0-{n_aa})"}
    for label, (s, e) in (("tune", TUNE), ("held_out", HELD_OUT)):
        if label not in blocks:
            continue
        if e > n_aa:
            out[label] = {"skipped": f"committed AutoAttack covers only images 0-{n_aa}"}
            continue
        got = run_fast(model, x[s:e], y[s:e])
        out[label] = {"block": [s, e], **agreement(aa[s:e], got["robust"]), "aa_fast_passes": got["counts"],
                      "aa_fast_seconds": got["seconds"], "aa_seconds_committed": sum(
                          c["seconds"] for c in chunks_on_file(name, sha, OUT) if s <= c["start"] < e),
                      "broken_per_stage": got["settings"]["broken_per_stage"]}
        print(name, label, json.dumps({k: v for k, v in out[label].items() if k != "broken_per_stage"}), flush=True)
    s = HELD_OUT[0]
    e = s + count_n
    aa_run, fast = counted_aa(model, x[s:e], y[s:e]), run_fast(model, x[s:e], y[s:e])
    out["counted_block"] = {
        "block": [s, e], "aa_passes": aa_run["counts"], "aa_fast_passes": fast["counts"],
        "aa_seconds": aa_run["seconds"], "aa_fast_seconds": fast["seconds"],
        "pass_ratio": round(aa_run["counts"]["passes"] / fast["counts"]["passes"], 2),
        "seconds_ratio": round(aa_run["seconds"] / fast["seconds"], 2),
        # the block starts a committed chunk, so AutoAttack's random starts are the same as there
        "aa_differs_from_committed": int((aa_run["robust"] != aa[s:e]).sum()) if e <= n_aa else None,
        **agreement(aa_run["robust"], fast["robust"])}
    print(name, "counted", json.dumps(out["counted_block"]), flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    from robustzoo.fmnist import load_fashion_mnist
    from robustzoo.hub import load
    from robustzoo.registry import REGISTRY

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tune", action="store_true", help="all 9 targets on the tune block (chooses k)")
    ap.add_argument("--count-n", type=int, default=16, help="held-out images on which AutoAttack runs, counted")
    ap.add_argument("--blocks", default="held_out", help="comma list of tune,held_out to run aa-fast on")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    x, y = load_fashion_mnist("test")
    names = [n for n, s in REGISTRY.items() if s.embedded and s.kind == "classifier"]
    results = {"machine": MACHINE, "date": time.strftime("%Y-%m-%d"), "threads": 1, "eps": EPS, "commit": git_commit(),
               "command": "python benchmarks/fast_eval.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    for name in names:
        sha = file_sha256(ROOT / "robustzoo" / "zoo" / REGISTRY[name].filename)
        model = for_eval(load(name))
        results[name] = (tune(name, model, x, y, sha) if args.tune
                         else report(name, model, x, y, sha, args.count_n, args.blocks.split(",")))
    path = JSON_OUT.with_name("fast_eval_tune.json") if args.tune else JSON_OUT
    path.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
