"""Registry schema (torchvision-style metadata validation), names, filters, suggestions."""

import dataclasses
import re

import pytest

import robustzoo
from robustzoo.errors import UnknownModelError
from robustzoo.models import create_model
from robustzoo.registry import REGISTRY, WeightSpec, list_models, model_info

PAPER_FAMILY = [f"{t}-{m}-{a}" for a in ("r18", "r50") for t in ("rot", "jig", "selfie") for m in ("std", "adv")]
PAPER_FAMILY += [f"ens-adv-{a}" for a in ("r18", "r50")] + [f"at-baseline-{a}" for a in ("r18", "r50")]
PAPER_FAMILY += [f"{t}-adv-aft-{a}" for a in ("r18", "r50") for t in ("rot", "jig", "selfie", "ens")]
PAPER_FAMILY += [f"ens3-aft-{a}" for a in ("r18", "r50")]


def test_every_paper_weight_is_registered():
    missing = sorted(set(PAPER_FAMILY) - set(REGISTRY))
    assert not missing, missing


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_schema(name):
    spec = REGISTRY[name]
    assert spec.name == name
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)+", name)
    assert spec.arch in ("resnet18", "resnet50v2", "ensemble")
    assert spec.kind in ("backbone", "classifier", "ensemble")
    assert spec.task in ("rotation", "jigsaw", "selfie", "ensemble", "none")
    assert spec.training in ("std", "adv")
    assert (spec.num_classes == 0) == (spec.kind == "backbone")
    assert spec.reproduce.startswith("python training/reproduce.py ")
    assert spec.recipe
    if spec.training == "adv" and spec.kind == "backbone":
        assert spec.pretrain_attack
    if spec.revision is not None:
        assert re.fullmatch(r"[0-9a-f]{40}", spec.revision)
    if spec.sha256 is not None:
        assert re.fullmatch(r"[0-9a-f]{64}", spec.sha256)
    for parent in spec.parents:
        assert parent in REGISTRY
    # measured and paper numbers are kept apart: paper numbers always name their source
    if spec.paper_metrics:
        assert "source" in spec.paper_metrics
    if spec.metrics:
        assert {"machine", "date"} <= set(spec.metrics), "measured metrics must say where and when"


@pytest.mark.parametrize("name", [n for n in sorted(REGISTRY) if REGISTRY[n].arch != "ensemble"])
def test_spec_builds_its_architecture(name):
    spec = REGISTRY[name]
    m = create_model(spec.arch, num_classes=spec.num_classes, in_chans=spec.input_size[0], width=spec.width)
    assert m.num_classes == spec.num_classes


def test_paper_metrics_only_on_paper_reported_models():
    assert model_info("ens3-aft-r50").paper_metrics["pgd20"] == 54.64
    assert model_info("at-baseline-r50").paper_metrics["clean"] == 84.72
    assert not model_info("rot-adv-r18").paper_metrics  # the paper has no ResNet-18


def test_spec_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        model_info("rot-adv-r18").sha256 = "0" * 64
    with pytest.raises(TypeError):
        REGISTRY["x"] = model_info("rot-adv-r18")


def test_unknown_name_suggests_close_names():
    with pytest.raises(UnknownModelError) as err:
        model_info("rot-adv-r81")
    assert "rot-adv-r18" in str(err.value) and "robustzoo list" in str(err.value)
    with pytest.raises(KeyError):  # also a KeyError for dict-like code
        model_info("nothing-like-it-at-all")


def test_name_normalisation():
    assert model_info("ROT_ADV_R18") is model_info("rot-adv-r18")


def test_list_models_filters():
    assert list_models("rot-*-r50") == ["rot-adv-aft-r50", "rot-adv-r50", "rot-std-r50"]
    assert set(list_models(task="jigsaw", arch="r18", dataset="cifar10")) == {"jig-std-r18", "jig-adv-r18",
                                                                              "jig-adv-aft-r18"}
    assert all(REGISTRY[n].dataset == "fashion-mnist" for n in list_models("*-fmnist"))
    assert all(REGISTRY[n].kind == "classifier" for n in list_models(kind="classifier"))
    assert list_models(dataset="imagenet") == []
    assert all(REGISTRY[n].published for n in list_models(published=True))
    assert list_models() == sorted(REGISTRY)


def test_top_level_exports():
    assert robustzoo.list_models is list_models and robustzoo.model_info is model_info
    assert robustzoo.WeightSpec is WeightSpec


def test_format_metrics_names_every_subset():
    from robustzoo.registry import format_metrics

    cls = {"clean": 70.68, "n": 10000, "pgd20": 57.1, "pgd20_n": 10000, "autoattack": 54.5, "autoattack_n": 200,
           "date": "2026-11-27"}
    assert format_metrics(cls) == "clean 70.68, PGD-20 57.10, AutoAttack 54.50 (first 200)"
    assert format_metrics({**cls, "pgd20_n": 2000}).startswith("clean 70.68, PGD-20 57.10 (first 2000), ")
    bb = {"linear_probe_clean": 81.7, "linear_probe_pgd20": 0.5, "n": 10000, "pgd20_n": 10000,
          "pretext_clean_rotation": 89.63, "pretext_score": 89.63}
    assert format_metrics(bb) == "linear probe clean 81.70, PGD-20 0.50; pretext clean rotation 89.63"
    assert format_metrics(model_info("ens3-aft-r50").paper_metrics) == (
        "clean 86.04, PGD-20 54.64, AA (RobustBench) 51.56")
    assert format_metrics({}) == "-" and format_metrics({"clean": True, "source": "x"}) == "-"
