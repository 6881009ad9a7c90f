"""Render the registry as the model table of MODEL_CARD.md (``python -m robustzoo.card --write``).

The table sits between ``<!-- registry:start -->`` and ``<!-- registry:end -->`` in MODEL_CARD.md;
a test checks that it equals :func:`render_registry_table` so the card never drifts from the code.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .registry import REGISTRY, WeightSpec

__all__ = ["render_registry_table", "update_model_card", "START", "END"]

START, END = "<!-- registry:start -->", "<!-- registry:end -->"


def _fmt(metrics: dict, keys=("clean", "pgd20", "autoattack")) -> str:
    parts = [f"{k} {metrics[k]:.2f}" for k in keys if isinstance(metrics.get(k), (int, float))]
    return ", ".join(parts) if parts else "-"


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
        measured = _fmt(dict(s.metrics))
        pretext = {k: v for k, v in s.metrics.items() if k.startswith(("pretext_clean_", "pretext_robust_"))}
        if "linear_probe_clean" in s.metrics:  # backbones: a linear probe and the pretext task itself
            measured = f"linear probe {s.metrics['linear_probe_clean']:.2f}" + "".join(
                f", {k.replace('pretext_', 'pretext ').replace('_', ' ')} {v:.2f}" for k, v in sorted(pretext.items()))
        if measured != "-" and s.metrics.get("eps"):
            measured += f" (eps {s.metrics['eps']})"
        lines.append(
            f"| `{name}` | {s.arch} (w {s.width:g}) | {s.description} | {s.pretrain_attack or '-'} | "
            f"{s.finetune or '-'} | {_status(s)} | {measured} | {_fmt(dict(s.paper_metrics))} |"
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
