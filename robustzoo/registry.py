"""The registry: one frozen :class:`WeightSpec` per named weight, read from ``zoo/registry.json``.

Names are ``{task}-{std|adv}-{arch}`` for pretext backbones (Chen et al., CVPR 2020; official code
``pretraining/train_{std,adv}_{rotation,jigsaw,selfie}.py``, ``ensemble_pretrain.py``),
``at-baseline-{arch}`` for end-to-end adversarial training (the paper's baseline in Fig. 1),
``{task}-adv-aft-{arch}`` for adversarially fine-tuned classifiers (``finetune/main.py``) and
``ens3-aft-{arch}`` for the softmax ensemble of the three fine-tuned models
(``finetune/model_ensemble.py``). ``ARCH_TAGS`` and ``TASK_TAGS`` spell the short names; recipes
(``training/recipes.py``) are keyed by the same names. Entries with a ``-w8-fmnist`` / ``-w16-fmnist`` suffix
are the tiny zoo this project trained itself on CPU (Fashion-MNIST, width 0.125 / 0.25: 8 / 16 stem
channels), shipped inside the package; ``{task}-std-aft`` is a classifier fine-tuned from a
standard-pretrained backbone.

Every record is written out literally in the data file; nothing here generates entries. Only the
release step (``training/publish.py``) writes that file: it pins the Hub commit and the file's
sha256 and copies the measured metrics. ``metrics`` hold numbers measured by this project (with
how, where and when); ``paper_metrics`` hold numbers reported by the paper (with their source).
The two are never mixed. An entry whose ``sha256`` is ``None`` is not published yet:
:func:`robustzoo.load` says so and how to reproduce it.

Names that were released once and then replaced are kept in ``zoo/retired.json`` (next to the
registry file, written by the same release step): asking for one raises
:class:`~robustzoo.errors.RetiredModelError` naming its successor, instead of "unknown model".

``ROBUSTZOO_REGISTRY=/path/to/registry.json`` replaces the packaged file (read once, at import): a
release can be tried out from a copy before it is committed.
"""

from __future__ import annotations

import difflib
import fnmatch
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from types import MappingProxyType

from .errors import RetiredModelError, RobustZooError, UnknownModelError

__all__ = ["WeightSpec", "REGISTRY", "list_models", "model_info", "HUB_ORG", "ARCH_TAGS", "TASK_TAGS",
           "REGISTRY_FILE", "REGISTRY_ENV", "registry_path", "read_records", "dump_records", "ZOO_DIR", "RETIRED",
           "read_retired", "dump_retired", "spec_from_record"]

HUB_ORG = "robustzoo"
# The short names used inside weight names (and recipe names, which are the same), defined once.
ARCH_TAGS = MappingProxyType({"r18": "resnet18", "r50": "resnet50v2"})
TASK_TAGS = MappingProxyType({"rot": "rotation", "jig": "jigsaw", "selfie": "selfie", "ens": "ensemble"})
REGISTRY_FILE = Path(__file__).resolve().parent / "zoo" / "registry.json"
REGISTRY_ENV = "ROBUSTZOO_REGISTRY"


@dataclass(frozen=True)
class WeightSpec:
    """Everything known about one named weight (one record of ``zoo/registry.json``)."""

    name: str
    arch: str  # "resnet18" | "resnet50v2" | "ensemble"
    kind: str  # "backbone" (headless) | "classifier" | "ensemble"
    task: str  # "rotation" | "jigsaw" | "selfie" | "ensemble" | "none" (no pretraining)
    training: str  # "std" | "adv": how the pretext task (or the classifier) was trained
    dataset: str = "cifar10"
    input_size: tuple[int, int, int] = (3, 32, 32)
    num_classes: int = 0
    width: float = 1.0
    # threat model the weight was trained / is evaluated for: norm, eps, step, steps (pixel units)
    attack: Mapping[str, object] = field(default_factory=dict)
    # default fine-tuning settings for this weight's dataset: mode, eps, step, steps, epochs, lr, batch_size
    finetune_defaults: Mapping[str, object] = field(default_factory=dict)
    pretrain_attack: str | None = None
    finetune: str | None = None  # e.g. "adv-full (Madry PGD-10)"
    parents: tuple[str, ...] = ()
    recipe: str = ""
    reproduce: str = ""
    repo_id: str | None = None
    filename: str = "model.safetensors"
    revision: str | None = None  # pinned 40-hex Hub commit
    sha256: str | None = None
    embedded: bool = False  # shipped inside the package (robustzoo/zoo/<name>.safetensors)
    metrics: Mapping[str, object] = field(default_factory=dict)  # measured by this project
    paper_metrics: Mapping[str, object] = field(default_factory=dict)  # reported by the paper
    provenance: Mapping[str, object] = field(default_factory=dict)  # code commit, recipe, data, machine, date
    description: str = ""

    @property
    def published(self) -> bool:
        """True when a verified file exists: embedded, or on the Hub at a pinned revision."""
        return self.sha256 is not None and (self.embedded or self.revision is not None)

    def to_record(self) -> dict:
        """The JSON record of this spec (the inverse of :func:`read_records`)."""
        rec = asdict(self)
        rec.update(input_size=list(self.input_size), parents=list(self.parents))
        return rec


