"""benchmarks/mini_repro.py: statistics (paired t, verdicts, Wilson), merge on synthetic cells, one real cell."""

from __future__ import annotations

import json
import math
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import mini_repro  # noqa: E402
from mini_report import build, merge  # noqa: E402
from mini_stats import aa_records, epochs_to_reach, paired_t, t_quantile, verdict, wilson  # noqa: E402


@pytest.mark.parametrize("p,df,want", [(0.975, 1, 12.706204736), (0.975, 7, 2.364624252), (0.975, 30, 2.042272456),
                                       (0.95, 5, 2.015048373)])
def test_t_quantile_matches_tables(p, df, want):
    assert t_quantile(p, df) == pytest.approx(want, abs=1e-6)


def test_paired_t_interval():
    m, lo, hi = paired_t([1.0, 2.0, 3.0, 4.0])
    half = 3.182446305 * statistics.stdev([1, 2, 3, 4]) / 2
    assert (m, lo, hi) == pytest.approx((2.5, 2.5 - half, 2.5 + half), abs=1e-6)
    assert paired_t([5.0])[1:] == (-math.inf, math.inf)  # one pair: nothing can be concluded


def test_verdicts_read_from_the_interval():
    assert verdict(0.1, 3.0) == "holds"
    assert verdict(-3.0, -0.1) == "reversed"
    assert verdict(-1.0, 1.0) == "inconclusive"
    assert verdict(-3.0, -0.5, lower_is_better=True) == "holds"  # fewer epochs
    assert verdict(0.5, 3.0, lower_is_better=True) == "reversed"


def test_wilson_interval():
    assert wilson(50, 100) == pytest.approx((40.383, 59.617), abs=1e-3)
    lo, hi = wilson(0, 4)
    assert lo == 0.0 and hi == pytest.approx(48.99, abs=0.01)
    assert wilson(10, 10)[1] == pytest.approx(100.0)


def test_autoattack_is_set_beside_pgd20_on_the_same_images():
    chunks = [{"arm": "a", "seed": 0, "start": 0, "end": 4, "robust": 2, "clean": 4, "robust_per_image": "1100",
               "recipe": {"classifier_cell": "ft-a"}},
              {"arm": "a", "seed": 0, "start": 4, "end": 6, "robust": 2, "clean": 2, "robust_per_image": "11",
               "recipe": {"classifier_cell": "ft-a"}}]
    (rec,) = aa_records(chunks, {"ft-a": {"pgd20_per_image": "1010110000"}})
    assert (rec["n"], rec["autoattack"], rec["pgd20_same_images"]) == (6, 66.67, 66.67)
    assert rec["aa_robust_pgd20_fooled"] == 1  # image 1: robust to AutoAttack, fooled by PGD-20
    (rec,) = aa_records(chunks)  # no classifier records: the comparison is left out, not guessed
    assert rec["pgd20_same_images"] is None and rec["aa_robust_pgd20_fooled"] is None


def test_epochs_to_reach():
    hist = [{"val_robust": v} for v in (10.0, 20.0, 30.0)]
    assert epochs_to_reach(hist, 20.0) == 2
    assert epochs_to_reach(hist, 31.0) is None


PLAN = replace(mini_repro.SMOKE, ft_seeds=tuple(range(6)), pt_seeds=(0, 1), ft_epochs=3, aa_n=100, aa_chunk=50)
SHIFT = {"scratch": 0.0, "rot-std": 0.5, "rot-adv": 2.0, "jig-adv": -3.0, "ens-adv": 0.0, "ens-ft": 1.0,
         "rot-adv-20k": 1.0}


MODE_PGD = {("rot-std", "partial"): 10.0, ("rot-adv", "partial"): 25.0, ("rot-std", "full"): 1.0,
            ("rot-adv", "full"): 2.0}  # PGD-20 of the standard-loss modes (seed-independent + noise)


