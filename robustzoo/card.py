"""Render the registry as the model table of MODEL_CARD.md (``python -m robustzoo.card --write``).

The table sits between ``<!-- registry:start -->`` and ``<!-- registry:end -->`` in MODEL_CARD.md;
a test checks that it equals :func:`render_registry_table` so the card never drifts from the code.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .registry import REGISTRY, WeightSpec, format_metrics

__all__ = ["render_registry_table", "update_model_card", "START", "END"]

START, END = "<!-- registry:start -->", "<!-- registry:end -->"


def _status(spec: WeightSpec) -> str:
    if spec.embedded:
        return "embedded (trained here)"
    if spec.published:
        return f"Hub @ {spec.revision[:8]}"
    return "not published yet"


def render_registry_table() -> str:
    """One markdown row per registry entry: what it is, how trained, status, measured vs paper numbers."""
    lines = [
        "| name | arch | what | pretraining attack | fine-tuning | status | measured here | paper-reported |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in sorted(REGISTRY):
        s = REGISTRY[name]
        measured = format_metrics(s.metrics)
        if measured != "-" and s.metrics.get("eps"):
            measured += f" (eps {s.metrics['eps']})"
        lines.append(
            f"| `{name}` | {s.arch} (w {s.width:g}) | {s.description} | {s.pretrain_attack or '-'} | "
            f"{s.finetune or '-'} | {_status(s)} | {measured} | {format_metrics(s.paper_metrics)} |"
        )
    return "\n".join(lines)


def update_model_card(path: str | Path = "MODEL_CARD.md") -> bool:
    """Rewrite the generated table in ``path``; returns True when the file changed."""
    path = Path(path)
    text = path.read_text()
    if START not in text or END not in text:
        raise ValueError(f"{path} has no {START} ... {END} block")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{START}\n{render_registry_table()}\n{END}{tail}"
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
