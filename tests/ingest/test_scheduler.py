"""Two ingest replicas on one database pull each slot once (SQLite and PostgreSQL).

The schedulers, threads, claims and database are real; ``run_cycle`` is replaced by a counter,
since what is under test is who runs a slot, not what a cycle does.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import func, select

from services.common.db import session_scope
from services.common.db.models import ScheduleClaim
from services.ingest import scheduler as scheduler_module
from services.ingest.scheduler import SlotTrigger, build_scheduler, slot_of
from services.ingest.settings import IngestSettings

PARTS = ("feeds", "candles", "label")


@pytest.fixture
def cycles(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The parts ``run_cycle`` was asked to run, one entry per call."""
    calls: list[str] = []

    def counting_cycle(settings: IngestSettings, **parts: bool) -> SimpleNamespace:
        calls.append(next(name for name in PARTS if parts.get(name, True)))
        return SimpleNamespace(sources=[], seconds=0.0)

    monkeypatch.setattr(scheduler_module, "run_cycle", counting_cycle)
    return calls


def _claimed(url: str) -> Counter[str]:
    with session_scope(url) as session:
        rows = session.execute(select(ScheduleClaim.job, func.count()).group_by(ScheduleClaim.job)).all()
    return Counter({job.removeprefix("ingest-"): count for job, count in rows})


def _skipped(job: str) -> float:
    return REGISTRY.get_sample_value("hsig_ingest_scheduled_skipped_total", {"job": job}) or 0.0


def test_slots_are_fired_in_their_middle() -> None:
    trigger = SlotTrigger(10.0)
    at = lambda seconds: datetime.fromtimestamp(seconds, UTC)  # noqa: E731
    assert trigger.get_next_fire_time(None, at(1003)) == at(1005)  # this slot's middle is ahead
    assert trigger.get_next_fire_time(None, at(1007)) == at(1015)  # passed: the next slot's
    assert trigger.get_next_fire_time(at(1005), at(1005.01)) == at(1015)
    assert trigger.get_next_fire_time(at(1001), at(1001.2)) == at(1015)  # after a start-up run
    assert trigger.get_next_fire_time(at(1009.9), at(1016)) == at(1015)  # late: still 1015's slot
    assert slot_of(1009.9, 10.0) == 100 and slot_of(1010, 10.0) == 101


def test_racing_fires_of_one_slot_run_once(ingest_settings: IngestSettings, cycles: list[str]) -> None:
    start = threading.Barrier(8)

    def fire(_: int) -> None:
        start.wait()
        scheduler_module._run_part(ingest_settings, "candles", 3600.0, {"feeds": False, "label": False})

    skipped = _skipped("candles")
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(fire, range(8)))
    assert cycles == ["candles"]
    assert _skipped("candles") - skipped == 7
    assert _claimed(ingest_settings.resolved_database_url) == {"candles": 1}


def test_two_replicas_run_each_slot_once(ingest_settings: IngestSettings, cycles: list[str]) -> None:
    interval = 0.5
    settings = ingest_settings.model_copy(
        update={
            "feed_interval_seconds": interval,
            "candle_interval_seconds": 3600.0,
            "label_interval_seconds": 3600.0,
        }
    )
    skipped = _skipped("feeds")
    replicas = [build_scheduler(settings), build_scheduler(settings)]
    started = time.time()
    for replica in replicas:
        replica.start()
    time.sleep(3.3)
    for replica in replicas:
        replica.shutdown(wait=True)
    elapsed = time.time() - started

    runs = Counter(cycles)
    # Every run is a claimed slot, and a slot is claimed once: no slot ran twice.
    assert runs == _claimed(settings.resolved_database_url)
    assert runs["candles"] == runs["label"] == 1  # both replicas ran them at start: once
    assert runs["feeds"] >= elapsed / interval - 2  # and no slot was lost to the claims
    assert _skipped("feeds") - skipped >= runs["feeds"] / 2  # the other replica did try