def _write_synthetic(out: Path, seeds=range(6), drop: tuple = (), plan=PLAN) -> None:
    """Cells whose PGD-20 is a per-seed base plus a per-arm shift (+ small noise; ens-adv: +-2 alternating)."""
    cells = out / "cells"
    cells.mkdir(parents=True, exist_ok=True)
    for cell in mini_repro.all_cells(plan):
        if cell.key in drop or (cell.seed is not None and cell.seed not in seeds):
            continue
        if cell.kind == "pretrain":
            rec = {"arm": cell.arm, "pretrain_seed": cell.pretrain_seed, "pool": 60000, "passes": 2, "best_epoch": 1,
                   "final_val_score": 0.5, "curve": [{"val_score": 0.4}, {"val_score": 0.5}], "test": {"t": 0.5},
                   "cpu_seconds_total": 3600.0, "overrides": {}}
        elif cell.kind == "aa":
            rec = {"arm": cell.arm, "seed": 0, "start": cell.start, "end": cell.end, "robust": 20, "clean": 40}
        else:
            s = cell.seed
            noise = 0.1 * ((s * 7 + len(cell.arm)) % 3 - 1)
            shift = (2.0 if s % 2 else -2.0) if cell.arm == "ens-adv" else SHIFT[cell.arm]
            more = cell.labels not in (0, plan.labels)  # the larger budget: +30 for every arm, rot-adv gains 1
            pgd = 40.0 + s + shift + noise + (30.0 - (1.0 if cell.arm == "rot-adv" else 0.0) if more else 0.0)
            hist = [{"val_robust": pgd - 4 + k * 2, "val_clean": 70.0} for k in range(3)]  # reaches pgd at epoch 3
            if cell.arm == "rot-adv":  # reaches scratch's final value one epoch earlier
                hist = [{"val_robust": pgd - 2 + k, "val_clean": 70.0} for k in range(3)]
            clean = 70.0
            if cell.mode != "adv-full":
                pgd, clean = MODE_PGD[cell.arm, cell.mode] + noise, (85.0 if cell.mode == "full" else 80.0) + noise
            rec = {"arm": cell.arm, "pretrain_seed": cell.pretrain_seed, "seed": s,
                   "labels": cell.labels or plan.labels, "mode": cell.mode, "clean": clean, "pgd20": pgd, "test_n": 64,
                   "history": hist}
        rec.update(kind=cell.kind, key=cell.key, commit="abc", recipe={"r": 1}, cpu_seconds=1.0)
        (cells / f"{cell.key}.json").write_text(json.dumps(rec))


def test_merge_verdicts_on_synthetic_cells(tmp_path):
    _write_synthetic(tmp_path)
    res = merge(PLAN, tmp_path, tmp_path / "mini_repro.json")
    comp = {c["comparison"]: c for c in res["comparisons"]}
    assert comp["rot-adv - scratch"]["verdict"] == "holds"
    assert comp["jig-adv - scratch"]["verdict"] == "reversed"
    assert comp["ens-adv - scratch"]["verdict"] == "inconclusive"
    assert comp["epochs: rot-adv - scratch"]["verdict"] == "holds"
    assert comp["ens-ft - best member"]["n_pairs"] == 6
    # which pretraining seeds an interval samples (rot-std has one backbone, the others alternate two)
    assert comp["rot-adv - scratch"]["pretrain_seeds"] == [0, 1] and comp["rot-std - scratch"]["pretrain_seeds"] == [0]
    assert not res["partial"] and (tmp_path / "mini_repro.png").stat().st_size > 1000
    # hours: a pretraining cell by the summed time of its passes (1 h here), not its last process's counter (1 s)
    kinds = [c.kind for c in mini_repro.all_cells(PLAN)]
    n_pt = kinds.count("pretrain")
    assert res["thread_hours_in_cells"] == round(n_pt + (len(kinds) - n_pt) / 3600, 2)
    # the JSON alone lets anyone recompute every interval
    data = json.loads((tmp_path / "mini_repro.json").read_text())
    cells = {(c["arm"], c["seed"]): c for c in data["cells"]}
    for key in ("seed", "pretrain_seed", "labels", "mode", "clean", "pgd20", "epochs_to_target", "commit", "recipe"):
        assert key in data["cells"][0]
    diffs = [cells["rot-adv", s]["pgd20"] - cells["scratch", s]["pgd20"] for s in range(6)]
    m, lo, hi = paired_t(diffs)
    assert (comp["rot-adv - scratch"]["ci_low"], comp["rot-adv - scratch"]["ci_high"]) == pytest.approx(
        (lo, hi), abs=1e-3)
    aa = {a["arm"]: a for a in data["autoattack"]}
    assert aa["scratch"]["n"] == 100 and aa["scratch"]["autoattack"] == 40.0


