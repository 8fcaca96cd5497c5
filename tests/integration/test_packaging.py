"""The worker as a user installs it: ``pip install .`` (not editable) into a fresh virtualenv, with
no extra. The worker's command and every module of the worker's packages import there, and none
of the tooling's heavy dependencies is installed."""

from __future__ import annotations

import shutil
import subprocess
import venv
from pathlib import Path

import pytest

pytestmark = pytest.mark.packaging

REPO = Path(__file__).resolve().parents[2]
WORKER_PACKAGES = ("app", "agents", "tables", "models")
# models/ also holds training and export code, which the worker never imports
NOT_WORKER = {"models.train", "models.export", "models.report", "models.data"}
TOOLING_ONLY = ("matplotlib", "psutil", "sklearn")

IMPORT_ALL = f"""
import importlib, importlib.util, pkgutil, sys
names = []
for pkg in {WORKER_PACKAGES!r}:
    mod = importlib.import_module(pkg)
    names.append(pkg)
    names += [m.name for m in pkgutil.walk_packages(mod.__path__, pkg + ".")]
names = [n for n in names if n not in {sorted(NOT_WORKER)!r}]
for n in names:
    importlib.import_module(n)
from app.worker import create_app
from app.core.settings import Settings
create_app(Settings(state_dir=sys.argv[1]))  # every role's agents, the table and the views
present = [m for m in {TOOLING_ONLY!r} if importlib.util.find_spec(m) is not None]
assert not present, f"tooling dependencies installed with the worker: {{present}}"
print(len(names), "modules")
"""


def test_a_non_editable_install_runs_the_worker_without_the_tooling_dependencies(tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    # a copy of the source, so the install cannot see anything the checkout has besides the tree
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".venv", "var", ".git", "test-output", "*.egg-info",
                                                            "__pycache__", "node_modules"))
    install = subprocess.run([py, "-m", "pip", "install", "-q", str(src)], capture_output=True, text=True,
                             timeout=900)
    assert install.returncode == 0, install.stderr[-4000:]
    cwd = tmp_path / "elsewhere"  # not the source tree: only the installed packages are importable
    cwd.mkdir()
    helped = subprocess.run([env_dir / "bin" / "imgstream", "worker", "--help"], capture_output=True, text=True,
                            cwd=cwd, timeout=120)
    assert helped.returncode == 0 and "Run a Faust worker" in helped.stdout, helped.stderr[-4000:]
    imported = subprocess.run([py, "-c", IMPORT_ALL, str(tmp_path / "state")], capture_output=True, text=True,
                              cwd=cwd, timeout=300)
    assert imported.returncode == 0, imported.stderr[-4000:]
    assert int(imported.stdout.split()[0]) > 30
    size_mb = sum(f.stat().st_size for f in env_dir.rglob("*") if f.is_file()) / 2**20
    print(f"worker virtualenv: {size_mb:.0f} MB")
