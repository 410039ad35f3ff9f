"""Ingest fixtures: settings on the test database, local feed and exchange servers."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.common.settings import get_settings
from services.ingest.settings import IngestSettings
from services.pipeline.replay_server import ReplayServer, recorded_routes
from tests.conftest import DATA_DIR

RSS_DIR = DATA_DIR / "cnbc_rss"
SNAPSHOTS = sorted(RSS_DIR.glob("*.xml"))
EXCHANGE_DIR = DATA_DIR / "exchange_ohlcv"
T0 = datetime(2024, 1, 1, tzinfo=UTC)


@pytest.fixture
def ingest_settings(db_url: str, settings_env: Path, monkeypatch: pytest.MonkeyPatch) -> IngestSettings:
    """Settings on the per-test database (SQLite and PostgreSQL), no feeds, short timeouts."""
    monkeypatch.setenv("HSIG_DATABASE_URL", db_url)
    get_settings.cache_clear()
    return IngestSettings(feed_urls=[], http_timeout_seconds=2.0, scheduler_enabled=False)


@pytest.fixture
def server() -> Iterator[ReplayServer]:
    with ReplayServer() as replay:
        yield replay


@pytest.fixture(scope="module")
def recorded_exchange() -> Iterator[ReplayServer]:
    with ReplayServer(recorded_routes(EXCHANGE_DIR)) as replay:
        yield replay


def snapshot(index: int) -> bytes:
    return SNAPSHOTS[index].read_bytes()
