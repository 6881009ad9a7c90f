"""MODEL_CARD.md lists every registry entry exactly as the registry says."""

from pathlib import Path

from robustzoo.card import END, START, render_registry_table
from robustzoo.registry import REGISTRY

CARD = Path(__file__).resolve().parents[1] / "MODEL_CARD.md"


def test_model_card_table_matches_registry():
    text = CARD.read_text()
    table = text.split(START, 1)[1].split(END, 1)[0].strip()
    assert table == render_registry_table(), "run: python -m robustzoo.card --write MODEL_CARD.md"


def test_every_registry_name_has_a_row():
    text = CARD.read_text()
    for name in REGISTRY:
        assert f"| `{name}` |" in text
