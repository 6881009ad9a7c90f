"""robustzoo.evaluate against a naive reference loop, plus its sanity checks and errors."""

from __future__ import annotations

import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import robustzoo
from robustzoo.attacks import cw_margin, pgd
from robustzoo.errors import DataError, RobustZooError
from robustzoo.evaluation import EvaluationWarning, evaluate

EPS = 0.1  # Fashion-MNIST budget used by the project


@pytest.fixture(scope="module")
def trained(fmnist_logistic):
    """A logistic-regression classifier trained on the embedded Fashion-MNIST subset (real data)."""
    from robustzoo.fmnist import load_embedded

    xt, yt = load_embedded("test")
    return fmnist_logistic, xt[:300], yt[:300]


def reference(model, x, y, *, eps, alpha, steps, seed, batch_size, loss="ce"):
    """The textbook loop (torchattacks-style arithmetic), written independently of robustzoo.attacks.

    Like ``evaluate`` it attacks only the clean-correct samples (a clean error is never robust)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        keep = model(x).argmax(1) == y
    out, robust = [], torch.zeros(len(x), dtype=torch.bool)
    for xb, yb in zip(x[keep].split(batch_size), y[keep].split(batch_size)):
        adv = (xb + (torch.rand(xb.shape, generator=g) * 2 - 1) * eps).clamp(0, 1)
        for _ in range(steps):
            adv = adv.detach().requires_grad_(True)
            logits = model(adv)
            if loss == "ce":
                obj = F.cross_entropy(logits, yb, reduction="sum")
            else:
                z_y = logits.gather(1, yb[:, None]).squeeze(1)
                obj = (logits - 1e9 * F.one_hot(yb, 10)).max(1).values.sub(z_y).sum()
            obj.backward()
            adv = adv.detach() + alpha * adv.grad.sign()
            adv = (xb + torch.clamp(adv - xb, -eps, eps)).clamp(0, 1)
        with torch.no_grad():
            out.append(model(adv).argmax(1) == yb)
    robust[keep] = torch.cat(out)
    return robust


@pytest.mark.parametrize("attack,loss", [("pgd10", "ce"), ("pgd5-cw", "cw")])
def test_matches_reference_loop(trained, attack, loss):
    model, x, y = trained
    res = evaluate(model, (x, y), eps=EPS, attacks=("clean", attack), batch_size=128, seed=3, progress=False)
    steps = int(attack[3:].split("-")[0])
    ref = reference(model, x, y, eps=EPS, alpha=EPS / 4, steps=steps, seed=3, batch_size=128, loss=loss)
    clean = (model(x).argmax(1) == y)
    assert torch.equal(res.correct["clean"], clean)
    assert res.accuracy["clean"] == pytest.approx(100 * clean.float().mean().item())
    # identical random starts and updates; only float rounding in the projection may differ
    assert (res.correct[attack] != ref).sum() <= 2
    assert res.accuracy["clean"] > 60 and res.accuracy[attack] < res.accuracy["clean"] - 10
    assert res.n == 300 and res.correct[attack].dtype == torch.bool and res.correct[attack].shape == (300,)


def test_settings_robust_implies_clean_and_reproducible(trained):
    model, x, y = trained
    a = evaluate(model, (x, y), eps=EPS, attacks=("pgd3",), n=100, batch_size=64, seed=1, progress=False)
    b = evaluate(model, (x, y), eps=EPS, attacks=("pgd3",), n=100, batch_size=64, seed=1, progress=False)
    assert torch.equal(a.correct["pgd3"], b.correct["pgd3"])
    clean = model(x[:100]).argmax(1) == y[:100]
    assert not (a.correct["pgd3"] & ~clean).any()
    s = a.settings
    assert s["eps"] == EPS and s["alpha"] == EPS / 4 and s["n"] == 100 and s["seed"] == 1 and s["restarts"] == 1
    assert s["attacks"][0] == {"name": "pgd3", "kind": "pgd", "steps": 3, "loss": "ce"}
    assert {"torch", "robustzoo"} <= set(s["versions"])
    assert "pgd3" in str(a) and a.to_dict()["accuracy"] == a.accuracy


def test_restarts_never_increase_robust_accuracy(trained):
    model, x, y = trained
    one = evaluate(model, (x, y), eps=EPS, attacks=("pgd2",), n=100, seed=0, progress=False)
    three = evaluate(model, (x, y), eps=EPS, attacks=("pgd2",), n=100, seed=0, restarts=3, progress=False)
    assert not (three.correct["pgd2"] & ~one.correct["pgd2"]).any()  # first restart is the same run


def test_restarts_robust_only_if_every_restart_fails(trained):
    """The one restart rule: evaluate's count equals the AND over independent single-restart runs."""
    model, x, y = trained
    x, y = x[:100], y[:100]
    got = evaluate(model, (x, y), eps=EPS, attacks=("clean", "pgd2"), seed=3, restarts=3, batch_size=100,
                   progress=False).correct["pgd2"]
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    idx = clean.nonzero().squeeze(1)  # evaluate attacks the clean-correct samples only, in one batch here
    each = [model(pgd(lambda z: F.cross_entropy(model(z), y[idx], reduction="none"), x[idx], eps=EPS,
                      alpha=EPS / 4, steps=2, model=model, generator=g)).argmax(1) == y[idx] for _ in range(3)]
    expected = torch.zeros_like(clean)
    expected[idx] = each[0] & each[1] & each[2]
    assert torch.equal(got, expected)
    assert not torch.equal(each[0], expected[idx]) or not torch.equal(each[1], expected[idx]), "restarts differ"


