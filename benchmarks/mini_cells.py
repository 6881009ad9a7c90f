"""The fine-tuning, ensemble and AutoAttack cells of ``mini_repro.py``, and the rate measurement of its plan.

Fine-tuning goes through :func:`robustzoo.finetune` (Madry adversarial full fine-tuning, as the
paper's ``finetune/main.py``), evaluation through :func:`robustzoo.evaluate` (eval mode), so the
cells measure the code users run. The labeled subset, the validation split, the new head, the data
order and every attack start come from the fine-tuning seed alone, identically in every arm.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch
from mini_lib import EPS, MACHINE, ROOT

ALPHA_EVAL = 0.025  # PGD-20 step (eps / 4)


def labeled_split(plan, seed: int, labels: int = 0) -> tuple[tuple, tuple]:
    """(train, val) labeled subsets of the 60,000 training images, disjoint, drawn by ``seed`` only:
    ``labels`` (default ``plan.labels``) training images, then ``plan.val_labels`` validation images.

    The same seed draws the same permutation at every budget, so the smaller training subset is the
    start of the larger one. The test set is a different file, so both are disjoint from it."""
    from robustzoo.fmnist import load_fashion_mnist

    x, y = load_fashion_mnist("train")
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(10_000 + seed))
    n = labels or plan.labels
    tr, va = idx[:n], idx[n: n + plan.val_labels]
    return (x[tr], y[tr]), (x[va], y[va])


def test_set(plan, n: int | None = None) -> tuple:
    from robustzoo.fmnist import load_fashion_mnist

    x, y = load_fashion_mnist("test")
    n = plan.test_n if n is None else n
    return x[:n], y[:n]


def backbone_path(out: Path, arm: str, pseed: int) -> Path:
    return out / "pretrain" / f"{arm}-p{pseed}" / "model.safetensors"


def model_path(out: Path, key: str) -> Path:
    return out / "finetune" / key / "best" / "model.safetensors"


def kept_path(out: Path, arm: str, seed: int, labels: int) -> Path:
    return out / "models" / f"{arm}-s{seed}-n{labels}.safetensors"


def initial_model(plan, out: Path, arm: str, seed: int, pseed: int | None):
    """Scratch: a ResNet-18 initialised from ``seed``. Pretrained: the headless backbone, loaded strictly
    (``finetune`` then adds a 10-way head initialised from the same ``seed``)."""
    from robustzoo.models import ResNet
    from robustzoo.weights import load_file

    if arm == "scratch":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return ResNet("resnet18", num_classes=10, in_chans=1, width=plan.width)
    return load_file(backbone_path(out, arm, pseed))


def test_model(model, plan, seed: int) -> dict:
    """Clean and PGD-20 (eval mode, step 0.025, starts seeded by ``seed``) on the first ``plan.test_n``
    test images, with the per-image outcome so paired per-image analyses can be recomputed."""
    from mini_lib import for_eval

    from robustzoo.evaluation import evaluate

    t0 = time.perf_counter()
    res = evaluate(for_eval(model), test_set(plan), eps=EPS, alpha=ALPHA_EVAL, attacks=("clean", "pgd20"),
                   seed=seed, progress=False)
    return {"clean": res.accuracy["clean"], "pgd20": res.accuracy["pgd20"], "test_n": res.n,
            "pgd20_per_image": "".join("1" if c else "0" for c in res.correct["pgd20"].tolist()),
            "eval_seconds": round(time.perf_counter() - t0, 1)}


def fit(plan, out: Path, key: str, arm: str, seed: int, pseed: int | None, mode: str = "adv-full",
        labels: int = 0):
    from robustzoo.finetuning import finetune

    train, val = labeled_split(plan, seed, labels)
    model = initial_model(plan, out, arm, seed, pseed)
    return finetune(model, train, mode=mode, val_data=val, epochs=plan.ft_epochs, steps=plan.steps,
                    alpha=plan.alpha, eps=EPS, eval_steps=plan.val_steps, seed=seed, lr=plan.ft_lr,
                    batch_size=plan.ft_batch, schedule="cosine", padding=2, progress=False, channels_last=True,
                    num_classes=10 if getattr(model, "num_classes", 10) == 0 else None,
                    checkpoint_dir=out / "finetune" / key, resume=True)


def run_finetune(cell, plan, out: Path) -> dict:
    """One arm x one seed: adversarial full fine-tuning, then the test. Resumes from its epoch checkpoint."""
    from mini_repro import commit

    mode, labels = cell.mode, cell.labels or plan.labels
    t0 = time.perf_counter()
    res = fit(plan, out, cell.key, cell.arm, cell.seed, cell.pretrain_seed, mode, labels)
    train_s = time.perf_counter() - t0
    rec = {"kind": "finetune", "arm": cell.arm, "pretrain_seed": cell.pretrain_seed, "seed": cell.seed,
           "labels": labels, "mode": mode, "commit": commit(),
           "recipe": {"pretrain_cell": None if cell.pretrain_seed is None else f"pt-{cell.arm}-p{cell.pretrain_seed}",
                      "finetune": {k: v for k, v in res.settings.items() if k not in ("versions",)}},
           "history": [{k: r[k] for k in ("epoch", "loss", "val_clean", "val_robust", "seconds")}
                       for r in res.history],
           "best_epoch": res.best_epoch, "train_seconds": round(train_s, 1), **test_model(res.model, plan, cell.seed),
           "machine": MACHINE, "date": time.strftime("%Y-%m-%d")}
    from mini_repro import ENSEMBLE_MEMBERS, FT_ARMS

    # kept (and committed): the seed-0 classifiers (AutoAttack, the zoo entries) and every ensemble member,
    # whose ens-ft cell may run sessions later on another machine, where a refit is not bit-exact
    first = cell.seed == plan.ft_seeds[0] and cell.arm in FT_ARMS  # not the pool control: no zoo entry, no AA
    if (mode, labels) == ("adv-full", plan.labels) and (first or cell.arm in ENSEMBLE_MEMBERS):
        keep = kept_path(out, cell.arm, cell.seed, labels)
        keep.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(model_path(out, cell.key), keep)
        rec["model"] = str(keep.relative_to(out))
    return rec


def member_file(plan, out: Path, key: str, arm: str, seed: int) -> Path:
    """The file of a finished fine-tuning cell's classifier: its kept copy in ``models/`` (committed), else
    its run folder, else refitted (deterministically on the same kind of CPU) and checked against the
    cell's recorded validation history (cells finished before members were kept)."""
    import json

    if (kept := kept_path(out, arm, seed, plan.labels)).exists():
        return kept
    path = model_path(out, key)
    if not path.exists():
        cell = json.loads((out / "cells" / f"{key}.json").read_text())
        res = fit(plan, out, key, arm, seed, cell["pretrain_seed"])
        got = [round(r["val_robust"], 6) for r in res.history]
        if got != [round(r["val_robust"], 6) for r in cell["history"]]:
            raise RuntimeError(f"refitting {key} did not reproduce its recorded validation history")
    return path


def member(plan, out: Path, key: str, arm: str, seed: int):
    """The classifier of :func:`member_file`, loaded strictly."""
    from robustzoo.weights import load_file

    return load_file(member_file(plan, out, key, arm, seed))


def run_ensemble(cell, plan, out: Path) -> dict:
    """The softmax average of the seed's rot-adv, jig-adv and ens-adv adv-full classifiers, attacked as one."""
    from mini_repro import ENSEMBLE_MEMBERS, commit

    from robustzoo.models import SoftmaxEnsemble

    models = [member(plan, out, k, a, cell.seed) for k, a in zip(cell.deps, ENSEMBLE_MEMBERS)]
    ens = SoftmaxEnsemble(models).eval()
    return {"kind": "ensemble", "arm": "ens-ft", "pretrain_seed": None, "seed": cell.seed, "labels": plan.labels,
            "mode": "adv-full", "commit": commit(), "recipe": {"members": list(cell.deps)},
            "history": [], "best_epoch": None, **test_model(ens, plan, cell.seed), "machine": MACHINE,
            "date": time.strftime("%Y-%m-%d")}


def run_aa(cell, plan, out: Path) -> dict:
    """Standard AutoAttack (Linf eps 0.1) on test images [start, end) of the seed-0 classifier of an arm."""
    from mini_repro import ENSEMBLE_MEMBERS, commit

    from robustzoo._download import file_sha256
    from robustzoo.evaluation import evaluate
    from robustzoo.models import SoftmaxEnsemble
    from robustzoo.weights import load_file

    if cell.arm == "ens-ft":
        import json

        members = json.loads((out / "cells" / f"{cell.deps[0]}.json").read_text())["recipe"]["members"]
        files = [member_file(plan, out, k, a, cell.seed) for k, a in zip(members, ENSEMBLE_MEMBERS)]
        model = SoftmaxEnsemble([load_file(f) for f in files])
        sha = "+".join(file_sha256(f)[:16] for f in files)  # the files loaded (models/ is committed, finetune/ not)
    else:
        path = kept_path(out, cell.arm, cell.seed, plan.labels)
        model, sha = load_file(path), file_sha256(path)
    x, y = test_set(plan, cell.end)
    t0 = time.perf_counter()
    res = evaluate(model.eval(), (x[cell.start:], y[cell.start:]), eps=EPS, attacks=("clean", "autoattack"),
                   seed=0, progress=False)
    return {"kind": "aa", "arm": cell.arm, "seed": cell.seed, "labels": plan.labels, "start": cell.start,
            "end": cell.end, "n": res.n, "clean": int(res.correct["clean"].sum()),
            "robust": int(res.correct["autoattack"].sum()),
            "robust_per_image": "".join("1" if c else "0" for c in res.correct["autoattack"].tolist()),
            "sha256": sha, "commit": commit(), "recipe": {"classifier_cell": cell.deps[0]},
            "seconds": round(time.perf_counter() - t0, 1), "machine": MACHINE, "date": time.strftime("%Y-%m-%d")}


