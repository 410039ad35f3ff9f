"""``hsig pipeline worker``: run the walk-forwards ``POST /v1/walk-forwards`` queued.

The backtest service checks a walk-forward's plan and queues it (``walk_forwards``, the common
work queue); it cannot train, so this process, on the floor above the services, claims each
item under a lease (renewed from a thread every quarter of ``HSIG_LEASE_SECONDS``) and runs
``run_walk_forward`` with the item's request, the very options the API checked. Each progress
line is written to the item (``GET /v1/walk-forwards/{id}`` shows it) and the folds to the
walk-forward's state file.

Outcomes: finished -> succeeded, with the pooled note as its summary (a fold that failed is in
the state file and the note, not a failed item). Bad input found only now (the rows changed
since the POST, the name reused with other settings) or something a person must fix (the model
is missing) -> failed with the reason, not retried. Any other error, or a killed worker (its
lease lapses), -> queued again while attempts last (``HSIG_MAX_ATTEMPTS``): the next attempt
resumes at the first unfinished fold, since the state file keeps every finished step. SIGTERM
or Ctrl-C gives the item back untouched (the attempt is not counted). Cancelled
(``POST /v1/walk-forwards/{id}/cancel``, state ``cancelling``) -> the fold in progress is
finished, then the worker stops before the next fold (or before pooling) and ends the item
``cancelled`` (``finished_at`` is when, ``error`` where it stopped); the lease is renewed
meanwhile, so no other worker takes it over. A rerun of the name resumes at that fold.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer

from services.common.errors import Conflict, InvalidInput, NotFound, OperationalError

log = logging.getLogger(__name__)
MAX_PROGRESS_CHARS = 2000

app = typer.Typer(
    help="Work of the floor above the services: the walk-forward worker.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


class _Lost(Exception):
    """The lease was lost (expired and taken over): stop writing, the new holder goes on."""


class _Cancelled(Exception):
    """A cancel was asked and the walk-forward is at a fold boundary: stop here."""

    def __init__(self, where: str) -> None:
        super().__init__(where)
        self.where = where


def _summary(state: dict[str, Any]) -> dict[str, Any]:
    pooled = state.get("pooled") or {}
    keys = ("note", "folds_covered", "folds_failed", "folds_total", "methods_failed")
    return {key: pooled.get(key) for key in keys}


def run_claimed(settings: Any, claim: Any) -> str:
    """Run the claimed walk-forward to its end; returns the state it was left in."""
    from services.common.walk_forward_plan import WalkForwardRequest
    from services.common.walk_forward_queue import WALK_FORWARDS
    from services.pipeline.walk_forward import run_walk_forward

    url = settings.resolved_database_url
    item = WALK_FORWARDS.get(url, claim.item_id)
    options = WalkForwardRequest.model_validate(item.config).options(item.name)
    # until_cancel=False: a cancel must not stop the beats mid-fold; at_boundary asks for it.
    with WALK_FORWARDS.keep_alive(url, claim, settings.lease_seconds / 4, until_cancel=False) as lost:

        def progress(line: str) -> None:
            if lost.is_set():
                raise _Lost
            log.info("walk-forward %d: %s", claim.item_id, line)
            if not WALK_FORWARDS.update(url, claim, progress=line[:MAX_PROGRESS_CHARS]):
                raise _Lost

        def at_boundary(where: str) -> None:
            beat = WALK_FORWARDS.heartbeat(url, claim)
            if not beat.held:
                raise _Lost
            if beat.cancel_requested:
                raise _Cancelled(where)

        try:
            result = run_walk_forward(settings, options, progress, at_boundary)
        except _Lost:
            log.warning("walk-forward %d: lost its lease; another worker goes on", claim.item_id)
            return "lost"
        except _Cancelled as stopped:
            return _close_cancelled(url, claim, stopped.where)
        except (InvalidInput, NotFound, Conflict, OperationalError) as exc:  # retrying changes nothing
            WALK_FORWARDS.fail(url, claim, f"{type(exc).__name__}: {exc.message}")
            return "failed"
        except Exception as exc:  # a crash: queued again while attempts last; it resumes by name
            log.exception("walk-forward %d crashed", claim.item_id)
            state = WALK_FORWARDS.fail(
                url, claim, f"{type(exc).__name__}: {exc}", max_attempts=settings.max_attempts
            )
            return state or "lost"
        except BaseException:  # stopped (SIGTERM, Ctrl-C): given back, the attempt not counted
            WALK_FORWARDS.release(url, claim)
            raise
    WALK_FORWARDS.succeed(url, claim, summary=_summary(result.state))
    return "succeeded"


def _close_cancelled(url: str, claim: Any, where: str) -> str:
    """End the item ``cancelled`` at a fold boundary, saying where (its finished_at says when)."""
    from services.common.queue import State
    from services.common.walk_forward_queue import WALK_FORWARDS

    line = f"cancelled on request, stopped {where}"
    log.info("walk-forward %d: %s", claim.item_id, line)
    closed = WALK_FORWARDS.close(url, claim, State.CANCELLED, error=line, progress=line)
    return "cancelled" if closed else "lost"


def run_next(settings: Any, holder: str) -> int | None:
    """Claim the oldest claimable walk-forward (queued, or one whose holder's lease lapsed) and
    run it; its id, or None when there is none."""
    from services.common.walk_forward_queue import WALK_FORWARDS

    url = settings.resolved_database_url
    WALK_FORWARDS.expire(url, settings.lease_seconds, settings.max_attempts)  # spent ones fail here
    claim = WALK_FORWARDS.claim(
        url, holder, lease_seconds=settings.lease_seconds, max_attempts=settings.max_attempts
    )
    if claim is None:
        return None
    outcome = run_claimed(settings, claim)
    log.info("walk-forward %d: %s", claim.item_id, outcome)
    return claim.item_id


def run_worker(
    settings: Any, once: bool = False, poll_seconds: float = 5.0, stop: threading.Event | None = None
) -> int:
    """Run walk-forwards as they are queued until ``stop`` is set (``once``: until none is
    waiting). Returns how many it ran."""
    from services.common.db.migrate import upgrade
    from services.common.queue import new_holder

    upgrade(settings.resolved_database_url)
    stop = stop or threading.Event()
    holder = new_holder("walk-forward-worker")
    ran = 0
    while not stop.is_set():
        if run_next(settings, holder) is not None:
            ran += 1
        elif once:
            break
        else:
            stop.wait(poll_seconds)
    return ran


@contextmanager
def _sigterm_stops() -> Iterator[None]:
    """SIGTERM as Ctrl-C, so the item in hand is given back rather than left to its lease."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@app.command("worker")
def worker(
    once: Annotated[bool, typer.Option("--once", help="Run what is queued, then exit.")] = False,
    poll_seconds: Annotated[float, typer.Option(min=0.1, help="How often an idle worker looks.")] = 5.0,
) -> None:
    """Run the walk-forwards POST /v1/walk-forwards queued (training and scoring every fold)."""
    from services.backtest.settings import BacktestSettings
    from services.common.settings import get_settings

    with _sigterm_stops():
        try:
            ran = run_worker(get_settings(BacktestSettings), once=once, poll_seconds=poll_seconds)
        except KeyboardInterrupt:
            typer.echo("walk-forward worker stopped", err=True)
            return
    typer.echo(f"walk-forward worker: ran {ran}", err=True)
