"""robustzoo.load / download / verify / push_to_hub against a loopback Hub (tests/hubserver.py)."""

from __future__ import annotations

import dataclasses
import hashlib
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import robustzoo
from robustzoo import hub, registry
from robustzoo.errors import (
    ChecksumError,
    DownloadError,
    NotPublishedError,
    OfflineError,
    UnknownModelError,
    WeightFormatError,
)

REPO = "org/tiny"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def reference(data: bytes, tmp_path: Path) -> torch.nn.Module:
    path = tmp_path / "reference.safetensors"
    path.write_bytes(data)
    return robustzoo.load_file(path)


def cache_files(root: Path) -> list[Path]:
    """Every regular file and link in the hub cache (excluding lock files and refs)."""
    return [p for p in root.rglob("*") if (p.is_file() or p.is_symlink()) and ".locks" not in p.parts
            and "refs" not in p.parts and p.name != "CACHEDIR.TAG"]


def fake_spec(monkeypatch, name: str, **kw) -> registry.WeightSpec:
    """Put a temporary entry into the registry (model_info reads registry.REGISTRY at call time)."""
    base = dict(name=name, arch="resnet18", kind="classifier", task="rotation", training="adv", num_classes=10,
                width=0.0625, reproduce=f"python training/reproduce.py {name}")
    spec = registry.WeightSpec(**{**base, **kw})
    monkeypatch.setattr(registry, "REGISTRY", {**registry.REGISTRY, name: spec})
    return spec


# ---- hf-hub: references --------------------------------------------------------------------

def test_first_download_then_cache_hit(hub_server, tiny_weights, tmp_path):
    hub_server.add_commit(REPO, {"model.safetensors": tiny_weights})
    first = robustzoo.load(f"hf-hub:{REPO}", endpoint=hub_server.endpoint, progress=False)
    assert (hub_server.count("HEAD"), hub_server.count("GET")) == (2, 1)  # our metadata check + the client
    assert same_weights(first, reference(tiny_weights, tmp_path))
    assert not first.training and first.pretrained_meta["source"] == f"hf-hub:{REPO}"
    hub_server.clear()
    again = robustzoo.load(f"hf-hub:{REPO}", endpoint=hub_server.endpoint, progress=False)
    assert (hub_server.count("HEAD"), hub_server.count("GET")) == (2, 0)  # revalidated, not re-downloaded
    assert same_weights(first, again)


def test_pinned_commit_needs_no_request_once_cached(hub_server, tiny_weights):
    commit = hub_server.add_commit(REPO, {"model.safetensors": tiny_weights})
    robustzoo.download(f"hf-hub:{REPO}@{commit}", endpoint=hub_server.endpoint, progress=False)
    hub_server.clear()
    robustzoo.load(f"hf-hub:{REPO}@{commit}", endpoint=hub_server.endpoint, progress=False)
    assert hub_server.log == []


def test_save_push_load_round_trip_is_bit_identical(hub_server, tmp_path):
    torch.manual_seed(1)
    model = robustzoo.create_model("resnet18", width=0.0625, num_classes=7, in_chans=1)
    commit = robustzoo.push_to_hub(model, "me/pushed", name="pushed", metrics={"clean": 81.5, "pgd20": 43.25},
                                   endpoint=hub_server.endpoint)
    assert len(commit) == 40
    files = hub_server.repos["me/pushed"].commits[commit]
    assert set(files) == {"model.safetensors", "config.json", "README.md"}
    card = files["README.md"].decode()
    assert "library_name: robustzoo" in card and "license: mit" in card and "2003.12862" in card
    assert "model-index" in card and "value: 43.25" in card and sha(files["model.safetensors"]) in card
    loaded = robustzoo.load(f"hf-hub:me/pushed@{commit}", endpoint=hub_server.endpoint, progress=False)
    assert same_weights(model, loaded) and loaded.in_chans == 1 and loaded.num_classes == 7


def test_push_of_a_loaded_model_sends_no_local_path_or_stale_source(hub_server):
    from safetensors import safe_open

    model = robustzoo.load("rot-adv-aft-r18-w8-fmnist")  # pretrained_meta has source= and path= (this machine's)
    commit = robustzoo.push_to_hub(model, "me/again", name="again", metrics=None, endpoint=hub_server.endpoint)
    blob = hub_server.repos["me/again"].commits[commit]["model.safetensors"]
    with safe_open(_write(blob), "pt") as fh:
        meta = fh.metadata()
    assert "path" not in meta and "source" not in meta and "finetune" in meta


