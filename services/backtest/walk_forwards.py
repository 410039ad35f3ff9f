"""``POST /v1/walk-forwards``: check a walk-forward's plan at once, queue it for a pipeline worker.

The backtest service cannot train (it may import only ``services.common``), so it does what
needs only the rows: ``walk_forward_plan.prepare_walk_forward`` (the same checks the worker's
``run_walk_forward`` runs) answers a plan the data cannot hold with a 422 naming the setting
and the largest K that fits, before anything is queued. A good plan becomes a ``walk_forwards``
item; a pipeline worker (``hsig pipeline worker``) runs it. GET reads the item (state,
attempts, the worker's last progress line) and the walk-forward's state file under the reports
volume (each fold's state, versions and backtest run; the pooled figures once pooled). Cancel
(``POST /v1/walk-forwards/{id}/cancel``): queued -> cancelled at once, running -> cancelling
until its worker stops at the next fold boundary, finished -> 409.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel

from services.backtest.predictors.outbound import local_paths_on_volumes
from services.backtest.schemas import BacktestConfig, LocalSpec
from services.backtest.settings import BacktestSettings
from services.common import idempotency
from services.common.db.models import WalkForward
from services.common.errors import Conflict
from services.common.walk_forward_plan import WalkForwardRequest, prepare_walk_forward, state_path
from services.common.walk_forward_queue import WALK_FORWARDS, cancel, submit, unfinished_named


class WalkForwardOut(BaseModel):
    """A queued walk-forward as POST and GET /v1/walk-forwards return it."""

    id: int
    name: str
    state: str
    attempts: int
    error: str | None
    progress: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    folds: list[dict[str, Any]]
    pooled: dict[str, Any] | None


def _fold_out(fold: dict[str, Any]) -> dict[str, Any]:
    """A fold of the state file with report URLs in place of the volume's paths."""
    out = {key: fold.get(key) for key in ("fold", "state", "window", "error", "methods_failed", "summary")}
    out["versions"] = {
        method: {key: value for key, value in version.items() if key != "path"}
        for method, version in (fold.get("versions") or {}).items()
    }
    run_id = (fold.get("backtest") or {}).get("run_id")
    out["backtest"] = (
        None
        if run_id is None
        else {
            "run_id": run_id,
            "json_url": f"/v1/reports/{run_id}.json",
            "html_url": f"/v1/reports/{run_id}.html",
        }
    )
    return out


def walk_forward_out(settings: BacktestSettings, item: WalkForward) -> WalkForwardOut:
    path = state_path(settings.reports_path, item.name)
    state: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    return WalkForwardOut(
        id=item.id,
        name=item.name,
        state=item.state,
        attempts=item.attempts,
        error=item.error,
        progress=item.progress,
        created_at=item.created_at,
        started_at=item.started_at,
        finished_at=item.finished_at,
        folds=[_fold_out(fold) for fold in state.get("folds", [])],
        pooled=state.get("pooled"),
    )


def _check(settings: BacktestSettings, request: WalkForwardRequest, name: str) -> None:
    """Everything that can be known before a worker runs it: where the model loads from, the plan."""
    if request.model != "tiny":  # over HTTP a path is the caller's choice: only the volumes
        local_paths_on_volumes(BacktestConfig(predictors=[LocalSpec(model=request.model)]), settings)
    prepare_walk_forward(settings, request.options(name))
    if request.name is not None and unfinished_named(settings.resolved_database_url, name) is not None:
        raise Conflict(
            f"walk-forward {name} is already queued or running; wait for it, or give another name",
            param="name",
        )


def start_walk_forward(
    settings: BacktestSettings, request: WalkForwardRequest, key: str | None
) -> tuple[WalkForward, bool]:
    """Check, then queue: (the item, whether the idempotency key had queued it already)."""
    url = settings.resolved_database_url
    body = request.model_dump(mode="json")
    known = idempotency.replay(url, WalkForward, key, body) if key else None
    if known is not None:
        return known, True
    name = request.name or f"wf-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    _check(settings, request, name)
    return submit(url, body, name, key)


def get_walk_forward(settings: BacktestSettings, item_id: int) -> WalkForwardOut:
    return walk_forward_out(settings, WALK_FORWARDS.get(settings.resolved_database_url, item_id))


def list_walk_forwards(settings: BacktestSettings, state: str | None, limit: int) -> list[WalkForwardOut]:
    items = WALK_FORWARDS.list(settings.resolved_database_url, state, limit)
    return [walk_forward_out(settings, item) for item in items]


def cancel_walk_forward(settings: BacktestSettings, item_id: int) -> WalkForwardOut:
    """Queued: cancelled at once (with its waiting training jobs). Running: ``cancelling``, the
    worker stops at the next fold boundary. Finished: Conflict naming its state."""
    return walk_forward_out(settings, cancel(settings.resolved_database_url, item_id))
