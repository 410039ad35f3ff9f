"""Each service starts without its database, says why it is not ready, and becomes ready when
the database answers, without a restart (issue 10 item 3).

The real service apps (their ``build_app``, their lifespans, their schedulers and workers) run
against a fresh PostgreSQL database reached through a TCP proxy that starts switched off:
"connection refused", as from a database that is not running. Then the proxy is switched on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import inspect

from services.common.db import get_engine
from tests.support.net import TcpProxy

pytestmark = pytest.mark.postgres
TOKEN = "test-token"


def _ingest(url: str, data_dir: Path) -> tuple[FastAPI, str]:
    from services.ingest.app import build_app
    from services.ingest.settings import IngestSettings

    settings = IngestSettings(database_url=url, data_dir=data_dir, api_token=TOKEN, feed_urls=[])
    return build_app(settings), "/v1/stats"


def _trainer(url: str, data_dir: Path) -> tuple[FastAPI, str]:
    from services.trainer.app import build_app
    from services.trainer.settings import TrainerSettings

    settings = TrainerSettings(database_url=url, data_dir=data_dir, api_token=TOKEN, worker_poll_seconds=0.2)
    return build_app(settings), "/v1/jobs"


def _backtest(url: str, data_dir: Path) -> tuple[FastAPI, str]:
    from services.backtest.app import build_app
    from services.backtest.settings import BacktestSettings

    settings = BacktestSettings(database_url=url, data_dir=data_dir, api_token=TOKEN, schedule_cron="off")
    return build_app(settings), "/v1/reports"


SERVICES: dict[str, Callable[[str, Path], tuple[FastAPI, str]]] = {
    "ingest": _ingest,
    "trainer": _trainer,
    "backtest": _backtest,
}


@pytest.fixture
def unreachable_postgres(empty_postgres_url: str) -> Iterator[tuple[str, TcpProxy]]:
    """A fresh, empty (unmigrated) database behind a proxy that is down: (its URL, the proxy)."""
    direct = empty_postgres_url
    proxy = TcpProxy(("127.0.0.1", int(direct.rsplit(":", 1)[1].split("/", 1)[0])))
    host, name = direct.rsplit("@", 1)[0], direct.rsplit("/", 1)[1]
    yield f"{host}@127.0.0.1:{proxy.port}/{name}", proxy
    proxy.down()
    get_engine(f"{host}@127.0.0.1:{proxy.port}/{name}").dispose()


def _ready_within(client: TestClient, seconds: float) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        response = client.get("/readyz")
        if response.status_code == 200 or time.monotonic() > deadline:
            return {**response.json(), "code": response.status_code}
        time.sleep(0.2)


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_a_service_starts_without_its_database_and_recovers(
    service: str, unreachable_postgres: tuple[str, TcpProxy], tmp_path: Path
) -> None:
    url, proxy = unreachable_postgres
    app, reads_database = SERVICES[service](url, tmp_path / "var")
    with TestClient(app) as client:  # the lifespan ran: the service started
        assert client.get("/healthz").json() == {"status": "ok", "service": service}
        not_ready = client.get("/readyz")
        assert not_ready.status_code == 503
        (reason,) = not_ready.json()["failures"]
        assert reason.startswith("database_ready: database unavailable: OperationalError")
        assert "refused" in reason.lower()
        down = client.get(reads_database)
        assert down.status_code == 503 and down.headers["Retry-After"]
        assert down.json()["error"]["message"] == "database unavailable; retry shortly"

        proxy.up()
        ready = _ready_within(client, 30)
        assert ready["code"] == 200, ready
        assert {"headlines", "training_jobs", "backtest_runs"} <= set(
            inspect(get_engine(url)).get_table_names()
        )
        assert client.get(reads_database).status_code == 200
        if service == "backtest":  # its start-up hooks ran once the database answered
            assert app.state.scheduler.scheduler.running