def test_mode_restored_and_eval_used():
    model = robustzoo.create_model("resnet18", width=0.0625, num_classes=10).train()
    modes = []
    model.register_forward_pre_hook(lambda m, i: modes.append(m.training))
    data = (torch.rand(8, 3, 16, 16), torch.randint(0, 10, (8,)))
    evaluate(model, data, attacks=("clean", "pgd1"), progress=False)
    assert modes and not any(modes)
    assert all(m.training for m in model.modules())


def test_probability_outputs_warn(trained):
    model, x, y = trained
    prob_model = nn.Sequential(model, nn.Softmax(dim=1))
    with pytest.warns(EvaluationWarning, match="probabilities"):
        evaluate(prob_model, (x[:32], y[:32]), eps=EPS, attacks=("clean",), progress=False)


def test_zero_gradient_warns():
    class Masked(nn.Module):  # rounding the input kills the gradient: classic gradient masking
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(12, 3)

        def forward(self, x):
            return self.lin((x * 4).round().flatten(1) / 4)

    data = (torch.rand(16, 3, 2, 2), torch.randint(0, 3, (16,)))
    with pytest.warns(EvaluationWarning, match="zero input gradient"):
        res = evaluate(Masked(), data, attacks=("clean", "pgd2"), progress=False)
    assert res.settings["checks"]["zero_gradients"] == 16


def test_no_warning_on_sound_model(trained):
    model, x, y = trained
    with warnings.catch_warnings():
        warnings.simplefilter("error", EvaluationWarning)
        evaluate(model, (x[:32], y[:32]), eps=EPS, attacks=("clean", "pgd1"), progress=False)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"attacks": ("pgd",)}, "unknown attack"),
        ({"attacks": ("pdg20",)}, "did you mean"),
        ({"attacks": ()}, "empty"),
        ({"eps": -1.0}, "eps"),
        ({"batch_size": 0}, "batch_size"),
        ({"restarts": 0}, "restarts"),
    ],
)
def test_bad_arguments(trained, kwargs, match):
    model, x, y = trained
    with pytest.raises(DataError, match=match):
        evaluate(model, (x, y), progress=False, **kwargs)


def test_bad_data_and_headless_model():
    model = robustzoo.create_model("resnet18", width=0.0625, num_classes=10)
    with pytest.raises(DataError, match="divide by 255"):
        evaluate(model, (torch.rand(4, 3, 8, 8) * 255, torch.zeros(4, dtype=torch.long)), progress=False)
    with pytest.raises(DataError, match="labels up to 12"):
        evaluate(model, (torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 12])), progress=False)
    with pytest.raises(DataError, match="channels"):
        evaluate(robustzoo.create_model("resnet18", width=0.0625, in_chans=1),
                 (torch.rand(4, 3, 8, 8), torch.zeros(4, dtype=torch.long)), progress=False)
    with pytest.raises(DataError, match="no classifier head"):
        evaluate(robustzoo.create_model("resnet18", width=0.0625, num_classes=0),
                 (torch.rand(4, 3, 8, 8), torch.zeros(4, dtype=torch.long)), progress=False)


def test_cw_margin():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 5.0]])
    assert torch.equal(cw_margin(logits, torch.tensor([0, 1])), torch.tensor([-2.0, 3.0]))


def test_autoattack_missing_package_message(trained, monkeypatch):
    model, x, y = trained
    monkeypatch.setitem(sys.modules, "pyautoattack", None)
    with pytest.raises(RobustZooError, match=r"pip install robustzoo\[autoattack\]"):
        evaluate(model, (x[:8], y[:8]), eps=EPS, attacks=("autoattack",), progress=False)


