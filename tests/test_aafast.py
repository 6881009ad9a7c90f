"""aa-fast (robustzoo/aafast.py): MALT target selection, the cascade, the pass counter, and a
gradient-masking model on which it must not claim more robustness than standard AutoAttack."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn

from robustzoo import aafast
from robustzoo.aafast import PassCounter, aa_fast, malt_targets
from robustzoo.evaluation import EvaluationWarning, evaluate

EPS = 0.1


@pytest.fixture(scope="module")
def data():
    from robustzoo.fmnist import load_embedded

    x, y = load_embedded("train")
    xt, yt = load_embedded("test")
    return x[:2000], y[:2000], xt[:48], yt[:48]


class Quantise(nn.Module):
    """Input quantisation to 4 levels: the forward pass is a staircase, so every input gradient is
    zero (a known gradient-masking defect that gradient attacks cannot see through)."""

    def forward(self, x):
        return torch.round(x * 3) / 3


def test_malt_targets_are_the_linear_distances_to_each_boundary():
    torch.manual_seed(0)
    lin = nn.Linear(6, 5)
    model = nn.Sequential(nn.Flatten(), lin)
    x, y = torch.rand(7, 1, 2, 3), torch.randint(0, 5, (7,))
    got, masked = malt_targets(model, x, y, k=4)
    w, z = lin.weight.detach(), model(x).detach()
    for i in range(7):  # for a linear model the Linf distance to the y|t boundary is gap / ||w_y - w_t||_1
        dist = {t: float((z[i, y[i]] - z[i, t]) / (w[y[i]] - w[t]).abs().sum()) for t in range(5) if t != y[i]}
        assert got[i].tolist() == sorted(dist, key=dist.get)
    assert not masked.any()


def test_malt_can_prefer_a_lower_logit_with_a_steeper_gradient():
    lin = nn.Linear(2, 3, bias=True)
    with torch.no_grad():  # class 1 has the higher logit, class 2 the nearer boundary (steep gradient)
        lin.weight.copy_(torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.0, 10.0]]))
        lin.bias.copy_(torch.tensor([5.0, 4.0, -8.0]))
    model = nn.Sequential(nn.Flatten(), lin)
    x, y = torch.zeros(1, 1, 1, 2), torch.tensor([0])
    assert model(x).argsort(1, descending=True)[0, 1].item() == 1  # AutoAttack's logit order: class 1 first
    got, _ = malt_targets(model, x, y, k=1)
    assert got.tolist() == [[2]]  # gap 13 / 10 beats gap 1 / 0.1


def test_pass_counter_counts_forward_and_backward_images():
    c = PassCounter(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)))
    x = torch.rand(5, 1, 2, 2, requires_grad=True)
    with torch.no_grad():
        c(x[:2])
    c(x).sum().backward()
    assert c.counts() == {"forward": 7, "backward": 5, "passes": 12}


def test_cascade_attacks_only_survivors_and_is_reproducible(data, fmnist_logistic):
    x, y, xt, yt = data
    model = fmnist_logistic
    a = aa_fast(model, xt, yt, eps=EPS, k=2, n_iter=20, batch_size=16)
    b = aa_fast(model, xt, yt, eps=EPS, k=2, n_iter=20, batch_size=16)
    assert torch.equal(a.robust, b.robust) and a.counts == b.counts  # fixed seeds
    clean = model(xt).argmax(1) == yt
    assert not (a.robust & ~clean).any()
    att, brk = a.settings["attacked_per_stage"], a.settings["broken_per_stage"]
    assert att["apgd-ce"] == int(clean.sum())
    assert att["apgd-t1"] == att["apgd-ce"] - brk["apgd-ce"]  # only the survivors go on
    assert att["apgd-t2"] == att["apgd-t1"] - brk["apgd-t1"]
    assert int(a.robust.sum()) == att["apgd-t2"] - brk["apgd-t2"] and att["square"] == 0
    assert sum(s == "" for s in a.broken_by) == int(a.robust.sum())
    assert 0 < brk["apgd-ce"] and a.counts["backward"] > 0


def test_masked_model_matches_autoattack_and_warns(data, fmnist_logistic):
    """Standard AutoAttack breaks the quantised model with Square; aa-fast must not report more than
    ``aafast.TOLERANCE`` points more robustness, and must warn about the masked gradients."""
    x, y, xt, yt = data
    model = nn.Sequential(Quantise(), *fmnist_logistic).eval()
    xt, yt = xt[:16], yt[:16]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        res = evaluate(model, (xt, yt), eps=EPS, attacks=("clean", "autoattack", "aa-fast"), progress=False,
                       batch_size=16)
    fast = [w for w in seen if issubclass(w.category, EvaluationWarning) and "aa-fast" in str(w.message)]
    assert fast, "aa-fast did not warn about the masked gradients"
    assert res.accuracy["aa-fast"] <= res.accuracy["autoattack"] + aafast.TOLERANCE
    assert res.accuracy["autoattack"] < res.accuracy["clean"] - 20  # the defect is real: Square breaks it
    assert res.settings["aa-fast"]["masked"] > 0 and res.settings["aa-fast"]["broken_per_stage"]["square"] > 0
    counted = res.settings["passes"]  # the same counter on both
    assert counted["autoattack"]["passes"] > 0 and counted["aa-fast"]["passes"] == res.settings["aa-fast"]["passes"]


def test_masked_model_would_look_robust_without_the_square_stage(data, monkeypatch, fmnist_logistic):
    """The check above can fail: with the gradient-free stage switched off aa-fast overstates."""
    x, y, xt, yt = data
    model = nn.Sequential(Quantise(), *fmnist_logistic).eval()
    monkeypatch.setattr(aafast, "_square", lambda m, xb, yb, **kw: torch.ones(len(xb), dtype=torch.bool))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = aa_fast(model, xt[:24], yt[:24], eps=EPS)
    clean = (model(xt[:24]).argmax(1) == yt[:24])
    assert torch.equal(res.robust, clean)


def test_evaluate_reports_aa_fast_under_its_own_name(data, tmp_path, fmnist_logistic):
    from robustzoo.cli import main

    x, y, xt, yt = data
    res = evaluate(fmnist_logistic, (xt[:16], yt[:16]), eps=EPS, attacks=("clean", "aa-fast"), progress=False)
    got = res.settings["aa-fast"]
    assert set(res.accuracy) == {"clean", "aa-fast"} and "autoattack" not in res.accuracy
    assert got["robust_accuracy"] == pytest.approx(res.accuracy["aa-fast"]) and got["n"] == 16
    assert got["passes"] == got["forward"] + got["backward"] > 0 and got["seconds"] > 0
    assert res.settings["passes"]["aa-fast"]["passes"] == got["passes"]
    from robustzoo.models import create_model
    from robustzoo.weights import save_pretrained

    torch.manual_seed(0)
    save_pretrained(create_model("resnet18", width=0.0625, in_chans=1, num_classes=10, mean=(0.286,),
                                 std=(0.353,)), tmp_path / "m", name="tiny")
    out = tmp_path / "r.json"
    assert main(["eval", str(tmp_path / "m"), "--data", "fmnist-mini", "--n", "6", "--eps", "0.1",
                 "--attacks", "clean,aa-fast", "--json", str(out)]) == 0
    fast = json.loads(out.read_text())["settings"]["aa-fast"]
    assert {"robust_accuracy", "n", "passes", "seconds"} <= set(fast) and fast["n"] == 6


def test_bad_k_is_a_clear_error_and_k_is_capped_by_the_classes():
    from robustzoo.errors import DataError

    x = torch.rand(4, 1, 2, 2)
    with pytest.raises(DataError, match="k, n_iter"):
        aa_fast(nn.Sequential(nn.Flatten(), nn.Linear(4, 5)), x, torch.zeros(4, dtype=torch.long), eps=EPS, k=0)
    with pytest.raises(DataError, match="at least 4 classes"):
        aa_fast(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)), x, torch.zeros(4, dtype=torch.long), eps=EPS)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 5))
    with torch.no_grad():
        model[1].weight.mul_(0.01)  # a small gradient (not masked)
        model[1].bias.copy_(torch.tensor([9.0, 0, 0, 0, 0]))  # class 0 by far: robust at this eps
    res = aa_fast(model.eval(), x, torch.zeros(4, dtype=torch.long), eps=EPS, k=9, n_iter=5)
    att = res.settings["attacked_per_stage"]  # 5 classes: at most 4 targets, each attacking all 4 images
    assert [att.get(f"apgd-t{r}") for r in range(1, 6)] == [4, 4, 4, 4, None] and bool(res.robust.all())
