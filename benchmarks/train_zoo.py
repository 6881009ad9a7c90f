"""Train the tiny embedded Fashion-MNIST zoo on CPU and write ``robustzoo/zoo/`` (weights + zoo.json).

What is trained (ResNet-18 pre-act, width 0.25 = 16 stem channels, in_chans 1, Linf eps 0.1):

* ``rot-std-r18-w16-fmnist``, ``rot-adv-r18-w16-fmnist``, ``jig-adv-r18-w16-fmnist``: pretext
  backbones (labels unused), trained with the project's pretext tasks (``training/tasks.py``) and
  recipes (``training/recipes.py``, CPU-shortened: fewer epochs, PGD-3 instead of PGD-10, a
  subset of the training images; every override is recorded in zoo.json);
* ``at-baseline-r18-w16-fmnist``: end-to-end Madry adversarial training from scratch (the paper's
  baseline), a 10-way classifier.

Metrics are measured on the FULL 10,000-image Fashion-MNIST test set (clean and PGD-20, eps 0.1,
step 0.025, eval mode), AutoAttack (standard) on a stated prefix of it; backbones get a
linear-probe clean accuracy (logistic head on frozen pooled features, trained on the same
training subset) on the full test set, plus their pretext accuracy on the test images.

    python benchmarks/train_zoo.py [--quick] [--out robustzoo/zoo] [--aa-n 200]

Shared helpers (pretraining loop, fine-tuning loop, probe) are imported by ``mini_repro.py``.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from robustzoo.attacks import pgd  # noqa: E402
from robustzoo.models import ResNet  # noqa: E402
from training.recipes import resolve  # noqa: E402
from training.tasks import PretextModel, make_task  # noqa: E402

EPS, ALPHA_EVAL = 0.1, 0.025
MACHINE = f"2-core CPU, no GPU, torch {torch.__version__}"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def augment(x: torch.Tensor, gen: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random crop (zero pad ``pad``) + horizontal flip, batched (the recipes' crop_pad=2, flip)."""
    b, _, h, w = x.shape
    xp = F.pad(x, (pad,) * 4)
    i, j = torch.randint(0, 2 * pad + 1, (2,), generator=gen).tolist()  # one offset per batch: cheap
    out = xp[:, :, i:i + h, j:j + w]
    flip = torch.rand(b, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(3), out)


def _lr(it: int, total: int, base: float, warmup: int) -> float:
    if it < warmup:
        return base * (0.1 + 0.9 * it / warmup)
    return base * 0.5 * (1 + math.cos(math.pi * (it - warmup) / max(1, total - warmup)))


def pretrain(recipe_name: str, x: torch.Tensor, *, width: float, epochs: int, steps: int, alpha: float,
             seed: int, batch_size: int = 128, progress: bool = False) -> tuple[ResNet, dict]:
    """Pretext pretraining with training/tasks.py: loss (clean + adv) / 2 for adversarial recipes (spec 2.3)."""
    rec = resolve(recipe_name, {"width": width, "epochs": epochs, "attack_steps": steps, "alpha": alpha,
                                "seed": seed})
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    bb = ResNet("resnet18", num_classes=0, in_chans=1, width=width)
    model = PretextModel(bb, make_task(rec, bb))
    opt = torch.optim.SGD(model.parameters(), lr=rec.lr, momentum=rec.momentum, weight_decay=rec.weight_decay)
    nb = len(x) // batch_size
    total, it, t0 = epochs * nb, 0, time.perf_counter()
    for ep in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        for b in range(nb):
            xb = augment(x[perm[b * batch_size:(b + 1) * batch_size]], gen)
            inputs, targets = model.task.make_batch(xb, gen)
            adv = None
            if rec.adversarial:
                adv = model.task.attack(model, inputs, targets, eps=rec.eps, alpha=rec.alpha, steps=rec.attack_steps,
                                        mode="train", generator=gen)
            for g in opt.param_groups:
                g["lr"] = _lr(it, total, rec.lr, min(rec.warmup_iters, nb))
            loss, _, _ = model(inputs, targets, adv)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            it += 1
        if progress:
            print(f"  [{recipe_name} seed {seed}] epoch {ep + 1}/{epochs} loss {loss.item():.3f} "
                  f"({time.perf_counter() - t0:.0f}s)", flush=True)
    info = {"recipe": recipe_name, "epochs": epochs, "attack": f"pgd-{steps} step {alpha} train-mode"
            if rec.adversarial else None, "eps": rec.eps if rec.adversarial else None, "n_train": len(x),
            "seed": seed, "seconds": round(time.perf_counter() - t0, 1), "task": rec.task, "model": model}
    return model.export_backbone(), info


