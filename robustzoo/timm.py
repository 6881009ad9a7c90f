"""Register every zoo entry with timm: ``import robustzoo.timm`` then ``timm.create_model(...)``.

Each registry name becomes the timm model name ``robustzoo_<name with '-' -> '_'>``::

    import timm, robustzoo.timm
    model = timm.create_model("robustzoo_rot_adv_r18_w16_fmnist", pretrained=True)   # embedded weights
    model = timm.create_model("robustzoo_rot_adv_r50", num_classes=10)               # architecture only

``pretrained=True`` goes through :func:`robustzoo.load` (verified safetensors, strict loading,
offline support); unpublished weights raise :class:`~robustzoo.errors.NotPublishedError`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from timm.models import register_model

from .registry import REGISTRY, WeightSpec

__all__ = ["timm_name", "registered"]

default_cfgs: dict[str, dict[str, Any]] = {}
registered: list[str] = []


def timm_name(name: str) -> str:
    """The timm model name of a registry entry."""
    return "robustzoo_" + name.replace("-", "_").replace(".", "_")


def _entrypoint(spec: WeightSpec) -> Callable[..., Any]:
    def create(pretrained: bool = False, *, num_classes: int | None = None, cache_dir: str | None = None, **kwargs):
        from . import hub

        kwargs.pop("pretrained_cfg", None)
        kwargs.pop("pretrained_cfg_overlay", None)
        if kwargs:
            raise TypeError(f"{timm_name(spec.name)} does not take {sorted(kwargs)}")
        return hub.load(spec.name, pretrained=pretrained, num_classes=num_classes, cache_dir=cache_dir)

    create.__name__ = timm_name(spec.name)
    create.__qualname__ = create.__name__
    create.__module__ = __name__
    create.__doc__ = f"robustzoo {spec.name}: {spec.description}"
    return create


def _register() -> None:
    module = sys.modules[__name__]
    for spec in REGISTRY.values():
        name = timm_name(spec.name)
        default_cfgs[name] = {
            "input_size": spec.input_size,
            "num_classes": spec.num_classes,
            "first_conv": "conv1",
            "classifier": "linear",
            "license": "mit",
            "paper_ids": "arXiv:2003.12862",
            "notes": ("inputs in [0,1]; normalisation is inside the model",),
        }
        fn = _entrypoint(spec)
        setattr(module, name, fn)
        register_model(fn)
        registered.append(name)


_register()
