"""Network-fault and cache-fault scenarios against the loopback Hub, each run N times on both paths.

Usage: .venv/bin/python benchmarks/reliability_net.py [--runs 20]

For every scenario the fault is armed on tests/hubserver.py, ``robustzoo.load`` runs into a fresh
cache folder, and the outcome is counted as: right file (weights equal the reference), clear error
(a ``RobustZooError``), raw exception (anything else: must be 0) or wrong file (must be 0; also
counted when any file at a final cache path does not hash to its name). Paths: ``hub`` =
``hf-hub:`` through huggingface_hub, ``url`` = plain https URL with a sha256 through requests.
Retry counts are the real ones; backoff sleeps are skipped to keep the run short.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from hubserver import HubServer  # noqa: E402

import robustzoo  # noqa: E402
import robustzoo._download as dl  # noqa: E402
from robustzoo.errors import RobustZooError  # noqa: E402

REPO = "org/tiny"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def no_backoff() -> None:
    from huggingface_hub import constants, file_download
    from huggingface_hub.utils import _http

    fake = types.SimpleNamespace(sleep=lambda s: None)
    _http.time = file_download.time = dl.time = fake
    constants.HF_HUB_DOWNLOAD_TIMEOUT = constants.HF_HUB_ETAG_TIMEOUT = 0.3
    os.environ["ROBUSTZOO_DOWNLOAD_TIMEOUT"] = "0.3"


def wrong_file_in(cache: Path) -> bool:
    for p in cache.rglob("*"):
        if not p.is_file() or p.is_symlink() or p.name.endswith((".incomplete", ".lock", ".etag", ".sha256")):
            continue
        if p.parent.name == "blobs" or "robustzoo-urls" in p.parts:
            if sha(p.read_bytes()) != (p.name if p.parent.name == "blobs" else p.parent.name):
                return True
    return False


def final_path(kind: str, cache: Path, data: bytes) -> Path:
    if kind == "url":
        return cache / "robustzoo-urls" / sha(data) / "tiny.safetensors"
    return Path(os.path.realpath(next(cache.glob("models--org--tiny/snapshots/*/model.safetensors"))))


def kill_mid_download(ref: str, kw: dict, cache: Path, server: HubServer) -> None:
    """Start a download in a child process, SIGKILL it while the body hangs halfway."""
    args = ", ".join(f"{k}={v!r}" for k, v in kw.items())
    code = f"import robustzoo; robustzoo.download({ref!r}, cache_dir={str(cache)!r}, progress=False, {args})"
    child = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (server.count("GET") and list(cache.rglob("*.incomplete"))) and time.monotonic() < deadline:
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()


SCENARIOS = {  # name -> (fault kwargs for server.inject, or a cache action)
    "no fault": None,
    "connection dropped mid-body once": dict(kind="drop"),
    "connection dropped mid-body every time": dict(kind="drop", times=999, at=1000),
    "HTTP 503 twice": dict(kind="status", times=2, code=503, method="*"),
    "HTTP 500 every time": dict(kind="status", times=999, code=500, method="*"),
    "stall mid-body once (timeout 0.3 s)": dict(kind="stall", at=50_000, seconds=1.0),
    "stall every time (timeout 0.3 s)": dict(kind="stall", times=999, at=1000, seconds=1.0),
    "redirect to a second origin (CDN)": "cdn",
    "bytes differ from the ETag once": dict(kind="corrupt"),
    "Content-Length too long once": dict(kind="length", delta=1000),
    "Content-Length short (truncated) every time": dict(kind="length", times=999, delta=-100),
    "cached file modified, then load": "modify",
    "cached file modified, then load(force_download=True)": "modify-force",
    "process SIGKILLed mid-download, then load": "kill",
}


def run_once(kind: str, scenario, server: HubServer, data: bytes, ref_model, root: Path) -> str:
    server.clear()
    cache = Path(tempfile.mkdtemp(dir=root))
    ref, kw = (f"hf-hub:{REPO}", {"endpoint": server.endpoint}) if kind == "hub" else (
        server.endpoint + "/files/tiny.safetensors", {"sha256": sha(data)})
    extra = {}
    if scenario == "cdn":
        server.cdn = True
    elif scenario in ("modify", "modify-force"):
        robustzoo.download(ref, cache_dir=cache, progress=False, **kw)
        target = final_path(kind, cache, data)
        target.write_bytes(data[:-3] + bytes([data[-3] ^ 0x55]) + data[-2:])
        extra = {"force_download": True} if scenario == "modify-force" else {}
    elif scenario == "kill":
        server.inject("stall", at=len(data) // 2, seconds=30)
        kill_mid_download(ref, kw, cache, server)
    elif isinstance(scenario, dict):
        server.inject(**scenario)
    try:
        model = robustzoo.load(ref, cache_dir=cache, progress=False, **kw, **extra)
    except RobustZooError:
        outcome = "error"
    except Exception:  # noqa: BLE001 - counted: a raw exception is a bug
        outcome = "raw"
    else:
        same = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref_model.state_dict().values()))
        outcome = "right" if same else "wrong"
    return "wrong" if wrong_file_in(cache) else outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    no_backoff()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp, HubServer() as server:
        root = Path(tmp)
        path = robustzoo.save_pretrained(robustzoo.create_model("resnet18", width=0.0625), root / "ref", name="tiny")
        data, ref_model = path.read_bytes(), robustzoo.load_file(path)
        server.add_commit(REPO, {"model.safetensors": data})
        server.add_url("/files/tiny.safetensors", data)
        print(f"{args.runs} runs per row; {len(data)} byte file; {platform.machine()}, torch {torch.__version__}, "
              f"{datetime.date.today()}")
        print("| scenario | path | injected | right file | clear error | raw exception | wrong file |")
        print("|---|---|---|---|---|---|---|")
        for name, scenario in SCENARIOS.items():
            for kind in ("hub", "url"):
                counts = {"right": 0, "error": 0, "raw": 0, "wrong": 0}
                for _ in range(args.runs):
                    counts[run_once(kind, scenario, server, data, ref_model, root)] += 1
                injected = 0 if scenario is None else args.runs
                print(f"| {name} | {kind} | {injected} | {counts['right']} | {counts['error']} | {counts['raw']} "
                      f"| {counts['wrong']} |", flush=True)
        offline_miss_latency(server, root, args.runs)


def offline_miss_latency(server: HubServer, root: Path, runs: int) -> None:
    """Time until OfflineError for an uncached file (offline mode must not wait on any network)."""
    import statistics

    from robustzoo.errors import OfflineError

    server.clear()
    for ref in (f"hf-hub:{REPO}", server.endpoint + "/files/tiny.safetensors"):
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            try:
                robustzoo.load(ref, cache_dir=tempfile.mkdtemp(dir=root), offline=True, endpoint=server.endpoint)
            except OfflineError:
                times.append(time.perf_counter() - t)
        print(f"\noffline miss `{ref.split(':')[0]}`: OfflineError in {len(times)}/{runs} runs, median "
              f"{statistics.median(times) * 1e3:.1f} ms, max {max(times) * 1e3:.1f} ms, "
              f"requests sent: {len(server.log)}")


if __name__ == "__main__":
    main()
