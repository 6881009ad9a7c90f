"""SIGKILL a pretraining process at random moments (also mid-checkpoint-write), resume, same result.

The checkpoint write is slowed by monkeypatching (a sleep after ``robustzoo.checkpoint._write`` has
written the temp file, before the atomic rename), so a good share of the kills land inside a write.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["rot-adv-r18", "--width=0.0625", "--epochs=4", "--subset=48", "--batch_size=16", "--attack_steps=1",
        "--val_attack_steps=1", "--dataset=synthetic-cifar", "--progress=False"]


# runs training/pretrain.py as a script, with the checkpoint write slowed by SLEEP seconds
WRAPPER = """
import runpy, sys, time
import robustzoo.checkpoint as checkpoint
sleep, sys.argv = float(sys.argv[1]), sys.argv[2:]
write = checkpoint._write
def slow_write(*args):
    write(*args)
    time.sleep(sleep)
checkpoint._write = slow_write
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _cmd(out: Path, resume: bool, sleep: float = 0.0) -> list[str]:
    return [sys.executable, "-c", WRAPPER, str(sleep), str(ROOT / "training" / "pretrain.py"), *ARGS,
            f"--out_dir={out}", *(["--resume"] if resume else [])]


def _strip(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in rows]


@pytest.mark.slow
def test_killed_and_resumed_run_equals_uninterrupted(tmp_path):
    from safetensors.torch import load_file

    env = dict(os.environ, OMP_NUM_THREADS="1")
    ref = tmp_path / "ref"
    t0 = time.time()
    subprocess.run(_cmd(ref, False), env=env, check=True, timeout=600, capture_output=True)
    total = time.time() - t0 + 4 * 0.4  # the kill windows scale with the machine's speed

    out = tmp_path / "killed"
    rng = random.Random(0)
    # kill 1: inside a checkpoint write (the temp file exists, the rename has not happened);
    # kills 2-3: at random moments; then let the resumed run finish
    for attempt in range(4):
        proc = subprocess.Popen(_cmd(out, True, 0.5), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if attempt == 0:
            deadline = time.time() + 300
            while not list(out.glob(".ckpt.safetensors.*.tmp")) and time.time() < deadline and proc.poll() is None:
                time.sleep(0.01)
            assert proc.poll() is None, "the run ended before its first checkpoint write"
        elif attempt < 3:
            try:
                proc.wait(timeout=rng.uniform(0.2 * total, 0.7 * total))
            except subprocess.TimeoutExpired:
                pass
        else:
            assert proc.wait(timeout=600) == 0, proc.stderr.read().decode()[-3000:]
            break
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        if attempt == 0:
            assert list(out.glob(".ckpt.safetensors.*.tmp")), "the first kill must land inside a checkpoint write"
    a, b = load_file(str(ref / "pretext.safetensors")), load_file(str(out / "pretext.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] == b[k]).all(), k
    assert _strip(ref / "metrics.jsonl") == _strip(out / "metrics.jsonl")
