"""The HTTP API on the real app (lifespan, scheduler thread, database on both dialects)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from services.backtest.app import build_app
from services.backtest.settings import BacktestSettings
from tests.backtest.conftest import START, register_adapter
from tests.support.waits import wait_for

AUTH = {"Authorization": "Bearer test-token"}
BODY = {"title": "API run", "start": (START + timedelta(days=5)).isoformat(), "bootstrap_reps": 100}


@pytest.fixture
def client(backtest_settings: BacktestSettings, market: dict) -> Iterator[TestClient]:
    with TestClient(build_app(backtest_settings)) as test_client:
        yield test_client


def _wait_for(client: TestClient, run_id: int, timeout_seconds: float = 60) -> dict:
    def finished() -> dict | None:
        run = client.get(f"/v1/backtests/{run_id}").json()
        return run if run["state"] in ("succeeded", "failed") else None

    return wait_for(finished, seconds=timeout_seconds, what=f"run {run_id} to finish")


def test_post_runs_a_backtest_and_serves_its_report(client: TestClient) -> None:
    answer = client.post("/v1/backtests", json=BODY, headers=AUTH)
    assert answer.status_code == 202, answer.text
    run_id = answer.json()["id"]
    assert answer.headers["location"] == f"/v1/backtests/{run_id}"
    run = _wait_for(client, run_id)
    assert run["state"] == "succeeded", run
    assert run["html_url"] == f"/v1/reports/{run_id}.html"
    listed = client.get("/v1/reports").json()
    assert [r["id"] for r in listed] == [run_id]
    report = client.get(f"/v1/reports/{run_id}.json")
    assert report.headers["content-type"].startswith("application/json")
    assert report.json()["title"] == "API run"
    page = client.get(f"/v1/reports/{run_id}.html")
    assert page.headers["content-type"].startswith("text/html") and 'id="equity"' in page.text
    assert client.get(f"/v1/reports/{run_id}?format=html").text == page.text
    metrics = client.get("/metrics").text
    accuracy = report.json()["summary"][0]["accuracy"]
    assert f'hsig_backtest_accuracy{{predictor="always_increase"}} {accuracy}' in metrics
    assert 'hsig_backtest_biased{predictor="always_increase"} 1.0' in metrics
    assert "hsig_backtest_last_report_timestamp_seconds" in metrics
    assert 'hsig_backtest_runs_total{outcome="succeeded",trigger="api"}' in metrics


def test_a_repeated_post_with_an_idempotency_key_starts_one_run(client: TestClient) -> None:
    keyed = {**AUTH, "Idempotency-Key": "backtest-retry-1"}
    first = client.post("/v1/backtests", json=BODY, headers=keyed)
    assert first.status_code == 202, first.text
    assert "idempotent-replayed" not in first.headers
    again = client.post("/v1/backtests", json=BODY, headers=keyed)
    assert again.status_code == 202 and again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["location"] == f"/v1/backtests/{first.json()['id']}"
    other = client.post("/v1/backtests", json={**BODY, "title": "another"}, headers=keyed)
    assert other.status_code == 409 and "different request" in other.json()["error"]["message"]
    malformed = client.post("/v1/backtests", json=BODY, headers={**AUTH, "Idempotency-Key": "has space"})
    assert malformed.status_code == 400 and malformed.json()["error"]["param"] == "Idempotency-Key"
    assert _wait_for(client, first.json()["id"])["state"] == "succeeded"
    assert [run["id"] for run in client.get("/v1/reports", params={"state": ""}).json()] == [
        first.json()["id"]
    ]


def test_post_needs_the_token(client: TestClient) -> None:
    assert client.post("/v1/backtests", json=BODY).status_code == 401
    assert (
        client.post("/v1/backtests", json=BODY, headers={"Authorization": "Bearer wrong"}).status_code == 403
    )


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"start": "2030-01-01T00:00:00Z"}, 400, "no labelled rows for BTC/USD 1h between 2030"),
        ({"predictors": [{"kind": "service", "adapter": "ghost"}]}, 404, "adapter 'ghost' is not registered"),
        ({"predictors": [{"kind": "baseline", "name": "oracle"}]}, 422, "predictors.0.baseline.name"),
        ({"start": "2019-01-02T00:00:00Z", "end": "2019-01-01T00:00:00Z"}, 422, "is not before end"),
        ({"fees_bps": -1}, 422, "fees_bps"),
    ],
)
def test_bad_requests_are_refused_with_a_message(
    client: TestClient, body: dict, status: int, message: str
) -> None:
    answer = client.post("/v1/backtests", json=body, headers=AUTH)
    assert answer.status_code == status, answer.text
    assert message in answer.json()["error"]["message"]
    assert client.get("/v1/reports", params={"state": ""}).json() == []  # nothing was queued


def test_leakage_is_refused_over_http(client: TestClient, backtest_settings: BacktestSettings) -> None:
    register_adapter(backtest_settings.resolved_database_url, "btc-lora", START + timedelta(days=6))
    body = {**BODY, "predictors": [{"kind": "service", "adapter": "btc-lora"}]}
    answer = client.post("/v1/backtests", json=body, headers=AUTH)
    assert answer.status_code == 400
    assert "refusing to score adapters on rows they may have trained on" in answer.json()["error"]["message"]


def test_unknown_reports(client: TestClient) -> None:
    assert client.get("/v1/reports/999.json").status_code == 404
    assert client.get("/v1/backtests/999").status_code == 404
    assert client.get("/v1/reports/abc.pdf").status_code == 400
    assert client.get("/healthz").json()["status"] == "ok"
    assert client.get("/readyz").status_code == 200
