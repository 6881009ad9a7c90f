"""``robustzoo eval`` and ``robustzoo finetune``: settings from the weight's registry record, a plan
line before the first step, a resume command on Ctrl-C.

Defaults follow the weight's dataset: a registry name brings its ``attack`` (eps, step, steps) and
``finetune_defaults`` (mode, epochs, lr, batch size) records, so a Fashion-MNIST weight is attacked
at eps 0.1 and a CIFAR-10 weight at the paper's 8/255 (Chen et al., CVPR 2020, section 4).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
import time
from pathlib import Path

from .card import pct as _pct
from .card import table as _table
from .errors import DataError, RobustZooError

# Used when the model is not a registry name (a file, a folder, a Hub repo): the paper's CIFAR-10 settings.
FALLBACK = {"mode": "adv-full", "eps": 8 / 255, "step": 2 / 255, "steps": 10, "epochs": 100, "lr": 0.1,
            "batch_size": 128}


def record(name: str):
    """The registry record of ``name`` or None (files, folders and Hub repos have none)."""
    from .registry import REGISTRY

    return REGISTRY.get(name) or REGISTRY.get(name.strip().lower().replace("_", "-"))


def _pixel(args: argparse.Namespace, key: str, default: float) -> float:
    """``--eps``/``--alpha`` in pixel units: above 1 is a 255ths value written without ``/255``."""
    value = getattr(args, key)
    if value is None:
        return default
    if args.eps_unit == 255:
        return value / 255
    if value > 1:
        raise DataError(f"--{key} {value:g} is above 1 but pixels lie in [0, 1]: write --{key} {value:g}/255 "
                        "or add --eps-unit 255")
    return value


def _load_and_data(args: argparse.Namespace, spec, load):
    """The model and its data set: --data, else the registry record's, else the one a folder written by
    ``robustzoo finetune`` records (a local folder or an ``hf-hub:`` repo pushed from one)."""
    from .weights import finetune_record

    model = load(args.name, args)  # a retired, mistyped or missing name says so here, in its own words
    data = args.data or (spec.dataset if spec is not None else finetune_record(model).get("dataset"))
    if not data:
        raise DataError(f"{args.name} records no data set (a folder written by `robustzoo finetune --data NAME` "
                        "does): pass --data (e.g. --data cifar10 or --data fmnist-mini)")
    return model, data


def _json_target(path: str | None) -> Path | None:
    """Check ``--json PATH`` is writable now, not after a long evaluation."""
    if path is None:
        return None
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    writable = os.access(p, os.W_OK) if p.exists() else parent.is_dir() and os.access(parent, os.W_OK)
    if p.is_dir() or not writable:
        raise DataError(f"--json {path}: cannot write there (missing folder, a folder, or no permission); "
                        "pass a writable file path")
    return p


def _load_data(args: argparse.Namespace, data_name: str, split: str, model):
    """Images and labels, checked against the model's channels before any timed batch or attack runs; a
    failed ``--download`` is one line that says what to do, not a urllib traceback."""
    from .data import load_data
    from .hub import resolve_offline

    if args.download and resolve_offline(args.offline):
        raise DataError(f"--download needs the network but offline mode is on ({resolve_offline(args.offline)}); "
                        f"download {data_name} on a connected machine and pass --root the folder")
    try:
        return load_data(data_name, split=split, root=args.root, download=args.download, n=args.n,
                         in_chans=getattr(model, "in_chans", None))
    except OSError as e:  # urllib / socket errors from torchvision's downloader
        raise DataError(f"--download: could not fetch {data_name} ({getattr(e, 'reason', None) or e}); download it "
                        "on a connected machine and pass --root the folder") from None


def _needs_head(name: str, model) -> None:
    if getattr(model, "num_classes", None) == 0:
        raise DataError(
            f"{name} is a headless backbone (no classifier to evaluate): fine-tune a head first, e.g. "
            f"`robustzoo finetune {name} --data fmnist-mini --mode linear --out runs/{name}-linear` then "
            f"`robustzoo eval runs/{name}-linear --data fmnist-mini`; its linear-probe figures are in "
            f"`robustzoo info {name}`")


def cmd_eval(args: argparse.Namespace, load) -> int:
    from . import __version__
    from .evaluation import evaluate

    spec = record(args.name)
    eps_arg, alpha = _pixel(args, "eps", None), _pixel(args, "alpha", None)  # bad values fail before the load
    target = _json_target(args.json)
    model, data = _load_and_data(args, spec, load)
    _needs_head(args.name, model)
    x, y = _load_data(args, data, args.split, model)
    attacks = tuple(a.strip() for a in args.attacks.split(","))
    # eps None: evaluate's own default (the registry record, the model's fine-tuning record, 8/255)
    result = evaluate(model, (x, y), eps=eps_arg, attacks=attacks, alpha=alpha, batch_size=args.batch_size,
                      device=args.device, seed=args.seed, restarts=args.restarts, progress=args.progress)
    if eps_arg is not None:
        result.settings["eps_from"] = "--eps"  # the command line's name for evaluate's "eps argument"
    eps, source = result.settings["eps"], result.settings["eps_from"]
    rows = [[k, _pct(v)] for k, v in result.accuracy.items()]

    print(_table(rows, ["attack", "accuracy (%)"]))
    print(f"model={args.name} data={data}:{args.split} n={result.n} eps={eps:.4g} (eps from {source})")
    if target is not None:
        report = {"model": args.name, "dataset": data, "split": args.split, "n": result.n,
                  "attack": {"norm": "linf", "eps": eps, "alpha": result.settings.get("alpha", alpha),
                             "attacks": list(attacks), "restarts": args.restarts, "seed": args.seed,
                             "eps_from": source},
                  "accuracy": {k: round(v, 2) for k, v in result.accuracy.items()},
                  "robustzoo": __version__, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
                      timespec="seconds"), "settings": result.settings}
        target.write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"wrote {target}")
    return 0


def _resume_command(argv: list[str]) -> str:
    return "robustzoo " + shlex.join([a for a in argv if a != "--resume"] + ["--resume"])


def _check_resume(args: argparse.Namespace) -> bool:
    """``--resume`` with no checkpoint: ask before starting afresh; never restart silently."""
    from .trainer import CHECKPOINT_NAME

    path = Path(args.out) / CHECKPOINT_NAME
    if not args.resume or path.exists():
        return args.resume
    if not sys.stdin.isatty():
        raise DataError(f"--resume: no checkpoint at {path}; run without --resume to start afresh (or pass "
                        "--out the folder of the interrupted run)")
    answer = input(f"--resume: no checkpoint at {path}. Start afresh? [y/N] ").strip().lower()
    if answer not in ("y", "yes"):
        raise DataError("not started: nothing to resume and starting afresh was declined")
    return False


def _estimate(model, x, *, loss_passes: float, n_images: int, batch_size: int, device) -> float:
    """Seconds for ``n_images * loss_passes`` forward+backward passes, from one timed batch."""
    import copy

    import torch

    net = copy.deepcopy(model).to(device).train()
    xb = x[: min(batch_size, len(x))].to(device).requires_grad_(True)
    times = []
    for _ in range(2):  # the first pass pays one-off allocation costs
        t0 = time.perf_counter()
        net(xb).float().sum().backward()
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times[-1] / len(xb) * n_images * loss_passes


def _metric(key: str, v: float) -> str:
    if "acc" in key or key.startswith("val_"):
        return _pct(v) + " %"
    return f"{v:.1f} s" if key == "seconds" else f"{v:.4g}"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _settings(args: argparse.Namespace, spec, model=None) -> dict:
    """Mode, attack and optimiser settings: what the user typed, else the registry record's, else (eps only)
    what a fine-tuned file records, else the paper's."""
    from .finetuning import MODES
    from .weights import finetune_record

    own = finetune_record(model) if spec is None and model is not None else {}
    fd = {**FALLBACK, **({"eps": own["eps"], "step": own["eps"] / 4} if "eps" in own else {}),
          **(dict(spec.finetune_defaults) if spec is not None and spec.finetune_defaults else {})}
    mode = args.mode or fd["mode"]
    eps = _pixel(args, "eps", fd["eps"])
    own_epochs = fd["epochs"] if mode == fd["mode"] else MODES.get(mode, (None, None, fd["epochs"]))[2]
    return {"mode": mode, "eps": eps, "alpha": _pixel(args, "alpha", fd["step"] if args.eps is None else eps / 4),
            "steps": args.steps if args.steps is not None else fd["steps"],
            "epochs": args.epochs if args.epochs is not None else own_epochs,
            "lr": args.lr if args.lr is not None else fd["lr"],
            "batch_size": args.batch_size if args.batch_size is not None else fd["batch_size"]}


