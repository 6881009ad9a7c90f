"""Build the tiny embedded Fashion-MNIST zoo with ``training/reproduce.py`` and measure it.

What is trained (ResNet-18 pre-act, width 0.25 = 16 stem channels, in_chans 1, Linf eps 0.1), each
by the same entry point that reproduces every registry weight, with CPU-sized overrides
(a 5,000-image training subset, few epochs, PGD-3 with step 0.04 instead of PGD-10 during
training); the exact command is recorded in the registry record's ``reproduce``:

* ``rot-std-r18-w16-fmnist``, ``rot-adv-r18-w16-fmnist``, ``jig-adv-r18-w16-fmnist``: pretext
  backbones (labels unused);
* ``at-baseline-r18-w16-fmnist``: end-to-end Madry adversarial training from scratch (the paper's
  baseline), a 10-way classifier trained by :func:`robustzoo.finetune`.

Measured on the Fashion-MNIST test set (eps 0.1, step 0.025, eval mode), clean and PGD-20 on the
first ``--pgd-n`` (default: all 10,000): the classifier itself, and for each backbone a linear probe
(logistic head on frozen pooled features, trained on the same 5,000 training images) attacked end to
end through the frozen backbone; plus each backbone's pretext accuracy (clean and PGD-20, from the
run's report). AutoAttack (standard) is run by ``aa_chunks.py`` in chunks (about 8 s per image per
core here); this script copies the chunks' total for the same weight file (equal sha256) into its figures.

This script writes under ``benchmarks/`` only: the measured figures go to ``benchmarks/zoo_metrics.json``
(``{name: {"sha256": ..., "metrics": {...}}}``, keyed by the sha256 of the run's weight file). The release
step ships a weight and copies its figures into the registry:

    python benchmarks/train_zoo.py [--only NAME ...] [--pgd-n 10000] [--runs runs/zoo]
    python training/publish.py runs/zoo/NAME --embed --metrics benchmarks/zoo_metrics.json
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch
from aa_chunks import METRICS_JSON, prefix_metrics, record_metrics
from mini_lib import EPS, MACHINE, ROOT, for_eval, linear_probe, load_data

from robustzoo._download import file_sha256

HOW = ("benchmarks/train_zoo.py (clean and PGD-20 with robustzoo.evaluate; backbones through a linear probe "
       "on frozen features); AutoAttack totals from benchmarks/aa_chunks.py")

CPU = "--subset=5000 --attack_steps=3 --alpha=0.04 --progress=False"
ZOO = {  # name -> (kind, reproduce overrides): the zoo's CPU budget
    "rot-std-r18-w16-fmnist": ("backbone", "--epochs=3 --subset=5000 --progress=False"),
    "rot-adv-r18-w16-fmnist": ("backbone", f"--epochs=2 {CPU}"),
    "jig-adv-r18-w16-fmnist": ("backbone", f"--epochs=2 {CPU}"),
    "at-baseline-r18-w16-fmnist": ("classifier", f"--ft_epochs=3 {CPU} \"--eval_attacks=('clean',)\""),
}



EPILOG = ("Runtime: hours on this CPU (minutes with --pgd-n small when only re-measuring). Writes run folders "
          "under --runs and the measured figures to benchmarks/zoo_metrics.json; training/publish.py copies "
          "them into the registry.")

def reproduce(name: str, runs: Path) -> tuple[Path, dict, float]:
    """Run (or reuse) ``training/reproduce.py NAME``; returns the run folder, its report and the seconds spent."""
    out = runs / name
    cmd = [sys.executable, str(ROOT / "training" / "reproduce.py"), name, *shlex.split(ZOO[name][1]), f"--root={runs}"]
    t0 = time.perf_counter()
    if not (out / "report.json").is_file():
        subprocess.run(cmd, check=True, cwd=ROOT)
    return out, json.loads((out / "report.json").read_text()), time.perf_counter() - t0


def measure(name: str, model, report: dict, data: dict, args, sha: str) -> dict:
    """Clean and PGD-20 on the first ``--pgd-n`` test images (the classifier, or each backbone's linear probe);
    AutoAttack from the committed chunks of this exact file (``aa_chunks.py``)."""
    from robustzoo.evaluation import evaluate

    model = copy.deepcopy(model)  # for_eval changes the memory format in place; the saved file must not change
    if ZOO[name][0] == "backbone":
        test = report["test"]
        acc, probe = linear_probe(model, data["train"], data["test"])
        rob = evaluate(for_eval(probe), data["test"], eps=EPS, attacks=("clean", "pgd20"), n=args.pgd_n,
                       progress=False)
        return {f"pretext_{k.replace('test_', '')}": round(100 * v, 2) for k, v in test.items()
                if isinstance(v, float)} | {
            "linear_probe_clean": round(acc, 2), "n": len(data["test"][0]),
            "linear_probe_pgd20": round(rob.accuracy["pgd20"], 2), "pgd20_n": rob.n,
            "best_epoch": report.get("best_epoch")}
    model = for_eval(model)
    full = evaluate(model, data["test"], eps=EPS, attacks=("clean",), progress=False)
    rob = evaluate(model, data["test"], eps=EPS, attacks=("clean", "pgd20"), n=args.pgd_n, progress=False)
    out = {"clean": round(full.accuracy["clean"], 2), "n": full.n, "pgd20": round(rob.accuracy["pgd20"], 2),
           "pgd20_n": rob.n}
    if rob.n < full.n:
        out["clean_on_pgd20_subset"] = round(rob.accuracy["clean"], 2)
    out.update(prefix_metrics(name, sha))
    return out


def main(argv: list[str] | None = None) -> int:
    from robustzoo.weights import load_file

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=EPILOG)
    ap.add_argument("--only", nargs="*", default=list(ZOO))
    ap.add_argument("--runs", default="runs/zoo", help="where training/reproduce.py writes its runs")
    ap.add_argument("--out", default=str(METRICS_JSON), help="the measured figures, keyed by weight name")
    ap.add_argument("--pgd-n", type=int, default=10000, help="PGD-20 on the first N test images (default: all)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    data = load_data(5000)
    runs = Path(args.runs).resolve()
    for name in args.only:
        run, report, seconds = reproduce(name, runs)
        model = load_file(run)
        sha = file_sha256(run / "model.safetensors")
        t0 = time.perf_counter()
        metrics = measure(name, model, report, data, args, sha)
        metrics.update(machine=MACHINE, python=platform.python_version(), date=time.strftime("%Y-%m-%d"),
                       eps=EPS, attack="linf pgd-20 step 0.025 random-start eval-mode, CE",
                       test_set="Fashion-MNIST test set: the first n / pgd20_n / autoattack_n images",
                       n_train=report["recipe"]["subset"], train_seconds=round(report.get("seconds") or seconds, 1),
                       measure_seconds=round(time.perf_counter() - t0, 1), how=HOW)
        record_metrics(Path(args.out), name, sha, metrics, replace=True)
        print(f"{name}: {json.dumps(metrics)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
