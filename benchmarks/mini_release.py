"""The release step of ``mini_repro.py``: its seed-0 backbones and classifiers become embedded zoo entries.

``python benchmarks/mini_repro.py release`` stages one folder per entry under
``benchmarks/repro/release/<name>/`` (the cell's weight file byte for byte, ``metrics.json`` with
the numbers the cells measured on that file, ``provenance.json``, ``record.json``) and hands each
to ``training/publish.py`` (``release(..., embed=True)``), the only writer of the registry. A
backbone pretrained on the 60,000-image pool retires the ``-w16-`` entry of the same task (pretrained
on 5,000 images), whose name then raises an error naming its successor. Entries whose cells are not
finished are skipped and listed; running the step again after more cells finish (e.g. AutoAttack)
refreshes their figures.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from mini_cells import backbone_path
from mini_lib import EPS, ROOT
from mini_stats import aa_records

from robustzoo._download import file_sha256
from robustzoo.registry import TASK_TAGS
from training.recipes import RECIPES


def why(plan) -> str:
    """What users read when they ask for a retired ``-w16-`` backbone."""
    return ("it was pretrained on the first 5,000 Fashion-MNIST training images for 2-3 epochs at width 0.25; "
            f"its successor was pretrained on {'all ' if not plan.pool else ''}{(plan.pool or 60000):,} training "
            f"images (labels unused) for {plan.pt_passes} passes at width {plan.width} (benchmarks/mini_repro.py).")


EVAL_ATTACK = "linf pgd-20 step 0.025 random-start eval-mode, CE"


def zoo_entries(plan) -> dict[str, dict]:
    """Registry name -> the cell it is made from, what it is, and the ``-w16-`` name it retires."""
    from mini_repro import ENSEMBLE_MEMBERS, FT_ARMS, ft_key, pt_key

    w, seed, p = f"w{round(64 * plan.width)}", plan.ft_seeds[0], plan.pt_seeds[0]
    out = {}
    for arm in ("rot-std", "rot-adv", "jig-adv", "ens-adv"):
        out[f"{arm}-r18-{w}-fmnist"] = {"cell": pt_key(arm, p), "arm": arm, "kind": "backbone",
                                        "retires": f"{arm}-r18-w16-fmnist" if arm != "ens-adv" else None}
    for arm in FT_ARMS:
        name = "at-baseline" if arm == "scratch" else f"{arm}-aft"
        out[f"{name}-r18-{w}-fmnist"] = {"cell": ft_key(arm, seed, plan), "arm": arm, "kind": "classifier",
                                         "parent": None if arm == "scratch" else f"{arm}-r18-{w}-fmnist",
                                         "retires": None}
    # the fine-tuned 3-model softmax ensemble of claim 3b (the paper's ens3, section 4.5), after its members
    out[f"ens3-aft-r18-{w}-fmnist"] = {"cell": f"ens-ft-s{seed}-n{plan.labels}", "arm": "ens-ft", "kind": "ensemble",
                                       "parents": [f"{a}-aft-r18-{w}-fmnist" for a in ENSEMBLE_MEMBERS],
                                       "retires": None}
    return out


def record(name: str, entry: dict, plan) -> dict:
    """The descriptive fields of the registry record (the release step adds file, hash, metrics, provenance)."""
    task = TASK_TAGS.get(entry["arm"].split("-")[0], "none")  # "scratch" has no pretext task
    adv_pt = entry["arm"].endswith("-adv")
    pool = (plan.ens_pool if entry["arm"] == "ens-adv" else plan.pool) or 60000
    ft = (f"Madry linf pgd-{plan.steps} eps={EPS} step={plan.alpha} random-start train-mode, {plan.ft_epochs} epochs, "
          f"cosine lr {plan.ft_lr}, batch {plan.ft_batch}")
    rec = {"name": name, "arch": "resnet18", "kind": entry["kind"], "task": task, "dataset": "fashion-mnist",
           "input_size": [1, 28, 28], "width": plan.width, "paper_metrics": {},
           "attack": {"norm": "linf", "eps": EPS, "step": 0.025, "steps": 20},
           "finetune_defaults": {"mode": "adv-full", "eps": EPS, "step": plan.alpha, "steps": plan.steps,
                                 "epochs": plan.ft_epochs, "lr": plan.ft_lr, "batch_size": plan.ft_batch}}
    by_cell = f"python benchmarks/mini_repro.py cell {entry['cell']} --out runs/repro"
    if entry["kind"] == "backbone":
        pretext = "ensemble of rotation, jigsaw and selfie (shared trunk, joint PGD, log-det penalty)" \
            if task == "ensemble" else f"{task} pretext"
        return {**rec, "training": "adv" if adv_pt else "std", "num_classes": 0,
                "pretrain_attack": f"linf pgd-{plan.steps} eps={EPS} step={plan.alpha} random-start train-mode"
                if adv_pt else None, "finetune": None, "parents": [],
                "recipe": name if name in RECIPES else entry["cell"],
                "reproduce": f"python training/reproduce.py {name}" if name in RECIPES else by_cell,
                "description": f"{pretext}, {'PGD-3 adversarial' if adv_pt else 'standard'} pretraining on "
                               f"{pool:,} Fashion-MNIST training images (labels unused), "
                               f"{plan.ens_passes if task == 'ensemble' else plan.pt_passes} passes; headless "
                               "backbone (benchmarks/mini_repro.py, pretraining seed 0)"}
    if entry["kind"] == "ensemble":
        return {**rec, "arch": "ensemble", "task": "ensemble", "training": "adv", "num_classes": 10,
                "pretrain_attack": None, "finetune": f"softmax average of {', '.join(entry['parents'])}",
                "parents": entry["parents"], "recipe": entry["cell"], "reproduce": by_cell,
                "description": "softmax-averaging ensemble of the seed-0 rot-adv, jig-adv and ens-adv adversarially "
                               f"fine-tuned classifiers ({plan.labels:,} labels): the ens-ft arm (claim 3b) of "
                               "benchmarks/mini_repro.py (the cell measures it; `python benchmarks/mini_repro.py "
                               "release` writes the weight file from the three member files)"}
    start = "from scratch" if entry["parent"] is None else f"from {entry['parent']}"
    return {**rec, "training": "adv", "num_classes": 10, "pretrain_attack": None,
            "finetune": f"adv-full {start} ({ft})", "parents": [entry["parent"]] if entry["parent"] else [],
            "recipe": entry["cell"], "reproduce": by_cell,
            "description": f"adversarial full fine-tuning {start} on {plan.labels:,} labeled Fashion-MNIST training "
                           f"images (seed {plan.ft_seeds[0]}; best epoch on {plan.val_labels} more): the "
                           f"{entry['arm']} arm of benchmarks/mini_repro.py"}


def versus_scratch(arm: str, plan, out: Path) -> dict | None:
    """The reproduction's paired comparison ``arm - scratch`` (PGD-20, fine-tuning seeds) as far as cells exist."""
    from mini_report import build

    res = build(plan, out)
    comp = next((c for c in res["comparisons"] if c["comparison"] == f"{arm} - scratch"), None)
    if comp is None or comp["ci_low"] is None:
        return None
    keep = ("comparison", "metric", "n_pairs", "pretrain_seeds", "diff_mean", "ci_low", "ci_high", "verdict",
            "interval")
    setting = (f"adv-full fine-tuning on {plan.labels:,} labels for {plan.ft_epochs} epochs at width "
               f"{round(64 * plan.width)}, PGD-20 on {plan.test_n:,} test images; benchmarks/mini_repro.py")
    return {**{k: comp[k] for k in keep}, "partial": res["partial"], "setting": setting}


