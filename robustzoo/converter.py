"""Convert the official checkpoints of Chen et al. (CVPR 2020) into robustzoo weight files.

The official code (``TAMU-VITA/Adv-SS-Pretraining``) and RobustBench save torch pickles in six
layouts (``finetune/main.py``, ``pretraining/*.py``, ``robustbench/model_zoo``). Each is read **only** with
``torch.load(..., weights_only=True)``: a file holding anything but tensors and plain containers is
refused before any of it runs. Every key is then mapped through an explicit per-format table from
our modules (``normalize``, ``conv1``, ``bn1``, ``layer1``-``layer4``, ``linear``) to the source's
module prefixes; a missing key, a key no table entry accounts for, a wrong shape or dtype, or a
non-finite value raises :class:`~robustzoo.errors.ConversionError` naming it. Width, input channels,
depth and head size are inferred from the tensor shapes and then checked key by key.

Formats (one ``.pt``/``.pth.tar`` per source unless said otherwise):

* ``robustbench``: RobustBench ``Chen2020Adversarial`` branch files (un-prefixed keys, optional
  ``{"state_dict": ...}`` wrapper and ``module.`` prefixes, ImageNet normalisation applied outside).
  One file gives a classifier, several a :class:`~robustzoo.models.SoftmaxEnsemble` (the paper's
  3-model ensemble, section 4.5).
* ``finetune``: ``finetune/main.py`` checkpoints ``{epoch, state_dict, best_prec1}`` or bare state
  dicts with keys ``0.mean``, ``0.std``, ``1.conv1.weight`` ...; several files give an ensemble.
* ``rotation`` / ``jigsaw``: pretext checkpoints in the same layout with a 4- / 31-way
  ``1.linear``; kept with ``keep_pretext_head=True``, else dropped (headless backbone).
* ``selfie``: ``{epoch, P_state, selfie_state, optimizer, best_prec1}``; ``P_state`` holds the
  normaliser, stem and layer1-3 (theta_p of Fig. 2). The export is a headless ResNet-50v2 whose
  layer4 is a seeded fresh init; the transformer (``selfie_state``) is not converted.
* ``ensemble``: ensemble-pretraining checkpoints ``{epoch, selfie_state, state_dict, best_prec1}``
  (``blocks.0`` = conv1, ``blocks.1-3`` = layer1-3, ``layer4_{rotation,jigsaw}``,
  ``fc_{rotation,jigsaw}``). The trunk has no stem BN, so ``bn1`` stays at its init (an
  identity-like BN, recorded in the metadata); ``branch`` picks which task's layer4 (and, with
  ``keep_pretext_head``, which head) to attach. The default ``"none"`` exports theta_p only, as the
  paper transfers it, with layer4 at a seeded fresh init.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ._io import file_sha256
from .errors import ConversionError
from .models import ResNet, SoftmaxEnsemble
from .weights import describe_bytes, save_pretrained

__all__ = ["FORMATS", "BRANCHES", "convert"]

FORMATS = ("robustbench", "finetune", "rotation", "jigsaw", "selfie", "ensemble")
BRANCHES = ("none", "rotation", "jigsaw")
_PRETEXT_CLASSES = {"rotation": 4, "jigsaw": 31}  # heads of pretraining/train_{std,adv}_{rotation,jigsaw}.py
_STAGES = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")
_NOTES = {
    "robustbench": "RobustBench applies ImageNet mean/std outside the net; they are in this model's normalize",
    "selfie": "layer4 is a seeded fresh init (selfie pretrains stem+layer1-3 only); the selfie transformer "
    "(selfie_state) is not converted; fine-tune before use",
    "ensemble": "the ensemble-pretraining trunk has no stem BN-ReLU: bn1 is at its init (weight 1, bias 0, "
    "running stats 0/1) and the stem ReLU is new, so features differ from the pretraining trunk until fine-tuned",
}


@dataclass(frozen=True)
class _Layout:
    """Where each of our top-level modules comes from in a source state dict (None: fresh init)."""

    modules: dict[str, str | None]
    dropped: tuple[str, ...] = ()  # source prefixes that are read but deliberately not converted


def _layout(fmt: str, keep_head: bool, branch: str) -> _Layout:
    """The explicit key table of one format (the official code's own key remaps, e.g. ``finetune/main.py``)."""
    if fmt == "robustbench":  # RobustBench normalises outside the net: ImageNet stats go into `normalize`
        return _Layout({"normalize": None, **{m: m for m in _STAGES}, "linear": "linear"})
    sequential = {"normalize": "0", **{m: f"1.{m}" for m in _STAGES}}  # Sequential(Normalize, ResNet50)
    if fmt == "finetune":
        return _Layout({**sequential, "linear": "1.linear"})
    if fmt in _PRETEXT_CLASSES:
        return _Layout({**sequential, "linear": "1.linear" if keep_head else None}, () if keep_head else ("1.linear",))
    if fmt == "selfie":
        return _Layout({**sequential, "layer4": None, "linear": None})
    trunk = {"normalize": None, "conv1": "blocks.0", "bn1": None, **{f"layer{i}": f"blocks.{i}" for i in (1, 2, 3)}}
    used = {f"layer4_{branch}", f"fc_{branch}"} if keep_head else {f"layer4_{branch}"}
    dropped = tuple(p for p in ("layer4_rotation", "layer4_jigsaw", "fc_rotation", "fc_jigsaw") if p not in used)
    attach = None if branch == "none" else f"layer4_{branch}"
    return _Layout({**trunk, "layer4": attach, "linear": f"fc_{branch}" if keep_head else None}, dropped)


def _read(path: Path) -> object:
    """``torch.load`` restricted to tensors and plain containers; nothing in the file is executed."""
    if not path.is_file():
        raise ConversionError(f"no checkpoint file at {path}")
    with open(path, "rb") as f:
        what = describe_bytes(f.read(512)).split(" (")[0].split(";")[0]  # drop its safetensors-specific advice
    what = "unrecognised data" if what == "not a safetensors file" else what
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols; the error below says it all
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = next((ln.strip() for ln in str(e).splitlines() if re.search(r"(?i)global|unsupported", ln)), "")
        if re.search(r"(?i)global", reason):
            raise ConversionError(
                f"{path} contains non-tensor objects and was refused without running anything ({reason}). "
                "Only plain state dicts can be converted."
            ) from None
        if "pickle" in what or "zip" in what:
            raise ConversionError(
                f"{path} is {what} that the restricted (weights_only) loader cannot read ({reason}); nothing in it "
                "was run. Load it where you trust it and re-save its state dict with torch.save."
            ) from None
        raise ConversionError(f"{path} is not a readable torch checkpoint ({what})") from None
    except Exception as e:  # corrupt zip, truncated file, ...: say what the bytes look like
        raise ConversionError(f"{path} is not a readable torch checkpoint ({what}; {type(e).__name__})") from None


def _unwrap(obj: object, fmt: str, path: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The state dict inside a checkpoint (wrapped or bare), ``module.`` prefixes removed."""
    wrapper = "P_state" if fmt == "selfie" else "state_dict"
    if not isinstance(obj, dict):
        raise ConversionError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict")
    state, ignored = obj, []
    if wrapper in obj:
        state, ignored = obj[wrapper], sorted(str(k) for k in obj if k != wrapper)
    if not isinstance(state, dict) or not state:
        raise ConversionError(f"{path}: {wrapper!r} is not a non-empty dict of tensors")
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ConversionError(
                f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor; is this a {fmt!r} checkpoint "
                f"(top-level keys: {sorted(map(str, obj))[:8]})?"
            )
        if value.layout != torch.strided or value.is_quantized:
            raise ConversionError(f"{path}: {key!r} is a {'quantized' if value.is_quantized else 'sparse'} tensor "
                                  f"({value.layout}, {value.dtype}); only dense float checkpoints can be converted "
                                  "(dequantize / .to_dense() it and re-save the state dict)")
        name = key[len("module."):] if key.startswith("module.") else key  # DataParallel, as RobustBench strips
        if name in out:
            raise ConversionError(f"{path}: key {name!r} appears both with and without 'module.'")
        out[name] = value
    return out, ignored


def _get(state: dict[str, torch.Tensor], key: str, ndim: int | None, fmt: str, path: Path) -> torch.Tensor:
    if key not in state:
        prefixes = sorted({k.split(".")[0] for k in state})[:10]
        raise ConversionError(
            f"{path}: missing key {key!r}; this does not look like a {fmt!r} checkpoint "
            f"(its keys start with {', '.join(prefixes)})"
        )
    if ndim is not None and state[key].ndim != ndim:
        raise ConversionError(f"{path}: {key!r} has shape {list(state[key].shape)}, expected {ndim} dimensions")
    return state[key]


def _build(state: dict, layout: _Layout, fmt: str, path: Path, seed: int, device: str) -> ResNet:
    """Infer arch/width/in_chans/head/normaliser from the shapes and build the target model.

    Built first on the ``meta`` device: a hostile stem shape could otherwise ask for a model of
    any size before the other shapes are checked.
    """
    mods = layout.modules
    conv = _get(state, f"{mods['conv1']}.weight", 4, fmt, path)
    if tuple(conv.shape[2:]) != (3, 3):
        raise ConversionError(f"{path}: stem conv has kernel {list(conv.shape[2:])}, the paper's net uses 3x3")
    arch = "resnet50v2" if f"{mods['layer1']}.0.conv3.weight" in state else "resnet18"
    num_classes = _get(state, f"{mods['linear']}.weight", 2, fmt, path).shape[0] if mods["linear"] else 0
    if fmt in _PRETEXT_CLASSES and num_classes and num_classes != _PRETEXT_CLASSES[fmt]:
        raise ConversionError(f"{path}: a {fmt} head has {_PRETEXT_CLASSES[fmt]} classes, this one {num_classes}")
    stats = {}
    if mods["normalize"]:
        for name in ("mean", "std"):
            t = _get(state, f"{mods['normalize']}.{name}", None, fmt, path)
            if t.numel() != conv.shape[1] or not torch.isfinite(t).all():
                raise ConversionError(f"{path}: normaliser {name} {t.flatten().tolist()[:8]} does not fit the input")
            stats[name] = [float(v) for v in t.flatten()]
    try:
        with torch.random.fork_rng(devices=[]), torch.device(device):  # seeded init, global RNG untouched
            torch.manual_seed(seed)
            return ResNet(arch, num_classes=int(num_classes), in_chans=int(conv.shape[1]),
                          width=conv.shape[0] / 64, **stats)
    except (ValueError, RuntimeError, ArithmeticError) as e:
        raise ConversionError(f"{path}: cannot build the model these shapes describe: {e}") from None


def _map(model: ResNet, state: dict, layout: _Layout, fmt: str, path: Path) -> dict[str, torch.Tensor]:
    """Our state dict (all but the parts left at init), each entry from its table-given source key, checked."""
    target = model.state_dict()
    out, used, missing, problems = {}, set(), [], []
    for key, ref in target.items():
        module, _, rest = key.partition(".")
        prefix = layout.modules[module]
        if prefix is None:  # left at its (seeded) init, recorded in the metadata
            continue
        src = f"{prefix}.{rest}"
        if src not in state:
            missing.append(src)
            continue
        used.add(src)
        t = state[src]
        if module == "normalize" and t.numel() == ref.numel():
            t = t.reshape(ref.shape)  # advertorch keeps mean/std as (C,); ours are (1, C, 1, 1)
        if tuple(t.shape) != tuple(ref.shape):
            problems.append(f"{src}: shape {list(t.shape)}, the model needs {list(ref.shape)}")
        elif t.is_floating_point() != ref.is_floating_point():
            problems.append(f"{src}: dtype {t.dtype} where {ref.dtype} is needed")
        elif t.is_floating_point() and not torch.isfinite(t).all():
            problems.append(f"{src}: contains NaN or infinite values")
        elif t.is_floating_point() and not torch.isfinite(t.to(ref.dtype)).all():
            problems.append(f"{src}: {t.dtype} values overflow {ref.dtype} (largest {t.abs().max().item():.3g})")
        elif key.endswith("running_var") and (t < 0).any():  # BN divides by sqrt(var + eps): NaN outputs
            problems.append(f"{src}: negative BatchNorm running variance ({t.min().item():.3g})")
        else:
            out[key] = t.to(ref.dtype)
    unexpected = sorted(k for k in state if k not in used and not k.startswith(tuple(p + "." for p in layout.dropped)))
    if missing:
        problems.insert(0, f"missing keys {_short(missing)}")
    if unexpected:
        problems.insert(0, f"unexpected keys {_short(unexpected)}")
    if problems:
        raise ConversionError(f"{path} does not match a {fmt!r} {model.arch} checkpoint: " + "; ".join(problems[:6]))
    return out


def _short(keys: list[str]) -> str:
    return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")


def _check_args(fmt: str, n: int, keep_head: bool, branch: str) -> None:
    if fmt not in FORMATS:
        raise ConversionError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if branch not in BRANCHES or (branch != "none" and fmt != "ensemble"):
        raise ConversionError(f"branch={branch!r} is only for format 'ensemble' (one of {', '.join(BRANCHES)})")
    if keep_head and (fmt in ("robustbench", "finetune", "selfie") or (fmt == "ensemble" and branch == "none")):
        raise ConversionError(f"keep_pretext_head does not apply to format {fmt!r}" + (
            " without a branch" if fmt == "ensemble" else ""))
    if n < 1 or (n > 1 and fmt not in ("robustbench", "finetune")):
        raise ConversionError(f"format {fmt!r} converts exactly one file" if n else "no source files given")


def convert(
    format: str,
    sources: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    keep_pretext_head: bool = False,
    branch: str = "none",
    name: str = "",
    seed: int = 0,
) -> Path:
    """Convert official checkpoint(s) of Chen et al. (CVPR 2020) into a robustzoo weight folder.

    Args:
        format: one of :data:`FORMATS` (see the module docstring for each layout).
        sources: checkpoint files; several ``robustbench``/``finetune`` files become a
            :class:`~robustzoo.models.SoftmaxEnsemble` (the paper's 3-model ensemble, section 4.5).
        out: output folder for ``model.safetensors`` + ``config.json``.
        keep_pretext_head: keep the 4-way rotation / 31-way jigsaw classifier (pretext model)
            instead of exporting a headless backbone (``num_classes=0``).
        branch: ``ensemble`` only: attach the ``"rotation"`` or ``"jigsaw"`` layer4, or ``"none"``
            (theta_p = stem + layer1-3, layer4 at a seeded init).
        name: label stored in the metadata.
        seed: seed of the init of the parts the checkpoint does not contain.

    Returns:
        The path of the written ``model.safetensors``; its metadata records ``source_format``,
        ``source_files``, ``source_sha256``, ``converted_by`` and what was initialised or dropped.

    Raises:
        ConversionError: unreadable or refused file, or any key/shape/dtype mismatch.
    """
    from . import __version__

    paths = [Path(s) for s in sources]
    _check_args(format, len(paths), keep_pretext_head, branch)
    layout = _layout(format, keep_pretext_head, branch)
    members, ignored = [], set()
    for path in paths:
        state, extra = _unwrap(_read(path), format, path)
        ignored.update(extra)
        mapped = _map(_build(state, layout, format, path, seed, "meta"), state, layout, format, path)
        model = _build(state, layout, format, path, seed, "cpu")
        model.load_state_dict({**model.state_dict(), **mapped}, strict=True)
        members.append(model.eval())
    try:
        model = members[0] if len(members) == 1 else SoftmaxEnsemble(members).eval()
    except ValueError as e:
        raise ConversionError(f"these files cannot form one ensemble: {e}") from None
    fresh = [m for m in _STAGES if layout.modules[m] is None]
    meta = {
        "source_format": format,
        "source_files": json.dumps([p.name for p in paths]),
        "source_sha256": json.dumps([file_sha256(p) for p in paths]),
        "converted_by": f"robustzoo {__version__}",
        "trained_stages": ",".join(m for m in (*_STAGES, "linear") if layout.modules[m]),
        "initialised": ",".join(fresh) + (f" (seed {seed})" if fresh else ""),
        "dropped": ",".join(layout.dropped),
        "ignored_entries": ",".join(sorted(ignored)),
    }
    if format == "ensemble":
        meta["branch"] = branch
    if format in _NOTES:
        meta["note"] = _NOTES[format]
    return save_pretrained(model, out, name=name, metadata=meta)
