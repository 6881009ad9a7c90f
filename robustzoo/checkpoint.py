"""Training checkpoints for fine-tuning and pretraining: one format, one atomic write, verified resume.

A checkpoint is one safetensors file: the tensors (model, best model, optimiser buffers, RNG
states) plus three JSON strings in its header: ``state`` (epoch, history, scores...),
``fingerprint`` (what defines the run: architecture and width, starting weights, data, settings)
and ``sha256`` (a hash of the tensors, the state and the fingerprint together). It is written to a
fresh temporary file in the same folder, fsynced and renamed over the old one, so a process killed
at any moment leaves the previous checkpoint or the new one, never a mix.

:func:`load_checkpoint` checks, before anything is put into a model: the format, the content hash
(a flipped byte in a tensor, an edited epoch counter) and the fingerprint against the run that is
resuming (another run's folder, another width, task or setting). Each failure is a
:class:`CheckpointError` naming what differs. :class:`RunLock` keeps one run per folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import CheckpointError

__all__ = ["CHECKPOINT_NAME", "Checkpoint", "CheckpointError", "RunLock", "save_checkpoint", "load_checkpoint",
           "tensor_digest", "capture_rng", "restore_rng", "pack_optimizer", "unpack_optimizer", "prefixed"]

CHECKPOINT_NAME = "ckpt.safetensors"
FORMAT = "robustzoo-checkpoint"
VERSION = 2
_LOCK_NAME = ".run.lock"


@dataclass
class Checkpoint:
    """A verified checkpoint: its tensors (on the CPU) and its JSON ``state``."""

    tensors: dict[str, Any]
    state: dict


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def tensor_digest(tensors: Mapping[str, Any], *extra: str) -> str:
    """sha256 over names, dtypes, shapes and raw bytes of ``tensors`` (sorted by name), then ``extra``."""
    import torch

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(_canonical([name, str(t.dtype), list(t.shape)]).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    for s in extra:
        h.update(s.encode())
    return h.hexdigest()


def prefixed(tensors: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The entries under ``prefix/``, with the prefix removed."""
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + "/")}


# ----------------------------------------------------------------------------------- RNG, optimiser


def capture_rng(generators: Mapping[str, Any]) -> dict[str, Any]:
    """States of the named generators, of torch's global CPU RNG and, on CUDA, of the current device's."""
    import torch

    out = {f"rng/{name}": g.get_state() for name, g in generators.items()}
    out["rng/torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["rng/cuda"] = torch.cuda.get_rng_state()
    return out


def restore_rng(generators: Mapping[str, Any], tensors: Mapping[str, Any]) -> None:
    """Put back what :func:`capture_rng` saved (every named generator must be in the checkpoint)."""
    import torch

    for name, g in generators.items():
        g.set_state(tensors[f"rng/{name}"])
    torch.set_rng_state(tensors["rng/torch"])
    if "rng/cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng/cuda"])


def pack_optimizer(optimizer) -> tuple[dict[str, Any], dict]:
    """Tensors ``optim/<param index>/<name>`` and a JSON part (param groups, non-tensor per-param state)."""
    import torch

    sd = optimizer.state_dict()
    tensors, plain = {}, {}
    for i, s in sd["state"].items():
        for k, v in s.items():
            if torch.is_tensor(v):
                tensors[f"optim/{i}/{k}"] = v
            else:
                plain.setdefault(str(i), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "plain": plain}


def unpack_optimizer(optimizer, tensors: Mapping[str, Any], packed: dict) -> None:
    state: dict[int, dict] = {int(i): dict(s) for i, s in packed["plain"].items()}
    for k, v in prefixed(tensors, "optim").items():
        i, name = k.split("/", 1)
        state.setdefault(int(i), {})[name] = v
    optimizer.load_state_dict({"state": state, "param_groups": packed["param_groups"]})


# --------------------------------------------------------------------------------------- save, load


def _write(tmp: str, tensors: dict, metadata: dict[str, str]) -> None:
    """Write the safetensors file and fsync it (the rename that follows must not outrun the data)."""
    from safetensors.torch import save_file

    save_file(tensors, tmp, metadata=metadata)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())