def metrics(cell: dict, aa_cells: list[dict], plan, out: Path) -> dict:
    """The figures the cells measured on this very file, with how, where and when (for a backbone, also the
    reproduction's paired interval for fine-tuning from it vs from scratch)."""
    base = {"machine": cell["machine"], "date": cell["date"], "eps": EPS, "cell": cell["key"],
            "code_commit": cell["commit"]}
    if cell["kind"] == "pretrain":
        pretext = {k.replace("test_", "pretext_", 1): round(100 * v, 2) for k, v in cell["test"].items()
                   if isinstance(v, (int, float))}
        rep = versus_scratch(cell["arm"], plan, out)
        return {**pretext, **base, **({"repro_vs_scratch": rep} if rep else {}), "pool": cell["pool"],
                "passes": cell["passes"], "pretext_n": plan.pt_test_n,
                "pretrain_thread_hours": round(cell["cpu_seconds_total"] / 3600, 2),  # summed pass time, 1 thread
                "how": f"benchmarks/mini_repro.py cell {cell['key']}: pretext accuracy (clean, and under the "
                       f"training attack when adversarial) on the first {plan.pt_test_n} test images, once, after "
                       "model selection on the held-out part of the pool"}
    got = {"clean": round(cell["clean"], 2), "pgd20": round(cell["pgd20"], 2), "n": cell["test_n"],
           "pgd20_n": cell["test_n"],
           "attack": EVAL_ATTACK, "best_epoch": cell["best_epoch"], "n_train": plan.labels,
           "test_set": "Fashion-MNIST test set: the first n / pgd20_n / autoattack_n images",
           "how": f"benchmarks/mini_repro.py cell {cell['key']}: robustzoo.evaluate (eval mode, PGD-20 starts "
                  f"seeded by the fine-tuning seed) on all {cell['test_n']:,} test images; AutoAttack (standard, "
                  "Linf) on the first autoattack_n test images in chunk cells aa-*"}
    aa = [a for a in aa_records(aa_cells) if a["n"] >= plan.aa_n > 0] if aa_cells else []
    if aa:
        got.update(autoattack=aa[0]["autoattack"], autoattack_n=aa[0]["n"],
                   clean_on_autoattack_subset=round(100 * aa[0]["clean"] / aa[0]["n"], 2),
                   autoattack_ci95=[aa[0]["wilson_low"], aa[0]["wilson_high"]],
                   autoattack_date=max(c["date"] for c in aa_cells))
    return {**got, **base}


