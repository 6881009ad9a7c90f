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


def test_aa_fast_merge_records_its_own_keys_with_a_wilson_interval(tmp_path, monkeypatch):
    out, zoo = tmp_path / "aa-fast", tmp_path / "zoo_metrics.json"
    (out / "m").mkdir(parents=True)
    zoo.write_text(json.dumps({"m": {"sha256": "a" * 64, "metrics": {"clean": 70.0, "autoattack": 54.0}}}))
    monkeypatch.setattr(aa_chunks, "OUT_FAST", out)
    monkeypatch.setattr(aa_chunks, "METRICS_JSON", zoo)
    for s, robust in ((0, 50), (100, 60)):
        rec = {"sha256": "a" * 64, "start": s, "end": s + 100, "n": 100, "robust": robust, "clean": 80,
               "passes": 1000, "seconds": 10.0, "date": "2026-12-02"}
        (out / "m" / f"{s:05d}-{s + 100:05d}.json").write_text(json.dumps(rec))
    got = aa_chunks.merge_fast("m", "a" * 64)
    assert got["aa_fast"] == 55.0 and got["aa_fast_n"] == 200 and got["aa_fast_passes"] == 2000
    lo, hi = got["aa_fast_ci95"]
    assert 48.0 < lo < 55.0 < hi < 62.0  # Wilson 95 % for 110/200: 48.07 to 61.76
    recorded = json.loads(zoo.read_text())["m"]["metrics"]
    assert recorded["aa_fast_robust"] == 110 and recorded["autoattack"] == 54.0  # never in the AutoAttack fields
    assert aa_chunks.wilson(0, 10)[0] == 0.0 and aa_chunks.wilson(10, 10)[1] == 100.0


def test_fast_eval_agreement_table_and_paired_interval():
    import torch
    from fast_eval import agreement

    aa = torch.tensor([1, 1, 0, 0, 1, 0, 1, 0] * 25, dtype=torch.bool)
    fast = aa.clone()
    fast[2] = True  # broken only by AutoAttack
    got = agreement(aa, fast)
    assert (got["robust_both"], got["broken_both"], got["broken_only_by_aa"], got["broken_only_by_aa_fast"]) \
        == (100, 99, 1, 0)
    assert got["diff_points"] == 0.5 and got["diff_ci95"][0] < 0.5 < got["diff_ci95"][1]
    assert got["broken_only_by_aa_pct"] == 0.5
