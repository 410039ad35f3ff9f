"""The ingest HTTP API through FastAPI's TestClient (real app, real database, lifespan run)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from services.ingest.app import build_app
from services.ingest.settings import IngestSettings
from services.pipeline.replay_server import CoinbaseSeries, FeedSequence, ReplayServer, generated_series

AUTH = {"Authorization": "Bearer test-token"}
H = 3600


# The service pulls candles up to the real clock: the replay series ends at the real "now".
NOW = datetime.now(UTC)
T0 = NOW.replace(minute=0, second=0, microsecond=0) - timedelta(hours=25)


@pytest.fixture
def client(ingest_settings: IngestSettings, server: ReplayServer) -> Iterator[TestClient]:
    feed = (
        '<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>'
        + "".join(
            f"<item><title>Story {h}</title><pubDate>{(T0 + timedelta(hours=h, minutes=15)):%a, %d %b %Y %H:%M} GMT"
            f"</pubDate><guid>g{h}</guid></item>"
            for h in range(1, 20)
        )
        + "</channel></rss>"
    ).encode()
    server.routes["/feed"] = FeedSequence([feed])
    server.routes.update(CoinbaseSeries(generated_series(T0, 26, H), H, NOW).routes())
    settings = ingest_settings.model_copy(
        update={"feed_urls": [f"{server.url}/feed"], "exchange_api_url": server.url, "candle_since": T0}
    )
    with TestClient(build_app(settings)) as test_client:
        yield test_client


def test_run_needs_a_token_then_fills_rows(client: TestClient) -> None:
    assert client.post("/v1/ingest/run").status_code == 401
    assert client.post("/v1/ingest/run", headers={"Authorization": "Bearer nope"}).status_code == 403
    response = client.post("/v1/ingest/run", headers=AUTH)
    assert response.status_code == 200, response.text
    stored = {source["source"].split(":")[0]: source["stored"] for source in response.json()["sources"]}
    assert stored["rss"] == 19 and stored["label"] == 19
    assert stored["candles"] > 0

    lines = client.get("/v1/rows").text.splitlines()
    assert len(lines) == 19
    first = json.loads(lines[0])
    assert first["headline"] == "Story 1" and first["label"] in {"Increase", "Decrease"}
    assert datetime.fromisoformat(first["entry_time"]) == T0 + timedelta(hours=2)

    start, end = (T0 + timedelta(hours=5)).isoformat(), (T0 + timedelta(hours=8)).isoformat()
    ranged = client.get("/v1/rows", params={"start": start, "end": end})
    assert [json.loads(line)["headline"] for line in ranged.text.splitlines()] == [
        "Story 5",
        "Story 6",
        "Story 7",
    ]

    csv = client.get("/v1/rows", headers={"Accept": "text/csv"})
    assert csv.headers["content-type"].startswith("text/csv")
    frame = pd.read_csv(io.StringIO(csv.text))
    assert len(frame) == 19 and "return" in frame.columns

    parquet = client.get("/v1/rows", params={"format": "parquet"})
    assert pd.read_parquet(io.BytesIO(parquet.content))["headline"].tolist()[:2] == ["Story 1", "Story 2"]

    stats = client.get("/v1/stats").json()
    assert stats["headlines"]["count"] == 19 and stats["labelled_rows"]["count"] == 19


@pytest.mark.parametrize(
    ("params", "status", "param"),
    [
        ({"format": "xml"}, 400, "format"),
        ({"start": "2024-01-01T05:00:00"}, 422, "query.start"),  # naive: refused, never guessed
        ({"start": "2024-02-01T00:00:00Z", "end": "2024-01-01T00:00:00Z"}, 400, "start"),
        ({"limit": "0"}, 422, "query.limit"),
    ],
)
def test_bad_row_queries_get_clear_errors(
    client: TestClient, params: dict[str, str], status: int, param: str
) -> None:
    response = client.get("/v1/rows", params=params)
    assert response.status_code == status
    assert response.json()["error"]["param"] == param


def test_health_readiness_and_metrics(client: TestClient) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    assert client.get("/readyz").json()["status"] == "ready"
    client.post("/v1/ingest/run", headers=AUTH)
    text = client.get("/metrics").text
    for name in (
        "hsig_ingest_items_total",
        "hsig_ingest_cycle_duration_seconds_bucket",
        "hsig_ingest_last_success_timestamp_seconds",
        "hsig_ingest_labelled_rows_total",
    ):
        assert name in text


def test_scheduler_polls_on_its_own(ingest_settings: IngestSettings, server: ReplayServer) -> None:
    """With the scheduler on, feeds are polled without anyone calling /v1/ingest/run."""
    import time

    from services.common.db import session_scope
    from services.common.db.models import Headline
    from services.ingest.cycle import feed_source

    server.routes["/feed"] = FeedSequence(
        [(Path(__file__).parents[2] / "data/cnbc_rss").glob("*.xml").__next__().read_bytes()]
    )
    settings = ingest_settings.model_copy(
        update={
            "feed_urls": [f"{server.url}/feed", f"{server.url}/missing"],  # one good, one 404
            "scheduler_enabled": True,
            "feed_interval_seconds": 0.3,
            "candle_interval_seconds": 3600.0,
            "label_interval_seconds": 3600.0,
            "exchange_api_url": server.url,
        }
    )
    with TestClient(build_app(settings)):
        deadline = time.monotonic() + 20
        polls = 0
        while time.monotonic() < deadline and polls < 3:
            polls = server.requests.count("/feed")
            time.sleep(0.1)
    assert polls >= 3  # polled repeatedly (then 304s), the failing feed beside it changed nothing
    with session_scope(settings.resolved_database_url) as session:
        assert session.query(Headline).count() == 30
        from services.common.db.models import SourceState

        failing = session.get(SourceState, feed_source(f"{server.url}/missing"))
        assert failing is not None and "http_404" in (failing.last_error or "")
