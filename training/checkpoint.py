"""Run files of a pretraining run besides the checkpoint: metrics, git commit, the published export.

Checkpoints themselves are :mod:`robustzoo.checkpoint` (shared with fine-tuning).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from robustzoo.weights import atomic_write, save_pretrained

__all__ = ["write_jsonl", "export", "git_commit"]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """Rewrite the whole metrics file atomically (so it always matches the checkpoint after a resume)."""
    atomic_write(path, lambda tmp: Path(tmp).write_text("".join(json.dumps(r) + "\n" for r in rows)))


def git_commit() -> str:
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        # "-dirty": tracked code edited since the commit. The experiments' own outputs (new files, cells and
        # logs under benchmarks/repro) do not make the code that produced them dirty.
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)benchmarks/repro"], cwd=root, capture_output=True, text=True, timeout=10)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if sha.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def recipe_metadata(recipe) -> str:
    """The recipe as stored in a published file: every setting, with the machine-local paths (where the
    run wrote, where its data lay) blanked, so a shipped file names no one's directories."""
    return json.dumps({**recipe.to_dict(), "out_dir": "", "data_root": ""})


def export(model, recipe, out: Path, report: dict) -> None:
    """The published files: headless backbone (save_pretrained), backbone + head, report."""
    from safetensors.torch import save_file

    from training.tasks import TASKS

    trained = "normalize,conv1,bn1,layer1,layer2,layer3" + (",layer4" if TASKS[recipe.task].trains_layer4 else "")
    meta = {"recipe": recipe.name, "task": recipe.task, "training": "adv" if recipe.adversarial else "std",
            "git_commit": report["git_commit"], "best_epoch": str(report["best_epoch"]),
            "pretrained_modules": trained, "recipe_json": recipe_metadata(recipe),
            **model.task.export_metadata()}
    save_pretrained(model.export_backbone(), out, name=recipe.name, metadata=meta)
    full = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(out / "pretext.safetensors", lambda tmp: save_file(full, tmp, metadata=meta))
    atomic_write(out / "report.json", lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2)))
