"""The argument parsers of the ``robustzoo`` command line (``robustzoo.cli``): one small function per
command, and option types that check values before anything loads or trains."""

from __future__ import annotations

import argparse
from fractions import Fraction
from pathlib import Path

__all__ = ["COMMANDS", "command", "Parser"]


def _number(text: str) -> float:
    """A float that may be written as a fraction (``8/255``)."""
    try:
        return float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"not a number: {text!r} (use e.g. 0.1 or 8/255)") from None


def _count(minimum: int):
    """An int option >= ``minimum``, checked before anything loads or trains."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    return parse


def _fraction(text: str) -> float:
    value = _number(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


class _Help(argparse.HelpFormatter):
    """Every option's default in --help: the value, or where it comes from when it depends on the model."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or isinstance(action.default, bool) or action.default == argparse.SUPPRESS \
                or not action.option_strings or action.required:
            return text
        return text + (" (default: none)" if action.default is None else " (default: %(default)s)")


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line with the way out, not the whole usage block
        self.exit(2, f"error: {self.prog}: {message} (see `{self.prog} --help`)\n")


def command(sub, name: str, help: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=help, formatter_class=_Help)


def hub_opts(s: argparse.ArgumentParser) -> None:
    s.add_argument("--revision", help="Hub commit, branch or tag (default: the registry's pinned commit)")
    s.add_argument("--endpoint", help="Hub mirror (default: $ROBUSTZOO_ENDPOINT, $HF_ENDPOINT, huggingface.co)")
    s.add_argument("--cache-dir", help="default: $ROBUSTZOO_CACHE, else the Hugging Face cache")
    s.add_argument("--offline", action="store_true", default=None, help="never touch the network")


def data_opts(s: argparse.ArgumentParser) -> None:
    s.add_argument("--data", help="cifar10, fashion-mnist, fmnist-mini (shipped), ... or an ImageFolder "
                   "(default: the registry record's dataset; for a folder written by finetune: its data set name)")
    s.add_argument("--root", help="dataset root folder (default: the data set's usual place)")
    s.add_argument("--download", action="store_true", help="let torchvision download the data set")
    s.add_argument("--n", type=_count(1), help="use only the first N samples (default: all)")
    s.add_argument("--eps", type=_number, help="Linf budget in pixel units, e.g. 0.1 or 8/255 (default: the "
                   "registry record's attack: 0.1 for *-fmnist, 8/255 for CIFAR-10; for a file written by "
                   "finetune: the eps it was fine-tuned at; 8/255 for other models)")
    s.add_argument("--eps-unit", type=int, choices=[1, 255], default=1,
                   help="255: --eps and --alpha are in 255ths (--eps 8 means 8/255)")
    s.add_argument("--seed", type=int, default=0, help="seeds data order, attacks and a new head")
    s.add_argument("--device", help="default: cuda if available, else cpu")
    s.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars or lines")
    hub_opts(s)


def add_list(sub) -> argparse.ArgumentParser:
    s = command(sub, "list", "list registry models (fits 100 columns; --wide for every column, --json for scripts)")
    s.add_argument("pattern", nargs="?", help="fnmatch pattern, e.g. '*-adv-*'")
    s.add_argument("--task", help="rotation, jigsaw, selfie, ensemble or none (default: any)")
    s.add_argument("--arch", help="r18, r50 (or resnet18, resnet50v2, ensemble) (default: any)")
    s.add_argument("--dataset", help="cifar10 or fashion-mnist (default: any)")
    s.add_argument("--kind", help="backbone, classifier or ensemble (default: any)")
    s.add_argument("--published", action="store_true", help="only weights that can be loaded now")
    s.add_argument("--wide", action="store_true", help="every column: arch, training, measured and paper metrics")
    s.add_argument("--json", action="store_true", help="the full records as JSON")
    return s


def add_info(sub) -> argparse.ArgumentParser:
    s = command(sub, "info", "show one registry record (JSON)")
    s.add_argument("name")
    return s


def add_download(sub) -> argparse.ArgumentParser:
    s = command(sub, "download", "pre-fetch weights into the cache (for offline use)")
    s.add_argument("names", nargs="+")
    s.add_argument("--force", action="store_true", help="download again even if cached")
    hub_opts(s)
    return s


def add_verify(sub) -> argparse.ArgumentParser:
    s = command(sub, "verify", "re-hash cached and embedded weights")
    s.add_argument("names", nargs="*")
    s.add_argument("--cache-dir", help="default: $ROBUSTZOO_CACHE, else the Hugging Face cache")
    return s