@pytest.mark.slow
def test_autoattack_standard_is_at_most_pgd(trained):
    pytest.importorskip("pyautoattack")
    model, x, y = trained
    model.zero_grad(set_to_none=True)  # the reference loop above populates .grad
    # eps 0.05 leaves some points robust, so every stage of the standard protocol runs (~10 s on 2 cores)
    res = evaluate(model, (x[:20], y[:20]), eps=0.05, attacks=("clean", "pgd20", "autoattack"), progress=False)
    assert 0 < res.accuracy["autoattack"] <= res.accuracy["clean"]
    # AutoAttack is at least as strong as PGD-20, up to one sample of randomness
    assert res.accuracy["autoattack"] <= res.accuracy["pgd20"] + 100 / 20
    assert "pyautoattack" in res.settings["versions"]
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


def test_progress_draws_no_carriage_returns_into_logs(trained, capsys):
    """Issue 12 point 7: a bar only on a terminal; captured output (a log) gets no `\\r` spam."""
    model, x, y = trained
    evaluate(model, (x[:64], y[:64]), eps=EPS, attacks=("clean", "pgd20"), progress=True)
    out = capsys.readouterr()
    assert "\r" not in out.err and "\r" not in out.out


def test_default_eps_is_the_models_own(tmp_path):
    """Without ``eps``, a zoo model is attacked at its registry record's budget (0.1 for *-fmnist, not the
    CIFAR-10 8/255), a fine-tuned file at the eps it records, any other model at 8/255; settings say which."""
    import json

    from robustzoo.weights import load_file, save_pretrained

    data = "fmnist-mini"
    zoo = robustzoo.load("rot-adv-aft-r18-w8-fmnist")
    got = evaluate(zoo, data, n=8, attacks=("clean", "pgd1"), progress=False).settings
    assert (got["eps"], got["eps_from"]) == (0.1, "the registry record")
    assert got["alpha"] == pytest.approx(0.025)
    save_pretrained(zoo, tmp_path / "ft", name="mine", metadata={"finetune": json.dumps({"eps": 0.2})})
    got = evaluate(load_file(tmp_path / "ft"), data, n=8, attacks=("clean",), progress=False).settings
    assert (got["eps"], got["eps_from"]) == (0.2, "the model's fine-tuning record")
    plain = robustzoo.create_model("resnet18", width=0.0625, in_chans=1, num_classes=10)
    got = evaluate(plain, data, n=8, attacks=("clean",), progress=False).settings
    assert (got["eps"], got["eps_from"]) == (8 / 255, "the default for a model with no record")
    got = evaluate(zoo, data, eps=0.05, n=8, attacks=("clean",), progress=False).settings
    assert (got["eps"], got["eps_from"]) == (0.05, "the eps argument")


def test_default_eps_follows_the_weights_not_a_stale_source(tmp_path):
    """A model fine-tuned in memory is attacked at the eps it was trained at, not its base's registry eps; a
    file that carries a ``source`` from elsewhere cannot claim a registry record."""
    import json

    from robustzoo.weights import load_file, save_pretrained

    zoo = robustzoo.load("rot-adv-r18-w8-fmnist")
    x, y = robustzoo.load_data("fmnist-mini", split="train", n=64)
    tuned = zoo.finetune((x, y), num_classes=10, eps=0.2, epochs=1, steps=1, eval_steps=0, batch_size=32,
                         progress=False).model
    got = evaluate(tuned, (x[:8], y[:8]), attacks=("clean",), progress=False).settings
    assert (got["eps"], got["eps_from"]) == (0.2, "the model's fine-tuning record")
    assert tuned.pretrained_meta["base"] == "rot-adv-r18-w8-fmnist" and "path" not in tuned.pretrained_meta
    save_pretrained(tuned, tmp_path / "saved", name="mine")  # the documented save keeps the record
    again = evaluate(load_file(tmp_path / "saved"), (x[:8], y[:8]), attacks=("clean",), progress=False).settings
    assert (again["eps"], again["eps_from"]) == (0.2, "the model's fine-tuning record")
    stale = {"source": "rot-adv-aft-r18-w8-fmnist", "path": "/elsewhere", "finetune": json.dumps({"eps": 0.3})}
    save_pretrained(zoo, tmp_path / "f", name="x", metadata=stale)
    copy = load_file(tmp_path / "f")
    assert "source" not in copy.pretrained_meta and "path" not in copy.pretrained_meta
    assert evaluate(copy, (x[:8], y[:8]), attacks=("clean",), progress=False).settings["eps"] == 0.3
