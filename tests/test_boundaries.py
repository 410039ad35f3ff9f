"""Services import only themselves and ``services.common``; common imports no service.

Every .py under services/ is parsed (no import runs): ``import`` and ``from ... import`` at any
depth (inside functions and ``if TYPE_CHECKING:`` too), relative imports resolved against the
file's package, and ``importlib.import_module("services....")`` / ``__import__("services....")``
with a string literal. ``services.pipeline`` sits one floor above the services and may import
any of them; nothing else may live directly in services/ besides ``__init__.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

SERVICES = frozenset({"ingest", "trainer", "inference", "backtest"})
COMMON = "common"
ABOVE = "pipeline"  # may import every service
PACKAGES = SERVICES | {COMMON, ABOVE}
RULE = "a service imports only itself and services.common; services.common imports no service"


def _resolve(node: ast.ImportFrom, path: Path) -> str:
    """The absolute module of ``from X import ...``; a relative one counts from the file's package
    (``services/ingest/cycle.py`` and ``services/ingest/__init__.py`` are both in ``services.ingest``)."""
    if not node.level:
        return node.module or ""
    package = list(path.parts[:-1])
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _is_dynamic_import(node: ast.Call) -> bool:
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    return name in {"import_module", "__import__"}


def imported_modules(source: str, path: Path) -> list[tuple[int, str]]:
    """(line, dotted module) for every module ``source`` (the file at ``path``) imports."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source, filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = _resolve(node, path)
            found.append((node.lineno, module))
            if module == "services":  # from services import ingest
                found += [(node.lineno, f"services.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Call) and _is_dynamic_import(node) and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                found.append((node.lineno, first.value))
    return found


def violations(source: str, path: Path) -> list[str]:
    """``path:line: import`` for each import of ``source`` that breaks the rule (path relative
    to the repository, e.g. ``services/ingest/cycle.py``)."""
    parts = path.parts
    if parts[0] != "services":
        return []
    if len(parts) == 2:
        return (
            []
            if parts[1] == "__init__.py"
            else [f"{path}: a module directly in services/ (move it to {ABOVE})"]
        )
    owner = parts[1]
    if owner not in PACKAGES:
        return [f"{path}: services/{owner} is no known package (add it to tests/test_boundaries.py)"]
    if owner == ABOVE:
        return []
    allowed = {COMMON} if owner == COMMON else {owner, COMMON}
    found = []
    for line, module in imported_modules(source, path):
        names = module.split(".")
        if names[0] != "services" or len(names) == 1:
            continue
        if names[1] not in allowed:
            found.append(f"{path}:{line}: {owner} imports {module}")
    return found


def test_services_import_only_themselves_and_common() -> None:
    found = []
    files = sorted((REPO_ROOT / "services").rglob("*.py"))
    assert len(files) > 50  # the scan sees the tree
    for file in files:
        relative = file.relative_to(REPO_ROOT)
        found += violations(file.read_text(encoding="utf-8"), relative)
    assert not found, f"{RULE}:\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("path", "source", "expected"),
    [
        (
            "services/ingest/x.py",
            "from services.trainer.config import TrainConfig\n",
            "services.trainer.config",
        ),
        (
            "services/ingest/x.py",
            "def f():\n    import services.backtest.runner\n",
            "services.backtest.runner",
        ),
        ("services/common/x.py", "from services.ingest import settings\n", "services.ingest"),
        ("services/common/x.py", "from services.pipeline.processes import free_port\n", "services.pipeline"),
        ("services/trainer/x.py", "from services import inference\n", "services.inference"),
        ("services/backtest/x.py", "from ..ingest import cycle\n", "services.ingest"),
        (
            "services/backtest/sub/x.py",
            "from ...trainer.config import TrainConfig\n",
            "services.trainer.config",
        ),
        (
            "services/backtest/x.py",
            "import importlib\n\nmod = importlib.import_module('services.trainer.training')\n",
            "services.trainer.training",
        ),
        ("services/inference/x.py", "__import__('services.ingest.cycle')\n", "services.ingest.cycle"),
        (
            "services/backtest/x.py",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from services.ingest.settings import S\n",
            "services.ingest.settings",
        ),
    ],
)
def test_a_violation_names_file_line_and_import(path: str, source: str, expected: str) -> None:
    found = violations(source, Path(path))
    assert len(found) == 1, found
    line = next(
        number for number, text in enumerate(source.splitlines(), 1) if "services" in text or ".." in text
    )
    assert found[0].startswith(f"{path}:{line}: ") and expected in found[0]


@pytest.mark.parametrize(
    ("path", "source"),
    [
        ("services/ingest/x.py", "from services.common.db import session_scope\nimport numpy\n"),
        ("services/ingest/x.py", "from services.ingest.cycle import run_cycle\nfrom . import store\n"),
        ("services/backtest/predictors/x.py", "from ..schemas import BacktestConfig\n"),
        ("services/common/db/x.py", "from ..settings import CommonSettings\nimport services.common.errors\n"),
        ("services/pipeline/x.py", "from services.trainer.training import train\nimport services.ingest\n"),
        ("services/trainer/x.py", "cmd = ['-m', 'services.trainer.job_process']\n"),  # a string, no import
        ("services/__init__.py", '"""The package."""\n'),
    ],
)
def test_allowed_imports_pass(path: str, source: str) -> None:
    assert violations(source, Path(path)) == []


def test_no_module_directly_in_services_or_unknown_package() -> None:
    assert violations("import services.ingest\n", Path("services/cli.py"))
    assert violations("", Path("services/newsvc/x.py"))
