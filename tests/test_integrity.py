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


# ---- point 2: every byte that is loaded was verified ------------------------------------------

@pytest.mark.parametrize("how", ["link-out-of-blobs", "regular-file"])
def test_cache_hit_that_is_not_a_hash_named_blob_is_refused(hub_server, tiny_weights, box, tmp_path, how):
    cache, _ = box
    other = weights(7, tmp_path)  # a valid robustzoo file with other weights
    planted = tmp_path / "home" / "other.safetensors"
    planted.write_bytes(other)
    hub_server.add_commit(REPO, {"model.safetensors": tiny_weights})
    ref = f"hf-hub:{REPO}"
    path = robustzoo.download(ref, endpoint=hub_server.endpoint, cache_dir=cache, progress=False)
    path.unlink()
    if how == "link-out-of-blobs":
        path.symlink_to(planted)
    else:
        path.write_bytes(other)
    with pytest.raises(ChecksumError, match="cannot be verified"):
        robustzoo.load(ref, endpoint=hub_server.endpoint, cache_dir=cache, progress=False)
    assert planted.read_bytes() == other  # refused, and the planted file was not deleted
    model = robustzoo.load(ref, endpoint=hub_server.endpoint, cache_dir=cache, progress=False)
    assert same(model, tiny_weights, tmp_path)  # the next load fetched the real file again


@pytest.mark.parametrize("tail", ["/", "/.", "/..", "/files/..", "/files/.", "/files/%2e%2e", ""])
def test_url_without_a_file_name_is_refused(hub_server, box, tail):
    cache, outside = box
    with pytest.raises(InvalidReferenceError, match="file name"):
        robustzoo.load(hub_server.endpoint + tail, cache_dir=cache, progress=False)
    assert outside.touched() == [] and hub_server.log == []


# ---- point 3: a resumed download is the same file ---------------------------------------------

