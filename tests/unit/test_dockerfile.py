"""The worker image's Dockerfile (no Docker engine in CI: its promises are read from the file)."""

import re
from pathlib import Path

DOCKERFILE = (Path(__file__).resolve().parents[2] / "Dockerfile").read_text()


def _instructions(name: str) -> list[str]:
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    return [line.split(None, 1)[1] for line in text.splitlines() if line.split(None, 1)[:1] == [name]]


def test_runs_as_a_non_root_user():
    (user,) = _instructions("USER")
    assert user.split(":")[0] not in ("0", "root")


def test_health_check_is_liveness_only():
    (check,) = _instructions("HEALTHCHECK")
    assert "/live" in check and "/health" not in check and "/ready" not in check


def test_only_the_workers_packages_and_no_extras():
    copied = {c.split()[0] for c in _instructions("COPY")}
    assert copied == {"requirements.lock", "pyproject.toml", "app", "agents", "models", "tables"}
    installs = [r for r in _instructions("RUN") if "pip install" in r]
    assert installs and all("[" not in r for r in installs)  # no extras: no torch, no tooling
    # the dependencies exactly as locked, from wheels; then the project itself without resolving again
    assert any("--require-hashes --only-binary=:all: -r requirements.lock" in r for r in installs)
    assert any("pip install --no-cache-dir --no-deps ." in r for r in installs)
    assert not any("build-essential" in r or "gcc" in r for r in _instructions("RUN"))


def test_the_base_is_a_build_argument_defaulting_to_the_public_slim_python():
    (arg,) = [a for a in _instructions("ARG") if a.startswith("BASE=")]
    assert arg == "BASE=python:3.11-slim" and _instructions("FROM") == ["${BASE}"]
