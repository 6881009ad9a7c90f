"""The release loop end to end: reproduce -> publish (Hub or embedded) -> a fresh process loads and fine-tunes.

A CIFAR-family name at a tiny width on synthetic data (CIFAR-10 is not on the test machines), through
the loopback Hub of tests/hubserver.py. The registry written is always a copy in tmp_path
(``--registry`` / ``ROBUSTZOO_REGISTRY``): the package's own file is checked to be untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import robustzoo
from robustzoo.registry import REGISTRY_FILE, read_records
from training import publish

ROOT = Path(__file__).resolve().parents[1]
NAME = "at-baseline-r18"
TINY = ["--width=0.0625", "--ft_epochs=1", "--subset=96", "--dataset=synthetic-cifar", "--attack_steps=1",
        "--val_attack_steps=1", "--ft_batch_size=16", "--eval_batch_size=128", "--device=cpu", "--progress=False"]
# the fresh process: the mission's own line, robustzoo.load(NAME).finetune(ds), on a few synthetic images
LOAD_AND_FINETUNE = """
import json, sys, torch, robustzoo
model = robustzoo.load(sys.argv[1], progress=False)
g = torch.Generator().manual_seed(0)
ds = (torch.rand(48, 3, 32, 32, generator=g), torch.randint(0, 10, (48,), generator=g))
path = model.pretrained_meta["path"]  # where it was loaded from (fine-tuning makes it another model)
result = model.finetune(ds, epochs=1, steps=1, eval_steps=1, batch_size=16, progress=False)
print(json.dumps({"path": path, "best_epoch": result.best_epoch,
                  "first": float(next(result.model.parameters()).flatten()[0])}))
