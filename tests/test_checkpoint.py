"""Checkpoints are verified and bound to their run; one folder holds one run (fine-tuning and pretraining).

Every test here goes through the public entry points (``robustzoo.finetune``, ``training.pretrain``)
and finds the checkpoint file in the run's folder, so it also runs against older code.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import robustzoo
from robustzoo.errors import RobustZooError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FAST = dict(mode="adv-full", epochs=2, batch_size=32, eps=0.1, steps=1, eval_steps=1, lr=0.05, progress=False)
TINY = ["--width=0.0625", "--epochs=1", "--subset=48", "--batch_size=16", "--attack_steps=1",
        "--val_attack_steps=1", "--dataset=synthetic-cifar", "--progress=False"]


def make_model(seed: int = 0, width: float = 0.0625):
    torch.manual_seed(seed)
    return robustzoo.create_model("resnet18", width=width, in_chans=1, num_classes=4)


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(96) % 4
    return torch.rand(96, 1, 16, 16, generator=g), y


def _checkpoint_file(folder: Path) -> Path:
    found = [p for p in folder.iterdir() if p.is_file() and p.suffix in (".pt", ".safetensors")]
    assert len(found) == 1, found
    return found[0]


def _flip_a_tensor_byte(path: Path, key_part: str) -> None:
    """Flip one byte inside the data of the first tensor whose name contains ``key_part``."""
    raw = bytearray(path.read_bytes())
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    name = next(k for k in header if key_part in k and k != "__metadata__")
    start = 8 + n + header[name]["data_offsets"][0]
    raw[start + 3] ^= 0x10
    path.write_bytes(bytes(raw))


def _edit_state(path: Path, edit) -> None:
    """Rewrite the checkpoint with its JSON state changed by ``edit`` (tensors and recorded hash kept)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    state = json.loads(meta["state"])
    edit(state)
    meta["state"] = json.dumps(state)
    save_file(tensors, str(path), metadata=meta)


# ------------------------------------------------------------------------------------ fine-tuning


def _interrupted(data, folder: Path, model=None, **kw) -> None:
    robustzoo.finetune(make_model() if model is None else model, data, checkpoint_dir=folder, **(FAST | kw))


def test_flipped_byte_in_a_tensor_is_refused(data, tmp_path):
    _interrupted(data, tmp_path)
    _flip_a_tensor_byte(_checkpoint_file(tmp_path), "model/layer1")
    with pytest.raises(RobustZooError, match="corrupted or was edited"):
        robustzoo.finetune(make_model(), data, checkpoint_dir=tmp_path, resume=True, **FAST)


def test_edited_epoch_counter_is_refused(data, tmp_path):
    _interrupted(data, tmp_path, epochs=3)
    _edit_state(_checkpoint_file(tmp_path), lambda s: s.update(epoch=1))
    with pytest.raises(RobustZooError, match="corrupted or was edited"):
        robustzoo.finetune(make_model(), data, checkpoint_dir=tmp_path, resume=True, **(FAST | {"epochs": 3}))


def test_another_runs_folder_is_refused(data, tmp_path):
    """Same data and settings, other starting weights: today this silently returned the other run's model."""
    _interrupted(data, tmp_path)
    with pytest.raises(RobustZooError, match=r"different run: weights: '[0-9a-f]{64}' in the checkpoint"):
        robustzoo.finetune(make_model(seed=1), data, checkpoint_dir=tmp_path, resume=True, **FAST)


def test_resume_with_another_width_names_it(data, tmp_path):
    _interrupted(data, tmp_path)
    with pytest.raises(RobustZooError, match=r"model\.width: 0\.0625 in the checkpoint, 0\.125 now"):
        robustzoo.finetune(make_model(width=0.125), data, checkpoint_dir=tmp_path, resume=True, **FAST)


def test_resume_with_other_data_names_it(data, tmp_path):
    _interrupted(data, tmp_path)
    other = (data[0].flip(0), data[1])
    with pytest.raises(RobustZooError, match=r"settings\.data: "):
        robustzoo.finetune(make_model(), other, checkpoint_dir=tmp_path, resume=True, **FAST)


def test_a_held_folder_is_refused_naming_folder_and_holder(data, tmp_path):
    from robustzoo.checkpoint import RunLock

    with RunLock(tmp_path):
        with pytest.raises(RobustZooError, match=rf"{tmp_path} is in use by another run \(holder: pid \d+"):
            robustzoo.finetune(make_model(), data, checkpoint_dir=tmp_path, **FAST)
    robustzoo.finetune(make_model(), data, checkpoint_dir=tmp_path, **FAST)  # released: usable again