_FIELDS = tuple(f.name for f in fields(WeightSpec))


def registry_path() -> Path:
    """The registry file in use: ``$ROBUSTZOO_REGISTRY`` if set, else the one inside the package."""
    env = os.environ.get(REGISTRY_ENV, "").strip()
    return Path(env).expanduser() if env else REGISTRY_FILE


def spec_from_record(rec: object, where: str) -> WeightSpec:
    if not isinstance(rec, dict):
        raise RobustZooError(f"{where}: a registry record must be a JSON object, got {type(rec).__name__}")
    name = rec.get("name", "?")
    missing, unknown = set(_FIELDS) - set(rec), set(rec) - set(_FIELDS)
    if missing or unknown:  # every record is complete and literal: no silent defaults, no stray keys
        raise RobustZooError(f"{where}: record {name!r} has missing fields {sorted(missing)} and unknown fields "
                             f"{sorted(unknown)}; fix the file (training/publish.py writes it)")
    return WeightSpec(**dict(rec, input_size=tuple(rec["input_size"]), parents=tuple(rec["parents"])))


def read_records(path: str | os.PathLike | None = None) -> dict[str, WeightSpec]:
    """Parse a registry file into ``{name: WeightSpec}``; a malformed file raises :class:`RobustZooError`."""
    path = Path(path) if path is not None else registry_path()
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise RobustZooError(f"cannot read the registry file {path}: {e}; unset {REGISTRY_ENV} or "
                             "reinstall robustzoo") from None
    if not isinstance(raw, list):
        raise RobustZooError(f"{path}: the registry must be a JSON list of records")
    table: dict[str, WeightSpec] = {}
    for rec in raw:
        spec = spec_from_record(rec, str(path))
        if spec.name in table:
            raise RobustZooError(f"{path}: duplicate registry name {spec.name!r}")
        table[spec.name] = spec
    return table


def dump_records(specs: Mapping[str, WeightSpec] | list[WeightSpec]) -> str:
    """The registry file's text for ``specs``: records sorted by name, one stable layout (diff-friendly)."""
    items = list(specs.values()) if isinstance(specs, Mapping) else list(specs)
    return json.dumps([s.to_record() for s in sorted(items, key=lambda s: s.name)], indent=1,
                      ensure_ascii=False) + "\n"


_RETIRED_KEYS = {"successor", "date", "why"}


def read_retired(registry: str | os.PathLike | None = None) -> dict[str, dict]:
    """``{old name: {successor, date, why}}`` from ``retired.json`` next to ``registry`` (absent file: none)."""
    path = (Path(registry) if registry is not None else registry_path()).parent / "retired.json"
    if not path.exists():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise RobustZooError(f"cannot read {path}: {e}; reinstall robustzoo") from None
    if not isinstance(raw, dict) or not all(isinstance(v, dict) and set(v) == _RETIRED_KEYS for v in raw.values()):
        raise RobustZooError(f"{path}: expected {{name: {{{', '.join(sorted(_RETIRED_KEYS))}}}}}")
    return raw


def dump_retired(retired: Mapping[str, Mapping]) -> str:
    """The text of ``retired.json`` (sorted by name, stable layout)."""
    return json.dumps({k: dict(retired[k]) for k in sorted(retired)}, indent=1, ensure_ascii=False) + "\n"


_LOADED_FROM = registry_path()
REGISTRY: Mapping[str, WeightSpec] = MappingProxyType(read_records(_LOADED_FROM))
RETIRED: Mapping[str, Mapping] = MappingProxyType(read_retired(_LOADED_FROM))
ZOO_DIR = _LOADED_FROM.parent  # embedded weights live next to the registry file they are recorded in


def model_info(name: str) -> WeightSpec:
    """The registry record for ``name``; unknown names raise with the closest suggestions."""
    if not isinstance(name, str):
        raise TypeError(f"model name must be a str, got {type(name).__name__}")
    key = name.strip().lower().replace("_", "-")
    spec = REGISTRY.get(name) or REGISTRY.get(key)
    if spec is None and key in RETIRED:
        old = RETIRED[key]
        raise RetiredModelError(
            f"{key!r} was retired on {old['date']}: {old['why']} Load {old['successor']!r} instead: "
            f"robustzoo.load({old['successor']!r}) (`robustzoo info {old['successor']}` shows how it differs)."
        )
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
    arch_alias = ARCH_TAGS.get(arch or "", arch)
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
