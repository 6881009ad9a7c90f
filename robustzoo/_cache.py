"""Where the bytes of a reference come from, and the proof they are the right ones (used by :mod:`robustzoo.hub`).

Every file handed to the loader was hashed first: against the registry or caller's sha256, else
against the name the Hub cache gives it (the LFS sha256 or git blob id of its ``blobs/`` entry). A
snapshot link that leaves the blobs folder, or a blob whose name is not a hash, cannot be verified
that way and is refused unless a sha256 is given. A bad copy is removed, but only inside the cache:
a link pointing elsewhere is unlinked, never what it points to. Remote files must also parse as
safetensors before they are returned, so ``download()`` never returns a path ``load()`` refuses.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from ._download import fetch_url, git_blob_sha1, redact
from ._hubget import hub_download
from ._io import file_sha256, inside
from .errors import ChecksumError, InvalidReferenceError, OfflineError, UnknownModelError, WeightFormatError

_HEX64, _HEX40 = re.compile(r"[0-9a-f]{64}"), re.compile(r"[0-9a-f]{40}")
_SAFE_NAME = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9._+-]{0,99}")


@dataclass
class Ref:
    """A parsed ``name_or_ref``: where the bytes come from and what they must hash to."""

    kind: str  # embedded | hub | local | url
    label: str  # what to call it in messages and in `robustzoo download LABEL` (credentials removed)
    spec: Any = None  # registry.WeightSpec
    repo_id: str = ""
    filename: str = "model.safetensors"
    revision: str = "main"
    sha256: str | None = None
    location: str = ""  # file path or URL


def local_path(ref: Ref) -> Path:
    """The file a local reference names (a folder means its ``model.safetensors``), or a clear error."""
    path = Path(ref.location)
    if path.is_dir():
        path = path / "model.safetensors"
        if not path.exists():
            raise UnknownModelError(f"{ref.label}: the folder {path.parent} holds no model.safetensors; pass the "
                                    "weight file itself or a folder written by robustzoo.save_pretrained")
    if not path.exists():
        raise UnknownModelError(f"no weight file or folder at {ref.label!r}")
    return path


def url_target(ref: Ref, cache: Path) -> Path:
    """Cache path of a URL download: ``robustzoo-urls/<sha256 or URL hash>/<safe last segment>``."""
    try:
        parts = urlsplit(ref.location)
        host = parts.hostname
    except ValueError:
        host, parts = None, None
    if not host or parts is None:
        raise InvalidReferenceError(f"{ref.label}: not a valid URL (no host); give the full https:// address")
    name = parts.path.rsplit("/", 1)[-1]
    if unquote(name) in ("", ".", ".."):
        raise InvalidReferenceError(f"{ref.label}: the URL does not end in a file name; give the address of the "
                                    ".safetensors file itself")
    if not _SAFE_NAME.fullmatch(name):  # over-long or odd names: the cache folder is keyed by the URL anyway
        name = "model.safetensors"
    key = ref.sha256 or hashlib.sha256(ref.location.encode()).hexdigest()[:16]
    return cache / "robustzoo-urls" / key / name


def fetch(ref: Ref, *, endpoint: str, cache: Path, offline_why: str | None, force_download: bool,
          progress: bool) -> Path:
    """Local path of verified bytes for ``ref`` (downloading if needed)."""
    if ref.kind in ("embedded", "local"):
        path = local_path(ref)
        if ref.sha256 is not None:
            check_hash(path, ref.sha256, ref, cache=None)
        return path
    if offline_why and force_download:
        raise OfflineError(f"force_download=True needs the network, but offline mode is on ({offline_why})")
    if ref.kind == "url":
        return _fetch_url(ref, cache, offline_why, force_download, progress)
    path = Path(hub_download(ref.repo_id, ref.filename, ref.revision, label=ref.label, endpoint=endpoint,
                             cache=cache, offline_why=offline_why, force=force_download, progress=progress))
    blob = Path(os.path.realpath(path))
    blobs = Path(os.path.realpath(cache / f"models--{ref.repo_id.replace('/', '--')}" / "blobs"))
    expected = ref.sha256
    if expected is None and blob.parent == blobs and _HEX64.fullmatch(blob.name):
        expected = blob.name  # LFS file: the Hub ETag (= blob name in the cache) is its sha256
    if expected is not None:
        check_hash(path, expected, ref, cache=cache)
    elif blob.parent == blobs and _HEX40.fullmatch(blob.name):
        if git_blob_sha1(blob) != blob.name:
            discard(path, cache)
            raise ChecksumError(f"{ref.label}: cached file {path} does not match its git blob id {blob.name}; "
                                "removed it; load again (or pass force_download=True) to download a fresh copy")
    else:
        discard(path, cache)
        raise ChecksumError(
            f"{ref.label}: cached file {path} resolves to {blob}, which is not a hash-named file of the cache's blobs "
            "folder, so it cannot be verified; removed the link. Load again (force_download=True), or pass sha256=")
    _format_check(path, ref, cache)
    return path


def _fetch_url(ref: Ref, cache: Path, offline_why: str | None, force: bool, progress: bool) -> Path:
    target = url_target(ref, cache)
    if offline_why and not target.exists():
        raise OfflineError(f"offline mode is on ({offline_why}) and {ref.label} is not in the cache {cache}; "
                           f"pre-fetch it with `robustzoo download {ref.label}` or turn offline mode off")
    recorded = Path(str(target) + ".sha256")
    if target.exists() and not force and (ref.sha256 or recorded.exists()):
        # no sha256 given: the digest recorded at download time still catches later changes
        check_hash(target, ref.sha256 or recorded.read_text().strip(), ref, cache=cache)
        return target
    return fetch_url(ref.location, target, sha256=ref.sha256, force=force or target.exists(), progress=progress,
                     check=lambda part: _safetensors(part, ref))


def _safetensors(path: Path, ref: Ref) -> None:
    from .weights import read_metadata

    try:
        read_metadata(path)
    except WeightFormatError as e:
        raise WeightFormatError(f"{ref.label} did not serve a safetensors weight file ({e}); nothing was cached. "
                                "Check the URL (a login, quota or error page?)") from None


def _format_check(path: Path, ref: Ref, cache: Path) -> None:
    from .weights import read_metadata

    try:
        read_metadata(path)
    except WeightFormatError as e:
        discard(path, cache)
        raise WeightFormatError(f"{ref.label}: the downloaded file is not a safetensors weight file ({e}); removed "
                                "it from the cache. Check the repo, then load again (force_download=True)") from None


def check_hash(path: Path, expected: str, ref: Ref, *, cache: Path | None) -> None:
    """Hash ``path`` against ``expected``; a cached bad copy (``cache`` given) is removed."""
    digest = file_sha256(path)
    if digest == expected:
        return
    if cache is None:
        where = "the package file (reinstall robustzoo)" if ref.kind == "embedded" else "the file"
        raise ChecksumError(f"{ref.label}: {path} has sha256 {digest}, expected {expected}: {where} is corrupt")
    discard(path, cache)
    raise ChecksumError(
        f"{ref.label}: {path} has sha256 {digest}, expected {expected} (corrupted in transit or modified in the "
        "cache). The bad copy was removed; load again (or pass force_download=True) to download a fresh one.")


def discard(path: Path, cache: Path) -> None:
    """Remove a bad cached file: the blob a snapshot link points to (only when it is inside ``cache``), and the link.

    A link pointing out of the cache is unlinked, never followed: a planted link must not delete user files.
    """
    if path.is_symlink():
        real = os.path.realpath(path)
        if inside(real, cache) and os.path.isfile(real):
            os.unlink(real)
        if inside(path, cache):
            path.unlink(missing_ok=True)
    elif inside(path, cache) and path.is_file():
        path.unlink(missing_ok=True)


__all__ = ["Ref", "fetch", "check_hash", "discard", "url_target", "local_path", "redact"]
