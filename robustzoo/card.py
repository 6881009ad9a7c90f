"""Presentation of registry records: metric summaries and the model table of MODEL_CARD.md.

``python -m robustzoo.card --write MODEL_CARD.md`` rewrites the table between
``<!-- registry:start -->`` and ``<!-- registry:end -->``; a test checks that it equals
:func:`render_registry_table`, so the card never drifts from the registry file.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path

from .registry import REGISTRY, WeightSpec

__all__ = ["format_metrics", "render_registry_table", "update_model_card", "START", "END"]

START, END = "<!-- registry:start -->", "<!-- registry:end -->"
_LABELS = {"clean": "clean", "pgd20": "PGD-20", "autoattack": "AutoAttack",
           "autoattack_robustbench": "AA (RobustBench)"}


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
            parts.append(f"{name} {v:.2f}" + (f" (first {sub:.0f})" if sub is not None and n and sub < n else ""))
    out = label + ", ".join(parts)
    pretext = sorted(k for k in metrics if k.startswith(("pretext_clean_", "pretext_robust_")))
    out += "".join(f"; pretext {k.split('_')[1]} {k.split('_')[2]} {num(k):.2f}" for k in pretext if num(k) is not None)
    return out or "-"


def _status(spec: WeightSpec) -> str:
    if spec.embedded:
        return "embedded (trained here)"
    if spec.published:
        return f"Hub @ {spec.revision[:8]}"
    return "not published yet"


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


def update_model_card(path: str | Path = "MODEL_CARD.md", registry: Mapping[str, WeightSpec] | None = None) -> bool:
    """Rewrite the generated table in ``path`` (from ``registry``, default the loaded one); True if it changed."""
    path = Path(path)
    text = path.read_text()
    if START not in text or END not in text:
        raise ValueError(f"{path} has no {START} ... {END} block")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{START}\n{render_registry_table(registry)}\n{END}{tail}"
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
