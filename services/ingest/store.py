"""Idempotent, atomic writes: headlines, candles, gaps, labelled rows, source state.

Every insert is ``INSERT ... ON CONFLICT DO NOTHING`` (candles: ``DO UPDATE``) in the
dialect at hand, inside one transaction per batch: a batch is stored whole or not at all, and
storing it twice changes nothing. (A file's headlines into a small table take the bulk path of
``headline_copy``: COPY with the secondary indexes rebuilt, the same rows as those INSERTs.)
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Table, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from services.common.db.models import Candle, CandleGap, Headline, LabelledRow, SourceState
from services.common.redact import redact_text
from services.ingest import headline_copy
from services.ingest.csv_import import CandleFrame
from services.ingest.headline_rows import HeadlineRows
from services.ingest.headlines import HeadlineRecord

BATCH_ROWS = 5000  # rows per INSERT statement: bounded memory, few round trips


def _insert(session: Session, table: Table):  # type: ignore[no-untyped-def]
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


def _batches(rows: Sequence[dict[str, Any]], size: int = BATCH_ROWS) -> Iterable[Sequence[dict[str, Any]]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def insert_headlines(session: Session, records: Iterable[HeadlineRecord]) -> int:
    """Store new headlines; ones already stored (same source+guid, or title+time) are skipped.

    Returns how many were new. On PostgreSQL a large batch (a file import) goes through COPY
    (``_copy_headlines``): the same rows, the same skips, one transaction.
    """
    postgres = session.get_bind().dialect.name == "postgresql"
    if isinstance(records, HeadlineRows) and postgres and len(records) >= COPY_THRESHOLD:
        return _copy_headline_frame(session, records.frame)  # a file: no record objects
    rows = [record.row() for record in records]
    if len(rows) >= COPY_THRESHOLD and postgres:
        return _copy_headlines(session, rows)
    inserted = 0
    for batch in _batches(rows):
        statement = _insert(session, Headline.__table__).on_conflict_do_nothing().returning(Headline.id)
        inserted += len(session.execute(statement, list(batch)).all())
    return inserted


def _copy_headlines(session: Session, rows: Sequence[dict[str, Any]]) -> int:
    """COPY into a temporary table, then one INSERT ... SELECT ... ON CONFLICT DO NOTHING
    (either unique key, and duplicates inside the batch, skip a row as the INSERTs do)."""
    now = datetime.now(UTC)

    def write(copy: Any) -> None:
        for row in rows:
            copy.write_row([*row.values(), now])

    return _copy_into_headlines(session, [*rows[0], "first_seen_at"], "", write)


def _copy_headline_frame(session: Session, frame: pd.DataFrame) -> int:
    """The same for a file's ``HeadlineRows`` (row()'s columns), by COPY
    (services/ingest/headline_copy.py): when ``headlines`` is small beside the batch (a first
    import), the table locked and loaded with its secondary indexes rebuilt afterwards; else
    staged in a temporary table and inserted ON CONFLICT DO NOTHING. The same rows either way."""
    driver = session.connection().connection.driver_connection  # psycopg, inside our transaction
    with driver.cursor() as cursor:  # type: ignore[union-attr]
        if headline_copy.bulk_worth_it(cursor, len(frame)) and headline_copy.lock_for_bulk(driver, cursor):
            return headline_copy.bulk_insert(cursor, frame)
        return headline_copy.staged_insert(cursor, frame)


def _copy_into_headlines(session: Session, names: list[str], options: str, write: Any) -> int:
    columns = ", ".join(f'"{name}"' for name in names)
    driver = session.connection().connection.driver_connection  # psycopg, inside our transaction
    with driver.cursor() as cursor:  # type: ignore[union-attr]
        cursor.execute("DROP TABLE IF EXISTS headlines_stage")  # its columns are this call's
        cursor.execute(f"CREATE TEMP TABLE headlines_stage AS SELECT {columns} FROM headlines WITH NO DATA")
        with cursor.copy(f"COPY headlines_stage ({columns}) FROM STDIN {options}") as copy:
            write(copy)
        cursor.execute(
            f"INSERT INTO headlines ({columns}) SELECT {columns} FROM headlines_stage ON CONFLICT DO NOTHING"
        )
        inserted = cursor.rowcount
        cursor.execute("DROP TABLE headlines_stage")
    return inserted


_CANDLE_REFRESHED = ("open", "high", "low", "close", "volume", "quarantine_reason", "quarantined_at")


def upsert_candles(session: Session, exchange: str, symbol: str, timeframe: str, candles: CandleFrame) -> int:
    """Insert or refresh closed candles (the exchange's latest values win). Returns rows written.

    On PostgreSQL a large frame (a file import) goes through COPY (``_copy_candles``)."""
    if len(candles) >= COPY_THRESHOLD and session.get_bind().dialect.name == "postgresql":
        return _copy_candles(session, exchange, symbol, timeframe, candles)
    rows = [
        {
            "exchange": exchange,
            "symbol": symbol,
            "timeframe": timeframe,
            "open_time": datetime.fromtimestamp(int(t), tz=UTC),
            "open": float(o),
            "high": float(h),
            "low": float(lo),
            "close": float(c),
            "volume": float(v),
            "quarantine_reason": None,  # a fresh copy that passed validation lifts a quarantine
            "quarantined_at": None,
        }
        for t, o, h, lo, c, v in zip(
            candles.open_time,
            candles.open,
            candles.high,
            candles.low,
            candles.close,
            candles.volume,
            strict=True,
        )
    ]
    for batch in _batches(rows):
        statement = _insert(session, Candle.__table__)
        statement = statement.on_conflict_do_update(
            index_elements=["exchange", "symbol", "timeframe", "open_time"],
            set_={name: statement.excluded[name] for name in _CANDLE_REFRESHED},
        )
        session.execute(statement, list(batch))
    return len(rows)


_CANDLE_VALUES = ("open", "high", "low", "close", "volume")
_CANDLE_COLUMNS = f"exchange, symbol, timeframe, open_time, {', '.join(_CANDLE_VALUES)}"
_UPSERT_STAGED = f"""
INSERT INTO candles ({_CANDLE_COLUMNS}, quarantine_reason, quarantined_at)
SELECT %s, %s, %s, open_time, {", ".join(_CANDLE_VALUES)}, NULL, NULL FROM candles_stage
ON CONFLICT (exchange, symbol, timeframe, open_time) DO UPDATE SET
    {", ".join(f"{name} = EXCLUDED.{name}" for name in _CANDLE_VALUES)},
    quarantine_reason = NULL, quarantined_at = NULL
WHERE ({", ".join(f"candles.{name}" for name in _CANDLE_VALUES)})
      IS DISTINCT FROM ({", ".join(f"EXCLUDED.{name}" for name in _CANDLE_VALUES)})
   OR candles.quarantine_reason IS NOT NULL
"""
_PG_EPOCH = 946_684_800  # binary COPY timestamps: microseconds since 2000-01-01 UTC
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags, no header extension
_COPY_TRAILER = b"\xff\xff"


def _binary_copy(candles: CandleFrame, texts: tuple[str, ...] = (), nulls: int = 0) -> bytes:
    """Rows in PostgreSQL's binary COPY format, built by numpy in one pass: ``texts`` (the same
    in every row), open time, the five values (float8: written exactly), ``nulls`` NULLs."""
    encoded = [text.encode() for text in texts]
    layout: list[tuple[str, str]] = [("fields", ">i2")]
    for i, value in enumerate(encoded):
        layout += [(f"text_size{i}", ">i4"), (f"text{i}", f"S{len(value)}")]
    layout += [("time_size", ">i4"), ("time", ">i8")]
    for name in _CANDLE_VALUES:
        layout += [(f"{name}_size", ">i4"), (name, ">f8")]
    layout += [(f"null{i}", ">i4") for i in range(nulls)]
    rows = np.empty(len(candles), dtype=np.dtype(layout))
    rows["fields"] = len(encoded) + 1 + len(_CANDLE_VALUES) + nulls
    for i, value in enumerate(encoded):
        rows[f"text_size{i}"], rows[f"text{i}"] = len(value), value
    rows["time_size"], rows["time"] = 8, (candles.open_time - _PG_EPOCH) * 1_000_000
    for name in _CANDLE_VALUES:
        rows[f"{name}_size"], rows[name] = 8, getattr(candles, name)
    for i in range(nulls):
        rows[f"null{i}"] = -1
    return _COPY_HEADER + rows.tobytes() + _COPY_TRAILER


def _copy_candles(session: Session, exchange: str, symbol: str, timeframe: str, candles: CandleFrame) -> int:
    """The same upsert as the multi-row INSERTs, in the same transaction, by binary COPY
    (bench/bench_import_candles.py). A range with no stored candle of this market is copied
    straight into ``candles`` (in a savepoint: should a pull store one meanwhile, the unique
    key refuses the copy and the upsert below runs instead); otherwise the candles go to a
    temporary table and one INSERT ... SELECT ... ON CONFLICT DO UPDATE, which leaves rows
    already holding these values untouched (a re-import rewrites nothing)."""
    from psycopg.errors import UniqueViolation

    market = (Candle.exchange == exchange, Candle.symbol == symbol, Candle.timeframe == timeframe)
    first, last = (
        datetime.fromtimestamp(int(t), tz=UTC) for t in (candles.open_time[0], candles.open_time[-1])
    )
    overlap = select(Candle.open_time).where(*market, Candle.open_time.between(first, last)).limit(1)
    driver = session.connection().connection.driver_connection  # psycopg, inside our transaction
    if all((exchange, symbol, timeframe)) and session.execute(overlap).first() is None:
        try:
            with driver.transaction(), driver.cursor() as cursor:  # type: ignore[union-attr]
                columns = f"{_CANDLE_COLUMNS}, quarantine_reason, quarantined_at"
                with cursor.copy(f"COPY candles ({columns}) FROM STDIN (FORMAT binary)") as copy:
                    copy.write(_binary_copy(candles, (exchange, symbol, timeframe), nulls=2))
            return len(candles)
        except UniqueViolation:
            pass
    with driver.cursor() as cursor:  # type: ignore[union-attr]
        cursor.execute(
            "CREATE TEMP TABLE IF NOT EXISTS candles_stage (open_time timestamptz, open float8,"
            " high float8, low float8, close float8, volume float8)"
        )
        cursor.execute("TRUNCATE candles_stage")
        with cursor.copy("COPY candles_stage FROM STDIN (FORMAT binary)") as copy:
            copy.write(_binary_copy(candles))
        cursor.execute(_UPSERT_STAGED, (exchange, symbol, timeframe))
        cursor.execute("TRUNCATE candles_stage")
    return len(candles)


def insert_gaps(
    session: Session, exchange: str, symbol: str, timeframe: str, gaps: Sequence[tuple[int, int, int]]
) -> int:
    """Record gaps as (first missing open time, last missing open time, count). Returns new ones."""
    rows = [
        {
            "exchange": exchange,
            "symbol": symbol,
            "timeframe": timeframe,
            "gap_start": datetime.fromtimestamp(start, tz=UTC),
            "gap_end": datetime.fromtimestamp(end, tz=UTC),
            "missing": missing,
        }
        for start, end, missing in gaps
    ]
    if not rows:
        return 0
    statement = _insert(session, CandleGap.__table__).on_conflict_do_nothing().returning(CandleGap.id)
    return len(session.execute(statement, rows).all())


COPY_THRESHOLD = 2000  # below this, a multi-row INSERT is as fast and simpler
_LABELLED_COLUMNS = (
    "headline_id", "exchange", "symbol", "timeframe", "horizon", "headline_time", "entry_time", "exit_time",
    "entry_price", "exit_price", "return", "label", "market_situation", "situation_candles", "labelled_at",
    "known_at",
)  # fmt: skip


def insert_labelled_rows(session: Session, rows: Sequence[dict[str, Any]]) -> int:
    """Store labelled rows; a (headline, market, horizon) already labelled is left as it is.

    On PostgreSQL, large batches go through COPY into a temporary table and one
    ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``: the same transaction and the same
    idempotence, several times the speed of multi-row INSERTs (bench/bench_ingest.py).
    """
    if len(rows) >= COPY_THRESHOLD and session.get_bind().dialect.name == "postgresql":
        return _copy_labelled_rows(session, rows)
    inserted = 0
    for batch in _batches(rows):
        statement = _insert(session, LabelledRow.__table__).on_conflict_do_nothing().returning(LabelledRow.id)
        inserted += len(session.execute(statement, list(batch)).all())
    return inserted


def _copy_labelled_rows(session: Session, rows: Sequence[dict[str, Any]]) -> int:
    columns = ", ".join(f'"{name}"' for name in _LABELLED_COLUMNS)
    driver = session.connection().connection.driver_connection  # psycopg, inside our transaction
    with driver.cursor() as cursor:  # type: ignore[union-attr]
        cursor.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS labelled_rows_stage AS SELECT {columns} FROM labelled_rows WITH NO DATA"
        )
        cursor.execute("TRUNCATE labelled_rows_stage")
        with cursor.copy(f"COPY labelled_rows_stage ({columns}) FROM STDIN") as copy:
            for row in rows:
                values = [row.get(name) for name in _LABELLED_COLUMNS]
                if values[15] is None:  # COPY bypasses the model's default: the same one here
                    values[15] = row["headline_time"].replace(microsecond=0) + timedelta(seconds=1)
                values[13] = json.dumps(values[13])  # situation_candles: JSON text
                copy.write_row(values)
        cursor.execute(
            f"INSERT INTO labelled_rows ({columns}) SELECT {columns} FROM labelled_rows_stage ON CONFLICT DO NOTHING"
        )
        inserted = cursor.rowcount
        cursor.execute("TRUNCATE labelled_rows_stage")
    return inserted


def quarantine_headlines(session: Session, reasons: dict[int, str]) -> int:
    """Mark headlines (id -> reason) as not labellable; the labeller skips them from now on."""
    now = datetime.now(UTC)
    for reason in sorted(set(reasons.values())):
        ids = [key for key, value in reasons.items() if value == reason]
        for start in range(0, len(ids), BATCH_ROWS):
            session.execute(
                update(Headline)
                .where(Headline.id.in_(ids[start : start + BATCH_ROWS]), Headline.quarantine_reason.is_(None))
                .values(quarantine_reason=reason[:64], quarantined_at=now)
            )
    return len(reasons)


def quarantine_candles(
    session: Session, exchange: str, symbol: str, timeframe: str, reasons: dict[datetime, str]
) -> int:
    """Mark candles (open time -> reason) as unusable: they read as missing from now on."""
    now = datetime.now(UTC)
    for reason in sorted(set(reasons.values())):
        times = [key for key, value in reasons.items() if value == reason]
        for start in range(0, len(times), BATCH_ROWS):
            session.execute(
                update(Candle)
                .where(
                    Candle.exchange == exchange,
                    Candle.symbol == symbol,
                    Candle.timeframe == timeframe,
                    Candle.open_time.in_(times[start : start + BATCH_ROWS]),
                )
                .values(quarantine_reason=reason[:64], quarantined_at=now)
            )
    return len(reasons)


def quarantine_counts(session: Session) -> dict[str, dict[str, int]]:
    """Quarantined rows by table and reason (``/v1/stats``)."""
    counts: dict[str, dict[str, int]] = {}
    for name, model in (("headlines", Headline), ("candles", Candle)):
        statement = (
            select(model.quarantine_reason, func.count())
            .where(model.quarantine_reason.is_not(None))
            .group_by(model.quarantine_reason)
        )
        counts[name] = {str(reason): int(count) for reason, count in session.execute(statement).all()}
    return counts


def get_source_state(session: Session, source: str) -> SourceState:
    state = session.get(SourceState, source)
    if state is None:
        state = SourceState(source=source)
        session.add(state)
    return state


def record_success(session: Session, source: str, **fields: Any) -> None:
    state = get_source_state(session, source)
    for name, value in fields.items():
        setattr(state, name, value)
    state.last_success_at = datetime.now(UTC)


def record_state(session: Session, source: str, **fields: Any) -> None:
    """Update a source's state (its cursor...) without calling the poll a success."""
    state = get_source_state(session, source)
    for name, value in fields.items():
        setattr(state, name, value)


def record_failure(session: Session, source: str, message: str) -> None:
    """The failure as the operator sees it: URLs in ``message`` redacted, at most 2,000 chars."""
    state = get_source_state(session, source)
    state.last_error = (redact_text(message) or "")[:2000]
    state.last_error_at = datetime.now(UTC)


def last_candle_time(session: Session, exchange: str, symbol: str, timeframe: str) -> datetime | None:
    statement = (
        select(Candle.open_time)
        .where(Candle.exchange == exchange, Candle.symbol == symbol, Candle.timeframe == timeframe)
        .order_by(Candle.open_time.desc())
        .limit(1)
    )
    return session.execute(statement).scalar_one_or_none()
