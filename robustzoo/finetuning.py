"""Fine-tuning with the paper's recipes: linear, partial, full, adversarial (Madry PGD) and TRADES.

Chen et al. (CVPR 2020) fine-tune self-supervised pretrained ResNets on CIFAR-10 (section 4):
adversarial full fine-tuning is ``finetune/main.py``: SGD lr 0.1, momentum 0.9, weight decay 3e-4,
batch 128, 100 epochs, lr x0.1 at epochs 60 and 80 after a 200-iteration warm-up, PGD-10 (eps 8/255,
step 2/255, model in train mode) and loss = CE on the adversarial batch only; the checkpoint is
picked on a held-out 10 % of the training set by PGD-20 robust accuracy. Those are the defaults here,
except that eps defaults to the model's own budget (8/255 for CIFAR-10 models, 0.1 for ``*-fmnist``;
:func:`robustzoo.evaluation.recorded_eps`), with step eps/4.

Modes (what is trained / the loss):

* ``"linear"``: the head only, clean CE (backbone frozen, its BatchNorm statistics included);
* ``"adv-linear"``: the head only, CE on PGD examples;
* ``"partial"``: ``layer4`` + head, clean CE (the paper's partial fine-tuning: stem and layer1-3,
  i.e. the pretext-trained theta_p, stay frozen);
* ``"full"``: everything, clean CE;
* ``"adv-full"``: everything, CE on PGD examples (Madry et al. 2018; the paper's main recipe);
* ``"trades"``: everything, ``CE(clean) + beta * KL(p_clean || p_adv)`` with the TRADES inner
  maximisation (Zhang et al. 2019; beta 6 as TRADES, the paper's ``main_trades*.py`` used 1).
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from .checkpoint import (
    CHECKPOINT_NAME,
    CheckpointError,
    RunLock,
    data_digest,
    describe_model,
    load_checkpoint,
    tensor_digest,
)
from .data import load_data
from .errors import DataError
from .finetune_settings import MODES, FinetuneSettings, _positive
from .layout import channels_last_hazard
from .serialization import mark_finetuned, save_pretrained  # not .weights: it imports the models
from .trainer import Run, fit, restore

__all__ = ["MODES", "FinetuneResult", "FinetuneSettings", "finetune"]

_TRAINED = {"head": ("linear",), "layer4": ("layer4", "linear")}

@dataclass
class FinetuneResult:
    """What :func:`finetune` returns.

    Attributes:
        model: the fine-tuned model (the same object that was passed in), holding the weights of the
            best epoch, in eval mode.
        history: one dict per epoch: epoch (1-based), loss, train_acc (on the batches trained on:
            adversarial ones in adversarial modes), val_clean, val_robust (PGD-``eval_steps``), lr,
            seconds. Accuracies in percent.
        best_epoch: 1-based epoch whose weights ``model`` holds.
        best_metric: ``"val_robust"`` (adversarial modes) or ``"val_clean"`` (clean modes).
        settings: every argument that determined the run, plus data sizes and versions.
        checkpoint_dir: where ``ckpt.safetensors`` and ``best/model.safetensors`` were written, if any.
        stopped_early: True when early stopping ended the run.
    """

    model: nn.Module
    history: list[dict]
    best_epoch: int
    best_metric: str
    settings: dict
    checkpoint_dir: Path | None = None
    stopped_early: bool = False
    best_value: float | None = field(default=None)

    def __str__(self) -> str:
        last = self.history[-1] if self.history else {}
        return (f"FinetuneResult(mode={self.settings.get('mode')}, epochs run={len(self.history)}, best epoch="
                f"{self.best_epoch} ({self.best_metric}={self.best_value}), last={last})")


def _head(model: nn.Module, num_classes: int | None) -> int:
    """The head size training will use; raises before anything is changed."""
    current = getattr(model, "num_classes", None)
    if num_classes is not None:
        _positive("num_classes", num_classes, integer=True)
        if num_classes != current and not hasattr(model, "reset_classifier"):
            raise DataError("num_classes differs from the model's head and the model has no reset_classifier()")
        return num_classes
    if current == 0:
        raise DataError("the model has no classifier head (num_classes=0): pass num_classes= the number of "
                        "classes in your data, e.g. finetune(model, data, num_classes=10)")
    return current


def _split(x, y, val_data, val_fraction: float, seed: int, in_chans, num_classes: int) -> tuple:
    if val_data is not None:
        if isinstance(val_data, (str, Path)):
            raise DataError("val_data must be tensors, a Dataset or a DataLoader, not a name (a named split "
                            "would be the test set); leave it None to hold out val_fraction of the training data")
        xv, yv = load_data(val_data, in_chans=in_chans, num_classes=num_classes)
        return x, y, xv, yv
    n_val = int(round(val_fraction * len(x)))
    if n_val == 0:
        return x, y, None, None
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    return x[perm[n_val:]], y[perm[n_val:]], x[perm[:n_val]], y[perm[:n_val]]


def _freeze(model: nn.Module, part: str) -> list[nn.Module]:
    if part == "all":
        return []
    names = _TRAINED[part]
    if not all(hasattr(model, n) for n in names):
        raise DataError(f"this mode trains only {' + '.join(names)}: it needs a robustzoo ResNet (with "
                        f"{', '.join(names)} submodules), got {type(model).__name__}")
    frozen = [m for name, m in model.named_children() if name not in names]
    for m in frozen:
        m.requires_grad_(False)
    return frozen


def finetune(
    model: nn.Module,
    data,
    *,
    mode: str = "adv-full",
    epochs: int | None = None,
    batch_size: int = 128,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 3e-4,
    schedule: str = "multistep",
    milestones: list[int] | None = None,
    warmup: int | None = None,
    eps: float | None = None,
    alpha: float | None = None,
    steps: int = 10,
    eval_steps: int = 20,
    beta: float = 6.0,
    val_data=None,
    val_fraction: float = 0.1,
    early_stopping: int | None = None,
    num_classes: int | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    amp: bool = False,
    channels_last: bool = False,
    compile: bool = False,
    augment: bool = True,
    flip: bool = True,
    padding: int = 4,
    attack_mode: str = "train",
) -> FinetuneResult:
    """Fine-tune ``model`` on ``data`` in place and return the best epoch's weights (paper defaults).

    Args:
        model: a robustzoo ResNet (any classifier works for "full", "adv-full" and "trades").
        data: training data, anything :func:`robustzoo.data.load_data` accepts (a name loads its
            train split). Never pass the test set: validation is carved from this data.
        mode: "linear", "adv-linear", "partial", "full", "adv-full" (default) or "trades".
        epochs: default 100 (25 for the linear modes).
        batch_size, lr, momentum, weight_decay: SGD settings (paper: 128, 0.1, 0.9, 3e-4). The last
            partial batch of each epoch is dropped.
        schedule: "multistep" (paper), "cosine" or "onecycle" (per iteration).
        milestones: multistep decay epochs (x0.1); default 60 % and 80 % of ``epochs`` (60, 80 of 100).
        warmup: iterations of linear warm-up from lr/10; default min(200, iterations per epoch) for
            multistep (the paper's epoch-0 ramp), 0 otherwise.
        eps, alpha, steps: training attack (Linf, pixel units). eps defaults to the model's own budget, as in
            :func:`robustzoo.evaluate` (its registry record: 0.1 for ``*-fmnist``; else the eps its file was
            fine-tuned at; else the paper's 8/255); alpha defaults to eps/4 (2/255 at 8/255).
        eval_steps: PGD steps of the per-epoch validation attack (paper: 20; 0 skips it).
        beta: TRADES weight of the KL term.
        val_data: explicit validation data; default: a seeded ``val_fraction`` of ``data`` is held out
            (0 disables validation; the last epoch is then returned).
        early_stopping: stop after this many epochs without a better validation score.
        num_classes: replace the head with a fresh one of this size (required for a headless model).
        seed: seeds the split, data order, augmentation, attack starts and a new head.
        device: default the model's device.
        checkpoint_dir: write ``ckpt.safetensors`` every epoch (atomically) and ``best/model.safetensors`` at
            the end; one run at a time per folder (a second one gets a CheckpointError naming the holder).
        resume: continue from ``checkpoint_dir/ckpt.safetensors``; gives the same result as an uninterrupted
            run. The checkpoint is verified first (content hash, and a fingerprint of the model, its starting
            weights, the data and every setting): a corrupted file or another run's raises CheckpointError.
        progress: tqdm bar with live loss and accuracy, and one summary line per epoch.
        amp, channels_last, compile: bf16 autocast, channels-last memory format, ``torch.compile``
            (speed on GPU; they change numerics slightly; compile is slow to start on CPU).
        augment, flip, padding: random crop with ``padding`` + horizontal flip (``flip=False`` for
            digits/text), done on the device.
        attack_mode: "train" attacks the model in training mode (BatchNorm batch statistics) as the
            paper does; "eval" attacks it in eval mode. Frozen parts stay in eval mode either way.

    Returns:
        :class:`FinetuneResult`. The best epoch is chosen on the validation split by robust accuracy
        in adversarial modes and by clean accuracy in clean modes.

    Raises:
        DataError: any bad argument or data, before training starts.
    """
    if eps is None:
        from .evaluation import recorded_eps

        eps = recorded_eps(model)[0]
    settings = FinetuneSettings(
        mode=mode, epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum, weight_decay=weight_decay,
        schedule=schedule, milestones=None if milestones is None else tuple(milestones), warmup=warmup, eps=eps,
        alpha=alpha, steps=steps, eval_steps=eval_steps, beta=beta, val_fraction=val_fraction,
        early_stopping=early_stopping, seed=seed, amp=amp, channels_last=channels_last, compile=compile,
        augment=augment, flip=flip, padding=padding, attack_mode=attack_mode)
    if resume and checkpoint_dir is None:
        raise DataError("resume=True needs checkpoint_dir= the folder of the interrupted run")
    if checkpoint_dir is not None and Path(checkpoint_dir).is_file():
        raise DataError(f"checkpoint_dir {checkpoint_dir} is a file; pass a folder")
    n_classes = _head(model, num_classes)
    in_chans = getattr(model, "in_chans", None)
    x, y = load_data(data, in_chans=in_chans, num_classes=n_classes)
    x, y, x_val, y_val = _split(x, y, val_data, val_fraction, seed, in_chans, n_classes)
    if len(x) < 2:
        raise DataError(f"only {len(x)} training sample(s) left after holding out validation data")
    # ---- every check passed: only from here on does anything change ----
    mark_finetuned(model, asdict(settings))  # now, not at the end: an interrupted run has changed weights too
    return _run(model, settings.with_data(len(x)), x, y, x_val, y_val, n_classes, device=device,
                checkpoint_dir=checkpoint_dir, resume=resume, progress=progress)


def _run(model, settings: FinetuneSettings, x, y, x_val, y_val, n_classes, *, device, checkpoint_dir, resume,
         progress) -> FinetuneResult:
    ref = next(model.parameters())
    device = torch.device(device) if device is not None else ref.device
    if n_classes != getattr(model, "num_classes", None):
        with torch.random.fork_rng(devices=[]):  # a seeded head without touching the caller's RNG
            torch.manual_seed(settings.seed)
            model.reset_classifier(n_classes)
    model.to(device)
    if settings.channels_last and (hazard := channels_last_hazard(model, device)):
        warnings.warn(f"channels_last=True ignored: {hazard}; training in the default layout (same results)",
                      UserWarning, stacklevel=3)
        settings = replace(settings, channels_last=False)
    if settings.channels_last:
        model.to(memory_format=torch.channels_last)
    requires = [(p, p.requires_grad) for p in model.parameters()]
    frozen = _freeze(model, settings.trains)
    params = [p for p in model.parameters() if p.requires_grad]
    # what the run is bound to (compile and the memory layout only change speed: a resume may switch them,
    # e.g. on a machine where channels-last is unsafe)
    cfg = {k: v for k, v in settings.as_dict().items() if k != "compile"}
    cfg.update(eval_alpha=settings.alpha, num_classes=n_classes, select=settings.select, n_train=len(x),
               n_val=0 if x_val is None else len(x_val), data=data_digest(x, y))
    gens = {"data": torch.Generator(), "aug": torch.Generator(device=device), "attack": torch.Generator(device=device)}
    for i, g in enumerate(gens.values()):
        g.manual_seed(settings.seed * 1000 + i)
    run = Run(model=model, forward=torch.compile(model) if settings.compile else model,
              optimizer=torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum,
                                        weight_decay=settings.weight_decay),
              frozen=frozen, loss=settings.loss, x=x.to(device), y=y.to(device),
              x_val=None if x_val is None else x_val.to(device), y_val=None if y_val is None else y_val.to(device),
              cfg=cfg, device=device, generators=gens, progress=progress,
              checkpoint_dir=None if checkpoint_dir is None else Path(checkpoint_dir),
              fingerprint={"model": describe_model(model), "weights": tensor_digest(model.state_dict()),
                           "settings": {k: v for k, v in cfg.items() if k != "channels_last"}})
    with RunLock(run.checkpoint_dir) if run.checkpoint_dir is not None else contextlib.nullcontext():
        try:
            resumed_from = _resume(run, resume)
            fit(run)
        finally:
            for p, flag in requires:
                p.requires_grad_(flag)
        return _finish(run, settings, resumed_from)


def _resume(run: Run, resume: bool) -> int:
    """Restore a verified checkpoint when asked to; the epoch resumed from (0 for a fresh run)."""
    path = None if run.checkpoint_dir is None else run.checkpoint_dir / CHECKPOINT_NAME
    if resume and path is not None and not path.exists() and (run.checkpoint_dir / "last.pt").exists():
        raise CheckpointError(f"{run.checkpoint_dir / 'last.pt'} was written by an older robustzoo (pickled "
                              "torch.save) and cannot be verified; resume=False starts the run over")
    if path is None or not path.exists():
        return 0
    if not resume:
        warnings.warn(f"{path} exists and resume=False: starting over and overwriting it", UserWarning,
                      stacklevel=4)
        return 0
    restore(run, load_checkpoint(path, run.fingerprint))  # verified before anything touches the model
    return run.state["epoch"]


def _finish(run: Run, ft: FinetuneSettings, resumed_from: int) -> FinetuneResult:
    model, cfg = run.model, run.cfg
    state = run.state
    if state["best_state"] is not None:
        model.load_state_dict(state["best_state"])
    model.eval()
    from . import __version__

    settings = {**cfg, "device": str(run.device), "compile": ft.compile, "resumed_from_epoch": resumed_from,
                "versions": {"robustzoo": __version__, "torch": torch.__version__}}
    mark_finetuned(model, settings)
    if run.checkpoint_dir is not None and hasattr(model, "config"):
        save_pretrained(model, run.checkpoint_dir / "best", name=f"finetune-{ft.mode}",  # carries the record
                        metadata={"best_epoch": str(state["best_epoch"])})
    stopped = bool(ft.early_stopping) and state["epoch"] < ft.epochs
    return FinetuneResult(model=model, history=state["history"], best_epoch=state["best_epoch"],
                          best_metric=cfg["select"], settings=settings, checkpoint_dir=run.checkpoint_dir,
                          stopped_early=stopped, best_value=state["best_value"])
