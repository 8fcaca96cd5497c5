"""The layout's promises: models/ is the bottom layer (it imports nothing from the worker or the
tooling), the worker never imports the tooling, and the domain's names have one source."""

import ast
from pathlib import Path

from app.settings import ROLES
from models.classifier import CAPACITY
from models.domain import CLASSIFIERS

REPO = Path(__file__).resolve().parents[2]


def _imported_roots(folder: str) -> dict[str, set[str]]:
    out = {}
    for path in (REPO / folder).rglob("*.py"):
        roots = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                roots.add(node.module.split(".")[0])
        out[str(path.relative_to(REPO))] = roots
    return out


def test_models_import_nothing_from_the_worker_or_the_tooling():
    bad = {f: r & {"app", "agents", "tables", "tools"} for f, r in _imported_roots("models").items()}
    assert not {f: r for f, r in bad.items() if r}


def test_the_worker_never_imports_the_tooling():
    for folder in ("app", "agents", "tables"):
        bad = {f: r & {"tools", "tests"} for f, r in _imported_roots(folder).items()}
        bad = {f: r for f, r in bad.items() if r and f != "app/cli.py"}  # the CLI adds tools' commands if present
        assert not bad


def test_classifier_names_have_one_source():
    assert tuple(CAPACITY) == CLASSIFIERS
    assert [r.removeprefix("classifier-") for r in ROLES if r.startswith("classifier-")] == list(CLASSIFIERS)