def test_a_pushed_fine_tuned_model_evaluates_by_hub_name_without_data_or_eps(hub_server, tmp_path, capsys):
    from robustzoo.cli import main

    model = robustzoo.load("rot-adv-aft-r18-w8-fmnist")
    model.pretrained_meta["dataset"] = "fmnist-mini"  # as `robustzoo finetune --data fmnist-mini` records it
    commit = robustzoo.push_to_hub(model, "me/ft", name="ft", metrics=None, endpoint=hub_server.endpoint)
    assert main(["eval", f"hf-hub:me/ft@{commit}", "--endpoint", hub_server.endpoint, "--cache-dir",
                 str(tmp_path / "cache"), "--n", "16", "--attacks", "clean", "--no-progress"]) == 0
    assert "data=fmnist-mini:test n=16 eps=0.1 (eps from the model's fine-tuning record)" in capsys.readouterr().out


def _write(blob: bytes) -> str:
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".safetensors", delete=False) as fh:
        fh.write(blob)
    return fh.name


def test_push_failure_is_a_download_error(hub_server):
    hub_server.inject("status", times=99, method="*", code=403)
    with pytest.raises(DownloadError, match="pushing me/x"):
        robustzoo.push_to_hub(robustzoo.create_model("resnet18", width=0.0625), "me/x", endpoint=hub_server.endpoint)


@pytest.mark.parametrize("ref, message", [
    ("hf-hub:nobody/missing", "repository nobody/missing not found"),
    ("hf-hub:org/tiny@v9", "revision 'v9' does not exist"),
    ("hf-hub:org/tiny@main", "has no file 'model.safetensors'"),
])
def test_not_found_errors_are_clear(hub_server, tiny_weights, ref, message):
    hub_server.add_commit(REPO, {"other.bin": b"x"})
    with pytest.raises(DownloadError, match=message):
        robustzoo.load(ref, endpoint=hub_server.endpoint, progress=False)


def test_corrupt_bytes_raise_checksum_error_and_leave_nothing(hub_server, tiny_weights, tmp_path):
    hub_server.add_commit(REPO, {"model.safetensors": tiny_weights})
    hub_server.inject("corrupt")  # same length, one byte flipped, ETag still claims the true sha256
    cache = tmp_path / "c"
    with pytest.raises(ChecksumError, match="removed"):
        robustzoo.load(f"hf-hub:{REPO}", endpoint=hub_server.endpoint, cache_dir=cache, progress=False)
    assert cache_files(cache) == []
    model = robustzoo.load(f"hf-hub:{REPO}", endpoint=hub_server.endpoint, cache_dir=cache, progress=False)
    assert same_weights(model, reference(tiny_weights, tmp_path))


def test_regular_file_etag_is_checked_as_git_blob_id(hub_server, tiny_weights, tmp_path):
    hub_server.add_commit(REPO, {"model.safetensors": tiny_weights}, lfs_etag=False)
    hub_server.inject("corrupt")
    with pytest.raises(ChecksumError, match="git blob id"):
        robustzoo.load(f"hf-hub:{REPO}", endpoint=hub_server.endpoint, progress=False)
    assert robustzoo.load(f"hf-hub:{REPO}", endpoint=hub_server.endpoint, progress=False) is not None


def test_truncated_body_is_an_error_not_a_file(hub_server, tiny_weights, tmp_path, no_sleep):
    hub_server.add_commit(REPO, {"model.safetensors": tiny_weights})
    hub_server.inject("drop", times=99, at=len(tiny_weights) // 2)  # every attempt dies at the same byte
    cache = tmp_path / "c"
    with pytest.raises(DownloadError, match="failed"):
        robustzoo.load(f"hf-hub:{REPO}", endpoint=hub_server.endpoint, cache_dir=cache, progress=False)
    assert not [p for p in cache_files(cache) if "blobs" in p.parts or "snapshots" in p.parts]


# ---- registry names ------------------------------------------------------------------------

def test_registry_entry_on_the_hub_is_verified_against_its_sha256(hub_server, tiny_weights, tmp_path, monkeypatch):
    commit = hub_server.add_commit("robustzoo/fake-r18", {"model.safetensors": tiny_weights})
    fake_spec(monkeypatch, "fake-r18", repo_id="robustzoo/fake-r18", revision=commit, sha256=sha(tiny_weights))
    model = robustzoo.load("fake-r18", endpoint=hub_server.endpoint, progress=False)
    assert same_weights(model, reference(tiny_weights, tmp_path))
    assert robustzoo.verify(["fake-r18"]) == [("fake-r18", Path(model.pretrained_meta["path"]), True, "ok")]

    fake_spec(monkeypatch, "fake-bad", repo_id="robustzoo/fake-r18", revision=commit, sha256="0" * 64)
    cache = tmp_path / "other"
    with pytest.raises(ChecksumError, match="expected 0000"):
        robustzoo.load("fake-bad", endpoint=hub_server.endpoint, cache_dir=cache, progress=False)
    assert cache_files(cache) == []


def test_num_classes_swaps_the_head(hub_server, tiny_weights):
    hub_server.add_commit(REPO, {"model.safetensors": tiny_weights})
    model = robustzoo.load(f"hf-hub:{REPO}", num_classes=3, endpoint=hub_server.endpoint, progress=False)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 3)


