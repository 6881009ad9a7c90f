"""Low-level file helpers shared by the loaders, the downloader and the checkpoint code.

No torch, no huggingface_hub: ``import robustzoo`` stays light. Four things live here because
several modules need exactly the same behaviour: atomic replacement of a file, hashing that refuses
anything but a regular file (a FIFO or ``/dev/zero`` would block or never end), a one-line
description of an exception chain for error messages, and whether a progress bar may draw (a terminal).
"""

from __future__ import annotations

import hashlib
import os
import stat
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import WeightFormatError

__all__ = ["atomic_write", "file_sha256", "open_regular", "cause", "inside", "CHUNK"]

CHUNK = 1 << 20


def atomic_write(path: Path, write: Callable[[str], object]) -> None:
    """Call ``write(tmp)`` on a temp file in the same folder, then ``os.replace`` it onto ``path``:
    readers never see a partial file, and a crash leaves the old file (or none) in place."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; a weight file is as readable as any other file
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str | os.PathLike):
    """Open ``path`` for binary reading only if it is a regular file (following links).

    The open is non-blocking, so a FIFO without a writer cannot hang it; the type is then checked on
    the open descriptor (no race between the check and the read). Raises :class:`WeightFormatError`.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except IsADirectoryError:
        raise WeightFormatError(f"{path} is a folder, not a weight file") from None
    except OSError as e:
        raise WeightFormatError(f"cannot read {path}: {e.strerror or e}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise WeightFormatError(f"{path} is {_kind(mode)}, not a weight file; pass the path of a .safetensors file")
    if hasattr(os, "set_blocking"):
        os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def file_sha256(path: str | os.PathLike, chunk: int = CHUNK) -> str:
    """Hex sha256 of a regular file, read in 1 MiB chunks (FIFOs, devices and folders are refused)."""
    h = hashlib.sha256()
    with open_regular(path) as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def inside(path: str | os.PathLike, root: str | os.PathLike) -> bool:
    """Whether ``path`` (links in its folders resolved, the last component itself not followed) is in ``root``."""
    parent = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    full = os.path.join(parent, os.path.basename(os.path.abspath(path)))
    base = os.path.realpath(root)
    return os.path.commonpath([full, base]) == base and full != base


def cause(e: BaseException) -> str:
    """The innermost message of an exception chain (what actually went wrong), one line."""
    while e.__cause__ is not None:
        e = e.__cause__
    return f"{type(e).__name__}: {e}".splitlines()[0][:300]


def terminal() -> bool:
    """Whether stderr (where tqdm draws) is a terminal: progress bars only there, never ``\\r`` spam in logs."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False
