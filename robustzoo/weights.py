"""The robustzoo weight format: ``model.safetensors`` (+ ``config.json``), loaded strictly.

A weight file is a plain safetensors file whose header metadata carries everything needed to
rebuild the model (``arch``, ``width``, ``in_chans``, ``num_classes``, ``mean``, ``std``, ``name``,
``robustzoo_version`` and the full ``config`` as JSON). Loading never unpickles anything: the
header is parsed and validated here (size, JSON, dtypes, offsets) before safetensors maps the
bytes, and the state dict must match the rebuilt model key for key and shape for shape.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._io import open_regular
from .errors import WeightFormatError
from .models import create_model

# The writer lives in .serialization, which does not import the models: fine-tuning saves its best
# epoch with it, and models -> finetuning -> weights -> models would be an import cycle.
from .serialization import (
    CONFIG_NAME,
    FORMAT,
    FORMAT_VERSION,
    LOAD_KEYS,
    WEIGHTS_NAME,
    atomic_write,
    finetune_record,
    save_pretrained,
)

__all__ = ["save_pretrained", "load_file", "read_metadata", "finetune_record", "describe_bytes", "atomic_write",
           "WEIGHTS_NAME", "CONFIG_NAME"]

MAX_HEADER_BYTES = 16 * 1024 * 1024  # far above any real model's header, far below a memory bomb
_DTYPES = {"F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL"}
_FLOAT_DTYPES = {"F32", "F16", "BF16", "F64"}
_ITEMSIZE = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def describe_bytes(head: bytes) -> str:
    """Say what a file that is not safetensors most likely is, from its first bytes."""
    stripped = head.lstrip().lower()
    if not head:
        return "an empty file"
    if stripped.startswith((b"<!doctype html", b"<html")) or b"<html" in stripped[:512]:
        return "an HTML page (a login, quota or error page saved in place of the weights?)"
    if head[:2] == b"PK":
        return "a zip archive (a torch.save pickle checkpoint); convert it with `robustzoo convert`"
    if head[:1] == b"\x80" and head[1:2] in b"\x02\x03\x04\x05":
        return "a raw pickle (refused: unpickling can run code); convert it with `robustzoo convert`"
    if head[:2] == b"\x1f\x8b":
        return "a gzip archive"
    if stripped.startswith((b"{", b"[")):
        return "a JSON document"
    return "not a safetensors file"


def read_metadata(path: str | os.PathLike) -> tuple[dict[str, str], dict[str, Any]]:
    """Parse and validate a safetensors header without reading the tensors.

    Returns ``(metadata, tensor_entries)``. Raises :class:`WeightFormatError` naming what the
    file is when it is not a well-formed safetensors file (HTML page, pickle, truncated...).
    """
    path = Path(path)
    try:
        with open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise WeightFormatError(f"{path} is {describe_bytes(head)}: too short for safetensors")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES or n + 8 > size:
                f.seek(0)
                what = describe_bytes(f.read(512))
                if what == "not a safetensors file" and n + 8 > size and n <= MAX_HEADER_BYTES:
                    what = "a truncated safetensors file"
                raise WeightFormatError(f"{path} is {what} (header length {n}, file size {size})")
            raw = f.read(n)
    except OSError as e:
        raise WeightFormatError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise WeightFormatError(f"{path} is {describe_bytes(head + raw[:504])} (header is not JSON)") from None
    except (ValueError, RecursionError):  # 5000-digit numbers, pathological nesting: valid JSON, hostile file
        raise WeightFormatError(f"{path}: safetensors header is unusable JSON (nesting or number too big)") from None
    if not isinstance(header, dict):
        raise WeightFormatError(f"{path}: safetensors header must be a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise WeightFormatError(f"{path}: __metadata__ must map strings to strings")
    spans = []
    for key, entry in header.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise WeightFormatError(f"{path}: malformed entry for tensor {key!r}")
        shape, offsets = entry["shape"], entry["data_offsets"]
        if not isinstance(entry["dtype"], str) or entry["dtype"] not in _DTYPES:
            raise WeightFormatError(f"{path}: tensor {key!r} has unsupported dtype {entry['dtype']!r}")
        if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
            raise WeightFormatError(f"{path}: tensor {key!r} has an invalid shape {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
            raise WeightFormatError(f"{path}: tensor {key!r} has invalid data_offsets {offsets!r}")
        if offsets[1] - offsets[0] != math.prod(shape) * _ITEMSIZE[entry["dtype"]]:
            raise WeightFormatError(f"{path}: tensor {key!r} has data_offsets {offsets} that do not fit {shape}")
        spans.append((offsets[0], offsets[1], key))
    end = 0
    for begin, stop, key in sorted(spans):  # safetensors stores tensors back to back from offset 0
        if begin != end:
            raise WeightFormatError(f"{path}: tensor {key!r} starts at {begin}, expected {end} (gap or overlap)")
        end = stop
    if 8 + n + end > size:
        raise WeightFormatError(f"{path} is a truncated safetensors file ({size} bytes, needs {8 + n + end})")
    return meta, header


def _config_from_meta(path: Path, meta: Mapping[str, str]) -> dict[str, Any]:
    if meta.get("format") != FORMAT or "config" not in meta:
        raise WeightFormatError(
            f"{path} is a safetensors file but not a robustzoo one (no robustzoo config in its metadata); "
            "build the model yourself and use safetensors.torch.load_model, or convert it"
        )
    if meta.get("format_version") != FORMAT_VERSION:
        raise WeightFormatError(
            f"{path} has robustzoo format version {meta.get('format_version')!r}; this robustzoo reads "
            f"version {FORMAT_VERSION} (upgrade robustzoo)"
        )
    try:
        config = json.loads(meta["config"])
    except (ValueError, RecursionError):
        raise WeightFormatError(f"{path}: the config in the metadata is not valid JSON") from None
    if not isinstance(config, dict) or not isinstance(config.get("arch"), str):
        raise WeightFormatError(f"{path}: the config in the metadata has no 'arch'")
    return config


def build_from_metadata(path: str | os.PathLike) -> tuple[nn.Module, dict[str, str], dict[str, Any]]:
    """Rebuild the model a weight file describes, on the *meta* device, with the file's metadata and header.

    The config is untrusted until it has been checked against the tensors, so nothing is allocated
    here (a hostile ``width`` cannot ask for gigabytes); call ``model.to_empty(device=...)`` after
    :func:`check_state_dict` and before loading the tensors.
    """
    path = Path(path)
    meta, entries = read_metadata(path)
    config = _config_from_meta(path, meta)
    try:
        with torch.device("meta"):
            model = create_model(**config)
    except (TypeError, ValueError, ArithmeticError, RecursionError, RuntimeError) as e:
        raise WeightFormatError(f"{path}: its config cannot build a model: {e}") from None
    return model, meta, entries


def check_state_dict(model: nn.Module, entries: Mapping[str, Any], path: Path) -> None:
    """Strict key/shape/dtype check of a header against a model, naming every mismatch."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(entries))
    unexpected = sorted(set(entries) - set(expected))
    problems = []
    if missing:
        problems.append(f"missing keys {_short(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_short(unexpected)}")
    for key in sorted(set(expected) & set(entries)):
        want, got = list(expected[key].shape), entries[key]["shape"]
        if want != got:
            problems.append(f"{key}: shape {got} in file, model needs {want}")
        if expected[key].is_floating_point() != (entries[key]["dtype"] in _FLOAT_DTYPES):
            problems.append(f"{key}: dtype {entries[key]['dtype']} does not fit {expected[key].dtype}")
    if problems:
        raise WeightFormatError(f"{path} does not match its model: " + "; ".join(problems[:8]))


