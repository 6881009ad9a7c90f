"""robustzoo.finetune: modes train exactly their parameters, resume = uninterrupted, inputs are checked first."""

from __future__ import annotations

import math

import pytest
import torch

import robustzoo
import robustzoo.trainer as trainer
from robustzoo.checkpoint import CHECKPOINT_NAME, load_checkpoint
from robustzoo.errors import DataError, RobustZooError
from robustzoo.finetuning import MODES, finetune
from robustzoo.schedules import augment, default_milestones, lr_factor

FAST = dict(epochs=2, batch_size=32, eps=0.1, steps=1, eval_steps=1, lr=0.05, progress=False)


def make_model(**kw):
    torch.manual_seed(0)
    return robustzoo.create_model("resnet18", width=0.0625, in_chans=1, **({"num_classes": 4} | kw))


@pytest.fixture(scope="module")
def data():
    """160 structured 16x16 grey images: class = which quadrant is bright (learnable in a few steps)."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(160) % 4
    x = torch.rand(160, 1, 16, 16, generator=g) * 0.3
    for k in range(4):
        r, c = divmod(k, 2)
        x[y == k, :, r * 8:(r + 1) * 8, c * 8:(c + 1) * 8] += 0.6
    return x.clamp(0, 1), y


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("mode", list(MODES))
def test_mode_trains_exactly_its_parameters(data, mode):
    model = make_model()
    before = state(model)
    res = finetune(model, data, mode=mode, **FAST)
    after = state(model)
    trained = {"linear": ("linear.",), "adv-linear": ("linear.",), "partial": ("layer4.", "linear.")}.get(mode)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    if trained is None:  # full modes: stem weights and BN running stats move too
        assert "conv1.weight" in changed and "bn1.running_mean" in changed and "linear.weight" in changed
    else:  # frozen parts bit-identical, BN running statistics and num_batches_tracked included
        assert changed and all(k.startswith(trained) for k in changed), sorted(changed)
        assert any(k.startswith(trained[0]) and "weight" in k for k in changed)
    assert all(p.requires_grad for p in model.parameters())  # freezing is undone afterwards
    assert not model.training
    assert len(res.history) == 2 and res.best_metric == ("val_clean" if MODES[mode][1] == "clean" else "val_robust")
    row = res.history[0]
    assert set(row) == {"epoch", "loss", "train_acc", "val_clean", "val_robust", "lr", "seconds"}
    assert math.isfinite(row["loss"]) and 0 <= row["val_robust"] <= row["val_clean"] <= 100


def test_best_epoch_and_weights(data, tmp_path):
    model = make_model()
    res = finetune(model, data, mode="adv-full", **(FAST | {"epochs": 3}), checkpoint_dir=tmp_path)
    scores = [h["val_robust"] for h in res.history]
    assert res.best_epoch == 1 + scores.index(max(scores)) and res.best_value == max(scores)
    loaded = robustzoo.load_file(tmp_path / "best")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())
    ckpt = load_checkpoint(tmp_path / CHECKPOINT_NAME, _fingerprint(tmp_path))
    assert ckpt.state["epoch"] == 3 and len(ckpt.state["history"]) == 3
    assert res.settings["milestones"] == default_milestones(3) and res.settings["n_val"] == 16


def _fingerprint(folder):
    """The fingerprint a checkpoint was written with (read from its header, for tests that inspect it)."""
    import json

    from safetensors import safe_open

    with safe_open(str(folder / CHECKPOINT_NAME), framework="pt") as f:
        return json.loads(f.metadata()["fingerprint"])


def test_learns_something(data):
    # no augmentation: a 4-pixel crop shift on 16x16 images blurs the quadrant cue
    res = make_model().finetune(data, mode="full", **(FAST | {"epochs": 4, "lr": 0.1}), augment=False)
    assert max(h["val_clean"] for h in res.history) > 80  # chance is 25


def test_deterministic(data):
    a = finetune(make_model(), data, mode="trades", **FAST)
    b = finetune(make_model(), data, mode="trades", **FAST)
    assert all(torch.equal(v, b.model.state_dict()[k]) for k, v in a.model.state_dict().items())
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]


@pytest.mark.parametrize("mode,stop_at", [("adv-full", 1), ("partial", 2)])
def test_resume_equals_uninterrupted(data, tmp_path, monkeypatch, mode, stop_at):
    kw = FAST | {"epochs": 3, "mode": mode}
    full = finetune(make_model(), data, checkpoint_dir=tmp_path / "a", **kw)

    original = trainer._checkpoint

    def crash_after(run):
        original(run)
        if run.state["epoch"] == stop_at:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "_checkpoint", crash_after)
    with pytest.raises(KeyboardInterrupt):
        finetune(make_model(), data, checkpoint_dir=tmp_path / "b", **kw)
    monkeypatch.setattr(trainer, "_checkpoint", original)
    res = finetune(make_model(), data, checkpoint_dir=tmp_path / "b", resume=True, **kw)
    assert res.settings["resumed_from_epoch"] == stop_at
    assert all(torch.equal(v, res.model.state_dict()[k]) for k, v in full.model.state_dict().items())
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]
    assert strip(res.history) == strip(full.history) and res.best_epoch == full.best_epoch


def test_resume_with_other_settings_refused(data, tmp_path):
    finetune(make_model(), data, mode="full", checkpoint_dir=tmp_path, **FAST)
    with pytest.raises(RobustZooError, match=r"different run: settings\.lr: 0\.05 in the checkpoint, 0\.2 now"):
        finetune(make_model(), data, mode="full", checkpoint_dir=tmp_path, resume=True, **(FAST | {"lr": 0.2}))
    with pytest.warns(UserWarning, match="overwriting"):
        finetune(make_model(), data, mode="full", checkpoint_dir=tmp_path, **FAST)


def test_swap_head_and_headless(data):
    model = make_model(num_classes=0)
    res = finetune(model, data, mode="linear", num_classes=4, **FAST)
    assert res.model.num_classes == 4 and res.model(data[0][:2]).shape == (2, 4)
    model = make_model(num_classes=10)
    finetune(model, data, mode="full", num_classes=4, **FAST)
    assert model.linear.out_features == 4


def test_early_stopping(data):
    res = finetune(make_model(), data, mode="full", **(FAST | {"epochs": 8, "lr": 1e-12}), early_stopping=1)
    scores = [h["val_clean"] for h in res.history]
    assert res.stopped_early and len(res.history) < 8
    assert len(res.history) == res.best_epoch + 1 and scores[-1] <= max(scores) == res.best_value


def test_attack_mode_controls_bn_mode_during_attack(data):
    for attack_mode, expected in (("train", {True}), ("eval", {True, False})):
        model = make_model()
        modes = []
        model.register_forward_pre_hook(lambda m, i, modes=modes: modes.append(m.training))
        finetune(model, data, mode="adv-full", **(FAST | {"epochs": 1, "eval_steps": 0, "val_fraction": 0.0}),
                 attack_mode=attack_mode)
        assert set(modes) == expected
        # per iteration: `steps` attack forwards + 1 training forward; 5 iterations of 32 out of 160
        assert len(modes) == 5 * (FAST["steps"] + 1)


def test_no_validation_returns_last_epoch(data):
    res = finetune(make_model(), data, mode="full", **FAST, val_fraction=0.0)
    assert res.best_epoch == 2 and res.history[-1]["val_clean"] is None
    res = finetune(make_model(), data, mode="full", **FAST, val_data=(data[0][:20], data[1][:20]))
    assert res.settings["n_val"] == 20 and res.settings["n_train"] == 160


def test_bf16_channels_last_paths_run(data):
    torch.manual_seed(0)  # width 0.25: 16 channels at the strided shortcut, safe for channels-last on any CPU
    model = robustzoo.create_model("resnet18", width=0.25, in_chans=1, num_classes=4)
    res = finetune(model, data, mode="adv-full", **(FAST | {"epochs": 1}), amp=True, channels_last=True,
                   schedule="onecycle")
    assert math.isfinite(res.history[0]["loss"]) and res.settings["channels_last"] is True


@pytest.mark.parametrize("cap, flags, width, device, unsafe", [
    ("AVX2", "", 0.0625, "cpu", True), ("AVX2", "", 0.125, "cpu", False), ("AVX512", "", 0.125, "cpu", True),
    ("AVX512", "", 0.25, "cpu", False), ("DEFAULT", "", 0.0625, "cpu", False), ("AVX2", "", 0.0625, "cuda", False),
    ("AVX2", " fma avx2 avx512f avx512bw", 0.125, "cpu", True)])  # torch capped at AVX2, oneDNN still AVX-512
def test_channels_last_hazard_names_the_strided_1x1_conv(monkeypatch, cap, flags, width, device, unsafe):
    """oneDNN's x86 1x1 kernel crashes in channels-last backward below its channel block (#6035)."""
    import robustzoo.layout as layout
    from robustzoo.layout import channels_last_hazard

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: cap)
    monkeypatch.setattr(layout, "_cpu_flags", lambda: flags)
    got = channels_last_hazard(robustzoo.create_model("resnet18", width=width, in_chans=1), device)
    assert (got is not None) == unsafe
    if unsafe:
        assert got.startswith("layer2.0.shortcut.0 is a strided 1x1 convolution") and "#6035" in got