def test_merge_marks_partial_results(tmp_path):
    _write_synthetic(tmp_path, seeds=range(3), drop=("pt-ens-adv-p1",))
    res = build(PLAN, tmp_path)
    assert res["partial"] and res["cells_done"] < res["cells_planned"]
    comp = {c["comparison"]: c for c in res["comparisons"]}
    assert comp["rot-adv - scratch"]["n_pairs"] == 3
    from mini_report import markdown

    assert markdown(res).startswith("**PARTIAL")


def test_secondary_modes_are_compared_apart_from_the_claims(tmp_path):
    plan = replace(PLAN, mode_seeds=(0, 1, 2))
    _write_synthetic(tmp_path, plan=plan)
    res = build(plan, tmp_path)
    comp = {c["comparison"]: c for c in res["comparisons"]}
    assert comp["rot-adv - scratch"]["n_pairs"] == 6  # the claims see adversarial full fine-tuning only
    assert comp["rot-adv - scratch"]["diffs"] == pytest.approx([2.0] * 6, abs=0.25)  # not the modes' 25 or 2
    partial = comp["partial: rot-adv - rot-std"]
    assert partial["n_pairs"] == 3 and partial["verdict"] == "holds" and partial["diff_mean"] == pytest.approx(15)
    assert comp["rot-adv: adv-full - full"]["verdict"] == "holds"
    assert comp["clean: rot-adv full - partial"]["metric"] == "clean"
    assert comp["clean: rot-adv full - partial"]["verdict"] == "holds"
    assert {c["mode"] for c in res["cells"]} == {"adv-full", "partial", "full"}
    from mini_report import markdown

    md = markdown(res)
    assert "| rot-adv | partial | 3 |" in md and "Not run, for the budget: a second" in md


def test_a_larger_label_budget_is_compared_apart_from_the_claims(tmp_path):
    plan = replace(PLAN, more_labels_seeds=(0, 1, 2))
    keys = [c.key for c in mini_repro.all_cells(plan) if c.labels]
    assert keys == [f"ft-{a}-s{s}-n128" if a == "scratch" else f"ft-{a}-p{s % 2}-s{s}-n128"
                    for s in range(3) for a in ("scratch", "rot-adv")]
    _write_synthetic(tmp_path, plan=plan)
    res = build(plan, tmp_path)
    comp = {c["comparison"]: c for c in res["comparisons"]}
    # the main claims see the main budget only (the larger one adds 30 points to every arm)
    assert comp["rot-adv - scratch"]["n_pairs"] == 6
    assert comp["rot-adv - scratch"]["diffs"] == pytest.approx([2.0] * 6, abs=0.25)
    # claim 2's target is scratch at the same seed and budget (scratch at 128 labels is 29 points higher than
    # rot-adv at 64, so a target keyed by seed alone would censor every main-budget rot-adv cell)
    ett = {(c["labels"], c["seed"]): c["epochs_to_target"] for c in res["cells"] if c["arm"] == "rot-adv"}
    assert ett == {**{(64, s): 1 for s in range(6)}, **{(128, s): 2 for s in range(3)}}
    more = comp["rot-adv - scratch, 128 labels"]
    assert more["n_pairs"] == 3 and more["diffs"] == pytest.approx([1.0] * 3, abs=0.25)
    assert comp["epochs: rot-adv - scratch, 128 labels"]["n_pairs"] == 3
    from mini_report import markdown

    md = markdown(res)
    assert "| rot-adv | 128 | 3 |" in md and "A second label budget, 128 labels" in md
    assert "| rot-adv | 6 |" in md  # the main table: the main budget's 6 seeds only


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").exists(),
                    reason="needs the dataset-fashion-mnist package")
