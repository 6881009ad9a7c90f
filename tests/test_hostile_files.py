"""Hostile and broken weight files: every one is refused with the project's own error, nothing runs.

Covers the converter (``torch.load(weights_only=True)``) and the safetensors loader
(``robustzoo.weights.read_metadata`` / ``load_file`` and, once it exists, ``robustzoo.load``).
Cases the loader once missed (raw exceptions from hostile JSON, unchecked offsets, configs built
before they were checked) are regular tests now: they fail again if the fix regresses.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import struct

import pytest
import torch
from safetensors.torch import load_file as st_load
from safetensors.torch import save_file

from robustzoo.converter import convert
from robustzoo.errors import ConversionError, WeightFormatError
from robustzoo.models import resnet18
from robustzoo.weights import WEIGHTS_NAME, load_file, read_metadata, save_pretrained

torch.set_num_threads(1)
HAS_HUB = importlib.util.find_spec("robustzoo.hub") is not None


class Payload:
    """Unpickling this creates ``marker`` (``builtins.open(marker, "w")``): proof that code ran."""

    def __init__(self, marker: str, shell: bool = False) -> None:
        self.marker, self.shell = marker, shell

    def __reduce__(self):
        if self.shell:
            return (os.system, (f"touch '{self.marker}'",))
        return (open, (self.marker, "w"))


def loaders():
    out = [read_metadata, load_file]
    if HAS_HUB:  # the public entry point must refuse the same files
        import robustzoo

        out.append(robustzoo.load)
    return out


LOADERS = pytest.mark.parametrize("loader", loaders(), ids=lambda f: f.__module__.split(".")[-1] + "." + f.__name__)


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A valid robustzoo file: (path, tensors, metadata)."""
    torch.manual_seed(0)
    path = save_pretrained(resnet18(width=0.0625, num_classes=3), tmp_path_factory.mktemp("good"), name="good")
    return path, st_load(str(path)), read_metadata(path)[0]


def raw_file(path, header, body=b"", length=None):
    """Write a safetensors-like file with an arbitrary header (dict or raw bytes) and length prefix."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + body)
    return path


def refused(loader, path, match=None):
    with pytest.raises(WeightFormatError, match=match) as info:
        loader(path)
    return str(info.value)


# ----------------------------------------------------------------------------- code-execution payloads
def test_the_payload_is_real(tmp_path):
    """Control: plain pickle does run it, so the 'never ran' assertions below can fail."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(Payload(str(marker))))
    assert marker.exists()


@pytest.mark.parametrize("shell", [False, True], ids=["open", "os.system"])
@pytest.mark.parametrize("layout", ["zip", "legacy", "raw-pickle"])
def test_converter_refuses_pickled_code(tmp_path, shell, layout):
    marker = tmp_path / "PWNED"
    evil = {"epoch": 1, "state_dict": {"1.conv1.weight": Payload(str(marker), shell)}}
    src = tmp_path / "model_best.pth.tar"
    if layout == "raw-pickle":
        src.write_bytes(pickle.dumps(evil, protocol=2))
    else:
        torch.save(evil, src, _use_new_zipfile_serialization=layout == "zip")
    with pytest.raises(ConversionError, match="refused|restricted"):
        convert("finetune", [src], tmp_path / "out")
    assert not marker.exists(), "the pickled payload ran"
    assert not (tmp_path / "out").exists()


@LOADERS
@pytest.mark.parametrize("layout", ["zip", "raw-pickle"])
def test_pickle_named_safetensors_is_refused(tmp_path, loader, layout):
    marker = tmp_path / "PWNED"
    path = tmp_path / WEIGHTS_NAME
    if layout == "zip":
        torch.save({"w": Payload(str(marker))}, path)
    else:
        path.write_bytes(pickle.dumps({"w": Payload(str(marker), shell=True)}, protocol=2))
    msg = refused(loader, path, match="pickle")
    assert "convert" in msg  # tells the user what to do
    assert not marker.exists()


# ----------------------------------------------------------------------------- not safetensors at all
@LOADERS
@pytest.mark.parametrize("content,needle", [
    (b"<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head><body>" * 20, "HTML"),
    (b"\n  <html lang='en'><body>Sign in</body></html>", "HTML"),
    (b"", "empty"),
    (b"\x1f\x8b\x08\x00" + os.urandom(200), "gzip"),
    (b'{"error": "not found"}' + b" " * 100, "JSON"),
    (os.urandom(3), "too short"),
], ids=["html", "html-indented", "empty", "gzip", "json", "three-bytes"])
def test_other_files_say_what_they_are(tmp_path, loader, content, needle):
    path = tmp_path / WEIGHTS_NAME
    path.write_bytes(content)
    refused(loader, path, match=needle)


