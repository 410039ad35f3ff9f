"""Typed SQLAlchemy 2 models: the one schema every service reads and writes.

Kept apart from the API schemas (``services/common/schemas.py``): these describe storage,
those describe what crosses HTTP. Every timestamp is stored and returned as aware UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    Select,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    select,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.common.time_precision import precision_of_shift

if TYPE_CHECKING:
    from services.common.schemas import AdapterManifest


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC in, aware UTC out, on SQLite (which keeps no zone) and PostgreSQL alike."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: every stored time must be aware UTC")
        value = value.astimezone(UTC)
        # SQLite keeps the text it is given: store it without an offset so ordering is textual.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def _second_known_at(context: Any, time_column: str, precision_column: str | None) -> datetime:
    """The default ``known_at`` of a row inserted without one: the end of its second (a time
    given to the second is known one second after it starts). A coarser precision needs the
    source's zone to find its period's end, so it must come with its ``known_at``."""
    parameters = context.get_current_parameters()
    precision = parameters.get(precision_column, "second") if precision_column else "second"
    if precision not in (None, "second"):
        raise ValueError(f"a {precision}-precision row needs its known_at (the period's end in its zone)")
    moment = parameters[time_column]
    if moment is None or moment.tzinfo is None:
        raise ValueError(f"{time_column} must be an aware datetime to derive known_at")
    return moment.replace(microsecond=0) + timedelta(seconds=1)


def _headline_known_at(context: Any) -> datetime:
    return _second_known_at(context, "published_at", "time_precision")


def _row_known_at(context: Any) -> datetime:
    return _second_known_at(context, "headline_time", None)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON,
        list[Any]: JSON,
    }


# --- ingest -------------------------------------------------------------------------------


class Headline(Base):
    """One news item, stored once: per (source, guid) and, across sources, per (title, time)."""

    __tablename__ = "headlines"
    __table_args__ = (
        UniqueConstraint("source", "guid", name="uq_headlines_source_guid"),
        UniqueConstraint("title_key", "published_at", name="uq_headlines_title_time"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(128))
    guid: Mapped[str] = mapped_column(String(512))
    title: Mapped[str] = mapped_column(Text)
    title_key: Mapped[str] = mapped_column(String(512))
    published_at: Mapped[datetime] = mapped_column(index=True)
    link: Mapped[str | None] = mapped_column(Text, default=None)
    summary: Mapped[str | None] = mapped_column(Text, default=None)
    payload_sha256: Mapped[str] = mapped_column(String(64))
    first_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    # How precisely the source gave the time (services.common.time_precision.Precision), and the
    # end of that period in the source's zone: when the headline is certainly known. Labels,
    # splits and scores read known_at, never published_at (the period's start).
    time_precision: Mapped[str] = mapped_column(String(8), default="second")
    known_at: Mapped[datetime] = mapped_column(index=True, default=_headline_known_at)
    # Set when the headline cannot be labelled (a time outside the plausible range...): the
    # labeller skips it and labels the rest. Clear both to let it be labelled again.
    quarantine_reason: Mapped[str | None] = mapped_column(String(64), default=None)
    quarantined_at: Mapped[datetime | None] = mapped_column(default=None)


class Candle(Base):
    """One closed OHLCV candle, stamped with its open time (ccxt's convention)."""

    __tablename__ = "candles"

    exchange: Mapped[str] = mapped_column(String(64), primary_key=True)
    symbol: Mapped[str] = mapped_column(String(32), primary_key=True)
    timeframe: Mapped[str] = mapped_column(String(8), primary_key=True)
    open_time: Mapped[datetime] = mapped_column(primary_key=True)
    open: Mapped[float] = mapped_column(Float)
    high: Mapped[float] = mapped_column(Float)
    low: Mapped[float] = mapped_column(Float)
    close: Mapped[float] = mapped_column(Float)
    volume: Mapped[float] = mapped_column(Float)
    # Set when the candle cannot be used (a zero price, off the timeframe grid...): it reads as
    # missing, like a gap. A fresh, valid copy from the exchange clears it.
    quarantine_reason: Mapped[str | None] = mapped_column(String(64), default=None)
    quarantined_at: Mapped[datetime | None] = mapped_column(default=None)


def candles_between(
    exchange: str, symbol: str, timeframe: str, start: datetime, end: datetime, *columns: Any
) -> Select[Any]:
    """The given columns of one market's candles opening in [start, end], oldest first
    (quarantined candles left out: they read as missing)."""
    return (
        select(*columns)
        .where(
            Candle.exchange == exchange,
            Candle.symbol == symbol,
            Candle.timeframe == timeframe,
            Candle.open_time >= start,
            Candle.open_time <= end,
            Candle.quarantine_reason.is_(None),
        )
        .order_by(Candle.open_time)
    )


class CandleGap(Base):
    """A run of missing candles, recorded and never filled by interpolation."""

    __tablename__ = "candle_gaps"
    __table_args__ = (
        UniqueConstraint("exchange", "symbol", "timeframe", "gap_start", name="uq_candle_gaps_start"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    exchange: Mapped[str] = mapped_column(String(64))
    symbol: Mapped[str] = mapped_column(String(32))
    timeframe: Mapped[str] = mapped_column(String(8))
    gap_start: Mapped[datetime] = mapped_column()  # open time of the first missing candle
    gap_end: Mapped[datetime] = mapped_column()  # open time of the last missing candle
    missing: Mapped[int] = mapped_column(Integer)
    detected_at: Mapped[datetime] = mapped_column(default=utcnow)


class LabelledRow(Base):
    """A headline joined to the price move after it, with the candles it used (auditable)."""

    __tablename__ = "labelled_rows"
    __table_args__ = (
        UniqueConstraint(
            "headline_id", "exchange", "symbol", "timeframe", "horizon", name="uq_labelled_rows_key"
        ),
        Index("ix_labelled_rows_time", "symbol", "horizon", "headline_time"),  # the export's reads
        # The windows' reads by split time (known_at - 1 s) and the schedule's max(known_at): 0009.
        Index("ix_labelled_rows_known_at", "symbol", "horizon", "known_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    headline_id: Mapped[int] = mapped_column(ForeignKey("headlines.id", ondelete="CASCADE"))
    exchange: Mapped[str] = mapped_column(String(64))
    symbol: Mapped[str] = mapped_column(String(32))
    timeframe: Mapped[str] = mapped_column(String(8))
    horizon: Mapped[str] = mapped_column(String(8))
    headline_time: Mapped[datetime] = mapped_column()
    entry_time: Mapped[datetime] = mapped_column()  # open time of the entry candle (>= known_at)
    exit_time: Mapped[datetime] = mapped_column()  # close time of the exit candle (entry + horizon)
    entry_price: Mapped[float] = mapped_column(Float)
    exit_price: Mapped[float] = mapped_column(Float)
    return_: Mapped[float] = mapped_column("return", Float)
    label: Mapped[str] = mapped_column(String(16), index=True)
    market_situation: Mapped[str] = mapped_column(Text)
    situation_candles: Mapped[list[Any]] = mapped_column(default=list)  # open times, ISO 8601
    labelled_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The headline's known_at the label was derived from: entry opens at or after it, the
    # situation candles closed at or before it. known_at - headline_time is the entry shift.
    known_at: Mapped[datetime] = mapped_column(default=_row_known_at)

    @property
    def entry_shift_seconds(self) -> float:
        """How long after its period's start the headline counts as known (1 s to a day)."""
        return (self.known_at - self.headline_time).total_seconds()

    @property
    def time_precision(self) -> str:
        """The headline time's precision, read back from the shift (the prompt shows no more)."""
        return precision_of_shift(self.entry_shift_seconds).value


class SourceState(Base):
    """Per-source polling state: conditional-GET validators and the last outcome."""

    __tablename__ = "source_state"

    source: Mapped[str] = mapped_column(String(256), primary_key=True)
    etag: Mapped[str | None] = mapped_column(String(512), default=None)
    last_modified: Mapped[str | None] = mapped_column(String(128), default=None)
    cursor: Mapped[datetime | None] = mapped_column(default=None)  # candles: next `since`
    last_success_at: Mapped[datetime | None] = mapped_column(default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    last_error_at: Mapped[datetime | None] = mapped_column(default=None)


# --- the work queue -----------------------------------------------------------------------


class QueueColumns:
    """The columns of an item in the work queue (``services.common.queue``), shared by
    training jobs and backtest runs so that one set of queue operations moves both.

    ``holder`` is who runs the current attempt and ``heartbeat_at`` when it last renewed its
    lease: an item whose heartbeat is older than the service's ``lease_seconds`` is taken over.
    ``available_at`` is when a ``retrying`` item may be claimed again (None: at once).
    ``started_at`` is when the first attempt started; ``attempts`` counts those started.
    """

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    state: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    holder: Mapped[str | None] = mapped_column(String(128), default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    available_at: Mapped[datetime | None] = mapped_column(default=None)
    idempotency_key: Mapped[str | None] = mapped_column(String(128), default=None, unique=True, index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


# --- trainer ------------------------------------------------------------------------------


class Adapter(Base):
    """A published adapter (or full model) on the adapter volume, with its manifest."""

    __tablename__ = "adapters"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_adapters_name_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), index=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    base_model: Mapped[str] = mapped_column(String(512))
    method: Mapped[str] = mapped_column(String(16))
    task: Mapped[str] = mapped_column(String(32))
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    manifest: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(16), default="ready")  # ready | deleted
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    @classmethod
    def from_manifest(cls, manifest: AdapterManifest, path: str, status: str = "ready") -> Adapter:
        """The registry row of a published adapter: its columns are copied from its manifest."""
        return cls(
            name=manifest.name,
            version=manifest.version,
            base_model=manifest.base_model,
            method=manifest.method,
            task=manifest.task,
            path=path,
            sha256=manifest.weights_sha256,
            manifest=manifest.model_dump(mode="json"),
            status=status,
        )


class TrainingJob(QueueColumns, Base):
    """A fine-tuning job in the work queue (``services.common.queue``), with its progress."""

    __tablename__ = "training_jobs"

    adapter_name: Mapped[str | None] = mapped_column(String(128), default=None)
    step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int] = mapped_column(Integer, default=0)
    loss: Mapped[float | None] = mapped_column(Float, default=None)
    eta_seconds: Mapped[float | None] = mapped_column(Float, default=None)
    checkpoint_path: Mapped[str | None] = mapped_column(Text, default=None)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)


# --- backtest -----------------------------------------------------------------------------


class BacktestRun(QueueColumns, Base):
    """One backtest in the work queue (``services.common.queue``): its outcome and report files."""

    __tablename__ = "backtest_runs"

    trigger: Mapped[str] = mapped_column(String(16), default="manual")  # manual | schedule | cli
    json_path: Mapped[str | None] = mapped_column(Text, default=None)
    html_path: Mapped[str | None] = mapped_column(Text, default=None)
    summary: Mapped[dict[str, Any]] = mapped_column(default=dict)


class WalkForward(QueueColumns, Base):
    """A walk-forward in the work queue: queued by the backtest API, run by a pipeline worker.

    ``name`` is the walk-forward's own id (its state file under the reports volume and its
    versions ``<name>-f<i>-<method>``); ``progress`` the worker's last line."""

    __tablename__ = "walk_forwards"

    name: Mapped[str] = mapped_column(String(64), index=True)
    progress: Mapped[str | None] = mapped_column(Text, default=None)
    summary: Mapped[dict[str, Any]] = mapped_column(default=dict)


# --- scheduling ---------------------------------------------------------------------------


class ScheduleClaim(Base):
    """One replica's claim on one slot of a scheduled job: the key lets one insert land."""

    __tablename__ = "schedule_claims"

    job: Mapped[str] = mapped_column(String(128), primary_key=True)
    slot: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))  # hostname:pid (and a scheduler's id)
    claimed_at: Mapped[datetime] = mapped_column(default=utcnow)
