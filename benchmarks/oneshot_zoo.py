"""The zoo part of ``benchmarks/gpu_oneshot.py``: a wide Fashion-MNIST zoo trained, tested and attacked in time.

ResNet-18 at width 0.5 (32 stem channels, hence ``w32``), in_chans 1, Linf eps 0.1, step 0.025:
rotation-adv and jigsaw-adv pretraining (``training.pretrain.pretrain``), adversarial full fine-tuning
of both and the end-to-end AT baseline (``robustzoo.finetune``, Madry PGD-10 in train mode, model
selection on a held-out 10 % of the training images), then clean and PGD-20 on the test set and
standard AutoAttack in chunks (``robustzoo.evaluate``). Epochs are planned from step rates measured
at the start of the part; the plan drops jigsaw first, then the whole zoo, when time is short.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from oneshot_parts import FMNIST, ZOO_LR, ats, environment, left, ts, write_json

# short name -> (base recipe in training/recipes.py, parent or None); trained in this order. The full
# name carries the stem width, as the embedded zoo's ``w16``: ``rot-adv-r18-w32-fmnist`` at width 0.5.
ITEMS = {
    "rot-adv": ("rot-adv-r18-w16-fmnist", None),
    "at-baseline": ("at-baseline-r18-w16-fmnist", None),
    "rot-adv-aft": ("rot-adv-aft-r18-w16-fmnist", "rot-adv"),
    "jig-adv": ("jig-adv-r18-w16-fmnist", None),
    "jig-adv-aft": ("jig-adv-aft-r18-w16-fmnist", "jig-adv"),
}


def full_name(item: str, width: float) -> str:
    return f"{item}-r18-w{max(1, round(64 * width))}-fmnist"


SLOW = 1.15  # the training loops do more than the calibrated step (augmentation, lr, stats): plan 15 % slower


def zoo_part(work: Path, deadline: float, cfg: dict, device: torch.device, data_dir: Path) -> None:
    from robustzoo.fmnist import load_fashion_mnist

    res: dict = {"env": environment(device), "models": {}, "skipped": [], "settings": {
        "width": cfg["zoo_width"], "batch": cfg["zoo_batch"], "lr": ZOO_LR, **FMNIST,
        "attack_steps": cfg["attack_steps"], "val_fraction": 0.1}}
    path = work / "zoo.json"
    t0 = time.time()
    xtr, ytr = load_fashion_mnist("train", data_dir)
    xte, yte = load_fashion_mnist("test", data_dir)
    if cfg["n_train"]:
        xtr, ytr, xte, yte = xtr[:cfg["n_train"]], ytr[:cfg["n_train"]], xte[:cfg["n_test"]], yte[:cfg["n_test"]]
    res["data"] = {"train": len(xtr), "test": len(xte), "source": str(data_dir), "load_s": time.time() - t0}
    res["calibration"] = calibrate(cfg, device)
    res["plan"] = plan(res["calibration"], len(xtr), len(xte), deadline, cfg)
    write_json(path, res)
    for item, (_, parent) in ITEMS.items():
        name, parent = full_name(item, cfg["zoo_width"]), parent and full_name(parent, cfg["zoo_width"])
        if item not in res["plan"]["items"]:
            res["skipped"].append({"item": name, "why": res["plan"]["why"]})
            continue
        need = res["plan"]["item_s"][item] + res["plan"]["reserve_s"]
        if parent and parent not in res["models"]:
            res["skipped"].append({"item": name, "why": f"its parent {parent} was not trained"})
        elif left(deadline) < need:
            res["skipped"].append({"item": name, "why": f"time budget ({left(deadline):.0f} s left, needs {need:.0f})"})
        else:
            res["models"][name] = train_item(item, name, parent, res["plan"]["epochs"], cfg, device, data_dir, work,
                                             xtr, ytr)
        write_json(path, res)
    test_all(res, work, cfg, device, xte, yte, deadline, path)
    autoattack(res, work, cfg, device, xte, yte, deadline, path)


def calibrate(cfg: dict, device: torch.device) -> dict:
    """Measured images/s of the two training steps at the zoo's settings (28x28x1, width, batch)."""
    from robustzoo.models import ResNet

    cuda = device.type == "cuda"
    pre = ts.bench("rotation", "adv", "r18", width=cfg["zoo_width"], batch=cfg["zoo_batch"], device=device,
                   precision="bf16-cl" if cuda else "fp32", warmup=2, iters=10, seconds=cfg["seconds"],
                   in_chans=1, size=28)
    torch.manual_seed(0)
    model = ResNet("resnet18", num_classes=10, in_chans=1, width=cfg["zoo_width"])
    ft = ats.finetune_rate(model, batch=cfg["zoo_batch"], n_batches=3, device=device, size=28, amp=cuda,
                           channels_last=cuda, eps=FMNIST["eps"])
    return {"pretext_adv_img_s": pre["img_s"], "finetune_adv_img_s": ft["img_s"], "attack_steps": 10}