def add_convert(sub) -> argparse.ArgumentParser:
    s = command(sub, "convert", "import the paper's .pt checkpoints (read with weights_only=True)")
    s.add_argument("--format", required=True,
                   choices=["robustbench", "finetune", "rotation", "jigsaw", "selfie", "ensemble"])
    s.add_argument("sources", nargs="+", type=Path)
    s.add_argument("--out", required=True, type=Path, help="output folder")
    s.add_argument("--keep-pretext-head", action="store_true", help="keep the 4/31-way pretext head (rotation, jigsaw)")
    s.add_argument("--branch", choices=["none", "rotation", "jigsaw"], default="none",
                   help="ensemble: which task's layer4 to attach (none: theta_p = stem+layer1-3 only)")
    s.add_argument("--seed", type=int, default=0, help="seed of the init of the parts the checkpoint lacks")
    s.add_argument("--name", default="", help="name recorded in the output's metadata (default: none)")
    return s


def add_eval(sub) -> argparse.ArgumentParser:
    s = command(sub, "eval", "clean / PGD / AutoAttack accuracy of a model")
    s.add_argument("name", help="registry name, hf-hub:org/repo, folder or .safetensors file")
    data_opts(s)
    s.add_argument("--split", default="test", help="train or test (extra for SVHN)")
    s.add_argument("--attacks", default="clean,pgd20", help="comma list: clean,pgd20,pgd20-cw,autoattack,aa-fast "
                   "(aa-fast: a cheaper cascade checked against AutoAttack, not AutoAttack)")
    s.add_argument("--alpha", type=_number, help="PGD step size (default: eps/4)")
    s.add_argument("--restarts", type=_count(1), default=1, help="PGD random restarts")
    s.add_argument("--batch-size", type=_count(1), default=256, help="evaluation batch size")
    s.add_argument("--json", help="also write the result to this JSON file (checked writable before the run)")
    return s


def add_finetune(sub) -> argparse.ArgumentParser:
    s = command(sub, "finetune", "fine-tune a model (linear, adv-linear, partial, full, adv-full, trades); "
                "Ctrl-C prints the command that resumes")
    s.add_argument("name", help="registry name, hf-hub:org/repo, folder or .safetensors file")
    data_opts(s)
    s.add_argument("--mode", help="linear, adv-linear, partial, full, adv-full or trades "
                   "(default: the record's, adv-full)")
    s.add_argument("--num-classes", type=_count(1), help="fresh head of this size (default: keep the head; a "
                   "headless backbone gets one sized from the labels)")
    s.add_argument("--epochs", type=_count(1), help="default: the record's (5 for *-fmnist, 100 for CIFAR-10; 25 "
                   "for the linear modes)")
    s.add_argument("--lr", type=float, help="SGD learning rate (default: the record's, 0.1)")
    s.add_argument("--batch-size", type=_count(1), help="default: the record's, 128")
    s.add_argument("--momentum", type=float, help="default: 0.9")
    s.add_argument("--weight-decay", type=float, help="default: 3e-4")
    s.add_argument("--schedule", choices=["multistep", "cosine", "onecycle"], help="default: multistep")
    s.add_argument("--milestones", type=lambda t: [int(v) for v in t.split(",")],
                   help="multistep decay epochs, e.g. 60,80 (default: 60%% and 80%% of --epochs)")
    s.add_argument("--warmup", type=_count(0), help="warm-up iterations (default: min(200, one epoch) for multistep)")
    s.add_argument("--alpha", type=_number, help="PGD step (default: the record's step; eps/4 when --eps is given)")
    s.add_argument("--steps", type=_count(0), help="PGD steps in training (default: the record's, 10)")
    s.add_argument("--eval-steps", type=_count(0), help="PGD steps of the per-epoch validation attack (default: 20)")
    s.add_argument("--beta", type=float, help="TRADES beta (default: 6)")
    s.add_argument("--val-fraction", type=_fraction, help="held-out share of the training data (default: 0.1)")
    s.add_argument("--early-stopping", type=_count(1), metavar="PATIENCE", help="default: off")
    s.add_argument("--attack-mode", choices=["train", "eval"], help="default: train (the paper)")
    s.add_argument("--amp", action="store_true", help="bf16 autocast (GPU)")
    s.add_argument("--channels-last", action="store_true", help="channels-last memory format (GPU)")
    s.add_argument("--compile", action="store_true", help="torch.compile (slow to start on CPU)")
    s.add_argument("--no-augment", action="store_true", help="no random crop / flip")
    s.add_argument("--no-flip", action="store_true", help="no horizontal flip (digits, text)")
    s.add_argument("--out", type=Path, default=Path("finetuned"), help="checkpoints and the exported weights")
    s.add_argument("--resume", action="store_true", help="continue the run checkpointed in --out")
    return s


def add_demo(sub) -> argparse.ArgumentParser:
    s = command(sub, "demo", "the offline demo: robust pretraining vs adversarial training from scratch")
    s.add_argument("--quick", action="store_true", help="a seconds-long version")
    s.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder")
    s.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars or lines")
    return s


COMMANDS = {"list": add_list, "info": add_info, "download": add_download, "verify": add_verify,
            "convert": add_convert, "eval": add_eval, "finetune": add_finetune, "demo": add_demo}
