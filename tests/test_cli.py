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


@pytest.fixture
def tiny_fmnist_model(tmp_path):
    import torch

    from robustzoo.models import create_model
    from robustzoo.weights import save_pretrained

    torch.manual_seed(0)
    model = create_model("resnet18", width=0.0625, in_chans=1, num_classes=10,
                         mean=(0.286,), std=(0.353,))
    save_pretrained(model, tmp_path / "m", name="tiny")
    return str(tmp_path / "m")


def test_eval_runs_on_embedded_data(tiny_fmnist_model, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["eval", tiny_fmnist_model, "--data", "fmnist-mini", "--n", "48", "--eps", "0.1",
                 "--attacks", "clean,pgd2", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "clean" in text and "pgd2" in text and "n=48" in text
    result = json.loads(out.read_text())
    assert result["accuracy"]["pgd2"] <= result["accuracy"]["clean"]


def test_finetune_runs_and_writes_a_loadable_model(tiny_fmnist_model, tmp_path, capsys):
    out = tmp_path / "ft"
    assert main(["finetune", tiny_fmnist_model, "--data", "fmnist-mini", "--n", "96", "--mode", "adv-full",
                 "--epochs", "1", "--batch-size", "32", "--eps", "0.1", "--steps", "1", "--eval-steps", "1",
                 "--no-flip", "--out", str(out)]) == 0
    assert "best epoch 1" in capsys.readouterr().out
    from robustzoo.weights import load_file

    assert load_file(out).num_classes == 10


def test_eval_unknown_data_name_is_one_line(tiny_fmnist_model, capsys):
    assert main(["eval", tiny_fmnist_model, "--data", "fasion-mnist"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "fashion-mnist" in err


def test_finetune_unknown_mode_is_one_line(tiny_fmnist_model, capsys):
    assert main(["finetune", tiny_fmnist_model, "--data", "fmnist-mini", "--n", "64", "--mode", "adv-ful"]) == 2
    assert "adv-full" in capsys.readouterr().err
