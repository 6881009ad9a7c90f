"""SIGKILL a fine-tuning run at random moments (also mid-checkpoint-write), resume, compare with a clean run."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from robustzoo.checkpoint import CHECKPOINT_NAME, tensor_digest

SCRIPT = r'''
import sys, time, torch
from safetensors.torch import save_file
import robustzoo
import robustzoo.checkpoint as checkpoint
torch.set_num_threads(1)
ckpt, out, resume, sleep = sys.argv[1], sys.argv[2], sys.argv[3] == "1", float(sys.argv[4])
write = checkpoint._write
def slow_write(*args):  # widen the window between writing the temp file and the rename
    write(*args)
    time.sleep(sleep)
checkpoint._write = slow_write
g = torch.Generator().manual_seed(0)
y = torch.arange(192) % 4
x = (torch.rand(192, 1, 16, 16, generator=g) * 0.5 + 0.25 * (y.view(-1, 1, 1, 1) % 2)).clamp(0, 1)
torch.manual_seed(0)
model = robustzoo.create_model("resnet18", width=0.0625, in_chans=1, num_classes=4)
res = robustzoo.finetune(model, (x, y), mode="adv-full", epochs=6, batch_size=32, eps=0.1, steps=1,
                         eval_steps=1, lr=0.05, progress=False, checkpoint_dir=ckpt, resume=resume)
save_file({k: v.contiguous() for k, v in res.model.state_dict().items()}, out)
print("DONE", res.best_epoch, [h["loss"] for h in res.history])
'''


def _start(script: Path, ckpt: Path, out: Path, resume: bool, sleep: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(script), str(ckpt), str(out), "1" if resume else "0", str(sleep)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_temp(folder: Path, proc: subprocess.Popen, timeout: float = 120) -> bool:
    t0 = time.time()
    while time.time() - t0 < timeout and proc.poll() is None:
        if list(folder.glob(f".{CHECKPOINT_NAME}.*.tmp")):
            return True
        time.sleep(0.01)
    return False


def _intact(path: Path) -> bool:
    """The checkpoint's tensors and state still match the sha256 recorded when it was written."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    return tensor_digest(tensors, meta["state"], meta["fingerprint"]) == meta["sha256"]


@pytest.mark.slow
def test_sigkill_and_resume_matches_uninterrupted(tmp_path):
    from safetensors.torch import load_file

    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    ref = _start(script, tmp_path / "ref", tmp_path / "ref.safetensors", False, 0)
    ref_out, ref_err = ref.communicate(timeout=300)
    assert ref.returncode == 0, ref_err
    ckpt, out = tmp_path / "killed", tmp_path / "killed.safetensors"
    rng = random.Random(0)
    kills = 0
    # kill 1 and 3: while a checkpoint is being written (the hook sleeps between write and rename);
    # kill 2 and 4: at a random moment.
    for plan in ("write", "random", "write", "random"):
        proc = _start(script, ckpt, out, True, 0.6)
        if plan == "write":
            hit = _wait_for_temp(ckpt, proc)
            time.sleep(0.1)
        else:
            time.sleep(rng.uniform(1.0, 4.0))
            hit = proc.poll() is None
        if hit and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.communicate(timeout=300)
        if plan == "write" and (ckpt / CHECKPOINT_NAME).exists():
            assert _intact(ckpt / CHECKPOINT_NAME)  # the previous checkpoint stayed intact
    assert kills >= 2
    final = _start(script, ckpt, out, True, 0)
    stdout, stderr = final.communicate(timeout=300)
    assert final.returncode == 0, stderr
    a, b = load_file(tmp_path / "ref.safetensors"), load_file(out)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    assert stdout.split("DONE")[1] == ref_out.split("DONE")[1]  # same best epoch, same per-epoch losses
