"""Recipes, the pretraining entry point and reproduce.py on tiny widths (CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import training.pretrain as pretrain_mod  # noqa: E402
from robustzoo.checkpoint import CheckpointError  # noqa: E402
from robustzoo.registry import REGISTRY  # noqa: E402
from robustzoo.schedules import augment  # noqa: E402
from robustzoo.weights import load_file  # noqa: E402
from training.data import train_val_split  # noqa: E402
from training.pretrain import lr_at, pretrain  # noqa: E402
from training.recipes import RECIPES, RecipeError, parse_overrides, resolve  # noqa: E402
from training.reproduce import reproduce  # noqa: E402

# the smallest settings that still run every code path (attack, validation attack, selection, export)
TINY = ["--width=0.0625", "--epochs=1", "--ft_epochs=1", "--subset=48", "--batch_size=16", "--ft_batch_size=16",
        "--attack_steps=1", "--val_attack_steps=1", "--selfie_layers=1", "--selfie_heads=2",
        "--dataset=synthetic-cifar", "--progress=False", "--eval_attacks=('clean','pgd2')"]


def _tensors(path: Path) -> dict:
    from safetensors.torch import load_file as st_load

    return st_load(str(path))


# ------------------------------------------------------------------------------------- recipes


def test_every_registry_name_has_a_recipe():
    cifar = [n for n, s in REGISTRY.items() if not s.embedded]
    assert cifar and set(cifar) <= set(RECIPES)
    for name in cifar:
        spec, rec = REGISTRY[name], RECIPES[name]
        assert rec.arch == spec.arch or spec.arch == "ensemble"
        assert rec.kind == spec.kind
        assert rec.adversarial == (spec.pretrain_attack is not None) or spec.kind != "backbone"
        assert tuple(rec.parents) == tuple(spec.parents) or not spec.parents


def test_paper_settings():
    assert RECIPES["rot-std-r50"].epochs == 200 and RECIPES["rot-adv-r50"].epochs == 100
    assert RECIPES["jig-std-r50"].weight_decay == 5e-4 and RECIPES["jig-adv-r50"].weight_decay == 3e-4
    s = RECIPES["selfie-adv-r50"]
    assert s.nesterov and s.weight_decay == 1e-4 and s.warmup_iters == 0 and s.final_lr == 1e-7
    e = RECIPES["ens-adv-r50"]
    assert (e.epochs, e.batch_size, e.lr, e.ensemble_lambda) == (150, 32, 1e-3, 0.1) and e.nesterov
    a = RECIPES["rot-adv-r50"]
    assert (a.eps, a.alpha, a.attack_steps, a.attack_mode) == (8 / 255, 2 / 255, 10, "train")
    f = RECIPES["rot-adv-r18-w16-fmnist"]
    assert (f.width, f.in_chans, f.dataset, f.eps, f.alpha) == (0.25, 1, "fashion-mnist", 0.1, 0.025)


def test_overrides_parse_and_fail_loudly():
    r = resolve("rot-adv-r18", ["--epochs=3", "--lr=1", "--dataset=fashion-mnist", "--flip=False",
                                "--eval_attacks=['clean']"])
    assert (r.epochs, r.lr, r.dataset, r.flip, r.eval_attacks) == (3, 1.0, "fashion-mnist", False, ("clean",))
    assert isinstance(r.lr, float)
    with pytest.raises(RecipeError, match="did you mean --epochs"):
        parse_overrides(["--epoch=3"])
    with pytest.raises(RecipeError, match="expected int"):
        parse_overrides(["--epochs=3.5"])
    with pytest.raises(RecipeError, match="expected bool"):
        parse_overrides(["--flip=1"])
    with pytest.raises(RecipeError, match="expected float"):
        parse_overrides(["--lr=fast"])
    with pytest.raises(RecipeError, match="--key=value"):
        parse_overrides(["epochs=3"])
    with pytest.raises(RecipeError, match="unknown recipe"):
        resolve("rot-adv-r19")
    with pytest.raises(RecipeError, match="bn must be"):
        resolve("rot-adv-r18", ["--bn=ghost"])


def test_lr_schedule_matches_the_paper():
    r = RECIPES["rot-adv-r50"]  # 45k / 128 = 351 iterations per epoch
    assert lr_at(r, 0, 0, 351) == pytest.approx(0.01)
    assert lr_at(r, 0, 100, 351) == pytest.approx(0.055)
    assert lr_at(r, 0, 300, 351) == pytest.approx(0.1)  # warm-up is capped at 0.1 for the rest of epoch 0
    assert lr_at(r, 1, 0, 351) == pytest.approx(0.1 * (1e-5 + (1 - 1e-5) * 0.5 * (1 + torch.cos(
        torch.tensor(torch.pi * 351 / (100 * 351))).item())))
    assert lr_at(r, 99, 351, 351) == pytest.approx(1e-6)
    s = RECIPES["selfie-adv-r50"]
    assert lr_at(s, 0, 0, 351) == pytest.approx(0.1) and lr_at(s, 199, 351, 351) == pytest.approx(1e-7)


def test_split_is_held_out_and_seeded():
    r = RECIPES["rot-adv-r50"]
    tr, va = train_val_split(r, 50000)
    assert len(va) == 5000 and len(tr) == 45000 and not set(va.tolist()) & set(tr.tolist())
    assert torch.equal(train_val_split(r, 50000)[1], va)


def test_augment_crops_and_flips_on_device():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    assert torch.equal(augment(x, g, padding=0, flip=False), x.float() / 255)
    y = augment(x, g, padding=4, flip=True)
    assert y.shape == (64, 3, 32, 32) and 0 <= y.min() and y.max() <= 1
    # every output is a shifted (maybe flipped) copy: its interior appears in the padded original
    xf = torch.nn.functional.pad(x.float() / 255, (4, 4, 4, 4))
    i = 7
    found = any(torch.equal(cand[:, dy:dy + 32, dx:dx + 32], y[i]) for cand in (xf[i], xf[i].flip(2))
                for dy in range(9) for dx in range(9))
    assert found
    assert (y.view(64, -1) == 0).any()  # zero padding shows up somewhere


# --------------------------------------------------------------------------------- pretraining


def test_pretrain_writes_everything_and_resumes_to_the_same_result(tmp_path, monkeypatch):
    recipe = resolve("jig-adv-r18", [*TINY, "--epochs=2", f"--out_dir={tmp_path / 'a'}"])
    report = pretrain(recipe)
    out = tmp_path / "a"
    for f in ("recipe.json", "metrics.jsonl", "report.json", "ckpt.safetensors", "model.safetensors",
              "config.json", "pretext.safetensors"):
        assert (out / f).is_file(), f
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert report["best_epoch"] in (0, 1) and "test_clean_jigsaw" in report["test"]
    model = load_file(out)
    assert model.num_classes == 0
    perms = json.loads(model.pretrained_meta["jigsaw_permutations"])
    assert len(perms) == 31 and perms[0] == list(range(16))
    assert model.pretrained_meta["recipe"] == "jig-adv-r18"
    published = json.loads(model.pretrained_meta["recipe_json"])
    assert published["out_dir"] == "" and published["epochs"] == 2 and str(tmp_path) not in json.dumps(published)

    # stop after epoch 1 (as if killed), resume: identical weights and metrics
    b = replace(recipe, out_dir=str(tmp_path / "b"))
    original = pretrain_mod._save

    def killed_after_epoch_1(path, model, best, opt, state, fingerprint, extra=None):
        original(path, model, best, opt, state, fingerprint, extra)
        raise KeyboardInterrupt

    monkeypatch.setattr(pretrain_mod, "_save", killed_after_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        pretrain(b)
    monkeypatch.setattr(pretrain_mod, "_save", original)
    pretrain(b, resume=True)
    ta, tb = _tensors(out / "pretext.safetensors"), _tensors(tmp_path / "b" / "pretext.safetensors")
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in rows]  # noqa
    read = lambda p: [json.loads(line) for line in (p / "metrics.jsonl").read_text().splitlines()]  # noqa
    assert strip(read(out)) == strip(read(tmp_path / "b"))

    with pytest.raises(CheckpointError, match=r"different run: recipe\.lr: 0\.1 in the checkpoint, 0\.05 now"):
        pretrain(replace(b, lr=0.05), resume=True)


@pytest.mark.parametrize("name", ["ens-adv-r18", "selfie-adv-r18"])  # every pretext generator; dropout
def test_pretrain_killed_mid_epoch_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch, name):
    recipe = resolve(name, [*TINY, "--epochs=2", "--subset=80", f"--out_dir={tmp_path / 'a'}"])
    pretrain(recipe, save_every_s=0)  # the reference: epoch checkpoints only
    b = replace(recipe, out_dir=str(tmp_path / "b"))
    original, saved = pretrain_mod._save, []

    def killed_inside_epoch_1(path, model, best, opt, state, fingerprint, extra=None):
        original(path, model, best, opt, state, fingerprint, extra)
        saved.append((state["epoch"], state.get("it")))
        if state.get("it") == 2 and state["epoch"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(pretrain_mod, "_save", killed_inside_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        pretrain(b, save_every_s=1e-9)  # a checkpoint after every iteration
    assert (0, 1) in saved and saved[-1] == (1, 2)  # mid-epoch checkpoints of both epochs, killed in the second
    monkeypatch.setattr(pretrain_mod, "_save", original)
    pretrain(b, resume=True)
    ta, tb = _tensors(tmp_path / "a" / "pretext.safetensors"), _tensors(tmp_path / "b" / "pretext.safetensors")
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    keep = lambda r: {k: v for k, v in r.items() if k not in ("seconds", "images_per_s")}  # noqa: E731
    rows = [[keep(json.loads(x)) for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()] for d in "ab"]
    assert rows[0] == rows[1] and len(rows[0]) == 2  # the resumed epoch's sums continued too


def test_pretrain_rejects_classifier_recipes():
    with pytest.raises(RecipeError, match="not a pretext recipe"):
        pretrain(resolve("at-baseline-r18"))


def test_reproduce_classifier_chain(tmp_path):
    report = reproduce("rot-adv-aft-r18", TINY, root=tmp_path)
    assert (tmp_path / "rot-adv-r18" / "model.safetensors").is_file()  # the parent was pretrained first
    model = load_file(tmp_path / "rot-adv-aft-r18")
    assert model.num_classes == 10 and model.pretrained_meta["parents"] == '["rot-adv-r18"]'
    assert str(tmp_path) not in model.pretrained_meta["recipe_json"]
    assert set(report["test"]["accuracy"]) == {"clean", "pgd2"}
    assert report["finetune"]["best_epoch"] is not None


def test_reproduce_cli(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(ROOT / "training" / "reproduce.py"), "rot-std-r18", *TINY, f"--root={tmp_path}"]
    subprocess.run(cmd, check=True, env=env, cwd=tmp_path, timeout=300, capture_output=True)
    assert load_file(tmp_path / "rot-std-r18").pretrained_meta["task"] == "rotation"
    bad = subprocess.run([*cmd[:3], "--epoch=1"], env=env, cwd=tmp_path, timeout=120, capture_output=True,
                         text=True)
    assert bad.returncode != 0 and "did you mean --epochs" in bad.stderr


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*exists and resume=False")  # an ensemble reproduced its members already
@pytest.mark.parametrize("name", sorted(n for n, s in REGISTRY.items() if not s.embedded))
def test_reproduce_every_registry_name(name, tmp_path_factory):
    root = tmp_path_factory.getbasetemp() / "zoo"  # shared: parents are reused across names
    reproduce(name, TINY, root=root)
    model = load_file(root / name)
    spec = REGISTRY[name]
    assert model.config["arch"] == spec.arch
    assert getattr(model, "num_classes", 0) == spec.num_classes


def test_training_readme_table_is_current_and_complete():
    from training.make_readme_table import BEGIN, END, table

    doc = (ROOT / "training" / "README.md").read_text()
    assert doc.split(BEGIN, 1)[1].split(END, 1)[0].strip() == table(), "run training/make_readme_table.py --write"
    for name, spec in REGISTRY.items():
        assert f"| `{name}` |" in doc
        if not spec.embedded:
            assert f"| `{name}` | `python training/reproduce.py {name}`" in doc
