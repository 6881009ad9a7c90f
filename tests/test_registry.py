"""The registry data file: every record validated (torchvision-style metadata test), names, filters, suggestions."""

import dataclasses
import json
import re
import sys

import pytest

import robustzoo
from robustzoo.errors import RobustZooError, UnknownModelError
from robustzoo.models import create_model
from robustzoo.registry import (
    ARCH_TAGS,
    REGISTRY,
    REGISTRY_FILE,
    TASK_TAGS,
    WeightSpec,
    dump_records,
    list_models,
    model_info,
    read_records,
)
from training.recipes import RECIPES

PAPER_FAMILY = [f"{t}-{m}-{a}" for a in ("r18", "r50") for t in ("rot", "jig", "selfie") for m in ("std", "adv")]
PAPER_FAMILY += [f"ens-adv-{a}" for a in ("r18", "r50")] + [f"at-baseline-{a}" for a in ("r18", "r50")]
PAPER_FAMILY += [f"{t}-adv-aft-{a}" for a in ("r18", "r50") for t in ("rot", "jig", "selfie", "ens")]
PAPER_FAMILY += [f"ens3-aft-{a}" for a in ("r18", "r50")]


def test_every_paper_weight_is_registered():
    missing = sorted(set(PAPER_FAMILY) - set(REGISTRY))
    assert not missing, missing


NAME = re.compile(r"(?:(?P<task>rot|jig|selfie|ens)-(?P<mode>std|adv)|at-baseline"
                  r"|(?P<ft>rot|jig|selfie|ens)-(?:std|adv)-aft|ens3-aft)-(?P<arch>r18|r50)(?P<zoo>-w(?P<stem>8|16)-fmnist)?")
HEX40, HEX64 = re.compile(r"[0-9a-f]{40}"), re.compile(r"[0-9a-f]{64}")
RECORDS = json.loads(REGISTRY_FILE.read_text())
sys.path.insert(0, str(REGISTRY_FILE.parents[2] / "benchmarks"))
MINI_CELLS = {c.key for c in __import__("mini_repro").all_cells(__import__("mini_repro").Plan())}


def test_the_registry_is_one_literal_data_file():
    assert [r["name"] for r in RECORDS] == sorted(REGISTRY)  # every record, sorted, nothing generated
    assert REGISTRY_FILE.read_text() == dump_records(REGISTRY)  # the layout the release step writes
    assert not (REGISTRY_FILE.parent / "zoo.json").exists()


@pytest.mark.parametrize("rec", RECORDS, ids=[r["name"] for r in RECORDS])
def test_record(rec):
    """Every record is complete and consistent with its name, its recipe, its parents and its files."""
    assert set(rec) == {f.name for f in dataclasses.fields(WeightSpec)}
    name = rec["name"]
    m = NAME.fullmatch(name)
    assert m, f"{name!r} does not follow the naming grammar"
    assert rec["arch"] == ("ensemble" if name.startswith("ens3-") else ARCH_TAGS[m["arch"]])
    task = m["task"] or m["ft"]
    assert rec["task"] == (TASK_TAGS[task] if task else "ensemble" if name.startswith("ens3-") else "none")
    assert rec["kind"] == ("backbone" if m["task"] else "ensemble" if name.startswith("ens3-") else "classifier")
    assert rec["training"] == (m["mode"] or "adv")
    assert (rec["num_classes"] == 0) == (rec["kind"] == "backbone")
    assert rec["dataset"] == ("fashion-mnist" if m["zoo"] else "cifar10")
    assert rec["input_size"] == ([1, 28, 28] if m["zoo"] else [3, 32, 32])
    assert rec["width"] == (int(m["stem"]) / 64 if m["zoo"] else 1.0)  # the name states the stem width
    if rec["training"] == "adv" and rec["kind"] == "backbone":
        assert rec["pretrain_attack"]
    # the threat model and fine-tuning defaults of the weight's dataset, pixel units
    assert set(rec["attack"]) == {"norm", "eps", "step", "steps"} and rec["attack"]["norm"] == "linf"
    assert rec["attack"]["eps"] == pytest.approx(0.1 if m["zoo"] else 8 / 255)
    assert {"mode", "eps", "step", "steps", "epochs"} <= set(rec["finetune_defaults"])
    # recipe and reproduce command
    if rec["reproduce"].startswith("python benchmarks/mini_repro.py cell "):  # a cell of the mini-reproduction
        assert rec["reproduce"].split()[3] == rec["recipe"] in MINI_CELLS and rec["embedded"]
    else:
        assert rec["recipe"] == name and name in RECIPES, f"no recipe named {name} in training/recipes.py"
        assert rec["reproduce"].startswith(f"python training/reproduce.py {name}")
        assert list(RECIPES[name].parents) == rec["parents"] or rec["embedded"]
    for parent in rec["parents"]:
        assert parent in REGISTRY
    # hex formats; published iff (revision and sha256) or (embedded and sha256)
    assert rec["revision"] is None or HEX40.fullmatch(rec["revision"])
    assert rec["sha256"] is None or HEX64.fullmatch(rec["sha256"])
    if rec["embedded"]:
        assert rec["revision"] is None and rec["sha256"] and rec["repo_id"] is None
        assert rec["filename"] == f"{name}.safetensors" and (REGISTRY_FILE.parent / rec["filename"]).is_file()
    else:
        assert (rec["revision"] is None) == (rec["sha256"] is None), "pin both the commit and the sha256, or neither"
        assert rec["repo_id"] and rec["repo_id"].count("/") == 1 and rec["filename"] == "model.safetensors"
    assert REGISTRY[name].published == (rec["sha256"] is not None)
    # measured and paper numbers are kept apart: paper numbers name their source, measured ones how/where/when
    if rec["paper_metrics"]:
        assert "source" in rec["paper_metrics"]
    if rec["metrics"]:
        assert {"how", "machine", "date"} <= set(rec["metrics"]), "measured metrics must say how, where and when"
    if REGISTRY[name].published:
        assert rec["metrics"] and rec["provenance"], "a published weight carries its measured metrics and provenance"
    assert rec["description"]


