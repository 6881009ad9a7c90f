"""torch.hub entry points for robustzoo.

One entry point per registry name ('-' becomes '_'), plus the architecture builders::

    model = torch.hub.load("<repo dir>", "rot_adv_r18_w8_fmnist", source="local")           # embedded weights
    model = torch.hub.load("<repo dir>", "rot_adv_r50", source="local", pretrained=False)  # architecture only
    net = torch.hub.load("<repo dir>", "resnet50v2", source="local", num_classes=10)

Every entry point takes ``pretrained`` (default True) and the keyword arguments of
:func:`robustzoo.load` (``num_classes``, ``revision``, ``cache_dir``, ``offline`` ...).
"""

dependencies = ["torch", "safetensors", "huggingface_hub", "requests", "filelock"]

from robustzoo import load as _load  # noqa: E402
from robustzoo.models import resnet18, resnet50v2  # noqa: E402,F401
from robustzoo.registry import REGISTRY as _REGISTRY  # noqa: E402
from robustzoo.registry import RETIRED as _RETIRED  # noqa: E402


def _entry(name: str):
    def entry(pretrained: bool = True, **kwargs):
        return _load(name, pretrained=pretrained, **kwargs)

    spec = _REGISTRY[name]
    entry.__name__ = name.replace("-", "_")
    entry.__doc__ = (
        f"{name}: {spec.description}.\n\nArchitecture {spec.arch}, dataset {spec.dataset}, "
        f"{'published' if spec.published else 'not published yet (reproduce: ' + spec.reproduce + ')'}.\n"
        "Keyword arguments are those of robustzoo.load (pretrained, num_classes, revision, cache_dir, offline)."
    )
    return entry


def _retired(name: str):
    def entry(pretrained: bool = True, **kwargs):
        return _load(name, pretrained=pretrained, **kwargs)  # raises RetiredModelError naming the successor

    entry.__name__ = name.replace("-", "_")
    entry.__doc__ = f"{name}: retired; use {_RETIRED[name]['successor']} ({_RETIRED[name]['why']})"
    return entry


for _name in _REGISTRY:
    globals()[_name.replace("-", "_")] = _entry(_name)
for _name in _RETIRED:  # a retired name says what replaced it instead of "cannot find callable"
    globals()[_name.replace("-", "_")] = _retired(_name)
del _name