def test_channels_last_on_an_unsafe_model_warns_and_trains_in_the_default_layout(data, monkeypatch):
    """The width-0.0625 model crashed the process ("double free or corruption") on an AVX2 CPU with
    channels_last=True; now the request is declined with a warning and the run completes."""
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    monkeypatch.setattr("robustzoo.layout._cpu_flags", lambda: "")
    with pytest.warns(UserWarning, match=r"channels_last=True ignored: layer2\.0\.shortcut\.0"):
        res = finetune(make_model(), data, mode="adv-full", **(FAST | {"epochs": 1}), channels_last=True)
    assert res.settings["channels_last"] is False and math.isfinite(res.history[0]["loss"])


def _bad(data):
    x, y = data
    return [
        ({"data": (torch.rand(8, 3, 16, 16), y[:8])}, "channels"),
        ({"data": (x * 255, y)}, "divide by 255"),
        ({"data": (x, y + 4)}, "num_classes="),
        ({"data": (x[:0], y[:0])}, "empty"),
        ({"data": (x.masked_fill(x > 0.8, float("nan")), y)}, "NaN"),
        ({"eps": -0.1}, "eps"),
        ({"steps": -1}, "steps"),
        ({"eval_steps": -2}, "steps"),
        ({"steps": 0}, "adversarial"),
        ({"mode": "adv_full"}, "did you mean 'adv-full'"),
        ({"mode": "fine"}, "unknown mode"),
        ({"model": make_model(num_classes=0)}, "pass num_classes="),
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"lr": -1}, "lr"),
        ({"schedule": "step"}, "schedule"),
        ({"milestones": [5]}, "milestones"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"val_data": "cifar10"}, "not a name"),
        ({"early_stopping": 0}, "early_stopping"),
        ({"attack_mode": "test"}, "attack_mode"),
        ({"resume": True}, "checkpoint_dir"),
        ({"data": (x[:1], y[:1])}, "training sample"),
    ]


