"""White-box attacks: one PGD over a loss closure, FGSM with random start, and the TRADES inner step.

Every attack here works on inputs in [0, 1] with budgets in pixel units (the models normalise
inside), takes gradients with respect to the *input only* (``torch.autograd.grad``; parameters'
``.grad`` are never touched and no weight gradients are computed), and never syncs with the host
inside its step loop (no ``.item()``, no Python branching on tensor values), so it runs at full
speed on a GPU and can be captured by ``torch.compile``.

The loss is a closure, so the same PGD serves fine-tuning, evaluation and the pretext tasks::

    x_adv = pgd(lambda z: F.cross_entropy(model(z), y, reduction="none"), x,
                eps=8 / 255, alpha=2 / 255, steps=10, model=model, mode="train")

References:
    Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018.
    Wong, Rice and Kolter, "Fast is better than free: Revisiting adversarial training", ICLR 2020.
    Zhang et al., "Theoretically Principled Trade-off between Robustness and Accuracy" (TRADES), ICML 2019.
    Chen et al., "Adversarial Robustness: From Self-Supervised Pre-Training to Fine-Tuning", CVPR 2020
    (``PGD_normal`` in the official code's ``pretraining/attack_algo.py``).
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .errors import DataError

__all__ = ["pgd", "fgsm", "trades_adv", "cw_margin", "model_mode", "check_attack_args"]

LossFn = Callable[[torch.Tensor], torch.Tensor]
_MODES = ("eval", "train", None)
_NORMS = ("linf", "l2")


@contextlib.contextmanager
def model_mode(model: nn.Module | None, mode: str | None) -> Iterator[None]:
    """Put ``model`` in ``mode`` ("train", "eval" or None = leave it) and restore every submodule's flag.

    Restoring per submodule matters: a fine-tuner may keep a frozen backbone in eval mode inside a
    model that is otherwise in train mode, and a plain ``model.train()`` afterwards would undo that.
    """
    if mode not in _MODES:
        raise DataError(f"mode must be 'train', 'eval' or None, got {mode!r}")
    if model is None or mode is None:
        yield
        return
    saved = [(m, m.training) for m in model.modules()]
    model.train(mode == "train")
    try:
        yield
    finally:
        for m, training in saved:
            m.training = training


def check_attack_args(eps: float, alpha: float, steps: int, norm: str = "linf", restarts: int = 1) -> None:
    """Raise :class:`DataError` for a negative/non-finite budget or step size, bad steps/norm/restarts."""
    for name, v in (("eps", eps), ("alpha", alpha)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v < 0:
            raise DataError(f"{name} must be a finite number >= 0 (pixel units, e.g. 8/255), got {v!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise DataError(f"steps must be an int >= 0, got {steps!r}")
    if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1:
        raise DataError(f"restarts must be an int >= 1, got {restarts!r}")
    if norm not in _NORMS:
        raise DataError(f"norm must be 'linf' or 'l2', got {norm!r}")


def _check(x: torch.Tensor, eps: float, alpha: float, steps: int, norm: str, restarts: int = 1) -> None:
    # Only metadata checks: validating pixel values would need a device sync on every call.
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 2:
        raise DataError(f"x must be a floating-point tensor (B, ...), got {type(x).__name__} "
                        f"{getattr(x, 'dtype', '')} {tuple(getattr(x, 'shape', ()))}")
    check_attack_args(eps, alpha, steps, norm, restarts)


def _generator(generator: torch.Generator | int | None, device: torch.device) -> torch.Generator | None:
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    g = torch.Generator(device=device)
    g.manual_seed(int(generator))
    return g


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norm, shaped (B, 1, 1, ...) for broadcasting."""
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.ndim - 1)))


