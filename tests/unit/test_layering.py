"""The layout's promises: each folder of the worker imports only the folders below it on the
data's path (no import climbs back up), models/ is the bottom layer, the worker never imports the
tooling (whose folders are layered too), and the domain's names have one source."""

import ast
from pathlib import Path

import pytest

from app.core.settings import ROLES
from models.classifier import CAPACITY
from models.domain import CLASSIFIERS

REPO = Path(__file__).resolve().parents[2]

# Every folder of the worker, and the folders it may import besides its own, bottom up. "app" is
# the top: app/__init__.py, app/__main__.py and app/worker.py, which assemble a worker.
ALLOWED = {
    "models": set(),
    "app/core": {"models"},
    "app/storage": {"app/core", "models"},
    "app/stream": {"app/core", "app/storage", "models"},
    "app/bundles": {"app/core", "app/storage", "models"},
    "tables": {"app/core", "app/stream", "models"},
    "agents": {"app/core", "app/storage", "app/stream", "app/bundles", "tables", "models"},
    "app/http": {"app/core", "app/storage", "app/stream", "app/bundles", "models"},
    "app": {"app/core", "app/storage", "app/stream", "app/bundles", "app/http", "agents", "tables", "models"},
    "app/ops": {"app", "app/core", "app/storage", "app/stream", "app/bundles", "app/http", "agents", "tables",
                "models"},
}
WORKER = ("app", "agents", "tables", "models")
# The tooling, beside the worker and never imported by it, layered the same way.
ALLOWED |= {
    "tools/base": set(ALLOWED),
    "tools/stack": {"tools/base", *ALLOWED},
    "tools/bench": {"tools/base", "tools/stack", *ALLOWED},
    "tools": {"tools/base", "tools/stack", "tools/bench", *ALLOWED},
}
ROOTS = (*WORKER, "tools")


def _module_folder(module: str) -> str | None:
    """The folder of ALLOWED a dotted module name lives in (None: not the worker's)."""
    parts = module.split(".")
    if parts[0] not in ROOTS:
        return None
    path = REPO.joinpath(*parts)
    folder = path if path.is_dir() else path.parent
    while str(folder.relative_to(REPO)) not in ALLOWED:
        folder = folder.parent
    return str(folder.relative_to(REPO))


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from app.stream import broker`` imports the module app.stream.broker
            names |= {f"{node.module}.{a.name}" if (REPO / node.module.replace(".", "/") / f"{a.name}.py").exists()
                      else node.module for a in node.names}
    return names



@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_no_import_climbs_back_up(folder):
    bad = {}
    for path in (REPO / folder).glob("*.py"):
        for module in _imports(path):
            if module.split(".")[0] == "tests":
                bad.setdefault(str(path.relative_to(REPO)), set()).add(module)
                continue
            target = _module_folder(module)
            if target is not None and target != folder and target not in ALLOWED[folder]:
                bad.setdefault(str(path.relative_to(REPO)), set()).add(module)
    assert not bad, f"imports {folder}/ may not make (allowed: {sorted(ALLOWED[folder])})"


def test_every_folder_of_the_worker_is_placed_and_says_where_it_sits():
    folders = {str(p.parent.relative_to(REPO)) for root in ROOTS for p in (REPO / root).rglob("*.py")}
    assert folders == set(ALLOWED)
    for folder in folders:
        doc = ast.get_docstring(ast.parse((REPO / folder / "__init__.py").read_text()))
        assert doc, f"{folder}/__init__.py needs a docstring that says its place on the data's path"


def test_the_layers_have_no_cycle():
    seen: dict[str, int] = {}

    def depth(folder: str, path: tuple = ()) -> int:
        assert folder not in path, f"cycle: {' -> '.join((*path, folder))}"
        if folder not in seen:
            seen[folder] = 1 + max((depth(d, (*path, folder)) for d in ALLOWED[folder]), default=0)
        return seen[folder]

    for folder in ALLOWED:
        depth(folder)


def test_classifier_names_have_one_source():
    assert tuple(CAPACITY) == CLASSIFIERS
    assert [r.removeprefix("classifier-") for r in ROLES if r.startswith("classifier-")] == list(CLASSIFIERS)