def test_a_larger_budget_cell_trains_on_its_labels_and_keeps_no_model(tmp_path, monkeypatch):
    """models/ holds the main budget's classifiers (zoo entries, AutoAttack, ensemble members) only."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    plan = replace(mini_repro.SMOKE, more_labels_seeds=(0,), test_n=16)
    mini_repro.run_one(plan, tmp_path, "ft-scratch-s0-n128")
    cell = json.loads((tmp_path / "cells" / "ft-scratch-s0-n128.json").read_text())
    assert cell["labels"] == 128 and "model" not in cell and not (tmp_path / "models").exists()
    assert (cell["recipe"]["finetune"]["n_train"], cell["recipe"]["finetune"]["n_val"]) == (128, plan.val_labels)


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").exists(),
                    reason="needs the dataset-fashion-mnist package")
def test_the_larger_budget_contains_the_smaller_and_keeps_validation_apart():
    import torch
    from mini_cells import labeled_split

    plan = replace(mini_repro.SMOKE, labels=50, val_labels=20)
    (xa, _), (va, _) = labeled_split(plan, 3)
    (xb, _), (vb, _) = labeled_split(plan, 3, 200)
    assert len(xa) == 50 and len(xb) == 200 and len(vb) == 20
    assert torch.equal(xb[:50], xa)
    rows = {tuple(r.flatten().tolist()) for r in xb}
    assert not any(tuple(r.flatten().tolist()) in rows for r in vb)


def test_pairing_uses_the_same_seed_and_alternates_backbones():
    cells = [c for c in mini_repro.all_cells(mini_repro.Plan()) if c.kind == "finetune" and c.mode == "adv-full"
             and not c.labels]
    assert len(cells) == 6 * 8  # 5 arms and the pool control
    assert {c.pretrain_seed for c in cells if c.arm == "rot-adv"} == {0, 1}
    assert all(c.deps == (f"pt-{c.arm}-p{c.pretrain_seed}",) for c in cells if c.arm != "scratch")
    # the pool control pretrains rotation on exactly the ensemble's images, passes and schedule
    for pseed in (0, 1):
        control = mini_repro.pretrain_overrides(mini_repro.Plan(), mini_repro.POOL_CONTROL, pseed, Path("x"))
        ens = mini_repro.pretrain_overrides(mini_repro.Plan(), "ens-adv", pseed, Path("x"))
        assert control == ens and control["subset"] == 20000
    assert [c.arm for c in mini_repro.all_cells(mini_repro.Plan())][-10:] == [mini_repro.POOL_CONTROL] * 10


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").exists(),
                    reason="needs the dataset-fashion-mnist package")
def test_one_real_cell_end_to_end(tmp_path, monkeypatch):
    """One scratch fine-tuning cell of the smoke plan, through the queue, then the merge."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert mini_repro.work(mini_repro.SMOKE, tmp_path, 0, max_cells=1, kinds=("finetune",)) == 1
    cell = json.loads((tmp_path / "cells" / "ft-scratch-s0-n64.json").read_text())
    assert cell["test_n"] == 64 and len(cell["pgd20_per_image"]) == 64 and cell["commit"]
    assert 0 <= cell["pgd20"] <= cell["clean"] <= 100
    assert (tmp_path / "models" / "scratch-s0-n64.safetensors").exists()
    assert mini_repro.work(mini_repro.SMOKE, tmp_path, 0, max_cells=1, kinds=("finetune",)) == 0  # nothing ready
    res = build(mini_repro.SMOKE, tmp_path)
    assert res["partial"] and res["cells"][0]["epochs_to_target"] is not None


def test_results_section_keeps_the_hand_written_plan(tmp_path):
    from mini_report import SECTION, update_results_section

    doc = tmp_path / "RESULTS.md"
    doc.write_text(f"# R\n## Mini\n{SECTION}\nold table\n\n<!-- mini_repro plan -->\nthe plan\n## Next\nkeep\n")
    update_results_section("new table", doc)
    text = doc.read_text()
    assert "new table" in text and "old table" not in text
    assert "<!-- mini_repro plan -->\nthe plan\n## Next\nkeep" in text


def test_a_failing_cell_is_recorded_and_skipped(tmp_path, monkeypatch):
    calls = []

    def boom(cell, plan, out):
        calls.append(cell.key)
        raise RuntimeError("disk full")

    monkeypatch.setattr(mini_repro, "run_cell", boom)
    assert mini_repro.work(mini_repro.SMOKE, tmp_path, 0, kinds=("finetune",)) == 0
    assert calls == ["ft-scratch-s0-n64"]  # the other cells wait on pretraining; nothing else to take
    assert "disk full" in (tmp_path / "errors" / "ft-scratch-s0-n64.txt").read_text()
    assert any("ft-scratch-s0-n64" in r and "FAILED" in r for r in mini_repro.status(mini_repro.SMOKE, tmp_path))