def _project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project onto the eps-ball around x, then onto the image box [0, 1]."""
    if norm == "linf":
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps)
    else:
        delta = x_adv - x
        delta = delta * torch.clamp(eps / (_flat_norm(delta) + 1e-12), max=1.0)
        x_adv = x + delta
    # Clamping each coordinate towards x (which lies in [0, 1]) can only shrink the perturbation.
    return x_adv.clamp(0.0, 1.0)


def _random_start(x: torch.Tensor, eps: float, norm: str, g: torch.Generator | None) -> torch.Tensor:
    if norm == "linf":
        noise = (torch.rand(x.shape, generator=g, device=x.device, dtype=x.dtype) * 2 - 1) * eps
    else:  # uniform in the L2 ball: Gaussian direction, radius eps * U^(1/d)
        d = x[0].numel()
        direction = torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)
        radius = torch.rand((x.shape[0],), generator=g, device=x.device, dtype=x.dtype) ** (1.0 / d) * eps
        noise = direction / (_flat_norm(direction) + 1e-12) * radius.view(-1, *([1] * (x.ndim - 1)))
    return x + noise


def _ascend(loss_fn: LossFn, x: torch.Tensor, x_adv: torch.Tensor, *, eps: float, alpha: float, steps: int,
            norm: str, amp: bool) -> torch.Tensor:
    """The PGD loop: ``steps`` steepest-ascent steps of size ``alpha``, each projected (Madry et al. 2018)."""
    x_adv = _project(x_adv, x, eps, norm).detach()
    if norm == "linf":  # ball and box intersect in a box: one clamp per step projects onto both
        lo, hi = (x - eps).clamp_(min=0.0), (x + eps).clamp_(max=1.0)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            loss = loss_fn(x_adv)
        # Summing per-sample losses gives each sample its own gradient (no 1/B scaling to worry about).
        (grad,) = torch.autograd.grad(loss.float().sum(), x_adv)
        with torch.no_grad():
            if norm == "linf":
                x_adv = torch.clamp(x_adv.add_(grad.sign_(), alpha=alpha), lo, hi)
            else:
                x_adv = _project(x_adv + alpha * grad / (_flat_norm(grad) + 1e-12), x, eps, norm)
    return x_adv.detach()


def cw_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample Carlini-Wagner margin ``max_{j != y} z_j - z_y`` (positive = misclassified).

    The margin loss of Carlini and Wagner (IEEE S&P 2017), maximised by ``pgdK-cw`` evaluations.
    """
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    return other.amax(1) - z_y


def pgd(
    loss_fn: LossFn,
    x: torch.Tensor,
    *,
    eps: float,
    alpha: float,
    steps: int,
    norm: str = "linf",
    random_start: bool = True,
    restarts: int = 1,
    model: nn.Module | None = None,
    mode: str | None = "eval",
    generator: torch.Generator | int | None = None,
    amp: bool = False,
    channels_last: bool = False,
    y: torch.Tensor | None = None,
) -> torch.Tensor:
    """Projected gradient ascent on ``loss_fn`` within an Linf or L2 ball (Madry et al. 2018).

    This is the paper's ``PGD_normal`` (Chen et al. 2020, ``pretraining/attack_algo.py``): random start, then
    ``x <- clip_[0,1](proj_ball(x + alpha * sign(grad)))``. One deviation: the paper does not clamp
    the random start to [0, 1] before the first step; we do, so the model only ever sees valid images
    (the difference disappears after the first projected step).

    Args:
        loss_fn: maps a batch ``x_adv`` (B, C, H, W) to per-sample losses (B,) (preferred; needed
            for ``restarts > 1``) or a scalar. It is maximised. Example:
            ``lambda z: F.cross_entropy(model(z), y, reduction="none")``.
        x: clean inputs in [0, 1] (not re-checked here, to avoid a device sync).
        eps: radius of the ball in pixel units (8/255 for CIFAR-10 Linf).
        alpha: step size in pixel units (2/255 in the paper); for ``"l2"`` the step is ``alpha`` times
            the L2-normalised gradient.
        steps: number of ascent steps (10 in training, 20 in evaluation in the paper).
        norm: ``"linf"`` or ``"l2"``.
        random_start: start uniformly in the ball (Madry et al.); otherwise at ``x``.
        restarts: independent random starts. Per sample, a restart whose point ``model`` misclassifies
            wins over one that does not, and among equals the highest final loss; so the returned point
            fools the model whenever any restart did: a sample is robust only if every restart fails
            (the rule :func:`robustzoo.evaluate` counts by). Needs ``model`` and the labels ``y``, and
            per-sample losses; costs two extra forwards per restart.
        model: if given, it is put in ``mode`` during the attack and every submodule's mode restored
            afterwards, also when ``loss_fn`` raises.
        mode: ``"train"`` reproduces the paper's training-time attack (BatchNorm uses the batch
            statistics and updates its running statistics), ``"eval"`` the evaluation attack, None
            leaves the model as it is.
        generator: ``torch.Generator`` (on ``x.device``) or an int seed for the random start;
            the same seed gives the same result. None uses the global RNG.
        amp: run ``loss_fn`` under bf16 autocast (GPU / AVX512-BF16 CPU speed-up; changes numerics).
        channels_last: hand ``loss_fn`` channels-last tensors (pair with a channels-last model; on a CPU,
            check narrow models with ``robustzoo.layout.channels_last_hazard`` first).
        y: labels of ``x``, to tell which restart fools ``model`` (only with ``restarts > 1``).

    Returns:
        ``x_adv`` with ``||x_adv - x|| <= eps`` and values in [0, 1], detached, same shape as ``x``.
    """
    _check(x, eps, alpha, steps, norm, restarts)
    if restarts > 1 and (model is None or y is None):
        raise DataError("restarts > 1 needs model= and y= (labels): a restart that fools the model is kept")
    x = x.detach()
    if channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    g = _generator(generator, x.device)
    best = best_loss = best_fooled = None
    with model_mode(model, mode), torch.enable_grad():
        for _ in range(restarts):
            start = _random_start(x, eps, norm, g) if random_start else x.clone()
            x_adv = _ascend(loss_fn, x, start, eps=eps, alpha=alpha, steps=steps, norm=norm, amp=amp)
            if restarts == 1:
                return x_adv
            with torch.no_grad():
                with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
                    loss = loss_fn(x_adv).float()
                fooled = model(x_adv).argmax(1) != y  # full precision, as the evaluation counts it
            if loss.shape != x.shape[:1]:
                raise DataError(f"restarts > 1 needs per-sample losses of shape ({x.shape[0]},), "
                                f"got {tuple(loss.shape)}; use reduction='none'")
            if best is None:
                best, best_loss, best_fooled = x_adv, loss, fooled
                continue
            # per sample: fooling beats not fooling; among equals, the higher loss
            better = (fooled & ~best_fooled) | ((fooled == best_fooled) & (loss > best_loss))
            best = torch.where(better.view(-1, *([1] * (x.ndim - 1))), x_adv, best)
            best_loss, best_fooled = torch.where(better, loss, best_loss), best_fooled | fooled
    return best


