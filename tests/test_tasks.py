"""Pretext tasks (training/tasks.py) and the Selfie transformer: correctness and one optimisation step each."""

from __future__ import annotations

import math
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from robustzoo.models import ResNet  # noqa: E402
from training.ensemble import logdet_penalty  # noqa: E402
from training.recipes import resolve  # noqa: E402
from training.selfie_net import SelfieTransformer  # noqa: E402
from training.tasks import (  # noqa: E402
    Jigsaw,
    PretextModel,
    Rotation,
    Selfie,
    make_task,
    merge_patches,
    split_patches,
)

TINY = 0.0625


def _model(name: str, **kw) -> PretextModel:
    recipe = replace(resolve(name), width=TINY, selfie_layers=2, selfie_heads=2, **kw)
    torch.manual_seed(0)
    bb = ResNet(recipe.arch, num_classes=0, width=TINY)
    return PretextModel(bb, make_task(recipe, bb))


@pytest.mark.parametrize("arch", ["r18", "r50"])
@pytest.mark.parametrize("mode", ["std", "adv"])
@pytest.mark.parametrize("task", ["rot", "jig", "selfie", "ens"])
def test_one_optimisation_step(task, mode, arch):
    model = _model(f"{task}-adv-{arch}")
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 32, 32, generator=g)
    inputs, targets = model.task.make_batch(x, g)
    adv = None
    if mode == "adv":
        adv = model.task.attack(model, inputs, targets, eps=8 / 255, alpha=2 / 255, steps=2, mode="train",
                                generator=g)
        for a, i in zip(adv if isinstance(adv, tuple) else (adv,), inputs if isinstance(inputs, tuple) else (inputs,)):
            assert (a - i).abs().max() <= 8 / 255 + 1e-6 and a.min() >= 0 and a.max() <= 1
            assert (a != i).any()
        assert all(p.grad is None for p in model.parameters()), "the attack must not touch parameter grads"
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    loss, clean, robust = model(inputs, targets, adv)
    assert torch.isfinite(loss) and loss.ndim == 0
    assert (robust is None) == (mode == "std")
    loss.backward()
    opt.step()
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("backbone.layer1") for k in changed)
    assert any(k.startswith("backbone.conv1") for k in changed)
    if task != "rot":
        assert any(k.startswith("task.") for k in changed) or task == "jig"


def test_rotation_targets_match_rot90():
    bb = ResNet("resnet18", num_classes=0, width=TINY)
    task = Rotation(bb)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(10, 3, 32, 32)
    inputs, labels = task.make_batch(x, g)
    for i in range(10):
        assert torch.equal(inputs[i], torch.rot90(x[i], int(labels[i]), dims=(1, 2)))
    # the paper's batch: a prefix of a permutation of [0,1,2,3] * (B//4 + 1) -> counts differ by <= 1... per 12
    counts = torch.bincount(labels, minlength=4)
    assert counts.sum() == 10 and counts.max() <= 3
    assert bb.num_classes == 4  # the head is the backbone's own linear


def test_rotation_batch_is_sharded_consistently():
    bb = ResNet("resnet18", num_classes=0, width=TINY)
    task = Rotation(bb)
    x = torch.rand(8, 3, 32, 32)
    full = task.make_batch(x, torch.Generator().manual_seed(3))
    half = task.make_batch(x, torch.Generator().manual_seed(3), slice(4, 8))
    assert torch.equal(full[0][4:], half[0]) and torch.equal(full[1][4:], half[1])


def test_jigsaw_inverse_permutation_restores_image():
    bb = ResNet("resnet18", num_classes=0, width=TINY)
    task = Jigsaw(bb, seed=5)
    assert task.permutations.shape == (31, 16)
    assert torch.equal(task.permutations[0], torch.arange(16))
    assert bb.num_classes == 31
    g = torch.Generator().manual_seed(2)
    x = torch.rand(64, 3, 32, 32)
    shuffled, order = task.make_batch(x, g)
    assert (order > 0).any() and not torch.equal(shuffled, x)
    p = split_patches(shuffled, 4)
    inv = torch.argsort(task.permutations[order], dim=1)  # position of original patch k in the puzzle
    restored = merge_patches(p.gather(1, inv[:, :, None, None, None].expand_as(p)), 4)
    assert torch.equal(restored, x)
    # 28x28 Fashion-MNIST: 7x7 patches
    x28 = torch.rand(4, 1, 28, 28)
    assert split_patches(x28, 4).shape == (4, 16, 1, 7, 7)
    assert torch.equal(merge_patches(split_patches(x28, 4), 4), x28)


