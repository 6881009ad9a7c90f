"""A file queue of resumable cells, shared by workers on one machine (used by ``mini_repro.py``).

A cell is anything with a ``key`` (its file stem), a ``kind`` and ``deps`` (keys that must be done
first). Its result is ``<out>/cells/<key>.json``, written atomically, so a killed worker leaves no
partial cell; ``<out>/locks/<key>.lock`` (a ``filelock``) keeps two workers off the same cell; a
cell that raises is recorded in ``<out>/errors/<key>.txt`` and skipped until that file is deleted.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from filelock import FileLock, Timeout
from mini_lib import cpu_name

Runner = Callable[[object], dict]  # cell -> its record


def write_json(path: Path, obj: dict) -> None:
    from robustzoo.weights import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=1) + "\n"))


def _done(out: Path, key: str) -> bool:
    return (out / "cells" / f"{key}.json").exists()


def _failed(out: Path, key: str) -> bool:
    return (out / "errors" / f"{key}.txt").exists()


def execute(cell, run: Runner, out: Path, worker: int) -> bool:
    """Run one cell and write its file atomically; a cell that raises goes to ``errors/<key>.txt``."""
    print(f"[worker {worker}] {time.strftime('%H:%M:%S')} start {cell.key}", flush=True)
    t0, c0 = time.time(), time.process_time()
    try:
        rec = run(cell)
    except Exception as e:  # one broken cell must not stop the queue: record it, go on
        (out / "errors").mkdir(exist_ok=True)
        (out / "errors" / f"{cell.key}.txt").write_text(f"{type(e).__name__}: {e}\n")
        print(f"[worker {worker}] FAILED {cell.key}: {type(e).__name__}: {e}", flush=True)
        return False
    rec.update(key=cell.key, worker=worker, cpu=cpu_name(), wall_seconds=round(time.time() - t0, 1),
               cpu_seconds=round(time.process_time() - c0, 1), threads=torch.get_num_threads())
    write_json(out / "cells" / f"{cell.key}.json", rec)
    print(f"[worker {worker}] {time.strftime('%H:%M:%S')} done {cell.key} ({time.time() - t0:.0f}s)", flush=True)
    return True


def _try_cell(cell, run: Runner, out: Path, worker: int) -> bool:
    """Take ``cell`` if its lock is free and it is still not done; True when it ran to a file."""
    lock = FileLock(str(out / "locks" / f"{cell.key}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return False  # another worker runs it
    try:
        return not _done(out, cell.key) and execute(cell, run, out, worker)
    finally:
        lock.release()


def work(cells: Sequence, run: Runner, out: Path, worker: int, *, max_cells: int | None = None,
         kinds: tuple = (), wait: float = 0) -> int:
    """Run cells, in order, until none is left that this worker can take; returns the number run.

    A cell is taken when its file does not exist, its dependencies' files do, and its lock is free.
    With ``wait`` (seconds) a worker with nothing ready polls until every cell it may take is done."""
    done = 0
    for sub in ("cells", "locks"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    mine = [c for c in cells if not kinds or c.kind in kinds]
    while max_cells is None or done < max_cells:
        ready = (c for c in mine if not _done(out, c.key) and not _failed(out, c.key)
                 and all(_done(out, d) for d in c.deps))
        if any(_try_cell(c, run, out, worker) for c in ready):  # any() stops at the first cell that ran
            done += 1
            continue
        left = [c for c in mine if not _done(out, c.key) and not any(_failed(out, k) for k in (c.key, *c.deps))]
        if not wait or not left:
            return done
        time.sleep(wait)  # the other worker holds, or is producing the dependencies of, what is left
    return done


def run_one(cells: Sequence, run: Runner, out: Path, key: str) -> None:
    """Run cell ``key``, first running whatever cells it depends on that ``out`` lacks."""
    import difflib

    by_key = {c.key: c for c in cells}
    if key not in by_key:
        close = difflib.get_close_matches(key, list(by_key), n=3)
        raise SystemExit(f"error: no cell {key!r} in the plan{'; did you mean ' + ', '.join(close) if close else ''}"
                         " (`python benchmarks/mini_repro.py status` lists them)")
    for dep in by_key[key].deps:
        run_one(cells, run, out, dep)
    if _done(out, key):
        return
    for sub in ("cells", "locks"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(str(out / "locks" / f"{key}.lock"), timeout=0):
            ok = _done(out, key) or execute(by_key[key], run, out, 0)
    except Timeout:
        raise SystemExit(f"error: a worker is running cell {key} in {out}; wait for it") from None
    if not ok:
        raise SystemExit(f"error: cell {key} failed: {(out / 'errors' / f'{key}.txt').read_text().strip()}")


def _held(out: Path, key: str) -> bool:
    if not (out / "locks" / f"{key}.lock").exists():
        return False
    lock = FileLock(str(out / "locks" / f"{key}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    lock.release()
    return False


def status(cells: Sequence, out: Path, note: Callable[[object], str] = lambda cell: "") -> list[str]:
    """One line per cell: done, FAILED, running, ready or waiting (on its dependencies), plus ``note``."""
    rows = []
    for cell in cells:
        state = ("done" if _done(out, cell.key) else "FAILED (errors/)" if _failed(out, cell.key)
                 else "running" if _held(out, cell.key)
                 else "ready" if all(_done(out, d) for d in cell.deps) else "waiting")
        extra = note(cell) if state != "done" else ""
        rows.append(f"{cell.key:40s} {state}{' ' + extra if extra else ''}")
    return rows
