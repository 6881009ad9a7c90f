"""Command line: ``robustzoo list | info | download | verify | convert | eval | finetune | demo``.

Errors the user can fix (unknown names, bad data, offline misses, checksum failures) print one
``error:`` line and exit with status 2; they never show a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

from .errors import RobustZooError

__all__ = ["main"]


def _number(text: str) -> float:
    """A float that may be written as a fraction (``8/255``)."""
    try:
        return float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"not a number: {text!r} (use e.g. 0.1 or 8/255)") from None


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*map(str, r)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def cmd_list(args: argparse.Namespace) -> int:
    from .registry import format_metrics, list_models, model_info

    names = list_models(
        args.pattern, task=args.task, arch=args.arch, dataset=args.dataset, kind=args.kind,
        published=True if args.published else None,
    )
    rows = []
    for n in names:
        s = model_info(n)
        status = "embedded" if s.embedded else ("hub" if s.published else "not published")
        rows.append([n, s.arch, s.kind, s.task, s.training, s.dataset, status, format_metrics(s.metrics),
                     format_metrics(s.paper_metrics)])
    header = ["name", "arch", "kind", "task", "train", "dataset", "status", "measured", "paper"]
    print(_table(rows, header) if rows else "no model matches")
    print(f"\n{len(rows)} of {len(list_models())} models; accuracies in %, on the whole test set "
          "unless '(first N)' says otherwise")
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
    from .data import load_data
    from .evaluation import evaluate

    model = _load_model(args.name, args)
    x, y = load_data(args.data, split=args.split, root=args.root, download=args.download, n=args.n)
    result = evaluate(model, (x, y), eps=args.eps, attacks=tuple(a.strip() for a in args.attacks.split(",")),
                      alpha=args.alpha, batch_size=args.batch_size, device=args.device, seed=args.seed,
                      restarts=args.restarts)
    rows = [[k, f"{v:.2f}"] for k, v in result.accuracy.items()]
    print(_table(rows, ["attack", "accuracy (%)"]))
    print(f"n={result.n} eps={args.eps:.4g} data={args.data}:{args.split}")
    if args.json:
        Path(args.json).write_text(json.dumps({"accuracy": result.accuracy, "settings": result.settings},
                                              indent=2, default=str))
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from .data import load_data
    from .finetuning import finetune
    from .weights import save_pretrained

    model = _load_model(args.name, args)
    data = load_data(args.data, split="train", root=args.root, download=args.download, n=args.n)
    keys = ("num_classes", "epochs", "batch_size", "lr", "momentum", "weight_decay", "schedule", "milestones",
            "warmup", "eps", "alpha", "steps", "eval_steps", "beta", "val_fraction", "early_stopping", "seed",
            "device", "attack_mode")
    options = {k: getattr(args, k) for k in keys if getattr(args, k) is not None}
    flags = {"amp": args.amp, "channels_last": args.channels_last, "compile": args.compile,
             "augment": not args.no_augment, "flip": not args.no_flip}
    result = finetune(model, data, mode=args.mode, checkpoint_dir=args.out, resume=args.resume, **options, **flags)
    path = save_pretrained(result.model, args.out, name=f"{args.name}-{args.mode}",
                           metadata={"finetune": json.dumps(result.settings, default=str)})
    best = result.history[result.best_epoch - 1] if result.history else {}  # best_epoch is 1-based
    print(f"best epoch {result.best_epoch}: " + ", ".join(f"{k}={v:.4g}" for k, v in best.items()
                                                           if isinstance(v, float)))
    print(f"wrote {path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(quick=args.quick, out_dir=args.out)
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="robustzoo", description=__doc__.splitlines()[0])
    from . import __version__

    p.add_argument("--version", action="version", version=f"robustzoo {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("list", help="list registry models")
    s.add_argument("pattern", nargs="?", help="fnmatch pattern, e.g. '*-adv-*'")
    s.add_argument("--task"), s.add_argument("--arch"), s.add_argument("--dataset"), s.add_argument("--kind")
    s.add_argument("--published", action="store_true", help="only weights that can be loaded now")
    s.set_defaults(func=cmd_list)

    s = sub.add_parser("info", help="show one registry record")
    s.add_argument("name")
    s.set_defaults(func=cmd_info)

    def hub_opts(s: argparse.ArgumentParser) -> None:
        s.add_argument("--revision"), s.add_argument("--endpoint"), s.add_argument("--cache-dir")
        s.add_argument("--offline", action="store_true", default=None, help="never touch the network")

    s = sub.add_parser("download", help="pre-fetch weights into the cache (for offline use)")
    s.add_argument("names", nargs="+")
    s.add_argument("--force", action="store_true", help="download again even if cached")
    hub_opts(s)
    s.set_defaults(func=cmd_download)

    s = sub.add_parser("verify", help="re-hash cached and embedded weights")
    s.add_argument("names", nargs="*")
    s.add_argument("--cache-dir")
    s.set_defaults(func=cmd_verify)

    s = sub.add_parser("convert", help="import the paper's .pt checkpoints (read with weights_only=True)")
    s.add_argument("--format", required=True,
                   choices=["robustbench", "finetune", "rotation", "jigsaw", "selfie", "ensemble"])
    s.add_argument("sources", nargs="+", type=Path)
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--keep-pretext-head", action="store_true", help="keep the 4/31-way pretext head (rotation, jigsaw)")
    s.add_argument("--branch", choices=["none", "rotation", "jigsaw"], default="none",
                   help="ensemble: which task's layer4 to attach (default: theta_p = stem+layer1-3 only)")
    s.add_argument("--seed", type=int, default=0, help="seed of the init of the parts the checkpoint lacks")
    s.add_argument("--name", default="")
    s.set_defaults(func=cmd_convert)

    def data_opts(s: argparse.ArgumentParser) -> None:
        s.add_argument("--data", required=True, help="cifar10, fashion-mnist, fmnist-mini, ... or a folder")
        s.add_argument("--root", help="dataset root folder")
        s.add_argument("--download", action="store_true", help="let torchvision download the data set")
        s.add_argument("--n", type=int, help="use only the first N samples")
        s.add_argument("--eps", type=_number, default=None, help="Linf budget in pixel units, e.g. 8/255")
        s.add_argument("--batch-size", type=int)
        s.add_argument("--seed", type=int, default=0)
        s.add_argument("--device")
        hub_opts(s)

    s = sub.add_parser("eval", help="clean / PGD / AutoAttack accuracy of a model")
    s.add_argument("name", help="registry name, hf-hub:org/repo, folder or .safetensors file")
    data_opts(s)
    s.add_argument("--split", default="test")
    s.add_argument("--attacks", default="clean,pgd20", help="comma list: clean,pgd20,pgd20-cw,autoattack,aa-fast")
    s.add_argument("--alpha", type=_number, help="PGD step size (default eps/4)")
    s.add_argument("--restarts", type=int, default=1)
    s.add_argument("--json", help="also write the result to this JSON file")
    s.set_defaults(func=cmd_eval, eps=8 / 255, batch_size=256)

    s = sub.add_parser("finetune", help="fine-tune a model (linear, adv-linear, partial, full, adv-full, trades)")
    s.add_argument("name")
    data_opts(s)
    s.add_argument("--mode", default="adv-full")
    s.add_argument("--num-classes", type=int, help="fresh head of this size (needed for headless backbones)")
    s.add_argument("--epochs", type=int), s.add_argument("--lr", type=float)
    s.add_argument("--momentum", type=float), s.add_argument("--weight-decay", type=float)
    s.add_argument("--schedule", choices=["multistep", "cosine", "onecycle"])
    s.add_argument("--milestones", type=lambda t: [int(v) for v in t.split(",")], help="e.g. 60,80")
    s.add_argument("--warmup", type=int, help="warm-up iterations")
    s.add_argument("--alpha", type=_number), s.add_argument("--steps", type=int)
    s.add_argument("--eval-steps", type=int), s.add_argument("--beta", type=float, help="TRADES beta")
    s.add_argument("--val-fraction", type=float), s.add_argument("--early-stopping", type=int, metavar="PATIENCE")
    s.add_argument("--attack-mode", choices=["train", "eval"])
    s.add_argument("--amp", action="store_true", help="bf16 autocast (GPU)")
    s.add_argument("--channels-last", action="store_true"), s.add_argument("--compile", action="store_true")
    s.add_argument("--no-augment", action="store_true"), s.add_argument("--no-flip", action="store_true")
    s.add_argument("--out", type=Path, default=Path("finetuned"), help="checkpoints and the exported weights")
    s.add_argument("--resume", action="store_true")
    s.set_defaults(func=cmd_finetune, eps=None, batch_size=None)

    s = sub.add_parser("demo", help="the offline demo: robust pretraining vs adversarial training from scratch")
    s.add_argument("--quick", action="store_true", help="a seconds-long version")
    s.add_argument("--out", type=Path, default=Path("demo_out"))
    s.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except RobustZooError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
