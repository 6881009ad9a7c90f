"""Writing the robustzoo weight format: ``model.safetensors`` (+ ``config.json``), atomically.

A weight file is a plain safetensors file whose header metadata carries everything needed to
rebuild the model (``arch``, ``width``, ``in_chans``, ``num_classes``, ``mean``, ``std``, ``name``,
``robustzoo_version`` and the full ``config`` as JSON). Reading and strict loading are in
:mod:`robustzoo.weights`; this module imports no model code, so fine-tuning can save its best epoch
without an import cycle (models -> finetuning -> here). :func:`finetune_record` reads back the two
fields a fine-tuned file records about its threat model and data set, for the same reason.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from ._io import atomic_write
from .data import dataset_name

__all__ = ["save_pretrained", "atomic_write", "finetune_record", "mark_finetuned", "public_ref", "LOAD_KEYS",
           "RECORD_KEYS", "WEIGHTS_NAME", "CONFIG_NAME", "FORMAT", "FORMAT_VERSION"]

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FORMAT = "robustzoo"
FORMAT_VERSION = "1"
LOAD_KEYS = ("source", "path")  # set by robustzoo.hub.load, never read from or written to a file
RECORD_KEYS = ("finetune", "dataset", "base")  # what a fine-tuned model says about itself, carried into its file


def _version() -> str:
    from . import __version__

    return __version__



def save_pretrained(
    model: nn.Module, directory: str | os.PathLike, *, name: str = "", metadata: Mapping[str, str] | None = None
) -> Path:
    """Write ``model.safetensors`` and ``config.json`` for ``model`` into ``directory``.

    Args:
        model: a :class:`~robustzoo.models.ResNet` or :class:`~robustzoo.models.SoftmaxEnsemble`.
        directory: created if missing; existing files are replaced atomically.
        name: the registry name (or any label) recorded in the metadata.
        metadata: extra string key/values (provenance, recipe, ...) stored in the header. A fine-tuned
            model's own record (``finetune``, ``dataset``, ``base`` in ``model.pretrained_meta``) is kept
            unless ``metadata`` replaces it, so the saved file is evaluated at the eps it was trained at.

    Returns:
        The path of the written ``model.safetensors``.
    """
    from safetensors.torch import save_file

    config = getattr(model, "config", None)
    if not isinstance(config, dict) or "arch" not in config:
        raise TypeError(f"save_pretrained needs a robustzoo model, got {type(model).__name__}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name,
        "robustzoo_version": _version(),
        "config": json.dumps(config, sort_keys=True),
        "arch": config["arch"],
    }
    if config["arch"] != "ensemble":
        meta.update({k: json.dumps(config[k]) for k in ("width", "in_chans", "num_classes", "mean", "std")})
    # a model fine-tuned in memory keeps its threat-model record in the file (evaluate's default eps reads it)
    carried = {k: v for k, v in (getattr(model, "pretrained_meta", None) or {}).items() if k in RECORD_KEYS}
    for key, value in {**carried, **(metadata or {})}.items():
        if not isinstance(value, str):
            raise TypeError(f"metadata values must be str, {key!r} is {type(value).__name__}")
        meta.setdefault(key, value)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    path = directory / WEIGHTS_NAME
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
    card = dict(config, name=name, robustzoo_version=meta["robustzoo_version"], **_timm_fields(config, name))
    atomic_write(directory / CONFIG_NAME, lambda tmp: Path(tmp).write_text(json.dumps(card, indent=2) + "\n"))
    return path


def _timm_fields(config: Mapping, name: str) -> dict:
    """What ``timm.create_model("hf-hub:ORG/REPO")`` reads from ``config.json`` (timm ``_hub._parse_model_cfg``):
    the builder ``robustzoo.timm`` registers for the architecture, its arguments, and the input pipeline.

    mean/std are 0/1 because the models normalise inside; the input size is the registry record's when
    ``name`` is a registry name (timm would otherwise assume ImageNet's 224 x 224).
    """
    if config["arch"] == "ensemble":
        return {}
    from .registry import REGISTRY

    c = config["in_chans"]
    cfg: dict = {"num_classes": config["num_classes"], "mean": [0.0] * c, "std": [1.0] * c, "crop_pct": 1.0,
                 "interpolation": "bilinear", "first_conv": "conv1", "classifier": "linear", "license": "mit"}
    spec = REGISTRY.get(name)
    if spec is not None and spec.input_size[0] == c:
        cfg["input_size"] = list(spec.input_size)
    return {"architecture": f"robustzoo_{config['arch']}",
            "model_args": {k: v for k, v in config.items() if k != "arch"}, "pretrained_cfg": cfg}


def finetune_record(model: nn.Module) -> dict[str, Any]:
    """The eps and data set that a fine-tuned file records about itself: ``robustzoo finetune`` writes both
    (``finetune`` settings JSON and ``dataset``), ``finetune(checkpoint_dir=...)``'s ``best/`` writes the eps.

    Only well-formed fields are returned (``eps`` a pixel-unit budget in (0, 1], ``dataset`` the name of a
    named data set, never a folder path, which would point elsewhere on another machine and could be the
    training images); a missing or malformed one is left out, so the caller uses its documented default.
    """
    meta = getattr(model, "pretrained_meta", None) or {}
    try:
        settings = json.loads(meta.get("finetune", "{}"))
    except (TypeError, ValueError, RecursionError):  # not a string, malformed, absurdly nested: not a record
        settings = {}
    out: dict[str, Any] = {}
    eps = settings.get("eps") if isinstance(settings, dict) else None
    if isinstance(eps, (int, float)) and not isinstance(eps, bool) and 0 < eps <= 1:
        out["eps"] = float(eps)
    if dataset := dataset_name(meta.get("dataset")):  # a name, never a path: see robustzoo.data.dataset_name
        out["dataset"] = dataset
    return out


def mark_finetuned(model: nn.Module, settings: Mapping[str, Any]) -> None:
    """A model fine-tuned in place is no longer the weight it was loaded as: its load-time ``source`` and
    ``path`` (and a data set name from an earlier run) go, ``base`` keeps where it came from, and its
    fine-tuning record comes in, so that evaluate's default eps is the one it was just trained at."""
    old = getattr(model, "pretrained_meta", None) or {}
    meta = {k: v for k, v in old.items() if k not in (*LOAD_KEYS, "dataset")}
    if public_ref(old.get("source")):
        meta["base"] = old["source"]
    model.pretrained_meta = {**meta, "finetune": json.dumps(dict(settings), sort_keys=True, default=str)}


def public_ref(ref: object) -> str | None:
    """``ref`` if it names a model anywhere (a registry name, an ``hf-hub:`` repo), None for a local path,
    which means nothing on another machine and must not be written into a file that may be shared."""
    from .registry import REGISTRY

    if isinstance(ref, str) and (ref in REGISTRY or ref.startswith("hf-hub:")):
        return ref
    return None