def test_embedded_hashes_are_the_shipped_ones():
    """The embedded files and their pinned sha256 did not change when the registry became data."""
    pinned = {"at-baseline-r18-w16-fmnist": "f5572b758c8318532295fe4579f50c077881f8d9555442cb4f48b2a6fc13fbd6"}
    if "rot-std-r18-w16-fmnist" in REGISTRY:  # until its width-8 successor is released
        pinned["rot-std-r18-w16-fmnist"] = "9bc7bb5adfe3e7dbfd7ca02a62575dfcf1051de995d45329ecd86153f02a7ca7"
    # the width-8 entries are byte copies of the mini-reproduction's files (checked in tests/test_zoo.py)
    w8 = {n: s.sha256 for n, s in REGISTRY.items() if "-w8-" in n}
    assert {n: s.sha256 for n, s in REGISTRY.items() if s.embedded} == {**pinned, **w8}


def test_retired_names_point_at_released_successors_and_raise_saying_so():
    from robustzoo.errors import RetiredModelError
    from robustzoo.registry import RETIRED

    assert {"rot-adv-r18-w16-fmnist", "jig-adv-r18-w16-fmnist"} <= set(RETIRED)
    for old, rec in RETIRED.items():
        assert old not in REGISTRY and REGISTRY[rec["successor"]].published and rec["why"].endswith(".")
        with pytest.raises(RetiredModelError, match=f"Load '{rec['successor']}' instead"):
            robustzoo.load(old.replace("-", "_").upper())  # any spelling model_info accepts
        with pytest.raises(UnknownModelError):  # still an UnknownModelError for code that catches that
            model_info(old)


@pytest.mark.parametrize("broken, message", [
    ({"metrics": None, "extra": 1}, "unknown fields"),
    ({"description": None}, "missing fields"),
])
def test_malformed_records_are_refused(tmp_path, broken, message):
    rec = dict(RECORDS[0])
    for key, value in broken.items():
        if value is None:
            rec.pop(key)
        else:
            rec[key] = value
    path = tmp_path / "registry.json"
    path.write_text(json.dumps([rec]))
    with pytest.raises(RobustZooError, match=message):
        read_records(path)
    path.write_text(json.dumps([RECORDS[0], RECORDS[0]]))
    with pytest.raises(RobustZooError, match="duplicate"):
        read_records(path)


def test_registry_file_can_be_replaced_by_a_copy(tmp_path):
    """``ROBUSTZOO_REGISTRY`` points the package at another file (how a release is tried before commit)."""
    import os
    import subprocess
    import sys

    spec = dataclasses.replace(REGISTRY["rot-adv-r18"], description="a staged copy")
    path = tmp_path / "registry.json"
    path.write_text(dump_records({**REGISTRY, spec.name: spec}))
    code = "import robustzoo; print(robustzoo.model_info('rot-adv-r18').description)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "ROBUSTZOO_REGISTRY": str(path)})
    assert out.stdout.strip() == "a staged copy"


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
