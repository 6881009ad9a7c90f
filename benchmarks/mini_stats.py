"""Statistics and report of ``mini_repro.py``: paired-t intervals, verdicts, Wilson intervals, the merge.

Every comparison is a paired difference over fine-tuning seeds (arm minus baseline at the same
seed, so the labeled subset, head initialisation, data order and attack starts cancel), summarised
by its mean and a two-sided 95 % Student-t interval on the paired differences (n - 1 degrees of
freedom). The interval covers the variance between fine-tuning seeds and, because the seeds
alternate between the pretraining seeds, that of the pretraining seeds as far as the backbones
sampled cover it; it is conditional on the fixed 10,000-image test set.
"""

from __future__ import annotations

import math
import statistics

from robustzoo.card import wilson  # the one Wilson interval (robustzoo list and MODEL_CARD show it too)

Z95 = 1.959963984540054
SINGLE = ("rot-adv", "jig-adv")
# rotation (adversarial) pretrained on the ensemble's own pool and passes: claim 3a's control for the pool size
POOL_CONTROL = "rot-adv-20k"


def t_quantile(p: float, df: int) -> float:
    """Quantile of Student's t (``p`` in (0.5, 1)): bisection on the CDF, the CDF by Simpson's rule on the
    density (no SciPy in this environment; accurate to ~1e-9 for the df used here)."""
    if df < 1 or not 0.5 < p < 1:
        raise ValueError(f"t_quantile needs df >= 1 and 0.5 < p < 1, got df={df}, p={p}")
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)

    def cdf(x: float, n: int = 4000) -> float:  # 0.5 + integral of the density over [0, x]
        h = x / n
        s = sum((1 if i in (0, n) else 4 if i % 2 else 2) * (1 + (i * h) ** 2 / df) ** (-(df + 1) / 2)
                for i in range(n + 1))
        return 0.5 + c * s * h / 3

    lo, hi = 0.0, 1.0
    while cdf(hi) < p:
        lo, hi = hi, hi * 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def paired_t(diffs: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of the paired differences: mean +- t_{n-1} * sd / sqrt(n). n = 1 gives an
    unbounded interval (nothing can be concluded from one pair)."""
    if not diffs:
        raise ValueError("no paired differences")
    m = statistics.fmean(diffs)
    if len(diffs) == 1:
        return m, -math.inf, math.inf
    half = t_quantile(0.5 + level / 2, len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return m, m - half, m + half


def verdict(low: float, high: float, *, lower_is_better: bool = False) -> str:
    """holds: the interval lies on the claimed side of 0; reversed: on the other side; else inconclusive."""
    if lower_is_better:
        low, high = -high, -low
    return "holds" if low > 0 else "reversed" if high < 0 else "inconclusive"


def epochs_to_reach(history: list[dict], target: float) -> int | None:
    """First (1-based) epoch whose validation robust accuracy reaches ``target``; None if none does."""
    return next((i + 1 for i, h in enumerate(history) if h["val_robust"] >= target - 1e-9), None)


# ------------------------------------------------------------------------------------ comparisons


def cell_records(cells: list[dict], ft_epochs: int) -> list[dict]:
    """One record per fine-tuning/ensemble cell, with claim 2's epochs to scratch's final val robust acc
    (scratch at the same seed and label budget)."""
    target = {(c["seed"], c["labels"]): c["history"][-1]["val_robust"] for c in cells
              if c["arm"] == "scratch" and c["mode"] == "adv-full" and c["history"]}
    out = []
    for c in sorted(cells, key=lambda c: (c["labels"], c["seed"], c["arm"], c["mode"])):
        ett = None
        if c["history"] and (c["seed"], c["labels"]) in target and c["mode"] == "adv-full":
            e = epochs_to_reach(c["history"], target[c["seed"], c["labels"]])
            ett = ft_epochs + 1 if e is None else e  # not reached: censored at E + 1 (a lower bound)
        out.append({"arm": c["arm"], "pretrain_seed": c.get("pretrain_seed"), "seed": c["seed"],
                    "labels": c["labels"], "mode": c["mode"], "clean": round(c["clean"], 2),
                    "pgd20": round(c["pgd20"], 2), "test_n": c["test_n"], "epochs_to_target": ett,
                    "epochs_reached": ett is not None and ett <= ft_epochs,
                    "best_val_robust": max((h["val_robust"] for h in c["history"]), default=None),
                    "val_robust_curve": [round(h["val_robust"], 2) for h in c["history"]],
                    "commit": c["commit"], "recipe": c["recipe"], "cell": c["key"]})
    return out


def _by_seed(records: list[dict], arm: str) -> dict[int, dict]:
    return {r["seed"]: r for r in records if r["arm"] == arm}


def _best_by_val(records: list[dict], arms: tuple, seed: int) -> dict | None:
    got = [r for r in records if r["arm"] in arms and r["seed"] == seed]
    if len(got) < len(arms):
        return None
    return max(got, key=lambda r: (r["best_val_robust"], r["arm"]))


def _compare(name: str, claim: str, pairs: list[tuple[dict, dict]], metric: str, *, lower_is_better=False) -> dict:
    diffs = [a[metric] - b[metric] for a, b in pairs]
    rec = {"comparison": name, "claim": claim, "metric": metric, "n_pairs": len(diffs),
           "seeds": [a["seed"] for a, _ in pairs], "diffs": [round(d, 4) for d in diffs],
           # which variance the interval covers: fine-tuning seeds always; pretraining seeds only those sampled
           "pretrain_seeds": sorted({r["pretrain_seed"] for p in pairs for r in p
                                     if r.get("pretrain_seed") is not None}),
           "interval": "95% Student-t on paired differences", "lower_is_better": lower_is_better}
    if not diffs:
        return {**rec, "diff_mean": None, "ci_low": None, "ci_high": None, "verdict": "not measured yet"}
    m, lo, hi = paired_t(diffs)
    return {**rec, "diff_mean": round(m, 3), "ci_low": round(lo, 3) if math.isfinite(lo) else None,
            "ci_high": round(hi, 3) if math.isfinite(hi) else None,
            "verdict": verdict(lo, hi, lower_is_better=lower_is_better)}


def comparisons(records: list[dict], labels: int) -> list[dict]:
    """Claims 1-3 as paired comparisons (best single pretext / best member picked per seed on validation)
    on the adversarial full fine-tuning cells with ``labels`` labels, then the secondary fine-tuning
    modes, then claims 1-2 for rot-adv at any larger label budget."""
    other = [r for r in records if r["mode"] != "adv-full"]
    more = [r for r in records if r["mode"] == "adv-full" and r["labels"] != labels]
    records = [r for r in records if r["mode"] == "adv-full" and r["labels"] == labels]
    arm = {a: _by_seed(records, a) for a in {r["arm"] for r in records}}
    pair = lambda a, b: [(arm[a][s], arm[b][s]) for s in sorted(arm.get(a, {})) if s in arm.get(b, {})]  # noqa: E731
    out = []
    for a in ("rot-adv", "jig-adv", "ens-adv"):
        out.append(_compare(f"{a} - scratch", "1: adversarial pretraining raises robust accuracy", pair(a, "scratch"),
                            "pgd20"))
    out.append(_compare("rot-std - scratch", "1 (control): standard pretraining", pair("rot-std", "scratch"), "pgd20"))
    out.append(_compare("rot-adv - rot-std", "1 (control): the adversarial part of pretraining", pair("rot-adv",
                        "rot-std"), "pgd20"))
    for a in ("rot-adv", "jig-adv", "ens-adv"):
        out.append(_compare(f"epochs: {a} - scratch", "2: fewer fine-tuning epochs to scratch's final val RA",
                            [(x, y) for x, y in pair(a, "scratch") if x["epochs_to_target"] is not None],
                            "epochs_to_target", lower_is_better=True))
    seeds = sorted(arm.get("ens-adv", {}))
    best = [(arm["ens-adv"][s], _best_by_val(records, SINGLE, s)) for s in seeds]
    out.append(_compare("ens-adv - best single pretext", "3a: ensemble pretraining beats the best single task",
                        [(a, b) for a, b in best if b is not None], "pgd20"))
    if POOL_CONTROL in arm:  # the same pretraining images, passes and seed as the ensemble: only the task differs
        out.append(_compare(f"ens-adv - {POOL_CONTROL}", "3a (control): ensemble vs rotation on the ensemble's pool",
                            pair("ens-adv", POOL_CONTROL), "pgd20"))
        out.append(_compare(f"rot-adv - {POOL_CONTROL}", "3a (control): the pool, 60,000 vs 20,000 images",
                            pair("rot-adv", POOL_CONTROL), "pgd20"))
    seeds = sorted(arm.get("ens-ft", {}))
    best = [(arm["ens-ft"][s], _best_by_val(records, ("rot-adv", "jig-adv", "ens-adv"), s)) for s in seeds]
    out.append(_compare("ens-ft - best member", "3b: the fine-tuned 3-model softmax ensemble beats its best member",
                        [(a, b) for a, b in best if b is not None], "pgd20"))
    return out + (mode_comparisons(other, arm) if other else []) + more_labels_comparisons(more)


def more_labels_comparisons(more: list[dict]) -> list[dict]:
    """rot-adv minus scratch (PGD-20, and claim 2's epochs) at each larger label budget: does the gain of
    adversarial pretraining survive more labels (the paper fine-tunes on all 50,000 CIFAR-10 labels)?"""
    out = []
    for n in sorted({r["labels"] for r in more}):
        arm = {a: _by_seed([r for r in more if r["labels"] == n], a) for a in ("rot-adv", "scratch")}
        pairs = [(arm["rot-adv"][s], arm["scratch"][s]) for s in sorted(arm["rot-adv"]) if s in arm["scratch"]]
        out.append(_compare(f"rot-adv - scratch, {n:,} labels", f"1 at {n:,} labels", pairs, "pgd20"))
        out.append(_compare(f"epochs: rot-adv - scratch, {n:,} labels", f"2 at {n:,} labels",
                            [(x, y) for x, y in pairs if x["epochs_to_target"] is not None], "epochs_to_target",
                            lower_is_better=True))
    return out


def mode_comparisons(other: list[dict], adv_full: dict[str, dict[int, dict]]) -> list[dict]:
    """The paper's table beyond adversarial full fine-tuning, on the rotation backbones: does adversarial
    pretraining still help under standard partial / full fine-tuning, does adversarial fine-tuning add
    robustness over standard full fine-tuning, and does full fine-tuning beat partial (clean accuracy)."""
    by = {}
    for r in other:
        by.setdefault((r["arm"], r["mode"]), {})[r["seed"]] = r
    for a, rows in adv_full.items():
        by[(a, "adv-full")] = rows

    def pair(a: tuple, b: tuple) -> list:
        return [(by[a][s], by[b][s]) for s in sorted(by.get(a, {})) if s in by.get(b, {})]

    out = [_compare(f"{m}: rot-adv - rot-std", f"table: adversarial pretraining under standard {m} fine-tuning",
                    pair(("rot-adv", m), ("rot-std", m)), "pgd20") for m in ("partial", "full")]
    out.append(_compare("rot-adv: adv-full - full", "table: adversarial fine-tuning adds robustness",
                        pair(("rot-adv", "adv-full"), ("rot-adv", "full")), "pgd20"))
    out.append(_compare("clean: rot-adv full - partial", "table: full fine-tuning beats partial (clean accuracy)",
                        pair(("rot-adv", "full"), ("rot-adv", "partial")), "clean"))
    return out


def aa_records(cells: list[dict], classifiers: dict[str, dict] | None = None) -> list[dict]:
    """AutoAttack per arm over the contiguous chunks from image 0, with the 95 % Wilson interval.

    With ``classifiers`` (fine-tune cells by key), each arm also gets PGD-20 on the same images from its
    classifier's per-image record, and how many images AutoAttack left robust that PGD-20 fooled: AutoAttack
    includes a stronger PGD (APGD-CE), so it should score at or below PGD-20 and that count should be near 0."""
    out = []
    for arm in sorted({c["arm"] for c in cells}):
        n = k = clean = 0
        bits, source = "", None
        for c in sorted((c for c in cells if c["arm"] == arm), key=lambda c: c["start"]):
            if c["start"] != n:
                break
            n, k, clean = c["end"], k + c["robust"], clean + c["clean"]
            bits += c.get("robust_per_image", "")
            source = c.get("recipe", {}).get("classifier_cell")
        lo, hi = wilson(k, n)
        rec = {"arm": arm, "seed": cells[0]["seed"], "n": n, "robust": k, "clean": clean,
               "autoattack": round(100 * k / n, 2) if n else None, "wilson_low": round(lo, 2),
               "wilson_high": round(hi, 2), "pgd20_same_images": None, "aa_robust_pgd20_fooled": None}
        pgd = ((classifiers or {}).get(source) or {}).get("pgd20_per_image", "")[:n]
        if n and len(bits) == n and len(pgd) == n:
            rec["pgd20_same_images"] = round(100 * pgd.count("1") / n, 2)
            rec["aa_robust_pgd20_fooled"] = sum(a == "1" and b == "0" for a, b in zip(bits, pgd))
        out.append(rec)
    return out
