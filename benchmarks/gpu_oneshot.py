"""GPU one-shot (issue #15): measure what only a GPU can and train a wide Fashion-MNIST zoo, in one command.

Prepared on a 2-core CPU with no GPU; nothing here has run on a GPU yet. One run does, under a hard
wall-clock budget (``--budget``, default 420 s; each part is a child process in its own process
group, killed at its deadline plus 5 s; a part or item that cannot start in time is skipped, and
every skip is reported with its reason):

1. ``bench`` (at most 22 % of the budget): device, versions, a measured bf16 8192^3 matmul ceiling;
   ``benchmarks/train_speed.py``'s step at full width for every pretext task x {std, adv} x
   {ResNet-18, ResNet-50v2} in fp32 and in bf16 autocast + channels-last, the headline rotation-adv
   ResNet-18 at batch 512 first (target >= 5,000 img/s); model FLOPs per image counted with
   ``FlopCounterMode`` on one forward (F) and on one whole step (26 F with PGD-10, 3 F without);
   the PGD-10 ``robustzoo.finetune`` rate and ``robustzoo.evaluate``'s PGD-20 rate
   (``benchmarks/attack_speed.py``); DDP only on 2+ GPUs (a 2-process run on one GPU measures nothing).
2. ``compile`` (at most 15 %): the same step with the backbone under ``torch.compile`` (inductor),
   rotation-adv first; compile time is the warm-up time of each row.
3. ``zoo`` (the rest): ResNet-18 at width 0.5 (``w32``) on all 60,000 Fashion-MNIST training images
   (10 % held out for model selection), Linf eps 0.1, step 0.025, PGD-10, batch 512: rotation-adv and
   jigsaw-adv pretraining (``training.pretrain.pretrain`` on ``training.recipes.resolve`` recipes),
   adversarial full fine-tuning of both and the end-to-end AT baseline (``robustzoo.finetune``), then
   clean and PGD-20 on all 10,000 test images and standard AutoAttack in chunks of 1,000 (one per model
   per round, while time lasts) with ``robustzoo.evaluate``. Epochs are planned from step rates measured
   at the start of the part, with 45 % of its time kept for testing and AutoAttack; the zoo is what
   shrinks when time is short (fewer epochs, then no jigsaw, then nothing).

Everything lands in ``--out``: ``results.json`` (every figure, device, torch version, date),
``results.md`` (tables) and up to five weight files (float32 safetensors, 10.7 MiB each, classifiers
first); the eighth file is the command's own console log. At most 8 files, 16 MiB each, 64 MiB in all.

Time plan on one H200 (an estimate; the arithmetic is in benchmarks/RESULTS.md, "GPU one-shot (prepared,
not run)"): bench ~80 s, compile <= 63 s, zoo ~260 s (start-up, data and calibration ~20 s, about 4 to 9
epochs per item ~135 s, test and AutoAttack on >= 1,000 images per classifier ~100 s); the run ends by
``--budget`` + 5 s whatever the rates turn out to be. That leaves device time for one rerun of the zoo
alone (``--budget 240 --skip bench,compile``) within the 15 minutes.

    python benchmarks/gpu_oneshot.py --prepare .oneshot      # on the CPU machine: data + AutoAttack
    python benchmarks/gpu_oneshot.py --out $OUT --data-dir .oneshot/fashion-mnist    # on the GPU
    python benchmarks/gpu_oneshot.py --smoke --out /tmp/smoke   # CPU, tiny, end to end (tests)
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

OUT_FILES, OUT_FILE_BYTES, OUT_TOTAL_BYTES = 8, 16 * 2**20, 64 * 2**20  # what the device tool brings back
PARTS = ("bench", "compile", "zoo")
CAPS = {"bench": 0.22, "compile": 0.15}  # share of the budget each may use at most; the zoo gets the rest
MIN_START = {"bench": 20, "compile": 25, "zoo": 45}  # seconds a part needs to be worth starting
GRACE = 5  # seconds a part may overrun its own deadline before it is killed


def settings(smoke: bool) -> dict:
    """Sizes of every part: the real run, or a tiny CPU run of the same code (``--smoke``)."""
    if smoke:
        return dict(width=0.0625, batch=4, ens_batch=4, archs=("r18",), precisions=("fp32",), seconds=0.05,
                    warmup=1, iters=2, skip_s=5,
                    rate_batch=8, rate_batches=2, pgd_n=16, compile_backend="aot_eager",
                    compile_configs=(("rotation", "adv", "r18", "bf16-cl"),), matmul=256,
                    zoo_width=0.0625, zoo_batch=32, n_train=256, n_test=32, aa_chunk=8, aa_min=8, aa_max=8,
                    attack_steps=2, max_epochs=1, eval_batch=64, zoo_reserve=0.0)
    return dict(width=1.0, batch=512, ens_batch=128, archs=("r18", "r50"), precisions=("fp32", "bf16-cl"),
                seconds=0.6, warmup=3, iters=20, skip_s=8,
                rate_batch=512, rate_batches=6, pgd_n=4096, compile_backend="inductor",
                compile_configs=(("rotation", "adv", "r18", "bf16-cl"), ("rotation", "adv", "r50", "bf16-cl"),
                                 ("rotation", "adv", "r18", "fp32"), ("jigsaw", "adv", "r18", "bf16-cl"),
                                 ("rotation", "std", "r18", "bf16-cl")), matmul=8192,
                zoo_width=0.5, zoo_batch=512, n_train=0, n_test=0, aa_chunk=1000, aa_min=1000, aa_max=10000,
                attack_steps=10, max_epochs=30, eval_batch=1000, zoo_reserve=0.45)


# ------------------------------------------------------------------------------------- orchestration


def orchestrate(args) -> int:
    """Run each part as a child with a hard deadline; merge whatever they wrote into ``--out``."""
    t0 = time.time()
    deadline = t0 + args.budget
    work = Path(args.work or tempfile.mkdtemp(prefix="oneshot-"))
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    status: dict[str, dict] = {}
    for i, part in enumerate(PARTS):
        left = deadline - time.time()
        cap = left if part == "zoo" else min(left - sum(MIN_START[p] for p in PARTS[i + 1:]), CAPS[part] * args.budget)
        if part in args.skip:
            status[part] = {"status": "skipped", "why": "--skip"}
        elif cap < MIN_START[part] * (0.2 if args.smoke else 1):
            status[part] = {"status": "skipped", "why": f"{left:.0f} s left, part cap {cap:.0f} s"}
        else:
            status[part] = run_part(part, args, work, time.time() + cap)
        print(f"[oneshot] {part}: {status[part]} ({time.time() - t0:.0f} s elapsed)", flush=True)
    status["total_s"] = round(time.time() - t0, 1)
    from oneshot_report import collect

    collect(work, out, status, budget=args.budget, smoke=args.smoke,
            limits=(OUT_FILES, OUT_FILE_BYTES, OUT_TOTAL_BYTES))
    return 0


def run_part(part: str, args, work: Path, part_deadline: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--part", part, "--work", str(work),
           "--deadline", f"{part_deadline:.3f}", "--data-dir", str(args.data_dir)] + (["--smoke"] if args.smoke else [])
    return run_with_deadline(cmd, part_deadline)


def run_with_deadline(cmd: list[str], deadline: float) -> dict:
    """Run ``cmd`` in its own process group; past ``deadline`` + GRACE the whole group is killed, so a part
    that ignores its own soft deadline (or hangs in a compile worker) cannot eat the next part's time."""
    t0 = time.time()
    proc = subprocess.Popen(cmd, start_new_session=True)  # own group: a kill also ends compile workers
    try:
        rc = proc.wait(timeout=max(1.0, deadline - time.time() + GRACE))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return {"status": "killed at its time limit", "seconds": round(time.time() - t0, 1)}
    return {"status": "ok" if rc == 0 else f"failed (exit {rc})", "seconds": round(time.time() - t0, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="results folder (on the device machine: $OUT)")
    ap.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist",
                    help="folder with the four original Fashion-MNIST *-ubyte.gz files")
    ap.add_argument("--budget", type=float, default=420.0, help="hard wall-clock seconds for the whole run")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: " + ",".join(PARTS))
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny width, a few hundred images (tests)")
    ap.add_argument("--prepare", metavar="DIR", help="copy the Fashion-MNIST files and AutoAttack into DIR and exit")
    ap.add_argument("--work", help="scratch folder (default: a new temporary one)")
    ap.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)
    ap.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.skip = {s for s in args.skip.split(",") if s}
    if args.prepare:
        return prepare(Path(args.prepare), Path(args.data_dir))
    if args.part:
        from oneshot_parts import run

        return run(args.part, Path(args.work), args.deadline, Path(args.data_dir), settings(args.smoke), args.smoke)
    if not args.out:
        ap.error("--out is required")
    if unknown := args.skip - set(PARTS):
        ap.error(f"unknown part(s) in --skip: {sorted(unknown)}")
    return orchestrate(args)


