"""``hf_hub_download`` behind a gate: the server's answer is checked before huggingface_hub writes anything.

huggingface_hub builds cache paths from what the server says: ``blobs/<ETag>``, ``snapshots/<X-Repo-Commit>``,
``.locks/.../<ETag>.lock`` and ``.no_exist/<X-Repo-Commit>/...`` (``file_download._hf_hub_download_to_cache_dir``).
A server answering ``ETag: "../../x"`` would make it write outside the cache. So robustzoo first asks for
the file's metadata itself (``get_hf_file_metadata``, one HEAD), refuses any ETag or commit that is not a
plain token, waits at most ``ROBUSTZOO_LOCK_TIMEOUT`` for another process's download of the same blob, and
only then lets ``hf_hub_download`` run; the path it returns must be the snapshot of the checked commit.
"""

from __future__ import annotations

import errno
import re
from pathlib import Path

from ._download import lock_timeout, locked
from ._io import cause, inside
from .errors import CacheError, DownloadError, InvalidReferenceError, OfflineError

__all__ = ["hub_download", "plain_token", "check_revision"]

_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_HEX40 = re.compile(r"[0-9a-f]{40}")
_DISK_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.ENOTDIR, errno.EEXIST,
                errno.EDQUOT}


def plain_token(value: object) -> bool:
    """A server-given ETag or commit usable as a file name: letters, digits, ``._-``, at most 128, no ``..``."""
    return isinstance(value, str) and bool(_TOKEN.fullmatch(value)) and ".." not in value


def check_revision(revision: str) -> str:
    """Refuse revisions that would leave the cache's ``refs`` folder (``..``, absolute, control characters)."""
    parts = revision.split("/")
    if (not revision or len(revision) > 256 or revision.startswith("/") or "\\" in revision
            or any(p in ("", ".", "..") for p in parts) or any(ord(c) < 32 or ord(c) == 127 for c in revision)):
        raise InvalidReferenceError(f"revision {revision!r} is not a branch, tag or commit name")
    return revision


def _disk_error(e: OSError, cache: Path) -> CacheError:
    return CacheError(f"cannot write the cache folder {cache} ({e.strerror or cause(e)}); free some space, fix its "
                      "permissions, or pass cache_dir= / set ROBUSTZOO_CACHE to a writable folder")


def hub_download(repo_id: str, filename: str, revision: str, *, label: str, endpoint: str, cache: Path,
                 offline_why: str | None, force: bool, progress: bool) -> str:
    """``hf_hub_download`` into ``cache``, after checking the server's metadata, with errors translated.

    huggingface_hub is imported here, not at module import, so ``import robustzoo`` stays light.
    """
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub import errors as hfe
    from huggingface_hub.utils import httpx

    from . import __version__

    check_revision(revision)
    what = f"{filename} from {repo_id} at revision {revision} ({endpoint})"
    if offline_why or (_HEX40.fullmatch(revision) and not force):
        try:  # a cached pinned commit needs no request at all (and offline mode allows none)
            return _call(repo_id, filename, revision, what, label, endpoint, cache, offline_why, True, False, progress)
        except (DownloadError, OfflineError):
            if offline_why:
                raise
    url = hf_hub_url(repo_id, filename, revision=revision, endpoint=endpoint)
    try:
        meta = get_hf_file_metadata(url, timeout=constants.HF_HUB_ETAG_TIMEOUT, library_name="robustzoo",
                                    library_version=__version__, endpoint=endpoint, retry_on_errors=True)
    except (hfe.RepositoryNotFoundError, hfe.RevisionNotFoundError, hfe.RemoteEntryNotFoundError) as e:
        raise _translate(e, repo_id, filename, revision, endpoint, what, label, cache, None) from None
    except (hfe.HfHubHTTPError, httpx.HTTPError, OSError, ValueError) as e:  # unreachable: a cached copy may do
        if not force:
            try:
                return _call(repo_id, filename, revision, what, label, endpoint, cache, None, True, False, progress)
            except DownloadError:
                pass
        raise DownloadError(f"cannot download {what}, and no cached copy in {cache}: {cause(e)}") from None
    for field, value in (("ETag", meta.etag), ("X-Repo-Commit", meta.commit_hash)):
        if not plain_token(value):
            raise DownloadError(f"{endpoint} answered {what} with an unusable {field} {str(value)[:80]!r} (not a "
                                "plain token); nothing was written. Check ROBUSTZOO_ENDPOINT / the endpoint.")
    folder = cache / f"models--{repo_id.replace('/', '--')}"
    lock = folder.parent / ".locks" / folder.name / f"{meta.etag}.lock"
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        with locked(str(lock)):  # probe only: huggingface_hub takes this same lock itself, without a time limit
            pass
    except OSError as e:
        raise _disk_error(e, cache) from None
    except Exception as e:  # filelock.Timeout
        raise CacheError(f"the download lock {lock} is held by another process (waited {lock_timeout():g} s, "
                         "ROBUSTZOO_LOCK_TIMEOUT); wait for that download to finish, or delete the lock file if no "
                         "download is running") from e
    path = _call(repo_id, filename, revision, what, label, endpoint, cache, None, False, force, progress)
    if Path(path) != folder / "snapshots" / meta.commit_hash / filename or not inside(path, cache):
        raise DownloadError(f"{endpoint} changed its answer for {what} between two requests; retry later")
    return path


