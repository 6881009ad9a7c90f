"""Fine-tuning modes (one table) and settings (one frozen, validated dataclass).

The keyword arguments of :func:`robustzoo.finetune` build a :class:`FinetuneSettings`; every check
runs in its constructor, before anything is trained, and the resume fingerprint of a checkpoint is
made from it. Defaults are the paper's ``finetune/main.py`` (Chen et al., CVPR 2020, Section 4):
SGD lr 0.1, momentum 0.9, weight decay 3e-4, batch 128, 100 epochs, x0.1 at epochs 60 and 80,
PGD-10 with eps 8/255 and step 2/255 in train mode, validation by PGD-20. (:func:`robustzoo.finetune`
resolves eps=None to the model's own budget before it builds these settings.)

Adding a fine-tuning mode is one row in :data:`MODES` (and, for a new loss, one function in
``robustzoo.trainer.LOSSES``).
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import NamedTuple

from .errors import DataError
from .schedules import SCHEDULES, default_milestones

__all__ = ["MODES", "Mode", "FinetuneSettings"]


class Mode(NamedTuple):
    """What a mode trains ("head", "layer4" = layer4 + head, "all"), its loss, its default epochs."""

    trains: str
    loss: str
    epochs: int


# Linear probes get the 25 epochs of the RobustSSL recipe; the rest the paper's 100.
MODES: dict[str, Mode] = {
    "linear": Mode("head", "clean", 25),
    "adv-linear": Mode("head", "pgd", 25),
    "partial": Mode("layer4", "clean", 100),
    "full": Mode("all", "clean", 100),
    "adv-full": Mode("all", "pgd", 100),
    "trades": Mode("all", "trades", 100),
}


def _positive(name: str, value, *, integer: bool = False, zero: bool = False) -> None:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or not (value >= 0 if zero else value > 0) or value != value:
        kind = "an int" if integer else "a number"
        raise DataError(f"{name} must be {kind} {'>= 0' if zero else '> 0'}, got {value!r}")


def _check_mode(mode) -> None:
    if mode not in MODES:
        close = difflib.get_close_matches(str(mode), MODES, n=2)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise DataError(f"unknown mode {mode!r}{hint} (modes: {', '.join(MODES)})")


@dataclasses.dataclass(frozen=True)
class FinetuneSettings:
    """Every setting that determines a fine-tuning run (see :func:`robustzoo.finetune` for each one).

    ``epochs``, ``alpha`` and ``milestones`` left at None take the mode's and the paper's defaults;
    ``warmup`` None is resolved once the data size is known (:meth:`with_data`).
    """

    mode: str = "adv-full"
    epochs: int | None = None
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 3e-4
    schedule: str = "multistep"
    milestones: tuple[int, ...] | None = None
    warmup: int | None = None
    eps: float = 8 / 255
    alpha: float | None = None
    steps: int = 10
    eval_steps: int = 20
    beta: float = 6.0
    val_fraction: float = 0.1
    early_stopping: int | None = None
    seed: int = 0
    amp: bool = False
    channels_last: bool = False
    compile: bool = False
    augment: bool = True
    flip: bool = True
    padding: int = 4
    attack_mode: str = "train"

    def __post_init__(self) -> None:
        _check_mode(self.mode)
        fill = object.__setattr__  # frozen: defaults are resolved once, here
        if self.epochs is None:
            fill(self, "epochs", MODES[self.mode].epochs)
        _positive("epochs", self.epochs, integer=True)
        if self.alpha is None and isinstance(self.eps, (int, float)):
            fill(self, "alpha", self.eps / 4)
        fill(self, "milestones", tuple(default_milestones(self.epochs) if self.milestones is None
                                       else self.milestones))
        self._validate()

    def _validate(self) -> None:
        from .attacks import check_attack_args

        _positive("batch_size", self.batch_size, integer=True)
        _positive("lr", self.lr)
        for name in ("momentum", "weight_decay", "beta"):
            _positive(name, getattr(self, name), zero=True)
        check_attack_args(self.eps, self.alpha, self.steps)
        check_attack_args(self.eps, self.alpha, self.eval_steps)
        if self.loss != "clean" and (self.steps < 1 or self.eps <= 0):
            raise DataError(f"mode {self.mode!r} is adversarial: it needs eps > 0 and steps >= 1")
        if self.schedule not in SCHEDULES:
            raise DataError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if any(isinstance(m, bool) or not isinstance(m, int) or not 0 < m < self.epochs for m in self.milestones):
            raise DataError(f"milestones must be epochs in 1..{self.epochs - 1}, got {list(self.milestones)}")
        if self.warmup is not None:
            _positive("warmup", self.warmup, integer=True, zero=True)
        if not (isinstance(self.val_fraction, (int, float)) and 0 <= self.val_fraction < 1):
            raise DataError(f"val_fraction must be in [0, 1), got {self.val_fraction!r}")
        if self.early_stopping is not None:
            _positive("early_stopping", self.early_stopping, integer=True)
        if self.attack_mode not in ("train", "eval"):
            raise DataError(f"attack_mode must be 'train' (the paper) or 'eval', got {self.attack_mode!r}")
        _positive("padding", self.padding, integer=True, zero=True)

    @property
    def loss(self) -> str:
        return MODES[self.mode].loss

    @property
    def trains(self) -> str:
        return MODES[self.mode].trains

    @property
    def select(self) -> str:
        """The validation score that picks the best epoch: robust in adversarial modes, else clean."""
        return "val_clean" if self.loss == "clean" else "val_robust"

    def with_data(self, n_train: int) -> FinetuneSettings:
        """Resolve the default warm-up: min(200, iterations per epoch) for multistep (the paper's
        epoch-0 ramp), 0 otherwise."""
        if self.warmup is not None:
            return self
        per_epoch = max(1, n_train // self.batch_size)
        return dataclasses.replace(self, warmup=min(200, per_epoch) if self.schedule == "multistep" else 0)

    def as_dict(self) -> dict:
        """Plain JSON-able values (milestones as a list), as recorded in results and checkpoints."""
        d = dataclasses.asdict(self)
        d["milestones"] = list(self.milestones)
        return d
