"""``robustzoo demo``: the paper's main claim, live, offline, on a 2-core CPU in a few minutes.

Chen et al. (CVPR 2020) show that starting adversarial fine-tuning from an *adversarially
pretrained* self-supervised backbone gives higher robust accuracy, in fewer epochs, than
adversarial training from scratch. The demo runs that comparison on real data shipped with the
package (the embedded Fashion-MNIST subset, :func:`robustzoo.fmnist.load_embedded`):

1. load the embedded rotation-adversarially pretrained backbone through :func:`robustzoo.load`
   (the same verified loader users call) and adversarially fine-tune it (``adv-full``, Madry PGD);
2. adversarially train the same architecture from a random initialisation with the same budget
   (data, epochs, optimiser, attack);
3. evaluate both (clean and PGD-20, Linf eps 0.1, on the embedded test split), print a table and
   plot validation robust accuracy against epoch (``demo_robust_acc.png``).

The table's numbers are whatever this run measures. One run is one seed, so beside its difference
the demo prints the interval the mini-reproduction (``benchmarks/mini_repro.py``: 8 paired
fine-tuning seeds on all 10,000 test images) measured for the same comparison, as the release step
recorded it in the backbone's registry record (``metrics["repro_vs_scratch"]``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from .errors import DataError

__all__ = ["run_demo", "main", "DEFAULTS", "QUICK"]

BACKBONE = "rot-adv-r18-w8-fmnist"
EPS = 0.1  # Fashion-MNIST Linf budget in pixel units (the common choice; step eps/4 as 2/255 vs 8/255)
# Full demo: the optimiser and attack of the mini-reproduction's fine-tuning (benchmarks/mini_repro.py: 2,000
# labels, 15 epochs of PGD-3, batch 64, lr 0.05 cosine), so that its single run and the reproduction's interval
# answer nearly the same question (the demo's labels are the embedded class-balanced subset, 10 % held out for
# validation, no flip; the cells draw 2,000 + 500 by seed and flip); a few minutes on 2 CPU cores at width 8.
DEFAULTS = {"n_train": 2000, "n_test": 1000, "epochs": 15, "steps": 3, "alpha": 0.04, "batch_size": 64, "lr": 0.05,
            "eval_steps": 5}
# --quick: seconds, for the tests; same code path, tiny numbers.
QUICK = {"n_train": 200, "n_test": 64, "epochs": 2, "steps": 1, "alpha": 0.1, "batch_size": 64, "lr": 0.05,
         "eval_steps": 2}


def _subset(x: torch.Tensor, y: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` samples of each class in turn (class-balanced, deterministic)."""
    per = max(1, n // 10)
    idx = torch.cat([torch.nonzero(y == c).flatten()[:per] for c in range(10)])
    idx = idx.sort().values
    return x[idx], y[idx]


def _arm(model, data, cfg: dict, *, seed: int, progress: bool, label: str) -> dict:
    from .evaluation import evaluate
    from .finetuning import finetune

    torch.manual_seed(seed)
    t0 = time.perf_counter()
    # cosine schedule, as the reproduction's fine-tuning. No horizontal flip: every Fashion-MNIST shoe faces the
    # same way, and flipped copies made short runs' accuracy swing with the seed (mode="full", 3 epochs:
    # 43.5-69.5 % with flips, 63-70 % without; tests/test_demo.py).
    res = finetune(model, data["train"], mode="adv-full", epochs=cfg["epochs"], eps=EPS, alpha=cfg["alpha"],
                   steps=cfg["steps"], eval_steps=cfg["eval_steps"], batch_size=cfg["batch_size"], lr=cfg["lr"],
                   schedule="cosine",
                   padding=2, flip=False, seed=seed, progress=progress)
    train_s = time.perf_counter() - t0
    ev = evaluate(res.model, data["test"], eps=EPS, attacks=("clean", "pgd20"), seed=seed, progress=progress)
    return {
        "arm": label,
        "clean": ev.accuracy["clean"],
        "pgd20": ev.accuracy["pgd20"],
        "best_epoch": res.best_epoch,
        "history": [{k: v for k, v in h.items() if isinstance(v, (int, float))} for h in res.history],
        "train_seconds": round(train_s, 1),
        "eval_seconds": round(sum(ev.settings["seconds"].values()), 1),
    }


def _plot(arms: list[dict], path: Path, title: str) -> list[float]:
    """Validation robust accuracy per epoch, both arms; returns the x ticks drawn (whole epochs)."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    for arm, style in zip(arms, ("o-", "s--")):
        epochs = [h["epoch"] for h in arm["history"]]  # 1-based
        ax.plot(epochs, [h["val_robust"] for h in arm["history"]], style, label=arm["arm"])
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers: no 1.5 tick
    ax.set_xlabel("adversarial training epoch")
    ax.set_ylabel("validation robust accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    ticks = [float(t) for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    plt.close(fig)
    return ticks


def _table(arms: list[dict], cfg: dict, n_test: int, backbone: str, stem: int) -> str:
    lines = [
        f"Fashion-MNIST, ResNet-18 width {stem} (stem channels), Linf eps {EPS}; {cfg['n_train']} train images, "
        f"{cfg['epochs']} epochs "
        f"of PGD-{cfg['steps']} adversarial training (step {cfg['alpha']}); test: {n_test} embedded test images, "
        f"PGD-20 step {EPS / 4}; best epoch chosen on a held-out 10 % of the training images "
        f"(PGD-{cfg['eval_steps']}).",
        "",
        "| start from | clean acc. (%) | PGD-20 acc. (%) | best epoch | train s |",
        "|---|---|---|---|---|",
    ]
    for a in arms:
        lines.append(f"| {a['arm']} | {a['clean']:.1f} | {a['pgd20']:.1f} | {a['best_epoch']} | "
                     f"{a['train_seconds']:.0f} |")
    d_clean, d_rob = arms[0]["clean"] - arms[1]["clean"], arms[0]["pgd20"] - arms[1]["pgd20"]
    lines += ["", f"adversarial pretraining minus scratch: {d_clean:+.1f} clean, {d_rob:+.1f} PGD-20 (points).",
              evidence_line(backbone)]
    return "\n".join(lines)


def evidence_line(backbone: str) -> str:
    """The single run's difference in context: the reproduction's paired-seed interval for the same comparison."""
    from .registry import model_info

    rep = model_info(backbone).metrics.get("repro_vs_scratch")
    if not isinstance(rep, dict) or rep.get("ci_low") is None:
        return ("That is one run (one seed): read it as an anecdote; no multi-seed interval is recorded for "
                f"{backbone}.")
    so_far = " so far (the reproduction is still running)" if rep.get("partial") else ""
    return (f"That is one run (one seed). Over {rep['n_pairs']} paired seeds{so_far}, the difference is "
            f"{rep['diff_mean']:+.2f} [{rep['ci_low']:+.2f}, {rep['ci_high']:+.2f}] PGD-20 points (95 % t interval; "
            f"{rep['setting']}): {VERDICT_WORDS.get(rep['verdict'], rep['verdict'])}.")


VERDICT_WORDS = {"holds": "the gain holds", "reversed": "pretraining hurts there",
                 "inconclusive": "the interval spans 0, so the sign is not settled"}


def _output_folder(out_dir: str | os.PathLike) -> Path:
    """Create the output folder before any training, so a bad ``--out`` fails in a second, not after minutes."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"demo output {out} is a file, not a folder; pass a folder with --out DIR")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".robustzoo-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise DataError(f"cannot write the demo output folder {out} ({e.strerror}); pass another with --out DIR") \
            from None
    return out


def run_demo(
    quick: bool = False,
    out_dir: str | os.PathLike = ".",
    progress: bool = True,
    *,
    backbone: str = BACKBONE,
    seed: int = 0,
    threads: int | None = None,
) -> dict:
    """Run the demo and write ``demo_results.md``, ``demo_results.json`` and ``demo_robust_acc.png``.

    Args:
        quick: a seconds-long version (200 train / 64 test images, 2 epochs, PGD-1) for tests.
        out_dir: folder for the outputs (created).
        progress: tqdm bars during fine-tuning and evaluation.
        backbone: the embedded adversarially pretrained backbone to start from.
        seed: seeds initialisation, data order and attacks (both arms get the same seed).
        threads: torch CPU threads; default 2 for the full demo (it is sized for 2 cores) and 1 for
            ``quick`` (tiny batches gain nothing from a second thread, and lose a lot on a busy machine).

    Returns:
        A dict with the settings, both arms' results (clean, PGD-20, per-epoch history) and the
        paths written.
    """
    import robustzoo

    from .fmnist import load_embedded
    from .models import create_model

    threads = threads if threads is not None else (1 if quick else 2)
    if threads:
        torch.set_num_threads(threads)
    cfg = dict(QUICK if quick else DEFAULTS)
    out = _output_folder(out_dir)
    data = {"train": _subset(*load_embedded("train"), cfg["n_train"]),
            "test": _subset(*load_embedded("test"), cfg["n_test"])}
    pre = robustzoo.load(backbone)
    if getattr(pre, "num_classes", None) != 0:
        raise DataError(f"{backbone} is not a headless pretrained backbone")
    torch.manual_seed(seed)  # the new head's initialisation is part of the seeded run
    pre.reset_classifier(10)
    torch.manual_seed(seed)
    scratch = create_model(**{**pre.config, "num_classes": 10})
    t0 = time.perf_counter()
    arms = [_arm(pre, data, cfg, seed=seed, progress=progress, label=f"{backbone} (adv. pretrained)"),
            _arm(scratch, data, cfg, seed=seed, progress=progress, label="random init (adv. training from scratch)")]
    table = _table(arms, cfg, len(data["test"][0]), backbone, round(64 * pre.config["width"]))
    paths = {"table": out / "demo_results.md", "json": out / "demo_results.json", "plot": out / "demo_robust_acc.png"}
    # markdown and JSON first: minutes of training must never be lost to a missing plotting library
    paths["table"].write_text(table + "\n")
    result = {"settings": {**cfg, "eps": EPS, "backbone": backbone, "seed": seed, "quick": quick,
                           "dataset": "fmnist-mini (Fashion-MNIST subset shipped in the package)",
                           "n_test": len(data["test"][0]), "robustzoo": robustzoo.__version__,
                           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           "torch_threads": torch.get_num_threads(), "seconds": round(time.perf_counter() - t0, 1)},
              "arms": arms, "paths": {k: str(v) for k, v in paths.items() if k != "plot"}}
    paths["json"].write_text(json.dumps(result, indent=2) + "\n")
    print(table)
    written = f"{paths['table']} and {paths['json']}"
    if importlib.util.find_spec("matplotlib") is None:
        print("plot skipped: matplotlib is not installed (pip install 'robustzoo[plot]' to get demo_robust_acc.png)")
    else:
        _plot(arms, paths["plot"], f"Fashion-MNIST, eps {EPS}: adv. pretrained vs scratch ({cfg['epochs']} epochs)")
        result["paths"]["plot"] = str(paths["plot"])
        paths["json"].write_text(json.dumps(result, indent=2) + "\n")
        written = f"{paths['table']}, {paths['json']} and {paths['plot']}"
    print(f"\nwrote {written} ({result['settings']['seconds']:.0f} s)")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m robustzoo.demo [--quick] [--out DIR]``."""
    ap = argparse.ArgumentParser(prog="robustzoo demo", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a seconds-long version")
    ap.add_argument("--out", default="demo_out", help="output folder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    run_demo(quick=args.quick, out_dir=args.out, progress=not args.no_progress, seed=args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