def test_a_cell_names_the_commit_its_worker_started_from(tmp_path, monkeypatch):
    """A checkout edited while a cell runs (for hours) must not relabel the code that ran it."""
    import training.checkpoint

    heads = iter(["abc (at start)", "def-dirty (edited later)"])
    monkeypatch.setattr(training.checkpoint, "git_commit", lambda: next(heads))
    mini_repro.commit.cache_clear()
    monkeypatch.setattr(mini_repro, "run_cell",
                        lambda cell, plan, out: {"kind": cell.kind, "commit": mini_repro.commit()})
    try:
        assert mini_repro.work(mini_repro.SMOKE, tmp_path, 0, max_cells=2) == 2
    finally:
        mini_repro.commit.cache_clear()
    cells = [json.loads(f.read_text()) for f in (tmp_path / "cells").glob("*.json")]
    assert len(cells) == 2 and {c["commit"] for c in cells} == {"abc (at start)"}


def test_the_w8_recipes_are_the_pretraining_of_the_reproduction(tmp_path):
    """``training/reproduce.py {arm}-r18-w8-fmnist`` reruns exactly the pretraining cell of seed 0."""
    from training.recipes import RECIPES, resolve

    for arm, base in mini_repro.PT_RECIPE.items():
        if arm == mini_repro.POOL_CONTROL:  # a control of the experiment, not a published recipe
            continue
        ran = resolve(base, mini_repro.pretrain_overrides(mini_repro.Plan(), arm, 0, tmp_path))
        assert replace(RECIPES[f"{base}-w8-fmnist"], name=base, out_dir=str(tmp_path), progress=False) == ran


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").exists(),
                    reason="needs the dataset-fashion-mnist package")
def test_cell_command_then_release_into_a_staged_registry(tmp_path, monkeypatch):
    """``cell KEY`` runs a fine-tuning cell and the pretraining it needs; ``release`` turns both into
    embedded entries of a registry copy (the backbone retiring its -w16- name), idempotently; a fresh
    process loads the classifier offline and measures the registry's clean accuracy on its file."""
    import shutil

    from mini_release import release_zoo

    from robustzoo.registry import REGISTRY_FILE, read_records

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out, reg = tmp_path / "repro", tmp_path / "zoo" / "registry.json"
    mini_repro.run_one(mini_repro.SMOKE, out, "ft-rot-adv-p0-s0-n64")
    assert {p.name for p in (out / "cells").iterdir()} == {"pt-rot-adv-p0.json", "ft-rot-adv-p0-s0-n64.json"}
    reg.parent.mkdir()
    old = "rot-adv-r18-w16-fmnist"  # the name the smoke backbone retires, staged from any embedded record
    records = [r for r in json.loads(REGISTRY_FILE.read_text()) if r["name"] != old]
    donor = next(r for r in records if r["embedded"])
    shutil.copyfile(REGISTRY_FILE.parent / donor["filename"], reg.parent / f"{old}.safetensors")
    reg.write_text(json.dumps([*records, {**donor, "name": old, "filename": f"{old}.safetensors"}]))
    released = release_zoo(mini_repro.SMOKE, out, registry=str(reg))
    assert released == ["rot-adv-r18-w4-fmnist", "rot-adv-aft-r18-w4-fmnist"]
    specs = read_records(reg)
    aft = specs["rot-adv-aft-r18-w4-fmnist"]
    assert aft.parents == ("rot-adv-r18-w4-fmnist",) and specs["rot-adv-r18-w4-fmnist"].embedded
    assert old not in specs and not (reg.parent / f"{old}.safetensors").exists()
    assert json.loads((reg.parent / "retired.json").read_text())[old]["successor"] == "rot-adv-r18-w4-fmnist"
    assert aft.reproduce == "python benchmarks/mini_repro.py cell ft-rot-adv-p0-s0-n64 --out runs/repro"
    assert str(tmp_path) not in reg.read_text()  # no machine's paths in what users read
    before = reg.read_text()
    release_zoo(mini_repro.SMOKE, out, registry=str(reg))
    assert reg.read_text() == before
    got = _clean_in_fresh_process(reg, "rot-adv-aft-r18-w4-fmnist", 64)
    assert got[1] == pytest.approx(aft.metrics["clean"], abs=0.005)  # the registry keeps 2 decimals
    # AutoAttack chunks of the released classifier are welcome (the backbone of the same arm ignores them) ...
    from robustzoo._download import file_sha256

    chunk = {"kind": "aa", "arm": "rot-adv", "key": "aa-rot-adv-s0-00000-00002", "start": 0, "end": 2, "robust": 1,
             "clean": 2, "seed": 0, "date": "2026-12-07",
             "sha256": file_sha256(out / "models" / "rot-adv-s0-n64.safetensors")}
    (out / "cells" / "aa-rot-adv-s0-00000-00002.json").write_text(json.dumps(chunk))
    release_zoo(mini_repro.SMOKE, out, registry=str(reg))
    # ... but one of another file than the one released stops the release, naming the entry and the chunk
    (out / "cells" / "aa-rot-adv-s0-00000-00002.json").write_text(json.dumps({**chunk, "sha256": "0" * 64}))
    with pytest.raises(SystemExit, match="rot-adv-aft-r18-w4-fmnist: AutoAttack cells aa-rot-adv-s0-00000-00002 "
                                         "attacked another file"):
        release_zoo(mini_repro.SMOKE, out, registry=str(reg))


