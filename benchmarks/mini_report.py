"""The merge step of ``mini_repro.py``: whatever cells exist -> mini_repro.json, the forest plot, the report.

Works on a partial set of cells (every table and verdict then says how many pairs it rests on, and
the report is headed PARTIAL), so it can run after every session.
"""

from __future__ import annotations

import json
import statistics
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from mini_lib import MACHINE, ROOT
from mini_stats import POOL_CONTROL, aa_records, cell_records, comparisons

SECTION = "<!-- section: mini_repro (demo helper) -->"
# a pretraining cell's own process counter covers only its last session: a resumed run counts its passes
HOURS_COUNTED = ("one-thread hours: each cell's process CPU time; for a pretraining cell, resumed across sessions, "
                 "the summed time of its passes (wall time of its one-thread process); a fine-tuning cell cut off "
                 "and resumed counts its last process only (at most the epochs of one session's end)")


def load_cells(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "cells").glob("*.json"))]


def pretrain_records(cells: list[dict]) -> list[dict]:
    return [{"arm": c["arm"], "pretrain_seed": c["pretrain_seed"], "pool": c["pool"], "passes": c["passes"],
             "best_epoch": c["best_epoch"], "final_val_score": round(c["final_val_score"], 4),
             "val_score_curve": [round(r["val_score"], 4) for r in c["curve"]],
             "test": {k: round(v, 4) for k, v in c["test"].items()}, "cpu_seconds": c["cpu_seconds_total"],
             "commit": c["commit"], "recipe": c["recipe"], "overrides": c["overrides"], "cell": c["key"]}
            for c in cells]


def build(plan, out: Path) -> dict:
    from mini_repro import all_cells

    planned = {c.key for c in all_cells(plan)}
    cells = [c for c in load_cells(out) if c["key"] in planned]  # other plans' cells (e.g. tests) are ignored
    kinds = {k: [c for c in cells if c["kind"] == k] for k in ("pretrain", "finetune", "ensemble", "aa")}
    records = cell_records(kinds["finetune"] + kinds["ensemble"], plan.ft_epochs)
    hours = sum(c["cpu_seconds_total"] if c["kind"] == "pretrain" else c.get("cpu_seconds", 0) for c in cells) / 3600
    return {"about": "Chen et al. (CVPR 2020) claims on Fashion-MNIST, paired seeds; benchmarks/mini_repro.py",
            "partial": len(cells) < len(planned), "cells_done": len(cells), "cells_planned": len(planned),
            "thread_hours_in_cells": round(hours, 2), "thread_hours_counted": HOURS_COUNTED, "machine": MACHINE,
            "cpus": _cpus(cells),
            "merged": time.strftime("%Y-%m-%d %H:%M"),
            "plan": asdict(plan), "interval": "95% Student-t on the paired differences over fine-tuning seeds",
            "pretraining": pretrain_records(kinds["pretrain"]), "cells": records,
            "comparisons": comparisons(records, plan.labels),
            "autoattack": aa_records(kinds["aa"], {c["key"]: c for c in kinds["finetune"] + kinds["ensemble"]})}


def _cpus(cells: list[dict]) -> dict:
    """Cells per processor (recorded since 2026-12-06; sessions land on different machines)."""
    return dict(Counter(c.get("cpu", "not recorded") for c in cells))


def _fmt(v, nd: int = 2) -> str:
    return "-" if v is None else f"{v:+.{nd}f}" if isinstance(v, float) else str(v)


def _or_dash(v) -> str:
    return "-" if v is None else str(v)


