"""Every shell command of the README's quick start runs as written (offline, a time limit each).

The install block (``python3 -m venv`` + ``pip install .``) is run by the slow tier in
``tests/test_wheel.py``; the commands after it run here against this environment's ``robustzoo``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
PER_COMMAND_S = 180


def quickstart_blocks() -> list[list[str]]:
    """The bash blocks between '## Quick start' and '<!-- quickstart-end -->', one list of lines each."""
    text = README.read_text()
    section = text[text.index("## Quick start"):text.index("<!-- quickstart-end -->")]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    return [[line for line in b.splitlines() if line.strip() and not line.lstrip().startswith("#")] for b in blocks]


def offline_env(bin_dir: Path) -> dict:
    env = {**os.environ, "ROBUSTZOO_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    return env


def test_quickstart_has_an_install_block_then_commands():
    blocks = quickstart_blocks()
    assert len(blocks) == 2 and any("pip install" in line for line in blocks[0])
    assert any(line.startswith("robustzoo demo --quick") for line in blocks[1])


def test_every_quickstart_command_runs_as_written(tmp_path):
    bin_dir = Path(sys.executable).parent  # this venv's console script `robustzoo`
    for line in quickstart_blocks()[1]:
        r = subprocess.run(["bash", "-ec", line], cwd=tmp_path, env=offline_env(bin_dir), capture_output=True,
                           text=True, timeout=PER_COMMAND_S)
        assert r.returncode == 0, f"{line}\n{r.stdout[-1500:]}\n{r.stderr[-1500:]}"
        assert "Traceback" not in r.stderr, line
        if line.startswith("robustzoo eval runs/"):  # the README says the folder brings its own threat model
            assert "eps=0.1 (eps from the model's fine-tuning record)" in r.stdout, r.stdout


def test_license_and_project_urls_match_the_metadata():
    import tomllib

    from robustzoo.hub import PROJECT_URL

    root = README.parent
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    assert (root / "LICENSE").read_text().startswith("MIT License")
    assert project["urls"]["Homepage"] == PROJECT_URL  # the URL errors point users to
    text = README.read_text()
    convert = text[text.index("## Importing the paper's checkpoints"):]
    assert "github.com/VITA-Group/Adv-SS-Pretraining" in convert and "Chen2020Adversarial" in convert
    first = min(text.index("-w8-"), text.index("-w16-"))
    assert "8 (or 16) base channels" in text[first - 600:first + 600]  # the width suffix is explained where first seen


def test_readme_names_only_weights_that_load_or_say_they_do_not():
    from robustzoo.registry import REGISTRY

    text = README.read_text()
    for cmd in re.findall(r"robustzoo (?:download|eval|finetune) ([\w-]+)", text):
        if cmd in REGISTRY:
            assert REGISTRY[cmd].published, f"README runs `{cmd}`, which is not published"


def _scripts() -> list[Path]:
    root = README.parent
    return sorted(p for folder in ("training", "benchmarks") for p in (root / folder).glob("*.py")
                  if '__name__ == "__main__"' in p.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("script", _scripts(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_script_has_a_help_that_says_what_it_does(script, tmp_path):
    """Issue 12, point 10: `--help` exits 0 and names what the script does, its runtime class and outputs."""
    r = subprocess.run([sys.executable, str(script), "--help"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120, env=offline_env(Path(sys.executable).parent))
    assert r.returncode == 0, r.stdout[-800:] + r.stderr[-800:]
    text = (r.stdout + r.stderr).lower()
    assert len(text.split()) >= 10, text
    assert any(w in text for w in ("second", "minute", "hour")), "no runtime class in --help"
    assert not any(tmp_path.iterdir()), "--help left files behind"