def test_bad_inputs_raise_before_training(data, monkeypatch):
    calls = []
    monkeypatch.setattr(trainer, "fit", lambda run: calls.append(run))
    monkeypatch.setattr("robustzoo.finetuning.fit", lambda run: calls.append(run))
    for kw, match in _bad(data):
        model = kw.pop("model", None) or make_model()
        before = state(model)
        args = FAST | {"mode": "adv-full"} | kw
        d = args.pop("data", data)
        with pytest.raises(DataError, match=match):
            finetune(model, d, **args)
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items()), kw
    assert not calls


def test_schedules_and_augment():
    assert default_milestones(100) == [60, 80] and default_milestones(10) == [6, 8]
    # the paper's warm-up: lr_i = min(0.01 + i * 0.09 / 200, 0.1) in epoch 0, for lr 0.1
    for i in (0, 50, 199, 250):
        got = 0.1 * lr_factor("multistep", step=i, epoch=0, total_steps=35100, milestones=[60, 80], warmup=200)
        assert got == pytest.approx(min(0.01 + i * 0.09 / 200, 0.1))
    assert lr_factor("multistep", step=10**6, epoch=80, total_steps=1, milestones=[60, 80], warmup=0) == \
        pytest.approx(0.01)
    assert lr_factor("cosine", step=100, epoch=0, total_steps=100, milestones=[], warmup=0) == pytest.approx(0)
    assert lr_factor("onecycle", step=39, epoch=0, total_steps=100, milestones=[], warmup=0) == pytest.approx(1)
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).view(2, 3, 5, 5)
    g = torch.Generator().manual_seed(0)
    out = augment(x, g, padding=2, flip=False)
    off = torch.randint(0, 5, (2, 2), generator=torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for b in range(2):
        assert torch.equal(out[b], padded[b, :, off[0, b]:off[0, b] + 5, off[1, b]:off[1, b] + 5])
    flipped = augment(x[:1].expand(200, -1, -1, -1), torch.Generator().manual_seed(1), padding=0)
    n_flip = sum(torch.equal(f, x[0].flip(2)) for f in flipped)
    assert 60 < n_flip < 140


def test_package_level_names_stay_callable(data):
    import robustzoo.evaluation
    import robustzoo.finetuning  # noqa: F401  (the modules have other names than the functions)

    assert callable(robustzoo.finetune) and callable(robustzoo.evaluate)
    res = robustzoo.finetune(make_model(), data, mode="linear", **(FAST | {"epochs": 1}))
    assert robustzoo.evaluate(res.model, data, eps=0.1, attacks=("clean",), progress=False).n == 160


def test_settings_are_one_frozen_validated_dataclass(data, tmp_path):
    import dataclasses

    from robustzoo.finetuning import FinetuneSettings

    s = FinetuneSettings(mode="linear", eps=0.1)
    assert (s.epochs, s.alpha, s.milestones, s.loss, s.select) == (25, 0.025, (15, 20), "clean", "val_clean")
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.lr = 1.0
    with pytest.raises(DataError, match="did you mean 'adv-full'"):
        FinetuneSettings(mode="adv_full")
    with pytest.raises(DataError, match="milestones"):
        FinetuneSettings(epochs=4, milestones=(4,))
    assert s.with_data(320).warmup == 2 and FinetuneSettings(schedule="cosine").with_data(320).warmup == 0
    # the result's settings and the checkpoint's fingerprint are made from it
    res = finetune(make_model(), data, checkpoint_dir=tmp_path, **(FAST | {"mode": "full"}))
    expected = FinetuneSettings(mode="full", epochs=2, batch_size=32, eps=0.1, steps=1, eval_steps=1,
                                lr=0.05).with_data(128).as_dict()
    assert {k: res.settings[k] for k in expected} == expected
    assert _fingerprint(tmp_path)["settings"]["lr"] == 0.05


def test_progress_one_line_per_epoch_in_logs_bar_on_terminals_silent_when_off(data, capsys, monkeypatch):
    finetune(make_model(), data, **(FAST | {"progress": True}))  # captured output: not a terminal
    out, err = capsys.readouterr()
    assert [line.split(":")[0] for line in out.splitlines()] == ["epoch 1", "epoch 2"], out
    assert "\r" not in out + err and "train acc (whole epoch)" in out
    finetune(make_model(), data, **FAST)  # progress=False
    assert capsys.readouterr() == ("", "")
    monkeypatch.setattr(trainer, "_terminal", lambda: True)
    finetune(make_model(), data, **(FAST | {"progress": True, "epochs": 1}))
    out, err = capsys.readouterr()
    assert "\r" in err and "train acc" in err and "examples seen this epoch" in err  # the live bar, labelled


def test_a_new_mode_is_one_table_row(data, monkeypatch):
    from robustzoo.finetune_settings import MODES, Mode

    monkeypatch.setitem(MODES, "adv-partial", Mode("layer4", "pgd", 2))
    model = make_model()
    before = state(model)
    res = finetune(model, data, **(FAST | {"mode": "adv-partial"}))
    changed = {k for k in before if not torch.equal(before[k], model.state_dict()[k])}
    assert changed and all(k.startswith(("layer4.", "linear.")) for k in changed)
    assert res.best_metric == "val_robust" and res.settings["mode"] == "adv-partial"


def test_default_eps_is_the_models_own(data, tmp_path):
    """Without eps, a zoo model trains at its registry budget (0.1 for *-fmnist, not CIFAR-10's 8/255), a
    fine-tuned file at the eps it records, any other model at the paper's 8/255; alpha follows as eps/4."""
    from robustzoo.weights import load_file, save_pretrained

    fast = {k: v for k, v in FAST.items() if k != "eps"} | {"epochs": 1, "eval_steps": 0}
    zoo = robustzoo.load("rot-adv-r18-w8-fmnist")
    got = finetune(zoo, data, num_classes=4, **fast).settings
    assert (got["eps"], got["alpha"]) == (0.1, 0.025)
    save_pretrained(make_model(), tmp_path / "ft", name="mine", metadata={"finetune": '{"eps": 0.2}'})
    assert finetune(load_file(tmp_path / "ft"), data, **fast).settings["eps"] == 0.2
    assert finetune(make_model(), data, **fast).settings["eps"] == pytest.approx(8 / 255)


def test_an_interrupted_run_no_longer_claims_its_registry_record(data, monkeypatch):
    """The weights change from the first step: the registry source goes before training starts, not at the end."""
    import robustzoo.finetuning as ft

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ft, "_run", interrupted)
    zoo = robustzoo.load("rot-adv-r18-w8-fmnist")
    with pytest.raises(KeyboardInterrupt):
        finetune(zoo, data, num_classes=4, **(FAST | {"eps": 0.3}))
    assert "source" not in zoo.pretrained_meta and zoo.pretrained_meta["base"] == "rot-adv-r18-w8-fmnist"
    from robustzoo.evaluation import recorded_eps

    assert recorded_eps(zoo) == (0.3, "the model's fine-tuning record")