def markdown(res: dict) -> str:
    p = res["plan"]
    head = (f"**PARTIAL: {res['cells_done']} of {res['cells_planned']} cells done; the experiment is still "
            "running, and every number below may change.**\n\n" if res["partial"] else "")
    rows = ["| arm | seeds | clean (mean) | PGD-20 (mean) | epochs to scratch's final val RA |",
            "|---|---|---|---|---|"]
    for arm in ("scratch", "rot-std", "rot-adv", "jig-adv", "ens-adv", "ens-ft", POOL_CONTROL):
        cs = [c for c in res["cells"] if (c["arm"], c["mode"], c["labels"]) == (arm, "adv-full", p["labels"])]
        if cs:
            ett = [str(c["epochs_to_target"]) if c["epochs_reached"] else f">{p['ft_epochs']}" for c in cs
                   if c["epochs_to_target"] is not None]
            rows.append(f"| {arm} | {len(cs)} | {statistics.fmean(c['clean'] for c in cs):.2f} | "
                        f"{statistics.fmean(c['pgd20'] for c in cs):.2f} | {', '.join(ett) or '-'} |")
    modes = ["| arm | fine-tuning | seeds | clean (mean) | PGD-20 (mean) |", "|---|---|---|---|---|"]
    if any(c["mode"] != "adv-full" for c in res["cells"]):
        for arm in p.get("mode_arms", ()):
            for mode in ("adv-full", *p.get("extra_modes", ())):
                cs = [c for c in res["cells"] if (c["arm"], c["mode"], c["labels"]) == (arm, mode, p["labels"])
                      and c["seed"] in p["mode_seeds"]]
                if cs:
                    modes.append(f"| {arm} | {mode} | {len(cs)} | {statistics.fmean(c['clean'] for c in cs):.2f} | "
                                 f"{statistics.fmean(c['pgd20'] for c in cs):.2f} |")
    more = ["| arm | labels | seeds | clean (mean) | PGD-20 (mean) | epochs to scratch's final val RA |",
            "|---|---|---|---|---|---|"]
    for n in sorted({c["labels"] for c in res["cells"]} - {p["labels"]}):
        for arm in p.get("more_labels_arms", ()):
            cs = [c for c in res["cells"] if (c["arm"], c["mode"], c["labels"]) == (arm, "adv-full", n)]
            if cs:
                ett = [str(c["epochs_to_target"]) if c["epochs_reached"] else f">{p['ft_epochs']}" for c in cs
                       if c["epochs_to_target"] is not None]
                more.append(f"| {arm} | {n:,} | {len(cs)} | {statistics.fmean(c['clean'] for c in cs):.2f} | "
                            f"{statistics.fmean(c['pgd20'] for c in cs):.2f} | {', '.join(ett) or '-'} |")
    comp = ["| comparison | claim | pairs | pretraining seeds | mean diff | 95% CI | verdict |",
            "|---|---|---|---|---|---|---|"]
    for c in res["comparisons"]:
        unit = " ep" if c["metric"] == "epochs_to_target" else " pt"
        ci = "-" if c["ci_low"] is None else f"[{c['ci_low']:+.2f}, {c['ci_high']:+.2f}]{unit}"
        seeds = ", ".join(map(str, c.get("pretrain_seeds", []))) or "-"
        comp.append(f"| {c['comparison']} | {c['claim']} | {c['n_pairs']} | {seeds} | {_fmt(c['diff_mean'])} | {ci} | "
                    f"{c['verdict']} |")
    aa = ["| arm (seed 0) | AutoAttack images | robust | 95% Wilson | PGD-20, same images | robust to AutoAttack, "
          "fooled by PGD-20 |", "|---|---|---|---|---|---|"]
    aa += [f"| {a['arm']} | first {a['n']} | {a['autoattack']} | [{a['wilson_low']}, {a['wilson_high']}] | "
           f"{_or_dash(a.get('pgd20_same_images'))} | {_or_dash(a.get('aa_robust_pgd20_fooled'))} |"
           for a in res["autoattack"] if a["n"]]
    pt = ["| pretraining | seed | pool | passes | pretext val score per pass | change over the last 3 passes "
          "(points) | hours (sum of the passes, wall) |", "|---|---|---|---|---|---|---|"]
    pt += [f"| {r['arm']} | {r['pretrain_seed']} | {r['pool']} | {r['passes']} | "
           f"{' '.join(f'{v:.2f}' for v in r['val_score_curve'])} | {last_change(r['val_score_curve'])} | "
           f"{r['cpu_seconds'] / 3600:.2f} |" for r in res["pretraining"]]
    span = f"{'all' if p['test_n'] >= 10000 else 'the first'} {p['test_n']:,}"
    for table in (pt, aa):
        if len(table) == 2:
            table.append("| (none finished yet) |" + " |" * (table[1].count("|") - 2))
    return "\n".join([
        head + f"Measured on {res['machine']}, merged {res['merged']} by `python benchmarks/mini_repro.py merge` "
        f"from the cells in benchmarks/repro/cells ({res['cells_done']} of {res['cells_planned']} done, "
        f"{res['thread_hours_in_cells']} one-thread hours in them{' so far' if res['partial'] else ''}, "
        "pretraining counted as the summed time of its passes; cells per processor: "
        f"{', '.join(f'{k} {v}' for k, v in res.get('cpus', {}).items())}). "
        f"ResNet-18 width {p['width']}, Linf eps 0.1; "
        f"adversarial full fine-tuning (PGD-{p['steps']}) on {p['labels']} labels for {p['ft_epochs']} epochs; "
        f"test clean and PGD-20 on {span} test images. Intervals: {res['interval']} (they cover "
        "the fine-tuning-seed variance and the pretraining-seed variance only as far as the backbones in their "
        "pairs sample it: column 'pretraining seeds'; with one seed, an interval is for that backbone only; "
        "they are conditional on the test set). Verdict: holds / reversed = the interval lies above / "
        "below 0 on the claimed side; inconclusive = it spans 0. Claim 2: a seed whose arm never reaches the "
        f"target within {p['ft_epochs']} epochs ('>{p['ft_epochs']}') counts as {p['ft_epochs'] + 1}, a lower "
        "bound, which can only favour that arm.", "", scope(p), "", *pt, "", *rows, "",
        *(modes + [""] if len(modes) > 2 else []), *(more + [""] if len(more) > 2 else []), *comp, "", *aa, "",
        "![paired differences with 95% intervals; pretext curves](mini_repro.png)"])


