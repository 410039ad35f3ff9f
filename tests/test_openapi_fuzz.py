"""schemathesis over each service's own OpenAPI, with the token: valid and invalid requests all
get an answer below 500 in the one error shape (issue 14; inference has its own, on the live
stack, in tests/inference/test_validation.py). In-process through ASGI, bounded examples."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.support.net import free_port

TOKEN = "test-token"
EXAMPLES = 25


def _ingest(url: str, data_dir: Path) -> FastAPI:
    from services.ingest.app import build_app
    from services.ingest.settings import IngestSettings

    # No feed and an exchange that refuses at once: a fuzzed POST /v1/ingest/run leaves the host.
    settings = IngestSettings(
        database_url=url, data_dir=data_dir, api_token=TOKEN, feed_urls=[], scheduler_enabled=False,
        exchange_api_url=f"http://127.0.0.1:{free_port()}", candle_max_pages=1,
    )  # fmt: skip
    return build_app(settings)


def _trainer(url: str, data_dir: Path) -> FastAPI:
    from services.trainer.app import build_app
    from services.trainer.settings import TrainerSettings

    return build_app(
        TrainerSettings(database_url=url, data_dir=data_dir, api_token=TOKEN, worker_enabled=False)
    )


def _backtest(url: str, data_dir: Path) -> FastAPI:
    from services.backtest.app import build_app
    from services.backtest.settings import BacktestSettings

    settings = BacktestSettings(
        database_url=url, data_dir=data_dir, api_token=TOKEN, schedule_cron="off", bootstrap_reps=0
    )
    return build_app(settings)


SERVICES: dict[str, Callable[[str, Path], FastAPI]] = {
    "ingest": _ingest,
    "trainer": _trainer,
    "backtest": _backtest,
}


@pytest.mark.parametrize("mode", ["positive", "negative"])
@pytest.mark.parametrize("service", sorted(SERVICES))
def test_fuzzed_requests_never_get_a_5xx(service: str, mode: str, tmp_path: Path) -> None:
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable

    app = SERVICES[service](f"sqlite:///{tmp_path / 'fuzz.db'}", tmp_path / "var")
    failures: list[str] = []
    fuzzed = 0
    with TestClient(app):  # the lifespan runs: migrated, scheduler and hooks started
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        for operation in schema.get_all_operations():
            operation = operation.ok()

            @settings(
                max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None
            )
            @given(case=operation.as_strategy(generation_mode=schemathesis.GenerationMode(mode)))
            def check(case: schemathesis.Case) -> None:
                response = case.call(headers={"Authorization": f"Bearer {TOKEN}"})
                if response.status_code >= 500:
                    failures.append(
                        f"{case.method} {case.formatted_path} -> {response.status_code} {response.text[:200]}"
                    )
                elif response.status_code >= 400 and "json" in response.headers.get("content-type", ""):
                    assert "error" in response.json(), response.text[:200]  # the one error shape

            try:
                check()
                fuzzed += 1
            except Unsatisfiable:  # no invalid request exists for it (GET /healthz): nothing to try
                continue
    total = len(list(schema.get_all_operations()))
    assert fuzzed == total if mode == "positive" else fuzzed >= 1, f"{fuzzed} of {total} operations fuzzed"
    assert not failures, failures[:5]
