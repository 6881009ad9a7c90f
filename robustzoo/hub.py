"""Load, pre-fetch, verify and publish weights: registry names, ``hf-hub:`` repos, files and URLs.

Sources accepted by :func:`load`:

* a registry name (``robustzoo list``): embedded entries load from the package, published ones come
  from the Hugging Face Hub at a pinned commit, unpublished ones say how to reproduce them;
* ``hf-hub:org/repo[@rev]``: any repo written by :func:`robustzoo.save_pretrained`;
* a local ``.safetensors`` file or a directory holding ``model.safetensors``;
* an ``https://``/``http://`` URL (cached, resumable) or a ``file://`` URL.

Every file is hashed before it is used (see :mod:`robustzoo._cache`): against the registry or caller's
sha256, else against its Hub cache name (LFS sha256 or git blob id). RobustBench had no checksum and kept
serving HTML quota pages and half files from its cache (``robustbench/utils.py``; RobustBench issues #49,
#68, #158). The endpoint, cache folder and offline switch are read at call time, never at import;
``import robustzoo`` does not import huggingface_hub.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from . import registry
from ._cache import Ref, fetch
from ._download import redact
from ._hubget import check_revision
from ._io import file_sha256
from .errors import InvalidReferenceError, NotPublishedError, UnknownModelError, WeightFormatError

if TYPE_CHECKING:
    from torch import nn

__all__ = ["load", "download", "verify", "push_to_hub", "resolve_endpoint", "resolve_cache", "resolve_offline"]

DEFAULT_ENDPOINT = "https://huggingface.co"
ZOO_DIR = registry.ZOO_DIR  # embedded weights: <name>.safetensors next to the registry file in use
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")


def resolve_endpoint(endpoint: str | None = None) -> str:
    """Hub endpoint: the argument, else ``ROBUSTZOO_ENDPOINT``, else ``HF_ENDPOINT``, else huggingface.co."""
    value = endpoint or os.environ.get("ROBUSTZOO_ENDPOINT") or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT
    return value.rstrip("/")


def resolve_offline(offline: bool | None = None) -> str | None:
    """Why offline mode is on (``"offline=True"``, ``"ROBUSTZOO_OFFLINE=1"``...), or None when it is off."""
    if offline is not None:
        return "offline=True" if offline else None
    for var in ("ROBUSTZOO_OFFLINE", "HF_HUB_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{var}={os.environ[var]}"
    return None


def resolve_cache(cache_dir: str | os.PathLike | None = None) -> Path:
    """Cache folder: the argument, else ``ROBUSTZOO_CACHE``, else the Hugging Face hub cache (``HF_HUB_CACHE``)."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    env = os.environ
    if env.get("ROBUSTZOO_CACHE"):
        return Path(env["ROBUSTZOO_CACHE"]).expanduser()
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"]).expanduser()
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(home).expanduser() / "hub"


def _sha256(value: object) -> str | None:
    """A caller's sha256, checked before it is used anywhere (it names cache folders): 64 hex digits, lower-cased."""
    if value is None:
        return None
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        raise InvalidReferenceError(f"sha256={str(value)[:80]!r} is not 64 hexadecimal digits (a sha256 digest)")
    return value.lower()


def _parse(name_or_ref: str | os.PathLike, revision: str | None, sha256: str | None) -> Ref:
    ref = os.fspath(name_or_ref)
    sha256 = _sha256(sha256)
    if revision is not None:
        check_revision(revision)
    if ref.startswith("hf-hub:"):
        repo_id, at, rev = ref[len("hf-hub:"):].partition("@")
        if not _REPO_ID.fullmatch(repo_id) or ".." in repo_id:
            raise UnknownModelError(f"{ref!r}: expected 'hf-hub:org/repo' or 'hf-hub:org/repo@revision'")
        if at and revision is not None and rev != revision:
            raise InvalidReferenceError(f"{ref!r} names revision {rev!r} but revision={revision!r} was also given; "
                                        "give the revision once")
        return Ref("hub", ref, repo_id=repo_id, revision=check_revision(rev or revision or "main"), sha256=sha256)
    if ref.startswith(("https://", "http://")):
        return Ref("url", redact(ref), location=ref, sha256=sha256)
    if ref.startswith("file://"):
        try:
            parts = urlsplit(ref)
        except ValueError:
            raise InvalidReferenceError(f"{ref!r} is not a valid file:// URL") from None
        if parts.netloc not in ("", "localhost"):
            raise InvalidReferenceError(f"{ref!r}: only local file:// URLs (file:///path) are supported")
        return Ref("local", ref, location=unquote(parts.path), sha256=sha256)
    if os.path.exists(ref) or ref.endswith(".safetensors") or os.sep in ref:
        if not os.path.exists(ref):
            raise UnknownModelError(f"no weight file or folder at {ref!r}")
        return Ref("local", ref, location=ref, sha256=sha256)
    spec = registry.model_info(ref)
    if not spec.published:
        raise NotPublishedError(_not_published(spec))
    if spec.embedded:
        return Ref("embedded", spec.name, spec, location=str(ZOO_DIR / f"{spec.name}.safetensors"),
                    sha256=spec.sha256)
    pinned = revision is None or revision == spec.revision  # another revision has another hash: use the ETag
    return Ref("hub", spec.name, spec, repo_id=spec.repo_id or f"{registry.HUB_ORG}/{spec.name}",
                filename=spec.filename, revision=revision or spec.revision or "main",
                sha256=spec.sha256 if pinned else sha256)


