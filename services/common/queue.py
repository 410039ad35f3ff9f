"""One work queue for long jobs: trainer jobs (``training_jobs``) and backtest runs (``backtest_runs``).

Both tables carry the same queue columns (``QueueColumns`` in ``services.common.db.models``) and
are moved through the same states by ``WorkQueue``; each service keeps only its own columns
(progress and checkpoints; report files) and its own policy (when to retry, how long to wait).

States (``State``, a ``str`` enum, so a stored ``"running"`` compares equal to ``State.RUNNING``)::

    queued ──claim──▶ running ──succeed──▶ succeeded
      ▲  ▲              │ │ └──fail (no attempts left / not retried)──▶ failed
      │  │              │ └────fail with a delay──▶ retrying ──(its time comes)──▶ claimable
      │  └──crash/expire┘ (attempts left: at once)
      └──release (shutdown: the attempt is not counted)
    queued | retrying ──cancel──▶ cancelled;  running ──cancel──▶ cancelling ──holder stops──▶ cancelled

Vocabulary. A *holder* (one process, or one scheduler among replicas) *claims* an item and
then holds a *lease* on it: it must renew ``heartbeat_at`` (*heartbeat*) more often than
``lease_seconds``. A lease not renewed for that long has *expired* (the holder died, or lost
the database): ``expire`` settles the item (requeue, or give up once its *attempts* are spent)
and ``claim(..., lease_seconds=...)`` may take it over directly, as a new attempt.

Concurrency. A claim is ``SELECT ... FOR UPDATE SKIP LOCKED`` followed by an ``UPDATE`` whose
``WHERE`` repeats the claimable condition: on PostgreSQL several holders never take the same
item and never wait on one another; SQLite ignores ``FOR UPDATE`` and the conditional UPDATE
alone decides (of racing writers the first changes what the others' condition sees). Every
later write by a holder names its claim (item, holder and attempt, and an active state), so
a holder whose lease expired and was taken over cannot overwrite the new holder's work: its
writes change no row and it is told so (False / None / ``Beat.held`` false).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Generic, TypeVar

from sqlalchemy import and_, func, or_, select, update

from services.common.db import session_scope
from services.common.db.models import QueueColumns, utcnow
from services.common.errors import Conflict, NotFound
from services.common.idempotency import create_once

log = logging.getLogger(__name__)

MAX_ERROR_CHARS = 4000


class State(StrEnum):
    QUEUED = "queued"  # waiting, claimable now
    RETRYING = "retrying"  # waiting after a failed attempt, claimable from ``available_at``
    RUNNING = "running"  # a holder runs it and renews its lease
    CANCELLING = "cancelling"  # running, asked to stop: the holder stops at its next heartbeat
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


WAITING = (State.QUEUED, State.RETRYING)
ACTIVE = (State.RUNNING, State.CANCELLING)
FINAL = (State.SUCCEEDED, State.FAILED, State.CANCELLED)
UNFINISHED = WAITING + ACTIVE


@dataclass(frozen=True)
class Claim:
    """What a holder got from ``claim``; every later write by the holder passes it back.

    ``attempt`` None matches whichever attempt ``holder`` runs now (for callers that kept only
    the holder, e.g. a test replica renewing a run it was given)."""

    item_id: int
    holder: str
    attempt: int | None = None

    @property
    def job_id(self) -> int:  # the trainer's word for its items
        return self.item_id


@dataclass(frozen=True)
class Beat:
    """The answer to a heartbeat: whether the holder still holds the item, and whether it was
    asked to stop (state ``cancelling``). A holder that no longer holds it must stop writing."""

    held: bool
    cancel_requested: bool = False
    state: str | None = None


def new_holder(kind: str) -> str:
    """A holder name unique to one claimant: host, process and a random part (a process may
    claim several times, and each claim must be told apart from the last)."""
    return f"{kind}:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"[-128:]


Item = TypeVar("Item", bound=QueueColumns)


class WorkQueue(Generic[Item]):
    """The queue operations on one table whose model mixes in ``QueueColumns``.

    ``noun`` names an item in errors ("job 7 has already succeeded"); ``not_found`` is the
    message (with ``{id}``) and ``param`` the parameter of the NotFound error for an unknown id,
    so each service keeps the errors its API has always given.
    """

    def __init__(
        self, model: type[Item], noun: str = "item", not_found: str = "no item {id}", param: str = "id"
    ) -> None:
        self.model = model
        self.noun = noun
        self.not_found = not_found
        self.param = param

    # --- creating and reading ---------------------------------------------------------------

    def submit(
        self,
        url: str,
        config: dict[str, Any],
        key: str | None = None,
        holder: str | None = None,
        **columns: Any,
    ) -> tuple[Item, bool]:
        """Queue an item, once per idempotency key: (the item, whether the key had queued it
        already, in which case nothing new is queued). ``columns`` are the model's own.

        With ``holder`` the item is created already claimed by it (attempt 1, its lease
        starting now): for a process that runs what it submits itself, so no other holder can
        take it between the insert and a claim."""
        if holder is not None:
            now = utcnow()
            columns.update(
                state=State.RUNNING.value, holder=holder, attempts=1, started_at=now, heartbeat_at=now
            )
        columns.setdefault("state", State.QUEUED.value)
        columns.setdefault("attempts", 0)
        return create_once(url, self.model, key, config, lambda: self.model(config=config, **columns))

    def get(self, url: str, item_id: int) -> Item:
        with session_scope(url) as session:
            item = session.get(self.model, item_id)
            if item is None:
                raise NotFound(self.not_found.format(id=item_id), param=self.param)
            return item

    def list(self, url: str, state: str | None = None, limit: int = 100) -> list[Item]:
        """Newest first; only ``state`` when given."""
        model = self.model
        query = select(model).order_by(model.id.desc()).limit(limit)
        if state:
            query = query.where(model.state == state)
        with session_scope(url) as session:
            return list(session.scalars(query))

    def count_by_state(self, url: str) -> dict[str, int]:
        model = self.model
        with session_scope(url) as session:
            rows = session.execute(select(model.state, func.count()).group_by(model.state))
            return {state: count for state, count in rows}

    def unfinished(self, url: str) -> list[Item]:
        """Items waiting or running, oldest first (what a restarted service looks at)."""
        model = self.model
        with session_scope(url) as session:
            query = select(model).where(model.state.in_(UNFINISHED)).order_by(model.id)
            return list(session.scalars(query))

    def overdue(self, url: str, grace_seconds: float) -> list[Item]:
        """Waiting items nobody took within ``grace_seconds`` of their time (``available_at``,
        or ``created_at`` for an item that may run at once): the holder that was to run them
        is gone or busy, so whoever asks may claim them."""
        model = self.model
        cutoff = utcnow() - timedelta(seconds=grace_seconds)
        due = func.coalesce(model.available_at, model.created_at)
        with session_scope(url) as session:
            query = select(model).where(model.state.in_(WAITING), due < cutoff).order_by(model.id)
            return list(session.scalars(query))

    # --- claiming ---------------------------------------------------------------------------

    def _claimable(self, now: datetime, lease_seconds: float | None, max_attempts: int | None) -> Any:
        model = self.model
        waiting = or_(
            model.state == State.QUEUED,
            and_(
                model.state == State.RETRYING,
                or_(model.available_at.is_(None), model.available_at <= now),
            ),
        )
        if lease_seconds is None:
            return waiting
        expired = and_(model.state == State.RUNNING, self._lapsed(now - timedelta(seconds=lease_seconds)))
        if max_attempts is not None:  # a spent item is ``expire``'s to fail, not to take over
            expired = and_(expired, model.attempts < max_attempts)
        return or_(waiting, expired)

    def _lapsed(self, cutoff: datetime) -> Any:
        """No heartbeat since ``cutoff``; no heartbeat at all counts (rows left running by a
        process that never beat, e.g. a version before heartbeats)."""
        return or_(self.model.heartbeat_at.is_(None), self.model.heartbeat_at < cutoff)

    def claim(
        self,
        url: str,
        holder: str,
        item_id: int | None = None,
        *,
        lease_seconds: float | None = None,
        max_attempts: int | None = None,
    ) -> Claim | None:
        """Start the next attempt of an item for ``holder``: the oldest claimable one, or
        ``item_id``. None when there is none (or another holder won it).

        Claimable: queued; retrying once its ``available_at`` has come; with ``lease_seconds``
        also running with an expired lease (take-over; with ``max_attempts`` only while
        attempts are left). The attempt is counted and the lease starts now.
        """
        model = self.model
        now = utcnow()
        claimable = self._claimable(now, lease_seconds, max_attempts)
        with session_scope(url) as session:
            query = select(model.id).where(claimable)
            if item_id is not None:
                query = query.where(model.id == item_id)
            found = session.scalar(query.order_by(model.id).limit(1).with_for_update(skip_locked=True))
            if found is None:
                if item_id is not None:
                    self._get(session, item_id)  # NotFound for an item that does not exist
                return None
            taken = session.execute(
                update(model)
                .where(model.id == found, claimable)
                .values(
                    state=State.RUNNING.value,
                    holder=holder,
                    attempts=model.attempts + 1,
                    started_at=func.coalesce(model.started_at, now),
                    heartbeat_at=now,
                    available_at=None,
                    error=None,
                )
                .execution_options(synchronize_session=False)
            )
            if taken.rowcount != 1:  # type: ignore[attr-defined]
                return None
            attempt = session.scalar(select(model.attempts).where(model.id == found))
        log.info("%s claimed %s %d (attempt %d)", holder, model.__tablename__, found, attempt)
        return Claim(found, holder, int(attempt or 1))

    def _held(self, claim: Claim) -> tuple[Any, ...]:
        """The condition every write by a holder carries: the item is still its claim's."""
        model = self.model
        held = (model.id == claim.item_id, model.holder == claim.holder, model.state.in_(ACTIVE))
        if claim.attempt is not None:
            held = (*held, model.attempts == claim.attempt)
        return held

    def holds(self, url: str, claim: Claim) -> bool:
        with session_scope(url) as session:
            return session.scalar(select(self.model.id).where(*self._held(claim))) is not None

    # --- while it runs ----------------------------------------------------------------------

    def heartbeat(self, url: str, claim: Claim, **values: Any) -> Beat:
        """Renew the lease (and write ``values``, e.g. progress, in the same UPDATE). The answer
        says whether the holder still holds the item and whether it is asked to stop."""
        model = self.model
        with session_scope(url) as session:
            renewed = session.execute(
                update(model)
                .where(*self._held(claim))
                .values(heartbeat_at=utcnow(), **values)
                .execution_options(synchronize_session=False)
            )
            if renewed.rowcount != 1:  # type: ignore[attr-defined]
                return Beat(held=False)
            state = session.scalar(select(model.state).where(model.id == claim.item_id))
        return Beat(held=True, cancel_requested=state == State.CANCELLING, state=state)

    def update(self, url: str, claim: Claim, **values: Any) -> bool:
        """Write the item's own columns (a checkpoint, a re-derived config) as its holder; this
        renews the lease too. False when the holder no longer holds it."""
        return self.heartbeat(url, claim, **values).held

    @contextmanager
    def keep_alive(
        self, url: str, claim: Claim, interval_seconds: float, *, until_cancel: bool = True
    ) -> Iterator[threading.Event]:
        """Heartbeat from a thread every ``interval_seconds`` while the block runs (a quarter
        lease leaves room for three missed beats). The event it yields is set once the lease
        is lost or a cancel is asked; the block may poll it, and its closing write is refused
        anyway if the item was taken over.

        ``until_cancel`` False: a cancel request neither sets the event nor stops the beats,
        for a holder that finishes its current step first and asks ``heartbeat`` itself at a
        boundary (a walk-forward between folds): its lease must not lapse meanwhile."""
        stop, lost = threading.Event(), threading.Event()

        def beat() -> None:
            while not stop.wait(interval_seconds):
                try:
                    answer = self.heartbeat(url, claim)
                except Exception:  # a database blip: the next beat tries again
                    log.warning(
                        "heartbeat of %s %d failed", self.model.__tablename__, claim.item_id, exc_info=True
                    )
                    continue
                if not answer.held or (answer.cancel_requested and until_cancel):
                    if not answer.held and not stop.is_set():
                        log.warning(
                            "%s lost %s %d (lease expired or taken over)",
                            claim.holder,
                            self.model.__tablename__,
                            claim.item_id,
                        )
                    lost.set()
                    return

        thread = threading.Thread(target=beat, name=f"heartbeat-{claim.item_id}", daemon=True)
        thread.start()
        try:
            yield lost
        finally:
            stop.set()
            thread.join(timeout=5)

    # --- ending an attempt --------------------------------------------------------------------

    def close(self, url: str, claim: Claim, state: State, **values: Any) -> bool:
        """End the item in ``state`` (succeeded, failed or cancelled) as its holder, writing
        ``values`` too; False when the holder no longer holds it (nothing is written)."""
        assert state in FINAL, state
        if isinstance(values.get("error"), str):
            values["error"] = values["error"][:MAX_ERROR_CHARS]
        now = utcnow()
        with session_scope(url) as session:
            result = session.execute(
                update(self.model)
                .where(*self._held(claim))
                .values(state=state.value, finished_at=now, heartbeat_at=now, **values)
                .execution_options(synchronize_session=False)
            )
            return result.rowcount == 1  # type: ignore[attr-defined]

    def succeed(self, url: str, claim: Claim, **values: Any) -> bool:
        return self.close(url, claim, State.SUCCEEDED, error=None, **values)

    def cancelled(self, url: str, claim: Claim, **values: Any) -> bool:
        """The holder stopped because a cancel was asked."""
        return self.close(url, claim, State.CANCELLED, error="cancelled on request", **values)

    def fail(
        self,
        url: str,
        claim: Claim,
        error: str,
        *,
        max_attempts: int | None = None,
        retry_after: float | None = None,
        **values: Any,
    ) -> str | None:
        """The attempt failed (or its runner crashed). Returns the item's new state, or None
        when the holder no longer holds it.

        Without ``max_attempts`` the item fails for good. With it, while attempts are left the
        item goes back to the queue: ``queued`` at once when ``retry_after`` is None (a crash:
        the next attempt resumes where it stopped), else ``retrying`` until ``retry_after``
        seconds from now (a failure that may heal, e.g. data not there yet); once they are
        spent it fails ("gave up after N attempts"). An item being cancelled ends cancelled.
        """
        model = self.model
        now = utcnow()
        with session_scope(url) as session:
            item = session.execute(
                select(model.state, model.attempts).where(*self._held(claim)).with_for_update()
            ).one_or_none()
            if item is None:
                return None
            values = {**values, "heartbeat_at": now}
            if item.state == State.CANCELLING:
                values.update(state=State.CANCELLED.value, finished_at=now, error="cancelled on request")
            elif max_attempts is None:
                values.update(state=State.FAILED.value, finished_at=now, error=error)
            elif item.attempts < max_attempts:
                values.update(holder=None, error=f"attempt {item.attempts}: {error}")
                if retry_after is None:
                    values.update(state=State.QUEUED.value)
                else:
                    values.update(
                        state=State.RETRYING.value,
                        finished_at=now,
                        available_at=now + timedelta(seconds=retry_after),
                    )
            else:
                values.update(
                    state=State.FAILED.value,
                    finished_at=now,
                    error=f"gave up after {item.attempts} attempts: {error}",
                )
            values["error"] = values["error"][:MAX_ERROR_CHARS]
            # Conditional on what was read: SQLite takes no row lock, so a racing expire or
            # take-over between the read and this write makes it change nothing.
            written = session.execute(
                update(model)
                .where(*self._held(claim), model.state == item.state, model.attempts == item.attempts)
                .values(**values)
                .execution_options(synchronize_session=False)
            )
            return values["state"] if written.rowcount == 1 else None  # type: ignore[attr-defined]

    def release(self, url: str, claim: Claim) -> bool:
        """Give the item back untouched (the holder is shutting down, not failing): queued
        again with the attempt not counted; one being cancelled ends cancelled."""
        model = self.model
        now = utcnow()
        with session_scope(url) as session:
            requeued = session.execute(
                update(model)
                .where(*self._held(claim), model.state == State.RUNNING)
                .values(state=State.QUEUED.value, holder=None, attempts=model.attempts - 1)
                .execution_options(synchronize_session=False)
            )
            if requeued.rowcount == 1:  # type: ignore[attr-defined]
                return True
            stopped = session.execute(
                update(model)
                .where(*self._held(claim), model.state == State.CANCELLING)
                .values(state=State.CANCELLED.value, finished_at=now, error="cancelled on request")
                .execution_options(synchronize_session=False)
            )
            return stopped.rowcount == 1  # type: ignore[attr-defined]

    # --- from outside -------------------------------------------------------------------------

    def cancel(self, url: str, item_id: int) -> Item:
        """A waiting item is cancelled at once; a running one is asked to stop (``cancelling``:
        its holder hears it at its next heartbeat and stops). A finished one is a 409."""
        with session_scope(url) as session:
            item = session.scalar(select(self.model).where(self.model.id == item_id).with_for_update())
            if item is None:
                raise NotFound(self.not_found.format(id=item_id), param=self.param)
            if item.state in FINAL:
                raise Conflict(f"{self.noun} {item_id} has already {item.state}", param=self.param)
            if item.state in WAITING:
                item.state, item.finished_at = State.CANCELLED.value, utcnow()
                item.error, item.holder = "cancelled before it started", None
            else:
                item.state = State.CANCELLING.value
            session.flush()
            return item

    def expire(self, url: str, lease_seconds: float, max_attempts: int) -> list[int]:
        """Settle items whose lease expired (a killed process, a lost machine): back to the
        queue at once while attempts are left (the attempt that died counts), failed once they
        are spent, cancelled if a cancel was asked. Returns the ids it settled.

        Each item is settled by an UPDATE that repeats the expiry condition and names the
        holder it found, so two sweepers racing (or a holder renewing just in time) settle it
        at most once and never from under a live holder.
        """
        model = self.model
        now = utcnow()
        cutoff = now - timedelta(seconds=lease_seconds)
        settled: list[int] = []
        with session_scope(url) as session:
            stale = session.scalars(
                select(model)
                .where(model.state.in_(ACTIVE), self._lapsed(cutoff))
                .order_by(model.id)
                .with_for_update(skip_locked=True)
            ).all()
            for item in stale:
                note = f"holder {item.holder} let its lease expire"
                if item.state == State.CANCELLING:
                    values = {
                        "state": State.CANCELLED.value,
                        "finished_at": now,
                        "error": "cancelled on request",
                    }
                elif item.attempts < max_attempts:
                    values = {"state": State.QUEUED.value, "holder": None, "error": note}
                else:
                    message = f"{note}; gave up after {item.attempts} attempts"
                    values = {"state": State.FAILED.value, "finished_at": now, "error": message}
                holder = model.holder.is_(None) if item.holder is None else model.holder == item.holder
                result = session.execute(
                    update(model)
                    .where(
                        model.id == item.id,
                        holder,
                        model.state == item.state,
                        model.attempts == item.attempts,
                        self._lapsed(cutoff),
                    )
                    .values(**values)
                    .execution_options(synchronize_session=False)
                )
                if result.rowcount == 1:  # type: ignore[attr-defined]
                    settled.append(item.id)
        for item_id in settled:
            log.warning("%s %d: its lease expired; settled", model.__tablename__, item_id)
        return settled

    def _get(self, session: Any, item_id: int) -> Item:
        item = session.get(self.model, item_id)
        if item is None:
            raise NotFound(self.not_found.format(id=item_id), param=self.param)
        return item
