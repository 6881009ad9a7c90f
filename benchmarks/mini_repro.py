"""The paper's experiment in miniature on Fashion-MNIST, on CPU, in one script.

Chen et al. (CVPR 2020) compare no / standard / adversarial self-supervised pretraining (rotation,
jigsaw, ensemble) x partial / full / adversarial full fine-tuning. Here, at a CPU scale:

* pretraining: none, rot-std, rot-adv, jig-adv through ``training/pretrain.py`` (the recipes
  ``*-r18-w16-fmnist`` with CPU-sized overrides), ResNet-18 width 0.125, PGD-3 (eps 0.1, step 0.04) for adv;
  fine-tuning through :func:`robustzoo.finetune` (cosine schedule; see ``mini_lib.py``);
* fine-tuning: partial (layer4 + head), full (standard CE), adv-full (Madry PGD-3, train mode);
* the paper's "ensemble" is represented by the softmax ensemble of the rot-adv and jig-adv
  adv-full classifiers (the fine-tune ensemble, its best reported model); ensemble *pretraining*
  (with selfie) does not fit the CPU budget and is not run;
* seeds 0, 1, 2 (pretraining and fine-tuning both re-seeded): mean and sample std;
* test: clean on the full 10,000 Fashion-MNIST test images; PGD-20 (eps 0.1, step 0.025, eval
  mode) on the first ``--pgd-n`` (default: all 10,000); AutoAttack (standard) on the first ``--aa-n``
  for seed-0 adv-full models; per-epoch validation (held-out embedded training images) gives the epochs needed to
  reach the scratch baseline's best validation robust accuracy (the compute-saving claim).

Writes ``benchmarks/mini_repro.json``, ``benchmarks/mini_repro.md`` and ``benchmarks/mini_repro.png``.

    python benchmarks/mini_repro.py [--seeds 0 1 2] [--n-train 2000] [--resume]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mini_lib import EPS, MACHINE, ROOT, finetune_loop, for_eval, pretrain  # noqa: E402

from robustzoo.models import ResNet, SoftmaxEnsemble  # noqa: E402

OUT = ROOT / "benchmarks"
PRETRAIN = {"none": None, "rot-std": "rot-std-r18-w16-fmnist", "rot-adv": "rot-adv-r18-w16-fmnist",
            "jig-adv": "jig-adv-r18-w16-fmnist"}
MODES = ("partial", "full", "adv-full")


def _test(model, data, args, *, aa: bool = False) -> dict:
    from robustzoo.evaluation import evaluate

    model = for_eval(model)
    clean = evaluate(model, data["test"], eps=EPS, attacks=("clean",), progress=False)
    rob = evaluate(model, data["test"], eps=EPS, attacks=("clean", "pgd20"), n=args.pgd_n, progress=False)
    out = {"clean": clean.accuracy["clean"], "pgd20": rob.accuracy["pgd20"]}
    if aa and args.aa_n:
        a = evaluate(model, data["test"], eps=EPS, attacks=("clean", "autoattack"), n=args.aa_n, progress=False)
        out["autoattack"] = a.accuracy["autoattack"]
    return out


def run_seed(seed: int, data: dict, args, results: dict, save) -> None:
    backbones = {}
    for p, recipe in PRETRAIN.items():
        if recipe is None:
            continue
        adv = p.endswith("-adv")
        t0 = time.perf_counter()
        bb, _ = pretrain(recipe, n_train=args.n_train, width=args.width, epochs=args.pt_epochs + (0 if adv else 1),
                         steps=args.steps, alpha=args.alpha, seed=seed, batch_size=args.batch_size)
        backbones[p] = bb
        results["pretrain_seconds"][f"{p}/{seed}"] = seconds = round(time.perf_counter() - t0, 1)
        print(f"pretrained {p} seed {seed} in {seconds:.0f}s", flush=True)
    adv_models = {}
    for p in PRETRAIN:
        for mode in MODES:
            key = f"{p}/{mode}/{seed}"
            if key in results["cells"]:
                continue
            torch.manual_seed(1000 + seed)
            if p == "none":
                model = ResNet("resnet18", num_classes=10, in_chans=1, width=args.width)
            else:  # the pretrained headless backbone plus a fresh 10-way head
                model = copy.deepcopy(backbones[p])
                model.reset_classifier(10)
            t0 = time.perf_counter()
            epochs = args.ft_epochs if mode == "adv-full" else args.std_epochs
            model, hist, best = finetune_loop(model, data["train"], data["val"], mode=mode, epochs=epochs,
                                              steps=args.steps, alpha=args.alpha, seed=seed, val_steps=args.val_steps,
                                              batch_size=args.batch_size, lr=args.lr)
            train_s = time.perf_counter() - t0
            test = _test(model, data, args, aa=(mode == "adv-full" and seed == 0))
            results["cells"][key] = {"pretrain": p, "mode": mode, "seed": seed, "best_epoch": best,
                                     "history": hist, "train_seconds": round(train_s, 1), **test}
            if mode == "adv-full":
                adv_models[p] = model
            print(f"{key}: clean {test['clean']:.1f} pgd20 {test['pgd20']:.1f} "
                  f"{'AA {:.1f} '.format(test['autoattack']) if 'autoattack' in test else ''}"
                  f"best ep {best + 1} ({train_s:.0f}s train)", flush=True)
            save()
    if {"rot-adv", "jig-adv"} <= set(adv_models):
        ens = SoftmaxEnsemble([adv_models["rot-adv"], adv_models["jig-adv"]]).eval()
        results["cells"][f"ens-ft/adv-full/{seed}"] = {"pretrain": "ens-ft", "mode": "adv-full", "seed": seed,
                                                        **_test(ens, data, args, aa=seed == 0)}
        save()


def _span(n: int) -> str:
    return "all 10,000" if n >= 10000 else f"the first {n}"


def _ms(vals: list[float]) -> str:
    if not vals:
        return "-"
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.mean(vals):.1f} ± {sd:.1f}"


def epochs_to_target(results: dict) -> dict:
    """Per pretraining: epochs of adv-full fine-tuning until val RA >= the scratch arm's best val RA (same seed)."""
    out = {}
    for p in PRETRAIN:
        got = []
        for seed in results["seeds"]:
            base, cell = results["cells"].get(f"none/adv-full/{seed}"), results["cells"].get(f"{p}/adv-full/{seed}")
            if not base or not cell:
                continue
            target = max(h["val_robust"] for h in base["history"])
            hit = [h["epoch"] + 1 for h in cell["history"] if h["val_robust"] >= target]
            got.append(hit[0] if hit else None)
        out[p] = got
    return out