def pretext_accuracy(model: PretextModel, x: torch.Tensor, *, steps: int = 0, seed: int = 0) -> float:
    """Pretext-task accuracy (%) on ``x`` (clean, or under PGD-``steps`` eval-mode on the pretext loss)."""
    gen = torch.Generator().manual_seed(seed)
    model.eval()
    hits = n = 0
    for xb in x.split(500):
        inputs, targets = model.task.make_batch(xb, gen)
        if steps:
            inputs = model.task.attack(model, inputs, targets, eps=EPS, alpha=ALPHA_EVAL, steps=steps, mode="eval",
                                       generator=gen)
        with torch.no_grad():
            _, correct = model.task.per_sample(model.backbone, inputs, targets)
        hits, n = hits + correct.sum().item(), n + len(xb)
    return 100.0 * hits / n


def _freeze_for(model: ResNet, mode: str) -> list:
    """Trainable parameters for ``mode``; partial = layer4 + linear (the paper's theta_r, spec 4.1)."""
    if mode != "partial":
        return list(model.parameters())
    train = [model.layer4, model.linear]
    for p in model.parameters():
        p.requires_grad_(False)
    for m in train:
        for p in m.parameters():
            p.requires_grad_(True)
    return [p for m in train for p in m.parameters()]


def _set_train(model: ResNet, mode: str) -> None:
    model.train()
    if mode == "partial":  # frozen layers keep their (pretrained) BN statistics
        for m in (model.conv1, model.bn1, model.layer1, model.layer2, model.layer3):
            m.eval()


def val_metrics(model: ResNet, x: torch.Tensor, y: torch.Tensor, *, steps: int = 10, seed: int = 0) -> tuple:
    """Clean and PGD-``steps`` (eval mode, eps 0.1, step 0.025) accuracy in %."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        clean = (model(x).argmax(1) == y)
    xa = pgd(lambda z: F.cross_entropy(model(z), y, reduction="none"), x, eps=EPS, alpha=ALPHA_EVAL, steps=steps,
             model=model, mode="eval", generator=gen)
    with torch.no_grad():
        rob = (model(xa).argmax(1) == y) & clean
    return 100.0 * clean.float().mean().item(), 100.0 * rob.float().mean().item()


def finetune_loop(model: ResNet, train: tuple, val: tuple, *, mode: str, epochs: int, steps: int, alpha: float,
                  seed: int, lr: float = 0.1, batch_size: int = 128, val_steps: int = 10, tag: str = "",
                  progress: bool = False) -> tuple[ResNet, list, int]:
    """partial / full / adv-full (Madry PGD-``steps`` in train mode, CE on adversarial only; spec 4.2).

    SGD momentum 0.9, wd 5e-4, cosine LR with a short warm-up; validation each epoch on ``val``;
    returns the best checkpoint (by val robust accuracy for adv-full, val clean otherwise).
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x, y = train
    params = _freeze_for(model, mode)
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)
    nb = len(x) // batch_size
    total, it, t0 = epochs * nb, 0, time.perf_counter()
    history, best, best_key, best_ep = [], None, -1.0, 0
    for ep in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for b in range(nb):
            idx = perm[b * batch_size:(b + 1) * batch_size]
            xb, yb = augment(x[idx], gen), y[idx]
            _set_train(model, mode)
            if mode == "adv-full":
                xb = pgd(lambda z, yb=yb: F.cross_entropy(model(z), yb), xb, eps=EPS, alpha=alpha, steps=steps,
                         model=model, mode=None, generator=gen)
            for g in opt.param_groups:
                g["lr"] = _lr(it, total, lr, min(20, nb))
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            it += 1
        vc, vr = val_metrics(model, *val, steps=val_steps, seed=seed)
        history.append({"epoch": ep, "loss": loss.item(), "val_clean": vc, "val_robust": vr,
                        "seconds": round(time.perf_counter() - t0, 1)})
        key = vr if mode == "adv-full" else vc
        if key > best_key:
            best, best_key, best_ep = copy.deepcopy(model.state_dict()), key, ep
        if progress:
            print(f"  [{tag}] epoch {ep + 1}/{epochs} val clean {vc:.1f} robust {vr:.1f} "
                  f"({time.perf_counter() - t0:.0f}s)", flush=True)
    model.load_state_dict(best)
    for p in model.parameters():
        p.requires_grad_(True)
    return model.eval(), history, best_ep


