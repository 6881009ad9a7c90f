"""Network-fault and cache-fault scenarios against the loopback Hub, each run N times on both paths.

Usage: .venv/bin/python benchmarks/reliability_net.py [--runs 20]

For every scenario the fault is armed on tests/hubserver.py, ``robustzoo.load`` runs into a fresh
cache folder (inside a fresh run folder holding a "victim" user file), and the outcome is counted as:
right file (weights equal the reference), clear error (a ``RobustZooError``), raw exception (anything
else: must be 0), wrong file (must be 0; also counted when any file at a final cache path does not
hash to its name), touched outside (any file of the run folder outside the cache created, changed
or deleted: must be 0) and hang (no answer within 60 s: must be 0). Paths: ``hub`` = ``hf-hub:``
through huggingface_hub, ``url`` = plain http URL (with a sha256 unless the row says otherwise)
through requests. Retry counts are the real ones; backoff sleeps are skipped to keep the run short.
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



EPILOG = ("Runtime: minutes (loopback Hub server on 127.0.0.1, backoff sleeps skipped). Writes nothing outside "
          "temp folders: prints the markdown table.")

def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def no_backoff() -> None:
    from huggingface_hub import constants, file_download
    from huggingface_hub.utils import _http

    fake = types.SimpleNamespace(sleep=lambda s: None)
    _http.time = file_download.time = dl.time = fake
    constants.HF_HUB_DOWNLOAD_TIMEOUT = constants.HF_HUB_ETAG_TIMEOUT = 0.3
    os.environ["ROBUSTZOO_DOWNLOAD_TIMEOUT"] = "0.3"


def wrong_file_in(cache: Path, data: bytes) -> bool:
    """A final cache file that is not what it claims: a blob not hashing to its name, a URL file not ``data``."""
    for p in cache.rglob("*"):
        if not p.is_file() or p.is_symlink() or p.name.endswith((".incomplete", ".lock", ".etag", ".sha256")):
            continue
        if p.parent.name == "blobs" and sha(p.read_bytes()) != p.name:
            return True
        if "robustzoo-urls" in p.parts and sha(p.read_bytes()) != sha(data):
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
    # issue 11: hostile servers and tampered caches
    "ETag is a path (../../../planted)": {"hub_headers": {"ETag": '"../../../planted"'}},
    "X-Repo-Commit is a path (../../../planted)": {"hub_headers": {"X-Repo-Commit": "../../../planted"}},
    "ETag with a control character": {"hub_headers": {"ETag": '"ab\x01cd"'}},
    "ETag is not the content hash": {"hub_headers": {"ETag": '"abcdef"'}},
    "HTML page served with 200": "html",
    "sha256 argument is a path (../../x)": "bad-sha",
    "snapshot link planted to a user file, load(sha256=)": "plant-link",
    "cached file replaced by another model's file": "plant-other",
    "file changed on the server after a partial download, no ETag": "swap",
    "Content-Length of 10 TB (size cap)": dict(kind="length", times=999, delta=10**13),
    "redirect loop": "loop",
    "redirect to file:///etc/passwd": "file-redirect",
    "cache folder is a file": "cache-file",
    "download lock held by a stuck process (timeout 0.5 s)": "lock",
}
ONLY = {"ETag is a path (../../../planted)": "hub", "X-Repo-Commit is a path (../../../planted)": "hub",
        "ETag with a control character": "hub", "ETag is not the content hash": "hub",
        "snapshot link planted to a user file, load(sha256=)": "hub",
        "cached file replaced by another model's file": "hub",
        "file changed on the server after a partial download, no ETag": "url",
        "Content-Length of 10 TB (size cap)": "url", "redirect loop": "url", "redirect to file:///etc/passwd": "url"}


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang


def files_outside(run: Path, cache: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() if p.is_file() else b"link" for p in run.rglob("*")
            if cache not in p.parents and p != cache and (p.is_file() or p.is_symlink())}


def arrange(kind: str, scenario, server: HubServer, data: bytes, other: bytes, cache: Path, run: Path,
            ref: str, kw: dict) -> tuple[dict, list]:
    """Arm the server / tamper the cache for one try; returns extra load() kwargs and objects to keep alive."""
    extra, keep = {}, []
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
    elif scenario == "html":
        server.urls["/files/tiny.safetensors"] = HTML
        server.add_commit(REPO, {"model.safetensors": HTML})
        extra = {"sha256": None}
    elif scenario == "bad-sha":
        extra = {"sha256": "../../victim.txt"}
    elif scenario in ("plant-link", "plant-other"):
        path = robustzoo.download(ref, cache_dir=cache, progress=False, **kw)
        path.unlink()
        if scenario == "plant-link":
            path.symlink_to(run / "victim.txt")
            extra = {"sha256": sha(data)}
        else:
            path.write_bytes(other)
    elif scenario == "swap":  # half of version 1 on disk, then the server serves version 2 without an ETag
        server.url_headers = {"ETag": None}
        server.urls["/files/tiny.safetensors"] = other
        server.inject("drop", times=999, at=len(other) // 2)
        try:
            robustzoo.load(ref, cache_dir=cache, progress=False, sha256=None)
        except RobustZooError:
            pass
        server.faults.clear()
        server.urls["/files/tiny.safetensors"] = data
        extra = {"sha256": None}
    elif scenario in ("loop", "file-redirect"):
        server.redirects["/files/tiny.safetensors"] = "/files/tiny.safetensors" if scenario == "loop" else \
            "file:///etc/passwd"
    elif scenario == "cache-file":
        cache.parent.mkdir(parents=True)
        cache.write_text("not a folder")
    elif scenario == "lock":  # a child process holds the lock and never lets go
        os.environ["ROBUSTZOO_LOCK_TIMEOUT"] = "0.5"
        lock = (cache / "robustzoo-urls" / sha(data) / "tiny.safetensors.lock" if kind == "url" else
                cache / ".locks" / "models--org--tiny" / f"{sha(data)}.lock")
        lock.parent.mkdir(parents=True)
        code = ("import sys, time, filelock; lock = filelock.FileLock(sys.argv[1]); lock.acquire(); "
                "print('held', flush=True); time.sleep(600)")
        holder = subprocess.Popen([sys.executable, "-c", code, str(lock)], stdout=subprocess.PIPE, text=True)
        keep.append(holder)
        holder.stdout.readline()
    elif isinstance(scenario, dict) and "hub_headers" in scenario:
        server.hub_headers = dict(scenario["hub_headers"])
    elif isinstance(scenario, dict):
        server.inject(**scenario)
    return extra, keep


def run_once(kind: str, scenario, server: HubServer, data: bytes, other: bytes, ref_model, root: Path) -> str:
    server.clear()
    server.urls["/files/tiny.safetensors"] = data
    server.add_commit(REPO, {"model.safetensors": data})
    os.environ.pop("ROBUSTZOO_LOCK_TIMEOUT", None)
    run = Path(tempfile.mkdtemp(dir=root))
    (run / "victim.txt").write_text("a user file")
    cache = run / "home" / "cache"
    ref, kw = (f"hf-hub:{REPO}", {"endpoint": server.endpoint}) if kind == "hub" else (
        server.endpoint + "/files/tiny.safetensors", {"sha256": sha(data)})
    before = files_outside(run, cache)
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(60)
    keep: list = []
    try:
        extra, keep = arrange(kind, scenario, server, data, other, cache, run, ref, kw)
        before = files_outside(run, cache)
        model = robustzoo.load(ref, cache_dir=cache, progress=False, **{**kw, **extra})
    except Hang:
        outcome = "hang"
    except RobustZooError:
        outcome = "error"
    except Exception:  # noqa: BLE001 - counted: a raw exception is a bug
        outcome = "raw"
    else:
        same = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref_model.state_dict().values()))
        outcome = "right" if same else "wrong"
    finally:
        signal.alarm(0)
        for holder in keep:
            holder.kill()
            holder.wait()
    if files_outside(run, cache) != before:
        return "outside"
    return "wrong" if cache.is_dir() and wrong_file_in(cache, data) else outcome


HTML = b"<!DOCTYPE html><html><head><title>Quota exceeded</title></head><body>try later</body></html>"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=EPILOG)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--only", default="", help="run only the scenarios whose name contains this text")
    args = parser.parse_args()
    torch.set_num_threads(1)
    no_backoff()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp, HubServer() as server:
        root = Path(tmp)
        path = robustzoo.save_pretrained(robustzoo.create_model("resnet18", width=0.0625), root / "ref", name="tiny")
        data, ref_model = path.read_bytes(), robustzoo.load_file(path)
        other = robustzoo.save_pretrained(robustzoo.create_model("resnet18", width=0.0625), root / "other",
                                          name="tiny").read_bytes()
        print(f"{args.runs} runs per row; {len(data)} byte file; {platform.machine()}, torch {torch.__version__}, "
              f"{datetime.date.today()}")
        print("| scenario | path | tries | right file | clear error | raw exception | wrong file | touched outside "
              "the cache | hangs |")
        print("|---|---|---|---|---|---|---|---|---|")
        for name, scenario in SCENARIOS.items():
            for kind in ("hub", "url"):
                if ONLY.get(name, kind) != kind or args.only not in name:
                    continue
                counts = {"right": 0, "error": 0, "raw": 0, "wrong": 0, "outside": 0, "hang": 0}
                for _ in range(args.runs):
                    counts[run_once(kind, scenario, server, data, other, ref_model, root)] += 1
                print(f"| {name} | {kind} | {args.runs} | {counts['right']} | {counts['error']} | {counts['raw']} "
                      f"| {counts['wrong']} | {counts['outside']} | {counts['hang']} |", flush=True)
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