@LOADERS
@pytest.mark.parametrize("fraction", [0.0005, 0.01, 0.5, 0.999])
def test_truncated_files(tmp_path, good, loader, fraction):
    data = good[0].read_bytes()
    path = tmp_path / WEIGHTS_NAME
    path.write_bytes(data[: max(9, int(len(data) * fraction))])
    refused(loader, path, match="truncated")


@LOADERS
@pytest.mark.parametrize("cut", [1, 4, 7])
def test_cut_inside_the_length_prefix(tmp_path, good, loader, cut):
    path = tmp_path / WEIGHTS_NAME
    path.write_bytes(good[0].read_bytes()[:cut])
    refused(loader, path, match="too short")


# ----------------------------------------------------------------------------- malformed headers
ENTRY = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@LOADERS
@pytest.mark.parametrize("header,length,needle", [
    (b"{not json", None, "not JSON"),
    (b"\xff\xfe\x00garbage", None, "not JSON"),
    (b"[1, 2, 3]", None, "JSON object"),
    (b'"a string"', None, "JSON object"),
    ({"w": ENTRY}, 10**6, "truncated"),
    ({"w": ENTRY}, 2**40, "header length"),
    ({"w": ENTRY}, 2**64 - 1, "header length"),
    ({"w": {"dtype": "F32", "shape": [2]}}, None, "malformed entry"),
    ({"w": dict(ENTRY, extra=1)}, None, "malformed entry"),
    ({"w": "F32"}, None, "malformed entry"),
    ({"w": dict(ENTRY, dtype="F8_E9")}, None, "unsupported dtype"),
    ({"w": dict(ENTRY, shape=[-2])}, None, "invalid shape"),
    ({"w": dict(ENTRY, shape="2")}, None, "invalid shape"),
    ({"w": dict(ENTRY, data_offsets=[0])}, None, "invalid data_offsets"),
    ({"w": dict(ENTRY, data_offsets=[0, "8"])}, None, "invalid data_offsets"),
    ({"w": dict(ENTRY, shape=[250_000_000], data_offsets=[0, 10**9])}, None, "truncated"),
    ({"__metadata__": {"format": 1}, "w": ENTRY}, None, "strings"),
    ({"__metadata__": ["format"], "w": ENTRY}, None, "strings"),
], ids=["bad-json", "bad-utf8", "json-list", "json-string", "length-beyond-file", "oversized-2**40",
        "oversized-max", "missing-field", "extra-field", "entry-not-object", "unknown-dtype", "negative-dim",
        "shape-not-list", "short-offsets", "offset-not-int", "offsets-beyond-file", "metadata-not-str",
        "metadata-not-object"])
def test_malformed_headers(tmp_path, loader, header, length, needle):
    path = raw_file(tmp_path / WEIGHTS_NAME, header, b"\0" * 8, length)
    refused(loader, path, match=needle)


@pytest.mark.parametrize("offsets", [[[-8, 0], [0, 8]], [[0, 8], [4, 12]], [[8, 0], [0, 8]], [[0, 4], [4, 12]]],
                         ids=["negative", "overlapping", "reversed", "size-mismatch"])
def test_inconsistent_offsets_never_load(tmp_path, good, offsets):
    header = {"__metadata__": good[2], "a": dict(ENTRY, data_offsets=offsets[0]),
              "b": dict(ENTRY, data_offsets=offsets[1])}
    refused(load_file, raw_file(tmp_path / WEIGHTS_NAME, header, b"\0" * 16))


@pytest.mark.parametrize("offsets", [[[-8, 0], [0, 8]], [[0, 8], [4, 12]], [[0, 4], [4, 12]]],
                         ids=["negative", "overlapping", "size-mismatch"])
def test_read_metadata_checks_offsets(tmp_path, offsets):
    header = {"a": dict(ENTRY, data_offsets=offsets[0]), "b": dict(ENTRY, data_offsets=offsets[1])}
    refused(read_metadata, raw_file(tmp_path / WEIGHTS_NAME, header, b"\0" * 16))


@LOADERS
@pytest.mark.parametrize("header", [
    {"w": dict(ENTRY, dtype=["F32"])},
    b"[" * 100_000,
    b'{"w": ' + b"1" * 5000 + b"}",
], ids=["unhashable-dtype", "deep-nesting", "5000-digit-int"])
def test_header_parser_edge_cases(tmp_path, loader, header):
    refused(loader, raw_file(tmp_path / WEIGHTS_NAME, header, b"\0" * 8))


