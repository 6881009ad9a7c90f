"""Training recipes: one frozen :class:`Recipe` per registry name, defaults = the paper's settings.

Every registry name (``robustzoo.registry.REGISTRY``) has a recipe here with the same key, plus
Fashion-MNIST recipes for the tiny CPU zoo (``*-r18-w16-fmnist``, and ``*-r18-w8-fmnist``: the
backbones of the mini-reproduction). The numbers follow the official
code (``pretraining/train_*.py`` and ``finetune/main.py`` of TAMU-VITA/Adv-SS-Pretraining;
its README command-line overrides win over script defaults, since
those are the runs the authors describe):

============== ====== ===== ==== ==== ================== ============================
recipe         epochs batch lr   wd   optimiser          schedule
============== ====== ===== ==== ==== ================== ============================
rot-std        200    128   0.1  3e-4 SGD m0.9           warm-up 0.01->0.1 / 200 it, cosine->1e-6
rot-adv        100    128   0.1  3e-4 SGD m0.9           same
jig-std        200    128   0.1  5e-4 SGD m0.9           same
jig-adv        100    128   0.1  3e-4 SGD m0.9           same
selfie-std/adv 200    128   0.1  1e-4 SGD m0.9 nesterov  cosine->1e-7, no warm-up
ens-adv        150    32    1e-3 1e-4 SGD m0.9 nesterov  cosine->1e-8, no warm-up
fine-tune      100    128   0.1  3e-4 SGD m0.9           warm-up, steps x0.1 at 60, 80
============== ====== ===== ==== ==== ================== ============================

Selfie's loss defaults to CE on logits, the dot products scaled by 1/sqrt(d) as in attention
(``selfie_loss="scaled-logits"``); the official code's CE on softmax probabilities is
``"double-softmax"``, and CE on the unscaled dot products (``"logits"``) diverged at lr 0.1 in our
check (see training/README.md).
Adversarial = Linf PGD-10, eps 8/255, step 2/255, random start, train-mode attack; loss
(clean + adv) / 2; validation PGD-20 in eval mode. Model selection uses a held-out 10 % of the
*training* set (the paper's 5k of 50k), never the test set (the official jigsaw-adv script
selected on the test set; we do not).

Overrides (nanoGPT's configurator semantics, without ``exec``)::

    recipe = resolve("rot-adv-r18", ["--epochs=1", "--width=0.25"])

Values are parsed with :func:`ast.literal_eval` (bare words stay strings); unknown keys raise with
the closest key names, and a value of the wrong type raises (ints are accepted for float fields).
"""

from __future__ import annotations

import ast
import difflib
from dataclasses import replace

from robustzoo.registry import ARCH_TAGS, TASK_TAGS
from training.recipe import FLAT_KEYS, Recipe, RecipeError
from training.tasks import TASKS

__all__ = ["Recipe", "RECIPES", "RecipeError", "resolve", "parse_overrides", "PRETEXT_TASKS"]

PRETEXT_TASKS = tuple(TASKS)
_SHORT = {task: tag for tag, task in TASK_TAGS.items()}  # "rotation" -> "rot"; the one map lives in the registry


def _pretext(task: str, mode: str, arch: str) -> Recipe:
    kw: dict = dict(name=f"{_SHORT[task]}-{mode}-{arch}", task=task, arch=ARCH_TAGS[arch],
                    adversarial=mode == "adv", epochs=200 if mode == "std" else 100)
    if task == "jigsaw" and mode == "std":
        kw.update(weight_decay=5e-4)
    if task == "selfie":  # train_{std,adv}_selfie.py: nesterov, wd 1e-4, cosine to 1e-7, no warm-up, pad 2, no flip
        kw.update(epochs=200, weight_decay=1e-4, nesterov=True, final_lr=1e-7, warmup_iters=0, crop_pad=2,
                  flip=False, seed=10)
    if task == "ensemble":  # ensemble_pretrain.py with the README's --batch_size 32
        kw.update(epochs=150, batch_size=32, lr=1e-3, weight_decay=1e-4, nesterov=True, final_lr=1e-8,
                  warmup_iters=0, seed=22)
    return Recipe(**kw)


def _classifier(name: str, arch: str, parent: str | None) -> Recipe:
    base = _pretext(TASK_TAGS[parent], "adv", arch) if parent else Recipe(arch=ARCH_TAGS[arch])
    return replace(base, name=name, kind="classifier", task=base.task if parent else "none", finetune="adv-full",
                   parents=(f"{parent}-adv-{arch}",) if parent else ())


def _build() -> dict[str, Recipe]:
    out: dict[str, Recipe] = {}
    for arch in ("r18", "r50"):
        for task in ("rotation", "jigsaw", "selfie"):  # std and adv; the ensemble is adv only
            for mode in ("std", "adv"):
                r = _pretext(task, mode, arch)
                out[r.name] = r
        r = _pretext("ensemble", "adv", arch)
        out[r.name] = r
        out[f"at-baseline-{arch}"] = _classifier(f"at-baseline-{arch}", arch, None)
        for t in _SHORT.values():
            out[f"{t}-adv-aft-{arch}"] = _classifier(f"{t}-adv-aft-{arch}", arch, t)
        out[f"ens3-aft-{arch}"] = replace(
            out[f"at-baseline-{arch}"], name=f"ens3-aft-{arch}", kind="ensemble", task="ensemble", finetune="",
            parents=tuple(f"{t}-adv-aft-{arch}" for t in ("rot", "jig", "selfie")))
    out.update(_fmnist(out))
    out.update(_fmnist_w8(out))
    return out