def test_unpublished_name_says_how_to_reproduce():
    with pytest.raises(NotPublishedError, match=r"python training/reproduce.py rot-adv-r18.*local"):
        robustzoo.load("rot-adv-r18")


def test_unknown_name_suggests():
    with pytest.raises(UnknownModelError, match="rot-adv-r18"):
        robustzoo.load("rot-adv-r81")


def test_pretrained_false_builds_the_architecture_without_any_file():
    model = robustzoo.load("rot-adv-aft-r18", pretrained=False)
    assert model.arch == "resnet18" and model.num_classes == 10
    ensemble = robustzoo.load("ens3-aft-r18", pretrained=False, num_classes=4)
    assert ensemble(torch.rand(1, 3, 32, 32)).shape == (1, 4)
    with pytest.raises(ValueError, match="registry name"):
        robustzoo.load("hf-hub:org/x", pretrained=False)


def test_embedded_entry_loads_with_the_network_blocked(tiny_weights, tmp_path, monkeypatch):
    (tmp_path / "fake-fmnist.safetensors").write_bytes(tiny_weights)
    monkeypatch.setattr(hub, "ZOO_DIR", tmp_path)
    fake_spec(monkeypatch, "fake-fmnist", embedded=True, sha256=sha(tiny_weights))
    monkeypatch.setenv("ROBUSTZOO_OFFLINE", "1")
    monkeypatch.setenv("ROBUSTZOO_ENDPOINT", "http://127.0.0.1:9")  # closed port: any request would fail
    model = robustzoo.load("fake-fmnist")
    assert same_weights(model, reference(tiny_weights, tmp_path))
    assert robustzoo.verify() [-1:] == [("fake-fmnist", tmp_path / "fake-fmnist.safetensors", True, "ok")]
    (tmp_path / "fake-fmnist.safetensors").write_bytes(tiny_weights[:-1] + b"\0")
    with pytest.raises(ChecksumError, match="reinstall"):
        robustzoo.load("fake-fmnist")


# ---- offline, endpoint, server down --------------------------------------------------------