def save_checkpoint(path: str | os.PathLike, tensors: Mapping[str, Any], state: dict, fingerprint: dict) -> None:
    """Atomically write ``tensors`` + ``state`` bound to ``fingerprint`` (see the module docstring)."""
    from .serialization import atomic_write  # the one atomic write; not .weights, which imports the models

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    s, f = _canonical(state), _canonical(fingerprint)
    meta = {"format": FORMAT, "version": str(VERSION), "state": s, "fingerprint": f,
            "sha256": tensor_digest(t, s, f)}
    atomic_write(path, lambda tmp: _write(tmp, t, meta))
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _differences(saved: Any, now: Any, where: str = "") -> list[str]:
    if isinstance(saved, dict) and isinstance(now, dict):
        out = []
        for k in sorted(set(saved) | set(now), key=str):
            out += _differences(saved.get(k), now.get(k), f"{where}.{k}" if where else str(k))
        return out
    return [] if saved == now else [f"{where or 'fingerprint'}: {saved!r} in the checkpoint, {now!r} now"]


def load_checkpoint(path: str | os.PathLike, fingerprint: dict) -> Checkpoint:
    """Read and verify ``path`` for the run described by ``fingerprint``; nothing is put into a model.

    Raises:
        CheckpointError: unreadable or foreign file, content hash mismatch (corrupted or edited),
            or a fingerprint that differs from ``fingerprint`` (the message lists every difference).
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    fix = "delete it (or pass resume=False / drop --resume) to start over"
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            meta = fh.metadata() or {}
            if meta.get("format") != FORMAT or meta.get("version") != str(VERSION):
                raise CheckpointError(f"{path} is not a robustzoo training checkpoint (format "
                                      f"{meta.get('format')!r} version {meta.get('version')!r}); {fix}")
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        state, saved = json.loads(meta["state"]), json.loads(meta["fingerprint"])
    except CheckpointError:
        raise
    except (SafetensorError, OSError, ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"cannot read the checkpoint {path} ({type(e).__name__}: {e}); {fix}") from None
    if tensor_digest(tensors, meta["state"], meta["fingerprint"]) != meta.get("sha256"):
        raise CheckpointError(f"{path} is corrupted or was edited: its content no longer matches the sha256 "
                              f"recorded when it was written; {fix}")
    diff = _differences(saved, json.loads(_canonical(fingerprint)))
    if diff:
        raise CheckpointError(f"{path} belongs to a different run: {'; '.join(diff[:8])}"
                              f"{f' (+{len(diff) - 8} more)' if len(diff) > 8 else ''}; resume with the same "
                              f"model, data and settings, or use another folder")
    return Checkpoint(tensors=tensors, state=state)


# -------------------------------------------------------------------------------------------- lock


class RunLock:
    """One run per folder: an exclusive, non-blocking lock on ``folder/.run.lock`` (``filelock``).

    The holder writes its pid, host and start time next to the lock, so the second process can be
    told who holds the folder. The lock is released when the run ends or its process dies.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        from filelock import FileLock

        self.folder = Path(folder)
        self.path = self.folder / _LOCK_NAME
        self.owner = self.folder / (_LOCK_NAME + ".owner")
        self._lock = FileLock(str(self.path))

    def __enter__(self) -> RunLock:
        from filelock import Timeout

        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            holder = self._holder()
            raise CheckpointError(f"{self.folder} is in use by another run (holder: {holder}; lock file "
                                  f"{self.path}); wait for it to finish or use another folder") from None
        tmp = self.owner.with_name(f"{self.owner.name}.{os.getpid()}.tmp")
        tmp.write_text(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        os.replace(tmp, self.owner)  # a contender reads the whole line or the previous one
        return self

    def _holder(self) -> str:
        for _ in range(20):  # the holder writes its line just after taking the lock
            try:
                text = self.owner.read_text().strip()
                if text:
                    return text
            except OSError:
                pass
            time.sleep(0.05)
        return "unknown"

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


def describe_model(model) -> dict:
    """The fingerprint's ``model`` part: the robustzoo config (arch, width, channels...) or the class name."""
    cfg = getattr(model, "config", None)
    return dict(cfg) if isinstance(cfg, Mapping) else {"class": type(model).__name__}


def data_digest(*arrays: Iterable) -> str:
    """A cheap identity of training data: shapes, every label, a strided sample of the inputs."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(str(tuple(a.shape)).encode())
        flat = a.reshape(-1)
        sample = flat if flat.numel() <= 100_000 else flat[::997]
        h.update(sample.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