def _plan(args, s: dict, x, model, data_name: str, device) -> str:
    from .finetuning import MODES

    loss = MODES.get(s["mode"], ("all", "clean"))[1]
    val_fraction = 0.1 if args.val_fraction is None else args.val_fraction
    n_val = int(len(x) * val_fraction)
    eval_steps = 20 if args.eval_steps is None else args.eval_steps
    passes = {"clean": 1, "pgd": s["steps"] + 1, "trades": s["steps"] + 2}[loss]
    val_passes = eval_steps + 1 if loss != "clean" else 0.3  # forward-only clean validation ~ 1/3 of a step
    per_image = _estimate(model, x, loss_passes=1, n_images=1, batch_size=s["batch_size"], device=device)
    seconds = s["epochs"] * per_image * ((len(x) - n_val) * passes + n_val * val_passes)
    attack = f"eps {s['eps']:.4g} step {s['alpha']:.4g} PGD-{s['steps']}" if loss != "clean" else \
        f"eps {s['eps']:.4g} (validation only)"
    return (f"fine-tuning {args.name} on {len(x)} {data_name} images ({len(x) - n_val} train, {n_val} validation): "
            f"mode {s['mode']}, {attack}, {s['epochs']} epoch{'s' * (s['epochs'] != 1)}, "
            f"batch {s['batch_size']}, lr {s['lr']:g}, "
            f"device {device}; estimated {_duration(seconds)} (from one timed batch)")


