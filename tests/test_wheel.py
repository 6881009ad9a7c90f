"""The installed package works on its own: build the wheel, install it into a fresh virtual
environment *without* the dev extras (so no matplotlib, pytest, ...), and run the demo there.

Slow tier: the fresh venv needs torch (about a minute and 5 GB from a local wheel cache); one
venv serves the whole module and is deleted afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(cmd: list[str], *, timeout: float, cwd: Path | None = None, env: dict | None = None):
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(bin folder of a fresh venv holding only the wheel and its runtime dependencies, scratch dir)."""
    base = tmp_path_factory.mktemp("wheel")
    dist, src = base / "dist", base / "src"
    # a copy, so the build leaves no build/ or *.egg-info in the checkout (an egg-info on PYTHONPATH would
    # also make pip think robustzoo is installed already)
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".*", "build", "dist", "runs", "*.egg-info",
                                                             "__pycache__", "demo_out", "finetuned"))
    # no build isolation: builds with this venv's setuptools, no index needed for the build itself
    r = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
              str(src)], timeout=300, env=_env(Path(sys.executable).parent))
    assert r.returncode == 0, r.stderr[-2000:]
    wheels = list(dist.glob("robustzoo-*.whl"))
    assert len(wheels) == 1, wheels
    env_dir = base / "venv"
    venv.create(env_dir, with_pip=True)
    pip = [str(env_dir / "bin" / "python"), "-m", "pip", "install", "-q", "--prefer-binary"]
    try:
        # torch first, CPU build pinned as the Makefile does; then the wheel pulls the rest of its dependencies
        r = _run(pip + ["-c", str(ROOT / "constraints.txt"), "torch==2.14.1", "torchvision==0.29.1"], timeout=900,
                 env=_env(env_dir / "bin"))
        assert r.returncode == 0, r.stderr[-2000:]
        r = _run(pip + ["-c", str(ROOT / "constraints.txt"), str(wheels[0])], timeout=600, env=_env(env_dir / "bin"))
        assert r.returncode == 0, r.stderr[-2000:]
        yield env_dir / "bin", base
    finally:
        shutil.rmtree(env_dir, ignore_errors=True)  # gigabytes: never left behind in pytest's temp folders


def _env(bin_dir: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", ROBUSTZOO_OFFLINE="1", HF_HUB_OFFLINE="1",
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