# ----------------------------------------------------------------------------- well-formed but wrong
def rewritten(tmp_path, good, tensors=None, meta=None, drop_meta=False):
    """A consistent safetensors file built from the good one with some tensors/metadata changed."""
    t = dict(good[1])
    t.update(tensors or {})
    t = {k: v for k, v in t.items() if v is not None}
    m = None if drop_meta else {k: v for k, v in {**good[2], **(meta or {})}.items() if v is not None}
    path = tmp_path / WEIGHTS_NAME
    save_file(t, str(path), metadata=m)
    return path


def cfg(good, **change):
    return json.dumps({**json.loads(good[2]["config"]), **change})


@pytest.mark.parametrize("case,needle", [
    (dict(tensors={"conv1.weight": torch.zeros(4, 27)}), "conv1.weight: shape"),
    (dict(tensors={"linear.weight": torch.zeros(4, 32)}), "linear.weight: shape"),
    (dict(tensors={"bn1.weight": torch.ones(4, dtype=torch.int32)}), "bn1.weight: dtype"),
    (dict(tensors={"bn1.num_batches_tracked": torch.zeros((), dtype=torch.float32)}), "num_batches_tracked: dtype"),
    (dict(tensors={"layer1.0.conv1.weight": None}), "missing keys layer1.0.conv1.weight"),
    (dict(tensors={"extra.weight": torch.zeros(1)}), "unexpected keys extra.weight"),
    (dict(drop_meta=True), "not a robustzoo one"),
    (dict(meta={"format": "timm"}), "not a robustzoo one"),
    (dict(meta={"config": None}), "not a robustzoo one"),
    (dict(meta={"format_version": "2"}), "format version"),
    (dict(meta={"config": "{arch: resnet18"}), "not valid JSON"),
    (dict(meta={"config": "[1, 2]"}), "no 'arch'"),
    (dict(meta={"config": '{"arch": 5}'}), "no 'arch'"),
    (dict(meta={"config": '{"arch": "resnet152"}'}), "cannot build"),
    (dict(meta={"config": '{"arch": "ensemble", "members": "ab"}'}), "cannot build"),
    (dict(meta={"config": '{"arch": "resnet18", "rm": "-rf"}'}), "cannot build"),
    ("num_classes", "cannot build|does not match"),
    ("mean", "cannot build"),
    ("width", "does not match"),
], ids=["shape", "head-shape", "int-for-float", "float-for-int", "missing-tensor", "extra-tensor", "no-metadata",
        "foreign-format", "no-config", "future-version", "config-not-json", "config-not-object", "arch-not-str",
        "unknown-arch", "bad-members", "unknown-argument", "negative-classes", "string-mean", "other-width"])
def test_well_formed_but_wrong_files(tmp_path, good, case, needle):
    if isinstance(case, str):
        change = {"num_classes": {"num_classes": -3}, "mean": {"mean": ["a", "b", "c"]}, "width": {"width": 0.125}}
        case = dict(meta={"config": cfg(good, **change[case])})
    path = rewritten(tmp_path, good, **case)
    for loader in loaders()[1:]:
        refused(loader, path, match=needle)


@pytest.mark.parametrize("width", [float("inf"), 1e12], ids=["inf", "1e12"])
def test_config_cannot_make_the_loader_allocate(tmp_path, good, width):
    refused(load_file, rewritten(tmp_path, good, meta={"config": cfg(good, width=width)}))


def test_non_string_metadata_and_deep_ensembles(tmp_path, good):
    meta = dict(good[2], num_classes=3)  # an int where a str must be: safetensors itself would refuse to write it
    header = json.loads(good[0].read_bytes()[8:8 + struct.unpack("<Q", good[0].read_bytes()[:8])[0]])
    header["__metadata__"] = meta
    body = good[0].read_bytes()[8 + struct.unpack("<Q", good[0].read_bytes()[:8])[0]:]
    refused(load_file, raw_file(tmp_path / WEIGHTS_NAME, header, body), match="strings")
    nested = {"arch": "resnet18"}
    for _ in range(200):
        nested = {"arch": "ensemble", "members": [nested]}
    refused(load_file, rewritten(tmp_path, good, meta={"config": json.dumps(nested)}))


def test_the_good_file_still_loads(good):
    """Control for the cases above: the unmodified file loads and matches its tensors."""
    model = load_file(good[0])
    assert all(torch.equal(v, good[1][k]) for k, v in model.state_dict().items())
