"""The embedded Fashion-MNIST zoo: every shipped weight loads offline, matches its hash and its numbers.

Tolerance: the registry's figures are measured on the full 10,000-image test set (the registry
record says how); here we re-measure on the embedded 2,000-image class-balanced test subset, whose sampling
error at ~80 % accuracy is about 0.9 points (1 sigma). We allow 3 points. With the real test set
installed (``dataset-fashion-mnist``), the classifiers of the mini-reproduction are re-measured on
all 10,000 images: clean and PGD-20 (slow tier) to within a few images.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch

import robustzoo
from robustzoo.fmnist import load_embedded
from robustzoo.registry import REGISTRY

ZOO = Path(robustzoo.__file__).resolve().parent / "zoo"
ENTRIES = [s.to_record() for s in REGISTRY.values() if s.embedded]
NAMES = [e["name"] for e in ENTRIES]
TOL = 3.0
REPRO = Path(__file__).resolve().parents[1] / "benchmarks" / "repro"
sys.path.insert(0, str(REPRO.parent))
from mini_release import zoo_entries  # noqa: E402
from mini_repro import Plan  # noqa: E402

# every entry of the mini-reproduction whose cell has finished is released (python benchmarks/mini_repro.py release)
EXPECTED = {"at-baseline-r18-w16-fmnist", *(name for name, e in zoo_entries(Plan()).items()
                                             if (REPRO / "cells" / f"{e['cell']}.json").exists())}
FROM_CELLS = [e["name"] for e in ENTRIES if "cell" in e["metrics"]]  # released by benchmarks/mini_repro.py release
FULL_TEST = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").exists()


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("ROBUSTZOO_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_embedded_zoo_complete_and_well_formed():
    assert EXPECTED <= set(NAMES), f"missing from the registry: {EXPECTED - set(NAMES)}"
    total = 0
    for e in ENTRIES:
        stem = int(e["name"].split("-w")[-1].split("-")[0])
        assert e["dataset"] == "fashion-mnist" and e["input_size"] == [1, 28, 28] and e["width"] == stem / 64
        assert e["reproduce"].startswith((f"python training/reproduce.py {e['name']}",
                                          "python benchmarks/mini_repro.py cell ")) and e["metrics"]["date"]
        assert REGISTRY[e["name"]].embedded and REGISTRY[e["name"]].published
        total += (ZOO / e["filename"]).stat().st_size
    data = sum(p.stat().st_size for p in (ZOO.parent / "_data").iterdir())
    assert total + data < 20e6  # embedded weights and data together: they ship inside the wheel


def test_registry_figures_are_the_ones_the_benchmarks_measured(tmp_path):
    """The release step copies benchmarks/zoo_metrics.json (train_zoo.py, aa_chunks.py) for the same file,
    or, for the mini-reproduction's entries, what its cells measured on that file."""
    import mini_release
    from mini_repro import OUT

    entries = zoo_entries(Plan())
    for name in FROM_CELLS:
        staged = mini_release.stage(name, entries[name], Plan(), OUT, tmp_path)
        assert hashlib.sha256((staged / "model.safetensors").read_bytes()).hexdigest() == REGISTRY[name].sha256
        assert json.loads((staged / "metrics.json").read_text()) == REGISTRY[name].metrics, \
            f"{name}: cells changed since the release; run python benchmarks/mini_repro.py release"
    measured = json.loads((ZOO.parents[1] / "benchmarks" / "zoo_metrics.json").read_text())
    for name in set(NAMES) - set(FROM_CELLS):
        assert measured[name]["sha256"] == REGISTRY[name].sha256, f"{name}: figures of another file"
        assert measured[name]["metrics"] == REGISTRY[name].metrics, f"{name}: run training/publish.py --embed"


def test_seed0_classifiers_carry_autoattack_on_the_fixed_subset_once_its_chunks_are_done():
    """Every released classifier of the reproduction whose arm has all its AutoAttack chunks (the first aa_n test
    images) shows that figure with its 95 % Wilson interval; with every chunk done, that is all of them."""
    from robustzoo.card import wilson

    plan, entries = Plan(), zoo_entries(Plan())
    checked = 0
    for name in FROM_CELLS:
        e = entries[name]
        if e["kind"] == "backbone":
            continue
        chunks = [REPRO / "cells" / f"aa-{e['arm']}-s0-{a:05d}-{a + plan.aa_chunk:05d}.json"
                  for a in range(0, plan.aa_n, plan.aa_chunk)]
        if not all(c.exists() for c in chunks):
            continue
        m = REGISTRY[name].metrics
        robust = sum(json.loads(c.read_text())["robust"] for c in chunks)
        assert m["autoattack_n"] == plan.aa_n >= 500 and m["autoattack"] == round(100 * robust / plan.aa_n, 2)
        assert m["autoattack_ci95"] == pytest.approx(wilson(robust, plan.aa_n), abs=0.01)
        checked += 1
    assert checked >= 3