def test_backbones_carry_the_reproductions_interval_versus_scratch(tmp_path):
    """What the demo quotes: the paired comparison arm - scratch, recomputed from the cells at release time."""
    from mini_release import versus_scratch

    _write_synthetic(tmp_path)
    rep = versus_scratch("rot-adv", PLAN, tmp_path)
    assert rep["n_pairs"] == 6 and rep["verdict"] == "holds" and rep["ci_low"] > 0 and not rep["partial"]
    assert "benchmarks/mini_repro.py" in rep["setting"]
    assert versus_scratch("rot-adv", PLAN, tmp_path / "nothing") is None


def test_the_committed_results_are_what_the_committed_cells_give():
    """benchmarks/mini_repro.json is the merge of benchmarks/repro/cells (run merge after adding cells), and
    every claim-1 interval in it is recomputed from its own cell records with the paired t."""
    committed = json.loads((Path(mini_repro.ROOT) / "benchmarks" / "mini_repro.json").read_text())
    fresh = build(mini_repro.Plan(), mini_repro.OUT)
    assert fresh["cells_done"] == committed["cells_done"], "new cells: run python benchmarks/mini_repro.py merge"
    assert fresh["cells"] == committed["cells"] and fresh["comparisons"] == committed["comparisons"]
    assert fresh["autoattack"] == committed["autoattack"]
    for aa in committed["autoattack"]:  # AutoAttack contains a stronger PGD: it may not beat PGD-20's robustness
        assert aa["pgd20_same_images"] is not None, aa["arm"]
        assert aa["autoattack"] <= aa["pgd20_same_images"] and aa["aa_robust_pgd20_fooled"] == 0, aa
    pgd = {(c["arm"], c["seed"], c["labels"]): c["pgd20"] for c in committed["cells"] if c["mode"] == "adv-full"}
    for comp in committed["comparisons"]:
        arm, _, base = comp["comparison"].partition(" - ")
        base, _, budget = base.partition(", ")  # "scratch", or "scratch, 10,000 labels" for the larger budget
        if base != "scratch" or ":" in arm or comp["n_pairs"] < 2:  # claim 1 (not epochs:, table: rows)
            continue
        n = int(budget.split()[0].replace(",", "")) if budget else committed["plan"]["labels"]
        diffs = [pgd[arm, s, n] - pgd["scratch", s, n] for (a, s, k) in pgd
                 if a == arm and k == n and ("scratch", s, n) in pgd]
        assert len(diffs) == comp["n_pairs"]
        assert paired_t(diffs)[1:] == pytest.approx((comp["ci_low"], comp["ci_high"]), abs=1e-3)


