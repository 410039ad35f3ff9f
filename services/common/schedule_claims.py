"""Slot claims in the shared database: one replica runs each slot of a scheduled job.

Every replica of a service schedules the same jobs in its own memory (APScheduler). Before a
job runs a slot (an ingest interval, a cron fire) it claims it: one row per (job, slot) in
``schedule_claims``, whose primary key is that pair. Of N replicas racing for one slot exactly
one insert lands; the others see the claim taken and skip the slot. The insert is
``INSERT ... ON CONFLICT DO NOTHING`` on both SQLite and PostgreSQL, so a lost claim returns no
row, not a unique-violation error in the PostgreSQL server's log at every slot.

A claim is only needed while replicas may still try its slot (seconds to minutes), so claims
older than ``KEEP`` are deleted: each process prunes after every ``PRUNE_EVERY`` claims it wins.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
from datetime import datetime, timedelta

from sqlalchemy import delete
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from services.common.db import session_scope
from services.common.db.models import ScheduleClaim, utcnow

log = logging.getLogger(__name__)

HOLDER = f"{socket.gethostname()}:{os.getpid()}"
KEEP = timedelta(days=7)
PRUNE_EVERY = 100
_wins = itertools.count(1)  # next() on a count is atomic under the GIL


def claim(database_url: str, job: str, slot: str, holder: str | None = None) -> bool:
    """True when this call took ``slot`` of ``job``; False when someone had (or has just) taken it."""
    values = {"job": job, "slot": slot, "holder": (holder or HOLDER)[:128], "claimed_at": utcnow()}
    with session_scope(database_url) as session:
        dialect = session.get_bind().dialect.name
        insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
        statement = (
            insert(ScheduleClaim)
            .values(**values)
            .on_conflict_do_nothing(index_elements=["job", "slot"])
            .returning(ScheduleClaim.job)  # a row back only when this insert landed
        )
        won = session.execute(statement).first() is not None
    if won and next(_wins) % PRUNE_EVERY == 0:
        try:
            pruned = prune(database_url, KEEP)
            log.debug("pruned %d schedule claims older than %s", pruned, KEEP)
        except Exception:  # the slot is ours either way; pruning is tried again later
            log.warning("pruning schedule claims failed", exc_info=True)
    return won


def prune(database_url: str, older_than: datetime | timedelta) -> int:
    """Delete claims made before ``older_than`` (a time, or an age counted back from now);
    returns how many were deleted."""
    cutoff = utcnow() - older_than if isinstance(older_than, timedelta) else older_than
    with session_scope(database_url) as session:
        result = session.execute(delete(ScheduleClaim).where(ScheduleClaim.claimed_at < cutoff))
        return int(result.rowcount)  # type: ignore[attr-defined]
