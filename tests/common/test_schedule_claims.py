"""Slot claims on both databases: of racing claimers exactly one wins, prune deletes old claims
only, and migration 0003 keeps the rows stored before it."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import inspect, select, text

from services.common import schedule_claims
from services.common.db import session_scope
from services.common.db.models import BacktestRun, ScheduleClaim, utcnow
from services.common.schedule_claims import claim, prune
from tests.conftest import stored_at


def _claims(url: str) -> list[tuple[str, str, str]]:
    with session_scope(url) as session:
        rows = session.scalars(select(ScheduleClaim).order_by(ScheduleClaim.job, ScheduleClaim.slot))
        return [(row.job, row.slot, row.holder) for row in rows]


def test_racing_claims_have_exactly_one_winner(db_url: str) -> None:
    start = threading.Barrier(8)

    def contend(number: int) -> bool:
        start.wait()
        return claim(db_url, "ingest-feeds", "5916160", holder=f"replica-{number}")

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(contend, range(8)))
    assert results.count(True) == 1
    assert _claims(db_url) == [("ingest-feeds", "5916160", f"replica-{results.index(True)}")]


def test_a_claim_is_per_job_and_slot(db_url: str) -> None:
    assert claim(db_url, "ingest-feeds", "1") is True
    assert claim(db_url, "ingest-feeds", "1") is False  # the same process too: it is the slot's
    assert claim(db_url, "ingest-feeds", "2") is True
    assert claim(db_url, "ingest-candles", "1") is True
    assert [(job, slot) for job, slot, _ in _claims(db_url)] == [
        ("ingest-candles", "1"),
        ("ingest-feeds", "1"),
        ("ingest-feeds", "2"),
    ]
    assert _claims(db_url)[0][2] == schedule_claims.HOLDER  # hostname:pid


def _store_claim(url: str, job: str, slot: str, age: timedelta) -> None:
    with session_scope(url) as session:
        session.add(ScheduleClaim(job=job, slot=slot, holder="h:1", claimed_at=utcnow() - age))


def test_prune_deletes_old_claims_only(db_url: str) -> None:
    _store_claim(db_url, "a", "old", timedelta(days=8))
    _store_claim(db_url, "a", "older", timedelta(days=30))
    _store_claim(db_url, "a", "recent", timedelta(days=6))
    _store_claim(db_url, "b", "new", timedelta(0))
    assert prune(db_url, timedelta(days=7)) == 2
    assert [slot for _, slot, _ in _claims(db_url)] == ["recent", "new"]
    assert prune(db_url, timedelta(days=7)) == 0
    assert prune(db_url, utcnow() - timedelta(days=1)) == 1  # a cutoff time works too
    assert [slot for _, slot, _ in _claims(db_url)] == ["new"]


def test_winning_claims_prune_now_and_then(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _store_claim(db_url, "a", "old", schedule_claims.KEEP + timedelta(hours=1))
    monkeypatch.setattr(schedule_claims, "PRUNE_EVERY", 1)
    assert claim(db_url, "a", "new") is True
    assert [slot for _, slot, _ in _claims(db_url)] == ["new"]


def test_the_migration_keeps_rows_stored_before_it(db_url: str) -> None:
    with stored_at(db_url, "0002") as connection:
        assert "schedule_claims" not in inspect(connection).get_table_names()
        connection.execute(
            text(
                'INSERT INTO backtest_runs (state, "trigger", config, attempts, summary, created_at)'
                " VALUES ('running', 'api', '{}', 1, '{}', CURRENT_TIMESTAMP)"
            )
        )
    with session_scope(db_url) as session:
        run = session.scalars(select(BacktestRun)).one()
    assert (run.state, run.attempts, run.holder, run.heartbeat_at) == ("running", 1, None, None)
    assert claim(db_url, "a", "1") is True and claim(db_url, "a", "1") is False
