"""Background polling: feeds, candles and labelling on their own intervals (APScheduler).

Each job is one part of a cycle; a job that fails is logged by the cycle's guard and the
others keep their schedule. ``max_instances=1`` and ``coalesce`` stop a slow pull from
piling up behind itself.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from apscheduler.schedulers.background import BackgroundScheduler

from services.ingest.cycle import run_cycle
from services.ingest.settings import IngestSettings

log = logging.getLogger(__name__)


def build_scheduler(settings: IngestSettings) -> BackgroundScheduler:
    scheduler = BackgroundScheduler(timezone=UTC, job_defaults={"max_instances": 1, "coalesce": True})
    jobs = {
        "feeds": (settings.feed_interval_s, {"candles": False, "label": False}),
        "candles": (settings.candle_interval_s, {"feeds": False, "label": False}),
        "label": (settings.label_interval_s, {"feeds": False, "candles": False}),
    }
    for name, (interval, parts) in jobs.items():
        scheduler.add_job(
            _run_part,
            "interval",
            seconds=interval,
            args=(settings, name, parts),
            id=f"ingest-{name}",
            next_run_time=datetime.now(UTC),
        )
    return scheduler


def _run_part(settings: IngestSettings, name: str, parts: dict[str, bool]) -> None:
    try:
        report = run_cycle(settings, **parts)
        failed = [source.source for source in report.sources if not source.ok]
        log.debug("scheduled %s done in %.2fs, failed: %s", name, report.seconds, failed)
    except Exception:  # the cycle guards each source; this only catches a broken database
        log.exception("scheduled %s failed", name)
