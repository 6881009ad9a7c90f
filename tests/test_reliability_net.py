"""Network faults and cache integrity: every scenario ends with the right file or a clear error.

Each test runs on both download paths where the fault applies: the Hub path (``hf-hub:`` through
huggingface_hub) and the URL path (requests, robustzoo._download). "Never a wrong file" is checked
twice: the loaded weights equal the reference, and every file at a final cache path hashes to the
name it is stored under.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import robustzoo
from robustzoo import registry
from robustzoo._download import RETRIES
from robustzoo.errors import ChecksumError, DownloadError, RobustZooError

REPO = "org/tiny"
PATHS = ["hub", "url"]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Source:
    """One weight file served on one path, loaded into one cache folder."""

    def __init__(self, kind: str, server, data: bytes, cache: Path) -> None:
        self.kind, self.server, self.data, self.cache = kind, server, data, cache
        if kind == "hub":
            server.add_commit(REPO, {"model.safetensors": data})
            self.ref, self.kw, self.first = f"hf-hub:{REPO}", {"endpoint": server.endpoint}, "HEAD"
        else:
            self.ref = server.add_url("/files/tiny.safetensors", data)
            self.kw, self.first = {"sha256": sha(data)}, "GET"

    def load(self, **kw) -> torch.nn.Module:
        return robustzoo.load(self.ref, cache_dir=self.cache, progress=False, **{**self.kw, **kw})

    def outcome(self, **kw) -> str:
        """'right', 'error' (a RobustZooError) or 'wrong'; also fails on a wrong file in the cache."""
        try:
            model = self.load(**kw)
        except RobustZooError:
            result = "error"
        else:
            want = robustzoo.load_file(self.reference())
            result = "right" if all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                                       want.state_dict().values())) else "wrong"
        assert_no_wrong_file(self.cache)
        return result

    def reference(self) -> Path:
        path = self.cache.parent / "reference.safetensors"
        path.write_bytes(self.data)
        return path

    def final_path(self) -> Path:
        if self.kind == "url":
            return self.cache / "robustzoo-urls" / sha(self.data) / "tiny.safetensors"
        return next(self.cache.glob("models--org--tiny/snapshots/*/model.safetensors"))


def assert_no_wrong_file(cache: Path) -> None:
    """Every blob is named by its sha256 and every URL download sits under its sha256."""
    for p in cache.rglob("*"):
        if not p.is_file() or p.is_symlink() or p.name.endswith((".incomplete", ".lock", ".etag", ".sha256")):
            continue
        if p.parent.name == "blobs":
            assert sha(p.read_bytes()) == p.name, f"wrong bytes at final path {p}"
        elif "robustzoo-urls" in p.parts:
            assert sha(p.read_bytes()) == p.parent.name, f"wrong bytes at final path {p}"


@pytest.fixture(params=PATHS)
def source(request, hub_server, tiny_weights, tmp_path):
    return Source(request.param, hub_server, tiny_weights, tmp_path / "cache")


# ---- cache integrity --------------------------------------------------------------------------

def test_cached_file_modified_after_download_is_detected_and_repaired(source, monkeypatch):
    source.load()
    target = Path(os.path.realpath(source.final_path()))
    corrupt = bytearray(target.read_bytes())
    corrupt[-3] ^= 0x55  # a tensor byte: the file still parses, only the hash can tell
    target.write_bytes(bytes(corrupt))
    if source.kind == "hub":
        spec = registry.WeightSpec(name="fake-r18", arch="resnet18", kind="classifier", task="none", training="adv",
                                   repo_id=REPO, revision="main", sha256=sha(source.data))
        monkeypatch.setattr(registry, "REGISTRY", {**registry.REGISTRY, "fake-r18": spec})
        [(name, path, ok, message)] = robustzoo.verify(["fake-r18"], cache_dir=source.cache)
        assert not ok and "sha256" in message and path is not None
    assert source.outcome(force_download=True) == "right"  # repairs without a prior failure
    target.write_bytes(bytes(corrupt))
    with pytest.raises(ChecksumError, match="modified in the cache"):
        source.load()
    assert source.outcome() == "right"  # the bad copy was removed: the next load fetches a fresh one


@pytest.mark.slow
def test_sigkill_mid_download_leaves_no_partial_file(source):
    source.server.inject("stall", at=len(source.data) // 2, seconds=30)  # the body hangs halfway
    code = f"import robustzoo; robustzoo.download({source.ref!r}, cache_dir={str(source.cache)!r}, progress=False, " \
           + ", ".join(f"{k}={v!r}" for k, v in source.kw.items()) + ")"
    child = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    # huggingface_hub buffers its chunk in memory, so its temp file may still be empty: wait for the GET
    need = 1 if source.kind == "url" else 0  # robustzoo writes 64 KiB chunks: wait for the first one
    while not (source.server.count("GET") and [p for p in source.cache.rglob("*.incomplete")
                                               if p.stat().st_size >= need]):
        assert time.monotonic() < deadline and child.poll() is None, "download never started"
        time.sleep(0.05)
    assert not [p for p in source.cache.rglob("*.safetensors") if p.is_file()]  # nothing at a final path
    child.send_signal(signal.SIGKILL)
    child.wait(10)
    assert source.outcome() == "right"
    if source.kind == "url":  # robustzoo resumes the killed process's partial file
        assert source.server.ranges[-1][2] is not None


def _child(ref: str, cache: str, kw: dict, queue) -> None:
    path = robustzoo.download(ref, cache_dir=cache, progress=False, **kw)
    queue.put(hashlib.sha256(Path(path).read_bytes()).hexdigest())


@pytest.mark.slow
def test_eight_cold_processes_download_once(source):
    source.server.inject("stall", at=1000, seconds=0.5)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_child, args=(source.ref, str(source.cache), source.kw, queue)) for _ in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * 8
    assert {queue.get(timeout=5) for _ in procs} == {sha(source.data)}
    assert source.server.count("GET") == 1


# ---- network faults -----------------------------------------------------------------------------

def test_connection_dropped_mid_body_is_resumed(source, no_sleep):
    source.server.inject("drop", times=2)
    assert source.outcome() == "right"
    gets = [r for m, _, r in source.server.ranges if m == "GET"]
    assert len(gets) == 3 and gets[0] is None
    if source.kind == "url":  # huggingface_hub loses its in-memory chunk on a drop and starts over instead
        assert all(r and r.startswith("bytes=") for r in gets[1:])


def test_connection_dropped_every_time_is_an_error(source, no_sleep):
    source.server.inject("drop", times=999, at=len(source.data) // 2)
    assert source.outcome() == "error"
    assert source.server.count("GET") <= 8  # bounded


def test_server_errors_are_retried_then_reported(source, no_sleep):
    source.server.inject("status", times=2, code=503, method=source.first)
    assert source.outcome() == "right"
    assert no_sleep, "retries must back off"
    source.server.clear()
    source.cache = source.cache.parent / "cache2"
    source.server.inject("status", times=999, code=500, method=source.first)
    with pytest.raises(DownloadError):
        source.load()
    assert_no_wrong_file(source.cache)
    tries = source.server.count(source.first)
    assert tries == (RETRIES + 1 if source.kind == "url" else tries) and 2 <= tries <= 8


def test_hub_get_error_after_head_is_clear(hub_server, tiny_weights, tmp_path):
    src = Source("hub", hub_server, tiny_weights, tmp_path / "cache")
    hub_server.inject("status", code=500, method="GET")
    with pytest.raises(DownloadError, match="HTTP 500"):
        src.load()
    assert src.outcome() == "right"


def test_stalled_server_times_out(source, no_sleep, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("ROBUSTZOO_DOWNLOAD_TIMEOUT", "0.3")
    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", 0.3)
    monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", 0.3)
    source.server.inject("stall", times=1, seconds=1.5, at=len(source.data) // 2)
    assert source.outcome() == "right"  # one stall: timed out, resumed
    source.server.clear()
    source.cache = source.cache.parent / "cache2"
    source.server.inject("stall", times=999, seconds=1.5, at=1000)
    assert source.outcome() == "error"


def test_redirect_to_a_second_origin(source):
    source.server.cdn = True
    assert source.outcome() == "right"
    assert source.server.count("GET", "/cdn/") == 1 and source.server.count("GET", "/resolve/") == 0
    source.server.inject("corrupt", path="/cdn/")
    with pytest.raises(ChecksumError):
        source.load(force_download=True)
    assert_no_wrong_file(source.cache)


def test_wrong_content_length(source, no_sleep):
    source.server.inject("length", delta=1000)  # announces more than it sends, then closes
    assert source.outcome() == "right"
    source.server.clear()
    source.cache = source.cache.parent / "cache2"
    source.server.inject("length", times=999, delta=-100)  # a consistent but truncated answer
    assert source.outcome() == "error"