def scope(p: dict) -> str:
    """What the CPU budget (about 24 CPU hours) made us cut or shrink, said next to the numbers."""
    pool = f"{p['pool']:,}" if p["pool"] else "60,000"
    return (f"Scope: the single-task arms pretrain on all {pool} training images (labels unused); the ensemble "
            f"pretrains on a random {p['ens_pool']:,} of them, drawn with the pretraining seed (a step costs 8-12x a "
            "single adversarial task's, benchmarks/RESULTS.md, so 60,000 images do not fit the budget), for as "
            "many passes, so a third of the steps: claim 3a (ens-adv - best single pretext) compares a smaller-pool "
            f"ensemble with larger-pool single tasks. {pool_control_scope(p)} "
            f"Every figure is on {p['labels']:,} labels unless a row says otherwise; the claims use adversarial full "
            "fine-tuning. The paper's "
            f"other modes, {' and '.join(p.get('extra_modes', ())) or 'none'} (standard cross-entropy; partial "
            f"trains layer4 and the head), queued last, only for {', '.join(p.get('mode_arms', ()))} on seeds "
            f"{', '.join(map(str, p.get('mode_seeds', ())))} (rows 'table:'). {more_labels_scope(p)}")


def pool_control_scope(p: dict) -> str:
    if not p.get("pool_control_seeds"):
        return "Its verdict cannot be told apart from that difference (no pool control was run)."
    return (f"To separate the two, {POOL_CONTROL} pretrains rotation (adversarial) on exactly the ensemble's images, "
            "passes and schedule (the same pretraining seeds), queued after everything else, fine-tuned on seeds "
            f"{', '.join(map(str, p['pool_control_seeds']))}: row 'ens-adv - {POOL_CONTROL}' is the task with the "
            f"pool fixed, row 'rot-adv - {POOL_CONTROL}' the pool with the task fixed.")


def last_change(curve: list[float], k: int = 3) -> str:
    """How much the pretext score moved over the last k passes, in points: the "has it flattened" check."""
    return "-" if len(curve) <= k else f"{100 * (curve[-1] - curve[-1 - k]):+.1f}"


def more_labels_scope(p: dict) -> str:
    if not p.get("more_labels_seeds"):
        return "Not run, for the budget: a second, larger label budget."
    return (f"A second label budget, {p['more_labels']:,} labels (the same seed's permutation, so it contains the "
            f"{p['labels']:,}), queued last, for {' and '.join(p['more_labels_arms'])} on seeds "
            f"{', '.join(map(str, p['more_labels_seeds']))} (rows ', {p['more_labels']:,} labels'); fewer seeds, so "
            "wider intervals.")


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    comps = [c for c in res["comparisons"] if c["diff_mean"] is not None]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, max(4.0, 1.2 + 0.28 * len(comps))), dpi=110,
                                 gridspec_kw={"width_ratios": [3, 2]})
    for i, c in enumerate(comps):
        lo, hi = c["ci_low"], c["ci_high"]
        color = {"holds": "C2", "reversed": "C3"}.get(c["verdict"], "C7")
        if lo is not None:
            ax.plot([lo, hi], [i, i], color=color, lw=2)
        ax.plot([c["diff_mean"]], [i], "o", color=color)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(range(len(comps)), [f"{c['comparison']} (n={c['n_pairs']})" for c in comps], fontsize=7)
    ax.set_xlabel("paired difference (PGD-20 points; epochs for 'epochs:' rows, lower = better; clean points for "
                  "'clean:' rows)", fontsize=8)
    ax.set_title(("PARTIAL - " if res["partial"] else "") + "mean and 95% t interval", fontsize=9)
    for r in res["pretraining"]:
        bx.plot(range(1, len(r["val_score_curve"]) + 1), r["val_score_curve"], marker=".",
                label=f"{r['arm']} p{r['pretrain_seed']}")
    bx.set_xlabel("pass over the pool", fontsize=8)
    bx.xaxis.set_major_locator(MaxNLocator(integer=True))
    bx.set_ylabel("held-out pretext score (robust if adv)", fontsize=8)
    if res["pretraining"]:
        bx.legend(fontsize=6)
    bx.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def update_results_section(text: str, path: Path = ROOT / "benchmarks" / "RESULTS.md") -> None:
    """Replace the generated part of the section: from the marker to the plan block (kept by hand) or the
    next heading."""
    doc = path.read_text()
    start = doc.index(SECTION) + len(SECTION)
    end = doc.find("\n## ", start)
    end = len(doc) if end < 0 else end
    plan = doc.find("<!-- mini_repro plan -->", start)
    end = plan if 0 <= plan < end else end
    path.write_text(doc[:start] + "\n" + text.strip() + "\n\n" + doc[end:].lstrip("\n"))


def merge(plan, out: Path, json_path: Path, *, update_results: bool = False) -> dict:
    res = build(plan, out)
    json_path.write_text(json.dumps(res, indent=1) + "\n")
    plot(res, json_path.with_suffix(".png"))
    md = markdown(res)
    json_path.with_suffix(".md").write_text(md + "\n")
    if update_results:
        update_results_section(md)
    print(md)
    return res