def cmd_finetune(args: argparse.Namespace, load, argv: list[str]) -> int:
    import torch

    from .data import dataset_name
    from .finetuning import finetune
    from .trainer import CHECKPOINT_NAME
    from .weights import save_pretrained

    spec = record(args.name)
    _settings(args, spec)  # a bad option fails now, not after the load
    resume = _check_resume(args)
    model, data_name = _load_and_data(args, spec, load)
    s = _settings(args, spec, model)
    x, y = _load_data(args, data_name, "train", model)
    num_classes = args.num_classes
    if num_classes is None and getattr(model, "num_classes", None) == 0:
        num_classes = int(y.max()) + 1  # a headless backbone gets a fresh head sized from the labels
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    keys = ("momentum", "weight_decay", "schedule", "milestones", "warmup", "eval_steps", "beta", "val_fraction",
            "early_stopping", "seed", "attack_mode")
    options = {k: getattr(args, k) for k in keys if getattr(args, k) is not None}
    if not args.progress:
        options["progress"] = False
    print(_plan(args, s, x, model, data_name, device), flush=True)
    try:
        result = finetune(model, (x, y), num_classes=num_classes, device=device, checkpoint_dir=args.out,
                          resume=resume, amp=args.amp, channels_last=args.channels_last, compile=args.compile,
                          augment=not args.no_augment, flip=not args.no_flip, **s, **options)
    except KeyboardInterrupt:
        last = Path(args.out) / CHECKPOINT_NAME
        if last.exists():
            print(f"\ninterrupted; finished epochs are saved in {last}. Resume with:\n  {_resume_command(argv)}",
                  file=sys.stderr)
        else:
            again = "robustzoo " + shlex.join([a for a in argv if a != "--resume"])
            print(f"\ninterrupted before the first epoch finished (nothing saved). Start again with:\n  {again}",
                  file=sys.stderr)
        return 130
    # the model carries its fine-tuning record and base (finetune() marked it); the data set's name joins them,
    # so `robustzoo eval OUT` needs neither --data nor --eps. A name only: an ImageFolder path means nothing
    # elsewhere, and is training data
    meta = {"dataset": dataset_name(data_name)} if dataset_name(data_name) else {}
    path = save_pretrained(result.model, args.out, name=f"{args.name}-{s['mode']}", metadata=meta)
    best = result.history[result.best_epoch - 1] if result.history else {}  # best_epoch is 1-based
    print(f"best epoch {result.best_epoch}: " + ", ".join(f"{k} {_metric(k, v)}" for k, v in best.items()
                                                           if isinstance(v, float)))
    print(f"wrote {path}")
    return 0


def check_error(e: RobustZooError) -> str:
    """A library message in the words of the command line: ``eps=`` becomes ``--eps``."""
    import re

    text = str(e)
    for api, option in (("download=True", "--download"), ("resume=True", "--resume"), ("offline=True", "--offline"),
                        ("checkpoint_dir=", "--out "), ("root=", "--root ")):
        text = text.replace(api, option)
    names = ("batch_size|weight_decay|val_fraction|early_stopping|attack_mode|eval_steps|num_classes|milestones|"
             "schedule|momentum|epochs|warmup|alpha|steps|beta|eps|lr")
    return re.sub(rf"(?<![\w-])({names})\b(?=\s*(must|>|<|is|needs))",
                  lambda m: "--" + m.group(1).replace("_", "-"), text)
