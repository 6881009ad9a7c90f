"""One training run's settings: a frozen :class:`Recipe` made of nested parts, each read by one helper.

=========== =========================================== ==========================================
part        fields                                      read by
=========== =========================================== ==========================================
``model``   arch, width, in_chans, bn                   the backbone (``pretrain._build``)
``data``    dataset, data_root, subset, test_n,         ``training/data.py``, the augmentation
            val_fraction, crop_pad, flip
``pretext`` task and its settings (grid, jigsaw_*,      ``training/tasks.py`` (the task table)
            selfie_*, ensemble_*)
``attack``  adversarial, eps, alpha, attack_steps,      the training step and pretext validation
            attack_mode, val_attack_steps
``optim``   epochs, batch_size, lr, momentum, nesterov, the optimiser and ``lr_at``
            weight_decay, final_lr, warmup_*
``ft``      finetune, num_classes, ft_*, eval_attacks   ``training/reproduce.py`` (fine-tuning)
``system``  device, bf16, channels_last, compile,       the loop's set-up and output
            eval_batch_size, out_dir, progress
=========== =========================================== ==========================================

``name``, ``kind``, ``seed`` and ``parents`` stay at the top. Every field name is unique across the
parts, so the flat spelling keeps working: ``recipe.lr`` reads ``recipe.optim.lr``,
``Recipe(lr=0.05)`` and ``dataclasses.replace(recipe, width=0.25)`` set the right part, and
:meth:`Recipe.to_dict` is the flat dict written to ``recipe.json`` (the command line's
``--key=value`` overrides are flat too).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from robustzoo.errors import RobustZooError

__all__ = ["Recipe", "RecipeError", "ModelPart", "DataPart", "PretextPart", "AttackPart", "OptimPart",
           "FinetunePart", "SystemPart", "FLAT_KEYS"]


class RecipeError(RobustZooError, ValueError):
    """An unknown recipe, an unknown override key or a value of the wrong type."""


def _require(checks: list[tuple[bool, str]]) -> None:
    for ok, msg in checks:
        if not ok:
            raise RecipeError(msg)


@dataclass(frozen=True)
class ModelPart:
    arch: str = "resnet50v2"
    width: float = 1.0  # multiplier on every stage width (0.0625 in tests, 0.25 for the Fashion-MNIST zoo)
    in_chans: int = 3
    bn: str = "batch"  # "batch" (per-rank BN, the default) | "sync" (SyncBatchNorm, CUDA) | "frozen"

    def __post_init__(self) -> None:
        _require([(self.bn in ("batch", "sync", "frozen"), "bn must be 'batch', 'sync' or 'frozen'"),
                  (self.width > 0, "width must be > 0")])


@dataclass(frozen=True)
class DataPart:
    dataset: str = "cifar10"  # any robustzoo.data.load_data name, or "synthetic-cifar" / "synthetic-fmnist"
    data_root: str = ""
    subset: int = 0  # use only this many training images (0 = all); taken before the validation split
    test_n: int = 0  # final pretext test evaluation on the first N test images (0 = all; CPU benchmarks)
    val_fraction: float = 0.1  # held out from the training set for model selection (paper: 5k of 50k)
    crop_pad: int = 4  # RandomCrop(32, padding=4) (the selfie scripts pad 2 and do not flip)
    flip: bool = True

    def __post_init__(self) -> None:
        _require([(0 < self.val_fraction < 1, "val_fraction must be in (0, 1)"),
                  (self.subset >= 0, "subset must be >= 0")])


@dataclass(frozen=True)
class PretextPart:
    task: str = "rotation"  # a key of training.tasks.TASKS, or "none"
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
    ensemble_train_sign: float = 1.0  # ... and the trainer minimises L + lam*h (the paper's sign caveat)

    def __post_init__(self) -> None:
        from training.tasks import TASKS

        _require([(self.task in (*TASKS, "none"), f"task must be one of {(*TASKS, 'none')}"),
                  (self.selfie_loss in ("double-softmax", "logits", "scaled-logits"),
                   "selfie_loss must be 'double-softmax', 'logits' or 'scaled-logits'")])


@dataclass(frozen=True)
class AttackPart:
    adversarial: bool = False  # std vs adv pretraining is this switch, not a different script
    eps: float = 8 / 255
    alpha: float = 2 / 255
    attack_steps: int = 10
    attack_mode: str = "train"  # the paper attacks in train mode (BN batch stats, dropout on)
    val_attack_steps: int = 20

    def __post_init__(self) -> None:
        _require([(self.attack_mode in ("train", "eval"), "attack_mode must be 'train' or 'eval'")])


@dataclass(frozen=True)
class OptimPart:  # per-iteration schedule, as the official LambdaLR
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

    def __post_init__(self) -> None:
        _require([(self.epochs >= 0 and self.batch_size >= 1, "epochs >= 0 and batch_size >= 1")])


@dataclass(frozen=True)
class FinetunePart:  # classifiers: the paper's finetune/main.py, Madry PGD-10 adversarial full fine-tuning
    finetune: str = ""  # "" (pretext only) | "adv-full"
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

    def __post_init__(self) -> None:
        _require([(self.finetune in ("", "adv-full"), "finetune must be '' or 'adv-full'")])


@dataclass(frozen=True)
class SystemPart:
    device: str = "auto"  # "auto" = cuda if available else cpu
    bf16: bool = True  # autocast on CUDA only (CPU runs stay fp32 for exactness)
    channels_last: bool = True  # CUDA only
    compile: bool = False  # torch.compile the backbone (not with the ensemble's double back-prop)
    eval_batch_size: int = 512
    out_dir: str = ""  # default runs/<name>
    progress: bool = True


_PARTS = {"model": ModelPart, "data": DataPart, "pretext": PretextPart, "attack": AttackPart, "optim": OptimPart,
          "ft": FinetunePart, "system": SystemPart}
_PART_OF = {f.name: part for part, cls in _PARTS.items() for f in dataclasses.fields(cls)}
_TOP = ("name", "kind", "seed", "parents")
FLAT_KEYS: tuple[str, ...] = (*_TOP, *_PART_OF)  # every --key=value override


@dataclass(frozen=True, init=False)
class Recipe:
    """All settings of one run. Defaults reproduce rotation-adv pretraining of a CIFAR-10 ResNet-50v2."""

    name: str
    kind: str  # "backbone" (pretext pretraining) | "classifier" (fine-tune) | "ensemble"
    seed: int  # README commands use --seed 22 (selfie's script default is 10)
    parents: tuple  # registry names this weight is built from
    model: ModelPart
    data: DataPart
    pretext: PretextPart
    attack: AttackPart
    optim: OptimPart
    ft: FinetunePart
    system: SystemPart

    def __init__(self, name: str = "", kind: str = "backbone", seed: int = 22, parents: tuple = (), *,
                 model: ModelPart | None = None, data: DataPart | None = None, pretext: PretextPart | None = None,
                 attack: AttackPart | None = None, optim: OptimPart | None = None, ft: FinetunePart | None = None,
                 system: SystemPart | None = None, **flat) -> None:
        given = dict(model=model, data=data, pretext=pretext, attack=attack, optim=optim, ft=ft, system=system)
        unknown = sorted(set(flat) - set(_PART_OF))
        if unknown:
            raise TypeError(f"Recipe got unknown settings {unknown}")
        try:
            for part, cls in _PARTS.items():
                mine = {k: v for k, v in flat.items() if _PART_OF[k] == part}
                base = given[part] if given[part] is not None else cls()
                object.__setattr__(self, part, dataclasses.replace(base, **mine) if mine else base)
            _require([(kind in ("backbone", "classifier", "ensemble"),
                       "kind must be backbone, classifier or ensemble")])
        except RecipeError as e:
            raise RecipeError(f"recipe {name!r}: {e}") from None
        for key, value in zip(_TOP, (name, kind, seed, parents)):
            object.__setattr__(self, key, value)

    def __getattr__(self, key: str):
        """Flat reads: ``recipe.lr`` is ``recipe.optim.lr`` (only called when normal lookup fails)."""
        part = _PART_OF.get(key)
        if part is None:
            raise AttributeError(f"'Recipe' has no setting {key!r}")
        return getattr(object.__getattribute__(self, part), key)

    def to_dict(self) -> dict:
        """The flat dict of every setting (``recipe.json``, checkpoint fingerprints, export metadata)."""
        return {k: getattr(self, k) for k in FLAT_KEYS}