@pytest.mark.parametrize("validator", [None, "Last-Modified"])
def test_resume_never_splices_two_versions(hub_server, no_sleep, box, tmp_path, validator):
    cache, _ = box
    v1, v2 = weights(1, tmp_path), weights(2, tmp_path)
    assert len(v1) == len(v2) and v1[:8] == v2[:8]  # same layout: a spliced file would load
    url = hub_server.add_url("/files/tiny.safetensors", v1)
    hub_server.url_headers = {"ETag": None, **({validator: "Tue, 01 Dec 2026 10:00:00 GMT"} if validator else {})}
    hub_server.inject("drop", times=999, at=len(v1) // 2)
    with pytest.raises(DownloadError):
        robustzoo.load(url, cache_dir=cache, progress=False)
    assert list(cache.rglob("*.incomplete"))  # half of version 1 is on disk
    hub_server.clear()
    hub_server.urls["/files/tiny.safetensors"] = v2  # the server now serves version 2
    hub_server.url_headers = {"ETag": None, **({validator: "Wed, 02 Dec 2026 10:00:00 GMT"} if validator else {})}
    model = robustzoo.load(url, cache_dir=cache, progress=False)
    assert same(model, v2, tmp_path)
    ranges = [r for m, p, r in hub_server.ranges if m == "GET"]
    assert ranges[0] is None or validator  # no validator recorded: no Range at all
    cached = next(p for p in cache.rglob("tiny.safetensors"))
    assert sha(cached.read_bytes()) == sha(v2)


def test_resume_with_an_etag_still_works(hub_server, no_sleep, box, tmp_path, tiny_weights):
    cache, _ = box
    url = hub_server.add_url("/files/tiny.safetensors", tiny_weights)
    hub_server.inject("drop", at=len(tiny_weights) // 2)
    model = robustzoo.load(url, cache_dir=cache, progress=False)
    assert same(model, tiny_weights, tmp_path)
    second = [r for m, p, r in hub_server.ranges if m == "GET"][1]
    assert second.startswith("bytes=") and second != "bytes=0-"  # resumed (whole chunks before the cut)


# ---- point 4: bad downloads do not stick -----------------------------------------------------

HTML = b"<!DOCTYPE html><html><head><title>Quota exceeded</title></head><body>try later</body></html>"


def test_html_page_from_a_url_is_not_cached(hub_server, box):
    cache, _ = box
    url = hub_server.add_url("/files/tiny.safetensors", HTML)
    for attempt in range(2):
        with pytest.raises(WeightFormatError, match="HTML"):
            robustzoo.load(url, cache_dir=cache, progress=False)
        assert hub_server.count("GET") == attempt + 1  # asked the server again, not a cached page
        assert not [p for p in cache.rglob("tiny.safetensors*") if p.suffix != ".lock"]


def test_html_page_from_the_hub_is_removed_and_download_refuses_it(hub_server, box):
    cache, _ = box
    hub_server.add_commit(REPO, {"model.safetensors": HTML})
    for attempt in range(2):
        with pytest.raises(WeightFormatError, match="HTML"):
            robustzoo.download(f"hf-hub:{REPO}", endpoint=hub_server.endpoint, cache_dir=cache, progress=False)
        assert hub_server.count("GET") == attempt + 1
        assert not [p for p in cache.rglob("*") if p.is_file() and "blobs" in p.parts]


def test_url_size_cap_refuses_before_reading(hub_server, box, tiny_weights, monkeypatch):
    cache, _ = box
    url = hub_server.add_url("/files/tiny.safetensors", tiny_weights)
    hub_server.inject("length", times=999, delta=10**13)  # claims 10 TB
    with pytest.raises(DownloadError, match="limit"):
        robustzoo.load(url, cache_dir=cache, progress=False)
    assert hub_server.count("GET") == 1  # refused at once, not retried
    hub_server.clear()
    monkeypatch.setenv("ROBUSTZOO_MAX_DOWNLOAD_BYTES", "1000")
    with pytest.raises(DownloadError, match="ROBUSTZOO_MAX_DOWNLOAD_BYTES"):
        robustzoo.load(url, cache_dir=cache, progress=False)
    assert not [p for p in cache.rglob("tiny.safetensors*") if p.suffix != ".lock" and p.stat().st_size]


# ---- point 7: no hangs -------------------------------------------------------------------------

@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["dev-zero", "fifo", "folder"])
def test_hashing_refuses_non_regular_files(tmp_path, kind):
    target = {"dev-zero": Path("/dev/zero"), "fifo": tmp_path / "pipe", "folder": tmp_path / "dir.safetensors"}[kind]
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "folder":
        target.mkdir()
    for sha256 in ("0" * 64, None):
        with pytest.raises((WeightFormatError, UnknownModelError)):
            robustzoo.load(str(target), sha256=sha256)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("path", ["url", "hub"])
def test_download_lock_held_elsewhere_times_out_naming_the_lock(hub_server, box, tiny_weights, monkeypatch, path):
    cache, _ = box
    monkeypatch.setenv("ROBUSTZOO_LOCK_TIMEOUT", "0.5")
    if path == "url":
        ref, kw = hub_server.add_url("/files/tiny.safetensors", tiny_weights), {}
        lock = cache / "robustzoo-urls" / sha(ref.encode())[:16] / "tiny.safetensors.lock"
    else:
        hub_server.add_commit(REPO, {"model.safetensors": tiny_weights})
        ref, kw = f"hf-hub:{REPO}", {"endpoint": hub_server.endpoint}
        lock = cache / ".locks" / "models--org--tiny" / f"{sha(tiny_weights)}.lock"
    lock.parent.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, filelock, time; l = filelock.FileLock(sys.argv[1]); "
                               "l.acquire(); print('held', flush=True); time.sleep(60)", str(lock)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(CacheError, match="lock") as e:
            robustzoo.load(ref, cache_dir=cache, progress=False, **kw)
        assert str(lock) in str(e.value)
    finally:
        holder.kill()
        holder.wait()


# ---- point 9: only the project's own errors come out ------------------------------------------

@pytest.mark.parametrize("ref", ["https://", "http://", "https:///x.safetensors", "http://[::1/x.safetensors"])
def test_urls_without_host(box, ref):
    cache, _ = box
    with pytest.raises(InvalidReferenceError):
        robustzoo.load(ref, cache_dir=cache, progress=False)


@pytest.mark.parametrize("what", ["empty-folder", "file:///etc", "..", "file://host/x"])
def test_local_references_that_are_not_weight_files(tmp_path, monkeypatch, what):
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path / "empty")
    ref = {"empty-folder": str(tmp_path / "empty"), "file:///etc": "file:///etc", "..": "..",
           "file://host/x": "file://host/x.safetensors"}[what]
    with pytest.raises(RobustZooError):
        robustzoo.load(ref)


def test_long_url_basename_downloads_fine(hub_server, box, tiny_weights, tmp_path):
    cache, outside = box
    url = hub_server.add_url("/files/" + "w" * 300 + ".safetensors", tiny_weights)
    assert same(robustzoo.load(url, cache_dir=cache, progress=False), tiny_weights, tmp_path)
    assert outside.touched() == []


@pytest.mark.parametrize("path", ["url", "hub"])
def test_cache_path_that_is_a_file(hub_server, tmp_path, tiny_weights, path):
    cache = tmp_path / "cache"
    cache.write_text("not a folder")
    hub_server.add_commit(REPO, {"model.safetensors": tiny_weights})
    ref, kw = (hub_server.add_url("/files/t.safetensors", tiny_weights), {}) if path == "url" else (
        f"hf-hub:{REPO}", {"endpoint": hub_server.endpoint})
    with pytest.raises(CacheError, match="cache"):
        robustzoo.load(ref, cache_dir=cache, progress=False, **kw)
    assert cache.read_text() == "not a folder"


