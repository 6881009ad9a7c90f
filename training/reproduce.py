"""Reproduce one registry weight end to end: pretraining, fine-tuning, evaluation, export.

    python training/reproduce.py rot-adv-aft-r50                 # the paper's settings
    python training/reproduce.py ens3-aft-r18 --width=0.0625 --epochs=1 --ft_epochs=1 --subset=64 \\
        --dataset=synthetic-cifar --root=/tmp/zoo                # a tiny smoke run

What runs depends on the weight (``training/recipes.py``):

* pretext backbones (``{rot,jig,selfie}-{std,adv}-*``, ``ens-adv-*``): :func:`training.pretrain.pretrain`
  (model selection on the held-out split, pretext accuracy on the test split once at the end);
* classifiers (``*-adv-aft-*``, ``at-baseline-*``): the parent backbone is reproduced (or reused when
  ``<root>/<parent>`` already holds a run of the same recipe), then adversarial full fine-tuning
  with :func:`robustzoo.finetuning.finetune` (the paper's ``finetune/main.py``: Madry PGD-10, SGD 0.1,
  wd 3e-4, 100 epochs, x0.1 at 60/80; best epoch by robust accuracy on the held-out split), then
  :func:`robustzoo.evaluation.evaluate` on the test set, once;
* ``ens3-aft-*``: the three fine-tuned members are reproduced or reused and wrapped in
  :class:`robustzoo.models.SoftmaxEnsemble` (mean of softmaxes, ``finetune/model_ensemble.py``), then evaluated.

Overrides (``--key=value``) apply to the weight and to every parent it needs, so a tiny run stays
tiny all the way down. Each weight lands in its run folder ``<root>/<name>/``:

* ``model.safetensors`` + ``config.json``: the weight (what ``training/publish.py`` uploads or embeds);
* ``metrics.json``: the test-set numbers measured by this run, with how, where and when;
* ``provenance.json``: code commit, recipe (and the overrides given), data, machine, date, command;
* ``report.json``: everything else the run logged (history, best epoch, timings).

Publish a run with ``python training/publish.py <root>/<name> --repo-id ORG/NAME``.

Runtime: GPU hours for a CIFAR-10 entry (0.04-18 modelled H100 hours, training/README.md); minutes on a
CPU for the tiny smoke settings above. Writes ``<root>/<name>/`` (weights, metrics.json, provenance.json).
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from robustzoo.models import ResNet, SoftmaxEnsemble  # noqa: E402
from robustzoo.weights import atomic_write, load_file, save_pretrained  # noqa: E402
from training.checkpoint import recipe_metadata  # noqa: E402
from training.data import load_images, train_val_split  # noqa: E402
from training.pretrain import git_commit, pretrain  # noqa: E402
from training.recipes import Recipe, RecipeError, parse_overrides, resolve  # noqa: E402

# keys that describe *which* weight a recipe is; never copied from a child's overrides to its parents
_IDENTITY = {"name", "kind", "task", "finetune", "parents", "out_dir"}


def _float_data(recipe: Recipe, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_images(recipe, split)
    return x.float() / 255, y


def _device(recipe: Recipe) -> torch.device:
    if recipe.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(recipe.device)


def _done(out: Path, recipe: Recipe) -> bool:
    """A finished run of exactly this recipe is already in ``out``."""
    try:
        report = json.loads((out / "report.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return report.get("recipe") == json.loads(json.dumps(recipe.to_dict())) and (out / "model.safetensors").is_file()


def _finetune(recipe: Recipe, model: torch.nn.Module, out: Path, resume: bool) -> tuple[torch.nn.Module, dict]:
    """Adversarial full fine-tuning (the official ``finetune/main.py``) with the held-out split for model selection."""
    from robustzoo.finetuning import finetune

    x, y = _float_data(recipe, "train")
    tr, va = train_val_split(recipe, len(x))
    cuda = _device(recipe).type == "cuda"
    result = finetune(
        model, (x[tr], y[tr]), mode="adv-full", val_data=(x[va], y[va]), epochs=recipe.ft_epochs,
        batch_size=recipe.ft_batch_size, lr=recipe.ft_lr, weight_decay=recipe.ft_weight_decay,
        schedule="multistep", milestones=list(recipe.ft_milestones) or None, eps=recipe.eps, alpha=recipe.alpha,
        steps=recipe.attack_steps, eval_steps=recipe.val_attack_steps, seed=recipe.ft_seed, device=_device(recipe),
        checkpoint_dir=out / "finetune", resume=resume, progress=recipe.progress, amp=cuda and recipe.bf16,
        channels_last=cuda and recipe.channels_last, padding=recipe.ft_padding, flip=recipe.ft_flip,
        attack_mode=recipe.attack_mode,
    )
    return result.model, {"history": result.history, "best_epoch": result.best_epoch,
                          "settings": _jsonable(result.settings)}


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))


def _test(recipe: Recipe, model: torch.nn.Module) -> dict:
    """The one evaluation on the test split (after model selection on the held-out split)."""
    from robustzoo.evaluation import evaluate

    x, y = _float_data(recipe, "test")
    res = evaluate(model, (x, y), eps=recipe.eps, alpha=recipe.alpha, attacks=recipe.eval_attacks,
                   batch_size=recipe.eval_batch_size, device=_device(recipe), seed=0, progress=recipe.progress)
    return res.to_dict()


def _machine() -> dict:
    """Where the run happened: enough to compare timings and to explain numeric drift."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "gpu": gpu, "python": platform.python_version(), "torch": torch.__version__}


