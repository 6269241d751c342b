"""The layering of ``shared`` and ``workers`` (docs/DESIGN-NOTES.md, "Layers"), checked on the source.

Every import statement counts, function-level ones included: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

from shared import errors

ROOT = Path(__file__).resolve().parent.parent

FOUNDATION = {"shared.errors", "shared.settings", "shared.vocab", "shared.textio", "shared.progress",
              "shared.schemas", "shared.dispatch", "shared.threads", "shared.gc_freeze"}
SCIENCE_PACKAGES = ("shared.encoders", "shared.fusion", "shared.llm")
INTERFACES = {"shared.client", "shared.cli", "shared.evaluation", "shared.reports", "shared.demo", "shared.scoring"}


def layer(module: str) -> str:
    """The layer of a project module."""
    if module.startswith("workers"):
        return "workers"
    if module in FOUNDATION or module == "shared":
        return "foundation"
    if module == "shared.metrics" or module.startswith(SCIENCE_PACKAGES):
        return "science"
    if module.startswith("shared.db"):
        return "store"
    if module.startswith("shared.service"):
        return "service"
    if module in INTERFACES or module.startswith(("shared.cli.", "shared.api")):
        return "interfaces"
    raise AssertionError(f"{module} is in no layer: add it to one in tests/test_architecture.py and DESIGN-NOTES")


# What each layer may import from the project (its own layer always).
ALLOWED = {
    "foundation": {"foundation"},
    "science": {"foundation", "science"},
    "store": {"foundation", "store"},
    "service": {"foundation", "science", "store", "service"},
    "interfaces": {"foundation", "science", "store", "service", "interfaces"},
    "workers": {"foundation", "service", "store", "workers"},
}
# Inside the science: encoders are the bottom, llm may use encoders' model loading, fusion uses both.
SCIENCE_ORDER = {"shared.encoders": 0, "shared.metrics": 0, "shared.llm": 1, "shared.fusion": 2}
# Third-party packages a layer must never import.
FORBIDDEN_THIRD_PARTY = {
    "foundation": {"celery", "kombu", "sqlalchemy", "torch", "transformers"},
    "science": {"celery", "kombu", "sqlalchemy", "alembic", "psycopg"},
    "store": {"celery", "kombu", "torch", "transformers"},
    "service": {"celery", "kombu"},
    "interfaces": {"celery", "kombu"},
}


def project_modules() -> dict[str, Path]:
    modules = {}
    for package in ("shared", "workers"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) of every import in the file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def science_rank(module: str) -> int:
    return next(rank for prefix, rank in SCIENCE_ORDER.items() if module == prefix or module.startswith(prefix + "."))


def violations() -> list[str]:
    problems = []
    for module, path in project_modules().items():
        own = layer(module)
        for line, imported in imports_of(path):
            where = f"{path.relative_to(ROOT)}:{line}: {module} ({own}) imports {imported}"
            top = imported.split(".")[0]
            if top not in ("shared", "workers"):
                if top in FORBIDDEN_THIRD_PARTY.get(own, ()):
                    problems.append(f"{where}, which the {own} layer must not use")
                continue
            if imported == "workers.dispatch" and own == "interfaces":
                continue  # the interfaces wire a dispatcher: the one seam from shared into workers
            target = layer(imported)
            if target not in ALLOWED[own]:
                problems.append(f"{where} ({target})")
            elif own == target == "science" and science_rank(imported) > science_rank(module):
                problems.append(f"{where}: science imports point fusion -> llm -> encoders, never back")
    return problems


def test_imports_follow_the_layers():
    assert violations() == []


def test_the_check_sees_a_hidden_function_level_import(tmp_path):
    path = tmp_path / "probe.py"
    path.write_text("def f():\n    from shared.db.engine import session_for\n")
    assert (2, "shared.db.engine") in imports_of(path)
    assert layer("shared.db.engine") not in ALLOWED[layer("shared.fusion.model")]


def test_importing_the_client_imports_no_celery():
    code = "import sys, shared.client; print(sorted(m for m in sys.modules if m.split('.')[0] in ('celery', 'kombu', 'workers')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


def test_the_error_tree_in_the_docstring_is_the_class_tree():
    drawn = {}
    stack: list[tuple[int, str]] = []
    for line in errors.__doc__.splitlines():
        match = re.match(r"^([* |]*?)(?:\* |\+ )(\w+)\s", line)
        if not match:
            continue
        depth, name = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= depth:
            stack.pop()
        drawn[name] = stack[-1][1] if stack else None
        stack.append((depth, name))
    classes = {name: cls for name, cls in inspect.getmembers(errors, inspect.isclass)
               if issubclass(cls, errors.FusionqError)}
    assert set(drawn) == set(classes), "every FusionqError class is drawn once, and nothing else"
    for name, cls in classes.items():
        parent = next((b.__name__ for b in cls.__bases__ if issubclass(b, errors.FusionqError)), None)
        assert drawn[name] == parent, f"{name} is drawn under {drawn[name]} but subclasses {parent}"


@pytest.mark.parametrize("module", sorted(project_modules()))
def test_every_module_is_in_a_layer(module):
    assert layer(module)