def stage(name: str, entry: dict, plan, out: Path, dest: Path, *, keep: bool = True) -> Path | None:
    """The run folder ``training/publish.py`` takes; None while the entry's cells are not finished."""
    cell_file = out / "cells" / f"{entry['cell']}.json"
    if not cell_file.exists():
        return None
    cell = json.loads(cell_file.read_text())
    folder = dest / name
    folder.mkdir(parents=True, exist_ok=True)
    if cell["kind"] == "ensemble":
        weights, sha = ensemble_file(cell, plan, out, folder, name, keep=keep)
    else:
        weights = backbone_path(out, cell["arm"], cell["pretrain_seed"]) if cell["kind"] == "pretrain" \
            else out / cell["model"]
        shutil.copyfile(weights, folder / "model.safetensors")
        sha = file_sha256(weights)
    # a backbone has no AutoAttack figure (the arm's aa-* chunks attacked its fine-tuned classifier)
    aa_cells = [] if cell["kind"] == "pretrain" else \
        [json.loads(p.read_text()) for p in sorted((out / "cells").glob(f"aa-{entry['arm']}-s*.json"))]
    if aa_cells and (stale := [c["key"] for c in aa_cells if c["sha256"] != sha]):
        raise SystemExit(f"error: {name}: AutoAttack cells {', '.join(stale)} attacked another file than "
                         f"{weights.relative_to(out)}; delete them and rerun them (work)")
    m = metrics(cell, aa_cells, plan, out)
    prov = {"code_commit": cell["commit"], "cell": cell["key"], "recipe": cell["recipe"],
            "overrides": _portable(cell.get("overrides", {})), "machine": cell["machine"], "date": cell["date"],
            "command": record(name, entry, plan)["reproduce"],
            "data": f"Fashion-MNIST training set: {cell['pool']:,} images, labels unused" if cell["kind"] == "pretrain"
            else f"Fashion-MNIST training set: {plan.labels:,} labeled images drawn by seed {cell['seed']}"}
    for fname, value in (("metrics.json", m), ("provenance.json", prov), ("record.json", record(name, entry, plan))):
        (folder / fname).write_text(json.dumps(value, indent=1) + "\n")
    return folder


