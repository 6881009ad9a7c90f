"""The installed package works on its own: build the wheel, install it into a fresh virtual
environment *without* the dev extras (so no matplotlib, pytest, ...), and run the demo there.

Slow tier: the fresh venv needs torch (minutes and about 5 GB, from a local wheel cache here); one
venv serves the whole module and is deleted afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_readme import quickstart_blocks

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # the fresh install alone takes minutes


def _run(cmd: list[str], *, timeout: float, cwd: Path | None = None, env: dict | None = None):
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(bin folder of a fresh venv made by the README's install block, scratch dir).

    The block runs as written (``python3 -m venv .venv && . .venv/bin/activate`` then ``pip install .``:
    pip builds the wheel and installs it with the runtime dependencies only) in a copy of this checkout.
    """
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".*", "build", "dist", "runs", "*.egg-info",
                                                             "__pycache__", "demo_out", "finetuned"))
    try:
        script = "\n".join(quickstart_blocks()[0])
        r = _run(["bash", "-ec", script], cwd=src, env=_env(Path("/nonexistent")), timeout=1500)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
        yield src / ".venv" / "bin", base
    finally:
        shutil.rmtree(src, ignore_errors=True)  # gigabytes: never left behind in pytest's temp folders


def _env(bin_dir: Path) -> dict:
    # nothing of this checkout or its venv may leak in (an egg-info on PYTHONPATH makes pip skip the install)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if not p.startswith(str(Path(sys.executable).parent)))
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", ROBUSTZOO_OFFLINE="1", HF_HUB_OFFLINE="1",
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def test_wheel_has_no_dev_extras(installed):
    bin_dir, _ = installed
    r = _run([str(bin_dir / "python"), "-c", "import importlib.util as u; print(u.find_spec('matplotlib'), "
              "u.find_spec('pytest'))"], timeout=60, env=_env(bin_dir))
    assert r.stdout.split() == ["None", "None"], r.stdout + r.stderr


def test_installed_demo_quick_runs_to_the_end(installed):
    bin_dir, base = installed
    work = base / "run"
    work.mkdir()
    r = _run([str(bin_dir / "robustzoo"), "demo", "--quick", "--out", "out"], cwd=work, env=_env(bin_dir),
             timeout=120)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert (work / "out" / "demo_results.md").stat().st_size > 0
    assert (work / "out" / "demo_results.json").stat().st_size > 0
    assert "plot skipped: matplotlib is not installed" in r.stdout  # one line with the fix, not a crash
    # the package runs from the venv, not from this checkout
    r = _run([str(bin_dir / "python"), "-c", "import robustzoo; print(robustzoo.__file__)"], cwd=work,
             env=_env(bin_dir), timeout=60)
    assert str(bin_dir.parent) in r.stdout, r.stdout


def test_installed_package_runs_every_quickstart_command(installed):
    bin_dir, base = installed
    work = base / "quickstart"
    work.mkdir()
    for line in quickstart_blocks()[1]:
        r = _run(["bash", "-ec", line], cwd=work, env=_env(bin_dir), timeout=300)
        assert r.returncode == 0 and "Traceback" not in r.stderr, f"{line}\n{r.stdout[-1500:]}\n{r.stderr[-1500:]}"
