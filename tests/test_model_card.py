"""MODEL_CARD.md lists every registry entry exactly as the registry says."""

from pathlib import Path

from robustzoo.card import END, START, format_metrics, render_model_card, render_registry_table
from robustzoo.registry import REGISTRY, model_info

CARD = Path(__file__).resolve().parents[1] / "MODEL_CARD.md"


def test_model_card_table_matches_registry():
    text = CARD.read_text()
    table = text.split(START, 1)[1].split(END, 1)[0].strip()
    assert table == render_registry_table(), "run: python -m robustzoo.card --write MODEL_CARD.md"


def test_model_card_is_generated_from_the_registry_and_the_benchmark_report():
    text = CARD.read_text()
    report = (CARD.parent / "benchmarks" / "mini_repro.md").read_text()
    assert render_model_card(text, mini_repro=report) == text, "run: python -m robustzoo.card --write MODEL_CARD.md"


def test_every_registry_name_has_a_row():
    text = CARD.read_text()
    for name in REGISTRY:
        assert f"| `{name}` |" in text


def test_format_metrics_names_every_subset():
    cls = {"clean": 70.68, "n": 10000, "pgd20": 57.1, "pgd20_n": 10000, "autoattack": 54.5, "autoattack_n": 200,
           "date": "2026-11-27"}
    assert format_metrics(cls) == "clean 70.68, PGD-20 57.10, AutoAttack 54.50 [47.6, 61.3] (first 200)"  # 109/200
    fast = {**cls, "aa_fast": 56.43, "aa_fast_n": 3700}  # aa-fast keeps its own name, with its interval
    assert format_metrics(fast).endswith("AutoAttack 54.50 [47.6, 61.3] (first 200), aa-fast 56.43 [54.8, 58.0] "
                                         "(first 3700)")
    assert format_metrics({**cls, "pgd20_n": 2000}).startswith("clean 70.68, PGD-20 57.10 (first 2000), ")
    bb = {"linear_probe_clean": 81.7, "linear_probe_pgd20": 0.5, "n": 10000, "pgd20_n": 10000,
          "pretext_clean_rotation": 89.63, "pretext_score": 89.63}
    assert format_metrics(bb) == "linear probe clean 81.70, PGD-20 0.50; pretext clean rotation 89.63"
    # a mini-reproduction backbone: pretext accuracy (no stray separator) and the fine-tuning gain over scratch
    rep = {"diff_mean": 7.126, "ci_low": 6.2, "ci_high": 8.061, "n_pairs": 8, "partial": False}
    w8 = {"pretext_clean_rotation": 98.2, "repro_vs_scratch": rep}
    assert format_metrics(w8) == ("pretext clean rotation 98.20; fine-tuned from it minus scratch +7.13 [+6.20, +8.06] "
                                  "PGD-20 points (8 paired seeds)")
    assert format_metrics({"repro_vs_scratch": {**rep, "ci_low": None}}) == "-"
    assert format_metrics(model_info("ens3-aft-r50").paper_metrics) == (
        "clean 86.04, PGD-20 54.64, AA (RobustBench) 51.56")
    assert format_metrics({}) == "-" and format_metrics({"clean": True, "source": "x"}) == "-"
