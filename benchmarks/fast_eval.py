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
from aa_chunks import OUT, chunks_on_file, git_commit
from mini_lib import EPS, MACHINE, ROOT, for_eval

from robustzoo._download import file_sha256
from robustzoo.card import wilson

TUNE, HELD_OUT = (0, 400), (400, 800)
JSON_OUT = ROOT / "benchmarks" / "fast_eval.json"
FAST_OUT = ROOT / "benchmarks" / "aa-fast"



EPILOG = ("Runtime: minutes for --tune and the held-out block (about 1 s per image per core), plus about 45 s per "
          "image of the counted block, where AutoAttack really runs. Writes benchmarks/fast_eval.json (and "
          "fast_eval_tune.json); --markdown prints the RESULTS.md text.")

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


def tune(name, model, x, y, sha, raw=None) -> dict:
    """All 9 targets on the tune block: per k, the agreement with AutoAttack had the cascade stopped
    after the k-th MALT target (an image broken at rank r > k would have stayed robust).

    ``raw``: an earlier record of the same call (``aa_fast(k=9)`` on the tune block, batch 256, seed 0:
    deterministic) with its ``broken_by``, ``counts``, ``seconds`` and ``settings``, instead of re-running."""
    s, e = TUNE
    _, aa = committed_aa(name, sha)
    got = raw or run_fast(model, x[s:e], y[s:e], k=9)
    per_k = {}
    for k in range(0, 10):
        late = {f"apgd-t{r}" for r in range(k + 1, 10)}
        fast = torch.tensor([b == "" or b in late for b in got["broken_by"]], dtype=torch.bool)
        per_k[k] = agreement(aa[s:e], fast)
    return {"block": [s, e], "broken_per_stage": got["settings"]["broken_per_stage"],
            "attacked_per_stage": got["settings"]["attacked_per_stage"], "passes": got["counts"],
            "seconds": got["seconds"], "agreement_if_k": per_k, "broken_by": "".join(
                "c" if b == "clean" else "e" if b == "apgd-ce" else b[-1] if b.startswith("apgd-t") else
                "s" if b == "square" else "-" for b in got["broken_by"]),
            "broken_by_code": "c clean error, e APGD-CE, 1-9 APGD-T at that MALT rank, s Square, - robust"}


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


