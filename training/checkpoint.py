"""Run files: atomic, pickle-free checkpoints (safetensors + JSON state in the header) and the export.

One file holds the model, the best model so far, the optimiser's momentum buffers and a JSON
``state`` (epoch, history, best score, recipe, optimiser param groups). It is written to a temp file,
fsynced and ``os.replace``d, so a kill at any moment leaves either the previous or the new
checkpoint, never a partial one. The RNG streams need no saving: every generator is re-seeded from
(seed, epoch, rank) at the start of each epoch, so the state after epoch k is fully described by k.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import torch

from robustzoo.weights import atomic_write, save_pretrained

__all__ = ["save_checkpoint", "load_checkpoint", "write_jsonl", "export", "git_commit", "SLEEP_ENV"]

# Test hook: seconds to sleep after writing the temp file and before the rename, so a test can
# SIGKILL the process in the middle of a checkpoint write.
SLEEP_ENV = "ROBUSTZOO_TEST_CKPT_SLEEP"


def save_checkpoint(path: Path, model, best: dict, opt, state: dict) -> None:
    from safetensors.torch import save_file

    t = {f"model/{k}": v for k, v in model.state_dict().items()}
    t.update({f"best/{k}": v for k, v in best.items()})
    osd = opt.state_dict()
    t.update({f"optim/{i}/{k}": v for i, s in osd["state"].items() for k, v in s.items() if torch.is_tensor(v)})
    t = {k: v.detach().cpu().contiguous() for k, v in t.items()}
    meta = {"state": json.dumps(dict(state, param_groups=osd["param_groups"]))}

    def write(tmp: str) -> None:
        save_file(t, tmp, metadata=meta)
        _fsync(tmp)
        time.sleep(float(os.environ.get(SLEEP_ENV, "0")))

    atomic_write(path, write)


def _fsync(path: str) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def load_checkpoint(path: Path, model, opt, device) -> tuple[dict, dict]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device=str(device)) as f:
        state = json.loads(f.metadata()["state"])
        t = {k: f.get_tensor(k) for k in f.keys()}
    model.load_state_dict({k[6:]: v for k, v in t.items() if k.startswith("model/")}, strict=True)
    best = {k[5:]: v for k, v in t.items() if k.startswith("best/")}
    osd = {"state": {}, "param_groups": state.pop("param_groups")}
    for k, v in t.items():
        if k.startswith("optim/"):
            _, i, name = k.split("/", 2)
            osd["state"].setdefault(int(i), {})[name] = v
    opt.load_state_dict(osd)
    return best, state


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """Rewrite the whole metrics file atomically (so it always matches the checkpoint after a resume)."""
    atomic_write(path, lambda tmp: Path(tmp).write_text("".join(json.dumps(r) + "\n" for r in rows)))


def git_commit() -> str:
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=10)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if sha.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def export(model, recipe, out: Path, report: dict) -> None:
    """The published files: headless backbone (save_pretrained), backbone + head, report."""
    from safetensors.torch import save_file

    trained = "normalize,conv1,bn1,layer1,layer2,layer3" + (",layer4" if recipe.task in ("rotation", "jigsaw") else "")
    meta = {"recipe": recipe.name, "task": recipe.task, "training": "adv" if recipe.adversarial else "std",
            "git_commit": report["git_commit"], "best_epoch": str(report["best_epoch"]),
            "pretrained_modules": trained, "recipe_json": json.dumps(recipe.to_dict()),
            **model.task.export_metadata()}
    save_pretrained(model.export_backbone(), out, name=recipe.name, metadata=meta)
    full = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(out / "pretext.safetensors", lambda tmp: save_file(full, tmp, metadata=meta))
    atomic_write(out / "report.json", lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2)))
