"""Issue 11: no download or cache entry touches what it should not, or loads unverified bytes.

Each test plays a hostile or broken server (tests/hubserver.py on 127.0.0.1) or a tampered cache, and
checks three things: the outcome is the right file or a robustzoo error (never a raw exception), no
file outside the cache folder is created, changed or deleted, and nothing unverified is returned.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import robustzoo
from robustzoo.errors import (
    CacheError,
    ChecksumError,
    DownloadError,
    InvalidReferenceError,
    RobustZooError,
    UnknownModelError,
    WeightFormatError,
)

REPO = "org/tiny"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def weights(seed: int, tmp: Path) -> bytes:
    torch.manual_seed(seed)
    model = robustzoo.create_model("resnet18", width=0.0625, num_classes=10)
    return robustzoo.save_pretrained(model, tmp / f"w{seed}", name="tiny").read_bytes()


def tensors_of(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def same(model, data: bytes, tmp: Path) -> bool:
    ref = _reference(data)
    return all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values()))


_REFS: dict[str, torch.nn.Module] = {}


def _reference(data: bytes) -> torch.nn.Module:
    import tempfile

    if sha(data) not in _REFS:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.safetensors"
            path.write_bytes(data)
            _REFS[sha(data)] = robustzoo.load_file(path)
    return _REFS[sha(data)]


class Outside:
    """Snapshot of every file under ``root`` except the cache: what a download must never touch."""

    def __init__(self, root: Path, cache: Path) -> None:
        self.root, self.cache = root, cache
        self.before = self.files()

    def files(self) -> dict[str, bytes]:
        out = {}
        for p in self.root.rglob("*"):
            if self.cache in p.parents or p == self.cache or not (p.is_file() or p.is_symlink()):
                continue
            out[str(p)] = p.read_bytes() if p.is_file() else b"->" + os.readlink(p).encode()
        return out

    def touched(self) -> list[str]:
        after = self.files()
        return sorted(k for k in set(self.before) | set(after) if self.before.get(k) != after.get(k))


@pytest.fixture
def box(tmp_path):
    """A cache two folders deep inside tmp_path, and a victim file next to it."""
    cache = tmp_path / "home" / "user" / "cache"
    victim = tmp_path / "home" / "victim.txt"
    victim.parent.mkdir(parents=True)
    victim.write_text("precious")
    return cache, Outside(tmp_path, cache)


# ---- point 1: nothing outside the cache is written or deleted ---------------------------------

def test_checksum_failure_does_not_follow_a_planted_symlink_out_of_the_cache(hub_server, tiny_weights, box, tmp_path):
    cache, outside = box
    hub_server.add_commit(REPO, {"model.safetensors": tiny_weights})
    ref = f"hf-hub:{REPO}"
    path = robustzoo.download(ref, endpoint=hub_server.endpoint, cache_dir=cache, progress=False)
    victim = tmp_path / "home" / "victim.txt"
    path.unlink()
    path.symlink_to(victim)  # planted: the snapshot entry now points at a user file
    outside = type(outside)(tmp_path, cache)
    with pytest.raises(ChecksumError):
        robustzoo.load(ref, endpoint=hub_server.endpoint, cache_dir=cache, progress=False, sha256=sha(tiny_weights))
    assert victim.read_text() == "precious" and outside.touched() == []


@pytest.mark.parametrize("bad", ["../../x", "../../victim.txt", "a" * 63, "g" * 64, "", " " + "a" * 64])
def test_sha256_argument_is_validated_before_use(hub_server, tiny_weights, box, bad):
    cache, outside = box
    url = hub_server.add_url("/files/tiny.safetensors", tiny_weights)
    with pytest.raises(InvalidReferenceError, match="64 hexadecimal"):
        robustzoo.load(url, cache_dir=cache, progress=False, sha256=bad)
    assert outside.touched() == [] and hub_server.log == []


def test_sha256_upper_case_is_accepted(hub_server, tiny_weights, box, tmp_path):
    cache, _ = box
    url = hub_server.add_url("/files/tiny.safetensors", tiny_weights)
    model = robustzoo.load(url, cache_dir=cache, progress=False, sha256=sha(tiny_weights).upper())
    assert same(model, tiny_weights, tmp_path)


@pytest.mark.parametrize("header, value", [
    ("ETag", '"../../../planted"'), ("ETag", '"../../../../home/planted"'), ("ETag", '"a/b"'),
    ("ETag", '"' + "a" * 300 + '"'), ("ETag", '"abc\x01def"'), ("ETag", None),
    ("X-Repo-Commit", "../../../planted"), ("X-Repo-Commit", "a/../../b"), ("X-Repo-Commit", "x" * 300),
])
def test_hostile_etag_or_commit_is_refused_before_anything_is_written(hub_server, tiny_weights, box, header, value):
    cache, outside = box
    hub_server.add_commit(REPO, {"model.safetensors": tiny_weights})
    hub_server.hub_headers = {header: value}
    with pytest.raises(DownloadError):
        robustzoo.load(f"hf-hub:{REPO}", endpoint=hub_server.endpoint, cache_dir=cache, progress=False)
    assert outside.touched() == []
    assert not [p for p in cache.rglob("*") if p.is_file() and "blobs" in p.parts]


def test_hostile_commit_on_a_404_writes_nothing_outside(hub_server, tiny_weights, box):
    cache, outside = box
    hub_server.add_commit(REPO, {"other.safetensors": tiny_weights})  # model.safetensors: 404 EntryNotFound
    hub_server.hub_headers = {"X-Repo-Commit": "../../../../planted"}
    with pytest.raises(DownloadError):
        robustzoo.load(f"hf-hub:{REPO}", endpoint=hub_server.endpoint, cache_dir=cache, progress=False)
    assert outside.touched() == []


_HOSTILE = st.one_of(
    st.sampled_from(['"../x"', '"..\\\\x"', '"/etc/passwd"', '"a/b"', '".."', '"."', '""', "W/\"x\"", '"a..b"']),
    st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=200).map(lambda t: f'"{t}"'),
)


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(etag=_HOSTILE, commit=st.one_of(st.none(), st.text(st.characters(min_codepoint=32, max_codepoint=126),
                                                           max_size=60)))
def test_property_any_server_headers_give_the_right_file_or_a_clear_error(hub_server, tiny_weights, tmp_path,
                                                                          etag, commit):
    cache = tmp_path / "p" / "q" / f"cache{abs(hash((etag, commit)))}"
    outside = Outside(tmp_path, cache)
    hub_server.clear()
    hub_server.add_commit(REPO, {"model.safetensors": tiny_weights})
    hub_server.hub_headers = {"ETag": etag, **({"X-Repo-Commit": commit} if commit is not None else {})}
    try:
        model = robustzoo.load(f"hf-hub:{REPO}", endpoint=hub_server.endpoint, cache_dir=cache, progress=False)
    except RobustZooError:
        pass
    else:
        assert same(model, tiny_weights, tmp_path)
    assert outside.touched() == []