def test_jigsaw_label_distribution_and_seeded_permutations():
    bb = ResNet("resnet18", num_classes=0, width=TINY)
    task = Jigsaw(bb, seed=5)
    g = torch.Generator().manual_seed(0)
    _, order = task.make_batch(torch.rand(20000, 1, 4, 4), g)  # 1x1 patches: cheap
    p0 = 0.1 + 0.9 / 31
    freq = (order == 0).float().mean().item()
    assert abs(freq - p0) < 4 * math.sqrt(p0 * (1 - p0) / 20000)
    assert torch.equal(Jigsaw(bb, seed=5).permutations, task.permutations)
    assert not torch.equal(Jigsaw(bb, seed=6).permutations, task.permutations)
    assert "jigsaw_permutations" in task.export_metadata()


def test_selfie_masks_four_patches_and_query_shape():
    bb = ResNet("resnet18", num_classes=0, width=TINY)
    task = Selfie(bb, n_layers=2, n_heads=2)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 32, 32)
    inputs, seq = task.make_batch(x, g)
    assert sorted(seq.tolist()) == list(range(16))
    masked = seq[:4]
    assert masked.numel() == 4
    bb.eval()
    task.eval()
    f = task.features(bb, inputs)
    assert f.shape == (3, 16, bb.layer4[0].bn0.num_features)
    q = task.transformer(f[:, seq[4:]], masked)
    assert q.shape == (3, 4, task.transformer.d_model)
    # the queries see only the 12 visible patches: repainting a masked patch leaves them unchanged
    r, c = divmod(int(masked[0]), 4)
    x2 = inputs.clone()
    x2[:, :, r * 8:(r + 1) * 8, c * 8:(c + 1) * 8] = torch.rand(3, 3, 8, 8)
    f2 = task.features(bb, x2)
    assert torch.allclose(task.transformer(f2[:, seq[4:]], masked), q)
    assert not torch.allclose(f2[:, masked[0]], f[:, masked[0]])
    s = task.scores(bb, inputs, seq)
    assert s.shape == (3, 4, 4)


def test_selfie_double_softmax_is_bounded():
    bb = ResNet("resnet18", num_classes=0, width=TINY)
    task = Selfie(bb, n_layers=1, n_heads=2, loss="double-softmax")
    x = torch.rand(4, 3, 32, 32)
    loss, _ = task.per_sample(bb, *task.make_batch(x, torch.Generator().manual_seed(0)))
    # CE on probabilities of 4 classes lies in [log(3 + e) - 1, log(1 + 3e)] per position; 4 positions summed
    lo, hi = 4 * (math.log(3 + math.e) - 1), 4 * math.log(1 + 3 * math.e)
    assert ((loss >= lo - 1e-5) & (loss <= hi + 1e-5)).all()


def test_selfie_transformer_paper_size():
    with torch.device("meta"):
        t = SelfieTransformer(d_model=1024, n_layers=13, n_heads=16, d_ff=2048)
    assert sum(p.numel() for p in t.parameters()) == 109_207_552  # spec 1.6


def test_logdet_penalty_matches_torch_logdet():
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(5, 3, 4, 4, generator=g, dtype=torch.float64) for _ in range(3)]
    grads[2] = grads[0] + 0.1 * grads[2]  # nearly aligned pair: very negative log det
    h = logdet_penalty(grads)
    cols = [t.flatten(1) / (t.flatten(1).norm(dim=1, keepdim=True) + 1e-10) for t in grads]
    G = torch.stack(cols, dim=2)
    M = G.transpose(1, 2) @ G + 1e-5 * torch.eye(3, dtype=G.dtype)
    assert torch.allclose(h.double(), torch.logdet(M).mean(), rtol=1e-4, atol=1e-4)
    ortho = [torch.eye(3)[i].view(1, 3) for i in range(3)]
    assert abs(logdet_penalty(ortho).item() - 3 * math.log(1 + 1e-5)) < 1e-4  # orthogonal: h ~ 0


