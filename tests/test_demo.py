"""`robustzoo demo --quick` runs end to end (offline, seconds) and writes its table, JSON and plot."""

from __future__ import annotations

import json

import pytest

from robustzoo.demo import BACKBONE
from robustzoo.registry import REGISTRY

pytestmark = pytest.mark.skipif(BACKBONE not in REGISTRY, reason="the demo's embedded backbone is not released")


def test_demo_quick_via_cli(tmp_path, monkeypatch, capsys):
    from robustzoo.cli import main

    monkeypatch.setenv("ROBUSTZOO_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    table = (tmp_path / "demo_results.md").read_text()
    assert f"{BACKBONE} (adv. pretrained)" in table and "from scratch" in table
    assert "That is one run (one seed)" in table
    assert "| start from | clean acc. (%) | PGD-20 acc. (%)" in table
    assert (tmp_path / "demo_robust_acc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = json.loads((tmp_path / "demo_results.json").read_text())
    assert res["settings"]["quick"] is True and len(res["arms"]) == 2
    for arm in res["arms"]:
        assert 0 <= arm["pgd20"] <= arm["clean"] <= 100
        assert [h["epoch"] for h in arm["history"]] == [1, 2]
        assert 1 <= arm["best_epoch"] <= 2
    assert "adversarial pretraining minus scratch" in capsys.readouterr().out


def test_demo_bad_backbone(tmp_path):
    from robustzoo.demo import run_demo
    from robustzoo.errors import RobustZooError

    with pytest.raises(RobustZooError):
        run_demo(quick=True, out_dir=tmp_path, progress=False, backbone="at-baseline-r18-w16-fmnist")


def test_the_single_run_is_shown_beside_the_reproductions_interval(monkeypatch):
    """The demo's difference is one seed: it quotes the paired-seed interval the release step recorded."""
    import dataclasses

    from robustzoo import demo, registry

    spec = registry.REGISTRY[BACKBONE]
    rep = {"comparison": "rot-adv - scratch", "n_pairs": 8, "diff_mean": 1.234, "ci_low": -0.5, "ci_high": 2.9,
           "verdict": "inconclusive", "partial": False, "setting": "2,000 labels, 15 epochs, 10,000 test images"}
    with_rep = dataclasses.replace(spec, metrics={**spec.metrics, "repro_vs_scratch": rep})
    table = {**registry.REGISTRY, BACKBONE: with_rep}
    monkeypatch.setattr(registry, "REGISTRY", table)
    line = demo.evidence_line(BACKBONE)
    assert "Over 8 paired seeds, the difference is +1.23 [-0.50, +2.90] PGD-20 points" in line
    assert "spans 0" in line and "2,000 labels" in line
    running = {**rep, "n_pairs": 3, "partial": True}
    monkeypatch.setattr(registry, "REGISTRY", {**table, BACKBONE: dataclasses.replace(
        spec, metrics={**spec.metrics, "repro_vs_scratch": running})})
    assert "Over 3 paired seeds so far (the reproduction is still running), the difference is" in \
        demo.evidence_line(BACKBONE)
    monkeypatch.setattr(registry, "REGISTRY", {**table, BACKBONE: dataclasses.replace(spec, metrics={})})
    assert "no multi-seed interval is recorded" in demo.evidence_line(BACKBONE)


def test_the_plot_has_whole_epoch_ticks(tmp_path):
    from robustzoo.demo import _plot

    arms = [{"arm": a, "history": [{"epoch": e, "val_robust": 40.0 + e + i} for e in (1, 2, 3)]} for i, a in
            enumerate(("pretrained", "scratch"))]
    ticks = _plot(arms, tmp_path / "p.png", "t")
    assert ticks and all(t == int(t) for t in ticks)


def test_demo_is_reproducible_whatever_ran_before(tmp_path, monkeypatch):
    """Both arms are seeded, the pretrained arm's new head included (it once used the unseeded global RNG)."""
    import torch

    from robustzoo.demo import run_demo

    monkeypatch.setenv("ROBUSTZOO_OFFLINE", "1")
    runs = []
    for i, noise in enumerate((0, 1)):
        torch.manual_seed(12345 + noise)  # a different global RNG state before each run
        torch.rand(7)
        run_demo(quick=True, out_dir=tmp_path / str(i), progress=False)
        runs.append(json.loads((tmp_path / str(i) / "demo_results.json").read_text())["arms"])
    for a, b in zip(*runs):
        assert (a["clean"], a["pgd20"], a["history"][-1]["loss"]) == (b["clean"], b["pgd20"], b["history"][-1]["loss"])


def test_demo_without_matplotlib_keeps_its_results_and_says_how_to_get_the_plot(tmp_path, monkeypatch, capsys):
    """The installed package has no matplotlib (an extra): markdown and JSON first, then one line, no crash."""
    import importlib.util

    from robustzoo.demo import run_demo

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)  # an import would raise ImportError
    monkeypatch.setenv("ROBUSTZOO_OFFLINE", "1")
    result = run_demo(quick=True, out_dir=tmp_path, progress=False)
    assert (tmp_path / "demo_results.md").exists() and not (tmp_path / "demo_robust_acc.png").exists()
    assert json.loads((tmp_path / "demo_results.json").read_text())["arms"] == result["arms"]
    assert "pip install 'robustzoo[plot]'" in capsys.readouterr().out


def test_demo_out_that_is_a_file_fails_before_training(tmp_path):
    from robustzoo.demo import run_demo
    from robustzoo.errors import DataError

    (tmp_path / "f").write_text("")
    with pytest.raises(DataError, match="--out"):
        run_demo(quick=True, out_dir=tmp_path / "f", progress=False)


@pytest.mark.slow
def test_tiny_network_full_finetune_accuracy_does_not_swing_with_the_seed():
    """Issue 12, point 15: the demo's network trained with mode="full" on the demo's data, three seeds.

    With horizontal flips (finetune's CIFAR default) seed 1 reached 43.5 % and seed 2 69.5 % test
    accuracy; a plain PyTorch loop gave 66-76 %. Fashion-MNIST shoes all face one way, so the demo
    trains without flips; then the seeds agree within a few points.
    """
    import torch

    from robustzoo.demo import DEFAULTS, _subset
    from robustzoo.finetuning import finetune
    from robustzoo.fmnist import load_embedded
    from robustzoo.models import create_model

    train = _subset(*load_embedded("train"), DEFAULTS["n_train"])
    x_test, y_test = _subset(*load_embedded("test"), DEFAULTS["n_test"])
    accs = []
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        model = create_model("resnet18", width=0.25, in_chans=1, num_classes=10, mean=(0.286,), std=(0.353,))
        finetune(model, train, mode="full", epochs=3, padding=2, flip=False, eval_steps=0, seed=seed, progress=False)
        with torch.no_grad():
            accs.append(100 * (model(x_test).argmax(1) == y_test).float().mean().item())
    assert min(accs) > 55 and max(accs) - min(accs) < 12, accs