RACER = textwrap.dedent('''
    import os, pathlib, sys, time, torch
    import robustzoo
    from robustzoo.errors import RobustZooError
    torch.set_num_threads(1)
    folder, barrier = sys.argv[1], pathlib.Path(sys.argv[2])
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(256, 1, 16, 16, generator=g), torch.arange(256) % 4
    torch.manual_seed(0)
    model = robustzoo.create_model("resnet18", width=0.0625, in_chans=1, num_classes=4)
    (barrier / str(os.getpid())).touch()
    t0 = time.time()
    while len(list(barrier.iterdir())) < 4 and time.time() - t0 < 120:  # all four start together
        time.sleep(0.01)
    try:
        robustzoo.finetune(model, (x, y), mode="full", epochs=6, batch_size=16, eval_steps=0, progress=False,
                           checkpoint_dir=folder)
        print("FINISHED")
    except RobustZooError as e:
        print("REFUSED", e)
''')


def test_four_concurrent_finetunes_in_one_folder(tmp_path):
    script = tmp_path / "racer.py"
    script.write_text(RACER)
    folder, barrier = tmp_path / "run", tmp_path / "barrier"
    barrier.mkdir()
    procs = [subprocess.Popen([sys.executable, str(script), str(folder), str(barrier)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0 and "Traceback" not in err, err[-2000:]  # never a raw crash
    finished = [o for o, _ in outs if o.startswith("FINISHED")]
    refused = [o for o, _ in outs if o.startswith("REFUSED")]
    assert len(finished) >= 1 and len(finished) + len(refused) == 4, outs
    assert refused, "the runs did not overlap: make them longer"
    for line in refused:
        assert str(folder) in line and "in use by another run (holder: pid" in line, line


# ------------------------------------------------------------------------------------ pretraining


def _pretrained(tmp_path: Path, *extra: str):
    from training.pretrain import pretrain
    from training.recipes import resolve

    recipe = resolve("rot-adv-r18", [*TINY, *extra, f"--out_dir={tmp_path}"])
    pretrain(recipe)
    return recipe


def test_pretrain_resume_with_another_width_names_it(tmp_path):
    from training.pretrain import pretrain

    recipe = _pretrained(tmp_path)
    with pytest.raises(RobustZooError, match=r"recipe\.width: 0\.0625 in the checkpoint, 0\.125 now"):
        pretrain(replace(recipe, width=0.125, epochs=2), resume=True)


def test_pretrain_flipped_byte_is_refused(tmp_path):
    from training.pretrain import pretrain

    recipe = _pretrained(tmp_path)
    _flip_a_tensor_byte(_checkpoint_file_named(tmp_path), "model/")
    with pytest.raises(RobustZooError, match="corrupted or was edited"):
        pretrain(replace(recipe, epochs=2), resume=True)


def test_pretrain_edited_epoch_is_refused(tmp_path):
    from training.pretrain import pretrain

    recipe = _pretrained(tmp_path)
    _edit_state(_checkpoint_file_named(tmp_path), lambda s: s.update(epoch=0))
    with pytest.raises(RobustZooError, match="corrupted or was edited"):
        pretrain(replace(recipe, epochs=2), resume=True)


def test_pretrain_held_folder_is_refused(tmp_path):
    from robustzoo.checkpoint import RunLock
    from training.pretrain import pretrain
    from training.recipes import resolve

    with RunLock(tmp_path):
        with pytest.raises(RobustZooError, match=rf"{tmp_path} is in use by another run \(holder: pid \d+"):
            pretrain(resolve("rot-adv-r18", [*TINY, f"--out_dir={tmp_path}"]))


def test_pretrain_cli_reports_a_foreign_checkpoint_in_one_line(tmp_path):
    _pretrained(tmp_path)
    cmd = [sys.executable, str(ROOT / "training" / "pretrain.py"), "rot-adv-r18", *TINY, "--width=0.125",
           f"--out_dir={tmp_path}", "--resume"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "recipe.width: 0.0625 in the checkpoint, 0.125 now" in r.stderr


def _checkpoint_file_named(folder: Path) -> Path:
    return next(p for p in folder.iterdir() if p.name.startswith("ckpt") and p.is_file())


def test_an_old_pickled_checkpoint_is_not_silently_ignored(data, tmp_path):
    (tmp_path / "last.pt").write_bytes(b"PK\x03\x04 an old torch.save file")
    with pytest.raises(RobustZooError, match="older robustzoo"):
        robustzoo.finetune(make_model(), data, checkpoint_dir=tmp_path, resume=True, **FAST)