def test_ensemble_attack_uses_the_penalty():
    model = _model("ens-adv-r18")
    g = torch.Generator().manual_seed(0)
    inputs, targets = model.task.make_batch(torch.rand(4, 3, 32, 32), g)
    kw = dict(eps=8 / 255, alpha=2 / 255, steps=2, mode="eval", generator=None)
    torch.manual_seed(0)
    with_pen = model.task.attack(model, inputs, targets, **kw)
    model.task.lam = 0.0
    torch.manual_seed(0)
    without = model.task.attack(model, inputs, targets, **kw)
    assert len(with_pen) == 3 and all(a.shape == i.shape for a, i in zip(with_pen, inputs))
    assert any(not torch.equal(a, b) for a, b in zip(with_pen, without))


def test_export_backbone_is_headless():
    model = _model("rot-adv-r18")
    bb = model.export_backbone()
    assert bb.num_classes == 0 and not any(k.startswith("linear") for k in bb.state_dict())
    assert model.backbone.num_classes == 4  # the training model keeps its head


def test_selfie_loss_options():
    bb = ResNet("resnet18", num_classes=0, width=TINY)
    x = torch.rand(4, 3, 32, 32)
    batch = Selfie(bb, n_layers=1, n_heads=2).make_batch(x, torch.Generator().manual_seed(0))
    losses = {}
    for name in Selfie.LOSSES:
        torch.manual_seed(0)
        task = Selfie(bb, n_layers=1, n_heads=2, loss=name).eval()
        losses[name] = task.per_sample(bb, *batch)[0]
    torch.manual_seed(0)
    task = Selfie(bb, n_layers=1, n_heads=2).eval()
    s = task.scores(bb, *batch)
    y = torch.arange(4).repeat(4)
    direct = torch.nn.functional.cross_entropy((s / math.sqrt(task.transformer.d_model)).reshape(16, 4), y,
                                               reduction="none").view(4, 4).sum(1)
    assert torch.allclose(losses["scaled-logits"], direct, atol=1e-5)
    assert not torch.allclose(losses["logits"], losses["double-softmax"])
    with pytest.raises(ValueError, match="selfie loss"):
        Selfie(bb, loss="softmax")


def test_training_package_has_no_import_cycle():
    """Every ``import training.x`` / ``from training(.x) import y``, at any depth of the file (lazy ones too)."""
    import ast

    root = Path(__file__).resolve().parents[1] / "training"
    mods = {p.stem for p in root.glob("*.py")}
    graph = {}
    for m in mods:
        deps = set()
        for node in ast.walk(ast.parse((root / f"{m}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "training":
                deps |= {a.name for a in node.names if a.name in mods}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("training."):
                deps.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                deps |= {a.name.split(".")[1] for a in node.names if a.name.startswith("training.")}
        graph[m] = deps - {m}

    def cycle_from(start, node, seen):
        for nxt in graph.get(node, ()):
            if nxt == start:
                return [*seen, nxt]
            if nxt not in seen:
                found = cycle_from(start, nxt, [*seen, nxt])
                if found:
                    return found
        return None

    cycles = [c for m in sorted(graph) if (c := cycle_from(m, m, [m]))]
    assert not cycles, cycles[0]


def test_a_new_task_is_one_table_row(monkeypatch, tmp_path):
    from training import rotation
    from training.pretrain import pretrain
    from training.tasks import TASKS, TaskRow

    monkeypatch.setitem(TASKS, "rotation-copy", TaskRow(rotation.build, trains_layer4=False))
    recipe = resolve("rot-std-r18", ["--task=rotation-copy", "--width=0.0625", "--epochs=1", "--subset=32",
                                     "--batch_size=16", "--dataset=synthetic-cifar", "--progress=False",
                                     f"--out_dir={tmp_path}"])
    report = pretrain(recipe)
    assert report["task"] == "rotation-copy"
    meta = __import__("robustzoo").load_file(tmp_path).pretrained_meta
    assert meta["pretrained_modules"].endswith("layer3")  # the row says layer4 is not trained by it