def _short(keys: list[str]) -> str:
    return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: let the allocator decide
        return 1 << 62


def load_file(path: str | os.PathLike, *, num_classes: int | None = None, map_location: str = "cpu") -> nn.Module:
    """Rebuild the model described by a robustzoo ``model.safetensors`` and load it strictly.

    ``path`` may be the file or a directory holding ``model.safetensors``. ``num_classes`` swaps the
    head (after a strict load of the published weights) for fine-tuning on another label set.
    The model is returned in eval mode; its metadata is in ``model.pretrained_meta``.
    """
    from safetensors.torch import load_file as st_load

    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_NAME
    if not path.exists():
        raise WeightFormatError(f"no weight file at {path}; pass the path of a model.safetensors file or its folder")
    model, meta, entries = build_from_metadata(path)
    check_state_dict(model, entries, path)
    declared = max((e["data_offsets"][1] for e in entries.values()), default=0)
    if declared > _memory_bytes():  # a sparse file can be as large as its header claims: refuse before allocating
        raise WeightFormatError(f"{path} declares {declared} bytes of tensors, more than this machine's memory; "
                                "it is not a robustzoo model file (the largest zoo file is under 300 MB)")
    try:
        model = model.to_empty(device="cpu")  # every entry is overwritten by the strict load below
        state = st_load(str(path), device=map_location)
    except (RuntimeError, MemoryError) as e:  # allocation failures; safetensors' own error for corrupt bodies
        raise WeightFormatError(f"{path} cannot be loaded ({str(e).splitlines()[0][:200]})") from None
    except Exception as e:  # noqa: BLE001 - SafetensorError is not importable as a stable name
        raise WeightFormatError(f"{path} cannot be read as safetensors: {e}") from None
    expected = model.state_dict()
    state = {k: v.to(expected[k].dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=True)
    # how a model was loaded (hub.load sets these afterwards) is not a property of the file: a copy that
    # carries them from elsewhere must not claim a registry record or a path
    model.pretrained_meta = {k: v for k, v in meta.items() if k not in LOAD_KEYS}
    if num_classes is not None and num_classes != getattr(model, "num_classes", num_classes):
        if not hasattr(model, "reset_classifier"):
            raise ValueError(f"{meta.get('arch')} models cannot change num_classes")
        model.reset_classifier(num_classes)
    return model.to(map_location).eval()

