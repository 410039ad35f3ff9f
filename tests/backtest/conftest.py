"""Backtest fixtures: labelled rows written straight into the database.

The rows follow the labelling contract of DESIGN.md (entry: open of the first candle opening
at or after the headline; exit: close of the candle ending one horizon later) on a seeded
random-walk price path. This stand-in for the ingest service's labeller keeps these tests
independent of it; the reproduce test uses the real one on the bundled data.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from services.backtest.app import build_app
from services.backtest.settings import BacktestSettings
from services.common.db import session_scope
from services.common.db.models import Adapter, BacktestRun, Candle, Headline, LabelledRow
from services.common.schemas import AdapterManifest
from services.common.settings import get_settings
from tests.support.waits import wait_for
from tests.trainer.planted import insert_rows, planted_rows

START = datetime(2019, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)
# A walk-forward of two folds on the walk-forward fixtures' 200 planted hourly rows from
# 2020-01-01 (the tests/pipeline walk-forward's settings); a test adds its name.
WALK_FORWARD_PLAN = {
    "model": "tiny",
    "methods": ["lora"],
    "train_days": 4,
    "test_days": 1,
    "k": 2,
    "max_steps": 4,
    "include_base": False,
    "baselines": ["always_increase", "majority"],
    "bootstrap_reps": 100,
}


def stored_runs(url: str) -> list[BacktestRun]:
    """Every backtest run in the database, oldest first."""
    with session_scope(url) as session:
        return list(session.scalars(select(BacktestRun).order_by(BacktestRun.id)).all())


def wait_until(condition: Callable[[], object], timeout_seconds: float = 60.0) -> None:
    wait_for(condition, seconds=timeout_seconds, what="the scheduler", interval=0.05)


def seed_market(url: str, hours: int = 400, headlines: int = 600, seed: int = 7) -> dict[str, int]:
    """Write ``hours`` hourly candles and ``headlines`` labelled rows; several share a window."""
    rng = np.random.default_rng(seed)
    closes = 5000 * np.exp(np.cumsum(rng.normal(0, 0.01, hours)))
    opens = np.concatenate([[5000.0], closes[:-1]])
    minutes = np.sort(rng.integers(0, (hours - 2) * 60, headlines))
    with session_scope(url) as session:
        for i in range(hours):
            session.add(
                Candle(
                    exchange="test", symbol="BTC/USD", timeframe="1h", open_time=START + i * HOUR,
                    open=float(opens[i]), high=float(max(opens[i], closes[i])), low=float(min(opens[i], closes[i])),
                    close=float(closes[i]), volume=1.0,
                )
            )  # fmt: skip
        for number, minute in enumerate(minutes):
            published = START + timedelta(minutes=int(minute), seconds=1)
            entry_index = int(minute) // 60 + 1  # the candle opening after the headline
            entry, exit_ = float(opens[entry_index]), float(closes[entry_index])
            headline = Headline(
                source="test", guid=f"g{number}", title=f"Headline number {number} about markets",
                title_key=f"headline {number}", published_at=published, payload_sha256="0" * 64,
            )  # fmt: skip
            session.add(headline)
            session.flush()
            session.add(
                LabelledRow(
                    headline_id=headline.id, exchange="test", symbol="BTC/USD", timeframe="1h", horizon="1h",
                    headline_time=published, entry_time=START + entry_index * HOUR,
                    exit_time=START + (entry_index + 1) * HOUR, entry_price=entry, exit_price=exit_,
                    return_=exit_ / entry - 1, label="Increase" if exit_ > entry else "Decrease",
                    market_situation="Small increase after a small decrease", situation_candles=[],
                )
            )  # fmt: skip
    return {"hours": hours, "headlines": headlines}


def register_adapter(
    url: str, name: str, last_row_time: datetime, embargo_s: float = 3600.0, path: str = "/x"
) -> None:
    manifest = {
        "name": name, "version": 1, "base_model": "tiny", "method": "lora", "task": "btc-trend",
        "training_window": {"first_row_time": START.isoformat(), "last_row_time": last_row_time.isoformat(),
                            "embargo_seconds": embargo_s},
    }  # fmt: skip
    with session_scope(url) as session:
        session.add(Adapter.from_manifest(AdapterManifest.model_validate(manifest), path))


@pytest.fixture
def backtest_settings(
    settings_env: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[BacktestSettings]:
    """Settings on a fresh data dir and the test database (both dialects), bootstrap kept small."""
    monkeypatch.setenv("HSIG_DATABASE_URL", db_url)
    monkeypatch.setenv("HSIG_BOOTSTRAP_REPS", "200")
    monkeypatch.setenv("HSIG_SCHEDULE_CRON", "off")
    get_settings.cache_clear()
    yield get_settings(BacktestSettings)
    get_settings.cache_clear()


@pytest.fixture
def market(backtest_settings: BacktestSettings) -> dict[str, int]:
    return seed_market(backtest_settings.resolved_database_url)


@pytest.fixture
def wf_env() -> dict[str, str]:
    """More environment for ``wf_settings`` (a module overrides this fixture)."""
    return {}


@pytest.fixture
def wf_settings(
    settings_env: Path,
    db_url: str,
    tiny_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    wf_env: dict[str, str],
) -> Iterator[BacktestSettings]:
    """A walk-forward's backtest settings: the test database holding 200 planted hourly rows
    (``WALK_FORWARD_PLAN``'s two folds), the tiny model under the models volume."""
    monkeypatch.setenv("HSIG_DATABASE_URL", db_url)
    monkeypatch.setenv("HSIG_SCHEDULE_CRON", "off")
    monkeypatch.setenv("HSIG_BOOTSTRAP_REPS", "100")
    for name, value in wf_env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    settings = get_settings(BacktestSettings)
    insert_rows(db_url, planted_rows(200))
    # "tiny" is built on first use under the models volume: the session's copy saves the build.
    shutil.copytree(tiny_model_dir, settings.models_path / "tiny-llama")
    yield settings
    get_settings.cache_clear()


@pytest.fixture
def wf_client(wf_settings: BacktestSettings) -> Iterator[TestClient]:
    """The real backtest app on ``wf_settings``."""
    with TestClient(build_app(wf_settings)) as test_client:
        yield test_client