def markdown() -> str:
    """The RESULTS.md tables, from fast_eval.json, fast_eval_tune.json and benchmarks/zoo_metrics.json."""
    rep = json.loads(JSON_OUT.read_text())
    tun = json.loads(JSON_OUT.with_name("fast_eval_tune.json").read_text())
    measured = json.loads((ROOT / "benchmarks" / "zoo_metrics.json").read_text())
    full = {k: dict(v["metrics"], sha256=v["sha256"]) for k, v in measured.items() if "aa_fast" in v["metrics"]}
    lines = []
    for name in (k for k in rep if isinstance(rep[k], dict) and "sha256" in rep[k]):
        t, h, c = tun.get(name, {}), rep[name].get("held_out", {}), rep[name]["counted_block"]
        lines += [f"**{name}** (sha256 {rep[name]['sha256'][:12]}), eps {rep['eps']}, {rep['machine']}, "
                  f"1 thread, {rep['date']}, commit {rep['commit'][:12]}.", "",
                  "Tune block (images 0-400): had the cascade stopped after k MALT targets "
                  "(one 9-target run):", "",
                  "| k | robust both | broken both | only AA | only aa-fast | AA % | aa-fast % |",
                  "|---|---|---|---|---|---|---|"]
        for k, a in t.get("agreement_if_k", {}).items():
            lines.append(f"| {k} | {a['robust_both']} | {a['broken_both']} | {a['broken_only_by_aa']} | "
                         f"{a['broken_only_by_aa_fast']} | {a['autoattack']:.2f} | {a['aa_fast']:.2f} |")
        for label, a in (("held-out block (images 400-800), defaults", h),
                         (f"counted block (images {c['block'][0]}-{c['block'][1]}), AA re-run", c)):
            if "n" not in a:
                continue
            lines += ["", f"{label}: n={a['n']}; robust under both {a['robust_both']}, broken by both "
                      f"{a['broken_both']}, broken only by AA {a['broken_only_by_aa']} "
                      f"({a['broken_only_by_aa_pct']} %, 95 % Wilson {a['broken_only_by_aa_ci95'][0]}-"
                      f"{a['broken_only_by_aa_ci95'][1]} %), broken only by aa-fast {a['broken_only_by_aa_fast']}; "
                      f"AutoAttack {a['autoattack']:.2f} %, aa-fast {a['aa_fast']:.2f} %, difference "
                      f"{a['diff_points']:+.2f} points (95 % paired interval {a['diff_ci95'][0]:+.2f} to "
                      f"{a['diff_ci95'][1]:+.2f})."]
        lines += ["", f"Cost on the counted block (both run here, same pass counter): AutoAttack "
                  f"{c['aa_passes']['passes']:,} image passes ({c['aa_passes']['forward']:,} forward, "
                  f"{c['aa_passes']['backward']:,} backward) in {c['aa_seconds']:.0f} s; aa-fast "
                  f"{c['aa_fast_passes']['passes']:,} in {c['aa_fast_seconds']:.0f} s: **{c['pass_ratio']}x fewer "
                  f"passes, {c['seconds_ratio']}x less time**; AutoAttack differs from its committed outcome on "
                  f"{c['aa_differs_from_committed']} of these images."]
        if "aa_fast_seconds" in h:
            lines.append(f"Held-out block time: aa-fast {h['aa_fast_seconds']:.0f} s vs the committed AutoAttack "
                         f"chunks' {h['aa_seconds_committed']:.0f} s (other days and load: indicative only).")
        if name in full:
            f = full[name]
            lines += ["", f"aa-fast on the first {f['aa_fast_n']:,} test images: **{f['aa_fast']:.2f} %** "
                      f"(95 % Wilson {f['aa_fast_ci95'][0]:.2f}-{f['aa_fast_ci95'][1]:.2f}), clean "
                      f"{f['clean_on_aa_fast_subset']:.2f} % on them; {f['aa_fast_label']}. "
                      f"{f['aa_fast_passes']:,} image passes, {f['aa_fast_seconds']:,.0f} s of 1-thread time."]
            n_aa, aa = committed_aa(name, f["sha256"])
            bits = "".join(c["robust_per_image"] for c in chunks_on_file(name, f["sha256"], FAST_OUT)
                           if c["end"] <= f["aa_fast_n"])[:n_aa]  # the contiguous prefix that was merged
            if bits:  # the full run's own chunks (evaluate(), batches of 100) on the AutoAttack subset
                a = agreement(aa[:len(bits)], torch.tensor([b == "1" for b in bits], dtype=torch.bool))
                lines.append(f"Its chunks on the first {a['n']} images against the committed AutoAttack outcomes: "
                             f"broken only by AA {a['broken_only_by_aa']}, only by aa-fast "
                             f"{a['broken_only_by_aa_fast']}, difference {a['diff_points']:+.2f} points "
                             f"({a['diff_ci95'][0]:+.2f} to {a['diff_ci95'][1]:+.2f}).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from robustzoo.fmnist import load_fashion_mnist
    from robustzoo.hub import load
    from robustzoo.registry import REGISTRY

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=EPILOG)
    ap.add_argument("--tune", action="store_true", help="all 9 targets on the tune block (chooses k)")
    ap.add_argument("--count-n", type=int, default=16, help="held-out images on which AutoAttack runs, counted")
    ap.add_argument("--tune-from", help="with --tune: a saved record of the same aa_fast(k=9) call (JSON)")
    ap.add_argument("--blocks", default="held_out", help="comma list of tune,held_out to run aa-fast on")
    ap.add_argument("--markdown", action="store_true", help="print the RESULTS.md tables from the JSON files")
    args = ap.parse_args(argv)
    if args.markdown:
        print(markdown())
        return 0
    torch.set_num_threads(1)
    x, y = load_fashion_mnist("test")
    names = [n for n, s in REGISTRY.items() if s.embedded and s.kind == "classifier"]
    results = {"machine": MACHINE, "date": time.strftime("%Y-%m-%d"), "threads": 1, "eps": EPS, "commit": git_commit(),
               "command": "python benchmarks/fast_eval.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    for name in names:
        sha = file_sha256(ROOT / "robustzoo" / "zoo" / REGISTRY[name].filename)
        model = for_eval(load(name))
        raw = json.loads(open(args.tune_from).read()) if args.tune_from else None
        results[name] = (tune(name, model, x, y, sha, raw) if args.tune
                         else report(name, model, x, y, sha, args.count_n, args.blocks.split(",")))
    path = JSON_OUT.with_name("fast_eval_tune.json") if args.tune else JSON_OUT
    path.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
