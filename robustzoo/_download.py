"""Plain URL downloads for :func:`robustzoo.load`: streamed, resumable, locked, atomic, verified.

RobustBench's loader cached whatever the server returned (HTML quota pages, half files) under the
final name and reused it forever (``robustbench/utils.py``; RobustBench issues #49, #68, #158). Here a
download goes to ``<target>.incomplete`` under a per-target :class:`filelock.FileLock` (waited on for at most
``ROBUSTZOO_LOCK_TIMEOUT`` seconds), resumes with ``Range`` only when the server gave a validator
(a strong ``ETag`` or ``Last-Modified``, recorded next to the partial file and sent back as
``If-Range``; RFC 9110 section 13.1.5), else starts from zero, refuses bodies above
``ROBUSTZOO_MAX_DOWNLOAD_BYTES``, checks the length and the bytes (sha256 and the caller's format
check), and only then ``os.replace`` s the file into place: the final path never holds a partial,
unverified or malformed file.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from ._io import CHUNK as CHUNK
from ._io import atomic_write, cause, file_sha256, terminal
from .errors import CacheError, ChecksumError, DownloadError, WeightFormatError

__all__ = ["file_sha256", "git_blob_sha1", "fetch_url", "redact", "max_download_bytes", "lock_timeout", "cause",
           "RETRIES", "BACKOFF", "DEFAULT_MAX_BYTES", "DEFAULT_LOCK_TIMEOUT"]

RETRIES = 4  # attempts after the first one, for 5xx, dropped connections and timeouts
BACKOFF = 0.5  # seconds before the first retry, doubled each time (0.5, 1, 2, 4)
STREAM_CHUNK = 1 << 16  # small: a chunk cut by a dropped connection is lost and fetched again on resume
DEFAULT_MAX_BYTES = 2 << 30  # 2 GiB: 20x the largest zoo file (a 3-member ResNet-50v2 ensemble)
DEFAULT_LOCK_TIMEOUT = 600.0  # seconds to wait for another process's download of the same file
_RETRY_STATUS = {408, 429, 500, 502, 503, 504}


def git_blob_sha1(path: str | os.PathLike) -> str:
    """The git blob id of a file: what the Hub uses as the ETag of a regular (non-LFS) file."""
    import hashlib

    h = hashlib.sha1(b"blob %d\0" % os.path.getsize(path))
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def timeouts() -> tuple[float, float]:
    """(connect, read) timeouts in seconds; ``ROBUSTZOO_DOWNLOAD_TIMEOUT`` (read at call time) sets both."""
    value = float(os.environ.get("ROBUSTZOO_DOWNLOAD_TIMEOUT") or 30)
    return min(value, 10.0), value


def max_download_bytes() -> int:
    """Largest URL download accepted: ``ROBUSTZOO_MAX_DOWNLOAD_BYTES`` (read at call time), default 2 GiB."""
    return int(os.environ.get("ROBUSTZOO_MAX_DOWNLOAD_BYTES") or DEFAULT_MAX_BYTES)


def lock_timeout() -> float:
    """Seconds to wait for a download lock held by another process: ``ROBUSTZOO_LOCK_TIMEOUT``, default 600."""
    return float(os.environ.get("ROBUSTZOO_LOCK_TIMEOUT") or DEFAULT_LOCK_TIMEOUT)


def redact(url: str) -> str:
    """``url`` without the user name and password (they must never reach messages, logs or metadata)."""
    try:
        parts = urlsplit(url)
        if parts.username is None and parts.password is None:
            return url
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit(parts._replace(netloc="***@" + host))
    except ValueError:
        return "<unparsable URL>"


def locked(lock_path: str):
    """A :class:`filelock.FileLock` that gives up after :func:`lock_timeout` seconds."""
    from filelock import FileLock

    return FileLock(lock_path, timeout=lock_timeout())


class _Retry(Exception):
    """A transient failure: retry (resuming from what is on disk)."""


def fetch_url(url: str, target: Path, *, sha256: str | None = None, force: bool = False, progress: bool = True,
              check: Callable[[Path], None] | None = None) -> Path:
    """Download ``url`` to ``target`` unless it is already there; verify ``sha256`` and ``check`` first.

    Raises:
        DownloadError: HTTP errors, refused sizes or redirects, or transient errors still failing after retries.
        ChecksumError: the downloaded bytes do not hash to ``sha256`` (nothing is kept).
        CacheError: the cache folder cannot be written (not a folder, read-only, full) or stays locked.
        WeightFormatError: ``check`` refused the bytes (nothing is kept).
    """
    from filelock import Timeout

    label = redact(url)
    part = target.with_name(target.name + ".incomplete")
    validator = Path(str(part) + ".etag")
    lock = str(target) + ".lock"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with locked(lock):
            # Re-check under the lock: another process may have finished the download meanwhile.
            if target.exists() and not force:
                return target
            if force:
                part.unlink(missing_ok=True)
            try:
                _download(url, label, part, validator, progress)
                digest = file_sha256(part)
                if sha256 is not None and digest != sha256:
                    raise ChecksumError(
                        f"{label} served bytes with sha256 {digest}, expected {sha256}; nothing was cached (the "
                        "server or a proxy returned another file; retry, or check the URL and the sha256)")
                if check is not None:
                    check(part)
            except (ChecksumError, WeightFormatError):  # wrong bytes: never resume from them
                part.unlink(missing_ok=True)
                validator.unlink(missing_ok=True)
                raise
            # Record the digest seen at download time: later loads detect a file changed in the cache.
            atomic_write(Path(str(target) + ".sha256"), lambda tmp: Path(tmp).write_text(digest))
            os.replace(part, target)
            validator.unlink(missing_ok=True)
    except Timeout:
        raise CacheError(
            f"the download lock {lock} is held by another process (waited {lock_timeout():g} s, "
            "ROBUSTZOO_LOCK_TIMEOUT); wait for that download to finish, or delete the lock file if no "
            "robustzoo process is running") from None
    except OSError as e:  # mkdir on a file, read-only folder, full disk, file-size limit (EFBIG)
        raise CacheError(
            f"cannot write the cache folder {target.parent} ({e.strerror or cause(e)}); free some space, fix its "
            "permissions, or pass cache_dir= / set ROBUSTZOO_CACHE to a writable folder") from None
    return target


def _download(url: str, label: str, part: Path, validator: Path, progress: bool) -> None:
    import requests

    last: BaseException | None = None
    with requests.Session() as session:
        for attempt in range(RETRIES + 1):
            if attempt:
                time.sleep(BACKOFF * 2 ** (attempt - 1))
            try:
                return _attempt(session, url, label, part, validator, progress)
            except _Retry as e:
                last = e
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as e:
                last = e  # includes read timeouts and connections cut mid-body (urllib3 IncompleteRead)
            except requests.TooManyRedirects:
                raise DownloadError(f"{label} redirects in a loop (more than 30 redirects); check the URL") from None
            except (requests.RequestException, ValueError) as e:  # a redirect to file://, an invalid URL...
                raise DownloadError(f"cannot download {label}: {_scrub(cause(e), url, label)}") from None
    raise DownloadError(f"downloading {label} failed after {RETRIES + 1} attempts: "
                        f"{_scrub(cause(last) if last else 'unknown error', url, label)}")


def _scrub(text: str, url: str, label: str) -> str:
    return text.replace(url, label) if url != label else text


def _attempt(session, url: str, label: str, part: Path, validator: Path, progress: bool) -> None:
    from tqdm.auto import tqdm

    have = part.stat().st_size if part.exists() else 0
    recorded = validator.read_text() if validator.exists() else None
    if have and recorded is None:  # no validator: a Range would splice two versions of the file together
        part.unlink()
        have = 0
    headers = {"Accept-Encoding": "identity"}  # a compressed body would break Range offsets and sizes
    if have:
        headers.update({"Range": f"bytes={have}-", "If-Range": recorded})
    with session.get(url, headers=headers, stream=True, timeout=timeouts()) as r:
        if r.status_code in _RETRY_STATUS:
            raise _Retry(f"HTTP {r.status_code} {r.reason}")
        if r.status_code == 416 and have:  # our partial file is not a prefix of the remote one
            part.unlink()
            raise _Retry("HTTP 416 on resume; restarting from scratch")
        if r.status_code >= 400:
            raise DownloadError(f"downloading {label} failed: HTTP {r.status_code} {r.reason}")
        if r.status_code == 206 and (not r.headers.get("Content-Range", "").startswith(f"bytes {have}-")
                                     or _validator(r.headers) != recorded):
            part.unlink()  # resumed at the wrong offset, or the file changed although the server said 206
            raise _Retry(f"server resumed at {r.headers.get('Content-Range')!r} with another validator")
        if r.status_code != 206:
            have = 0  # the server ignored Range (or the file changed): start over
        length = r.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else None
        cap = max_download_bytes()
        if total is not None and total > cap:
            part.unlink(missing_ok=True)
            raise DownloadError(f"{label} is {total} bytes, above the {cap}-byte limit; nothing was downloaded "
                                "(raise ROBUSTZOO_MAX_DOWNLOAD_BYTES if this file is really expected)")
        now = _validator(r.headers)
        if now is None:
            validator.unlink(missing_ok=True)
        else:
            validator.write_text(now)
        with open(part, "ab" if have else "wb") as f, tqdm(
            total=total, initial=have, unit="B", unit_scale=True, desc=Path(urlsplit(url).path).name[:40],
            disable=not (progress and terminal())
        ) as bar:
            for chunk in r.iter_content(STREAM_CHUNK):
                f.write(chunk)
                bar.update(len(chunk))
                if f.tell() > cap:
                    f.truncate(0)
                    raise DownloadError(f"{label} sent more than {cap} bytes (ROBUSTZOO_MAX_DOWNLOAD_BYTES); "
                                        "nothing was kept")
    size = part.stat().st_size
    if total is not None and size != total:
        raise _Retry(f"received {size} of {total} bytes")


def _validator(headers) -> str | None:
    """What identifies this version of the file: a strong ETag, else Last-Modified (weak ETags cannot)."""
    etag = headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return headers.get("Last-Modified") or None