@pytest.mark.parametrize("switch", ["arg", "ROBUSTZOO_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_hit_and_miss(hub_server, tiny_weights, monkeypatch, switch):
    hub_server.add_commit(REPO, {"model.safetensors": tiny_weights})
    robustzoo.download(f"hf-hub:{REPO}", endpoint=hub_server.endpoint, progress=False)
    hub_server.clear()
    kw = {"offline": True} if switch == "arg" else {}
    if switch != "arg":
        monkeypatch.setenv(switch, "1")  # set after import: read at call time
    assert robustzoo.load(f"hf-hub:{REPO}", endpoint=hub_server.endpoint, progress=False, **kw) is not None
    with pytest.raises(OfflineError) as err:
        robustzoo.load("hf-hub:org/never", endpoint=hub_server.endpoint, progress=False, **kw)
    assert "robustzoo download hf-hub:org/never" in str(err.value) and "revision main" in str(err.value)
    with pytest.raises(OfflineError, match="needs the network"):
        robustzoo.load(f"hf-hub:{REPO}", endpoint=hub_server.endpoint, force_download=True, **kw)
    assert hub_server.log == []  # offline never touched the network


def test_endpoint_is_resolved_at_call_time_in_order(tiny_weights, monkeypatch, tmp_path):
    from hubserver import HubServer

    with HubServer() as a, HubServer() as b, HubServer() as c:
        for s in (a, b, c):
            s.add_commit(REPO, {"model.safetensors": tiny_weights})
        monkeypatch.setenv("HF_ENDPOINT", a.endpoint)
        robustzoo.download(f"hf-hub:{REPO}", cache_dir=tmp_path / "c1", progress=False)
        monkeypatch.setenv("ROBUSTZOO_ENDPOINT", b.endpoint + "/")
        robustzoo.download(f"hf-hub:{REPO}", cache_dir=tmp_path / "c2", progress=False)
        robustzoo.download(f"hf-hub:{REPO}", endpoint=c.endpoint, cache_dir=tmp_path / "c3", progress=False)
        assert [s.count("GET") for s in (a, b, c)] == [1, 1, 1]
    assert hub.resolve_endpoint() == b.endpoint


def test_server_down_is_a_download_error(tmp_path, no_sleep):
    with pytest.raises(DownloadError, match="cannot download model.safetensors from org/tiny"):
        robustzoo.load(f"hf-hub:{REPO}", endpoint="http://127.0.0.1:9", progress=False)
    assert 1 <= len(no_sleep) <= 10  # bounded retries with backoff


def _child_download(endpoint: str, cache: str, queue) -> None:
    path = robustzoo.download(f"hf-hub:{REPO}", endpoint=endpoint, cache_dir=cache, progress=False)
    queue.put(hashlib.sha256(Path(path).read_bytes()).hexdigest())


def test_four_processes_download_once(hub_server, tiny_weights, tmp_path):
    hub_server.add_commit(REPO, {"model.safetensors": tiny_weights})
    hub_server.inject("stall", seconds=0.5, at=1000)  # keep the first GET open while the others queue
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_child_download, args=(hub_server.endpoint, str(tmp_path / "c"), queue))
             for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * 4
    assert {queue.get(timeout=5) for _ in procs} == {sha(tiny_weights)}
    assert hub_server.count("GET") == 1


# ---- local files and URLs ------------------------------------------------------------------

def test_local_file_folder_and_file_url(tiny_weights, tmp_path):
    folder = tmp_path / "w"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(tiny_weights)
    ref = reference(tiny_weights, tmp_path)
    for source in (folder, folder / "model.safetensors", str(folder / "model.safetensors"),
                   f"file://{folder / 'model.safetensors'}"):
        assert same_weights(robustzoo.load(source), ref)
    assert same_weights(robustzoo.load(folder, sha256=sha(tiny_weights)), ref)
    with pytest.raises(ChecksumError):
        robustzoo.load(folder, sha256="1" * 64)
    with pytest.raises(UnknownModelError, match="no weight file"):
        robustzoo.load(tmp_path / "nope.safetensors")
    (tmp_path / "page.safetensors").write_bytes(b"<!DOCTYPE html><html>quota exceeded</html>")
    with pytest.raises(WeightFormatError, match="HTML"):
        robustzoo.load(tmp_path / "page.safetensors")


def test_url_download_resumes_after_a_drop(hub_server, tiny_weights, tmp_path):
    url = hub_server.add_url("/files/tiny.safetensors", tiny_weights)
    hub_server.inject("drop", at=len(tiny_weights) * 3 // 4)
    model = robustzoo.load(url, sha256=sha(tiny_weights), progress=False)
    assert same_weights(model, reference(tiny_weights, tmp_path))
    gets = [r for m, p, r in hub_server.ranges if m == "GET"]
    assert len(gets) == 2 and gets[0] is None  # the second request resumed what the first had received
    assert gets[1].startswith("bytes=") and 0 < int(gets[1][6:-1]) <= len(tiny_weights) * 3 // 4
    hub_server.clear()
    robustzoo.load(url, sha256=sha(tiny_weights), progress=False)  # cached: no request, re-hashed
    assert hub_server.log == []


def test_url_without_sha256_still_detects_a_changed_cached_file(hub_server, tiny_weights, tmp_path):
    url = hub_server.add_url("/files/tiny.safetensors", tiny_weights)
    path = robustzoo.download(url, progress=False)
    path.write_bytes(tiny_weights[:-1] + bytes([tiny_weights[-1] ^ 1]))
    with pytest.raises(ChecksumError, match="modified in the cache"):
        robustzoo.load(url, progress=False)
    assert same_weights(robustzoo.load(url, progress=False), reference(tiny_weights, tmp_path))


def test_url_checksum_mismatch_keeps_nothing(hub_server, tiny_weights, tmp_path):
    url = hub_server.add_url("/files/tiny.safetensors", tiny_weights)
    with pytest.raises(ChecksumError, match="nothing was cached"):
        robustzoo.load(url, sha256="2" * 64, progress=False)
    left = [p for p in (tmp_path / "robustzoo_cache").rglob("*") if p.is_file() and not p.name.endswith(".lock")]
    assert left == []


def test_url_http_error_and_offline(hub_server):
    with pytest.raises(DownloadError, match="HTTP 404"):
        robustzoo.load(hub_server.endpoint + "/files/missing.safetensors", progress=False)
    with pytest.raises(OfflineError, match="robustzoo download"):
        robustzoo.load(hub_server.endpoint + "/files/x.safetensors", offline=True)


def test_import_robustzoo_does_not_import_huggingface_hub():
    code = "import sys, robustzoo.hub; print(*(m in sys.modules for m in ('huggingface_hub', 'requests', 'torch')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(robustzoo.__file__).parent.parent)})
    assert out.stdout.split() == ["False", "False", "False"]


def test_weightspec_fields_used_by_the_loader_exist():
    fields = {f.name for f in dataclasses.fields(registry.WeightSpec)}
    assert {"repo_id", "filename", "revision", "sha256", "embedded", "reproduce", "parents"} <= fields