def measured_metrics(recipe: Recipe, report: dict) -> dict:
    """The run's test-set numbers (accuracies in %) with how, where and when they were measured."""
    test = report.get("test") or {}
    if "accuracy" in test:  # classifier / ensemble: a robustzoo.evaluate result
        out = {**{k: round(v, 2) for k, v in test["accuracy"].items()}, "n": test["n"], "eps": test["settings"]["eps"],
               "step": test["settings"]["alpha"],
               "how": "training/reproduce.py: robustzoo.evaluate on the test split (eval mode, PGD random start, "
                      "seed 0), once, after model selection on the held-out part of the training split"}
    else:  # pretext backbone: pretext accuracies on the test split, as fractions in the report
        out = {k.replace("test_", "pretext_", 1): round(100 * v, 2) for k, v in test.items()
               if isinstance(v, (int, float))}
        out["how"] = ("training/pretrain.py: pretext accuracy (clean, and under the training attack when adversarial) "
                      "on the test split, once, after model selection on the held-out part of the training split")
    machine = _machine()
    where = f"{machine['cpus']}-core {machine['processor']}"
    where += f" + {machine['gpu']}" if machine["gpu"] else ", no GPU"
    return {**out, "dataset": recipe.dataset, "machine": f"{where}, torch {machine['torch']}",
            "date": time.strftime("%Y-%m-%d", time.gmtime())}


def provenance(recipe: Recipe, overrides: dict, report: dict) -> dict:
    """What made this run: code commit, recipe, data, machine, date and the command that repeats it."""
    args = " ".join(shlex.quote(f"--{k}={v!r}" if not isinstance(v, str) else f"--{k}={v}")
                    for k, v in overrides.items())
    return {"code_commit": report.get("git_commit") or git_commit(), "recipe": recipe.name,
            "overrides": _jsonable(overrides), "recipe_settings": _jsonable(recipe.to_dict()),
            "data": {"dataset": recipe.dataset, "root": recipe.data_root, "subset": recipe.subset,
                     "val_fraction": recipe.val_fraction, "split_seed": recipe.seed},
            "machine": _machine(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "seconds": round(float(report.get("seconds") or 0.0), 1),
            "command": f"python training/reproduce.py {recipe.name} {args}".strip()}


def _write_run_files(out: Path, recipe: Recipe, overrides: dict, report: dict) -> None:
    for fname, value in (("metrics.json", measured_metrics(recipe, report)),
                         ("provenance.json", provenance(recipe, overrides, report))):
        atomic_write(out / fname, lambda tmp, v=value: Path(tmp).write_text(json.dumps(v, indent=2) + "\n"))


def reproduce(name: str, overrides: list[str] | dict | None = None, *, root: str | Path = "runs",
              resume: bool = False) -> dict:
    """Reproduce registry weight ``name`` (and whatever it is built from) under ``root``; returns its report."""
    kw = overrides if isinstance(overrides, dict) else parse_overrides(list(overrides or []), resolve(name))
    recipe = resolve(name, kw)
    out = Path(recipe.out_dir or Path(root) / name)
    recipe = replace(recipe, out_dir=str(out))
    inherited = {k: v for k, v in kw.items() if k not in _IDENTITY}

    def parent(pname: str) -> Path:
        prec = replace(resolve(pname, inherited), out_dir=str(Path(root) / pname))
        if not _done(Path(prec.out_dir), prec):
            reproduce(pname, inherited, root=root, resume=resume)
        return Path(prec.out_dir)

    if recipe.kind == "backbone":
        report = pretrain(recipe, resume=resume)
        _write_run_files(out, recipe, kw, report)
        return report
    t0 = time.time()
    report: dict = {"name": name, "recipe": recipe.to_dict(), "git_commit": git_commit(), "out_dir": str(out)}
    if recipe.kind == "classifier":
        if recipe.parents:
            model = load_file(parent(recipe.parents[0]), num_classes=recipe.num_classes)
        else:  # end-to-end adversarial training from a seeded random init (the paper's baseline)
            torch.manual_seed(recipe.ft_seed)
            model = ResNet(recipe.arch, num_classes=recipe.num_classes, in_chans=recipe.in_chans, width=recipe.width)
        model, report["finetune"] = _finetune(recipe, model, out, resume)
    else:
        model = SoftmaxEnsemble([load_file(parent(p)) for p in recipe.parents])
    model = model.cpu().eval()
    report["test"] = _test(recipe, model)
    report["seconds"] = time.time() - t0
    meta = {"recipe": name, "task": recipe.task, "git_commit": report["git_commit"],
            "parents": json.dumps(list(recipe.parents)), "recipe_json": recipe_metadata(recipe),
            "test_accuracy": json.dumps(report["test"]["accuracy"])}
    save_pretrained(model.cpu(), out, name=name, metadata=meta)
    atomic_write(out / "report.json", lambda tmp: Path(tmp).write_text(json.dumps(_jsonable(report), indent=2)))
    _write_run_files(out, recipe, kw, report)
    return report


def main(argv: list[str]) -> None:
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return
    args = [a for a in argv if not a.startswith("--root=") and a != "--resume"]
    root = next((a.split("=", 1)[1] for a in argv if a.startswith("--root=")), "runs")
    if not args or args[0].startswith("-"):
        raise SystemExit("usage: python training/reproduce.py NAME [--key=value ...] [--root=DIR] [--resume]")
    try:
        report = reproduce(args[0], args[1:], root=root, resume="--resume" in argv)
    except RecipeError as e:
        raise SystemExit(f"error: {e}") from None
    print(json.dumps({"name": report["name"], "test": report.get("test"), "out_dir": report.get("out_dir")}))


if __name__ == "__main__":
    main(sys.argv[1:])
