"""The command line as the tests, the bench and the Docker image start it."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_python_m_app_cli_runs_with_the_tooling_commands():
    # ``python -m app.ops.cli`` runs the module as __main__ while tools.cli imports its helpers: no
    # import cycle may break it (the tests and the bench start every worker this way).
    out = subprocess.run([sys.executable, "-m", "app.ops.cli", "--help"], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    for command in ("worker", "replay", "stack", "bench", "soak", "table-state"):
        assert command in out.stdout
    worker = subprocess.run([sys.executable, "-m", "app.ops.cli", "worker", "--help"], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert worker.returncode == 0 and "Run a Faust worker" in worker.stdout


def test_a_worker_asking_for_a_provider_onnxruntime_lacks_refuses_to_start():
    # onnxruntime alone would warn and run on the CPU: a GPU deployment must not silently do that.
    env = {**os.environ, "IMGSTREAM_ONNX_PROVIDERS": "NoSuchExecutionProvider,CPUExecutionProvider"}
    out = subprocess.run([sys.executable, "-m", "app.ops.cli", "worker"], cwd=REPO, capture_output=True, text=True,
                         timeout=60, env=env)
    assert out.returncode == 1
    assert "has no NoSuchExecutionProvider" in out.stderr and "CPUExecutionProvider" in out.stderr
