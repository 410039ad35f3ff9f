"""Walk-forwards (``walk_forwards``) in the work queue (``services.common.queue``).

The backtest service queues one per ``POST /v1/walk-forwards`` once its plan is checked
(``walk_forward_plan.prepare_walk_forward``); a pipeline worker (``hsig pipeline worker``,
``services.pipeline.walk_forward_worker``) claims it, runs ``run_walk_forward`` under a lease
it renews, writes its progress line here and its folds to the state file, and closes it.
Here because both sides (a service and the floor above it) move the same rows.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from services.common.db import session_scope
from services.common.db.models import WalkForward
from services.common.queue import UNFINISHED, WorkQueue

WALK_FORWARDS: WorkQueue[WalkForward] = WorkQueue(
    WalkForward, noun="walk-forward", not_found="walk-forward {id} does not exist", param="id"
)


def submit(url: str, config: dict[str, Any], name: str, key: str | None) -> tuple[WalkForward, bool]:
    """Queue a walk-forward (once per idempotency key): (the item, whether the key had queued it)."""
    return WALK_FORWARDS.submit(url, config, key, name=name)


def unfinished_named(url: str, name: str) -> WalkForward | None:
    """The walk-forward of this name still waiting or running, if any (one state file, one runner)."""
    with session_scope(url) as session:
        query = select(WalkForward).where(WalkForward.name == name, WalkForward.state.in_(UNFINISHED))
        return session.scalars(query.limit(1)).first()
