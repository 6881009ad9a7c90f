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

__all__ = ["file_sha256", "git_blob_sha1", "fetch_url", "RETRIES", "BACKOFF"]

RETRIES = 4  # attempts after the first one, for 5xx, dropped connections and timeouts
BACKOFF = 0.5  # seconds before the first retry, doubled each time (0.5, 1, 2, 4)
CHUNK = 1 << 20
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
        if sha256 is not None:
            digest = file_sha256(part)
            if digest != sha256:
                part.unlink(missing_ok=True)
                raise ChecksumError(
                    f"{url} served bytes with sha256 {digest}, expected {sha256}; nothing was cached "
                    "(the server or a proxy returned another file; retry, or check the URL)"
                )
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
            for chunk in r.iter_content(CHUNK):
                f.write(chunk)
                bar.update(len(chunk))
    size = part.stat().st_size
    if total is not None and size != total:
        raise _Retry(f"received {size} of {total} bytes")
