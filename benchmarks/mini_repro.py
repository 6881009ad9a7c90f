"""The paper's three claims on Fashion-MNIST, with paired seeds and 95 % intervals, as resumable cells.

Chen et al. (CVPR 2020) claim that adversarial self-supervised pretraining (1) makes adversarial
fine-tuning end more robust, (2) saves fine-tuning epochs, and (3) helps more as an ensemble of
pretext tasks. This script tests the three claims at CPU scale (the design and the budget arithmetic
are in benchmarks/RESULTS.md, section "Mini-reproduction"):

* pretraining (``training/pretrain.py`` through ``training.recipes.resolve``) on the unlabeled
  60,000-image Fashion-MNIST training pool (labels unused) for rot-std, rot-adv and jig-adv; the
  ensemble pretraining (rotation + jigsaw + selfie on a shared trunk, joint PGD, log-det penalty)
  on a smaller pool (``Plan.ens_pool``, 20,000) for as many passes; ResNet-18 width ``Plan.width``,
  PGD-3 (eps 0.1, step 0.04);
* adversarial full fine-tuning (:func:`robustzoo.finetune`, Madry PGD-3) on ``Plan.labels``
  labeled training images, and a separate validation split, both drawn by the fine-tuning seed;
  the same seed drives the subset, the new head, the data order and the attack starts in every
  arm, so arm minus scratch is a paired difference;
* test: clean and PGD-20 (eval mode, step 0.025) on all 10,000 test images per cell; AutoAttack on
  a fixed subset for the seed-0 model of each arm, in chunks (``benchmarks/aa_chunks.py`` style);
* last, the paper's other fine-tuning modes (standard partial and full) for the rot-std and rot-adv
  backbones on ``Plan.mode_seeds``, then a second label budget (``Plan.more_labels``) for rot-adv
  vs scratch on ``Plan.more_labels_seeds``, both compared apart from the three claims; then the pool
  control of claim 3a: rot-adv pretrained on the ensemble's own pool and passes (``POOL_CONTROL``).

Every cell is one JSON file under ``benchmarks/repro/cells`` (atomic, tagged with the commit and
the recipe); ``work`` runs the next cell nobody holds (a file lock per cell, so 2 workers share the
queue) and resumes a cut-off pretraining from its checkpoint (every epoch and every 5 minutes);
``merge`` builds ``benchmarks/mini_repro.json``/``.png``/``.md`` (and with ``--update-results`` the
RESULTS.md block) from whatever cells exist; MODEL_CARD.md renders its block from ``mini_repro.md``.

    python benchmarks/mini_repro.py rates                     # measured step rates for the budget
    nice -n 19 python benchmarks/mini_repro.py work --worker 0 &
    nice -n 19 python benchmarks/mini_repro.py work --worker 1 &
    python benchmarks/mini_repro.py status
    python benchmarks/mini_repro.py merge [--update-results]   # then: python -m robustzoo.card --write MODEL_CARD.md
    python benchmarks/mini_repro.py cell ft-rot-adv-p0-s0-n2000 --out runs/repro   # one cell (and its deps)
    python benchmarks/mini_repro.py release      # seed-0 backbones and classifiers -> embedded zoo entries
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mini_queue  # noqa: E402
from mini_lib import EPS, MACHINE, ROOT  # noqa: E402
from mini_stats import POOL_CONTROL  # noqa: E402  (rot-adv on exactly the ensemble's pool: claim 3a's control)

OUT = ROOT / "benchmarks" / "repro"
PT_RECIPE = {"rot-std": "rot-std-r18", "rot-adv": "rot-adv-r18", "jig-adv": "jig-adv-r18", "ens-adv": "ens-adv-r18",
             POOL_CONTROL: "rot-adv-r18"}
SMALL_POOL = ("ens-adv", POOL_CONTROL)  # pretrained on Plan.ens_pool for Plan.ens_passes
FT_ARMS = ("scratch", "rot-std", "rot-adv", "jig-adv", "ens-adv")
ENSEMBLE_MEMBERS = ("rot-adv", "jig-adv", "ens-adv")  # the fine-tuned 3-model softmax ensemble ("ens-ft")


@dataclass(frozen=True)
class Plan:
    """Every setting of the experiment (``smoke`` shrinks it for the test suite)."""

    width: float = 0.125  # 8 stem channels ("-w8-")
    pt_passes: int = 12  # passes over the pool for the single-task arms
    ens_passes: int = 12
    ens_pool: int = 20000  # ensemble pretraining pool (60,000 does not fit: a step costs 8-12x)
    pool: int = 0  # 0 = all 60,000 training images
    pt_val_fraction: float = 0.02  # held out of the pool for the pretext curve (1,200 images at 60,000)
    pt_test_n: int = 1000
    pt_batch: int = 128
    pt_seeds: tuple = (0, 1)
    steps: int = 3  # training PGD steps (pretraining and fine-tuning)
    alpha: float = 0.04
    labels: int = 2000
    val_labels: int = 500
    ft_seeds: tuple = tuple(range(8))
    ft_epochs: int = 15
    ft_batch: int = 64
    ft_lr: float = 0.05
    val_steps: int = 5  # PGD steps of the per-epoch validation attack (claim 2's target)
    test_n: int = 10000
    aa_n: int = 500
    aa_chunk: int = 50
    dataset: str = "fashion-mnist"
    # the paper's table also has partial (layer4 + head) and standard full fine-tuning: run for the
    # standard vs adversarial rotation backbones on fewer seeds, after everything else (secondary)
    extra_modes: tuple = ("partial", "full")
    mode_arms: tuple = ("rot-std", "rot-adv")
    mode_seeds: tuple = (0, 1, 2, 3)
    # a second, larger label budget for the headline comparison (rot-adv vs scratch), on fewer seeds, last
    more_labels: int = 10000
    more_labels_arms: tuple = ("scratch", "rot-adv")
    more_labels_seeds: tuple = (0, 1, 2, 3)
    # the pool control (POOL_CONTROL) for claim 3a, queued after everything else
    pool_control_seeds: tuple = tuple(range(8))

    def pretrain_seed(self, seed: int, arm: str) -> int | None:
        """Fine-tuning seed -> pretraining seed of its backbone (alternating, so both are covered)."""
        if arm == "scratch":
            return None
        return 0 if arm == "rot-std" else self.pt_seeds[seed % len(self.pt_seeds)]


SMOKE = Plan(width=0.0625, pt_passes=1, ens_passes=1, ens_pool=300, pool=600, pt_val_fraction=0.1, pt_test_n=32,
             pt_batch=32, pt_seeds=(0,), labels=64, val_labels=32, ft_seeds=(0,), ft_epochs=1, ft_batch=32,
             val_steps=1, test_n=64, aa_n=0, dataset="fashion-mnist", mode_seeds=(), more_labels=128,
             more_labels_seeds=(), pool_control_seeds=())

EPILOG = ("Runtime: about 27 one-thread CPU hours in all, as resumable cells of minutes each (work); status and "
          "merge take seconds. Writes benchmarks/repro/ (cells, checkpoints) and, on merge, "
          "benchmarks/mini_repro.json/.md/.png.")

@functools.cache
def commit() -> str:
    """The code commit of this process, read once when its work starts (``work``/``run_one`` call it first):
    a cell names the code that ran it, not whatever the checkout holds when the cell ends hours later."""
    from training.checkpoint import git_commit

    return git_commit()


# ------------------------------------------------------------------------------------ pretraining


def pretrain_overrides(plan: Plan, arm: str, pseed: int, out_dir: Path) -> dict:
    """Flat overrides for ``training.recipes.resolve``: one optimiser for every arm (so arms differ only in
    the task), the Fashion-MNIST threat model, PGD-3 pretraining, the pool and the passes of the plan."""
    ens = arm in SMALL_POOL
    return dict(width=plan.width, in_chans=1, dataset=plan.dataset, eps=EPS, alpha=plan.alpha,
                attack_steps=plan.steps, subset=plan.ens_pool if ens else plan.pool,
                val_fraction=plan.pt_val_fraction, crop_pad=2, epochs=plan.ens_passes if ens else plan.pt_passes,
                batch_size=plan.pt_batch, lr=0.1, weight_decay=3e-4, nesterov=False, final_lr=1e-6,
                warmup_iters=min(200, _pass_iters(plan, ens)), warmup_from=0.01, warmup_to=0.1, seed=pseed,
                test_n=plan.pt_test_n, val_attack_steps=10, selfie_layers=4, selfie_heads=4, progress=False,
                out_dir=str(out_dir))


def _pass_iters(plan: Plan, ens: bool) -> int:
    """Iterations per pass: the warm-up (200 iterations in the paper) never outlasts the first pass."""
    pool = (plan.ens_pool if ens else plan.pool) or 60000
    return max(1, round(pool * (1 - plan.pt_val_fraction)) // plan.pt_batch)


def run_pretrain(plan: Plan, out: Path, arm: str, pseed: int) -> dict:
    from training.pretrain import pretrain
    from training.recipes import resolve

    run_dir = out / "pretrain" / f"{arm}-p{pseed}"
    overrides = pretrain_overrides(plan, arm, pseed, run_dir)
    recipe = resolve(PT_RECIPE[arm], overrides)
    t0 = time.time()
    report = pretrain(recipe, resume=True)
    metric = "val_score"
    return {"kind": "pretrain", "arm": arm, "pretrain_seed": pseed, "commit": commit(), "recipe": PT_RECIPE[arm],
            "overrides": overrides, "pool": overrides["subset"] or 60000,
            "passes": recipe.epochs, "best_epoch": report["best_epoch"], "test": report["test"],
            "curve": [{k: v for k, v in r.items() if k.startswith(("epoch", "train_", "val_", "seconds"))}
                      for r in report["history"]],
            "final_val_score": report["history"][-1][metric], "cpu_seconds_this_process": round(time.time() - t0, 1),
            "cpu_seconds_total": round(sum(r["seconds"] for r in report["history"]), 1),
            "backbone": str((run_dir / "model.safetensors").relative_to(ROOT)) if run_dir.is_relative_to(ROOT)
            else str(run_dir / "model.safetensors"), "machine": MACHINE, "date": time.strftime("%Y-%m-%d")}


# ------------------------------------------------------------------------------------- the queue


@dataclass(frozen=True)
class Cell:
    key: str  # file name stem under cells/
    kind: str  # pretrain | finetune | ensemble | aa
    arm: str
    seed: int | None = None
    pretrain_seed: int | None = None
    deps: tuple = ()  # cell keys that must exist first
    start: int = 0  # aa chunks
    end: int = 0
    mode: str = "adv-full"  # fine-tuning mode of a finetune cell
    labels: int = 0  # labeled images of a finetune cell (0: the plan's main budget, Plan.labels)


def pt_key(arm: str, pseed: int) -> str:
    return f"pt-{arm}-p{pseed}"


def ft_key(arm: str, seed: int, plan: Plan, mode: str = "adv-full", labels: int = 0) -> str:
    p = plan.pretrain_seed(seed, arm)
    return (f"ft-{arm}{'' if p is None else f'-p{p}'}-s{seed}-n{labels or plan.labels}"
            f"{'' if mode == 'adv-full' else f'-{mode}'}")


def all_cells(plan: Plan) -> list[Cell]:
    """Every cell of the plan, in the order the workers take them: the first pretraining seed's backbones,
    then the first fine-tuning seed (whose classifiers become zoo entries, so they exist early), then
    the other pretraining seeds' single-task backbones and the remaining fine-tuning seeds (so the
    single-task comparisons complete early), then the other seeds' ensemble pretraining (3.5 CPU h
    each), then AutoAttack, then the secondary fine-tuning modes, then the larger label budget, then the pool
    control of claim 3a (``POOL_CONTROL``: its backbones, then its fine-tuning seeds). Fine-tuning
    cells whose backbone is not there yet are skipped until it is."""
    def pretrain_cells(pseed: int, arms: tuple) -> list[Cell]:
        return [Cell(pt_key(arm, pseed), "pretrain", arm, pretrain_seed=pseed) for arm in arms]

    def seed_cells(seed: int) -> list[Cell]:
        row = []
        for arm in FT_ARMS:
            p = plan.pretrain_seed(seed, arm)
            row.append(Cell(ft_key(arm, seed, plan), "finetune", arm, seed, p,
                            deps=() if p is None else (pt_key(arm, p),)))
        return row + [Cell(f"ens-ft-s{seed}-n{plan.labels}", "ensemble", "ens-ft", seed,
                           deps=tuple(ft_key(a, seed, plan) for a in ENSEMBLE_MEMBERS))]

    first, rest = plan.pt_seeds[0], plan.pt_seeds[1:]
    cells = pretrain_cells(first, ("rot-adv", "jig-adv", "rot-std", "ens-adv")) + seed_cells(plan.ft_seeds[0])
    for pseed in rest:
        cells += pretrain_cells(pseed, ("rot-adv", "jig-adv"))
    for seed in plan.ft_seeds[1:]:
        cells += seed_cells(seed)
    for pseed in rest:
        cells += pretrain_cells(pseed, ("ens-adv",))
    seed0 = plan.ft_seeds[0]
    for arm in (*FT_ARMS, "ens-ft"):
        dep = f"ens-ft-s{seed0}-n{plan.labels}" if arm == "ens-ft" else ft_key(arm, seed0, plan)
        for start in range(0, plan.aa_n, plan.aa_chunk):
            end = min(plan.aa_n, start + plan.aa_chunk)
            cells.append(Cell(f"aa-{arm}-s{seed0}-{start:05d}-{end:05d}", "aa", arm, seed0, deps=(dep,),
                              start=start, end=end))
    for seed in plan.mode_seeds:
        for mode in plan.extra_modes:
            for arm in plan.mode_arms:
                p = plan.pretrain_seed(seed, arm)
                cells.append(Cell(ft_key(arm, seed, plan, mode), "finetune", arm, seed, p, deps=(pt_key(arm, p),),
                                  mode=mode))
    for seed in plan.more_labels_seeds:
        for arm in plan.more_labels_arms:
            p = plan.pretrain_seed(seed, arm)
            cells.append(Cell(ft_key(arm, seed, plan, labels=plan.more_labels), "finetune", arm, seed, p,
                              deps=() if p is None else (pt_key(arm, p),), labels=plan.more_labels))
    for pseed in sorted({plan.pretrain_seed(s, POOL_CONTROL) for s in plan.pool_control_seeds}):
        cells += pretrain_cells(pseed, (POOL_CONTROL,))
    for seed in plan.pool_control_seeds:
        p = plan.pretrain_seed(seed, POOL_CONTROL)
        cells.append(Cell(ft_key(POOL_CONTROL, seed, plan), "finetune", POOL_CONTROL, seed, p,
                          deps=(pt_key(POOL_CONTROL, p),)))
    return cells


def run_cell(cell: Cell, plan: Plan, out: Path) -> dict:
    if cell.kind == "pretrain":
        return run_pretrain(plan, out, cell.arm, cell.pretrain_seed)
    from mini_cells import run_aa, run_ensemble, run_finetune

    fn = {"finetune": run_finetune, "ensemble": run_ensemble, "aa": run_aa}[cell.kind]
    return fn(cell, plan, out)


def _runner(plan: Plan, out: Path):
    # looks run_cell up at call time, so a test can replace it
    return lambda cell: {**run_cell(cell, plan, out), "plan": asdict(plan)}


def work(plan: Plan, out: Path, worker: int, *, max_cells: int | None = None, kinds: tuple = (),
         wait: float = 0) -> int:
    """Run the plan's cells in queue order until none is left that this worker can take (see
    ``mini_queue.work``: a file and a lock per cell, so workers share the queue; a killed pretraining
    resumes from its last epoch checkpoint); returns the number run."""
    commit()
    return mini_queue.work(all_cells(plan), _runner(plan, out), out, worker, max_cells=max_cells, kinds=kinds,
                           wait=wait)


def run_one(plan: Plan, out: Path, key: str) -> None:
    """Reproduce one cell (``cell KEY``), running first whatever cells it depends on that ``out`` lacks."""
    commit()
    mini_queue.run_one(all_cells(plan), _runner(plan, out), out, key)


def status(plan: Plan, out: Path) -> list[str]:
    def progress(cell: Cell) -> str:
        m = out / "pretrain" / f"{cell.arm}-p{cell.pretrain_seed}" / "metrics.jsonl"
        return f"({len(m.read_text().splitlines())} epochs checkpointed)" if cell.kind == "pretrain" and m.exists() \
            else ""

    return mini_queue.status(all_cells(plan), out, progress)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=EPILOG)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("work", "status", "merge", "rates", "cell", "release"):
        p = sub.add_parser(name)
        p.add_argument("--out", default=str(OUT), help="cells folder (default benchmarks/repro)")
        p.add_argument("--smoke", action="store_true", help="the tiny plan of the test suite")
        p.add_argument("--threads", type=int, default=1)
    w = sub.choices["work"]
    w.add_argument("--worker", type=int, default=0)
    w.add_argument("--max-cells", type=int, default=None)
    w.add_argument("--wait", type=float, default=0, help="poll every N seconds while cells are blocked")
    w.add_argument("--kinds", nargs="*", default=[], choices=["pretrain", "finetune", "ensemble", "aa"])
    sub.choices["cell"].add_argument("key", help="a cell of the plan, e.g. ft-rot-adv-p0-s0-n2000 (see status)")
    r = sub.choices["release"]
    r.add_argument("--registry", default=None, help="registry file to write (default: the package's)")
    r.add_argument("--dry-run", action="store_true", help="stage and print the registry diffs; write nothing")
    m = sub.choices["merge"]
    m.add_argument("--json", default=str(ROOT / "benchmarks" / "mini_repro.json"))
    m.add_argument("--update-results", action="store_true",
                   help="also rewrite the generated part of the mini_repro section of benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    plan = SMOKE if args.smoke else Plan()
    out = Path(args.out)
    if args.cmd == "work":
        n = work(plan, out, args.worker, max_cells=args.max_cells, kinds=tuple(args.kinds), wait=args.wait)
        print(f"[worker {args.worker}] ran {n} cells; nothing left that it can take now", flush=True)
    elif args.cmd == "status":
        print("\n".join(status(plan, out)))
    elif args.cmd == "cell":
        run_one(plan, out, args.key)
    elif args.cmd == "release":
        from mini_release import release_zoo

        release_zoo(plan, out, registry=args.registry, dry_run=args.dry_run)
    elif args.cmd == "rates":
        from mini_cells import measure_rates

        print(json.dumps(measure_rates(plan), indent=1))
    else:
        from mini_report import merge

        merge(plan, out, Path(args.json), update_results=args.update_results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