def report(results: dict, args) -> str:
    cells = results["cells"]
    rows = [f"| pretraining | fine-tuning | clean (10k) | PGD-20 ({_span(args.pgd_n)}) | AutoAttack (first "
            f"{args.aa_n}, seed 0) | best epoch | epochs to scratch's best val RA |",
            "|---|---|---|---|---|---|---|"]
    ett = epochs_to_target(results)
    for p in [*PRETRAIN, "ens-ft"]:
        for mode in MODES:
            cs = [cells[k] for k in cells if k.startswith(f"{p}/{mode}/")]
            if not cs:
                continue
            aa = [c["autoattack"] for c in cs if "autoattack" in c]
            be = [c["best_epoch"] + 1 for c in cs if "best_epoch" in c]
            e = ett.get(p, []) if mode == "adv-full" else []
            rows.append(f"| {p} | {mode} | {_ms([c['clean'] for c in cs])} | {_ms([c['pgd20'] for c in cs])} | "
                        f"{f'{aa[0]:.1f}' if aa else '-'} | {', '.join(map(str, be)) or '-'} | "
                        f"{', '.join(f'>{args.ft_epochs}' if v is None else str(v) for v in e) or '-'} |")
    return "\n".join(rows)


def verdicts(results: dict, args) -> list[str]:
    c = results["cells"]

    def mean(p, mode, key="pgd20"):
        v = [c[k][key] for k in c if k.startswith(f"{p}/{mode}/")]
        return statistics.mean(v) if v else float("nan")

    def sd(p, mode, key="pgd20"):
        v = [c[k][key] for k in c if k.startswith(f"{p}/{mode}/")]
        return statistics.stdev(v) if len(v) > 1 else 0.0

    base, base_sd = mean("none", "adv-full"), sd("none", "adv-full")
    n_seeds = len(results["seeds"])
    caveat = "" if n_seeds > 1 else " [single seed: no spread yet, provisional]"
    best_single = max(("rot-adv", "jig-adv"), key=lambda p: mean(p, "adv-full"))
    out = []
    for p in ("rot-adv", "jig-adv"):
        d = mean(p, "adv-full") - base
        noise = max(base_sd, sd(p, "adv-full"))
        word = "holds" if d > noise else ("does not hold (within seed noise)" if abs(d) <= noise else "does not hold")
        out.append(f"1. Robust pretraining raises final robustness ({p} + adv-full vs scratch): {d:+.1f} PGD-20 "
                   f"points (seed std up to {noise:.1f}) -> {word} at this scale.{caveat}")
    d = mean("rot-adv", "adv-full") - mean("rot-std", "adv-full")
    noise = max(sd("rot-adv", "adv-full"), sd("rot-std", "adv-full"))
    out.append(f"1b. Control, adversarial vs standard rotation pretraining (both + adv-full): {d:+.1f} PGD-20 points "
               f"(seed std up to {noise:.1f}) -> the *robust* part of pretraining "
               f"{'helps' if d > noise else 'makes no measurable difference' if abs(d) <= noise else 'does worse'} "
               f"here.{caveat}")
    ett = epochs_to_target(results)
    for p in ("rot-adv", "jig-adv"):
        hits = ett.get(p, [])
        reached = [v for v in hits if v is not None]
        fewer = sum(1 for v in reached if v < args.ft_epochs)
        shown = ", ".join(f">{args.ft_epochs}" if v is None else str(v) for v in hits)
        out.append(f"2. Saves adversarial fine-tuning epochs ({p}): reaches scratch's best val RA after "
                   f"[{shown}] epochs (scratch needs up to {args.ft_epochs}); fewer epochs in {fewer}/{len(hits)} "
                   "seeds "
                   f"-> {'holds' if hits and fewer == len(hits) else 'partly holds' if fewer else 'does not hold'}."
                   f"{caveat}")
    d = mean("ens-ft", "adv-full") - mean(best_single, "adv-full")
    if d != d:  # nan: no ensemble cell yet
        return [*out, "3. Ensembling: not measured yet (needs both rot-adv and jig-adv adv-full models of a seed)."]
    noise = max(sd("ens-ft", "adv-full"), sd(best_single, "adv-full"))
    out.append(f"3. Ensembling pretext tasks helps further (softmax ensemble of rot-adv + jig-adv fine-tuned vs best "
               f"single, {best_single}): {d:+.1f} PGD-20 points (seed std up to {noise:.1f}) -> "
               f"{'holds' if d > noise else 'not shown (within noise)' if abs(d) <= noise else 'does not hold'} "
               f"(ensemble *pretraining* with the log-det penalty was not run).{caveat}")
    return out


