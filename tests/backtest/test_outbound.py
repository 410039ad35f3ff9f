"""Secrets never follow a request (issue 14 item 2): a caller holding the API token cannot make
the backtest send a variable of its environment, or the service token, to a URL it chose.

A capturing listener (a real HTTP server on loopback) stands where a hostile caller's would.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from services.backtest.app import build_app
from services.backtest.settings import BacktestSettings
from services.common.settings import get_settings
from tests.backtest.conftest import START
from tests.backtest.standins import serving
from tests.support.waits import wait_for

AUTH = {"Authorization": "Bearer test-token"}


def _listener() -> tuple[FastAPI, list[dict[str, Any]]]:
    """Answers both contracts (OpenAI chat, inference predict) and records every request's auth."""
    seen: list[dict[str, Any]] = []
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> dict[str, Any]:
        seen.append({"path": "chat", "auth": request.headers.get("authorization")})
        message = {"role": "assistant", "content": "Increase"}
        return {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                "choices": [{"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}]}  # fmt: skip

    @app.post("/v1/predict")
    async def predict(request: Request) -> dict[str, Any]:
        seen.append({"path": "predict", "auth": request.headers.get("authorization")})
        items = (await request.json())["items"]
        probabilities = {"Increase": 0.6, "Decrease": 0.4}
        return {"predictions": [{"label": "Increase", "p_increase": 0.6, "probabilities": probabilities,
                                 "adapter": "base", "base_model": "m", "latency_ms": 1.0} for _ in items]}  # fmt: skip

    return app, seen


@pytest.fixture
def listener() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    app, seen = _listener()
    with serving(app) as url:
        yield url, seen


def _client(monkeypatch: pytest.MonkeyPatch, **env: str) -> TestClient:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    return TestClient(build_app(get_settings(BacktestSettings)))


def _body(predictor: dict[str, Any]) -> dict[str, Any]:
    return {"start": (START + timedelta(days=5)).isoformat(), "bootstrap_reps": 0, "predictors": [predictor]}


@pytest.mark.parametrize("key_env", ["HSIG_API_TOKEN", "HSIG_DATABASE_URL", "OPENAI_API_KEY"])
def test_a_request_cannot_choose_where_a_key_goes_or_which_key(
    backtest_settings: BacktestSettings, market: dict, listener, monkeypatch: pytest.MonkeyPatch, key_env: str
) -> None:
    url, seen = listener
    monkeypatch.setenv("OPENAI_API_KEY", "sk-operator")
    with _client(monkeypatch) as client:
        specs = [
            {"kind": "openai", "model": "m", "base_url": f"{url}/v1", "api_key_env": key_env},
            {"kind": "openai", "model": "m", "base_url": f"{url}/v1"},
        ]
        if key_env != "OPENAI_API_KEY":  # OpenAI's own host with its own key is the operator's pairing
            specs.append({"kind": "openai", "model": "m", "api_key_env": key_env})
        for spec in specs:
            refused = client.post("/v1/backtests", json=_body(spec), headers=AUTH)
            assert refused.status_code == 400, refused.text
            assert refused.json()["error"]["param"] in ("base_url", "api_key_env")
        assert client.get("/v1/reports", params={"state": ""}).json() == []  # nothing queued
    assert seen == []  # the listener never heard from the backtest


def test_an_operator_listed_endpoint_gets_its_own_key_only(
    backtest_settings: BacktestSettings, market: dict, listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, seen = listener
    host = url.removeprefix("http://")
    monkeypatch.setenv("STANDIN_KEY", "sk-standin")
    with _client(monkeypatch, HSIG_OPENAI_ENDPOINTS=f"{host}=STANDIN_KEY") as client:
        accepted = client.post(
            "/v1/backtests",
            json=_body({"kind": "openai", "model": "m", "base_url": f"{url}/v1"}),
            headers=AUTH,
        )
        assert accepted.status_code == 202, accepted.text
        run = _finished(client, accepted.json()["id"])
        assert run["state"] == "succeeded", run["error"]
    assert seen and {call["auth"] for call in seen} == {"Bearer sk-standin"}


def test_the_service_token_never_goes_to_a_caller_given_url(
    backtest_settings: BacktestSettings, market: dict, listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, seen = listener
    spec = {"kind": "service", "adapter": "base", "url": url}
    with _client(monkeypatch) as client:
        refused = client.post("/v1/backtests", json=_body(spec), headers=AUTH)
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "url"
    assert seen == []
    host = url.removeprefix("http://")
    with _client(monkeypatch, HSIG_INFERENCE_ALLOWED_HOSTS=host) as client:  # allowed: no token
        run = _finished(client, client.post("/v1/backtests", json=_body(spec), headers=AUTH).json()["id"])
        assert run["state"] == "succeeded", run["error"]
    assert seen and {call["auth"] for call in seen} == {None}
    seen.clear()
    with _client(monkeypatch, HSIG_INFERENCE_URL=url) as client:  # the configured service: the token
        run = _finished(client, client.post("/v1/backtests", json=_body(spec), headers=AUTH).json()["id"])
        assert run["state"] == "succeeded", run["error"]
    assert {call["auth"] for call in seen} == {"Bearer test-token"}


def _finished(client: TestClient, run_id: int) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        run = client.get(f"/v1/backtests/{run_id}").json()
        return run if run["state"] in ("succeeded", "failed") else None

    return wait_for(finished, seconds=60, what=f"run {run_id} to finish")


def test_credentials_in_a_predictor_url_are_never_shown(
    backtest_settings: BacktestSettings, market: dict
) -> None:
    """Issue 14 item 9 for the backtest: an inference URL carrying credentials fails without them."""
    from services.backtest.predictors.service import ServicePredictor
    from services.backtest.rows import load_rows
    from services.common.errors import HsigError
    from tests.support.net import free_port

    url = f"http://robot:hunter2@127.0.0.1:{free_port()}/?token=s3cr3t"  # nothing listens there
    rows = load_rows(backtest_settings.resolved_database_url, "BTC/USD", "1h", START + timedelta(days=15))
    predictor = ServicePredictor("base", "base", url, backtest_settings.resolved_database_url, retries=0)
    with pytest.raises(HsigError) as raised:
        predictor.predict(rows)
    assert "127.0.0.1" in raised.value.message
    assert "hunter2" not in raised.value.message and "s3cr3t" not in raised.value.message
