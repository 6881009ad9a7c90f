"""Shared pieces of the Fashion-MNIST benchmarks (``train_zoo.py``, ``mini_repro.py``).

Nothing here trains by itself: pretraining goes through ``training/pretrain.py`` (the same entry
point that reproduces every registry weight) and fine-tuning through :func:`robustzoo.finetune`,
so the benchmarks measure the code users run.
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

EPS, ALPHA_EVAL = 0.1, 0.025  # Fashion-MNIST budget: Linf 0.1, step eps/4 (as 2/255 vs 8/255 on CIFAR-10)
MACHINE = f"2-core CPU, no GPU, torch {torch.__version__}"


def cpu_name() -> str:
    """The processor model and the kernels torch picked for it (cells record it: sessions land on
    different machines, and oneDNN's kernels, bugs included, depend on the vector ISA)."""
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        model = "unknown CPU"
    return f"{model}, {torch.backends.cpu.get_cpu_capability()}"


def load_data(n_train: int, quick: bool = False) -> dict:
    """First ``n_train`` embedded training images; a disjoint 500-image validation split; the test set."""
    from robustzoo.fmnist import load_embedded, load_fashion_mnist

    xtr, ytr = load_embedded("train")
    xte, yte = load_embedded("test") if quick else load_fashion_mnist("test")
    val = slice(len(xtr) - 1000, None)  # the last 1,000 embedded training images: model selection only
    return {"train": (xtr[:n_train], ytr[:n_train]), "val": (xtr[val][:500], ytr[val][:500]), "test": (xte, yte)}


def pretrain(recipe_name: str, *, n_train: int, width: float, epochs: int, steps: int, alpha: float, seed: int,
             batch_size: int = 128, out_dir: str | None = None) -> tuple[torch.nn.Module, dict]:
    """Pretext pretraining through ``training/pretrain.py`` with CPU-sized overrides; returns (backbone, report)."""
    from robustzoo.weights import load_file
    from training.pretrain import pretrain as run
    from training.recipes import resolve

    out = out_dir or tempfile.mkdtemp(prefix=f"{recipe_name}-s{seed}-")
    rec = resolve(recipe_name, {"width": width, "epochs": epochs, "attack_steps": steps, "alpha": alpha,
                                "seed": seed, "subset": n_train, "progress": False, "batch_size": batch_size,
                                "warmup_iters": max(1, n_train // batch_size),
                                "test_n": 500})  # one epoch of warm-up; pretext test on 500 images
    report = run(replace(rec, out_dir=out))
    return load_file(Path(out)), report


def finetune_loop(model: torch.nn.Module, train: tuple, val: tuple, *, mode: str, epochs: int, steps: int,
                  alpha: float, seed: int, lr: float = 0.1, batch_size: int = 128, val_steps: int = 10,
                  tag: str = "", progress: bool = False) -> tuple[torch.nn.Module, list, int]:
    """:func:`robustzoo.finetune` with the benchmark's settings; returns (best model, history, best epoch 0-based)."""
    from robustzoo.finetuning import finetune

    result = finetune(model, train, mode=mode, val_data=val, epochs=epochs, steps=steps, alpha=alpha, eps=EPS,
                      eval_steps=val_steps, seed=seed, lr=lr, batch_size=batch_size, schedule="cosine",
                      num_classes=10 if getattr(model, "num_classes", 10) == 0 else None,
                      padding=2, progress=progress, channels_last=True)
    history = [{"epoch": i, "loss": r["loss"], "val_clean": r["val_clean"], "val_robust": r["val_robust"],
                "seconds": r["seconds"]} for i, r in enumerate(result.history)]
    return result.model.eval(), history, result.best_epoch - 1


def for_eval(model: torch.nn.Module) -> torch.nn.Module:
    """The model in eval mode with channels-last weights: the same function, and 1.2x to 1.4x more PGD
    steps per second on this CPU (``benchmarks/eval_speed.py``, benchmarks/RESULTS.md)."""
    return model.to(memory_format=torch.channels_last).eval()


def linear_probe(backbone: torch.nn.Module, train: tuple, test: tuple, *, epochs: int = 100,
                 seed: int = 0) -> tuple[float, torch.nn.Module]:
    """Logistic-regression head on frozen, pooled features (full-batch L-BFGS).

    Returns the clean test accuracy (%) and the probe as one classifier (backbone, then the head with
    the feature standardisation folded in), so that it can be attacked end to end like any model."""
    backbone.eval()
    with torch.no_grad():
        ftr = torch.cat([backbone(b) for b in train[0].split(500)])
        fte = torch.cat([backbone(b) for b in test[0].split(500)])
    mu, sd = ftr.mean(0), ftr.std(0) + 1e-6
    ftr, fte = (ftr - mu) / sd, (fte - mu) / sd
    torch.manual_seed(seed)
    head = torch.nn.Linear(ftr.shape[1], 10)
    opt = torch.optim.LBFGS(head.parameters(), lr=1, max_iter=epochs, history_size=20)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(head(ftr), train[1]) + 1e-4 * head.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        acc = 100.0 * (head(fte).argmax(1) == test[1]).float().mean().item()
        folded = torch.nn.Linear(ftr.shape[1], 10)  # head((f - mu) / sd) == folded(f)
        folded.weight.copy_(head.weight / sd)
        folded.bias.copy_(head.bias - folded.weight @ mu)
    return acc, torch.nn.Sequential(backbone, folded).eval()
