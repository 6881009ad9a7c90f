"""Clean and robust accuracy with sanity checks, following the paper's protocol (``finetune/main.py``).

Robust accuracy (RA) is top-1 accuracy under a white-box Linf attack, eps 8/255, with the model in
eval mode: the paper's number is PGD-20, step 2/255, uniform random start, one restart, CE on logits.
AutoAttack (Croce and Hein, ICML 2020) in its fixed ``version="standard"`` is available through the
``pyautoattack`` package (``pip install robustzoo[autoattack]``); it is never re-implemented here.

Before any number is reported, the checks of AutoAttack's ``checks.py`` run on the first batch:
outputs that look like probabilities instead of logits, zero input gradients (gradient masking)
and randomised outputs each raise a :class:`EvaluationWarning`.
"""

from __future__ import annotations

import difflib
import re
import time
import warnings
from dataclasses import dataclass, field
from importlib import metadata

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ._io import terminal
from .attacks import check_attack_args, cw_margin, model_mode, pgd
from .data import load_data
from .errors import DataError, EvaluationWarning, RobustZooError

__all__ = ["EvalResult", "EvaluationWarning", "evaluate", "recorded_eps"]

_PGD = re.compile(r"^pgd(\d+)(-cw|-ce)?$")


@dataclass
class EvalResult:
    """Result of :func:`evaluate`.

    Attributes:
        accuracy: percent (0-100, like the paper) per attack name; robust accuracies count a sample
            only if it is classified correctly both clean *and* under the attack.
        correct: per-sample boolean tensors (n,) per attack name, with the same AND rule.
        settings: eps, alpha, steps/loss per attack, restarts, n, seed, batch size, versions, timings.
        n: number of evaluated samples.
    """

    accuracy: dict[str, float]
    correct: dict[str, torch.Tensor] = field(repr=False)
    settings: dict
    n: int

    def to_dict(self) -> dict:
        """JSON-ready summary (no tensors)."""
        return {"accuracy": dict(self.accuracy), "n": self.n, "settings": dict(self.settings)}

    def __str__(self) -> str:
        rows = [f"{name:<12} {acc:6.2f} %" for name, acc in self.accuracy.items()]
        eps = self.settings.get("eps", 0.0)
        return f"n={self.n}, eps={eps:.5f} ({eps * 255:.1f}/255)\n" + "\n".join(rows)


def _parse_attacks(attacks) -> list[dict]:
    if isinstance(attacks, str):
        attacks = (attacks,)
    specs, known = [], ["clean", "pgd20", "pgd10", "pgd20-cw", "pgd100", "autoattack", "aa-fast"]
    for name in attacks:
        key = str(name).lower()
        m = _PGD.match(key)
        if key == "clean":
            specs.append({"name": "clean", "kind": "clean"})
        elif key in ("autoattack", "aa"):
            specs.append({"name": "autoattack", "kind": "autoattack", "version": "standard"})
        elif key in ("aa-fast", "aafast"):  # its own name: never reported as AutoAttack
            specs.append({"name": "aa-fast", "kind": "aa-fast"})
        elif m and int(m.group(1)) > 0:
            loss = "cw" if m.group(2) == "-cw" else "ce"
            specs.append({"name": key, "kind": "pgd", "steps": int(m.group(1)), "loss": loss})
        else:
            close = difflib.get_close_matches(key, known, n=2)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise DataError(f"unknown attack {name!r}{hint} (use 'clean', 'pgdK' (CE, K steps, e.g. "
                            "'pgd20'), 'pgdK-cw' (CW margin loss), 'autoattack' or 'aa-fast')")
    if not specs:
        raise DataError("attacks is empty; e.g. attacks=('clean', 'pgd20')")
    return specs