def prepare(dest: Path, data_dir: Path) -> int:
    """Copy what the device machine lacks into ``dest`` (a gitignored folder carried with the run):
    the four Fashion-MNIST files (sha256-checked when loaded) and the pyautoattack package without
    its 44 MB example model."""
    from importlib import metadata

    files = sorted(data_dir.glob("*-ubyte.gz"))
    if len(files) != 4:
        raise SystemExit(f"error: {data_dir} should hold the four Fashion-MNIST *-ubyte.gz files, found "
                         f"{len(files)}; apt-get install dataset-fashion-mnist or pass --data-dir")
    (dest / "fashion-mnist").mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copy2(f, dest / "fashion-mnist" / f.name)
    try:
        dist = metadata.distribution("pyautoattack")
    except metadata.PackageNotFoundError:
        raise SystemExit("error: AutoAttack is not installed here: pip install robustzoo[autoattack], then "
                         "run --prepare again") from None
    pkg = Path(dist.locate_file("pyautoattack"))
    site = dest / "site"
    shutil.rmtree(site, ignore_errors=True)
    shutil.copytree(pkg, site / "pyautoattack", ignore=shutil.ignore_patterns("examples", "__pycache__"))
    for info in Path(dist.locate_file("")).glob("pyautoattack-*.dist-info"):  # evaluate() reads the version
        shutil.copytree(info, site / info.name)
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    print(f"prepared {dest}: {size / 2**20:.1f} MiB (carry it with the run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
