"""Invariants of robustzoo.attacks: ball, box, ascent, modes, seeds, input-only gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import robustzoo
from robustzoo.attacks import fgsm, model_mode, pgd, trades_adv
from robustzoo.errors import DataError, RobustZooError

EPS, ALPHA = 8 / 255, 2 / 255


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = robustzoo.create_model("resnet18", width=0.0625, num_classes=10)
    # a few warm-up passes so BN running stats are not the identity and eval != train outputs
    with torch.no_grad():
        model.train()
        for _ in range(3):
            model(torch.rand(32, 3, 32, 32))
    model.eval()
    x = torch.rand(16, 3, 32, 32)
    y = torch.randint(0, 10, (16,))
    return model, x, y


def ce(model, y):
    return lambda z: F.cross_entropy(model(z), y, reduction="none")


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("random_start", [True, False])
def test_ball_box_and_ascent(setup, norm, random_start):
    model, x, y = setup
    eps = EPS if norm == "linf" else 0.5
    alpha = ALPHA if norm == "linf" else 0.1
    x_adv = pgd(ce(model, y), x, eps=eps, alpha=alpha, steps=5, norm=norm, random_start=random_start,
                model=model, generator=0)
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    delta = (x_adv - x).flatten(1)
    dist = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert (dist <= eps + 1e-6).all()
    assert (dist > 0).any()
    with torch.no_grad():
        assert F.cross_entropy(model(x_adv), y) > F.cross_entropy(model(x), y)


def test_pgd_lowers_accuracy_on_a_trained_linear_model():
    # A model that classifies perfectly on clean data must be broken by a large-eps attack.
    torch.manual_seed(0)
    x = torch.rand(64, 1, 4, 4)
    y = (x.mean((1, 2, 3)) > 0.5).long()
    w = torch.zeros(2, 16)
    w[1] = 1.0
    w[0] = -1.0
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
    with torch.no_grad():
        model[1].weight.copy_(w)
        model[1].bias.copy_(torch.tensor([8.0, -8.0]))
    assert (model(x).argmax(1) == y).all()
    x_adv = pgd(ce(model, y), x, eps=0.3, alpha=0.1, steps=10, model=model, generator=0)
    assert (model(x_adv).argmax(1) == y).float().mean() < 0.2


def test_seed_reproducible_and_differs(setup):
    model, x, y = setup
    a = pgd(ce(model, y), x, eps=EPS, alpha=ALPHA, steps=3, model=model, generator=123)
    b = pgd(ce(model, y), x, eps=EPS, alpha=ALPHA, steps=3, model=model, generator=torch.Generator().manual_seed(123))
    c = pgd(ce(model, y), x, eps=EPS, alpha=ALPHA, steps=3, model=model, generator=124)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_params_grad_untouched(setup):
    model, x, y = setup
    model.zero_grad(set_to_none=True)
    pgd(ce(model, y), x, eps=EPS, alpha=ALPHA, steps=2, model=model, generator=0)
    fgsm(ce(model, y), x, eps=EPS, model=model, generator=0)
    trades_adv(model, x, eps=EPS, alpha=ALPHA, steps=2, generator=0)
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("mode", ["train", "eval", None])
def test_mode_during_attack_and_restored(setup, mode):
    model, x, y = setup
    model.train()
    model.layer1.eval()  # a mixed state (e.g. a frozen part) must come back exactly
    before = {n: m.training for n, m in model.named_modules()}
    seen = []

    def loss_fn(z):
        seen.append((model.training, model.layer2.training, model.layer1.training))
        return F.cross_entropy(model(z), y, reduction="none")

    pgd(loss_fn, x, eps=EPS, alpha=ALPHA, steps=2, model=model, mode=mode, generator=0)
    expected = {"train": (True, True, True), "eval": (False, False, False), None: (True, True, False)}[mode]
    assert seen and all(s == expected for s in seen)
    assert {n: m.training for n, m in model.named_modules()} == before
    model.eval()


def test_mode_restored_after_exception(setup):
    model, x, _ = setup
    model.train()

    def bad(z):
        model(z)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        pgd(bad, x, eps=EPS, alpha=ALPHA, steps=2, model=model, mode="eval")
    assert all(m.training for m in model.modules())
    model.eval()


def test_train_mode_updates_bn_running_stats_eval_does_not(setup):
    model, x, y = setup
    state = {k: v.clone() for k, v in model.state_dict().items()}
    pgd(ce(model, y), x, eps=EPS, alpha=ALPHA, steps=1, model=model, mode="eval", generator=0)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    pgd(ce(model, y), x, eps=EPS, alpha=ALPHA, steps=1, model=model, mode="train", generator=0)
    assert not torch.equal(state["bn1.running_mean"], model.bn1.running_mean)
    model.load_state_dict(state)


def test_scalar_loss_and_zero_steps(setup):
    model, x, y = setup
    a = pgd(lambda z: F.cross_entropy(model(z), y), x, eps=EPS, alpha=ALPHA, steps=2, generator=5)
    b = pgd(ce(model, y), x, eps=EPS, alpha=ALPHA, steps=2, generator=5)
    assert torch.allclose(a, b)  # sign of the mean-loss gradient = sign of the summed per-sample gradients
    assert torch.equal(pgd(ce(model, y), x, eps=EPS, alpha=ALPHA, steps=0, random_start=False), x)


def test_restarts_keep_a_fooling_restart_else_the_worst(setup):
    """One restart rule: the kept point fools the model iff some restart did; otherwise the highest loss."""
    model, x, _ = setup
    with torch.no_grad():
        y = model(x).argmax(1)  # labels the model gets right, and a large ball: restarts disagree
    loss = ce(model, y)
    x3 = pgd(loss, x, eps=2 * EPS, alpha=EPS / 8, steps=1, restarts=3, model=model, y=y, generator=7)
    g = torch.Generator().manual_seed(7)
    singles = [pgd(loss, x, eps=2 * EPS, alpha=EPS / 8, steps=1, model=model, generator=g) for _ in range(3)]
    with torch.no_grad():
        fooled = torch.stack([model(s).argmax(1) != y for s in singles])
        assert (fooled.any(0) & ~fooled.all(0)).any() and not fooled.any(0).all()  # the rule is tested, not trivial
        assert torch.equal(model(x3).argmax(1) != y, fooled.any(0))
        never = ~fooled.any(0)
        best = torch.stack([loss(s) for s in singles]).amax(0)
        assert torch.allclose(loss(x3)[never], best[never], atol=1e-5)
    with pytest.raises(DataError, match="per-sample"):
        pgd(lambda z: loss(z).mean(), x, eps=EPS, alpha=ALPHA, steps=1, restarts=2, model=model, y=y)
    with pytest.raises(DataError, match="y="):
        pgd(loss, x, eps=EPS, alpha=ALPHA, steps=1, restarts=2, model=model)


def test_fgsm_and_trades(setup):
    model, x, y = setup
    x_f = fgsm(ce(model, y), x, eps=EPS, model=model, generator=0)
    assert (x_f - x).abs().max() <= EPS + 1e-6 and x_f.min() >= 0 and x_f.max() <= 1
    x_t = trades_adv(model, x, eps=EPS, alpha=ALPHA, steps=3, generator=0)
    assert (x_t - x).abs().max() <= EPS + 1e-6 and x_t.min() >= 0 and x_t.max() <= 1
    with torch.no_grad():
        p = F.softmax(model(x), 1)
        kl = F.kl_div(F.log_softmax(model(x_t), 1), p, reduction="batchmean")
        kl0 = F.kl_div(F.log_softmax(model((x + 1e-3 * torch.randn_like(x)).clamp(0, 1)), 1), p,
                       reduction="batchmean")
    assert kl > kl0
    assert torch.equal(x_t, trades_adv(model, x, eps=EPS, alpha=ALPHA, steps=3, generator=0))


def test_amp_and_channels_last_paths(setup):
    model, x, y = setup
    x_adv = pgd(ce(model, y), x, eps=EPS, alpha=ALPHA, steps=2, amp=True, channels_last=True, generator=0)
    assert x_adv.shape == x.shape and x_adv.dtype == torch.float32
    assert (x_adv - x).abs().max() <= EPS + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1


def test_works_under_no_grad_and_inference_mode(setup):
    model, x, y = setup
    with torch.inference_mode():
        xi = x.clone()
    with torch.no_grad():
        x_adv = pgd(ce(model, y), xi, eps=EPS, alpha=ALPHA, steps=2, generator=0)
    assert (x_adv != x).any()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"eps": -0.1}, "eps"),
        ({"alpha": -1.0}, "alpha"),
        ({"steps": -1}, "steps"),
        ({"steps": 2.5}, "steps"),
        ({"eps": float("nan")}, "eps"),
        ({"norm": "l1"}, "norm"),
        ({"restarts": 0}, "restarts"),
        ({"mode": "training"}, "mode"),
    ],
)
def test_bad_arguments(setup, kwargs, match):
    model, x, y = setup
    args = {"eps": EPS, "alpha": ALPHA, "steps": 1, "model": model} | kwargs
    with pytest.raises(DataError, match=match) as info:
        pgd(ce(model, y), x, **args)
    assert isinstance(info.value, (RobustZooError, ValueError))


def test_bad_input_tensor(setup):
    model, _, y = setup
    with pytest.raises(DataError, match="floating"):
        pgd(ce(model, y), torch.zeros(4, 3, 8, 8, dtype=torch.uint8), eps=EPS, alpha=ALPHA, steps=1)


def test_model_mode_context_rejects_bad_mode(setup):
    model, _, _ = setup
    with pytest.raises(DataError):
        with model_mode(model, "test"):
            pass