def plan(cal: dict, n_train: int, n_test: int, deadline: float, cfg: dict) -> dict:
    """Epochs for every item from the measured rates and the time left (same count for all items).

    Per epoch: 90 % of the images trained, 10 % validated with PGD-20 (41F per image against 26F
    for a pretext step and 23F for a fine-tuning step); pretraining ends with one pretext test pass.
    A share ``zoo_reserve`` of the time is kept for the test evaluation and AutoAttack.
    """
    fit, val = 0.9 * n_train, 0.1 * n_train
    pre_epoch = SLOW * (fit + val * 41 / 26) / cal["pretext_adv_img_s"]
    ft_epoch = SLOW * (fit + val * 41 / 23) / cal["finetune_adv_img_s"]
    pre_fixed = SLOW * n_test * 41 / 26 / cal["pretext_adv_img_s"] + 5  # test pass + start-up
    time_left = left(deadline)
    reserve = cfg["zoo_reserve"] * time_left
    train_time = time_left - reserve
    for items in (list(ITEMS), [n for n in ITEMS if not n.startswith("jig")]):
        n_pre = sum(_is_pretext(n) for n in items)
        per_epoch = n_pre * pre_epoch + (len(items) - n_pre) * ft_epoch
        epochs = min(cfg["max_epochs"], math.floor((train_time - n_pre * pre_fixed - 5 * len(items)) / per_epoch))
        if epochs >= 1:
            item_s = {n: epochs * pre_epoch + pre_fixed if _is_pretext(n) else epochs * ft_epoch + 5 for n in items}
            return {"items": items, "epochs": epochs, "item_s": item_s, "reserve_s": reserve,
                    "pretext_epoch_s": pre_epoch, "finetune_epoch_s": ft_epoch, "time_left_s": time_left,
                    "why": "jigsaw dropped: not enough time" if len(items) < len(ITEMS) else ""}
    return {"items": [], "epochs": 0, "item_s": {}, "reserve_s": reserve, "pretext_epoch_s": pre_epoch,
            "finetune_epoch_s": ft_epoch, "time_left_s": time_left, "why": "not one epoch of each item fits"}


def _is_pretext(item: str) -> bool:
    return ITEMS[item][1] is None and item != "at-baseline"


def _meta(extra: dict) -> dict:
    return {k: v if isinstance(v, str) else repr(v) for k, v in extra.items()}


