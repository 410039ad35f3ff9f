"""The compose file and Dockerfiles, validated here without a Docker engine."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.deploy.conftest import DEPLOY, REPO_ROOT

SECRETS = {"POSTGRES_PASSWORD": "pw", "HSIG_API_TOKEN": "tok", "GRAFANA_ADMIN_PASSWORD": "gf"}


def _compose(compose_bin: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [compose_bin, "-f", str(REPO_ROOT / "docker-compose.gpu.yml"), *args],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", **env},
        cwd=REPO_ROOT,
        timeout=60,
    )


@pytest.fixture(scope="module")
def compose_model(compose_bin: str) -> dict:
    result = _compose(compose_bin, "config", "--format", "json", env=SECRETS)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_compose_file_is_valid(compose_bin: str) -> None:
    assert _compose(compose_bin, "config", "-q", env=SECRETS).returncode == 0


@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_compose_refuses_to_start_without_each_secret(compose_bin: str, missing: str) -> None:
    env = {key: value for key, value in SECRETS.items() if key != missing}
    result = _compose(compose_bin, "config", "-q", env=env)
    assert result.returncode != 0
    assert missing in result.stderr


def test_every_service_is_there_with_health_and_restart(compose_model: dict) -> None:
    services = compose_model["services"]
    expected = {"postgres", "migrate", "ingest", "trainer", "inference", "backtest", "prometheus", "grafana"}
    assert expected <= set(services)
    for name in expected - {"migrate"}:
        assert services[name].get("restart") == "unless-stopped", name
    for name in ("postgres", "inference", "prometheus", "grafana"):
        assert "healthcheck" in services[name], name


def test_gpu_services_reserve_a_gpu_and_shared_memory(compose_model: dict) -> None:
    for name in ("trainer", "inference"):
        service = compose_model["services"][name]
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]
        assert int(service["shm_size"]) >= 8 * 2**30


def test_services_share_volumes_and_wait_for_migrations(compose_model: dict) -> None:
    for name in ("ingest", "trainer", "inference", "backtest"):
        service = compose_model["services"][name]
        assert any(volume["source"] == "hsig-data" for volume in service["volumes"]), name
        assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_no_secret_is_baked_into_an_image() -> None:
    for dockerfile in DEPLOY.glob("Dockerfile.*"):
        text = dockerfile.read_text()
        for secret in ("PASSWORD", "API_TOKEN", "HF_TOKEN"):
            assert secret not in text, f"{dockerfile.name} mentions {secret}"
        assert "USER 10001" in text, f"{dockerfile.name} must run as a non-root user"


def test_dockerfiles_pass_hadolint(hadolint_bin: str) -> None:
    files = sorted(str(path) for path in DEPLOY.glob("Dockerfile.*"))
    result = subprocess.run([hadolint_bin, *files], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
