"""Idempotency keys on both databases: a repeat returns the first row, a reused key with
another body is a conflict, racing requests create one row, and the migration that added the
column keeps the rows stored before it."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import func, select, text

from services.common.db import session_scope
from services.common.db.models import TrainingJob
from services.common.errors import Conflict, InvalidInput
from services.common.idempotency import checked, create_once
from tests.conftest import stored_at

BODY = {"name": "job", "optim": {"max_steps": 10}}


def _create(url: str, key: str | None, body: dict = BODY) -> tuple[TrainingJob, bool]:
    return create_once(url, TrainingJob, key, body, lambda: TrainingJob(state="queued", config=body))


def _count(url: str) -> int:
    with session_scope(url) as session:
        return session.scalar(select(func.count()).select_from(TrainingJob))


def test_a_repeat_returns_the_first_row_and_creates_nothing(db_url: str) -> None:
    first, first_replayed = _create(db_url, "key-1")
    again, again_replayed = _create(db_url, "key-1")
    assert (first_replayed, again_replayed) == (False, True)
    assert again.id == first.id and _count(db_url) == 1
    other, _ = _create(db_url, "key-2")
    unkeyed = [_create(db_url, None)[0].id for _ in range(2)]
    assert len({first.id, other.id, *unkeyed}) == 4  # no key: every request is new work


def test_a_key_reused_for_another_body_is_a_conflict(db_url: str) -> None:
    _create(db_url, "key-1")
    with pytest.raises(Conflict, match="'key-1' was used for a different request"):
        _create(db_url, "key-1", {**BODY, "name": "another"})
    assert _count(db_url) == 1


def test_racing_requests_with_one_key_create_one_row(db_url: str) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _: _create(db_url, "race"), range(8)))
    assert len({row.id for row, _ in results}) == 1
    assert sum(not replayed for _, replayed in results) == 1
    assert _count(db_url) == 1


@pytest.mark.parametrize("key", ["", "has space", "x" * 129, "caf\u00e9", "tab\there"])
def test_malformed_keys_are_refused(key: str) -> None:
    with pytest.raises(InvalidInput, match="Idempotency-Key must be"):
        checked(key)


def test_well_formed_keys_pass() -> None:
    assert checked("2f1c-4a9e_retry.1") == "2f1c-4a9e_retry.1"
    assert checked(None) is None


def test_the_migration_keeps_rows_stored_before_it(db_url: str) -> None:
    with stored_at(db_url, "0001") as connection:
        connection.execute(
            text(
                "INSERT INTO training_jobs (state, config, step, total_steps, attempts, metrics, created_at)"
                " VALUES ('queued', '{}', 0, 5, 0, '{}', CURRENT_TIMESTAMP)"
            )
        )
    with session_scope(db_url) as session:
        job = session.scalars(select(TrainingJob)).one()
    assert job.total_steps == 5 and job.idempotency_key is None