@pytest.mark.parametrize("name", NAMES)
def test_embedded_weight_loads_offline_and_matches_hash(name):
    spec = REGISTRY[name]
    path = ZOO / spec.filename
    assert hashlib.sha256(path.read_bytes()).hexdigest() == spec.sha256
    model = robustzoo.load(name)
    configs = model.config["members"] if spec.kind == "ensemble" else [model.config]  # ens3: the 3 members'
    assert all(c["in_chans"] == 1 and c["width"] == spec.width for c in configs)
    assert model.num_classes == spec.num_classes
    with torch.no_grad():
        out = model(torch.rand(4, 1, 28, 28))
    assert torch.isfinite(out).all()
    assert out.shape == ((4, model.num_features) if spec.kind == "backbone" else (4, 10))


@pytest.fixture(scope="module")
def test_split():
    return load_embedded("test")


@pytest.mark.parametrize("name", [e["name"] for e in ENTRIES if e["kind"] != "backbone"])
def test_classifier_clean_accuracy_matches_registry(name, test_split):
    torch.set_num_threads(2)
    x, y = test_split
    model = robustzoo.load(name)
    with torch.no_grad():
        acc = 100.0 * torch.cat([model(b).argmax(1) for b in x.split(500)]).eq(y).float().mean().item()
    reported = REGISTRY[name].metrics["clean"]
    assert abs(acc - reported) <= TOL, f"{name}: {acc:.2f} on the embedded split vs {reported} in the registry"


@pytest.mark.skipif(not FULL_TEST, reason="needs the dataset-fashion-mnist package")
@pytest.mark.parametrize("name", [n for n in FROM_CELLS if REGISTRY[n].kind != "backbone"])
def test_reproduction_classifiers_match_their_registry_numbers(name):
    """Loaded by name, offline: clean accuracy on all 10,000 test images as in the registry; the registry's PGD-20
    is the mean of the cell's per-image outcomes; and (slow tier) PGD-20 with the cell's seeded starts on the first
    1,000 images reproduces those outcomes (a few images of slack for float reductions that differ with the thread
    count and memory layout)."""
    from robustzoo.fmnist import load_fashion_mnist

    torch.set_num_threads(2)
    spec = REGISTRY[name]
    cell = json.loads((REPRO / "cells" / f"{spec.metrics['cell']}.json").read_text())
    outcome = [c == "1" for c in cell["pgd20_per_image"]]
    assert spec.metrics["pgd20"] == round(100 * sum(outcome) / len(outcome), 2) and len(outcome) == 10000
    x, y = load_fashion_mnist("test")
    model = robustzoo.load(name)
    res = robustzoo.evaluate(model, (x, y), attacks=("clean",), progress=False)
    assert res.n == spec.metrics["n"] == 10000 and abs(res.accuracy["clean"] - spec.metrics["clean"]) <= 0.02


@pytest.mark.slow  # ~10 s per classifier
@pytest.mark.skipif(not FULL_TEST, reason="needs the dataset-fashion-mnist package")
@pytest.mark.parametrize("name", [n for n in FROM_CELLS if REGISTRY[n].kind != "backbone"])
def test_reproduction_classifiers_pgd20_outcomes_per_image(name):
    from robustzoo.fmnist import load_fashion_mnist

    torch.set_num_threads(2)
    spec = REGISTRY[name]
    cell = json.loads((REPRO / "cells" / f"{spec.metrics['cell']}.json").read_text())
    x, y = load_fashion_mnist("test")
    res = robustzoo.evaluate(robustzoo.load(name), (x[:1000], y[:1000]), eps=0.1, alpha=0.025, attacks=("pgd20",),
                             seed=cell["seed"], progress=False)
    got = res.correct["pgd20"].tolist()
    differ = sum(g != (c == "1") for g, c in zip(got, cell["pgd20_per_image"][:1000]))
    assert differ <= 5, f"{name}: {differ} of the first 1,000 images changed their PGD-20 outcome"
