"""Attack and adversarial-training speed of robustzoo's PGD (section `attack_speed` of RESULTS.md).

Measures, on one model and one batch, in one process:

(a) one PGD-10 adversarial training step (robustzoo's fine-tuning step: 10 input-gradient attack
    steps in train mode + one SGD step) divided by one clean training step. With gradients taken
    w.r.t. the input only, an attack step costs ~2F (forward + input grad) and a training step ~3F
    (forward + input and weight grads), so the ideal ratio is (2K + 3) / 3 = 7.67 for K = 10
    (26F for PGD-10: 10 x (forward + input gradient) + clean and adversarial forward + backward);
    a naive attack that calls ``loss.backward()`` costs 34F/3F = 11.3.
(b) robustzoo ``pgd`` (PGD-10, Linf 8/255, step 2/255, eval mode) divided by ``torchattacks.PGD`` with
    the same settings on the same batch, both fp32 NCHW; then robustzoo's bf16 autocast +
    channels_last path beside it.

(c) for the GPU one-shot (``benchmarks/gpu_oneshot.py``): :func:`finetune_rate`, images/s of
    ``robustzoo.finetune(mode="adv-full")`` itself (PGD-10 train-mode attack + SGD, its own loop), and
    :func:`pgd20_rate`, images/s that ``robustzoo.evaluate`` attacks with PGD-20.

Timings are medians of ``--repeats`` runs after one warm-up, interleaved (ours, theirs, ours, ...) so
that load from other processes hits both sides alike. Run::

    python benchmarks/attack_speed.py                       # CIFAR ResNet-18, width 1.0, batch 32, 2 threads
    python benchmarks/attack_speed.py --width 0.5 --repeats 5
    python benchmarks/attack_speed.py --threads 1 --clock process   # on a machine shared with other jobs
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time

import torch
import torch.nn.functional as F

import robustzoo
from robustzoo.attacks import pgd

EPS, ALPHA, K = 8 / 255, 2 / 255, 10


CLOCK = time.perf_counter  # --clock process: CPU time of this process (steadier on a shared machine)


def _time(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = CLOCK()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return CLOCK() - t0


def interleaved(fns: dict, repeats: int, device: torch.device) -> dict[str, float]:
    for fn in fns.values():  # warm-up (oneDNN primitive creation, allocator)
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(_time(fn, device))
    return {k: statistics.median(v) for k, v in times.items()}


def training_steps(model, x, y, device):
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=3e-4)
    gen = torch.Generator(device=device).manual_seed(0)

    def sgd(inputs):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(inputs), y).backward()
        opt.step()

    def clean():
        model.train()
        sgd(x)

    def adversarial(attack_mode):  # what robustzoo.finetune(mode="adv-full") does per iteration
        model.train()
        x_adv = pgd(lambda z: F.cross_entropy(model(z), y, reduction="none"), x, eps=EPS, alpha=ALPHA, steps=K,
                    model=model, mode=None if attack_mode == "train" else "eval", generator=gen)
        sgd(x_adv)

    return {"clean_step": clean, "pgd10_at_step": lambda: adversarial("train"),
            "pgd10_at_step_eval_attack": lambda: adversarial("eval")}


def attack_generation(model, x, y, device):
    import torchattacks

    model.eval()
    atk = torchattacks.PGD(model, eps=EPS, alpha=ALPHA, steps=K, random_start=True)
    model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    ce = lambda m: (lambda z: F.cross_entropy(m(z), y, reduction="none"))
    return {
        "robustzoo_fp32": lambda: pgd(ce(model), x, eps=EPS, alpha=ALPHA, steps=K, model=model, mode="eval"),
        "torchattacks_fp32": lambda: atk(x, y),
        "robustzoo_bf16_cl": lambda: pgd(ce(model_cl), x, eps=EPS, alpha=ALPHA, steps=K, model=model_cl,
                                         mode="eval", amp=True, channels_last=True),
    }


def finetune_rate(model: torch.nn.Module, *, batch: int, n_batches: int, device: torch.device, size: int = 32,
                  amp: bool = False, channels_last: bool = False, epochs: int = 2, eps: float = EPS) -> dict:
    """Images/s of ``robustzoo.finetune(mode="adv-full")`` (PGD-10) on random data, timed by its own history.

    The last epoch's wall time is used (the first one pays for cudnn autotuning); no validation split,
    so an epoch is only training steps plus one host sync for the loss.
    """
    from robustzoo.finetuning import finetune

    g = torch.Generator().manual_seed(0)
    n = batch * n_batches
    x = torch.rand(n, model.in_chans, size, size, generator=g)
    y = torch.randint(0, model.num_classes, (n,), generator=g)
    res = finetune(model, (x, y), mode="adv-full", epochs=epochs, batch_size=batch, eps=eps, steps=K,
                   eval_steps=0, val_fraction=0, schedule="cosine", warmup=0, progress=False, device=device,
                   amp=amp, channels_last=channels_last)
    sec = res.history[-1]["seconds"]
    return {"img_s": n / sec, "epoch_s": sec, "images_per_epoch": n, "batch": batch, "amp": amp,
            "channels_last": channels_last, "epochs": epochs}


def pgd20_rate(model: torch.nn.Module, *, n: int, batch: int, device: torch.device, size: int = 32,
               amp: bool = False, eps: float = EPS, repeats: int = 2) -> dict:
    """Images/s attacked by ``robustzoo.evaluate(attacks=("clean", "pgd20"))`` on random inputs.

    The labels are the model's own predictions, so every image is clean-correct and attacked
    (``evaluate`` attacks only those); the count attacked is read back from its clean accuracy.
    The last of ``repeats`` runs is kept (the first pays for cudnn autotuning).
    """
    from robustzoo.evaluation import evaluate

    model = model.to(device).eval()
    x = torch.rand(n, model.in_chans, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = torch.cat([model(b.to(device)).argmax(1).cpu() for b in x.split(batch)])
    for _ in range(repeats):
        res = evaluate(model, (x, y), eps=eps, attacks=("clean", "pgd20"), batch_size=batch, device=device,
                       amp=amp, progress=False)
    attacked = round(res.accuracy["clean"] * n / 100)
    sec = res.settings["seconds"]["pgd20"]
    return {"img_s": attacked / sec, "attacked": attacked, "pgd20_s": sec, "n": n, "batch": batch, "amp": amp}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--skip-bf16", action="store_true", help="leave out the bf16 + channels_last path")
    p.add_argument("--clock", choices=("wall", "process"), default="wall",
                   help="process = CPU seconds of this process (use with --threads 1 when others load the machine)")
    a = p.parse_args()
    global CLOCK
    CLOCK = time.process_time if a.clock == "process" else time.perf_counter
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    device = torch.device(a.device)
    model = robustzoo.create_model(a.arch, width=a.width, num_classes=10).to(device)
    x = torch.rand(a.batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (a.batch,), device=device)
    print(f"{a.arch} width {a.width}, batch {a.batch}, 32x32, {device} ({platform.processor() or platform.machine()}, "
          f"{a.threads} threads, {a.clock} clock), torch {torch.__version__}, {time.strftime('%Y-%m-%d')}")

    t = interleaved(training_steps(model, x, y, device), a.repeats, device)
    ratio_a = t["pgd10_at_step"] / t["clean_step"]
    ideal = (2 * K + 3) / 3
    print(f"(a) clean training step {t['clean_step']:.3f} s, PGD-10 AT step {t['pgd10_at_step']:.3f} s")
    print(f"(a) ratio PGD-10 AT / clean = {ratio_a:.2f}  (ideal (2K+3)/3 = {ideal:.2f}; naive backward() attack "
          f"= {(3 * K + 4) / 3:.2f}); within 10% of ideal: {abs(ratio_a / ideal - 1) <= 0.10}")
    print(f"(a) same with the attack in eval mode (attack_mode='eval', BN running stats): "
          f"{t['pgd10_at_step_eval_attack'] / t['clean_step']:.2f}")

    fns = attack_generation(model, x, y, device)
    if a.skip_bf16:  # emulated (very slow) on CPUs without AVX512-BF16/AMX
        fns.pop("robustzoo_bf16_cl")
    t = interleaved(fns, a.repeats, device)
    ratio_b = t["robustzoo_fp32"] / t["torchattacks_fp32"]
    print(f"(b) PGD-10 generation: robustzoo fp32 {t['robustzoo_fp32']:.3f} s, torchattacks fp32 "
          f"{t['torchattacks_fp32']:.3f} s")
    print(f"(b) ratio robustzoo / torchattacks (fp32) = {ratio_b:.2f} (target <= 1.0)")
    if "robustzoo_bf16_cl" in t:
        print(f"(b) robustzoo bf16 autocast + channels_last {t['robustzoo_bf16_cl']:.3f} s = "
              f"{t['robustzoo_bf16_cl'] / t['torchattacks_fp32']:.2f} x torchattacks fp32")


if __name__ == "__main__":
    main()