def _not_published(spec: registry.WeightSpec) -> str:
    """What works now instead (the Fashion-MNIST stand-in), and how to reproduce the real weight."""
    fm = [n for n in registry.REGISTRY if n.endswith("-fmnist") and registry.REGISTRY[n].published]
    same = [n for n in fm if n.startswith(spec.name.split("-")[0] + "-adv") and registry.REGISTRY[n].kind == spec.kind]
    stand_in = (same or [n for n in fm if registry.REGISTRY[n].kind == spec.kind] or ["rot-adv-r18-w8-fmnist"])[0]
    head = " (a headless backbone: pass num_classes=10 to .finetune())" \
        if registry.REGISTRY[stand_in].kind == "backbone" else ""
    return (f"{spec.name}: the {spec.dataset} weight file is not published yet. Works now, offline: "
            f"robustzoo.load({stand_in!r}), the same kind of model at width 0.25 trained on Fashion-MNIST{head}. "
            f"To reproduce {spec.name}, from a clone of {PROJECT_URL}: `{spec.reproduce}` (modelled cost in "
            "training/README.md: 0.04-18 hours on one H100 depending on the entry; thousands of times that on a "
            "CPU), then load the local file with robustzoo.load('path/to/model.safetensors').")


PROJECT_URL = "https://github.com/robustzoo/robustzoo"


def _fetch(ref: Ref, *, endpoint: str | None, cache_dir, offline: bool | None, force_download: bool,
           progress: bool) -> Path:
    return fetch(ref, endpoint=resolve_endpoint(endpoint), cache=resolve_cache(cache_dir),
                 offline_why=resolve_offline(offline), force_download=force_download, progress=progress)


def _build(spec: registry.WeightSpec, num_classes: int | None) -> nn.Module:
    """The architecture of a registry entry, randomly initialised."""
    from .models import create_model

    def config(s: registry.WeightSpec) -> dict:
        n = s.num_classes if num_classes is None else num_classes
        return {"arch": s.arch, "num_classes": n, "in_chans": s.input_size[0], "width": s.width}

    if spec.arch == "ensemble":
        return create_model("ensemble", members=[config(registry.model_info(p)) for p in spec.parents])
    return create_model(**config(spec))


