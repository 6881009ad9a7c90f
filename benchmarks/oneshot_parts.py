"""The parts of ``benchmarks/gpu_oneshot.py``; each runs in its own child process until its deadline.

Every part rewrites its JSON in the work folder after each measured item (atomically), so a part
killed at its time limit still leaves everything it finished. Nothing here prints a number it did
not measure; planned epoch counts are derived from rates measured in the same process.
"""

from __future__ import annotations

import datetime
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import attack_speed as ats  # noqa: E402
import train_speed as ts  # noqa: E402

# bf16 dense tensor-core peak in FLOP/s: the NVIDIA H100/H200 SXM datasheets give 1,979 TFLOPS BF16
# "with sparsity"; dense is half. H200 NVL: 1,671 with sparsity.
PEAK_BF16_DENSE = {"NVIDIA H200": 989.5e12, "NVIDIA H100 80GB HBM3": 989.5e12, "NVIDIA H200 NVL": 835.5e12}
PEAK_SOURCE = "NVIDIA H200 Tensor Core GPU datasheet: BF16 1,979 TFLOPS with sparsity = 989.5 dense (SXM)"
FMNIST = {"eps": 0.1, "alpha": 0.025}  # the project's Fashion-MNIST budget (training/recipes.py, _fmnist)
ZOO_LR = 0.2  # at batch 512; the paper's 0.1 is at batch 128 (sqrt scaling: between none and linear; not tuned)


def left(deadline: float) -> float:
    return deadline - time.time()


def write_json(path: Path, obj) -> None:
    """Atomic rewrite (robustzoo's one atomic writer), so a part killed mid-write leaves the previous file."""
    from robustzoo.weights import atomic_write

    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=1, default=str)))


def run(part: str, work: Path, deadline: float, data_dir: Path, cfg: dict, smoke: bool) -> int:
    device = torch.device("cuda" if torch.cuda.is_available() and not smoke else "cpu")
    torch.backends.cudnn.benchmark = True
    from oneshot_zoo import zoo_part  # its own module (the largest part); it imports this one

    {"bench": bench_part, "compile": compile_part, "zoo": zoo_part}[part](work, deadline, cfg, device, data_dir)
    return 0


# ----------------------------------------------------------------------------------------- environment


def environment(device: torch.device) -> dict:
    env = {"gpus": torch.cuda.device_count(), "torch": torch.__version__, "python": platform.python_version(),
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "cuda": torch.version.cuda, "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
           "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32, "git_commit": _git_commit(),
           "cpu_threads": torch.get_num_threads()}
    if device.type == "cuda":
        env["device"] = torch.cuda.get_device_name(device)
        env["peak_bf16_dense_flops"] = PEAK_BF16_DENSE.get(env["device"])
        env["peak_source"] = PEAK_SOURCE if env["peak_bf16_dense_flops"] else "device not in PEAK_BF16_DENSE"
    else:
        env["device"] = f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
        env["peak_bf16_dense_flops"] = None
    return env


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown (no .git in the copied tree)"
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"