def train_item(item: str, name: str, parent: str | None, epochs: int, cfg: dict, device: torch.device,
               data_dir: Path, work: Path, xtr: torch.Tensor, ytr: torch.Tensor) -> dict:
    """Pretrain a backbone or fine-tune a classifier; the weights go to ``work/weights/<name>``."""
    import json

    from robustzoo.weights import load_file, save_pretrained
    from training.pretrain import pretrain
    from training.recipes import resolve

    base = ITEMS[item][0]
    cuda = device.type == "cuda"
    iters = max(1, int(0.9 * len(xtr)) // cfg["zoo_batch"])
    ov = {"width": cfg["zoo_width"], "dataset": "fashion-mnist", "data_root": str(data_dir),
          "subset": cfg["n_train"], "epochs": epochs, "ft_epochs": epochs, "batch_size": cfg["zoo_batch"],
          "ft_batch_size": cfg["zoo_batch"], "lr": ZOO_LR, "ft_lr": ZOO_LR, "warmup_from": ZOO_LR / 10,
          "warmup_to": ZOO_LR, "warmup_iters": iters, "attack_steps": cfg["attack_steps"], "progress": False,
          "eval_batch_size": cfg["eval_batch"], "test_n": cfg["n_test"], "device": "auto" if cuda else "cpu",
          "val_attack_steps": 20 if cuda else 2, "out_dir": str(work / "runs" / name)}
    recipe = resolve(base, ov)
    t0 = time.time()
    info: dict = {"base_recipe": base, "overrides": {k: v for k, v in ov.items() if k != "out_dir"}, "epochs": epochs}
    if recipe.kind == "backbone":
        report = pretrain(recipe)
        model = load_file(Path(recipe.out_dir))
        info.update(kind="backbone", best_epoch=report["best_epoch"] + 1, pretext_test=report["test"],
                    images_per_s=[round(h["images_per_s"], 1) for h in report["history"]])
    else:
        info.update(_finetune(recipe, parent, work, device, xtr, ytr))
        model = info.pop("model")
    info["train_s"] = time.time() - t0
    meta = {k: v for k, v in getattr(model, "pretrained_meta", {}).items() if k != "source"}
    meta.update(_meta({"oneshot": json.dumps({k: v for k, v in info.items() if k != "history"}, default=str),
                       "device": environment(device)["device"], "torch": torch.__version__}))
    save_pretrained(model.cpu().float(), work / "weights" / name, name=name, metadata=meta)
    print(f"zoo {name}: trained in {info['train_s']:.0f} s", flush=True)
    return info


def _finetune(recipe, parent: str | None, work: Path, device: torch.device, xtr, ytr) -> dict:
    from robustzoo.finetuning import finetune
    from robustzoo.models import ResNet
    from robustzoo.weights import load_file

    cuda = device.type == "cuda"
    if parent:
        model = load_file(work / "weights" / parent, num_classes=10)
    else:  # the end-to-end AT baseline from a seeded random init
        torch.manual_seed(recipe.ft_seed)
        model = ResNet("resnet18", num_classes=10, in_chans=1, width=recipe.width)
    result = finetune(model, (xtr, ytr), mode="adv-full", epochs=recipe.ft_epochs, batch_size=recipe.ft_batch_size,
                      lr=recipe.ft_lr, weight_decay=recipe.ft_weight_decay, eps=recipe.eps, alpha=recipe.alpha,
                      steps=recipe.attack_steps, eval_steps=recipe.val_attack_steps, val_fraction=0.1,
                      seed=recipe.ft_seed, device=device, progress=False, amp=cuda, channels_last=cuda,
                      padding=recipe.ft_padding, flip=recipe.ft_flip, attack_mode=recipe.attack_mode)
    return {"kind": "classifier", "parent": parent, "model": result.model, "best_epoch": result.best_epoch,
            "history": result.history}


def test_all(res: dict, work: Path, cfg: dict, device: torch.device, xte, yte, deadline: float, path: Path) -> None:
    """Clean and PGD-20 (fp32, eval mode) on every test image for each classifier."""
    from robustzoo.evaluation import evaluate
    from robustzoo.weights import load_file

    for name, info in res["models"].items():
        if info["kind"] != "classifier":
            continue
        if left(deadline) < (1 if device.type == "cpu" else 10):
            res["skipped"].append({"item": f"{name} test", "why": "time budget"})
            continue
        model = load_file(work / "weights" / name).to(device)
        r = evaluate(model, (xte, yte), eps=FMNIST["eps"], alpha=FMNIST["alpha"], attacks=("clean", "pgd20"),
                     batch_size=cfg["eval_batch"], device=device, seed=0, progress=False)
        attacked = round(r.accuracy["clean"] * r.n / 100)
        info["test"] = {"n": r.n, "clean": r.accuracy["clean"], "pgd20": r.accuracy["pgd20"],
                        "pgd20_s": r.settings["seconds"]["pgd20"],
                        "pgd20_img_s": attacked / max(r.settings["seconds"]["pgd20"], 1e-9)}
        write_json(path, res)


def _first_chunk_s(test: dict, chunk: int) -> float:
    """Time to plan for the first AutoAttack chunk, from this model's measured PGD-20 rate and accuracies:
    standard AA costs about (200 c + 9500 r) forward-equivalents per image against 41 per attacked image
    for PGD-20 (c, r = clean and robust fractions; APGD-CE, APGD-T, FAB-T and Square as in AutoAttack's
    ``autoattack.py``)."""
    c, r = test["clean"] / 100, test["pgd20"] / 100
    return chunk * (200 * c + 9500 * r) / (41 * test["pgd20_img_s"])


def autoattack(res: dict, work: Path, cfg: dict, device: torch.device, xte, yte, deadline: float, path: Path) -> None:
    """Standard AutoAttack in chunks of the test set, one chunk per classifier per round, while time lasts."""
    from robustzoo.evaluation import evaluate
    from robustzoo.weights import load_file

    names = [n for n, i in res["models"].items() if i["kind"] == "classifier" and "test" in i]
    models = {n: load_file(work / "weights" / n).to(device) for n in names}
    chunk, floor = cfg["aa_chunk"], (1 if device.type == "cpu" else 20)
    for k in range(math.ceil(min(len(xte), cfg["aa_max"]) / chunk)):
        for n in names:
            aa = res["models"][n].setdefault("autoattack", {"n": 0, "correct": 0, "clean_correct": 0, "chunks": []})
            chunks = aa["chunks"]
            need = 1.3 * chunks[-1]["seconds"] if chunks else _first_chunk_s(res["models"][n]["test"], chunk)
            if len(aa["chunks"]) < k or left(deadline) < max(floor, need):
                continue
            sl = slice(k * chunk, (k + 1) * chunk)
            t0 = time.time()
            r = evaluate(models[n], (xte[sl], yte[sl]), eps=FMNIST["eps"], attacks=("clean", "autoattack"),
                         batch_size=chunk, device=device, seed=0, progress=False)
            got = round(r.accuracy["autoattack"] * r.n / 100)
            aa["chunks"].append({"start": k * chunk, "n": r.n, "correct": got, "seconds": time.time() - t0})
            aa["n"] += r.n
            aa["correct"] += got
            aa["clean_correct"] += round(r.accuracy["clean"] * r.n / 100)
            aa["accuracy"] = 100.0 * aa["correct"] / aa["n"]
            aa["version"] = r.settings["versions"].get("pyautoattack")
            write_json(path, res)
    for n in names:
        if res["models"][n].get("autoattack", {}).get("n", 0) < cfg["aa_min"]:
            res["skipped"].append({"item": f"{n} autoattack", "why": f"fewer than {cfg['aa_min']} images in time"})
    write_json(path, res)