def ensemble_file(cell: dict, plan, out: Path, folder: Path, name: str, *, keep: bool = True) -> tuple[Path, str]:
    """Stage the ensemble of an ``ens-ft`` cell's member files (the committed ``models/`` copies) as one weight
    file; returns its path and the hash its AutoAttack cells record (of the member files).

    safetensors writes its metadata in no fixed order, so the file is written once, kept in ``models/``
    (committed, like the members) and copied byte for byte after checking it holds exactly the members
    (``keep=False``, for a dry run: written into ``folder`` only)."""
    import torch
    from mini_cells import kept_path, member_file
    from mini_repro import ENSEMBLE_MEMBERS

    from robustzoo.models import SoftmaxEnsemble
    from robustzoo.serialization import save_pretrained
    from robustzoo.weights import load_file

    files = [member_file(plan, out, k, a, cell["seed"]) for k, a in zip(cell["recipe"]["members"], ENSEMBLE_MEMBERS)]
    model = SoftmaxEnsemble([load_file(f) for f in files])
    ens = model.state_dict()
    kept = kept_path(out, "ens-ft", cell["seed"], cell["labels"])
    if not kept.exists():
        written = save_pretrained(model, folder / "tmp", name=name)
        if not keep:
            kept = written
        else:
            kept.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(written, kept)
    got = load_file(kept).state_dict()
    if got.keys() != ens.keys() or not all(torch.equal(got[k], ens[k]) for k in ens):
        raise SystemExit(f"error: {kept} does not hold the members {', '.join(map(str, files))}; delete it")
    shutil.copyfile(kept, folder / "model.safetensors")
    shutil.rmtree(folder / "tmp", ignore_errors=True)
    return kept, "+".join(file_sha256(f)[:16] for f in files)


def _portable(overrides: dict) -> dict:
    """The cell's overrides with its run folder relative to the repository: no machine's paths in the registry."""
    run = Path(overrides.get("out_dir", ""))
    if run.is_absolute():
        overrides = {**overrides, "out_dir": str(run.relative_to(ROOT)) if run.is_relative_to(ROOT) else run.name}
    return overrides


def release_zoo(plan, out: Path, *, registry: str | None = None, dry_run: bool = False) -> list[str]:
    """Stage and release every finished entry (backbones first: classifiers name them as parents)."""
    from robustzoo.errors import RobustZooError
    from robustzoo.registry import registry_path
    from training.publish import release

    reg = Path(registry) if registry else registry_path()
    done, waiting = [], []
    for name, entry in zoo_entries(plan).items():
        folder = stage(name, entry, plan, out, out / "release", keep=not dry_run)
        if folder is None:
            waiting.append(f"{name} (cell {entry['cell']})")
            continue
        try:
            _, diff = release(folder, repo_id=None, embed=True, registry=reg, name=name, dry_run=dry_run,
                              retire_names=(entry["retires"],) if entry["retires"] else (), why=why(plan))
        except RobustZooError as e:
            raise SystemExit(f"error: releasing {name}: {e}") from None
        print(diff or f"# {name}: the registry already holds this record\n", end="")
        done.append(name)
    print(f"# released {len(done)}: {', '.join(done) or '-'}")
    print(f"# waiting for cells: {', '.join(waiting) or '-'}")
    return done
