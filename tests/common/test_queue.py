"""The one work queue (services/common/queue.py) on SQLite and PostgreSQL, on both of its tables:
claims are exclusive, an expired lease is taken over and its old holder's writes refused,
attempts run out, retry delays hold, cancel and release settle, idempotency keys replay."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update

from services.common.db import session_scope
from services.common.db.models import BacktestRun, TrainingJob, utcnow
from services.common.errors import Conflict, NotFound
from services.common.queue import FINAL, Claim, State, WorkQueue, new_holder


@pytest.fixture(params=["jobs", "runs"])
def queue(request: pytest.FixtureRequest) -> WorkQueue[Any]:
    """The queue over training jobs, and over backtest runs: the operations are the same."""
    model = TrainingJob if request.param == "jobs" else BacktestRun
    return WorkQueue(model, noun="item", not_found="no item {id}", param="id")


def add(queue: WorkQueue[Any], url: str, count: int = 1) -> list[int]:
    return [queue.submit(url, {"n": n})[0].id for n in range(count)]


def lapse(queue: WorkQueue[Any], url: str, item_id: int, minutes: float = 5) -> None:
    """The holder stopped renewing its lease ``minutes`` ago."""
    with session_scope(url) as session:
        session.execute(
            update(queue.model)
            .where(queue.model.id == item_id)
            .values(heartbeat_at=utcnow() - timedelta(minutes=minutes))
        )


def test_states_are_strings_with_one_vocabulary() -> None:
    assert [state.value for state in State] == [
        "queued", "retrying", "running", "cancelling", "succeeded", "failed", "cancelled"
    ]  # fmt: skip
    assert State.RUNNING == "running" and f"{State.RETRYING}" == "retrying"
    assert set(FINAL) == {"succeeded", "failed", "cancelled"}
    assert new_holder("x").startswith("x:") and new_holder("x") != new_holder("x")


def test_of_two_holders_racing_for_an_item_one_wins(db_url: str, queue: WorkQueue[Any]) -> None:
    (item_id,) = add(queue, db_url)
    start = threading.Barrier(2)

    def race(holder: str) -> Claim | None:
        start.wait()
        return queue.claim(db_url, holder, item_id)

    with ThreadPoolExecutor(max_workers=2) as pool:
        claims = list(pool.map(race, ["a", "b"]))
    won = [claim for claim in claims if claim is not None]
    assert len(won) == 1 and won[0].attempt == 1
    item = queue.get(db_url, item_id)
    assert (item.state, item.holder, item.attempts) == ("running", won[0].holder, 1)
    assert item.started_at is not None and item.heartbeat_at is not None


def test_claims_without_an_id_take_the_oldest_once(db_url: str, queue: WorkQueue[Any]) -> None:
    first, second = add(queue, db_url, 2)
    assert queue.claim(db_url, "a").item_id == first
    assert queue.claim(db_url, "b").item_id == second
    assert queue.claim(db_url, "c") is None
    assert queue.count_by_state(db_url) == {"running": 2}
    assert [item.id for item in queue.list(db_url, "running")] == [second, first]


def test_an_expired_lease_is_taken_over_and_the_old_holders_writes_refused(
    db_url: str, queue: WorkQueue[Any]
) -> None:
    (item_id,) = add(queue, db_url)
    old = queue.claim(db_url, "old", item_id)
    assert queue.claim(db_url, "new", item_id, lease_seconds=60) is None  # its lease is live
    lapse(queue, db_url, item_id)
    new = queue.claim(db_url, "new", item_id, lease_seconds=60)
    assert new is not None and new.attempt == 2
    assert queue.heartbeat(db_url, old) == queue.heartbeat(db_url, old)  # idempotent refusal
    assert not queue.heartbeat(db_url, old).held
    assert not queue.succeed(db_url, old) and queue.fail(db_url, old, "late") is None
    assert not queue.update(db_url, old, config={"n": "overwritten"}) and not queue.release(db_url, old)
    assert queue.heartbeat(db_url, new).held
    assert queue.succeed(db_url, new)
    item = queue.get(db_url, item_id)
    assert (item.state, item.holder, item.attempts, item.config) == ("succeeded", "new", 2, {"n": 0})


def test_the_same_holder_claiming_again_refuses_its_older_attempt(db_url: str, queue: WorkQueue[Any]) -> None:
    (item_id,) = add(queue, db_url)
    first = queue.claim(db_url, "replica", item_id)
    lapse(queue, db_url, item_id)
    second = queue.claim(db_url, "replica", item_id, lease_seconds=60)
    assert not queue.heartbeat(db_url, first).held and queue.heartbeat(db_url, second).held


def test_expired_leases_are_requeued_then_failed_when_attempts_are_spent(
    db_url: str, queue: WorkQueue[Any]
) -> None:
    (item_id,) = add(queue, db_url)
    for attempt in (1, 2):
        claim = queue.claim(db_url, f"h{attempt}")
        assert claim.attempt == attempt
        assert queue.expire(db_url, lease_seconds=60, max_attempts=2) == []  # alive
        lapse(queue, db_url, item_id)
        assert queue.claim(db_url, "x", item_id, lease_seconds=60, max_attempts=attempt) is None
        assert queue.expire(db_url, lease_seconds=60, max_attempts=2) == [item_id]
    item = queue.get(db_url, item_id)
    assert item.state == "failed" and "h2 let its lease expire; gave up after 2 attempts" in item.error
    assert queue.expire(db_url, lease_seconds=60, max_attempts=2) == []


def test_failures_requeue_or_retry_until_attempts_run_out(db_url: str, queue: WorkQueue[Any]) -> None:
    crashed, flaky, bad = add(queue, db_url, 3)
    claim = queue.claim(db_url, "h", crashed)
    assert queue.fail(db_url, claim, "exit -9", max_attempts=2) == "queued"  # a crash: at once
    assert queue.claim(db_url, "h", crashed).attempt == 2
    claim = queue.claim(db_url, "h", flaky)
    assert queue.fail(db_url, claim, "no rows yet", max_attempts=1, retry_after=0) == "failed"
    item = queue.get(db_url, flaky)
    assert item.error == "gave up after 1 attempts: no rows yet" and item.finished_at is not None
    claim = queue.claim(db_url, "h", bad)
    assert queue.fail(db_url, claim, "bad input") == "failed"  # not retried at all
    assert queue.get(db_url, bad).error == "bad input"


def test_a_retry_waits_for_its_delay(db_url: str, queue: WorkQueue[Any]) -> None:
    (item_id,) = add(queue, db_url)
    claim = queue.claim(db_url, "h", item_id)
    assert queue.fail(db_url, claim, "timeout", max_attempts=3, retry_after=60) == "retrying"
    item = queue.get(db_url, item_id)
    assert item.holder is None and item.error == "attempt 1: timeout"
    assert timedelta(seconds=59) < item.available_at - utcnow() <= timedelta(seconds=60)
    assert queue.claim(db_url, "h", item_id) is None and queue.claim(db_url, "h") is None
    assert queue.overdue(db_url, grace_seconds=0) == []
    with session_scope(db_url) as session:  # its time comes
        session.execute(update(queue.model).values(available_at=utcnow() - timedelta(seconds=1)))
    assert [item.id for item in queue.overdue(db_url, grace_seconds=0)] == [item_id]
    again = queue.claim(db_url, "h2")
    assert again is not None and again.attempt == 2
    assert queue.get(db_url, item_id).available_at is None


def test_cancel_stops_a_waiting_item_at_once_and_asks_a_running_one(
    db_url: str, queue: WorkQueue[Any]
) -> None:
    waiting, running = add(queue, db_url, 2)
    assert queue.cancel(db_url, waiting).state == "cancelled"
    claim = queue.claim(db_url, "h")
    assert claim.item_id == running  # the cancelled one is never claimed
    assert not queue.heartbeat(db_url, claim).cancel_requested
    assert queue.cancel(db_url, running).state == "cancelling"
    beat = queue.heartbeat(db_url, claim)
    assert beat.held and beat.cancel_requested and beat.state == "cancelling"
    assert queue.cancelled(db_url, claim)
    assert queue.get(db_url, running).state == "cancelled"
    with pytest.raises(Conflict, match="has already cancelled"):
        queue.cancel(db_url, running)
    with pytest.raises(NotFound, match=f"no item {running + 100}"):
        queue.cancel(db_url, running + 100)


def test_a_crash_while_cancelling_ends_cancelled(db_url: str, queue: WorkQueue[Any]) -> None:
    first, second = add(queue, db_url, 2)
    for item_id in (first, second):
        queue.claim(db_url, "h", item_id)
        queue.cancel(db_url, item_id)
    assert queue.fail(db_url, Claim(first, "h", 1), "exit -9", max_attempts=3) == "cancelled"
    lapse(queue, db_url, second)
    assert queue.expire(db_url, lease_seconds=60, max_attempts=3) == [second]
    assert {queue.get(db_url, i).state for i in (first, second)} == {"cancelled"}


def test_release_gives_an_item_back_without_counting_the_attempt(db_url: str, queue: WorkQueue[Any]) -> None:
    running, cancelling = add(queue, db_url, 2)
    claim = queue.claim(db_url, "h", running)
    assert queue.release(db_url, claim)
    item = queue.get(db_url, running)
    assert (item.state, item.holder, item.attempts) == ("queued", None, 0)
    assert queue.claim(db_url, "h2", running).attempt == 1
    claim = queue.claim(db_url, "h", cancelling)
    queue.cancel(db_url, cancelling)
    assert queue.release(db_url, claim) and queue.get(db_url, cancelling).state == "cancelled"


def test_an_idempotency_key_queues_once(db_url: str, queue: WorkQueue[Any]) -> None:
    first, replayed = queue.submit(db_url, {"n": 1}, "key-1")
    again, replayed_again = queue.submit(db_url, {"n": 1}, "key-1")
    assert (replayed, replayed_again, again.id) == (False, True, first.id)
    with pytest.raises(Conflict, match="different request"):
        queue.submit(db_url, {"n": 2}, "key-1")
    assert queue.count_by_state(db_url) == {"queued": 1}


def test_keep_alive_renews_the_lease_and_notices_losing_it(db_url: str, queue: WorkQueue[Any]) -> None:
    (item_id,) = add(queue, db_url)
    claim = queue.claim(db_url, "h", item_id)
    with queue.keep_alive(db_url, claim, interval_seconds=0.05) as lost:
        lapse(queue, db_url, item_id)
        deadline = time.monotonic() + 5
        while queue.get(db_url, item_id).heartbeat_at < utcnow() - timedelta(minutes=1):
            assert time.monotonic() < deadline, "no heartbeat renewed the lease"
            time.sleep(0.02)
        assert queue.expire(db_url, lease_seconds=60, max_attempts=3) == []
        assert not lost.is_set()
        queue.cancel(db_url, item_id)
        assert lost.wait(5)  # a cancel is asked: the block may stop
    assert queue.cancelled(db_url, claim)


def test_an_item_can_be_submitted_already_claimed(db_url: str, queue: WorkQueue[Any]) -> None:
    item, _ = queue.submit(db_url, {"n": 1}, holder="cli")
    assert (item.state, item.holder, item.attempts) == ("running", "cli", 1)
    assert queue.claim(db_url, "other") is None and queue.claim(db_url, "other", lease_seconds=60) is None
    assert queue.heartbeat(db_url, Claim(item.id, "cli", 1)).held
