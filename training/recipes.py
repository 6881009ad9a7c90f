"""Training recipes: one frozen :class:`Recipe` per registry name, defaults = the paper's settings.

Every registry name (``robustzoo.registry.REGISTRY``) has a recipe here with the same key, plus
Fashion-MNIST recipes for the tiny CPU zoo (``*-r18-w16-fmnist``). The numbers follow the official
code (``paper_spec.md`` 2.6 and 4.2; README command-line overrides win over script defaults, since
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
import dataclasses
import difflib
from dataclasses import dataclass, fields, replace

from robustzoo.errors import RobustZooError
from robustzoo.registry import ARCH_TAGS, TASK_TAGS

__all__ = ["Recipe", "RECIPES", "RecipeError", "resolve", "parse_overrides", "PRETEXT_TASKS"]

PRETEXT_TASKS = ("rotation", "jigsaw", "selfie", "ensemble")


class RecipeError(RobustZooError, ValueError):
    """An unknown recipe, an unknown override key or a value of the wrong type."""


@dataclass(frozen=True)
class Recipe:
    """All settings of one run. Defaults reproduce rotation-adv pretraining of a CIFAR-10 ResNet-50v2."""

    name: str = ""
    kind: str = "backbone"  # "backbone" (pretext pretraining) | "classifier" (fine-tune) | "ensemble"
    task: str = "rotation"  # rotation | jigsaw | selfie | ensemble | none
    # model
    arch: str = "resnet50v2"
    width: float = 1.0  # multiplier on every stage width (0.0625 in tests, 0.25 for the Fashion-MNIST zoo)
    in_chans: int = 3
    # data
    dataset: str = "cifar10"  # any robustzoo.data.load_data name, or "synthetic-cifar" / "synthetic-fmnist"
    data_root: str = ""
    subset: int = 0  # use only this many training images (0 = all); taken before the validation split
    test_n: int = 0  # final pretext test evaluation on the first N test images (0 = all; CPU benchmarks)
    val_fraction: float = 0.1  # held out from the training set for model selection (paper: 5k of 50k)
    crop_pad: int = 4  # RandomCrop(32, padding=4) (the selfie scripts pad 2 and do not flip)
    flip: bool = True
    # optimisation (per-iteration schedule, as the official LambdaLR)
    epochs: int = 100
    batch_size: int = 128  # global batch; split evenly over data-parallel ranks
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 3e-4
    final_lr: float = 1e-6  # cosine floor: lr * [f + (1 - f) * 0.5 * (1 + cos(pi t / T))], f = final_lr / lr
    warmup_iters: int = 200  # epoch 0 only: lr_i = min(warmup_from + i * (warmup_to - warmup_from) / iters, to)
    warmup_from: float = 0.01  # hard-coded 0.01 -> 0.1 in the official code, whatever --lr says
    warmup_to: float = 0.1
    # adversarial pretraining (std vs adv is this switch, not a different script)
    adversarial: bool = False
    eps: float = 8 / 255
    alpha: float = 2 / 255
    attack_steps: int = 10
    attack_mode: str = "train"  # the paper attacks in train mode (BN batch stats, dropout on)
    val_attack_steps: int = 20
    # task settings
    grid: int = 4  # 4x4 patches for jigsaw and selfie (8x8 on 32x32, 7x7 on 28x28)
    jigsaw_classes: int = 31
    jigsaw_identity_prob: float = 0.1  # extra probability of the identity (paper: bias 0.9)
    selfie_masked: int = 4
    selfie_layers: int = 13
    selfie_heads: int = 16
    selfie_d_model: int = 0  # 0 = the backbone's layer3 width (1024 for ResNet-50v2)
    selfie_d_ff: int = 0  # 0 = 2 * d_model (2048 in the paper)
    selfie_dropout: float = 0.1
    selfie_loss: str = "scaled-logits"  # CE on logits/sqrt(d); "double-softmax" = the code; "logits" diverges
    ensemble_lambda: float = 0.1
    ensemble_attack_sign: float = 1.0  # +1 (code): attacker maximises L + lam*h ...
    ensemble_train_sign: float = 1.0  # ... and the trainer minimises L + lam*h (spec 3, sign caveat)
    # fine-tuning (classifiers): the paper's finetune/main.py, Madry PGD-10 adversarial full fine-tuning
    finetune: str = ""  # "" (pretext only) | "adv-full"
    parents: tuple = ()  # registry names this weight is built from
    num_classes: int = 10
    ft_epochs: int = 100
    ft_batch_size: int = 128
    ft_lr: float = 0.1
    ft_weight_decay: float = 3e-4
    ft_milestones: tuple = ()  # () = 60 % and 80 % of ft_epochs: the paper's 60, 80 of 100
    ft_seed: int = 20
    ft_padding: int = 4  # fine-tuning augmentation: RandomCrop(32, 4) + flip for every parent task
    ft_flip: bool = True
    eval_attacks: tuple = ("clean", "pgd20")
    # system
    seed: int = 22  # README commands use --seed 22 (selfie's script default is 10)
    device: str = "auto"  # "auto" = cuda if available else cpu
    bf16: bool = True  # autocast on CUDA only (CPU runs stay fp32 for exactness)
    channels_last: bool = True  # CUDA only
    compile: bool = False  # torch.compile the backbone (not with the ensemble's double back-prop)
    bn: str = "batch"  # "batch" (per-rank BN, the default) | "sync" (SyncBatchNorm, CUDA) | "frozen"
    eval_batch_size: int = 512
    out_dir: str = ""  # default runs/<name>
    progress: bool = True

    def __post_init__(self) -> None:
        checks = [
            (self.task in (*PRETEXT_TASKS, "none"), f"task must be one of {PRETEXT_TASKS + ('none',)}"),
            (self.kind in ("backbone", "classifier", "ensemble"), "kind must be backbone, classifier or ensemble"),
            (self.bn in ("batch", "sync", "frozen"), "bn must be 'batch', 'sync' or 'frozen'"),
            (self.selfie_loss in ("double-softmax", "logits", "scaled-logits"),
             "selfie_loss must be 'double-softmax', 'logits' or 'scaled-logits'"),
            (self.attack_mode in ("train", "eval"), "attack_mode must be 'train' or 'eval'"),
            (self.finetune in ("", "adv-full"), "finetune must be '' or 'adv-full'"),
            (self.epochs >= 0 and self.batch_size >= 1, "epochs >= 0 and batch_size >= 1"),
            (0 < self.val_fraction < 1, "val_fraction must be in (0, 1)"),
            (self.width > 0 and self.subset >= 0, "width > 0 and subset >= 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise RecipeError(f"recipe {self.name!r}: {msg}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_FIELDS = {f.name: f for f in fields(Recipe)}


def _pretext(task: str, mode: str, arch: str) -> Recipe:
    short = {long: tag for tag, long in TASK_TAGS.items()}[task]
    kw: dict = dict(name=f"{short}-{mode}-{arch}", task=task, arch=ARCH_TAGS[arch],
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
        for task in ("rotation", "jigsaw", "selfie"):
            for mode in ("std", "adv"):
                r = _pretext(task, mode, arch)
                out[r.name] = r
        r = _pretext("ensemble", "adv", arch)
        out[r.name] = r
        out[f"at-baseline-{arch}"] = _classifier(f"at-baseline-{arch}", arch, None)
        for t in ("rot", "jig", "selfie", "ens"):
            out[f"{t}-adv-aft-{arch}"] = _classifier(f"{t}-adv-aft-{arch}", arch, t)
        out[f"ens3-aft-{arch}"] = replace(
            out[f"at-baseline-{arch}"], name=f"ens3-aft-{arch}", kind="ensemble", task="ensemble", finetune="",
            parents=tuple(f"{t}-adv-aft-{arch}" for t in ("rot", "jig", "selfie")))
    out.update(_fmnist(out))
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
        if key not in _FIELDS:
            close = difflib.get_close_matches(key, list(_FIELDS), n=3)
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
