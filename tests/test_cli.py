"""CLI: readable tables, clear one-line errors (exit 2), no tracebacks."""

import json
import subprocess
import sys

import pytest

from robustzoo.cli import main
from robustzoo.registry import REGISTRY


def test_list_prints_the_full_registry(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in REGISTRY:
        assert name in out
    assert f"{len(REGISTRY)} of {len(REGISTRY)} models" in out


def test_list_filters(capsys):
    assert main(["list", "rot-*", "--arch", "r50"]) == 0
    out = capsys.readouterr().out
    assert "rot-adv-r50" in out and "rot-adv-r18 " not in out and "jig-" not in out


def test_info_is_json(capsys):
    assert main(["info", "ens3-aft-r50"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["paper_metrics"]["pgd20"] == 54.64 and record["published"] is False


def test_unknown_name_is_one_line_with_suggestions(capsys):
    assert main(["info", "rot-adv-r81"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown model") and "rot-adv-r18" in err and "Traceback" not in err


@pytest.mark.parametrize("argv", [["nonsense"], ["eval", "rot-adv-r18"], ["convert", "--format", "pickle", "x",
                                                                         "--out", "y"]])
def test_bad_arguments_exit_2(argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2


def test_bad_eps_is_explained(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "rot-adv-r18", "--data", "cifar10", "--eps", "eight"])
    assert "not a number: 'eight'" in capsys.readouterr().err


def test_console_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "robustzoo", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("robustzoo ")


def test_convert_refuses_a_non_checkpoint_cleanly(tmp_path, capsys):
    src = tmp_path / "best_model.pt"
    src.write_text("<html><body>Google Drive - virus scan warning</body></html>")
    assert main(["convert", "--format", "finetune", str(src), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_download_unpublished_name_says_how_to_reproduce(capsys):
    assert main(["download", "rot-adv-r50"]) == 2
    assert "training/reproduce.py rot-adv-r50" in capsys.readouterr().err