# two-sided 95 % Student-t quantiles, df 1-10 (any table): the recomputation below uses no code of mini_stats
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def _pairs_from_the_json(name: str, cells: list[dict], labels: int) -> tuple[list, str]:
    """The (arm, base) record pairs a comparison name stands for, from the published cell records alone."""
    name, _, budget = name.partition(", ")
    n = int(budget.split()[0].replace(",", "")) if budget else labels
    metric = "epochs_to_target" if name.startswith("epochs: ") else "clean" if name.startswith("clean: ") else "pgd20"
    mode = "adv-full"
    if name.startswith(("partial: ", "full: ")):
        mode, _, name = name.partition(": ")
    name = name.removeprefix("epochs: ").removeprefix("clean: ")
    by = {(c["arm"], c["mode"], c["seed"]): c for c in cells if c["labels"] == n}
    seeds = sorted({c["seed"] for c in cells if c["labels"] == n})
    best_of = {"best single pretext": ("rot-adv", "jig-adv"), "best member": ("rot-adv", "jig-adv", "ens-adv")}
    pairs = []
    for s in seeds:
        if name == "rot-adv: adv-full - full":
            a, b = by.get(("rot-adv", "adv-full", s)), by.get(("rot-adv", "full", s))
        elif name == "rot-adv full - partial":
            a, b = by.get(("rot-adv", "full", s)), by.get(("rot-adv", "partial", s))
        else:
            arm, base = name.split(" - ")
            a = by.get((arm, mode, s))
            if base in best_of:  # picked per seed on validation robust accuracy (ties: the name that sorts last)
                got = [by.get((m, "adv-full", s)) for m in best_of[base]]
                b = None if None in got else max(got, key=lambda c: (max(c["val_robust_curve"]), c["arm"]))
            else:
                b = by.get((base, mode, s))
        if a is not None and b is not None:
            pairs.append((a, b))
    return pairs, metric


def recompute_every_interval(res: dict) -> int:
    """The issue's promise: anyone can recompute every interval from the JSON. Claim 2's epochs come from the
    validation curves (scratch's final value at the same seed and budget is the target; never reached =
    epochs + 1), claim 3's best arm from validation, the t interval from a printed table, AutoAttack's
    Wilson interval from its counts; all must match what the merge wrote. Returns how many were checked."""
    cells, labels, epochs = res["cells"], res["plan"]["labels"], res["plan"]["ft_epochs"]
    target = {(c["seed"], c["labels"]): c["val_robust_curve"][-1] for c in cells
              if c["arm"] == "scratch" and c["mode"] == "adv-full"}
    for c in cells:
        if c["mode"] == "adv-full" and c["val_robust_curve"] and (c["seed"], c["labels"]) in target:
            reached = [i + 1 for i, v in enumerate(c["val_robust_curve"]) if v >= target[c["seed"], c["labels"]]]
            assert c["epochs_to_target"] == (reached[0] if reached else epochs + 1), c["cell"]
    checked = 0
    for comp in res["comparisons"]:
        pairs, metric = _pairs_from_the_json(comp["comparison"], cells, labels)
        diffs = [a[metric] - b[metric] for a, b in pairs]
        assert (comp["metric"], comp["n_pairs"], comp["seeds"]) == (metric, len(diffs), [a["seed"] for a, _ in pairs])
        if len(diffs) < 2:
            continue
        m = statistics.fmean(diffs)
        half = T975[len(diffs) - 1] * statistics.stdev(diffs) / math.sqrt(len(diffs))
        assert comp["diff_mean"] == pytest.approx(m, abs=1e-3), comp["comparison"]
        assert (comp["ci_low"], comp["ci_high"]) == pytest.approx((m - half, m + half), abs=2e-3), comp["comparison"]
        lo, hi = (-(m + half), -(m - half)) if comp["lower_is_better"] else (m - half, m + half)
        assert comp["verdict"] == ("holds" if lo > 0 else "reversed" if hi < 0 else "inconclusive")
        checked += 1
    for aa in res["autoattack"]:
        z, n, k = 1.959964, aa["n"], aa["robust"]
        p, d = k / n, 1 + z * z / n
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
        assert (aa["wilson_low"], aa["wilson_high"]) == pytest.approx(
            (100 * ((p + z * z / (2 * n)) / d - half), 100 * ((p + z * z / (2 * n)) / d + half)), abs=0.01)
    return checked


def test_every_kind_of_comparison_is_recomputed_from_the_json_of_a_full_synthetic_run(tmp_path):
    plan = replace(PLAN, mode_seeds=(0, 1, 2), more_labels_seeds=(0, 1, 2), pool_control_seeds=(0, 1, 2))
    _write_synthetic(tmp_path, plan=plan)
    merge(plan, tmp_path, tmp_path / "mini_repro.json")
    data = json.loads((tmp_path / "mini_repro.json").read_text())
    # claims 1-3, claim 3a's pool control, the modes' table rows and the larger budget's: 18 comparisons,
    # all with 3 or more pairs
    assert recompute_every_interval(data) == len(data["comparisons"]) == 18
    comp = {c["comparison"]: c for c in data["comparisons"]}
    assert comp["ens-adv - rot-adv-20k"]["n_pairs"] == 3 and comp["rot-adv - rot-adv-20k"]["verdict"] == "holds"
    assert "row 'ens-adv - rot-adv-20k' is the task with the pool fixed" in (tmp_path / "mini_repro.md").read_text()


