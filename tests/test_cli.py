"""CLI: readable tables, clear one-line errors (exit 2), no tracebacks."""

import argparse
import json
import subprocess
import sys

import pytest
import torch

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


@pytest.mark.parametrize("argv", [["nonsense"], ["eval"], ["convert", "--format", "pickle", "x",
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


def test_eval_of_a_file_with_no_record_needs_data_and_says_its_eps_default(tiny_fmnist_model, capsys):
    assert main(["eval", tiny_fmnist_model, "--n", "16", "--attacks", "clean"]) == 2
    assert "records no data set" in capsys.readouterr().err
    assert main(["eval", tiny_fmnist_model, "--data", "fmnist-mini", "--n", "16", "--attacks", "clean"]) == 0
    assert "eps=0.03137 (eps from the default for a model with no record)" in capsys.readouterr().out


@pytest.mark.parametrize("meta, expected", [
    ({"finetune": json.dumps({"eps": 0.1}), "dataset": "fmnist-mini"}, {"eps": 0.1, "dataset": "fmnist-mini"}),
    ({"finetune": json.dumps({"eps": 8 / 255})}, {"eps": 8 / 255}),  # finetune(checkpoint_dir=...)'s best/
    ({"finetune": "{not json", "dataset": "fmnist-mini"}, {"dataset": "fmnist-mini"}),
    ({"finetune": json.dumps({"eps": 8})}, {}),  # not a pixel-unit budget: ignored, not trusted
    ({"finetune": json.dumps([0.1])}, {}),
    ({"finetune": "[" * 100000 + "]" * 100000}, {}),  # RecursionError in json: not a record, not a crash
    ({"dataset": "FMNIST"}, {"dataset": "fashion-mnist"}),
    ({"dataset": "/data/my-train-images"}, {}),  # a folder path is never a recorded data set
    ({}, {}),
])
def test_finetune_record_reads_only_well_formed_fields(meta, expected):
    from robustzoo.weights import finetune_record

    assert finetune_record(argparse.Namespace(pretrained_meta=meta)) == expected


def test_eval_of_a_retired_or_mistyped_name_says_so_not_pass_data(capsys):
    from robustzoo.registry import RETIRED

    old = next(iter(RETIRED))
    assert main(["eval", old, "--n", "16"]) == 2
    assert RETIRED[old]["successor"] in capsys.readouterr().err
    assert main(["eval", "rot-adv-r18-w8-fmnistt", "--n", "16"]) == 2
    assert "rot-adv-r18-w8-fmnist" in capsys.readouterr().err  # the close match
    assert main(["eval", "runs/nope", "--n", "16"]) == 2  # a mistyped folder: not "pass --data"
    assert "no weight file or folder at 'runs/nope'" in capsys.readouterr().err


def test_a_folder_trained_on_an_image_folder_records_no_data_set(tmp_path, capsys):
    """An ImageFolder path is training data on this machine and nothing elsewhere: eval must ask for --data."""
    from torchvision.utils import save_image

    from robustzoo.fmnist import load_embedded

    x, y = load_embedded("train")
    for i in range(40):
        (tmp_path / "imgs" / str(int(y[i]))).mkdir(parents=True, exist_ok=True)
        save_image(x[i], tmp_path / "imgs" / str(int(y[i])) / f"{i}.png")
    out = tmp_path / "ft"
    assert main(["finetune", "rot-adv-r18-w8-fmnist", "--data", str(tmp_path / "imgs"), "--epochs", "1", "--steps",
                 "1", "--eval-steps", "1", "--batch-size", "8", "--num-classes", "10", "--no-progress",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--attacks", "clean", "--no-progress"]) == 2
    assert "records no data set" in capsys.readouterr().err


def test_colour_images_for_a_grey_model_are_one_line_before_any_batch(tmp_path, capsys):
    from torchvision.utils import save_image

    for i in range(4):
        (tmp_path / "imgs" / str(i % 2)).mkdir(parents=True, exist_ok=True)
        save_image(torch.rand(3, 28, 28), tmp_path / "imgs" / str(i % 2) / f"{i}.png")
    for cmd in (["finetune", "rot-adv-r18-w8-fmnist", "--out", str(tmp_path / "ft")],
                ["eval", "at-baseline-r18-w16-fmnist"]):
        assert main([*cmd, "--data", str(tmp_path / "imgs"), "--no-progress"]) == 2, cmd
        assert "has 3 channels but the model takes 1" in capsys.readouterr().err


def test_finetune_unknown_mode_is_one_line(tiny_fmnist_model, capsys):
    assert main(["finetune", tiny_fmnist_model, "--data", "fmnist-mini", "--n", "64", "--mode", "adv-ful"]) == 2
    assert "adv-full" in capsys.readouterr().err


# ---- the real entry point, in a subprocess, as a newcomer runs it (issue 12) ----

def rz(*argv: str, cwd=None, timeout: float = 120, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    """``robustzoo ARGV`` through the console entry point (``python -m robustzoo``), offline, one thread."""
    import os

    full = {**os.environ, "ROBUSTZOO_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "robustzoo", *argv], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env=full, **kw)


def one_line_error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in r.stderr, r.stderr
    return lines[0]


def test_list_fits_100_columns_with_wide_and_json():
    r = rz("list")
    assert r.returncode == 0 and max(len(line) for line in r.stdout.splitlines()) <= 100
    assert "clean / PGD-20 (%)" in r.stdout and "70.68 / 58.30" in r.stdout  # measured, printed as measured
    assert "paper 85.66 / 50.05" in r.stdout
    from robustzoo.cli import _headline

    for spec in REGISTRY.values():  # backbones: linear probe or the reproduction's aft-scratch interval, if any
        if spec.kind == "backbone" and spec.embedded and _headline(spec) != "-":
            assert f"{spec.name} " in r.stdout and _headline(spec) in r.stdout
    assert "paper" in rz("list", "--wide").stdout.splitlines()[0]
    records = json.loads(rz("list", "--json").stdout)
    assert {r["name"] for r in records} == set(REGISTRY)
    assert all(r["attack"]["eps"] > 0 and r["finetune_defaults"]["epochs"] > 0 for r in records)


def test_list_headline_stays_narrow_for_any_interval_the_reproduction_can_write():
    # CI once failed when the registry's intervals grew the column past 100 columns: bound it for all values
    from dataclasses import replace

    from robustzoo.cli import _headline

    spec = next(s for s in REGISTRY.values() if s.kind == "backbone")
    for mean, lo, hi in ((-99.94, -99.94, -99.94), (12.345, -3.0, 27.7), (0.0, -0.04, 0.04)):
        rep = {"diff_mean": mean, "ci_low": lo, "ci_high": hi}
        wide = replace(spec, metrics={"repro_vs_scratch": rep})
        assert len(_headline(wide)) <= len("clean / PGD-20 (%)  "), _headline(wide)
    assert _headline(replace(spec, metrics={"repro_vs_scratch": {"diff_mean": 6.98, "ci_low": 5.65,
                                                                  "ci_high": 8.32}})) == "+7.0 [+5.7,+8.3]"


def test_list_shows_autoattack_with_its_interval_and_subset_within_100_columns():
    from dataclasses import replace

    from robustzoo.card import wilson
    from robustzoo.cli import _autoattack

    out = rz("list").stdout
    measured = [s for s in REGISTRY.values() if isinstance(s.metrics.get("autoattack_n"), int)]
    assert measured and "AutoAttack (%)" in out.splitlines()[0]
    for spec in measured:  # the registry's figure, its Wilson interval from k of n, and n
        v, n = spec.metrics["autoattack"], spec.metrics["autoattack_n"]
        lo, hi = wilson(round(v * n / 100), n)
        assert f"{spec.name} " in out and f"{v:.1f} [{lo:.1f},{hi:.1f}]/{n}" in out
    spec = measured[0]
    for v, n in ((100.0, 10000), (0.0, 10000), (50.0, 500)):
        assert len(_autoattack(replace(spec, metrics={"autoattack": v, "autoattack_n": n}))) <= 25
    assert _autoattack(replace(spec, metrics={"clean": 80.0})) == "-"


def test_list_into_a_closed_pipe_exits_quietly():
    r = subprocess.run(f"{sys.executable} -m robustzoo list | head -1", shell=True, capture_output=True, text=True,
                       timeout=120)
    assert r.stdout.startswith("name") and "Traceback" not in r.stderr and "Error" not in r.stderr


def test_eval_of_a_headless_backbone_says_how_to_finetune_it_first():
    line = one_line_error(rz("eval", "rot-adv-r18-w8-fmnist", "--data", "fmnist-mini", "--n", "32"))
    assert "headless backbone" in line and "robustzoo finetune rot-adv-r18-w8-fmnist --data fmnist-mini" in line


def test_unpublished_weight_names_the_stand_in_the_command_and_the_project():
    line = one_line_error(rz("download", "rot-adv-r18"))
    for part in ("rot-adv-r18-w8-fmnist", "num_classes=10", "python training/reproduce.py rot-adv-r18", "H100",
                 "CPU", "https://"):
        assert part in line, part


def test_eps_above_one_needs_the_255_unit(tmp_path):
    line = one_line_error(rz("eval", "at-baseline-r18-w16-fmnist", "--data", "fmnist-mini", "--n", "16",
                             "--eps", "8"))
    assert "--eps 8/255" in line and "--eps-unit 255" in line
    r = rz("eval", "at-baseline-r18-w16-fmnist", "--data", "fmnist-mini", "--n", "16", "--eps", "8",
           "--eps-unit", "255", "--attacks", "clean", "--no-progress")
    assert r.returncode == 0 and "eps=0.03137" in r.stdout, r.stderr


def test_eval_checks_json_path_first_and_writes_a_self_describing_report(tmp_path):
    r = rz("eval", "at-baseline-r18-w16-fmnist", "--n", "4000", "--json", str(tmp_path / "missing" / "r.json"))
    assert "--json" in one_line_error(r)  # before loading 4,000 images or attacking anything
    out = tmp_path / "r.json"
    r = rz("eval", "at-baseline-r18-w16-fmnist", "--data", "fmnist-mini", "--n", "40", "--attacks", "clean,pgd2",
           "--json", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr
    report = json.loads(out.read_text())
    assert report["model"] == "at-baseline-r18-w16-fmnist" and report["dataset"] == "fmnist-mini"
    assert report["n"] == 40 and report["attack"]["eps"] == 0.1  # the record's threat model, not CIFAR's 8/255
    assert report["robustzoo"] and report["date"][:2] == "20"
    assert all(round(v, 2) == v for v in report["accuracy"].values())


def test_download_offline_and_demo_out_file_are_one_line(tmp_path):
    line = one_line_error(rz("eval", "at-baseline-r18-w16-fmnist", "--data", "cifar10", "--download",
                             "--root", str(tmp_path / "c10")))
    assert "--download" in line and "offline" in line
    (tmp_path / "f").write_text("x")
    assert "--out" in one_line_error(rz("demo", "--quick", "--out", str(tmp_path / "f")))


@pytest.mark.parametrize("argv, option", [(["finetune", "x", "--epochs", "0"], "--epochs"),
                                          (["finetune", "x", "--val-fraction", "2"], "--val-fraction"),
                                          (["eval", "x", "--eps", "eight"], "--eps")])
def test_argument_errors_are_one_line_in_option_names(argv, option):
    assert option in one_line_error(rz(*argv))


def test_library_errors_are_translated_to_option_names(tiny_fmnist_model, capsys):
    assert main(["finetune", tiny_fmnist_model, "--data", "fmnist-mini", "--n", "64", "--epochs", "2",
                 "--milestones", "5", "--out", "x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --milestones must be") and "milestones=" not in err


def test_help_shows_every_default_and_they_match_the_library():
    import inspect

    from robustzoo.cli import _parser
    from robustzoo.finetuning import finetune

    parser = _parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, sub in subs.items():
        for action in sub._actions:
            if action.option_strings and action.nargs != 0 and action.dest != "help" and not action.required:
                formatter = sub._get_formatter()
                assert "default" in formatter._expand_help(action), (name, action.option_strings)
    help_text = " ".join(subs["finetune"].format_help().split())
    sig = inspect.signature(finetune).parameters
    for option, key in (("--momentum", "momentum"), ("--weight-decay", "weight_decay"), ("--beta", "beta"),
                        ("--eval-steps", "eval_steps"), ("--val-fraction", "val_fraction")):
        assert f"default: {sig[key].default:g}" in help_text.replace("3e-4", "0.0003"), option
    assert f"default: {sig['schedule'].default}" in help_text


def test_finetune_defaults_follow_the_record_and_a_plan_line_comes_first(tmp_path):
    r = rz("finetune", "rot-adv-r18-w8-fmnist", "--data", "fmnist-mini", "--n", "96", "--epochs", "1", "--steps",
           "1", "--eval-steps", "1", "--no-progress", "--out", str(tmp_path / "ft"))
    assert r.returncode == 0, r.stderr
    plan = r.stdout.splitlines()[0]
    for part in ("rot-adv-r18-w8-fmnist", "96 fmnist-mini images", "mode adv-full", "eps 0.1 ", "step 0.04",
                 "1 epoch,", "device cpu", "estimated"):
        assert part in plan, part
    assert "best epoch 1" in r.stdout
    from robustzoo.weights import load_file

    assert load_file(tmp_path / "ft").num_classes == 10  # the headless backbone got a head sized from the labels
    # the folder carries its data set and eps: eval needs neither --data nor --eps (the record says 0.1, not 8/255)
    r = rz("eval", str(tmp_path / "ft"), "--n", "16", "--attacks", "clean,pgd1", "--no-progress", "--json",
           str(tmp_path / "r.json"))
    assert r.returncode == 0, r.stderr
    assert "data=fmnist-mini:test n=16 eps=0.1 (eps from the model's fine-tuning record)" in r.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["attack"]["eps_from"] == report["settings"]["eps_from"] == "the model's fine-tuning record"
    assert load_file(tmp_path / "ft").pretrained_meta["base"] == "rot-adv-r18-w8-fmnist"
    # and fine-tuning it again (no registry record) keeps its data set and eps, not the 8/255 fallback
    r = rz("finetune", str(tmp_path / "ft"), "--n", "64", "--epochs", "1", "--steps", "1", "--eval-steps", "1",
           "--no-progress", "--out", str(tmp_path / "ft2"))
    assert r.returncode == 0, r.stderr
    assert "64 fmnist-mini images" in r.stdout and "eps 0.1 step 0.025 PGD-1" in r.stdout, r.stdout
    # a local path is never written as the base: the registry name it started from carries through
    assert load_file(tmp_path / "ft2").pretrained_meta["base"] == "rot-adv-r18-w8-fmnist"


def test_resume_without_a_checkpoint_refuses_when_not_interactive(tmp_path):
    line = one_line_error(rz("finetune", "rot-adv-r18-w8-fmnist", "--data", "fmnist-mini", "--n", "64",
                             "--resume", "--out", str(tmp_path / "none"), stdin=subprocess.DEVNULL))
    assert "no checkpoint" in line and "without --resume" in line


def test_ctrl_c_prints_the_command_that_resumes(tmp_path):
    import os
    import shlex
    import signal
    import time

    out = tmp_path / "ft"
    # the interrupt must land between the first checkpoint and the end of the run: 20 epochs of 96 images
    argv = ["finetune", "rot-adv-r18-w8-fmnist", "--data", "fmnist-mini", "--n", "96", "--epochs", "20", "--steps",
            "1", "--eval-steps", "1", "--no-progress", "--out", str(out)]
    env = {**os.environ, "ROBUSTZOO_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    # a shell ignores SIGINT in what it starts in the background (`make test &`, nohup), and the child would
    # inherit that and finish with 0: give it the default disposition, as a terminal's Ctrl-C finds it
    p = subprocess.Popen([sys.executable, "-m", "robustzoo", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not (out / "ckpt.safetensors").exists() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert p.poll() is None, "the run ended before its first checkpoint was seen"
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    command = err.strip().splitlines()[-1].strip()
    assert command == "robustzoo " + shlex.join(argv + ["--resume"])
    r = rz(*shlex.split(command)[1:], timeout=180)
    assert r.returncode == 0 and "best epoch" in r.stdout, r.stderr
