"""robustzoo: adversarially robust, self-supervised pretrained ResNets (Chen et al., CVPR 2020).

Quick use::

    import robustzoo
    robustzoo.list_models("*-adv-*")
    model = robustzoo.load("rot-adv-r18-w8-fmnist")       # embedded, works offline
    result = model.finetune(data, mode="adv-full", epochs=5)
    robustzoo.evaluate(result.model, test_data, attacks=("clean", "pgd20"))

Public names are imported lazily so that ``import robustzoo`` stays cheap and pulls in neither
timm nor huggingface_hub.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    # models
    "create_model": "models", "ResNet": "models", "SoftmaxEnsemble": "models",
    "resnet18": "models", "resnet50v2": "models",
    # weight format and registry
    "save_pretrained": "weights", "load_file": "weights",
    "WeightSpec": "registry", "list_models": "registry", "model_info": "registry", "REGISTRY": "registry",
    # loading and publishing
    "load": "hub", "download": "hub", "verify": "hub", "push_to_hub": "hub",
    # attacks, evaluation, fine-tuning, data
    "pgd": "attacks", "fgsm": "attacks", "trades_adv": "attacks",
    "evaluate": "evaluation", "finetune": "finetuning", "FinetuneResult": "finetuning",
    "load_data": "data",
    # legacy checkpoints
    "convert": "converter",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'robustzoo' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
