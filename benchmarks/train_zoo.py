"""Build the tiny embedded Fashion-MNIST zoo with ``training/reproduce.py`` and measure it.

What is trained (ResNet-18 pre-act, width 0.25 = 16 stem channels, in_chans 1, Linf eps 0.1), each
by the same entry point that reproduces every registry weight, with CPU-sized overrides
(a 5,000-image training subset, few epochs, PGD-3 with step 0.04 instead of PGD-10 during
training); the exact command is recorded in ``zoo.json`` as the entry's ``reproduce``:

* ``rot-std-r18-w16-fmnist``, ``rot-adv-r18-w16-fmnist``, ``jig-adv-r18-w16-fmnist``: pretext
  backbones (labels unused);
* ``at-baseline-r18-w16-fmnist``: end-to-end Madry adversarial training from scratch (the paper's
  baseline), a 10-way classifier trained by :func:`robustzoo.finetune`.

Measured on the Fashion-MNIST test set (eps 0.1, step 0.025, eval mode), clean and PGD-20 on the
first ``--pgd-n`` (default: all 10,000): the classifier itself, and for each backbone a linear probe
(logistic head on frozen pooled features, trained on the same 5,000 training images) attacked end to
end through the frozen backbone; plus each backbone's pretext accuracy (clean and PGD-20, from the
run's report). AutoAttack (standard) is run by ``aa_chunks.py`` in chunks (about 8 s per image per
core here); this script copies the chunks' total for the same weight file (equal sha256) into the entry.

    python benchmarks/train_zoo.py [--only NAME ...] [--pgd-n 10000] [--runs runs/zoo]
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
from aa_chunks import prefix_metrics
from mini_lib import EPS, MACHINE, ROOT, for_eval, linear_probe, load_data

from robustzoo._download import file_sha256

CPU = "--subset=5000 --attack_steps=3 --alpha=0.04 --progress=False"
ZOO = {  # name -> (kind, reproduce overrides): the zoo's CPU budget
    "rot-std-r18-w16-fmnist": ("backbone", "--epochs=3 --subset=5000 --progress=False"),
    "rot-adv-r18-w16-fmnist": ("backbone", f"--epochs=2 {CPU}"),
    "jig-adv-r18-w16-fmnist": ("backbone", f"--epochs=2 {CPU}"),
    "at-baseline-r18-w16-fmnist": ("classifier", f"--ft_epochs=3 {CPU} \"--eval_attacks=('clean',)\""),
}
TASK = {"rot": "rotation", "jig": "jigsaw", "at": "none"}


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


def entry(name: str, path: Path, metrics: dict, report: dict) -> dict:
    kind = ZOO[name][0]
    recipe = report["recipe"]
    adv = recipe.get("adversarial", False) or kind == "classifier"
    steps, alpha = recipe.get("attack_steps"), recipe.get("alpha")
    attack = f"linf pgd-{steps} eps={recipe.get('eps')} step={alpha} random-start train-mode"
    if kind == "backbone":
        desc = (f"{TASK[name[:3]]} pretext, {'PGD-3 adversarial' if adv else 'standard'} pretraining on "
                f"{recipe['subset']} Fashion-MNIST training images (labels unused); headless backbone")
    else:
        desc = (f"end-to-end Madry adversarial training from scratch (PGD-{steps}, eps 0.1) on "
                f"{recipe['subset']} Fashion-MNIST training images")
    return {
        "name": name, "arch": "resnet18", "kind": kind, "task": TASK[name[:3].rstrip("-")], "training":
        "adv" if adv else "std", "dataset": "fashion-mnist", "input_size": [1, 28, 28],
        "num_classes": 10 if kind == "classifier" else 0, "width": 0.25,
        "pretrain_attack": attack if adv and kind == "backbone" else None,
        "finetune": (f"adv-full from scratch (Madry {attack}, {recipe['ft_epochs']} epochs)"
                     if kind == "classifier" else None),
        "parents": [], "repo_id": None, "filename": path.name, "revision": None, "sha256": file_sha256(path),
        "recipe": name, "reproduce": f"python training/reproduce.py {name} {ZOO[name][1]}",
        "metrics": metrics, "paper_metrics": {}, "description": desc,
    }


def _same_weights(a: Path, b: Path) -> bool:
    """Equal tensors and metadata (the bytes may differ in header key order)."""
    from safetensors.torch import load_file as tensors

    from robustzoo.weights import read_metadata

    ta, tb = tensors(a), tensors(b)
    return (read_metadata(a) == read_metadata(b) and ta.keys() == tb.keys()
            and all(torch.equal(ta[k], tb[k]) for k in ta))


def main(argv: list[str] | None = None) -> int:
    from robustzoo.weights import load_file, save_pretrained

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", default=list(ZOO))
    ap.add_argument("--runs", default="runs/zoo", help="where training/reproduce.py writes its runs")
    ap.add_argument("--out", default=str(ROOT / "robustzoo" / "zoo"))
    ap.add_argument("--pgd-n", type=int, default=10000, help="PGD-20 on the first N test images (default: all)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    data = load_data(5000)
    out, runs = Path(args.out), Path(args.runs).resolve()
    zoo_json = out / "zoo.json"
    entries = {e["name"]: e for e in (json.loads(zoo_json.read_text()) if zoo_json.exists() else [])}
    for name in args.only:
        run, report, seconds = reproduce(name, runs)
        model = load_file(run)
        final = out / f"{name}.safetensors"
        keep = {k: v for k, v in model.pretrained_meta.items() if k not in ("source",)}
        path = save_pretrained(model, out / f".{name}", name=name, metadata=keep)
        if not (final.is_file() and _same_weights(path, final)):  # keep the shipped bytes (and sha256) if equal
            path.replace(final)
        for leftover in (out / f".{name}").iterdir():
            leftover.unlink()
        (out / f".{name}").rmdir()
        t0 = time.perf_counter()
        metrics = measure(name, model, report, data, args, file_sha256(final))
        metrics.update(machine=MACHINE, python=platform.python_version(), date=time.strftime("%Y-%m-%d"),
                       eps=EPS, attack="linf pgd-20 step 0.025 random-start eval-mode, CE",
                       test_set="Fashion-MNIST test set: the first n / pgd20_n / autoattack_n images",
                       n_train=report["recipe"]["subset"], train_seconds=round(report.get("seconds") or seconds, 1),
                       measure_seconds=round(time.perf_counter() - t0, 1))
        entries[name] = entry(name, final, metrics, report)
        zoo_json.write_text(json.dumps([entries[k] for k in sorted(entries)], indent=1) + "\n")
        print(f"{name}: {json.dumps(metrics)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