def linear_probe(backbone: ResNet, train: tuple, test: tuple, *, epochs: int = 100, seed: int = 0) -> float:
    """Clean test accuracy (%) of a logistic-regression head on frozen, pooled features (full-batch L-BFGS)."""
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
        return 100.0 * (head(fte).argmax(1) == test[1]).float().mean().item()


def load_data(n_train: int, quick: bool) -> dict:
    from robustzoo.fmnist import load_embedded, load_fashion_mnist

    xtr, ytr = load_embedded("train")
    xte, yte = (load_embedded("test") if quick else load_fashion_mnist("test"))
    val = slice(len(xtr) - 1000, None)  # the last 1,000 embedded training images: model selection only
    return {"train": (xtr[:n_train], ytr[:n_train]), "val": (xtr[val][:500], ytr[val][:500]), "test": (xte, yte)}


ZOO = {  # name -> (recipe, kind); the zoo's CPU budget (all recorded in zoo.json)
    "rot-std-r18-w16-fmnist": ("rot-std-r18-w16-fmnist", "backbone"),
    "rot-adv-r18-w16-fmnist": ("rot-adv-r18-w16-fmnist", "backbone"),
    "jig-adv-r18-w16-fmnist": ("jig-adv-r18-w16-fmnist", "backbone"),
    "at-baseline-r18-w16-fmnist": ("at-baseline-r18-w16-fmnist", "classifier"),
}
TASK = {"rot": "rotation", "jig": "jigsaw", "at": "none"}


def _entry(name: str, kind: str, info: dict, metrics: dict, path: Path, args) -> dict:
    tag = name.split("-")[0]
    adv = "-adv-" in name or kind == "classifier"
    cmd = f"python benchmarks/train_zoo.py --only {name} --n-train {args.n_train} --epochs {args.epochs} " \
          f"--steps {args.steps} --aa-n {args.aa_n}" + (f" --pgd-n {args.pgd_n}" if args.pgd_n else "")
    desc = (f"{TASK[tag]} pretext, {f'PGD-{args.steps} adversarial' if adv else 'standard'} pretraining on "
            f"{args.n_train} Fashion-MNIST training images (labels unused); headless backbone"
            if kind == "backbone" else
            f"end-to-end Madry adversarial training from scratch (PGD-{args.steps}, eps 0.1) on "
            f"{args.n_train} Fashion-MNIST training images")
    return {
        "name": name, "arch": "resnet18", "kind": kind, "task": TASK[tag], "training": "adv" if adv else "std",
        "dataset": "fashion-mnist", "input_size": [1, 28, 28], "num_classes": 10 if kind == "classifier" else 0,
        "width": 0.25, "pretrain_attack": (f"linf pgd-{args.steps} eps=0.1 step={args.alpha} random-start train-mode"
                                           if adv and kind == "backbone" else None),
        "finetune": (f"adv-full from scratch (Madry PGD-{args.steps}, eps 0.1, step {args.alpha}, "
                     f"{args.epochs + 1} epochs)" if kind == "classifier" else None),
        "parents": [], "repo_id": None, "filename": path.name, "revision": None, "sha256": sha256(path),
        "recipe": ZOO[name][0], "reproduce": cmd, "metrics": metrics, "paper_metrics": {}, "description": desc,
    }