def plot(results: dict, args, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8), dpi=120)
    for p, style in zip(PRETRAIN, ("k--", "C0-", "C1-", "C2-")):
        hs = [results["cells"][k]["history"] for k in results["cells"] if k.startswith(f"{p}/adv-full/")]
        if not hs:
            continue
        n = min(len(h) for h in hs)
        m = [statistics.mean(h[e]["val_robust"] for h in hs) for e in range(n)]
        ax.plot(range(1, n + 1), m, style, marker="o", label=f"{p} + adv-full ({len(hs)} seeds)")
    ax.set_xlabel("adversarial fine-tuning epoch")
    ax.set_ylabel(f"val. robust acc. (PGD-{args.val_steps}, %)")
    ax.set_title(f"Fashion-MNIST mini-reproduction, eps {EPS}, ResNet-18 w{args.width}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def update_results_section(text: str, path: Path = OUT / "RESULTS.md") -> None:
    """Replace only the body of this script's section (below its marker, up to the next heading)."""
    marker = "<!-- section: mini_repro (demo helper) -->"
    doc = path.read_text()
    start = doc.index(marker) + len(marker)
    end = doc.find("\n## ", start)
    end = len(doc) if end < 0 else end
    path.write_text(doc[:start] + "\n" + text.strip() + "\n" + doc[end:])


def main(argv: list[str] | None = None) -> int:
    from mini_lib import load_data

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--width", type=float, default=0.125)
    ap.add_argument("--pt-epochs", type=int, default=2, help="adversarial pretraining epochs (std gets +1)")
    ap.add_argument("--ft-epochs", type=int, default=4, help="adv-full fine-tuning epochs")
    ap.add_argument("--std-epochs", type=int, default=3, help="partial / full fine-tuning epochs")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--alpha", type=float, default=0.04)
    ap.add_argument("--batch-size", type=int, default=32, help="small batches: more SGD steps per CPU second")
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--pgd-n", type=int, default=10000, help="PGD-20 on the first N test images")
    ap.add_argument("--aa-n", type=int, default=50, help="AutoAttack on the first N (seed 0 adv-full)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--val-steps", type=int, default=5, help="PGD steps of the per-epoch validation attack")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--merge", nargs="+", metavar="DIR",
                    help="combine the mini_repro.json of runs made side by side (e.g. one process per seed), "
                         "then report")
    ap.add_argument("--report-only", action="store_true", help="rebuild md/png from mini_repro.json (no training)")
    ap.add_argument("--update-results", action="store_true",
                    help="also write the report into benchmarks/RESULTS.md (its mini_repro section)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jpath = out / "mini_repro.json"
    resume = (args.resume or args.report_only) and jpath.exists()
    results = json.loads(jpath.read_text()) if resume else {"cells": {}, "pretrain_seconds": {}}
    if args.merge:  # parallel processes, one per seed: cells are disjoint, wall time is the longest run
        parts = [json.loads((Path(d) / "mini_repro.json").read_text()) for d in args.merge]
        for part in parts:
            results["cells"].update(part["cells"])
            results["pretrain_seconds"].update(part["pretrain_seconds"])
        merged = dict(parts[0]["args"], seeds=sorted({c["seed"] for c in results["cells"].values()}))
        results.update(args=merged, wall_seconds=max(p["wall_seconds"] for p in parts), machine=parts[0]["machine"],
                       date=parts[0]["date"],
                       parallel=f"{len(parts)} processes side by side")
        jpath.write_text(json.dumps(results, indent=1) + "\n")
        args = argparse.Namespace(**{**merged, "out": str(out), "report_only": True, "merge": None,
                                     "update_results": args.update_results})
    if args.report_only:
        args = argparse.Namespace(**{**results["args"], "report_only": True, "update_results": args.update_results})
    if not args.report_only:
        results.update(args=vars(args), machine=MACHINE, date=time.strftime("%Y-%m-%d"),
                       wall_seconds_before=results.get("wall_seconds", 0))
    data = load_data(args.n_train, quick=False)
    data["val"] = (data["val"][0][:200], data["val"][1][:200])
    t0 = time.perf_counter()
    save = lambda: jpath.write_text(json.dumps(results, indent=1) + "\n")
    for seed in [] if args.report_only else args.seeds:
        run_seed(seed, data, args, results, save)
        results["wall_seconds"] = round(time.perf_counter() - t0 + results.get("wall_seconds_before", 0), 1)
        results["seeds_done"] = sorted({c["seed"] for c in results["cells"].values()})
        save()
    results["seeds"] = sorted({c["seed"] for c in results["cells"].values()})
    plot(results, args, out / "mini_repro.png")
    cmd = (f"python benchmarks/mini_repro.py --n-train {args.n_train} --pt-epochs {args.pt_epochs} --ft-epochs "
           f"{args.ft_epochs} --std-epochs {args.std_epochs} --pgd-n {args.pgd_n} --aa-n {args.aa_n} --val-steps "
           f"{args.val_steps}")
    seeds = sorted({c["seed"] for c in results["cells"].values()})
    wall = (f"{results['wall_seconds'] / 60:.0f} min wall for seeds {seeds}"
            + (f" run as {results['parallel']}" if results.get("parallel") else "")
            + ", machine shared with other jobs" if "wall_seconds" in results else "partial: first seed still running")
    md = [f"Mini-reproduction of Chen et al. (CVPR 2020) on Fashion-MNIST, measured {results['date']} on "
          f"{MACHINE}: `{cmd}` ({wall}).",
          "",
          f"Setup: ResNet-18 (pre-act) width {args.width}, {args.n_train} training images (embedded subset), "
          f"200 held-out validation images; pretraining {args.pt_epochs} epochs adv (PGD-{args.steps}, eps {EPS}, "
          f"step {args.alpha}) / {args.pt_epochs + 1} std; batch {args.batch_size}, SGD lr {args.lr} cosine; "
          f"fine-tuning {args.ft_epochs} epochs adv-full "
          f"(Madry PGD-{args.steps}) or {args.std_epochs} epochs partial/full; seeds {args.seeds} "
          "(mean ± sample std). Test: clean on all 10,000 test images, PGD-20 (step 0.025, eval mode) on "
          f"{_span(args.pgd_n)}, AutoAttack standard on the first {args.aa_n} (seed 0 only). 'ens-ft' = softmax "
          "ensemble of the rot-adv and jig-adv adv-full classifiers.",
          "", report(results, args), "", "![validation robust accuracy per epoch](mini_repro.png)", "",
          "Verdicts on the paper's three claims at this scale:", "", *verdicts(results, args)]
    (out / "mini_repro.md").write_text("\n".join(md) + "\n")
    if getattr(args, "update_results", False):
        update_results_section("\n".join(md))  # MODEL_CARD.md: python -m robustzoo.card --write MODEL_CARD.md
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
