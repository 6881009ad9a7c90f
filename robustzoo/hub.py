"""Load, pre-fetch, verify and publish weights: registry names, ``hf-hub:`` repos, files and URLs.

Sources accepted by :func:`load`:

* a registry name (``robustzoo list``): embedded entries load from the package, published ones come
  from the Hugging Face Hub at a pinned commit, unpublished ones say how to reproduce them;
* ``hf-hub:org/repo[@rev]``: any repo written by :func:`robustzoo.save_pretrained`;
* a local ``.safetensors`` file or a directory holding ``model.safetensors``;
* an ``https://``/``http://`` URL (cached, resumable) or a ``file://`` URL.

Every file is hashed before it is used: against the registry sha256, else against the Hub ETag when it
is a sha256 (LFS) or a git blob id. RobustBench had no checksum and kept serving HTML quota pages and
half files from its cache (hub_notes section 1.6). The endpoint, cache folder and offline switch are
read at call time, never at import; ``import robustzoo`` does not import huggingface_hub.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import registry
from ._download import fetch_url, file_sha256, git_blob_sha1, hub_download
from .errors import ChecksumError, NotPublishedError, OfflineError, UnknownModelError, WeightFormatError

if TYPE_CHECKING:
    from torch import nn

__all__ = ["load", "download", "verify", "push_to_hub", "resolve_endpoint", "resolve_cache", "resolve_offline"]

DEFAULT_ENDPOINT = "https://huggingface.co"
ZOO_DIR = Path(__file__).resolve().parent / "zoo"  # embedded weights: zoo/<name>.safetensors
_HEX64, _HEX40 = re.compile(r"[0-9a-f]{64}"), re.compile(r"[0-9a-f]{40}")


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


@dataclass
class _Ref:
    """A parsed ``name_or_ref``: where the bytes come from and what they must hash to."""

    kind: str  # embedded | hub | local | url
    label: str  # what to call it in messages and in `robustzoo download LABEL`
    spec: registry.WeightSpec | None = None
    repo_id: str = ""
    filename: str = "model.safetensors"
    revision: str = "main"
    sha256: str | None = None
    location: str = ""  # file path or URL


def _parse(name_or_ref: str | os.PathLike, revision: str | None, sha256: str | None) -> _Ref:
    ref = os.fspath(name_or_ref)
    if ref.startswith("hf-hub:"):
        repo_id, _, rev = ref[len("hf-hub:"):].partition("@")
        if repo_id.count("/") != 1:
            raise UnknownModelError(f"{ref!r}: expected 'hf-hub:org/repo' or 'hf-hub:org/repo@revision'")
        return _Ref("hub", ref, repo_id=repo_id, revision=rev or revision or "main", sha256=sha256)
    if ref.startswith(("https://", "http://")):
        return _Ref("url", ref, location=ref, sha256=sha256)
    if ref.startswith("file://"):
        return _Ref("local", ref, location=ref[len("file://"):], sha256=sha256)
    if os.path.exists(ref) or ref.endswith(".safetensors") or os.sep in ref:
        if not os.path.exists(ref):
            raise UnknownModelError(f"no weight file or folder at {ref!r}")
        return _Ref("local", ref, location=ref, sha256=sha256)
    spec = registry.model_info(ref)
    if not spec.published:
        raise NotPublishedError(_not_published(spec))
    if spec.embedded:
        return _Ref("embedded", spec.name, spec, location=str(ZOO_DIR / f"{spec.name}.safetensors"),
                    sha256=spec.sha256)
    pinned = revision is None or revision == spec.revision  # another revision has another hash: use the ETag
    return _Ref("hub", spec.name, spec, repo_id=spec.repo_id or f"{registry.HUB_ORG}/{spec.name}",
                filename=spec.filename, revision=revision or spec.revision or "main",
                sha256=spec.sha256 if pinned else sha256)


def _not_published(spec: registry.WeightSpec) -> str:
    """What works now instead (the Fashion-MNIST stand-in), and how to reproduce the real weight."""
    fm = [n for n in registry.REGISTRY if n.endswith("-fmnist") and registry.REGISTRY[n].published]
    same = [n for n in fm if n.startswith(spec.name.split("-")[0] + "-adv") and registry.REGISTRY[n].kind == spec.kind]
    stand_in = (same or [n for n in fm if registry.REGISTRY[n].kind == spec.kind] or ["rot-adv-r18-w16-fmnist"])[0]
    head = " (a headless backbone: pass num_classes=10 to .finetune())" \
        if registry.REGISTRY[stand_in].kind == "backbone" else ""
    return (f"{spec.name}: the {spec.dataset} weight file is not published yet. Works now, offline: "
            f"robustzoo.load({stand_in!r}), the same kind of model at width 0.25 trained on Fashion-MNIST{head}. "
            f"To reproduce {spec.name}, from a clone of {PROJECT_URL}: `{spec.reproduce}` (modelled cost in "
            "training/README.md: 0.04-18 hours on one H100 depending on the entry; thousands of times that on a "
            "CPU), then load the local file with robustzoo.load('path/to/model.safetensors').")


PROJECT_URL = "https://github.com/robustzoo/robustzoo"


def _fetch(ref: _Ref, *, endpoint: str | None, cache_dir, offline: bool | None, force_download: bool,
           progress: bool) -> Path:
    """Local path of verified bytes for ``ref`` (downloading if needed)."""
    if ref.kind in ("embedded", "local"):
        path = Path(ref.location)
        if path.is_dir():
            path = path / "model.safetensors"
        if ref.sha256 is not None:
            _check(path, ref.sha256, ref, cached=False)
        return path
    why = resolve_offline(offline)
    if why and force_download:
        raise OfflineError(f"force_download=True needs the network, but offline mode is on ({why})")
    cache = resolve_cache(cache_dir)
    if ref.kind == "url":
        key = ref.sha256 or hashlib.sha256(ref.location.encode()).hexdigest()[:16]
        target = cache / "robustzoo-urls" / key / (Path(ref.location.split("?")[0]).name or "model.safetensors")
        if why and not target.exists():
            raise OfflineError(f"offline mode is on ({why}) and {ref.location} is not in the cache {cache}; "
                               f"pre-fetch it with `robustzoo download {ref.label}` or turn offline mode off")
        if not target.exists() or force_download:
            fetch_url(ref.location, target, sha256=ref.sha256, force=force_download, progress=progress)
        else:  # no sha256 given: the digest recorded at download time still catches later changes
            recorded = Path(str(target) + ".sha256")
            expected = ref.sha256 or (recorded.read_text().strip() if recorded.exists() else None)
            if expected:
                _check(target, expected, ref, cached=True)
        return target
    path = Path(hub_download(ref.repo_id, ref.filename, ref.revision, label=ref.label,
                             endpoint=resolve_endpoint(endpoint), cache=cache, offline_why=why,
                             force=force_download, progress=progress))
    expected = ref.sha256
    blob = Path(os.path.realpath(path))
    if expected is None and _HEX64.fullmatch(blob.name):
        expected = blob.name  # LFS file: the Hub ETag (= blob name in the cache) is its sha256
    if expected is not None:
        _check(path, expected, ref, cached=True)
    elif _HEX40.fullmatch(blob.name) and git_blob_sha1(blob) != blob.name:
        _discard(path)
        raise ChecksumError(f"{ref.label}: cached file {path} does not match its git blob id {blob.name}; removed it")
    return path


def _check(path: Path, expected: str, ref: _Ref, *, cached: bool) -> None:
    try:
        digest = file_sha256(path)
    except OSError as e:
        raise WeightFormatError(f"cannot read {path}: {e.strerror or e}") from None
    if digest == expected:
        return
    if not cached:
        where = "the package file (reinstall robustzoo)" if ref.kind == "embedded" else "the file"
        raise ChecksumError(f"{ref.label}: {path} has sha256 {digest}, expected {expected}: {where} is corrupt")
    _discard(path)
    raise ChecksumError(
        f"{ref.label}: {path} has sha256 {digest}, expected {expected} (corrupted in transit or modified in the "
        "cache). The bad copy was removed; load again (or pass force_download=True) to download a fresh one."
    )


def _discard(path: Path) -> None:
    """Remove a bad cached file: the blob a snapshot link points to, and the link."""
    real = Path(os.path.realpath(path))
    real.unlink(missing_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink(missing_ok=True)


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
