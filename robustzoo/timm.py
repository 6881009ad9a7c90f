"""Register every zoo entry with timm: ``import robustzoo.timm`` then ``timm.create_model(...)``.

Each registry name becomes the timm model name ``robustzoo_<name with '-' -> '_'>``::

    import timm, robustzoo.timm
    model = timm.create_model("robustzoo_rot_adv_r18_w8_fmnist", pretrained=True)   # embedded weights
    model = timm.create_model("robustzoo_rot_adv_r50", num_classes=10)               # architecture only
    model = timm.create_model("hf-hub:ORG/REPO", pretrained=True)   # any weight pushed with robustzoo.push_to_hub

Each model carries a timm ``pretrained_cfg`` with its real input size (1x28x28 for Fashion-MNIST,
3x32x32 for CIFAR-10) and class count, so ``timm.data.resolve_data_config(model=model)`` describes
the right pipeline; ``timm.list_pretrained("robustzoo_*")`` lists the entries with a weight today.

``pretrained=True`` goes through :func:`robustzoo.load` (verified safetensors, strict loading,
offline support); unpublished weights raise :class:`~robustzoo.errors.NotPublishedError`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from timm.models import register_model

from .registry import REGISTRY, WeightSpec

__all__ = ["timm_name", "registered", "pretrained_cfg"]

default_cfgs: dict[str, dict[str, Any]] = {}
registered: list[str] = []


def timm_name(name: str) -> str:
    """The timm model name of a registry entry."""
    return "robustzoo_" + name.replace("-", "_").replace(".", "_")


def pretrained_cfg(spec: WeightSpec) -> dict[str, Any]:
    """timm's pretrained config of a registry entry: the real input size and class count.

    ``mean``/``std`` are 0/1 on purpose: robustzoo models normalise *inside* (buffers saved with the
    weights), so the input pipeline must hand them plain [0, 1] pixels; timm's
    ``resolve_data_config`` + ``create_transform`` then build exactly that (ToTensor, no extra shift).
    """
    channels = spec.input_size[0]
    cfg: dict[str, Any] = {
        "input_size": tuple(spec.input_size),
        "interpolation": "bilinear",
        "crop_pct": 1.0,
        "crop_mode": "center",
        "mean": (0.0,) * channels,
        "std": (1.0,) * channels,
        "num_classes": spec.num_classes,
        "first_conv": "conv1",
        "classifier": "linear",
        "license": "mit",
        "paper_ids": "arXiv:2003.12862",
        "notes": ("inputs in [0,1]; normalisation is inside the model", f"dataset: {spec.dataset}"),
    }
    if spec.published:  # timm.list_pretrained() lists entries that name a weight source
        from .hub import ZOO_DIR

        if spec.embedded:
            cfg["file"] = str(ZOO_DIR / f"{spec.name}.safetensors")
        else:
            cfg["hf_hub_id"] = f"{spec.repo_id}@{spec.revision}"
    return cfg


def _entrypoint(spec: WeightSpec) -> Callable[..., Any]:
    def create(pretrained: bool = False, *, num_classes: int | None = None, cache_dir: str | None = None, **kwargs):
        from . import hub

        kwargs.pop("pretrained_cfg", None)
        kwargs.pop("pretrained_cfg_overlay", None)
        if kwargs:
            raise TypeError(f"{timm_name(spec.name)} does not take {sorted(kwargs)}")
        model = hub.load(spec.name, pretrained=pretrained, num_classes=num_classes, cache_dir=cache_dir)
        # what timm.data.resolve_data_config(model=...) reads; the head size is the model's actual one
        model.pretrained_cfg = {**pretrained_cfg(spec), "architecture": timm_name(spec.name),
                                "num_classes": getattr(model, "num_classes", spec.num_classes)}
        model.default_cfg = model.pretrained_cfg
        return model

    create.__name__ = timm_name(spec.name)
    create.__qualname__ = create.__name__
    create.__module__ = __name__
    create.__doc__ = f"robustzoo {spec.name}: {spec.description}"
    return create


def _arch_entrypoint(arch: str) -> Callable[..., Any]:
    """The builder ``timm.create_model("hf-hub:ORG/REPO")`` reaches through the ``architecture`` field that
    :func:`robustzoo.save_pretrained` writes into ``config.json``; the weights still load through
    :func:`robustzoo.load` (verified safetensors, strict), never through timm's own state-dict loading."""

    def create(pretrained: bool = False, *, pretrained_cfg: dict | None = None, pretrained_cfg_overlay=None,
               cache_dir: str | None = None, **model_args):
        from . import hub
        from .errors import NotPublishedError, WeightFormatError
        from .models import create_model

        cfg = {**(pretrained_cfg or {}), **(pretrained_cfg_overlay or {})}
        model_args.pop("pretrained_model_args", None)  # timm's copy of config.json's model_args
        if not pretrained:
            model = create_model(arch, **model_args)
        else:
            source = f"hf-hub:{cfg['hf_hub_id']}" if cfg.get("hf_hub_id") else cfg.get("file")
            if not source:
                raise NotPublishedError(f"robustzoo_{arch} has no weights of its own: use "
                                        "timm.create_model('hf-hub:ORG/REPO', pretrained=True) or a zoo name "
                                        "(timm.list_pretrained('robustzoo_*'))")
            model = hub.load(source, num_classes=model_args.pop("num_classes", None), cache_dir=cache_dir)
            differ = sorted(k for k, v in model_args.items() if model.config.get(k) != v)
            if differ:  # config.json and the verified weight file disagree: trust neither silently
                raise WeightFormatError(f"{source}: config.json says {differ} differently from the weight file")
        model.pretrained_cfg = {**cfg, "architecture": f"robustzoo_{arch}",
                                "num_classes": getattr(model, "num_classes", 0)}
        model.default_cfg = model.pretrained_cfg
        return model

    create.__name__ = create.__qualname__ = f"robustzoo_{arch}"
    create.__module__ = __name__
    create.__doc__ = f"robustzoo {arch} (inputs in [0, 1], normalisation inside); weights via hf-hub: configs"
    return create


def _register() -> None:
    module = sys.modules[__name__]
    for spec in REGISTRY.values():
        name = timm_name(spec.name)
        default_cfgs[name] = pretrained_cfg(spec)
        fn = _entrypoint(spec)
        setattr(module, name, fn)
        register_model(fn)
        registered.append(name)
    for arch in ("resnet18", "resnet50v2"):  # the architectures, for timm's "hf-hub:" configs
        name = f"robustzoo_{arch}"
        default_cfgs[name] = {"num_classes": 0, "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
        fn = _arch_entrypoint(arch)
        setattr(module, name, fn)
        register_model(fn)


_register()