"""


def _run(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """``python training/reproduce.py at-baseline-r18`` at width 1/16 on synthetic CIFAR-shaped data."""
    root = tmp_path_factory.mktemp("runs")
    _run(["training/reproduce.py", NAME, *TINY, f"--root={root}"])
    return root / NAME


def _registry_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "staged"
    folder.mkdir()
    shutil.copyfile(REGISTRY_FILE, folder / "registry.json")
    return folder / "registry.json"


def test_reproduce_gives_a_run_folder_with_weights_metrics_and_provenance(run_dir):
    files = {p.name for p in run_dir.iterdir()}
    assert {"model.safetensors", "config.json", "metrics.json", "provenance.json"} <= files
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"clean", "pgd20", "n", "how", "machine", "date"} <= set(metrics) and metrics["n"] == 128
    prov = json.loads((run_dir / "provenance.json").read_text())
    assert prov["recipe"] == NAME and prov["overrides"]["width"] == 0.0625 and prov["code_commit"]
    assert prov["data"]["dataset"] == "synthetic-cifar" and prov["machine"]["torch"] and prov["date"]
    assert prov["command"].startswith(f"python training/reproduce.py {NAME} --width=0.0625")


def test_publish_pins_the_uploaded_commit_and_a_fresh_process_loads_and_finetunes(run_dir, hub_server, tmp_path):
    package_before = REGISTRY_FILE.read_bytes()
    registry = _registry_copy(tmp_path)
    out = _run(["training/publish.py", str(run_dir), "--repo-id", f"robustzoo/{NAME}", "--endpoint",
                hub_server.endpoint, "--registry", str(registry)])
    sha = hashlib.sha256((run_dir / "model.safetensors").read_bytes()).hexdigest()
    commit = hub_server.repos[f"robustzoo/{NAME}"].refs["main"]
    # the diff printed is the change to the record: the pinned commit, the file's hash, the measured numbers
    assert f'+  "revision": "{commit}",' in out.stdout and f'+  "sha256": "{sha}",' in out.stdout
    spec = read_records(registry)[NAME]
    assert (spec.revision, spec.sha256, spec.repo_id, spec.embedded) == (commit, sha, f"robustzoo/{NAME}", False)
    assert spec.metrics == json.loads((run_dir / "metrics.json").read_text())
    assert spec.provenance == json.loads((run_dir / "provenance.json").read_text()) and spec.width == 0.0625
    files = hub_server.repos[f"robustzoo/{NAME}"].commits[commit]
    assert hashlib.sha256(files["model.safetensors"]).hexdigest() == sha  # uploaded byte for byte
    assert sha in files["README.md"].decode() and "model-index" in files["README.md"].decode()
    assert REGISTRY_FILE.read_bytes() == package_before  # tests never modify the package

    hub_server.add_commit(f"robustzoo/{NAME}", {"model.safetensors": b"a later, different file"})
    got = json.loads(_run(["-c", LOAD_AND_FINETUNE, NAME], env={"ROBUSTZOO_REGISTRY": str(registry),
                                                                "ROBUSTZOO_ENDPOINT": hub_server.endpoint}).stdout)
    assert commit in got["path"] and got["best_epoch"] == 1  # the pinned commit, not the newer main
    assert hashlib.sha256(Path(got["path"]).read_bytes()).hexdigest() == sha
    assert hub_server.count("GET", f"/resolve/{commit}/") == 1


def test_a_pinned_record_whose_file_changed_on_the_hub_is_refused(run_dir, hub_server, tmp_path, monkeypatch):
    from robustzoo import registry as reg
    from robustzoo.errors import ChecksumError

    staged = _registry_copy(tmp_path)
    spec, _ = publish.release(run_dir, repo_id=f"robustzoo/{NAME}", embed=False, registry=staged,
                              endpoint=hub_server.endpoint)
    files = hub_server.repos[f"robustzoo/{NAME}"].commits[spec.revision]
    files["model.safetensors"] = files["model.safetensors"][:-1] + b"\0"  # the server now serves other bytes
    monkeypatch.setattr(reg, "REGISTRY", read_records(staged))
    with pytest.raises(ChecksumError, match=spec.sha256):
        robustzoo.load(NAME, endpoint=hub_server.endpoint, progress=False)


def test_embed_ships_the_file_next_to_the_registry_and_a_fresh_process_loads_it_offline(run_dir, tmp_path):
    staged = _registry_copy(tmp_path)
    spec, diff = publish.release(run_dir, repo_id=None, embed=True, registry=staged)
    shipped = staged.parent / f"{NAME}.safetensors"
    assert spec.embedded and spec.revision is None and spec.filename == shipped.name and '+  "embedded": true' in diff
    assert read_records(staged)[NAME] == spec and hashlib.sha256(shipped.read_bytes()).hexdigest() == spec.sha256
    got = json.loads(_run(["-c", LOAD_AND_FINETUNE, NAME], env={"ROBUSTZOO_REGISTRY": str(staged),
                                                                "ROBUSTZOO_OFFLINE": "1"}).stdout)
    assert Path(got["path"]) == shipped and got["best_epoch"] == 1


RETIRE_LOAD = """
import sys, robustzoo
from robustzoo.errors import RetiredModelError
try:
    robustzoo.load(sys.argv[1], progress=False)
except RetiredModelError as e:
    print(e)
