"""schemathesis against /openapi.json on a real worker: no 5xx, no response outside the schema,
no undocumented status code. (The CLI is used: its pytest plugin does not load under pytest 9.)"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def test_api_matches_its_openapi_document(pipeline, tmp_path):
    worker, _ = pipeline
    st = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")
    proc = subprocess.run(
        [st, "run", f"{worker.url}/openapi.json", "--checks",
         "not_a_server_error,response_schema_conformance,status_code_conformance",
         "--max-examples", "30", "--seed", "1", "--report-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-5000:]
    passed = [int(n) for n in re.findall(r"\b(\d+) passed", proc.stdout)]
    assert passed and max(passed) > 0, proc.stdout[-5000:]