@pytest.mark.parametrize("path", ["url", "hub"])
def test_file_size_limit_while_downloading_is_a_cache_error(hub_server, tmp_path, tiny_weights, path):
    hub_server.add_commit(REPO, {"model.safetensors": tiny_weights})
    ref = hub_server.add_url("/files/t.safetensors", tiny_weights) if path == "url" else f"hf-hub:{REPO}"
    code = ("import resource, robustzoo, sys\n"
            "from robustzoo.errors import CacheError, DownloadError\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))  # like a full disk: EFBIG mid-file\n"
            f"try:\n    robustzoo.load({ref!r}, cache_dir={str(tmp_path / 'c')!r}, endpoint={hub_server.endpoint!r},"
            " progress=False)\n"
            "except (CacheError, DownloadError) as e:\n    print(type(e).__name__, e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "Error" in out.stdout and "Traceback" not in out.stderr, out.stderr[-800:]


@pytest.mark.parametrize("target", ["loop", "file:///etc/passwd", "ftp://127.0.0.1/x"])
def test_bad_redirects_are_download_errors(hub_server, box, target):
    cache, outside = box
    url = hub_server.endpoint + "/files/r.safetensors"
    hub_server.redirects["/files/r.safetensors"] = "/files/r.safetensors" if target == "loop" else target
    with pytest.raises(DownloadError):
        robustzoo.load(url, cache_dir=cache, progress=False)
    assert outside.touched() == []


def test_sparse_file_declaring_a_terabyte_is_refused_before_allocation(tmp_path):
    import json
    import struct

    from robustzoo.models import create_model

    good = robustzoo.save_pretrained(robustzoo.create_model("resnet18", width=0.0625), tmp_path / "ok")
    raw = good.read_bytes()
    meta = json.loads(raw[8:8 + struct.unpack("<Q", raw[:8])[0]])["__metadata__"]
    config = {**json.loads(meta["config"]), "width": 150.0}
    with torch.device("meta"):
        shapes = create_model(**config).state_dict()
    header, offset = {"__metadata__": {**meta, "config": json.dumps(config)}}, 0
    for key, t in shapes.items():
        dtype, size = ("F32", 4) if t.is_floating_point() else ("I64", 8)
        header[key] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + t.numel() * size]}
        offset += t.numel() * size
    body = json.dumps(header).encode()
    path = tmp_path / "big.safetensors"
    with open(path, "wb") as f:  # a sparse file exactly as long as the header says (about 1 TB, no disk used)
        f.write(struct.pack("<Q", len(body)) + body)
        f.truncate(8 + len(body) + offset)
    try:
        with pytest.raises(WeightFormatError, match="bytes"):
            robustzoo.load_file(path)
    finally:
        path.unlink()


# ---- point 10: credentials and revisions -------------------------------------------------------

def test_credentials_in_a_url_never_appear(hub_server, box, tiny_weights, caplog):
    import logging

    cache, _ = box
    hub_server.add_url("/files/tiny.safetensors", tiny_weights)
    url = hub_server.endpoint.replace("http://", "http://alice:s3cret@") + "/files/tiny.safetensors"
    with caplog.at_level(logging.DEBUG):
        model = robustzoo.load(url, cache_dir=cache, progress=False)
        assert "s3cret" not in repr(model.pretrained_meta)
        hub_server.inject("status", times=999, code=404)
        with pytest.raises(DownloadError) as e:
            robustzoo.load(url.replace("tiny", "other"), cache_dir=cache, progress=False)
    assert "s3cret" not in str(e.value) and "s3cret" not in caplog.text
    assert not [p for p in cache.rglob("*") if "s3cret" in str(p)]


def test_revision_given_twice_must_agree(hub_server, tiny_weights):
    hub_server.add_commit(REPO, {"model.safetensors": tiny_weights}, branch="dev")
    with pytest.raises(InvalidReferenceError, match="revision"):
        robustzoo.load(f"hf-hub:{REPO}@dev", revision="main", endpoint=hub_server.endpoint, progress=False)
    robustzoo.load(f"hf-hub:{REPO}@dev", revision="dev", endpoint=hub_server.endpoint, progress=False)


@pytest.mark.parametrize("revision", ["../../x", "/abs", "a/../../b", "x\ny"])
def test_unsafe_revisions_are_refused(hub_server, box, revision):
    cache, outside = box
    with pytest.raises(InvalidReferenceError):
        robustzoo.load(f"hf-hub:{REPO}", revision=revision, endpoint=hub_server.endpoint, cache_dir=cache,
                       progress=False)
    assert outside.touched() == [] and hub_server.log == []


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(ref=st.one_of(
    st.text(max_size=40),
    st.builds(lambda a, b: f"{a}://{b}", st.sampled_from(["http", "https", "file"]), st.text(max_size=30)),
    st.builds(lambda b: f"hf-hub:{b}", st.text(max_size=30)),
), sha256=st.one_of(st.none(), st.text(max_size=70)))
def test_property_any_reference_string_gives_a_project_error(tmp_path, ref, sha256):
    os.environ["ROBUSTZOO_DOWNLOAD_TIMEOUT"] = "0.2"
    try:
        robustzoo.download(ref, cache_dir=tmp_path / "c", sha256=sha256, progress=False,
                           endpoint="http://127.0.0.1:9")
    except RobustZooError:
        pass
    finally:
        os.environ.pop("ROBUSTZOO_DOWNLOAD_TIMEOUT", None)


