"""Presentation of registry records: metric summaries and the generated parts of MODEL_CARD.md.

``python -m robustzoo.card --write MODEL_CARD.md`` rewrites the table between
``<!-- registry:start -->`` and ``<!-- registry:end -->`` (from the registry file) and the
mini-reproduction block (from ``benchmarks/mini_repro.md``, which the benchmark writes); a test
checks that the card equals :func:`render_model_card`, so it never drifts from its sources.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping
from pathlib import Path

from .registry import REGISTRY, WeightSpec

__all__ = ["format_metrics", "wilson", "pct", "table", "render_registry_table", "render_model_card",
           "update_model_card", "START", "END"]

START, END = "<!-- registry:start -->", "<!-- registry:end -->"
MINI_START, MINI_END = "<!-- mini_repro:start -->", "<!-- mini_repro:end -->"
MINI_INTRO = "Produced by `benchmarks/mini_repro.py` (also in benchmarks/RESULTS.md). All numbers measured here."
_LABELS = {"clean": "clean", "pgd20": "PGD-20", "autoattack": "AutoAttack", "aa_fast": "aa-fast",
           "autoattack_robustbench": "AA (RobustBench)"}
_WITH_INTERVAL = ("autoattack", "aa_fast")  # measured on a subset or a costly attack: show the 95 % interval


def wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95 % Wilson score interval, in percent, of k successes in n trials (Wilson 1927)."""
    if n <= 0:
        return 0.0, 100.0
    p, d = k / n, 1 + z * z / n
    centre, half = (p + z * z / (2 * n)) / d, z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    lo, hi = 100 * (centre - half), 100 * (centre + half)
    return (0.0 if k <= 0 else max(0.0, lo)), (100.0 if k >= n else min(100.0, hi))  # exact at the ends


def subset_interval(pct_value: float, n: int) -> tuple[float, float]:
    """The 95 % Wilson interval of an accuracy (in %) measured on ``n`` images: k = its robust-image count."""
    return wilson(round(pct_value * n / 100), n)


def format_metrics(metrics: Mapping[str, object]) -> str:
    """One-line summary of a ``metrics`` or ``paper_metrics`` mapping, accuracies in %.

    An attack run on fewer images than the clean number says so (``PGD-20 57.10 (first 2000)``), so
    a subset figure is never shown as a full-test-set one. Backbones show their linear probe.
    """
    def num(key: str) -> float | None:
        v = metrics.get(key)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    n = num("n")
    prefix, label = ("linear_probe_", "linear probe ") if num("linear_probe_clean") is not None else ("", "")
    parts = []
    for key, name in _LABELS.items():
        v, sub = num(prefix + key), num(f"{key}_n")
        if v is not None:
            ci = ""
            if key in _WITH_INTERVAL and sub:  # the interval of k robust images out of sub
                lo, hi = subset_interval(v, int(sub))
                ci = f" [{lo:.1f}, {hi:.1f}]"
            parts.append(f"{name} {v:.2f}{ci}" + (f" (first {sub:.0f})" if sub is not None and n and sub < n else ""))
    pretext = sorted(k for k in metrics if k.startswith(("pretext_clean_", "pretext_robust_")))
    more = [f"pretext {k.split('_')[1]} {k.split('_')[2]} {num(k):.2f}" for k in pretext if num(k) is not None]
    rep = metrics.get("repro_vs_scratch")  # a backbone of the mini-reproduction: what fine-tuning from it gains
    if isinstance(rep, Mapping) and rep.get("ci_low") is not None:
        more.append(f"fine-tuned from it minus scratch {rep['diff_mean']:+.2f} [{rep['ci_low']:+.2f}, "
                    f"{rep['ci_high']:+.2f}] PGD-20 points ({rep['n_pairs']} paired seeds"
                    f"{', partial' if rep.get('partial') else ''})")
    return "; ".join(x for x in (label + ", ".join(parts), *more) if x) or "-"


def _status(spec: WeightSpec) -> str:
    if spec.embedded:
        return "embedded (trained here)"
    if spec.published:
        return f"Hub @ {spec.revision[:8]}"
    return "not published yet"


def pct(v: float) -> str:
    """An accuracy in %, two decimals (0.01 % is one image in 10,000): 59.10, never 59.0999..."""
    return f"{float(v):.2f}"


def table(rows: list[list[str]], header: list[str]) -> str:
    """A plain left-aligned text table (the CLI's ``list``, ``verify`` and ``eval`` output)."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*map(str, r)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def render_registry_table(registry: Mapping[str, WeightSpec] | None = None) -> str:
    """One markdown row per registry entry: what it is, how trained, status, measured vs paper numbers."""
    registry = REGISTRY if registry is None else registry
    lines = [
        "| name | arch | what | pretraining attack | fine-tuning | status | measured here | paper-reported |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in sorted(registry):
        s = registry[name]
        measured = format_metrics(s.metrics)
        if measured != "-" and s.metrics.get("eps"):
            measured += f" (eps {s.metrics['eps']})"
        lines.append(
            f"| `{name}` | {s.arch} (w {s.width:g}) | {s.description} | {s.pretrain_attack or '-'} | "
            f"{s.finetune or '-'} | {_status(s)} | {measured} | {format_metrics(s.paper_metrics)} |"
        )
    return "\n".join(lines)


def _replace_block(text: str, start: str, end: str, body: str) -> str:
    if start not in text or end not in text:
        raise ValueError(f"the model card has no {start} ... {end} block")
    head, rest = text.split(start, 1)
    return f"{head}{start}\n{body}\n{end}{rest.split(end, 1)[1]}"


def render_mini_repro_block(report: str) -> str:
    """The card's mini-reproduction section from ``benchmarks/mini_repro.md`` (image path from the repo root)."""
    body = report.strip().replace("](mini_repro.png)", "](benchmarks/mini_repro.png)")
    return f"{MINI_INTRO}\n\n{body}"


def render_model_card(text: str, registry: Mapping[str, WeightSpec] | None = None,
                      mini_repro: str | None = None) -> str:
    """``text`` (a MODEL_CARD.md) with its generated blocks rendered: the registry table, and the
    mini-reproduction report when ``mini_repro`` (the text of ``benchmarks/mini_repro.md``) is given."""
    text = _replace_block(text, START, END, render_registry_table(registry))
    if mini_repro is not None:
        text = _replace_block(text, MINI_START, MINI_END, render_mini_repro_block(mini_repro))
    return text


def update_model_card(path: str | Path = "MODEL_CARD.md", registry: Mapping[str, WeightSpec] | None = None) -> bool:
    """Regenerate the blocks of ``path`` from ``registry`` (default: the loaded one) and from
    ``benchmarks/mini_repro.md`` next to it, if present; returns True when the file changed."""
    path = Path(path)
    text = path.read_text()
    report = path.parent / "benchmarks" / "mini_repro.md"
    new = render_model_card(text, registry, report.read_text() if report.is_file() else None)
    if new != text:
        path.write_text(new)
    return new != text


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", default=None, help="update this MODEL_CARD.md in place")
    args = parser.parse_args()
    if args.write:
        print("updated" if update_model_card(args.write) else "up to date")
    else:
        print(render_registry_table())
