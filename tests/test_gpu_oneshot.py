"""The prepared GPU one-shot (benchmarks/gpu_oneshot.py): its time guard, its plan, its output limits,
and (slow) the whole script end to end on the CPU at a tiny size, so the one GPU run cannot fail on a typo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks")]
FMNIST = Path("/usr/share/datasets/fashion-mnist")

import gpu_oneshot  # noqa: E402
import oneshot_report  # noqa: E402


def test_budget_too_short_skips_every_part_and_says_so(tmp_path):
    t0 = time.time()
    assert gpu_oneshot.main(["--out", str(tmp_path / "out"), "--work", str(tmp_path / "w"), "--budget", "3"]) == 0
    assert time.time() - t0 < 10
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {p: res["status"][p]["status"] for p in gpu_oneshot.PARTS} == dict.fromkeys(gpu_oneshot.PARTS, "skipped")
    md = (tmp_path / "out" / "results.md").read_text()
    assert md.count("skipped") >= 3 and "Zoo: not reached." in md


def test_a_part_past_its_deadline_is_killed_with_its_children_and_reported(tmp_path):
    """A part that ignores its soft deadline (here: sleeps, and leaves a child that sleeps too) is killed
    as a whole process group GRACE seconds past its deadline. Deterministic: it does not rely on how
    long a real part takes on this machine (a real part can finish within GRACE on a fast one)."""
    child_pid = tmp_path / "child.pid"
    script = ("import subprocess, sys, time; "
              "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
              f"open({str(child_pid)!r}, 'w').write(str(p.pid)); time.sleep(120)")
    t0 = time.time()
    got = gpu_oneshot.run_with_deadline([sys.executable, "-c", script], time.time() + 0.5)
    assert got["status"] == "killed at its time limit"
    assert time.time() - t0 < 0.5 + gpu_oneshot.GRACE + 3
    pid = int(child_pid.read_text())
    for _ in range(50):  # the killed child is reaped by init; give it a moment
        if not _alive(pid):
            break
        time.sleep(0.1)
    else:
        pytest.fail("the part's child process survived the kill")


def _alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (killed, not yet reaped by whoever adopted it) counts as dead."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def test_a_part_that_finishes_in_time_is_ok_and_a_failing_one_reports_its_exit_code():
    assert gpu_oneshot.run_with_deadline([sys.executable, "-c", "pass"], time.time() + 30)["status"] == "ok"
    got = gpu_oneshot.run_with_deadline([sys.executable, "-c", "raise SystemExit(3)"], time.time() + 30)
    assert got["status"] == "failed (exit 3)"


def test_unknown_part_in_skip_is_refused(tmp_path):
    with pytest.raises(SystemExit):
        gpu_oneshot.main(["--out", str(tmp_path), "--skip", "benchh"])


def test_zoo_plan_drops_jigsaw_first_then_everything():
    import oneshot_zoo

    cfg = gpu_oneshot.settings(smoke=False)
    cal = {"pretext_adv_img_s": 20000.0, "finetune_adv_img_s": 22000.0}
    now = time.time()
    full = oneshot_zoo.plan(cal, 60000, 10000, now + 300, cfg)
    assert full["items"] == list(oneshot_zoo.ITEMS) and full["epochs"] >= 1
    # one epoch of every item costs ~2 pretext + 3 fine-tuning epochs; make only rotation fit
    per = full["pretext_epoch_s"] * 2 + full["finetune_epoch_s"] * 3
    short = oneshot_zoo.plan(cal, 60000, 10000, now + (per + 20) / (1 - cfg["zoo_reserve"]), cfg)
    assert short["items"] == ["rot-adv", "at-baseline", "rot-adv-aft"] and "jigsaw" in short["why"]
    assert oneshot_zoo.plan(cal, 60000, 10000, now + 5, cfg)["items"] == []


def test_collect_keeps_within_the_device_tools_return_limits(tmp_path):
    work, out = tmp_path / "w", tmp_path / "out"
    for name in ("rot-adv-r18-w32-fmnist", "at-baseline-r18-w32-fmnist", "rot-adv-aft-r18-w32-fmnist",
                 "jig-adv-r18-w32-fmnist", "jig-adv-aft-r18-w32-fmnist", "extra-r18-w32-fmnist"):
        (work / "weights" / name).mkdir(parents=True)
        (work / "weights" / name / "model.safetensors").write_bytes(b"0" * 1000)
    out.mkdir()
    oneshot_report.collect(work, out, {"total_s": 1.0}, budget=10, smoke=True, limits=(7, 10**6, 4 * 2**20 + 3500))
    files = sorted(p.name for p in out.iterdir())
    weights = [f for f in files if f.endswith(".safetensors")]
    assert len(weights) == 3 and {"results.json", "results.md"} <= set(files)  # 7 - 3 slots for json, md, log
    assert all("aft" in w or "baseline" in w for w in weights)  # classifiers first
    res = json.loads((out / "results.json").read_text())
    assert len(res["files"]["left_out"]) == 3


@pytest.mark.parametrize(("mode", "multiplier"), [("adv", 26.0), ("std", 3.0)])
def test_counted_step_flops_match_the_pgd10_multiplier(mode, multiplier):
    """A pretext step with PGD-10 is 10 x (forward + input gradient) + 2 x (forward + backward) = 26 F."""
    import train_speed

    f = train_speed.count_flops("rotation", mode, "r18", width=0.0625, device=torch.device("cpu"), in_chans=1,
                                size=28, batch=2)
    assert f["fwd_flops"] > 0
    assert f["step_over_fwd"] == pytest.approx(multiplier, rel=0.03)


@pytest.mark.slow
@pytest.mark.timeout(3000)
def test_smoke_runs_every_part_end_to_end(tmp_path):
    if not (FMNIST / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("needs the Debian package dataset-fashion-mnist")
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_oneshot.py"), "--smoke", "--out", str(out),
           "--budget", "2400", "--data-dir", str(FMNIST)]  # 4-6 min idle; a busy machine halves the speed
    # one thread per process: on a busy machine two OpenMP threads spin-wait for each other and a part
    # runs 10-50x slower (the bench part was once killed at its cap that way); the smoke checks code, not speed
    subprocess.run(cmd, check=True, cwd=ROOT, timeout=2700, env={**os.environ, "OMP_NUM_THREADS": "1"})
    res = json.loads((out / "results.json").read_text())
    assert {p: res["status"][p]["status"] for p in gpu_oneshot.PARTS} == dict.fromkeys(gpu_oneshot.PARTS, "ok")
    bench = res["bench"]
    assert not bench["skipped"] and all(r["img_s"] > 0 and "error" not in r for r in bench["rows"])
    assert bench["rows"][0]["task"] == "rotation" and bench["rows"][0]["precision"] == "bf16-cl"
    assert {r["task"] for r in bench["rows"]} == {"rotation", "jigsaw", "selfie", "ensemble"}
    assert all(v["img_s"] > 0 for v in bench["rates"].values()) and bench["ddp"]["status"] == "skipped"
    assert res["compile"]["rows"] and all(r["img_s"] > 0 for r in res["compile"]["rows"])
    models = res["zoo"]["models"]
    assert len(models) == 5 and not res["zoo"]["skipped"]
    for m in models.values():
        if m["kind"] == "classifier":
            assert 0 <= m["test"]["pgd20"] <= m["test"]["clean"] and m["autoattack"]["n"] >= 1
    files = list(out.iterdir())
    assert len(files) <= gpu_oneshot.OUT_FILES - 1  # the console log is the eighth
    assert sum(f.stat().st_size for f in files) < gpu_oneshot.OUT_TOTAL_BYTES
    assert "rot-adv-aft-r18-w4-fmnist.safetensors" in {f.name for f in files}