def load(
    name_or_ref: str | os.PathLike,
    *,
    pretrained: bool = True,
    num_classes: int | None = None,
    revision: str | None = None,
    endpoint: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    offline: bool | None = None,
    force_download: bool = False,
    progress: bool = True,
    map_location: str = "cpu",
    sha256: str | None = None,
) -> nn.Module:
    """Load a robust model (Chen et al., CVPR 2020) by registry name, ``hf-hub:`` repo, path or URL.

    Args:
        name_or_ref: a registry name (``robustzoo list``), ``hf-hub:org/repo[@rev]``, a ``.safetensors``
            file, a folder holding ``model.safetensors``, or an ``https://``/``http://``/``file://`` URL.
        pretrained: False builds the registry entry's architecture, randomly initialised, with no file.
        num_classes: replace the head (after the strict load) for fine-tuning on another label set.
        revision: Hub branch, tag or commit; registry entries default to their pinned commit.
        endpoint: Hub URL; default ``ROBUSTZOO_ENDPOINT``, then ``HF_ENDPOINT`` (read at call time).
        cache_dir: cache folder; default ``ROBUSTZOO_CACHE``, then the Hugging Face hub cache.
        offline: never touch the network; default on when ``ROBUSTZOO_OFFLINE``/``HF_HUB_OFFLINE`` is 1.
        force_download: download again even when cached (repairs a corrupt cache).
        progress: show download progress bars.
        map_location: device of the returned model.
        sha256: expected sha256 for files, URLs and ``hf-hub:`` refs (registry entries carry their own).

    Returns:
        The model in eval mode (``pretrained=True``) with its file metadata in ``model.pretrained_meta``.

    Raises:
        UnknownModelError, NotPublishedError, DownloadError, OfflineError, ChecksumError, WeightFormatError.
    """
    from .weights import load_file

    if not pretrained:  # architecture only: works for unpublished entries too
        if not isinstance(name_or_ref, str) or name_or_ref.startswith("hf-hub:") or "/" in name_or_ref:
            raise ValueError("pretrained=False needs a registry name (a file, URL or repo always carries weights)")
        return _build(registry.model_info(name_or_ref), num_classes).to(map_location)
    ref = _parse(name_or_ref, revision, sha256)
    path = _fetch(ref, endpoint=endpoint, cache_dir=cache_dir, offline=offline,
                  force_download=force_download, progress=progress)
    model = load_file(path, num_classes=num_classes, map_location=map_location)
    meta = model.pretrained_meta
    if ref.spec is not None and meta.get("arch") != ref.spec.arch:
        raise WeightFormatError(f"{ref.label}: file holds a {meta.get('arch')} model, registry says {ref.spec.arch}")
    meta.update(source=ref.label, path=str(path))
    return model


def download(name_or_ref: str | os.PathLike, *, revision: str | None = None, endpoint: str | None = None,
             cache_dir: str | os.PathLike | None = None, offline: bool | None = None, force_download: bool = False,
             progress: bool = True, sha256: str | None = None) -> Path:
    """Pre-fetch and verify a weight file into the cache (``robustzoo download``); returns its path."""
    ref = _parse(name_or_ref, revision, sha256)
    return _fetch(ref, endpoint=endpoint, cache_dir=cache_dir, offline=offline,
                  force_download=force_download, progress=progress)


def verify(names: str | list[str] | None = None, *, cache_dir: str | os.PathLike | None = None
           ) -> list[tuple[str, Path | None, bool, str]]:
    """Re-hash embedded and cached registry files without any network access (``robustzoo verify``).

    ``names=None`` checks every embedded entry and every published entry present in the cache;
    explicit names also report entries that are missing or unpublished. Returns
    ``(name, path, ok, message)`` tuples; nothing is deleted or downloaded.
    """
    from huggingface_hub import try_to_load_from_cache

    explicit = names is not None
    wanted = [names] if isinstance(names, str) else list(names or [n for n, s in registry.REGISTRY.items()
                                                                      if s.published])
    cache, out = resolve_cache(cache_dir), []
    for name in wanted:
        spec = registry.model_info(name)
        if not spec.published:
            out.append((spec.name, None, False, f"not published yet; reproduce with `{spec.reproduce}`"))
            continue
        if spec.embedded:
            path: Path | None = ZOO_DIR / f"{spec.name}.safetensors"
        else:
            hit = try_to_load_from_cache(spec.repo_id or f"{registry.HUB_ORG}/{spec.name}", spec.filename,
                                         cache_dir=str(cache), revision=spec.revision)
            path = Path(hit) if isinstance(hit, str) else None
        if path is None or not path.exists():
            if explicit:
                out.append((spec.name, None, False, f"not downloaded; run `robustzoo download {spec.name}`"))
            continue
        digest = file_sha256(path)
        if digest == spec.sha256:
            out.append((spec.name, path, True, "ok"))
        else:
            fix = "reinstall robustzoo" if spec.embedded else f"repair: download({spec.name!r}, force_download=True)"
            out.append((spec.name, path, False, f"sha256 {digest[:16]}... != registry {spec.sha256[:16]}...; {fix}"))
    return out


def push_to_hub(model: nn.Module, repo_id: str, *, name: str = "", metrics: Mapping[str, float] | None = None,
                token: str | None = None, endpoint: str | None = None, private: bool | None = None,
                commit_message: str | None = None) -> str:
    """Publish ``model`` as ``model.safetensors`` + ``config.json`` + a model card; returns the commit to pin.

    ``metrics`` (accuracy in %, e.g. ``{"clean": 84.1, "pgd20": 50.2}``) go into the card's ``model-index``.
    Pin the returned commit and the file's sha256 (in the card) in the registry.
    """
    from ._publish import publish

    return publish(model, repo_id, name=name, metrics=metrics, token=token, endpoint=resolve_endpoint(endpoint),
                   private=private, commit_message=commit_message)
