"""benchmarks/aa_chunks.py: only the contiguous chunks of the same weight file add up."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import aa_chunks  # noqa: E402


def _chunk(folder: Path, start: int, end: int, robust: int, clean: int, sha: str = "a" * 64) -> None:
    rec = {"sha256": sha, "start": start, "end": end, "n": end - start, "robust": robust, "clean": clean,
           "date": "2026-11-28"}
    (folder / f"{start:05d}-{end:05d}.json").write_text(json.dumps(rec))


def test_merge_sums_the_contiguous_prefix_of_the_same_file(tmp_path, monkeypatch):
    out, zoo = tmp_path / "aa", tmp_path / "zoo_metrics.json"
    (out / "m").mkdir(parents=True)
    zoo.write_text(json.dumps({"m": {"sha256": "a" * 64, "metrics": {"clean": 70.0, "n": 10000}}}))
    monkeypatch.setattr(aa_chunks, "OUT", out)
    monkeypatch.setattr(aa_chunks, "METRICS_JSON", zoo)
    _chunk(out / "m", 0, 100, robust=50, clean=70)
    _chunk(out / "m", 100, 200, robust=60, clean=80)
    _chunk(out / "m", 300, 400, robust=99, clean=99)  # after a gap: not part of "the first n"
    _chunk(out / "m", 200, 300, robust=0, clean=0, sha="b" * 64)  # another weight file: ignored
    got = aa_chunks.merge("m", "a" * 64)
    assert got["autoattack"] == 55.0 and got["autoattack_n"] == 200 and got["clean_on_autoattack_subset"] == 75.0
    assert json.loads(zoo.read_text())["m"]["metrics"] == {"clean": 70.0, "n": 10000, **got}
    with pytest.raises(SystemExit, match="no chunk starting at image 0"):
        aa_chunks.merge("m", "c" * 64)
