"""Plain URL downloads for :func:`robustzoo.load`: streamed, resumable, locked, atomic, verified.

RobustBench's loader cached whatever the server returned (HTML quota pages, half files) under the
final name and reused it forever (hub_notes section 1.6). Here a download goes to
``<target>.incomplete`` under a per-target :class:`filelock.FileLock` (concurrent processes download
once), resumes with a ``Range``/``If-Range`` request after a dropped connection or a killed process,
checks the length against ``Content-Length`` and the bytes against the expected sha256, and only then
``os.replace`` s the file into place: the final path never holds a partial or unverified file.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from .errors import ChecksumError, DownloadError

__all__ = ["file_sha256", "git_blob_sha1", "fetch_url", "hub_download", "RETRIES", "BACKOFF"]

RETRIES = 4  # attempts after the first one, for 5xx, dropped connections and timeouts
BACKOFF = 0.5  # seconds before the first retry, doubled each time (0.5, 1, 2, 4)
CHUNK = 1 << 20
STREAM_CHUNK = 1 << 16  # small: a chunk cut by a dropped connection is lost and fetched again on resume
_RETRY_STATUS = {408, 429, 500, 502, 503, 504}


def file_sha256(path: str | os.PathLike, chunk: int = CHUNK) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def git_blob_sha1(path: str | os.PathLike) -> str:
    """The git blob id of a file: what the Hub uses as the ETag of a regular (non-LFS) file."""
    h = hashlib.sha1(b"blob %d\0" % os.path.getsize(path))
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def timeouts() -> tuple[float, float]:
    """(connect, read) timeouts in seconds; ``ROBUSTZOO_DOWNLOAD_TIMEOUT`` (read at call time) sets both."""
    value = float(os.environ.get("ROBUSTZOO_DOWNLOAD_TIMEOUT") or 30)
    return min(value, 10.0), value


class _Retry(Exception):
    """A transient failure: retry (resuming from what is on disk)."""


def fetch_url(url: str, target: Path, *, sha256: str | None = None, force: bool = False,
              progress: bool = True) -> Path:
    """Download ``url`` to ``target`` unless it is already there; verify ``sha256`` when given.

    Raises:
        DownloadError: HTTP errors, or transient errors still failing after ``RETRIES`` retries.
        ChecksumError: the downloaded bytes do not hash to ``sha256`` (nothing is kept).
    """
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".incomplete")
    with FileLock(str(target) + ".lock"):
        # Re-check under the lock: another process may have finished the download meanwhile.
        if target.exists() and not force:
            return target
        if force:
            part.unlink(missing_ok=True)
        _download(url, part, progress)
        digest = file_sha256(part)
        if sha256 is not None:
            if digest != sha256:
                part.unlink(missing_ok=True)
                Path(str(part) + ".etag").unlink(missing_ok=True)
                raise ChecksumError(
                    f"{url} served bytes with sha256 {digest}, expected {sha256}; nothing was cached "
                    "(the server or a proxy returned another file; retry, or check the URL)"
                )
        # Without an expected hash, record the one seen at download time: later loads detect a changed file.
        Path(str(target) + ".sha256").write_text(digest)
        os.replace(part, target)
        Path(str(part) + ".etag").unlink(missing_ok=True)
    return target


def _download(url: str, part: Path, progress: bool) -> None:
    import requests

    last: Exception | None = None
    with requests.Session() as session:
        for attempt in range(RETRIES + 1):
            if attempt:
                time.sleep(BACKOFF * 2 ** (attempt - 1))
            try:
                return _attempt(session, url, part, progress)
            except _Retry as e:
                last = e
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as e:
                last = e  # includes read timeouts and connections cut mid-body (urllib3 IncompleteRead)
    raise DownloadError(f"downloading {url} failed after {RETRIES + 1} attempts: {_reason(last)}")


def _reason(e: Exception | None) -> str:
    text = str(e) if e is not None else "unknown error"
    return text if len(text) < 300 else text[:300] + "..."


def _attempt(session, url: str, part: Path, progress: bool) -> None:
    from tqdm.auto import tqdm

    have = part.stat().st_size if part.exists() else 0
    etag_file = Path(str(part) + ".etag")
    headers = {"Accept-Encoding": "identity"}  # a compressed body would break Range offsets and sizes
    if have:
        headers["Range"] = f"bytes={have}-"
        if etag_file.exists():  # resume only if the file is unchanged, else the server sends it whole
            headers["If-Range"] = etag_file.read_text()
    with session.get(url, headers=headers, stream=True, timeout=timeouts()) as r:
        if r.status_code in _RETRY_STATUS:
            raise _Retry(f"HTTP {r.status_code} {r.reason}")
        if r.status_code == 416 and have:  # our partial file is not a prefix of the remote one
            part.unlink()
            raise _Retry("HTTP 416 on resume; restarting from scratch")
        if r.status_code >= 400:
            raise DownloadError(f"downloading {url} failed: HTTP {r.status_code} {r.reason}")
        if r.status_code == 206 and not r.headers.get("Content-Range", "").startswith(f"bytes {have}-"):
            part.unlink()
            raise _Retry(f"server resumed at the wrong offset ({r.headers.get('Content-Range')!r})")
        if r.status_code != 206:
            have = 0  # the server ignored Range (or the file changed): start over
        if r.headers.get("ETag"):
            etag_file.write_text(r.headers["ETag"])
        length = r.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else None
        with open(part, "ab" if have else "wb") as f, tqdm(
            total=total, initial=have, unit="B", unit_scale=True, desc=Path(url).name, disable=not progress
        ) as bar:
            for chunk in r.iter_content(STREAM_CHUNK):
                f.write(chunk)
                bar.update(len(chunk))
    size = part.stat().st_size
    if total is not None and size != total:
        raise _Retry(f"received {size} of {total} bytes")


def hub_download(repo_id: str, filename: str, revision: str, *, label: str, endpoint: str, cache: Path,
                 offline_why: str | None, force: bool, progress: bool) -> str:
    """``hf_hub_download`` into ``cache`` with its errors translated into robustzoo's.

    huggingface_hub is imported here, not at module import, so ``import robustzoo`` stays light.
    """
    from huggingface_hub import errors as hfe
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import httpx

    from . import __version__
    from .errors import OfflineError

    what = f"{filename} from {repo_id} at revision {revision} ({endpoint})"
    try:
        return hf_hub_download(
            repo_id, filename, revision=revision, endpoint=endpoint, cache_dir=str(cache),
            local_files_only=bool(offline_why), force_download=force, library_name="robustzoo",
            library_version=__version__, tqdm_class=None if progress else _silent_tqdm(),
        )
    except hfe.RevisionNotFoundError:
        raise DownloadError(f"revision {revision!r} does not exist in {repo_id} ({endpoint})") from None
    except hfe.RemoteEntryNotFoundError:
        raise DownloadError(f"{repo_id} has no file {filename!r} at revision {revision} ({endpoint})") from None
    except hfe.RepositoryNotFoundError:
        raise DownloadError(
            f"repository {repo_id} not found on {endpoint} (misspelled, private, or the wrong endpoint: "
            "see ROBUSTZOO_ENDPOINT)"
        ) from None
    except hfe.LocalEntryNotFoundError as e:
        if offline_why:
            raise OfflineError(
                f"offline mode is on ({offline_why}) and {what} is not in the cache {cache}. Pre-fetch it with "
                f"network access using `robustzoo download {label}` (same cache folder), or turn offline mode off."
            ) from None
        raise DownloadError(f"cannot download {what}, and no cached copy in {cache}: {cause(e)}") from None
    except hfe.HfHubHTTPError as e:
        raise DownloadError(f"HTTP {e.response.status_code} while downloading {what}") from None
    except (httpx.HTTPError, OSError, ValueError) as e:  # dropped/stalled transfers, size mismatch
        raise DownloadError(f"downloading {what} failed: {cause(e)}") from None


def cause(e: BaseException) -> str:
    """The innermost message of an exception chain (what actually went wrong), one line."""
    while e.__cause__ is not None:
        e = e.__cause__
    return f"{type(e).__name__}: {e}".splitlines()[0][:300]


def _silent_tqdm():
    from tqdm.auto import tqdm

    class Silent(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return Silent