def _fmnist(cifar: dict[str, Recipe]) -> dict[str, Recipe]:
    """The tiny CPU zoo: ResNet-18 at width 0.25 (16 stem channels) on Fashion-MNIST 28x28x1.

    eps 0.1 / step 0.025 (the project's Fashion-MNIST budget, eps/4 like 2/255 vs 8/255), PGD-10,
    few epochs on a 10k subset, warm-up shortened to 50 iterations (a 10k epoch is 78 iterations).
    """
    common = dict(width=0.25, in_chans=1, dataset="fashion-mnist", eps=0.1, alpha=0.025, subset=10000,
                  crop_pad=2, ft_padding=2, warmup_iters=50, ft_epochs=6, ft_seed=20)
    out = {}
    for name in ("rot-std-r18", "rot-adv-r18", "jig-std-r18", "jig-adv-r18", "selfie-adv-r18",
                 "at-baseline-r18", "rot-adv-aft-r18", "jig-adv-aft-r18", "selfie-adv-aft-r18", "ens3-aft-r18"):
        base = cifar[name]
        new = f"{name}-w16-fmnist"
        extra = dict(epochs=8 if base.task != "selfie" else 6, selfie_layers=4, selfie_heads=4)
        if base.kind == "classifier" and base.parents:
            extra["parents"] = tuple(f"{p}-w16-fmnist" for p in base.parents)
        if base.kind == "ensemble":
            extra["parents"] = tuple(f"{p}-w16-fmnist" for p in base.parents)
        out[new] = replace(base, name=new, **common, **extra)
    return out


def _fmnist_w8(cifar: dict[str, Recipe]) -> dict[str, Recipe]:
    """The embedded backbones of the mini-reproduction (``benchmarks/mini_repro.py``, pretraining seed 0).

    ResNet-18 at width 0.125 (8 stem channels) on the whole unlabeled Fashion-MNIST training set
    (60,000 images, labels unused, 2 % held out for the pretext curve and model selection), 12 passes;
    the ensemble (rotation + jigsaw + selfie on a shared trunk, joint PGD, log-det penalty; the paper's
    Sec. 3.3) on a 20,000-image pool for 12 passes too, since a step of it costs 12x a single task's. One optimiser for
    every task (SGD 0.1, wd 3e-4, warm-up 0.01->0.1 over 200 iterations or one pass, cosine to 1e-6),
    so the arms differ only in the task; PGD-3 (eps 0.1, step 0.04), as the CPU allows.
    ``benchmarks/mini_repro.py`` resolves the same values (a test checks that they agree).
    """
    common = dict(width=0.125, in_chans=1, dataset="fashion-mnist", eps=0.1, alpha=0.04, attack_steps=3,
                  val_fraction=0.02, crop_pad=2, batch_size=128, lr=0.1, weight_decay=3e-4, nesterov=False,
                  final_lr=1e-6, warmup_from=0.01, warmup_to=0.1, seed=0, test_n=1000, val_attack_steps=10,
                  selfie_layers=4, selfie_heads=4)
    out = {}
    for name in ("rot-std-r18", "rot-adv-r18", "jig-adv-r18", "ens-adv-r18"):
        ens = name.startswith("ens-")
        size = dict(subset=20000, epochs=12, warmup_iters=153) if ens else dict(subset=0, epochs=12, warmup_iters=200)
        out[f"{name}-w8-fmnist"] = replace(cifar[name], name=f"{name}-w8-fmnist", **common, **size)
    return out


RECIPES: dict[str, Recipe] = _build()


def _coerce(key: str, raw: str, current):
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw  # a bare word: keep it as a string (nanoGPT does the same)
    if isinstance(current, bool) or isinstance(value, bool):
        ok = isinstance(value, bool) and isinstance(current, bool)
    elif isinstance(current, float):
        ok = isinstance(value, (int, float))
        value = float(value) if ok else value
    elif isinstance(current, tuple):
        ok = isinstance(value, (list, tuple))
        value = tuple(value) if ok else value
    else:
        ok = type(value) is type(current)
    if not ok:
        raise RecipeError(f"--{key}={raw}: expected {type(current).__name__}, got {type(value).__name__} "
                          f"{value!r}")
    return value


def parse_overrides(args: list[str], base: Recipe | None = None) -> dict:
    """``["--key=value", ...]`` -> {key: typed value}; unknown keys and type mismatches raise RecipeError."""
    base = base or Recipe()
    out = {}
    for arg in args:
        if not arg.startswith("--") or "=" not in arg:
            raise RecipeError(f"overrides look like --key=value, got {arg!r}")
        key, raw = arg[2:].split("=", 1)
        key = key.replace("-", "_")
        if key not in FLAT_KEYS:
            close = difflib.get_close_matches(key, list(FLAT_KEYS), n=3)
            hint = f"; did you mean {', '.join('--' + c for c in close)}?" if close else ""
            raise RecipeError(f"unknown recipe key --{key}{hint}")
        out[key] = _coerce(key, raw, getattr(base, key))
    return out


def resolve(name: str, overrides: list[str] | dict | None = None) -> Recipe:
    """The named recipe with ``--key=value`` overrides (a list) or an already-parsed dict applied."""
    if name not in RECIPES:
        close = difflib.get_close_matches(name, list(RECIPES), n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise RecipeError(f"unknown recipe {name!r}.{hint} Known: {len(RECIPES)} recipes (training/recipes.py)")
    base = RECIPES[name]
    kw = overrides if isinstance(overrides, dict) else parse_overrides(list(overrides or []), base)
    return replace(base, **kw)