def matmul_ceiling(device: torch.device, n: int) -> dict:
    """Measured dense matmul rate (bf16 on CUDA, fp32 on CPU): the practical ceiling beside the datasheet."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    ts.sync(device)
    t0 = time.perf_counter()
    for _ in range(10):
        a @ b
    ts.sync(device)
    sec = (time.perf_counter() - t0) / 10
    return {"n": n, "dtype": str(dtype), "flops_s": 2 * n**3 / sec, "seconds_each": sec}


# ----------------------------------------------------------------------------------------------- bench


def bench_part(work: Path, deadline: float, cfg: dict, device: torch.device, data_dir: Path) -> None:
    """Throughput grid (headline first), fine-tune and PGD-20 rates, FLOP counts, DDP (2+ GPUs only)."""
    res: dict = {"env": environment(device), "rows": [], "skipped": [], "rates": {}}
    path = work / "bench.json"
    res["matmul"] = matmul_ceiling(device, cfg["matmul"])
    write_json(path, res)
    headline = ("rotation", "adv", "r18", "bf16-cl")
    grid = [(t, m, a, p) for t, m, a in ts.configs(tuple(ts.TASKS), archs=cfg["archs"]) for p in cfg["precisions"]]
    order = [headline] + [c for c in grid if c != headline]
    flops: dict = {}
    for i, (task, mode, arch, prec) in enumerate(order):
        if i == 1:
            rates(res, cfg, device, deadline)
            write_json(path, res)
        if left(deadline) < cfg["skip_s"]:
            res["skipped"].append({"config": [task, mode, arch, prec], "why": "time budget"})
            continue
        res["rows"].append(one_config(task, mode, arch, prec, cfg, device, flops))
        write_json(path, res)
    res["ddp"] = ddp(work, device, deadline)
    write_json(path, res)


def one_config(task: str, mode: str, arch: str, prec: str, cfg: dict, device: torch.device, flops: dict,
               compile_backend: str | None = None) -> dict:
    batch = cfg["ens_batch"] if task == "ensemble" else cfg["batch"]
    key = (task, mode, arch)
    try:
        if key not in flops:
            flops[key] = ts.count_flops(task, mode, arch, width=cfg["width"], device=device)
        r = ts.bench(task, mode, arch, width=cfg["width"], batch=batch, device=device, precision=prec,
                     compile=compile_backend is not None, compile_backend=compile_backend or "inductor",
                     warmup=cfg["warmup"], iters=cfg["iters"], seconds=cfg["seconds"])
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return {"task": task, "mode": mode, "arch": arch, "precision": prec, "img_s": None, "error": "out of memory"}
    except Exception as e:  # one broken configuration must not cost the others
        return {"task": task, "mode": mode, "arch": arch, "precision": prec, "img_s": None,
                "error": f"{type(e).__name__}: {str(e)[:300]}"}
    r.update(flops[key])
    r["tflops_counted"] = r["img_s"] * r["step_flops"] / 1e12
    print(json.dumps({k: r[k] for k in ("task", "mode", "arch", "precision", "compile", "img_s")}), flush=True)
    return r


def rates(res: dict, cfg: dict, device: torch.device, deadline: float) -> None:
    """``robustzoo.finetune`` PGD-10 step rate and ``robustzoo.evaluate`` PGD-20 rate, CIFAR ResNet-18 shape."""
    from robustzoo.models import ResNet

    def model():
        torch.manual_seed(0)
        return ResNet("resnet18", num_classes=10, width=cfg["width"]).to(device)

    amp = True  # bf16 autocast (+ channels-last for fine-tuning), the GPU path
    jobs = {"finetune_pgd10_bf16_cl": lambda: ats.finetune_rate(
                model(), batch=cfg["rate_batch"], n_batches=cfg["rate_batches"], device=device, amp=amp,
                channels_last=amp),
            "finetune_pgd10_fp32": lambda: ats.finetune_rate(
                model(), batch=cfg["rate_batch"], n_batches=cfg["rate_batches"], device=device),
            "evaluate_pgd20_fp32": lambda: ats.pgd20_rate(model(), n=cfg["pgd_n"], batch=cfg["rate_batch"],
                                                          device=device),
            "evaluate_pgd20_bf16": lambda: ats.pgd20_rate(model(), n=cfg["pgd_n"], batch=cfg["rate_batch"],
                                                          device=device, amp=True)}
    for name, job in jobs.items():
        if left(deadline) < (1 if device.type == "cpu" else 10):
            res["rates"][name] = {"status": "skipped", "why": "time budget"}
            continue
        try:
            res["rates"][name] = job() | {"width": cfg["width"], "input": "3x32x32"}
        except Exception as e:
            res["rates"][name] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        print(f"rate {name}: {res['rates'][name]}", flush=True)


def ddp(work: Path, device: torch.device, deadline: float) -> dict:
    """A short data-parallel pretraining through torchrun, only on a machine with 2+ GPUs."""
    n = torch.cuda.device_count() if device.type == "cuda" else 0
    if n < 2:
        return {"status": "skipped", "why": f"{n} GPU(s): a multi-process run sharing one GPU measures nothing"}
    if left(deadline) < 30:
        return {"status": "skipped", "why": "time budget"}
    out = work / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={min(n, 8)}",
           str(ROOT / "training" / "pretrain.py"), "rot-adv-r18", "--dataset=synthetic-cifar", "--epochs=2",
           f"--batch_size={32 * min(n, 8)}", "--progress=False", f"--out_dir={out}"]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=min(120, left(deadline) - 5))
    except subprocess.TimeoutExpired:
        return {"status": "killed at its time limit", "ranks": min(n, 8)}
    report = out / "report.json"
    if proc.returncode or not report.is_file():
        return {"status": f"failed (exit {proc.returncode})", "stderr_tail": proc.stderr[-2000:]}
    hist = json.loads(report.read_text())["history"]
    return {"status": "ok", "ranks": min(n, 8), "images_per_s_last_epoch": hist[-1]["images_per_s"],
            "note": "synthetic 32x32 data, 461 training images: proves NCCL + the flat all-reduce run"}


# --------------------------------------------------------------------------------------------- compile


def compile_part(work: Path, deadline: float, cfg: dict, device: torch.device, data_dir: Path) -> None:
    """The step under ``torch.compile(backbone)``; compile time is the warm-up time recorded per row."""
    res: dict = {"rows": [], "skipped": [], "backend": cfg["compile_backend"]}
    path = work / "compile.json"
    write_json(path, res)
    flops: dict = {}
    for task, mode, arch, prec in cfg["compile_configs"]:
        if left(deadline) < (1 if device.type == "cpu" else 20):
            res["skipped"].append({"config": [task, mode, arch, prec], "why": "time budget"})
            continue
        res["rows"].append(one_config(task, mode, arch, prec, cfg, device, flops, cfg["compile_backend"]))
        write_json(path, res)