def measure_rates(plan, out: Path | None = None) -> dict:
    """CPU seconds (this process, one thread: independent of what else the shared machine runs) per unit of
    each kind of work at the plan's width, for the budget in RESULTS.md: pretraining per pool image and
    pass per arm (one pass over a 1,420-image pool, 710 for the ensemble; the share of the pass spent on
    training, not validation, from the run's own timings), one adversarial fine-tuning epoch on
    ``plan.labels`` images with its validation, PGD-20 per 1,000 test images, AutoAttack per image."""
    import tempfile
    from dataclasses import replace

    from mini_repro import pretrain_overrides

    from robustzoo.evaluation import evaluate
    from training.pretrain import pretrain
    from training.recipes import resolve

    cpu = time.process_time
    tmp = Path(out or tempfile.mkdtemp(prefix="repro-rates-"))
    rates: dict = {"machine": MACHINE, "date": time.strftime("%Y-%m-%d %H:%M"), "threads": torch.get_num_threads(),
                   "width": plan.width, "unit": "CPU seconds of one thread"}
    for arm, recipe in (("rot-adv", "rot-adv-r18"), ("jig-adv", "jig-adv-r18"), ("rot-std", "rot-std-r18"),
                        ("ens-adv", "ens-adv-r18")):
        pool = 710 if arm == "ens-adv" else 1420
        small = replace(plan, pool=pool, ens_pool=pool, pt_passes=1, ens_passes=1, pt_test_n=32,
                        pt_val_fraction=0.1)
        t0 = cpu()
        rep = pretrain(resolve(recipe, pretrain_overrides(small, arm, 0, tmp / arm)))
        row, total = rep["history"][0], cpu() - t0
        n_train = pool - round(0.1 * pool)
        train_share = n_train / row["images_per_s"] / row["seconds"]  # wall shares within the pass
        rates[f"pretrain_{arm}_cpu_s_per_image"] = round(total * train_share / n_train, 5)
        rates[f"pretrain_{arm}_cpu_s_total_incl_val_test_load"] = round(total, 1)
    t0 = cpu()
    res = fit(replace(plan, ft_epochs=1), tmp, "rates-ft", "scratch", 0, None)
    rates["finetune_epoch_cpu_s_incl_val"] = round(cpu() - t0, 1)
    x, y = test_set(plan, 1000)
    t0 = cpu()
    ev = evaluate(res.model.eval(), (x, y), eps=EPS, alpha=ALPHA_EVAL, attacks=("clean", "pgd20"), progress=False)
    rates["pgd20_cpu_s_per_1000"] = round(cpu() - t0, 1)
    rates["pgd20_model_clean_pct"] = ev.accuracy["clean"]
    t0 = cpu()
    ev = evaluate(res.model.eval(), (x[:20], y[:20]), eps=EPS, attacks=("clean", "autoattack"), progress=False)
    rates["autoattack_cpu_s_per_image"] = round((cpu() - t0) / 20, 2)
    rates["autoattack_model_clean_robust"] = [ev.accuracy["clean"], ev.accuracy["autoattack"]]
    return rates


__all__ = ["run_finetune", "run_ensemble", "run_aa", "measure_rates", "labeled_split", "ROOT"]
