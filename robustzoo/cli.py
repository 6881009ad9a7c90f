"""Command line: ``robustzoo list | info | download | verify | convert | eval | finetune | demo``.

Errors the user can fix (unknown names, bad data, offline misses, checksum failures) print one
``error:`` line and exit with status 2; they never show a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from .card import pct as _pct
from .card import subset_interval as _subset_interval
from .card import table as _table
from .errors import RobustZooError

__all__ = ["main"]


def _headline(spec) -> str:
    """clean / PGD-20 in %: measured here, else the linear probe (backbones), else the paper's figure."""

    for prefix, label, metrics in (("", "", spec.metrics), ("linear_probe_", "probe ", spec.metrics),
                                   ("", "paper ", spec.paper_metrics)):
        clean, robust = metrics.get(prefix + "clean"), metrics.get(prefix + "pgd20")
        if isinstance(clean, (int, float)) and isinstance(robust, (int, float)):
            return f"{label}{_pct(clean)} / {_pct(robust)}"
    rep = spec.metrics.get("repro_vs_scratch")  # a backbone of the mini-reproduction: what fine-tuning from it gains
    if isinstance(rep, dict) and rep.get("ci_low") is not None:
        # one decimal and no spaces keep any gain or bound within +-99.9 at 19 characters, so the table fits 100 columns
        return f"{rep['diff_mean']:+.1f} [{rep['ci_low']:+.1f},{rep['ci_high']:+.1f}]"
    return "-"


def _autoattack(spec) -> str:
    """AutoAttack robust accuracy with its 95 % Wilson interval and how many test images it ran on, or "-"."""
    v, n = spec.metrics.get("autoattack"), spec.metrics.get("autoattack_n")
    if not isinstance(v, (int, float)) or not isinstance(n, int) or n <= 0:
        return "-"
    lo, hi = _subset_interval(v, n)
    return f"{v:.1f} [{lo:.1f},{hi:.1f}]/{n}"  # at most 25 characters: the table stays within 100 columns


def cmd_list(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from .card import format_metrics
    from .registry import list_models, model_info

    names = list_models(
        args.pattern, task=args.task, arch=args.arch, dataset=args.dataset, kind=args.kind,
        published=True if args.published else None,
    )
    specs = [model_info(n) for n in names]
    if args.json:
        print(json.dumps([{**asdict(s), "published": s.published} for s in specs], indent=2, default=list))
        return 0
    status = {s.name: "embedded" if s.embedded else ("hub" if s.published else "unpublished") for s in specs}
    if args.wide:
        rows = [[s.name, s.arch, s.kind, s.task, s.training, s.dataset, status[s.name], format_metrics(s.metrics),
                 format_metrics(s.paper_metrics)] for s in specs]
        header = ["name", "arch", "kind", "task", "train", "dataset", "status", "measured", "paper"]
    else:
        rows = [[s.name, s.kind, _headline(s), _autoattack(s), status[s.name]] for s in specs]
        header = ["name", "kind", "clean / PGD-20 (%)", "AutoAttack (%)", "status"]
    print(_table(rows, header) if rows else "no model matches")
    print(f"\n{len(rows)} of {len(list_models())} models. Accuracies in %: measured here, 'probe' = linear probe"
          "\nof a backbone, 'paper' = reported by the paper, '+d [lo,hi]' on a backbone = PGD-20 points that"
          "\nadversarial fine-tuning from it gains over training from scratch (mean, 95 % interval over"
          "\npaired seeds; the mini-reproduction). AutoAttack: robust accuracy [95 % Wilson interval]/the"
          "\nnumber of test images it ran on (the first N). The name holds the task (rot, jig, selfie, ens)"
          "\nand, for models trained here, the width and dataset (-w8-fmnist); others are CIFAR-10."
          "\n--wide: every column (task, dataset, training, the paper's figures); --json: for scripts.")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from .registry import model_info

    spec = model_info(args.name)
    record = asdict(spec)
    record["published"] = spec.published
    print(json.dumps(record, indent=2, default=list))
    return 0


def _load_kwargs(args: argparse.Namespace) -> dict:
    out = {}
    for key in ("revision", "endpoint", "cache_dir", "offline"):
        if getattr(args, key, None) is not None:
            out[key] = getattr(args, key)
    return out


def cmd_download(args: argparse.Namespace) -> int:
    from .hub import download

    for name in args.names:
        path = download(name, force_download=args.force, **_load_kwargs(args))
        print(f"{name}: {path}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from .hub import verify

    results = verify(args.names or None, cache_dir=args.cache_dir)
    rows = [[r[0], "ok" if r[2] else "FAILED", str(r[1] or "-"), r[3]] for r in results]
    print(_table(rows, ["name", "status", "path", "detail"]) if rows else "nothing cached or embedded to verify")
    return 0 if all(r[2] for r in results) else 1


def cmd_convert(args: argparse.Namespace) -> int:
    from .converter import convert

    path = convert(args.format, args.sources, args.out, keep_pretext_head=args.keep_pretext_head,
                   branch=args.branch, name=args.name, seed=args.seed)
    print(f"wrote {path}")
    return 0


def _load_model(ref: str, args: argparse.Namespace, num_classes: int | None = None):
    from .hub import load

    return load(ref, num_classes=num_classes, **_load_kwargs(args))


def cmd_eval(args: argparse.Namespace) -> int:
    from ._cli_train import cmd_eval as run

    return run(args, _load_model)


def cmd_finetune(args: argparse.Namespace) -> int:
    from ._cli_train import cmd_finetune as run

    return run(args, _load_model, args.argv)


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(quick=args.quick, out_dir=args.out, progress=args.progress)
    return 0


def _parser() -> argparse.ArgumentParser:
    from . import __version__
    from ._cli_args import COMMANDS, Parser

    p = Parser(prog="robustzoo", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"robustzoo {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    handlers = globals()
    for name, add in COMMANDS.items():
        add(sub).set_defaults(func=handlers[f"cmd_{name}"])
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    args.argv = argv
    try:
        return args.func(args)
    except (RobustZooError, FileNotFoundError) as e:
        from ._cli_train import check_error

        print(f"error: {check_error(e) if isinstance(e, RobustZooError) else e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `robustzoo list | head`: the reader left; exit quietly like other Unix tools
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at interpreter exit
        return 141


if __name__ == "__main__":
    sys.exit(main())
