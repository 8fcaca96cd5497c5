"""The export environment: torch and friends in their own cached virtualenv, never in workers.

``ensure()`` creates ``<cache_dir>/export-venv`` with the ``export`` extra of pyproject.toml the
first time (several GB: PyPI's torch is a CUDA build) and returns its python.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from tools.base.errors import ToolingError
from app.core.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]


def requirements() -> list[str]:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["export"]


def ensure(settings: Settings, log=print) -> Path:
    venv = settings.cache_dir / "export-venv"
    python = venv / "bin" / "python"
    stamp = venv / ".requirements"
    wanted = "\n".join(requirements())
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    log(f"creating the export environment in {venv} (torch; several GB, cached for next time) ...")
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    proc = subprocess.run([str(python), "-m", "pip", "install", "-q", *requirements()], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ToolingError(f"installing the export environment failed:\n{proc.stderr[-3000:]}")
    stamp.write_text(wanted)
    return python


def run(settings: Settings, *args: str, log=print) -> str:
    python = ensure(settings, log)
    proc = subprocess.run([str(python), "-m", "models.export", *args], cwd=REPO_ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ToolingError(f"models.export {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout
