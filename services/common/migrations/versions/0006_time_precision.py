"""time precision: when a headline is known, and labels that entered before it re-derived

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 16:40:00

A headline known only to the day (or hour, or minute) is taken as known at the END of that
period in its zone (``services.common.time_precision.known_at``): it enters at the first
candle opening at or after that instant, and its market situation is the candles closed at
or before it. This adds ``headlines.time_precision`` and ``headlines.known_at`` (indexed), and
``labelled_rows.known_at`` (the instant the row was derived from), all not null.

Backfill of stored headlines, per source (the zone of an old import was not stored, so the
precision is read from the source's name, else from its stored times; a precision guessed
too fine would be look-ahead, one guessed too coarse only delays entry, so the rule takes the
coarsest precision the stored times are consistent with):

- ``rss:*``: second (feedparser's pubDates carry seconds);
- ``csv:cnbc_headlines`` (the Kaggle CNBC file, "7:51 PM ET"): minute;
- any other source, from all its stored times on the UTC clock: a time with a non-zero second
  (or fraction) makes it second; otherwise, every time at one UTC time of day on a 15-minute
  step (a zone's midnight), or at two within an hour of each other (one zone's midnight either
  side of its DST change), makes it day; otherwise every time at one minute of the hour on a
  15-minute step makes it hour; otherwise minute.

``known_at`` is the end of that period: + 1 s, + 60 s, + 1 h, + 24 h. For a day source seen at
two times of day (a DST zone) the fall-back day lasts 25 h and cannot be told apart without the
zone, so a row at the earlier time (summer time) takes 24 h plus the gap: its entry may come an
hour later than needed, never earlier.

Labels: a stored row is re-derived (deleted, so that the next labelling pass derives it again
under the new contract) exactly when the new contract reads it differently: its entry candle
opens before the headline's ``known_at`` (the headline at exactly a candle's open time, known
to the second, entered at that candle's open: a second of look-ahead), or a candle closed
between ``headline_time`` and ``known_at`` and the stored situation candles are not the ones
closed at or before ``known_at`` (a row already derived from ``known_at`` has them). The others keep their values (and
their ids) and get the headline's ``known_at``. Nothing references ``labelled_rows.id`` by a
foreign key; a backtest report lists the row ids it scored, and walk-forward pooling refuses
a fold whose rows changed since it was scored, which is what a re-derived label is. The
count re-derived is logged. Rows are only backfilled where the new columns are null, so the
data step run again changes nothing. The downgrade drops the three columns (the deleted rows
are not restored: the old contract's labels were the look-ahead this fixes).
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from alembic import op

import services.common.db.models

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration")

MINUTE_SOURCES = frozenset({"csv:cnbc_headlines"})
SECOND_PREFIXES = ("rss:",)
STEP = 900  # every zone in use is offset from UTC by a multiple of 15 minutes
DAY = 86_400
PERIOD = {"second": 1, "minute": 60, "hour": 3600, "day": DAY}
CHUNK = 500
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "M": 2592000}
_TIMEFRAME = re.compile(r"^\s*(\d+)\s*([smhdwM])\s*$")


def _time() -> sa.types.TypeEngine[Any]:
    return services.common.db.models.UTCDateTime(timezone=True)


headlines = sa.table(
    "headlines",
    sa.column("id", sa.Integer),
    sa.column("source", sa.String),
    sa.column("published_at", _time()),
    sa.column("time_precision", sa.String),
    sa.column("known_at", _time()),
)
labelled_rows = sa.table(
    "labelled_rows",
    sa.column("id", sa.Integer),
    sa.column("headline_id", sa.Integer),
    sa.column("exchange", sa.String),
    sa.column("symbol", sa.String),
    sa.column("timeframe", sa.String),
    sa.column("headline_time", _time()),
    sa.column("entry_time", _time()),
    sa.column("market_situation", sa.Text),
    sa.column("situation_candles", sa.JSON),
    sa.column("known_at", _time()),
)
candles = sa.table(
    "candles",
    sa.column("exchange", sa.String),
    sa.column("symbol", sa.String),
    sa.column("timeframe", sa.String),
    sa.column("open_time", _time()),
    sa.column("quarantine_reason", sa.String),
)


def upgrade() -> None:
    with op.batch_alter_table("headlines", schema=None) as batch_op:
        batch_op.add_column(sa.Column("time_precision", sa.String(length=8), nullable=True))
        batch_op.add_column(sa.Column("known_at", _time(), nullable=True))
    with op.batch_alter_table("labelled_rows", schema=None) as batch_op:
        batch_op.add_column(sa.Column("known_at", _time(), nullable=True))
    backfill(op.get_bind())
    with _rows_kept_through_copy(op.get_bind()), op.batch_alter_table("headlines", schema=None) as batch_op:
        batch_op.alter_column("time_precision", existing_type=sa.String(length=8), nullable=False)
        batch_op.alter_column("known_at", existing_type=_time(), nullable=False)
        batch_op.create_index(batch_op.f("ix_headlines_known_at"), ["known_at"], unique=False)
    with op.batch_alter_table("labelled_rows", schema=None) as batch_op:
        batch_op.alter_column("known_at", existing_type=_time(), nullable=False)


@contextmanager
def _rows_kept_through_copy(connection: sa.Connection) -> Iterator[None]:
    """SQLite alters a column by copying the table and dropping the old one; with foreign keys
    on, dropping ``headlines`` cascades to every labelled row. Keep them aside and put them
    back, ids and all, once the new ``headlines`` (same ids) is in place."""
    if connection.dialect.name != "sqlite":
        yield
        return
    connection.execute(sa.text("CREATE TEMP TABLE labelled_rows_0006 AS SELECT * FROM labelled_rows"))
    yield
    connection.execute(sa.text("DELETE FROM labelled_rows"))
    connection.execute(sa.text("INSERT INTO labelled_rows SELECT * FROM labelled_rows_0006"))
    connection.execute(sa.text("DROP TABLE labelled_rows_0006"))


def downgrade() -> None:
    with op.batch_alter_table("labelled_rows", schema=None) as batch_op:
        batch_op.drop_column("known_at")
    with _rows_kept_through_copy(op.get_bind()), op.batch_alter_table("headlines", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_headlines_known_at"))
        batch_op.drop_column("known_at")
        batch_op.drop_column("time_precision")


# --- the data step ------------------------------------------------------------------------


def backfill(connection: sa.Connection) -> tuple[int, int]:
    """Precision and known_at for every headline without them, then the labelled rows without
    a known_at: kept (known_at copied) or deleted for the next pass to re-derive. Returns
    (headlines backfilled, rows re-derived); a second call finds nothing to do."""
    filled = _backfill_headlines(connection)
    rederived = _backfill_rows(connection)
    log.info("0006: %d headlines given a time precision; %d labelled rows to re-derive", filled, rederived)
    return filled, rederived


def _backfill_headlines(connection: sa.Connection) -> int:
    by_source: dict[str, list[tuple[int, datetime]]] = defaultdict(list)
    pending = sa.select(headlines.c.id, headlines.c.source, headlines.c.published_at).where(
        headlines.c.known_at.is_(None)
    )
    for row_id, source, published in connection.execute(pending):
        by_source[source].append((row_id, published))
    update = (
        headlines.update()
        .where(headlines.c.id == sa.bindparam("row_id"))
        .values(time_precision=sa.bindparam("precision"), known_at=sa.bindparam("known"))
    )
    filled = 0
    for source, items in by_source.items():
        precision = source_precision(source, [published for _, published in items])
        ends = known_ats([published for _, published in items], precision)
        values = [
            {"row_id": row_id, "precision": precision, "known": end}
            for (row_id, _), end in zip(items, ends, strict=True)
        ]
        for start in range(0, len(values), CHUNK):
            connection.execute(update, values[start : start + CHUNK])
        filled += len(values)
        log.info("0006: source %s: %d headlines, precision %s", source, len(values), precision)
    return filled


def _seconds_of_day(moment: datetime) -> int:
    return moment.hour * 3600 + moment.minute * 60 + moment.second


def _dst_pair(times_of_day: set[int]) -> tuple[int, int] | None:
    """(earlier, later) when the two times of day are within an hour, on the circle."""
    first, second = sorted(times_of_day)
    if (second - first) <= 3600:
        return first, second
    if (first + DAY - second) <= 3600:  # across UTC midnight (London: 23:00 and 00:00)
        return second, first
    return None


def source_precision(source: str, times: list[datetime]) -> str:
    """The backfill rule of this migration's docstring."""
    if source.startswith(SECOND_PREFIXES):
        return "second"
    if source in MINUTE_SOURCES:
        return "minute"
    utc = [moment.astimezone(UTC) for moment in times]
    if any(moment.second or moment.microsecond for moment in utc):
        return "second"
    of_day = {_seconds_of_day(moment) for moment in utc}
    if all(value % STEP == 0 for value in of_day) and (
        len(of_day) == 1 or (len(of_day) == 2 and _dst_pair(of_day))
    ):
        return "day"
    minutes = {moment.minute for moment in utc}
    if len(minutes) == 1 and (minutes.pop() * 60) % STEP == 0:
        return "hour"
    return "minute"


def known_ats(times: list[datetime], precision: str) -> list[datetime]:
    """The end of each time's period (this migration's docstring)."""
    if precision != "day":
        step = timedelta(seconds=PERIOD[precision])
        return [moment.replace(microsecond=0) + step for moment in times]
    of_day = {_seconds_of_day(moment.astimezone(UTC)) for moment in times}
    pair = _dst_pair(of_day) if len(of_day) == 2 else None
    ends = []
    for moment in times:
        extra = 0
        if pair and _seconds_of_day(moment.astimezone(UTC)) == pair[0]:
            extra = (pair[1] - pair[0]) % DAY  # summer time: the day may be the 25-hour one
        ends.append(moment + timedelta(seconds=DAY + extra))
    return ends


def _timeframe_seconds(timeframe: str) -> int:
    match = _TIMEFRAME.match(timeframe)
    if not match:
        raise ValueError(f"labelled row with unknown timeframe {timeframe!r}")
    return int(match.group(1)) * _UNITS[match.group(2)]


def _epoch(moment: datetime) -> int:
    return int(moment.astimezone(UTC).timestamp())


def _situation_slots(situation: str) -> int:
    """How many lookback candles a row's situation text describes ("A after a B": 2)."""
    return 0 if situation.strip() in ("", "Unknown") else situation.count(" after a ") + 1


def _backfill_rows(connection: sa.Connection) -> int:
    joined = (
        sa.select(
            labelled_rows.c.id,
            labelled_rows.c.exchange,
            labelled_rows.c.symbol,
            labelled_rows.c.timeframe,
            labelled_rows.c.headline_time,
            labelled_rows.c.entry_time,
            labelled_rows.c.market_situation,
            labelled_rows.c.situation_candles,
            headlines.c.known_at,
        )
        .join(headlines, headlines.c.id == labelled_rows.c.headline_id)
        .where(labelled_rows.c.known_at.is_(None))
    )
    stale: list[int] = []
    keep: list[dict[str, Any]] = []
    check: list[tuple[Any, list[int], list[int]]] = []  # (row, wanted slots, stored slots)
    for row in connection.execute(joined):
        # Entry first: the old rule entered at the first open at or after headline_time.
        known = _epoch(row.known_at)
        if _epoch(row.entry_time) < known:
            stale.append(row.id)
            continue
        tf = _timeframe_seconds(row.timeframe)
        newest = (known // tf) * tf - tf  # the last candle closed at or before known_at
        if newest == (_epoch(row.headline_time) // tf) * tf - tf:
            keep.append({"row_id": row.id, "known": row.known_at})  # the same situation candles
            continue
        wanted = [newest - k * tf for k in range(_situation_slots(row.market_situation))]
        stored = [_epoch(datetime.fromisoformat(text)) for text in row.situation_candles or []]
        check.append((row, wanted, stored))
    usable = _usable_candles(connection, [(row, wanted) for row, wanted, _ in check])
    for row, wanted, stored in check:
        present = usable[(row.exchange, row.symbol, row.timeframe)]
        if [slot for slot in wanted if slot in present] != stored:
            stale.append(row.id)
        else:
            keep.append({"row_id": row.id, "known": row.known_at})
    copy = (
        labelled_rows.update()
        .where(labelled_rows.c.id == sa.bindparam("row_id"))
        .values(known_at=sa.bindparam("known"))
    )
    for start in range(0, len(keep), CHUNK):
        connection.execute(copy, keep[start : start + CHUNK])
    for start in range(0, len(stale), CHUNK):
        connection.execute(labelled_rows.delete().where(labelled_rows.c.id.in_(stale[start : start + CHUNK])))
    return len(stale)


def _usable_candles(connection: sa.Connection, rows: list[tuple[Any, list[int]]]) -> dict[Any, set[int]]:
    """Open times (epoch) of the unquarantined candles each row's situation could use, by market."""
    spans: dict[tuple[str, str, str], tuple[int, int]] = {}
    for row, wanted in rows:
        if not wanted:
            continue
        key = (row.exchange, row.symbol, row.timeframe)
        low, high = spans.get(key, (min(wanted), max(wanted)))
        spans[key] = (min(low, *wanted), max(high, *wanted))
    usable: dict[Any, set[int]] = defaultdict(set)
    for (exchange, symbol, timeframe), (low, high) in spans.items():
        query = sa.select(candles.c.open_time).where(
            candles.c.exchange == exchange,
            candles.c.symbol == symbol,
            candles.c.timeframe == timeframe,
            candles.c.open_time >= datetime.fromtimestamp(low, UTC),
            candles.c.open_time <= datetime.fromtimestamp(high, UTC),
            candles.c.quarantine_reason.is_(None),
        )
        usable[(exchange, symbol, timeframe)] = {_epoch(t) for (t,) in connection.execute(query)}
    return usable