def _eval_classifier(model, data, args) -> dict:
    from robustzoo.evaluate import evaluate

    full = evaluate(model, data["test"], eps=EPS, attacks=("clean",), progress=args.progress)
    rob = evaluate(model, data["test"], eps=EPS, attacks=("clean", "pgd20"), n=args.pgd_n, progress=args.progress)
    out = {"clean": round(full.accuracy["clean"], 2), "n": full.n, "pgd20": round(rob.accuracy["pgd20"], 2),
           "pgd20_n": rob.n, "clean_pgd20_subset": round(rob.accuracy["clean"], 2),
           "eval_seconds": {**full.settings["seconds"], **rob.settings["seconds"]}}
    if args.aa_n:
        aa = evaluate(model, data["test"], eps=EPS, attacks=("clean", "autoattack"), n=args.aa_n,
                      progress=args.progress)
        out.update({"autoattack": round(aa.accuracy["autoattack"], 2),
                    "clean_aa_subset": round(aa.accuracy["clean"], 2),
                    "autoattack_n": aa.n, "autoattack_seconds": aa.settings["seconds"].get("autoattack")})
    return out


def main(argv: list[str] | None = None) -> int:
    from filelock import FileLock

    from robustzoo.weights import save_pretrained

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "robustzoo" / "zoo"))
    ap.add_argument("--only", nargs="*", default=list(ZOO))
    ap.add_argument("--n-train", type=int, default=5000)
    ap.add_argument("--epochs", type=int, default=2, help="adversarial pretraining epochs (std: +1, baseline: +1)")
    ap.add_argument("--steps", type=int, default=3, help="PGD steps during training")
    ap.add_argument("--alpha", type=float, default=0.04)
    ap.add_argument("--pgd-n", type=int, default=None, help="PGD-20 on the first N test images (default all)")
    ap.add_argument("--aa-n", type=int, default=200, help="AutoAttack on the first N test images (0 = skip)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="smoke test: embedded test split, tiny budget")
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load_data(args.n_train, args.quick)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    zoo_json = out / "zoo.json"
    stamp = {"machine": MACHINE, "python": platform.python_version(), "date": time.strftime("%Y-%m-%d"),
             "eps": EPS, "attack": "linf pgd-20 step 0.025 random-start eval-mode, CE",
             "test_set": "Fashion-MNIST test (first n images)" if not args.quick else "embedded test split"}
    for name in args.only:
        recipe, kind = ZOO[name]
        t0 = time.perf_counter()
        if kind == "backbone":
            adv = "-adv-" in name
            bb, info = pretrain(recipe, data["train"][0], width=0.25, epochs=args.epochs + (0 if adv else 1),
                                steps=args.steps, alpha=args.alpha, seed=0, progress=True)
            pm = info.pop("model")
            metrics = {"pretext_clean": round(pretext_accuracy(pm, data["test"][0]), 2),
                       "pretext_pgd20": round(pretext_accuracy(pm, data["test"][0][:500], steps=20), 2),
                       "pretext_pgd20_n": min(500, len(data["test"][0])),
                       "linear_probe_clean": round(linear_probe(bb, data["train"], data["test"]), 2),
                       "n": len(data["test"][0])}
            model = bb
        else:
            torch.manual_seed(0)
            model = ResNet("resnet18", num_classes=10, in_chans=1, width=0.25)
            model, hist, best = finetune_loop(model, data["train"], data["val"], mode="adv-full",
                                              epochs=args.epochs + 1, steps=args.steps, alpha=args.alpha, seed=0,
                                              tag=name, progress=True)
            info = {"epochs": args.epochs + 1, "best_epoch": best, "history": hist}
            metrics = _eval_classifier(model, data, args)
        metrics.update(stamp, train_seconds=round(time.perf_counter() - t0, 1), n_train=args.n_train,
                       train_settings={k: v for k, v in info.items() if k != "history"})
        path = save_pretrained(model, out / f".{name}", name=name)
        final = out / f"{name}.safetensors"
        path.replace(final)
        final.chmod(0o644)  # mkstemp made it 0600; a package file must be world-readable
        for leftover in (out / f".{name}").iterdir():
            leftover.unlink()
        (out / f".{name}").rmdir()
        # several trainers may run side by side: merge under a lock, never clobber
        with FileLock(str(Path(tempfile.gettempdir()) / "robustzoo-zoo-json.lock")):
            entries = {e["name"]: e for e in (json.loads(zoo_json.read_text()) if zoo_json.exists() else [])}
            entries[name] = _entry(name, kind, info, metrics, final, args)
            zoo_json.write_text(json.dumps([entries[k] for k in sorted(entries)], indent=1) + "\n")
        print(f"{name}: {json.dumps(metrics)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