def fgsm(
    loss_fn: LossFn,
    x: torch.Tensor,
    *,
    eps: float,
    alpha: float | None = None,
    random_start: bool = True,
    model: nn.Module | None = None,
    mode: str | None = "eval",
    generator: torch.Generator | int | None = None,
    amp: bool = False,
) -> torch.Tensor:
    """FGSM with a uniform random start ("FGSM-RS", Wong, Rice and Kolter, ICLR 2020).

    One projected signed-gradient step of size ``alpha`` (default ``1.25 * eps`` as in Wong et al.)
    from a uniform random point of the Linf ball; i.e. :func:`pgd` with ``steps=1``.
    """
    alpha = 1.25 * eps if alpha is None else alpha
    return pgd(loss_fn, x, eps=eps, alpha=alpha, steps=1, random_start=random_start, model=model, mode=mode,
               generator=generator, amp=amp)


def trades_adv(
    model: nn.Module,
    x: torch.Tensor,
    *,
    eps: float,
    alpha: float,
    steps: int,
    norm: str = "linf",
    mode: str | None = "eval",
    generator: torch.Generator | int | None = None,
    amp: bool = False,
) -> torch.Tensor:
    """TRADES inner maximisation (Zhang et al., ICML 2019): maximise ``KL(p(x) || p(x_adv))``.

    Starts at ``x + 0.001 * N(0, 1)`` as in the TRADES code (and the paper's ``Trades()`` in
    ``attack_algo.py``), then ``steps`` projected sign steps on the per-sample KL divergence. The
    clean distribution ``p(x)`` is computed once, without gradient, in ``mode`` (the TRADES code
    attacks in eval mode; the paper's ``main_trades2.py`` recomputed it in train mode every step).

    Returns:
        ``x_adv`` in the eps-ball around ``x`` and in [0, 1], detached.
    """
    _check(x, eps, alpha, steps, norm)
    x = x.detach()
    g = _generator(generator, x.device)
    with model_mode(model, mode):
        with torch.no_grad(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            p_clean = F.softmax(model(x).float(), dim=1)

        def kl(z: torch.Tensor) -> torch.Tensor:
            logp_adv = F.log_softmax(model(z).float(), dim=1)
            return F.kl_div(logp_adv, p_clean, reduction="none").sum(dim=1)

        start = x + 0.001 * torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)
        with torch.enable_grad():
            return _ascend(kl, x, start, eps=eps, alpha=alpha, steps=steps, norm=norm, amp=amp)
