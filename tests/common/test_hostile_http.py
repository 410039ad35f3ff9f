"""Hostile requests get a 4xx in the one error shape, never a plain-text 500 (issue 14 item 7)
and no body larger than HSIG_MAX_BODY_BYTES is read (issue 14, bounded requests)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import APIRouter, Request
from fastapi.testclient import TestClient

from services.common.http import create_app
from services.common.settings import CommonSettings

TOKEN = {"Authorization": "Bearer test-token"}


@pytest.fixture
def trainer(sqlite_url: str, tmp_path: Path) -> Iterator[TestClient]:
    from services.trainer.app import build_app
    from services.trainer.settings import TrainerSettings

    settings = TrainerSettings(
        database_url=sqlite_url, data_dir=tmp_path, api_token="test-token", worker_enabled=False
    )
    with TestClient(build_app(settings)) as client:
        yield client


@pytest.fixture
def backtest(sqlite_url: str, tmp_path: Path) -> Iterator[TestClient]:
    from services.backtest.app import build_app
    from services.backtest.settings import BacktestSettings

    settings = BacktestSettings(
        database_url=sqlite_url, data_dir=tmp_path, api_token="test-token", schedule_cron="off"
    )
    with TestClient(build_app(settings)) as client:
        yield client


def _is_error(response, status: int) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == status and error["message"]
    return error


@pytest.mark.parametrize("job_id", [2**63, 2**64 + 1, 10**30, 0, -1])
def test_ids_beyond_64_bits_are_422(trainer: TestClient, backtest: TestClient, job_id: int) -> None:
    assert _is_error(trainer.get(f"/v1/jobs/{job_id}"), 422)["param"] == "path.job_id"
    _is_error(trainer.post(f"/v1/jobs/{job_id}/cancel", headers=TOKEN), 422)
    _is_error(backtest.get(f"/v1/backtests/{job_id}"), 422)


def test_the_largest_id_is_a_404_not_an_error(trainer: TestClient, backtest: TestClient) -> None:
    _is_error(trainer.get(f"/v1/jobs/{2**63 - 1}"), 404)
    _is_error(backtest.get(f"/v1/backtests/{2**63 - 1}"), 404)


@pytest.mark.parametrize("name", ["9" * 4300, "9" * 20 + ".json", "²", "٣.html", "7.exe"])
def test_report_names_that_are_not_row_ids_are_400(backtest: TestClient, name: str) -> None:
    error = _is_error(backtest.get(f"/v1/reports/{name}"), 400)
    assert len(error["message"]) < 200  # the name is not echoed whole


def _echo_app(limit: int, sqlite_url: str) -> TestClient:
    router = APIRouter()

    @router.post("/v1/echo")
    async def echo(request: Request) -> dict[str, int]:
        return {"bytes": len(await request.body())}

    settings = CommonSettings(database_url=sqlite_url, api_token="x", max_body_bytes=limit)
    return TestClient(create_app("demo", settings, [router]))


def test_a_body_over_the_cap_is_413_declared_or_streamed(sqlite_url: str) -> None:
    with _echo_app(4096, sqlite_url) as client:
        assert client.post("/v1/echo", content=b"x" * 4096).json() == {"bytes": 4096}
        declared = client.post("/v1/echo", content=b"x" * 4097)
        assert "HSIG_MAX_BODY_BYTES" in _is_error(declared, 413)["message"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
            for _ in range(100):
                yield b"y" * 1000

        _is_error(client.post("/v1/echo", content=chunks()), 413)
        assert client.get("/healthz").status_code == 200


def test_a_gpu_request_on_a_host_without_one_is_400(trainer: TestClient) -> None:
    """``"device": "cuda"`` on a CPU host was a 500; QLoRA (CUDA-only) answered the same way."""
    import torch

    if torch.cuda.is_available():  # pragma: no cover - this host has a GPU: the case cannot arise
        pytest.skip("this host has CUDA")
    for config, param in (({"device": "cuda"}, "device"), ({"method": "qlora"}, "method")):
        body = {"name": "gpu-job", "base_model": "/nonexistent", **config}
        error = _is_error(trainer.post("/v1/jobs", json=body, headers=TOKEN), 400)
        assert error["param"] == param and "CUDA" in error["message"]
    assert trainer.get("/v1/jobs").json()["jobs"] == []