def _sanity_checks(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    """AutoAttack-style checks (``checks.py``) on one batch; warns, returns what it found."""
    with torch.no_grad():
        out1, out2 = model(x), model(x)
    found = {"randomized": not torch.allclose(out1, out2, atol=1e-5)}
    if found["randomized"]:
        warnings.warn("the model's outputs differ between two identical forward passes in eval mode: "
                      "a randomised defence needs an EOT attack; these numbers may overestimate robustness",
                      EvaluationWarning, stacklevel=3)
    in_unit = bool(((out1 >= 0) & (out1 <= 1)).all())
    found["probabilities"] = in_unit and torch.allclose(out1.sum(1), torch.ones_like(out1[:, 0]), atol=1e-3)
    if found["probabilities"]:
        warnings.warn("the model's outputs look like probabilities (rows in [0,1] summing to 1), not logits: "
                      "cross-entropy on probabilities weakens gradient attacks; return logits (or log-probs)",
                      EvaluationWarning, stacklevel=3)
    xg = x.clone().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(F.cross_entropy(model(xg), y, reduction="sum"), xg)
    zero = int((grad.flatten(1).abs().amax(1) == 0).sum())
    found["zero_gradients"] = zero
    if zero:
        warnings.warn(f"{zero} of {len(x)} samples have an all-zero input gradient: possible gradient masking; "
                      "gradient-based robust accuracy may be overestimated (try 'autoattack')",
                      EvaluationWarning, stacklevel=3)
    return found


def _pgd_correct(model, x, y, spec, *, eps, alpha, restarts, generator, amp) -> torch.Tensor:
    loss_fn = ((lambda z: F.cross_entropy(model(z), y, reduction="none")) if spec["loss"] == "ce"
               else (lambda z: cw_margin(model(z), y)))
    # pgd keeps, per sample, a restart that fools the model if any does: robust = every restart failed
    x_adv = pgd(loss_fn, x, eps=eps, alpha=alpha, steps=spec["steps"], restarts=restarts, model=model, y=y,
                mode="eval", generator=generator, amp=amp)
    with torch.no_grad():
        return model(x_adv).argmax(1) == y


def _pgd_eval(model, x, y, clean, spec, *, eps, alpha, restarts, seed, batch_size, device, amp, progress):
    """PGD on the clean-correct samples only: the others count as non-robust whatever the attack does,
    so skipping them gives the same accuracy for (1 - clean accuracy) less compute."""
    gen = torch.Generator(device=device).manual_seed(seed)
    idx = clean.nonzero().squeeze(1)
    got = torch.zeros(len(x), dtype=torch.bool)
    done = 0
    progress = progress and terminal()  # a bar on a terminal; nothing in logs (no \r lines)
    bar = tqdm(total=len(x), desc=spec["name"], disable=not progress, leave=False)
    bar.update(len(x) - len(idx))
    for ib in idx.split(batch_size):
        got[ib] = ok = _pgd_correct(model, x[ib].to(device), y[ib].to(device), spec, eps=eps, alpha=alpha,
                                    restarts=restarts, generator=gen, amp=amp).cpu()
        if progress:  # the count syncs with the device: only when a bar shows it
            done += int(ok.sum())
            bar.update(len(ib))
            bar.set_postfix(acc=f"{100 * done / max(1, bar.n):.1f}%")
    bar.close()
    return got


def _autoattack(model, x, y, *, eps, batch_size, device, seed) -> tuple[torch.Tensor, str, dict]:
    try:
        from pyautoattack import AutoAttack
    except ImportError as e:  # the optional extra
        raise RobustZooError("attack 'autoattack' needs the AutoAttack package: pip install robustzoo[autoattack]"
                             ) from e
    from .aafast import PassCounter

    model = PassCounter(model)  # the same pass counter as aa-fast, so the two costs compare
    adversary = AutoAttack(model, norm="Linf", eps=eps, version="standard", device=device, seed=seed)
    params = [(p, p.requires_grad) for p in model.parameters()]
    try:  # FAB calls .backward(): freezing the weights saves their gradients and keeps .grad clean
        for p, _ in params:
            p.requires_grad_(False)
        _, y_adv = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
    finally:
        for p, flag in params:
            p.requires_grad_(flag)
    return (y_adv.to(y.device) == y), metadata.version("pyautoattack"), model.counts()


def _aa_fast(model, x, y, *, eps, batch_size, device, seed) -> tuple[torch.Tensor, dict]:
    from .aafast import aa_fast

    res = aa_fast(model, x.to(device), y.to(device), eps=eps, seed=seed, batch_size=batch_size)
    summary = {"robust_accuracy": round(100.0 * res.robust.double().mean().item(), 4), "n": len(x),
               **res.counts, "seconds": res.seconds, **res.settings}
    return res.robust, summary


def evaluate(
    model: nn.Module,
    data,
    *,
    eps: float | None = None,
    attacks=("clean", "pgd20"),
    alpha: float | None = None,
    n: int | None = None,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    seed: int = 0,
    restarts: int = 1,
    split: str = "test",
    root: str | None = None,
    progress: bool = True,
    amp: bool = False,
) -> EvalResult:
    """Clean and robust top-1 accuracy of ``model`` on ``data`` (in eval mode, restored afterwards).

    Args:
        model: a classifier taking [0, 1] inputs and returning logits (robustzoo models do).
        data: anything :func:`robustzoo.data.load_data` accepts: a name ("cifar10", "fmnist-mini"...),
            a Dataset, a DataLoader or ``(x, y)`` tensors.
        eps: Linf budget in pixel units (paper: 8/255; Fashion-MNIST: 0.1). Default: the model's own
            (:func:`recorded_eps`: its registry record, else its fine-tuning record, else 8/255); where it
            came from is in ``settings["eps_from"]``.
        attacks: names among ``"clean"``, ``"pgdK"`` (CE, K steps, e.g. ``"pgd20"`` = the paper's RA),
            ``"pgdK-cw"`` (CW margin loss), ``"autoattack"`` (standard AutoAttack, Linf), ``"aa-fast"``
            (a cheaper cascade of APGD-CE and MALT-targeted APGD-T, :mod:`robustzoo.aafast`; reported
            under its own name, with its passes and seconds in ``settings["aa-fast"]``).
        alpha: PGD step size; default ``eps / 4`` (2/255 at 8/255, as in the paper).
        n: evaluate the first ``n`` samples only (file order, like RobustBench).
        batch_size: evaluation batch size.
        device: where to run; default the model's device (the model is moved if this differs).
        seed: seeds the PGD random starts (and AutoAttack), so results are reproducible.
        restarts: PGD restarts; a sample counts as robust only if it survives all of them.
        split: split to load when ``data`` is a name (default the test split).
        root: dataset root when ``data`` is a name.
        progress: show a tqdm bar per attack.
        amp: bf16 autocast during PGD (faster on GPU; keep False for reported numbers).

    Returns:
        :class:`EvalResult` with accuracies in percent; every robust number counts a sample as
        correct only if it is correct clean and under the attack. PGD therefore runs on the
        clean-correct samples only (AutoAttack does the same internally), which saves compute and
        changes no accuracy.
    """
    specs = _parse_attacks(attacks)
    eps, eps_from = recorded_eps(model) if eps is None else (eps, "the eps argument")
    alpha = eps / 4 if alpha is None else alpha
    check_attack_args(eps, alpha, max([s.get("steps", 0) for s in specs]), "linf", restarts)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if getattr(model, "num_classes", 1) == 0:
        raise DataError("the model has no classifier head (num_classes=0); fine-tune it or reset_classifier(n)")
    ref = next(model.parameters(), None)
    device = torch.device(device) if device is not None else (ref.device if ref is not None else torch.device("cpu"))
    x, y = load_data(data, split=split, root=root, n=n, in_chans=getattr(model, "in_chans", None),
                     num_classes=getattr(model, "num_classes", None))
    model.to(device)
    settings = {"eps": float(eps), "eps_from": eps_from, "alpha": float(alpha), "norm": "Linf", "restarts": restarts,
                "n": len(x),
                "seed": seed, "batch_size": batch_size, "device": str(device), "amp": amp,
                "attacks": specs, "seconds": {}, "versions": {"torch": torch.__version__}}
    from . import __version__

    settings["versions"]["robustzoo"] = __version__
    correct: dict[str, torch.Tensor] = {}
    with model_mode(model, "eval"):
        settings["checks"] = _sanity_checks(model, x[:batch_size].to(device), y[:batch_size].to(device))
        clean = torch.cat([model_correct(model, xb.to(device), yb.to(device)).cpu()
                           for xb, yb in zip(x.split(batch_size), y.split(batch_size))])
        for spec in specs:
            t0, name = time.perf_counter(), spec["name"]
            if spec["kind"] == "clean":
                got = clean
            elif spec["kind"] == "autoattack":
                got, settings["versions"]["pyautoattack"], counts = _autoattack(
                    model, x, y, eps=eps, batch_size=batch_size, device=device, seed=seed)
                settings["passes"] = {**settings.get("passes", {}), "autoattack": counts}
            elif spec["kind"] == "aa-fast":
                got, settings["aa-fast"] = _aa_fast(model, x, y, eps=eps, batch_size=batch_size, device=device,
                                                    seed=seed)
                settings["passes"] = {**settings.get("passes", {}), "aa-fast": {
                    k: settings["aa-fast"][k] for k in ("forward", "backward", "passes")}}
            else:
                got = _pgd_eval(model, x, y, clean, spec, eps=eps, alpha=alpha, restarts=restarts, seed=seed,
                                batch_size=batch_size, device=device, amp=amp, progress=progress)
            settings["seconds"][name] = round(time.perf_counter() - t0, 3)
            correct[name] = clean & got.cpu()  # robust implies clean-correct, by definition
    accuracy = {k: 100.0 * v.double().mean().item() for k, v in correct.items()}
    return EvalResult(accuracy=accuracy, correct=correct, settings=settings, n=len(x))


def recorded_eps(model: nn.Module) -> tuple[float, str]:
    """The Linf budget ``model`` is meant to be attacked at, and where it comes from.

    In order: the registry record's ``attack`` of the name it was loaded by (``robustzoo.load(NAME)``: 0.1
    for ``*-fmnist``, 8/255 for CIFAR-10), the eps its file says it was fine-tuned at
    (:func:`robustzoo.weights.finetune_record`), else 8/255, the paper's CIFAR-10 budget (Chen et al.,
    CVPR 2020, section 4).
    """
    from .registry import REGISTRY
    from .serialization import finetune_record  # not .weights: it imports the models

    spec = REGISTRY.get(str((getattr(model, "pretrained_meta", None) or {}).get("source", "")))
    if spec is not None and spec.attack:
        return float(spec.attack["eps"]), "the registry record"
    own = finetune_record(model)
    if "eps" in own:
        return own["eps"], "the model's fine-tuning record"
    return 8 / 255, "the default for a model with no record"


def model_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample top-1 correctness on clean inputs (no gradient)."""
    with torch.no_grad():
        return model(x).argmax(1) == y
