"""The compose file and Dockerfiles, validated here without a Docker engine."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.deploy.conftest import DEPLOY, REPO_ROOT

# The variables compose refuses to start without. The Hugging Face token is not one of them: it
# is a secret file, and deploy/no-hf-token (empty) stands in when there is none.
SECRETS = {"POSTGRES_PASSWORD": "pw", "HSIG_API_TOKEN": "tok", "GRAFANA_ADMIN_PASSWORD": "gf"}
# What runs torch: the two GPU services and the walk-forward worker (it trains and scores folds).
GPU_SERVICES = ("trainer", "inference", "pipeline-worker")
TOKEN_TARGET = "/run/secrets/hf_token"
# What inference's engines take of their GPU: Ray shares and vLLM memory (services/inference/settings.py).
FULL_MODEL_SETTINGS = (
    "HSIG_MAX_FULL_MODELS",
    "HSIG_FULL_MODEL_NUM_GPUS",
    "HSIG_FULL_MODEL_NUM_CPUS",
    "HSIG_FULL_MODEL_GPU_MEMORY_UTILIZATION",
    "HSIG_FULL_MODEL_KV_CACHE_GIB",
)


def _compose(compose_bin: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [compose_bin, "-f", str(REPO_ROOT / "docker-compose.gpu.yml"), *args],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", **env},
        cwd=REPO_ROOT,
        timeout=60,
    )


def _model(compose_bin: str, **env: str) -> dict:
    result = _compose(compose_bin, "config", "--format", "json", env={**SECRETS, **env})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def compose_model(compose_bin: str) -> dict:
    return _model(compose_bin)


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
    expected = {"postgres", "migrate", "ingest", "trainer", "inference", "backtest", "pipeline-worker"}
    expected |= {"prometheus", "grafana"}
    assert expected <= set(services)
    for name in expected - {"migrate"}:
        assert services[name].get("restart") == "unless-stopped", name
    for name in ("postgres", "inference", "prometheus", "grafana"):
        assert "healthcheck" in services[name], name


def test_gpu_services_reserve_a_gpu_and_shared_memory(compose_model: dict) -> None:
    for name in GPU_SERVICES:
        service = compose_model["services"][name]
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]
        assert int(service["shm_size"]) >= 8 * 2**30


def test_services_share_volumes_and_wait_for_migrations(compose_model: dict) -> None:
    for name in ("ingest", "trainer", "inference", "backtest", "pipeline-worker"):
        service = compose_model["services"][name]
        assert any(volume["source"] == "hsig-data" for volume in service["volumes"]), name
        assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_the_hf_token_is_a_secret_file_mounted_only_into_the_gpu_services(
    compose_bin: str, compose_model: dict
) -> None:
    assert compose_model["secrets"]["hf_token"]["file"] == str(DEPLOY / "no-hf-token")
    assert (DEPLOY / "no-hf-token").stat().st_size == 0, "no-hf-token must stay empty: it is committed"
    for name, service in compose_model["services"].items():
        mounted = [(secret["source"], secret["target"]) for secret in service.get("secrets", [])]
        assert mounted == ([("hf_token", TOKEN_TARGET)] if name in GPU_SERVICES else []), name
    for name in GPU_SERVICES:  # huggingface_hub reads the token from the file this names
        assert compose_model["services"][name]["environment"]["HF_TOKEN_PATH"] == TOKEN_TARGET
    chosen = _model(compose_bin, HF_TOKEN_FILE="/etc/headline-signal/hf_token", HF_TOKEN="hf_in_the_shell")
    assert chosen["secrets"]["hf_token"]["file"] == "/etc/headline-signal/hf_token"
    for name, service in chosen["services"].items():  # a token in the shell reaches no container
        environment = service.get("environment", {})
        assert "HF_TOKEN" not in environment and "hf_in_the_shell" not in json.dumps(environment), name
    # .env goes whole into every service (env_file): it must not invite a token.
    assert not any(line.startswith("HF_TOKEN=") for line in (DEPLOY / "env.example").read_text().splitlines())


def test_the_gpu_services_share_one_model_cache_and_stay_online(compose_bin: str) -> None:
    # The Makefile exports HF_HUB_OFFLINE=1 for local runs; a shell that has it must not leak into compose.
    services = _model(compose_bin, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")["services"]
    for name in GPU_SERVICES:
        service = services[name]
        cache = [volume["target"] for volume in service["volumes"] if volume["source"] == "model-cache"]
        assert cache == ["/var/cache/hsig"], name
        environment = service["environment"]
        assert environment["HF_HOME"].startswith("/var/cache/hsig/"), name
        assert environment["HF_HUB_OFFLINE"] == environment["TRANSFORMERS_OFFLINE"] == "0", name
        assert service["depends_on"]["model-cache-init"]["condition"] == "service_completed_successfully"
    # A new volume is root's: the one-shot hands it to the services' uid before they start.
    owner = services["model-cache-init"]
    assert owner["user"] == "0:0" and owner["entrypoint"] == ["chown", "10001:10001", "/var/cache/hsig"]
    for name in ("ingest", "backtest", "migrate"):
        assert all(volume["source"] != "model-cache" for volume in services[name].get("volumes", [])), name


def test_gpu_device_ids_come_from_the_settings(compose_bin: str, compose_model: dict) -> None:
    def devices(model: dict, name: str) -> list[dict]:
        return model["services"][name]["deploy"]["resources"]["reservations"]["devices"]

    for name in GPU_SERVICES:  # one GPU by default, shared by both; ids and count exclude each other
        assert devices(compose_model, name) == [
            {"capabilities": ["gpu"], "driver": "nvidia", "device_ids": ["0"]}
        ]
    split = _model(compose_bin, HSIG_TRAINER_GPUS="0,1,2,3", HSIG_INFERENCE_GPUS="4,5,6,7")
    assert devices(split, "trainer")[0]["device_ids"] == ["0,1,2,3"]
    assert devices(split, "inference")[0]["device_ids"] == ["4,5,6,7"]
    assert devices(split, "pipeline-worker")[0]["device_ids"] == ["0,1,2,3"]  # the trainer's, by default
    apart = _model(compose_bin, HSIG_TRAINER_GPUS="0,1,2", HSIG_WORKER_GPUS="3")
    assert devices(apart, "pipeline-worker")[0]["device_ids"] == ["3"]
    assert devices(apart, "trainer")[0]["device_ids"] == ["0,1,2"]


def test_inference_carries_the_full_model_settings_and_its_defaults_fit_one_gpu(
    compose_bin: str, compose_model: dict
) -> None:
    from services.inference.settings import InferenceSettings

    environment = compose_model["services"]["inference"]["environment"]
    assert set(FULL_MODEL_SETTINGS) <= set(environment)
    # Every HSIG_ variable set for inference alone (not the shared block every service gets) is
    # a real inference setting, and its value is valid for it.
    shared = set(compose_model["services"]["ingest"]["environment"]) - {"HSIG_PORT"}
    own = {
        key.removeprefix("HSIG_").lower(): value
        for key, value in environment.items()
        if key.startswith("HSIG_") and key not in shared
    }
    assert set(own) <= set(InferenceSettings.model_fields), set(own) - set(InferenceSettings.model_fields)
    settings = InferenceSettings(**own)
    # The defaults: one GPU shared by the base model's engine, one full fine-tune's and the trainer.
    assert settings.replica_num_gpus + settings.max_full_models * settings.full_model_num_gpus <= 1
    engines_memory = (
        settings.gpu_memory_utilization
        + settings.max_full_models * settings.full_model_gpu_memory_utilization
    )
    assert engines_memory <= 0.5, "the trainer on the same GPU keeps at least half of its memory"
    chosen = _model(compose_bin, HSIG_MAX_FULL_MODELS="3", HSIG_FULL_MODEL_NUM_GPUS="1")
    assert chosen["services"]["inference"]["environment"]["HSIG_MAX_FULL_MODELS"] == "3"
    assert chosen["services"]["inference"]["environment"]["HSIG_FULL_MODEL_NUM_GPUS"] == "1"


def test_backtest_has_no_gpu_and_scores_through_inference(compose_model: dict) -> None:
    backtest = compose_model["services"]["backtest"]
    assert backtest["image"].startswith("headline-signal/service:")  # the slim image: no torch
    assert "devices" not in backtest.get("deploy", {}).get("resources", {}).get("reservations", {})
    assert "secrets" not in backtest
    environment = backtest["environment"]
    assert environment["HSIG_INFERENCE_URL"] == "http://inference:8000"
    assert environment["HSIG_API_TOKEN"] == SECRETS["HSIG_API_TOKEN"]
    assert environment["DATABASE_URL"].startswith("postgresql://")  # the adapters table names what exists
    assert backtest["depends_on"]["inference"]["condition"] == "service_healthy"


def test_the_pipeline_worker_runs_what_the_backtest_api_queues(compose_model: dict) -> None:
    services = compose_model["services"]
    worker, backtest = services["pipeline-worker"], services["backtest"]
    assert worker["command"] == ["pipeline", "worker"]
    assert worker["image"].startswith("headline-signal/gpu:")  # it trains and scores with torch
    assert worker["restart"] == "unless-stopped"
    # It writes each walk-forward's state file where the API reads it back: one database, the
    # same reports directory on the same volume.
    for key in (
        "DATABASE_URL",
        "HSIG_REPORTS_DIR",
        "HSIG_DATA_DIR",
        "HSIG_ADAPTERS_DIR",
        "HSIG_INFERENCE_URL",
    ):
        assert worker["environment"][key] == backtest["environment"][key], key
    data = [v["target"] for v in worker["volumes"] if v["source"] == "hsig-data"]
    assert data == [v["target"] for v in backtest["volumes"] if v["source"] == "hsig-data"]
    assert worker["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "ports" not in worker and "HSIG_PORT" not in worker["environment"]
    # No port to probe: the image's HEALTHCHECK (GET /healthz on HSIG_PORT) would mark it
    # unhealthy forever, so the service turns it off.
    assert worker["healthcheck"] == {"disable": True}


def test_the_pipeline_worker_reads_its_settings_from_the_compose_environment(
    compose_model: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.backtest.settings import BacktestSettings
    from services.pipeline.reproduce import _as
    from services.trainer.settings import TrainerSettings

    for key, value in compose_model["services"]["pipeline-worker"]["environment"].items():
        monkeypatch.setenv(key, value)
    settings = BacktestSettings()  # what `hsig pipeline worker` reads; production checks included
    assert settings.environment == "production"
    assert settings.resolved_database_url == "postgresql://hsig:pw@postgres:5432/hsig"
    assert str(settings.reports_path) == "/var/lib/hsig/reports"
    trainer = _as(TrainerSettings, settings)  # what its inline training jobs read
    assert str(trainer.adapters_path) == "/var/lib/hsig/adapters"


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