"""


def test_a_new_name_is_released_from_its_record_json_and_retires_the_old_embedded_one(run_dir, tmp_path):
    """record.json adds a name the registry lacks; --retire drops the old record and its file, and asking
    for the old name in a fresh process names the successor."""
    staged, old, new_name = _registry_copy(tmp_path), "old-embedded-r18", "at-baseline-r18-v2"
    records = json.loads(staged.read_text())
    donor = next(r for r in records if r["embedded"])  # an embedded record, staged under the old name
    shutil.copyfile(REGISTRY_FILE.parent / donor["filename"], staged.parent / f"{old}.safetensors")
    staged.write_text(json.dumps([*records, {**donor, "name": old, "filename": f"{old}.safetensors"}]))
    stage = tmp_path / "stage"
    shutil.copytree(run_dir, stage)
    desc = {k: v for k, v in read_records(staged)[NAME].to_record().items()
            if k not in ("repo_id", "filename", "revision", "sha256", "embedded", "metrics", "provenance")}
    (stage / "record.json").write_text(json.dumps({**desc, "name": new_name, "description": "a new weight"}))
    before = staged.read_bytes()
    with pytest.raises(SystemExit, match="needs --why"):
        publish.main([str(stage), "--embed", "--registry", str(staged), "--name", new_name, "--retire", old])
    assert staged.read_bytes() == before
    publish.main([str(stage), "--embed", "--registry", str(staged), "--name", new_name, "--retire", old,
                  "--why", "it was pretrained on 5,000 images only."])
    specs = read_records(staged)
    assert new_name in specs and old not in specs and specs[new_name].description == "a new weight"
    assert specs[new_name].embedded and (staged.parent / f"{new_name}.safetensors").is_file()
    assert not (staged.parent / f"{old}.safetensors").exists()
    assert json.loads((staged.parent / "retired.json").read_text())[old]["successor"] == new_name
    msg = _run(["-c", RETIRE_LOAD, old], env={"ROBUSTZOO_REGISTRY": str(staged)}).stdout
    assert f"Load '{new_name}' instead" in msg and "5,000 images only" in msg
    publish.main([str(stage), "--embed", "--registry", str(staged), "--name", new_name, "--retire", old])
    assert read_records(staged) == specs  # released again: nothing changes, the old name stays retired
    (stage / "record.json").write_text(json.dumps({**desc, "name": old}))
    with pytest.raises(SystemExit, match="was retired"):  # a retired name is never reused
        publish.main([str(stage), "--embed", "--registry", str(staged), "--name", old])
    (stage / "record.json").write_text(json.dumps({**desc, "name": new_name, "sha256": "0" * 64}))
    with pytest.raises(SystemExit, match="leave repo_id"):
        publish.main([str(stage), "--embed", "--registry", str(staged), "--name", new_name])


def test_publish_refuses_metrics_of_another_file_and_writes_nothing(run_dir, tmp_path):
    staged = _registry_copy(tmp_path)
    other = tmp_path / "zoo_metrics.json"
    other.write_text(json.dumps({NAME: {"sha256": "0" * 64, "metrics": {"clean": 99.0}}}))
    with pytest.raises(SystemExit, match="no figures for this file"):
        publish.main([str(run_dir), "--embed", "--registry", str(staged), "--metrics", str(other)])
    with pytest.raises(SystemExit, match="no record"):
        publish.main([str(run_dir), "--embed", "--registry", str(staged), "--name", "rot-adv-r81"])
    with pytest.raises(SystemExit, match="not releasing it into the package"):  # a smoke run, the package's file
        publish.main([str(run_dir), "--embed", "--dry-run"])
    assert staged.read_bytes() == REGISTRY_FILE.read_bytes() and not (staged.parent / f"{NAME}.safetensors").exists()


def test_refresh_metrics_takes_only_figures_of_the_released_file(tmp_path):
    name = "at-baseline-r18-w16-fmnist"
    staged = _registry_copy(tmp_path)
    shutil.copyfile(REGISTRY_FILE.parent / f"{name}.safetensors", staged.parent / f"{name}.safetensors")
    spec = read_records(staged)[name]
    grown = {**spec.metrics, "aa_fast": 56.5, "aa_fast_n": 4000}
    table = tmp_path / "zoo_metrics.json"
    table.write_text(json.dumps({name: {"sha256": "0" * 64, "metrics": grown}}))
    with pytest.raises(SystemExit, match="no figures for this file"):  # figures of another file: refused
        publish.main([name, "--refresh-metrics", "--registry", str(staged), "--metrics", str(table)])
    assert read_records(staged)[name].metrics == spec.metrics
    table.write_text(json.dumps({name: {"sha256": spec.sha256, "metrics": grown}}))
    publish.main([name, "--refresh-metrics", "--registry", str(staged), "--metrics", str(table)])
    new = read_records(staged)[name]
    assert new.metrics == grown and new.sha256 == spec.sha256 and new.provenance == spec.provenance
    with pytest.raises(SystemExit, match="not a released record"):
        publish.main(["rot-adv-r18", "--refresh-metrics", "--registry", str(staged), "--metrics", str(table)])


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "training").glob("*.py")
                                          if "__main__" in p.read_text()))
def test_every_training_script_says_what_it_does(script, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", [f"training/{script}", "--help"])
    try:
        runpy.run_path(str(ROOT / "training" / script), run_name="__main__")
    except SystemExit as e:
        assert e.code in (0, None)
    first = (ROOT / "training" / script).read_text().split('"""')[1].strip().splitlines()[0]
    assert first in capsys.readouterr().out
