"""The registry: one frozen :class:`WeightSpec` per named weight.

Names are ``{task}-{std|adv}-{arch}`` for pretext backbones (Chen et al., CVPR 2020, section 8 of
the spec), ``at-baseline-{arch}`` for end-to-end adversarial training, ``{task}-adv-aft-{arch}``
for adversarially fine-tuned classifiers and ``ens3-aft-{arch}`` for the softmax ensemble of the
three fine-tuned models. Entries with a ``-fmnist`` suffix are the tiny zoo this project trained
itself on CPU (Fashion-MNIST, small width), shipped inside the package.

``metrics`` hold numbers measured by this project (with how and where); ``paper_metrics`` hold
numbers reported by the paper. The two are never mixed. An entry whose ``sha256`` is ``None`` is
not published yet: :func:`robustzoo.load` says so and how to reproduce it.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from .errors import UnknownModelError

__all__ = ["WeightSpec", "REGISTRY", "list_models", "model_info", "HUB_ORG"]

HUB_ORG = "robustzoo"
PGD10 = "linf pgd-10 eps=8/255 step=2/255 random-start"
PAPER = "Chen et al., Adversarial Robustness: From Self-Supervised Pre-Training to Fine-Tuning, CVPR 2020"


@dataclass(frozen=True)
class WeightSpec:
    """Everything known about one named weight."""

    name: str
    arch: str  # "resnet18" | "resnet50v2" | "ensemble"
    kind: str  # "backbone" (headless) | "classifier" | "ensemble"
    task: str  # "rotation" | "jigsaw" | "selfie" | "ensemble" | "none" (no pretraining)
    training: str  # "std" | "adv": how the pretext task (or the classifier) was trained
    dataset: str = "cifar10"
    input_size: tuple[int, int, int] = (3, 32, 32)
    num_classes: int = 0
    width: float = 1.0
    pretrain_attack: str | None = None
    finetune: str | None = None  # e.g. "adv-full (Madry PGD-10)"
    parents: tuple[str, ...] = ()
    repo_id: str | None = None
    filename: str = "model.safetensors"
    revision: str | None = None  # pinned 40-hex Hub commit
    sha256: str | None = None
    embedded: bool = False  # shipped inside the package (robustzoo/zoo/<name>.safetensors)
    recipe: str = ""
    reproduce: str = ""
    metrics: Mapping[str, object] = field(default_factory=dict)  # measured by this project
    paper_metrics: Mapping[str, object] = field(default_factory=dict)  # reported by the paper
    description: str = ""
    # threat model the weight was trained/evaluated for: norm, eps, step, steps (pixel units)
    attack: Mapping[str, object] = field(default_factory=dict)
    # fine-tuning defaults for this weight's dataset: mode, eps, step, steps, epochs, lr, batch_size
    finetune_defaults: Mapping[str, object] = field(default_factory=dict)

    @property
    def published(self) -> bool:
        """True when a verified file exists: embedded, or on the Hub at a pinned revision."""
        return self.sha256 is not None and (self.embedded or self.revision is not None)


def _arch(tag: str) -> str:
    return {"r18": "resnet18", "r50": "resnet50v2"}[tag]


_TASKS = {"rot": "rotation", "jig": "jigsaw", "selfie": "selfie", "ens": "ensemble"}
# Paper-reported CIFAR-10 TA / RA (PGD-20, eps 8/255) read from Fig. 1 (spec section 5.1), ResNet-50v2.
_PAPER_FT = {
    "at-baseline": {"clean": 84.72, "pgd20": 47.22},
    "selfie-adv-aft": {"clean": 86.02, "pgd20": 51.05},
    "rot-adv-aft": {"clean": 85.66, "pgd20": 50.05},
    "jig-adv-aft": {"clean": 83.74, "pgd20": 48.83},
    "ens-adv-aft": {"clean": 83.00, "pgd20": 52.22},
    "ens3-aft": {"clean": 86.04, "pgd20": 54.64, "autoattack_robustbench": 51.56},
}


def _paper(key: str, arch_tag: str) -> dict:
    if arch_tag != "r50" or key not in _PAPER_FT:
        return {}
    return {**_PAPER_FT[key], "source": "paper Fig. 1 / abstract (spec 5.1); AA from RobustBench", "paper": PAPER}


def _cifar_entries() -> list[WeightSpec]:
    out: list[WeightSpec] = []
    for a in ("r18", "r50"):
        arch = _arch(a)
        for t in ("rot", "jig", "selfie"):
            for mode in ("std", "adv"):
                name = f"{t}-{mode}-{a}"
                out.append(WeightSpec(
                    name=name, arch=arch, kind="backbone", task=_TASKS[t], training=mode,
                    pretrain_attack=PGD10 if mode == "adv" else None, repo_id=f"{HUB_ORG}/{name}",
                    recipe=name, reproduce=f"python training/reproduce.py {name}",
                    description=f"{_TASKS[t]} pretext, {'PGD-10 adversarial' if mode == 'adv' else 'standard'} "
                    "pretraining on CIFAR-10 (labels unused); headless backbone",
                ))
        name = f"ens-adv-{a}"
        out.append(WeightSpec(
            name=name, arch=arch, kind="backbone", task="ensemble", training="adv", pretrain_attack=PGD10,
            repo_id=f"{HUB_ORG}/{name}", recipe=name, reproduce=f"python training/reproduce.py {name}",
            description="rotation+jigsaw+selfie on a shared trunk, joint PGD-10 with the log-det "
            "gradient-diversity penalty (lambda 0.1); headless backbone (stem + layer1-3 pretrained)",
        ))
        base = f"at-baseline-{a}"
        out.append(WeightSpec(
            name=base, arch=arch, kind="classifier", task="none", training="adv", num_classes=10,
            finetune="adv-full from scratch (Madry PGD-10, 100 epochs)", repo_id=f"{HUB_ORG}/{base}",
            recipe=base, reproduce=f"python training/reproduce.py {base}", paper_metrics=_paper("at-baseline", a),
            description="end-to-end adversarial training baseline (no pretraining)",
        ))
        for t in ("rot", "jig", "selfie", "ens"):
            name = f"{t}-adv-aft-{a}"
            out.append(WeightSpec(
                name=name, arch=arch, kind="classifier", task=_TASKS[t], training="adv", num_classes=10,
                finetune="adv-full (Madry PGD-10, 100 epochs)", parents=(f"{t}-adv-{a}",),
                repo_id=f"{HUB_ORG}/{name}", recipe=name, reproduce=f"python training/reproduce.py {name}",
                paper_metrics=_paper(f"{t}-adv-aft", a),
                description=f"{_TASKS[t]}-adv backbone adversarially fine-tuned on CIFAR-10",
            ))
        name = f"ens3-aft-{a}"
        out.append(WeightSpec(
            name=name, arch="ensemble", kind="ensemble", task="ensemble", training="adv", num_classes=10,
            finetune="softmax average of three adv-full fine-tuned models",
            parents=tuple(f"{t}-adv-aft-{a}" for t in ("rot", "jig", "selfie")),
            repo_id=f"{HUB_ORG}/{name}", recipe=name, reproduce=f"python training/reproduce.py {name}",
            paper_metrics=_paper("ens3-aft", a),
            description="softmax-averaging ensemble of the rotation, jigsaw and selfie fine-tuned classifiers",
        ))
    return [replace(s, attack=dict(_CIFAR_ATTACK), finetune_defaults=dict(_CIFAR_FINETUNE)) for s in out]


# The paper's threat model and adversarial fine-tuning recipe (spec section 4, finetune/main.py).
_CIFAR_ATTACK = {"norm": "linf", "eps": 8 / 255, "step": 2 / 255, "steps": 10}
_CIFAR_FINETUNE = {"mode": "adv-full", "eps": 8 / 255, "step": 2 / 255, "steps": 10, "epochs": 100, "lr": 0.1,
                   "batch_size": 128}


def _embedded_entries() -> list[WeightSpec]:
    """The tiny Fashion-MNIST zoo trained here (filled from ``robustzoo/zoo/zoo.json``)."""
    import json
    from importlib import resources

    try:
        raw = resources.files("robustzoo").joinpath("zoo", "zoo.json").read_text()
    except FileNotFoundError:
        return []
    out = []
    for rec in json.loads(raw):
        rec = dict(rec, input_size=tuple(rec["input_size"]), parents=tuple(rec.get("parents", ())))
        out.append(WeightSpec(**rec, embedded=True))
    return out


def _build() -> Mapping[str, WeightSpec]:
    table: dict[str, WeightSpec] = {}
    for spec in _cifar_entries() + _embedded_entries():
        if spec.name in table:
            raise RuntimeError(f"duplicate registry name {spec.name!r}")
        table[spec.name] = spec
    return MappingProxyType(table)


REGISTRY: Mapping[str, WeightSpec] = _build()


def model_info(name: str) -> WeightSpec:
    """The registry record for ``name``; unknown names raise with the closest suggestions."""
    if not isinstance(name, str):
        raise TypeError(f"model name must be a str, got {type(name).__name__}")
    spec = REGISTRY.get(name) or REGISTRY.get(name.strip().lower().replace("_", "-"))
    if spec is None:
        close = difflib.get_close_matches(name.lower().replace("_", "-"), list(REGISTRY), n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UnknownModelError(
            f"unknown model {name!r}.{hint} `robustzoo list` (or robustzoo.list_models()) shows all "
            f"{len(REGISTRY)} names; local files and 'hf-hub:org/repo' references load too."
        )
    return spec


def list_models(
    pattern: str | None = None,
    *,
    task: str | None = None,
    arch: str | None = None,
    dataset: str | None = None,
    kind: str | None = None,
    published: bool | None = None,
) -> list[str]:
    """Registry names, sorted, filtered by an fnmatch ``pattern`` and exact-match fields.

    ``arch`` accepts ``"resnet18"``/``"r18"`` style; ``published=True`` keeps only weights that
    can be loaded today (embedded or pinned on the Hub).
    """
    arch_alias = {"r18": "resnet18", "r50": "resnet50v2"}.get(arch or "", arch)
    out = []
    for name, spec in REGISTRY.items():
        if pattern and not fnmatch.fnmatch(name, pattern):
            continue
        if task and spec.task != task:
            continue
        if arch_alias and spec.arch != arch_alias:
            continue
        if dataset and spec.dataset != dataset:
            continue
        if kind and spec.kind != kind:
            continue
        if published is not None and spec.published != published:
            continue
        out.append(name)
    return sorted(out)


_LABELS = {"clean": "clean", "pgd20": "PGD-20", "autoattack": "AutoAttack",
           "autoattack_robustbench": "AA (RobustBench)"}


def format_metrics(metrics: Mapping[str, object]) -> str:
    """One-line summary of a ``metrics`` or ``paper_metrics`` mapping, accuracies in %.

    An attack run on fewer images than the clean number says so (``PGD-20 57.10 (first 2000)``), so
    a subset figure is never shown as a full-test-set one. Backbones show their linear probe.
    """
    def num(key: str) -> float | None:
        v = metrics.get(key)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    n = num("n")
    prefix, label = ("linear_probe_", "linear probe ") if num("linear_probe_clean") is not None else ("", "")
    parts = []
    for key, name in _LABELS.items():
        v, sub = num(prefix + key), num(f"{key}_n")
        if v is not None:
            parts.append(f"{name} {v:.2f}" + (f" (first {sub:.0f})" if sub is not None and n and sub < n else ""))
    out = label + ", ".join(parts)
    pretext = sorted(k for k in metrics if k.startswith(("pretext_clean_", "pretext_robust_")))
    out += "".join(f"; pretext {k.split('_')[1]} {k.split('_')[2]} {num(k):.2f}" for k in pretext if num(k) is not None)
    return out or "-"
