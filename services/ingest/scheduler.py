"""Background polling: feeds, candles and labelling on their own intervals (APScheduler).

Each job is one part of a cycle; a job that fails is logged by the cycle's guard and the
others keep their schedule. ``max_instances=1`` and ``coalesce`` stop a slow pull from
piling up behind itself.

Several replicas may share one database: time is cut into slots of each job's interval
(slot k of the Unix epoch is ``[k * interval, (k + 1) * interval)``) and a part runs only when
it claims its slot in ``schedule_claims`` (``services.common.schedule_claims``), so each slot is
pulled once whichever replicas are up. A replica that loses the claim skips the slot (debug
log, ``hsig_ingest_scheduled_skipped_total{job}``). Every replica fires in the middle of each
slot (and once at start), so a fire that starts late still names its own slot. Replicas must
share the interval settings: slots of different lengths are different slots.
"""

from __future__ import annotations

import logging
import math
import time
from datetime import UTC, datetime

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger

from services.common.schedule_claims import claim
from services.ingest.cycle import run_cycle
from services.ingest.metrics import SCHEDULED_SKIPPED
from services.ingest.settings import IngestSettings

log = logging.getLogger(__name__)


def slot_of(epoch_seconds: float, interval_seconds: float) -> int:
    """The slot a moment falls in: ``floor(epoch_seconds / interval_seconds)``."""
    return math.floor(epoch_seconds / interval_seconds)


class SlotTrigger(BaseTrigger):
    """Fires in the middle of each ``interval_seconds`` slot of the Unix epoch, after the slot of the
    previous fire: replicas with the same interval fire together, and a fire up to half an
    interval late still falls in its slot (an ``IntervalTrigger`` keeps the phase of whenever
    its replica started, so a fire near a slot's edge could land in either)."""

    def __init__(self, interval_seconds: float) -> None:
        self.interval_seconds = interval_seconds

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime:
        if previous_fire_time is None:
            slot = slot_of(now.timestamp(), self.interval_seconds)
            if (slot + 0.5) * self.interval_seconds < now.timestamp():
                slot += 1
        else:
            slot = slot_of(previous_fire_time.timestamp(), self.interval_seconds) + 1
        return datetime.fromtimestamp((slot + 0.5) * self.interval_seconds, UTC)

    def __str__(self) -> str:
        return f"slots of {self.interval_seconds:g} s"

    def __repr__(self) -> str:
        return f"<SlotTrigger (interval_seconds={self.interval_seconds!r})>"


def build_scheduler(settings: IngestSettings) -> BackgroundScheduler:
    scheduler = BackgroundScheduler(timezone=UTC, job_defaults={"max_instances": 1, "coalesce": True})
    jobs = {
        "feeds": (settings.feed_interval_seconds, {"candles": False, "label": False}),
        "candles": (settings.candle_interval_seconds, {"feeds": False, "label": False}),
        "label": (settings.label_interval_seconds, {"feeds": False, "candles": False}),
    }
    for name, (interval, parts) in jobs.items():
        scheduler.add_job(
            _run_part,
            SlotTrigger(interval),
            args=(settings, name, interval, parts),
            id=f"ingest-{name}",
            next_run_time=datetime.now(UTC),  # once at start too: the current slot, if nobody had it
        )
    return scheduler


def _run_part(settings: IngestSettings, name: str, interval_seconds: float, parts: dict[str, bool]) -> None:
    try:
        slot = slot_of(time.time(), interval_seconds)
        if not claim(settings.resolved_database_url, f"ingest-{name}", str(slot)):
            log.debug("scheduled %s: slot %d already claimed by another replica, skipped", name, slot)
            SCHEDULED_SKIPPED.labels(name).inc()
            return
        report = run_cycle(settings, **parts)
        failed = [source.source for source in report.sources if not source.ok]
        log.debug("scheduled %s done in %.2fs, failed: %s", name, report.seconds, failed)
    except Exception:  # the cycle guards each source; this only catches a broken database
        log.exception("scheduled %s failed", name)
