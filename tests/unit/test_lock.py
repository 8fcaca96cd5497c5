"""requirements.lock, the worker image's exact dependencies, matches pyproject.toml: every runtime
dependency is pinned there at a version its specifier allows, every pin carries hashes (pip's
--require-hashes mode refuses anything else), and nothing of the extras (torch, the tooling) is in
it. `make lock` rewrites it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]


def _pins() -> dict[str, tuple[str, int]]:
    text = (REPO / "requirements.lock").read_text()
    pins = {}
    for block in re.split(r"\n(?=\S)", text):
        m = re.match(r"([A-Za-z0-9_.\-]+)==([^\s\\;]+)", block)
        if m:
            pins[canonicalize_name(m.group(1))] = (m.group(2), block.count("--hash=sha256:"))
    return pins


def test_every_dependency_of_pyproject_is_pinned_within_its_range_with_hashes():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = _pins()
    for line in project["dependencies"]:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is in pyproject.toml but not in requirements.lock: run `make lock`"
        version, _ = pins[name]
        assert req.specifier.contains(version, prereleases=True), f"{req.name}=={version} is outside {req.specifier}"
    assert all(hashes > 0 for _, hashes in pins.values()), "every pin needs its hashes"
    extras = {canonicalize_name(Requirement(r).name) for deps in project["optional-dependencies"].values() for r in deps}
    runtime = {canonicalize_name(Requirement(r).name) for r in project["dependencies"]}
    assert not (extras - runtime) & set(pins), "no export, training or tooling package in the worker's lock"