def _call(repo_id, filename, revision, what, label, endpoint, cache, offline_why, local_only, force,
          progress) -> str:
    from huggingface_hub import hf_hub_download

    from . import __version__

    try:
        return hf_hub_download(
            repo_id, filename, revision=revision, endpoint=endpoint, cache_dir=str(cache),
            local_files_only=local_only, force_download=force, library_name="robustzoo",
            library_version=__version__, tqdm_class=None if progress else _silent_tqdm(),
        )
    except Exception as e:  # noqa: BLE001 - translated below; anything unknown is re-raised as is
        raise _translate(e, repo_id, filename, revision, endpoint, what, label, cache, offline_why) from None


def _translate(e: Exception, repo_id, filename, revision, endpoint, what, label, cache, offline_why) -> Exception:
    from huggingface_hub import errors as hfe
    from huggingface_hub.utils import httpx

    if isinstance(e, hfe.RevisionNotFoundError):
        return DownloadError(f"revision {revision!r} does not exist in {repo_id} ({endpoint})")
    if isinstance(e, hfe.RemoteEntryNotFoundError):
        return DownloadError(f"{repo_id} has no file {filename!r} at revision {revision} ({endpoint})")
    if isinstance(e, hfe.RepositoryNotFoundError):
        return DownloadError(f"repository {repo_id} not found on {endpoint} (misspelled, private, or the wrong "
                             "endpoint: see ROBUSTZOO_ENDPOINT)")
    if isinstance(e, hfe.LocalEntryNotFoundError):
        if offline_why:
            return OfflineError(
                f"offline mode is on ({offline_why}) and {what} is not in the cache {cache}. Pre-fetch it with "
                f"network access using `robustzoo download {label}` (same cache folder), or turn offline mode off.")
        return DownloadError(f"cannot download {what}, and no cached copy in {cache}: {cause(e)}")
    if isinstance(e, hfe.HfHubHTTPError) and e.response is not None:
        return DownloadError(f"HTTP {e.response.status_code} while downloading {what}")
    if isinstance(e, OSError) and e.errno in _DISK_ERRNOS:
        return _disk_error(e, cache)
    if isinstance(e, (hfe.HfHubHTTPError, httpx.HTTPError, OSError, ValueError)):  # dropped/stalled, size mismatch
        return DownloadError(f"downloading {what} failed: {cause(e)}")
    return e


def _silent_tqdm():
    from tqdm.auto import tqdm

    class Silent(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return Silent