def test_every_interval_in_the_committed_json_is_recomputed_from_its_cell_records_alone():
    res = json.loads((Path(mini_repro.ROOT) / "benchmarks" / "mini_repro.json").read_text())
    assert recompute_every_interval(res) >= 10


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").exists(),
                    reason="needs the dataset-fashion-mnist package")
def test_ensemble_autoattack_then_release_from_the_committed_member_files(tmp_path, monkeypatch):
    """An aa-ens-ft cell runs from the kept (committed) member files alone: the run folders under
    finetune/ are not committed, so a later session has only models/; the recorded hash names those files.
    Then the ensemble is released as ens3-aft-... into a staged registry and loaded from it."""
    import shutil

    from robustzoo._download import file_sha256

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    plan = replace(mini_repro.SMOKE, aa_n=2, aa_chunk=2, ens_pool=64, pool=128, pt_test_n=8, test_n=8)
    mini_repro.run_one(plan, tmp_path, "ens-ft-s0-n64")
    shutil.rmtree(tmp_path / "finetune")
    mini_repro.run_one(plan, tmp_path, "aa-ens-ft-s0-00000-00002")
    cell = json.loads((tmp_path / "cells" / "aa-ens-ft-s0-00000-00002.json").read_text())
    want = "+".join(file_sha256(tmp_path / "models" / f"{a}-s0-n64.safetensors")[:16]
                    for a in mini_repro.ENSEMBLE_MEMBERS)
    assert cell["n"] == 2 and cell["sha256"] == want
    # the release stages the ensemble as one file, kept in models/ so that every release copies the same bytes,
    # with the chunk's AutoAttack figure; it loads by name from the staged registry, offline

    from mini_release import release_zoo

    from robustzoo.registry import REGISTRY_FILE, read_records

    reg = tmp_path / "zoo" / "registry.json"
    reg.parent.mkdir()
    reg.write_text(json.dumps([r for r in json.loads(REGISTRY_FILE.read_text()) if "-w4-" not in r["name"]]))
    # the -w16- names the smoke backbones retire, as if released before
    retired = {f"{a}-r18-w16-fmnist": {"date": "2026-12-07", "successor": f"{a}-r18-w4-fmnist", "why": "test"}
               for a in ("rot-adv", "jig-adv")}
    (reg.parent / "retired.json").write_text(json.dumps(retired))
    assert "ens3-aft-r18-w4-fmnist" in release_zoo(plan, tmp_path, registry=str(reg))
    before = reg.read_text()
    release_zoo(plan, tmp_path, registry=str(reg))
    assert reg.read_text() == before
    spec = read_records(reg)["ens3-aft-r18-w4-fmnist"]
    assert spec.parents == tuple(f"{a}-aft-r18-w4-fmnist" for a in mini_repro.ENSEMBLE_MEMBERS)
    assert spec.metrics["autoattack_n"] == 2 and spec.metrics["autoattack"] == 50.0 * cell["robust"]
    got = _clean_in_fresh_process(reg, "ens3-aft-r18-w4-fmnist", 8)
    assert got == ["SoftmaxEnsemble", pytest.approx(spec.metrics["clean"], abs=0.005)]


def _clean_in_fresh_process(reg: Path, name: str, n: int) -> list:
    """[model class, clean accuracy on the first ``n`` test images] of ``name`` loaded by a fresh process from the
    staged registry ``reg``, offline."""
    import subprocess

    code = ("import json, robustzoo; from robustzoo.fmnist import load_fashion_mnist; "
            f"m = robustzoo.load({name!r}); x, y = load_fashion_mnist('test'); "
            f"r = robustzoo.evaluate(m, (x[:{n}], y[:{n}]), attacks=('clean',), progress=False); "
            "print(json.dumps([type(m).__name__, r.accuracy['clean']]))")
    env = {**__import__("os").environ, "ROBUSTZOO_REGISTRY": str(reg), "ROBUSTZOO_OFFLINE": "1"}
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert got.returncode == 0, got.stderr[-2000:]
    return json.loads(got.stdout)
