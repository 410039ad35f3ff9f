"""A file's headlines (``HeadlineRows.frame``) into PostgreSQL's ``headlines`` by COPY.

Two ways, the same stored rows (every column, the ids too) as ``INSERT ... ON CONFLICT DO
NOTHING`` of the rows in file order, and one transaction, the caller's:

- ``staged_insert``: the frame COPYed as CSV into a temporary table, then one
  ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``. PostgreSQL then maintains the table's five
  btrees row by row (a random descent into ``(title_key, published_at)`` and ``(source, guid)``
  for each): about 14 s a million rows.
- ``bulk_insert``, when ``headlines`` is small beside the batch (a first import): the table
  locked, its secondary indexes dropped, the rows that can collide with nothing COPYed straight
  into it in PostgreSQL's binary format (in chunks, ``_copy_binary``), the indexes rebuilt
  (one sort each), then the few rows left (a key repeated inside the file, or already stored)
  by ``staged_insert`` against the rebuilt indexes. docs/benchmarks.md ("### Headlines") has the figures.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

_TEXT = ("source", "guid", "title", "title_key", "link", "summary", "payload_sha256", "time_precision")
_EPOCH_SQL = "TIMESTAMPTZ '1970-01-01 00:00:00+00' + INTERVAL '1 microsecond' * "
# The bulk path is taken when the batch holds at least this many times the stored rows. An
# index rebuild sorts the stored rows as well as the batch's, an insert costs a random btree
# descent per batch row only, several times a row's share of a sort: the bulk path measured
# faster still at a batch the table's size (docs/benchmarks.md). Not beyond: the lock keeps
# readers out for the whole import, and the rebuild grows with the table.
BULK_TABLE_RATIO = 1
BULK_LOCK_TIMEOUT = "2s"  # behind another session's lock longer than this: the staged path
# Rows per chunk of the binary COPY (about 7 MB of a bench file's rows): small enough that the
# backend starts early and the last chunk, sent after the rest is made, is short.
COPY_CHUNK_ROWS = 50_000
# The columns the binary COPY sends, in its order, with their PostgreSQL types.
_BINARY_FIELDS = (
    ("id", "int4"), ("source", "text"), ("guid", "text"), ("title", "text"), ("title_key", "text"),
    ("published_at", "timestamptz"), ("link", "text"), ("summary", "text"), ("payload_sha256", "text"),
    ("first_seen_at", "timestamptz"), ("time_precision", "text"), ("known_at", "timestamptz"),
)  # fmt: skip
_PG_EPOCH_US = 946_684_800_000_000  # binary timestamps: microseconds since 2000-01-01 UTC
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags, no header extension
_COPY_TRAILER = b"\xff\xff"


def staged_insert(
    cursor: Any, frame: pd.DataFrame, first_id: int | None = None, now: datetime | None = None
) -> int:
    """COPY the frame (CSV written by pyarrow: 0.4 s a million rows, pandas' to_csv took 5 s;
    times as epoch microseconds, a row's place in the file as ``ord``) into a temporary table,
    then one ``INSERT ... SELECT ... ON CONFLICT DO NOTHING`` in file order. pyarrow quotes
    every string and writes a null as an empty unquoted field, which COPY reads as NULL (link,
    and a summary the file lacks); a quoted empty string stays an empty string. ``first_id``:
    the row at ``ord`` gets ``first_id + ord`` (ids reserved by the caller), else the column's
    default; ``now`` the rows' first_seen_at (default: now). Returns the rows inserted."""
    columns = {name: frame[name] for name in (*_TEXT, "published_us", "known_us")}
    ord_ = frame["ord"] if "ord" in frame else np.arange(len(frame), dtype=np.int64)
    buffer = pa.BufferOutputStream()
    pa_csv.write_csv(pa.table({**columns, "ord": ord_}), buffer, pa_csv.WriteOptions(include_header=False))
    text = ", ".join(f'"{name}"' for name in _TEXT)
    cursor.execute("DROP TABLE IF EXISTS headlines_frame_stage")
    cursor.execute(
        f"CREATE TEMP TABLE headlines_frame_stage AS SELECT {text}, 0::bigint AS published_us,"
        " 0::bigint AS known_us, 0::bigint AS ord FROM headlines WITH NO DATA"
    )
    with cursor.copy("COPY headlines_frame_stage FROM STDIN (FORMAT csv)") as copy:
        copy.write(memoryview(buffer.getvalue()))
    ids = ("id, ", "%(first)s + ord, ") if first_id is not None else ("", "")
    # ORDER BY ord: the first of a repeat in the file is the one kept (a sort only with ids
    # given, where the rows are the few left by bulk_insert; the staged order is the file's).
    order = " ORDER BY ord" if first_id is not None else ""
    cursor.execute(
        f"INSERT INTO headlines ({ids[0]}{text}, published_at, known_at, first_seen_at)"
        f" SELECT {ids[1]}{text}, {_EPOCH_SQL}published_us, {_EPOCH_SQL}known_us, %(now)s"
        f" FROM headlines_frame_stage{order} ON CONFLICT DO NOTHING",
        {"first": first_id, "now": now or datetime.now(UTC)},
    )
    inserted = int(cursor.rowcount)
    cursor.execute("DROP TABLE headlines_frame_stage")
    return inserted


def bulk_worth_it(cursor: Any, batch: int) -> bool:
    """Whether ``headlines`` holds at most batch / BULK_TABLE_RATIO rows (counted no further)."""
    limit = batch // BULK_TABLE_RATIO
    cursor.execute("SELECT count(*) FROM (SELECT FROM headlines LIMIT %s) AS stored", (limit + 1,))
    return int(cursor.fetchone()[0]) <= limit


def lock_for_bulk(driver: Any, cursor: Any) -> bool:
    """ACCESS EXCLUSIVE on ``headlines`` until the commit (dropping an index needs it; readers
    wait for the import), or False if it is not granted within BULK_LOCK_TIMEOUT (another
    session holds a lock) or would deadlock (a session whose lock we wait for waits behind
    our request): the savepoint undoes the attempt, and the staged path runs."""
    from psycopg.errors import DeadlockDetected, LockNotAvailable

    cursor.execute("SELECT current_setting('lock_timeout')")
    before = cursor.fetchone()[0]
    try:
        with driver.transaction():  # a savepoint: a timed-out LOCK leaves the transaction usable
            cursor.execute("SELECT set_config('lock_timeout', %s, true)", (BULK_LOCK_TIMEOUT,))
            cursor.execute("LOCK TABLE headlines IN ACCESS EXCLUSIVE MODE")
            cursor.execute("SELECT set_config('lock_timeout', %s, true)", (before,))
    except (LockNotAvailable, DeadlockDetected):
        return False
    return True


def bulk_insert(cursor: Any, frame: pd.DataFrame) -> int:
    """The frame into a locked ``headlines`` (``lock_for_bulk``), the same rows and ids as
    ``staged_insert``. A row whose keys, (source, guid) and (title_key, published_at), are
    both alone in the batch shares a key with no other row of it: stored already under either
    key, it is skipped (ON CONFLICT would skip it, and it decides nothing for the others);
    else it goes straight in with the secondary indexes dropped. The rows with a key repeated
    in the batch go in after the rebuild, in file order, ON CONFLICT DO NOTHING: no row of the
    first set shares a key with them, so each is kept or skipped exactly as before. Each row's
    id is the one the staged path gives it (one sequence value per row in file order, a
    skipped row's unused). Returns the rows inserted."""
    frame = frame.assign(ord=np.arange(len(frame), dtype=np.int64))
    repeated = repeated_keys(frame)
    cursor.execute("SET LOCAL maintenance_work_mem = '256MB'")  # each index sorted in memory
    cursor.execute("SET LOCAL work_mem = '256MB'")  # the stored-key joins hashed in memory
    cursor.execute("SELECT EXISTS (SELECT FROM headlines)")
    stored = _stored_keys(cursor, frame) if cursor.fetchone()[0] else np.zeros(len(frame), dtype=bool)
    cursor.execute(
        "SELECT setval(pg_get_serial_sequence('headlines', 'id'),"
        " nextval(pg_get_serial_sequence('headlines', 'id')) + %s - 1)",
        (len(frame),),
    )  # the batch's ids reserved at once: nobody else can take one while the table is locked
    first_id = int(cursor.fetchone()[0]) - len(frame) + 1
    keep = ~repeated & ~stored
    clean = frame if keep.all() else frame[keep]  # (a copy of every column only when some go)
    now = datetime.now(UTC)  # one first_seen_at for the import
    if len(clean):  # (a file stored already copies nothing: no index is touched)
        rebuild = _drop_secondary_indexes(cursor)
        _copy_binary(cursor, clean, first_id, now)
        for statement in rebuild:
            cursor.execute(statement)
    return len(clean) + (staged_insert(cursor, frame[repeated], first_id, now) if repeated.any() else 0)


def repeated_keys(frame: pd.DataFrame) -> np.ndarray:
    """Rows whose (source, guid) or (title_key, published_us) another row of the frame has
    (PostgreSQL compares these "C"-collated keys by their bytes, as Python compares str)."""
    repeated = np.zeros(len(frame), dtype=bool)
    for first, second in (("source", "guid"), ("published_us", "title_key")):
        # The second column first (the guid, the title key): a value alone there makes
        # the pair alone whatever the first holds, so where every one is (a file's ids,
        # its titles: the usual case), no other column and no sort are needed.
        codes = _arrow(frame[second]).dictionary_encode()
        if len(codes.dictionary) == len(frame):
            continue
        other = _arrow(frame[first]).dictionary_encode()
        pair = np.asarray(other.indices, dtype=np.int64) * len(codes.dictionary) + np.asarray(
            codes.indices, dtype=np.int64
        )
        _, inverse, counts = np.unique(pair, return_inverse=True, return_counts=True)
        repeated |= counts[inverse] > 1
    return repeated


def _stored_keys(cursor: Any, frame: pd.DataFrame) -> np.ndarray:
    """Rows of the frame whose (source, guid) or (title_key, published_at) is stored already.
    A key is joined against the table only where some stored row lies within the batch's
    range of it (one index range probe each): another feed's file, or another period's, costs
    nothing; the joins cost seconds a million rows."""
    sources = sorted(set(frame["source"]))
    guids, published = frame["guid"], frame["published_us"]
    cursor.execute(
        "SELECT EXISTS (SELECT FROM headlines WHERE source = ANY(%s) AND guid BETWEEN %s AND %s),"
        f" EXISTS (SELECT FROM headlines WHERE published_at BETWEEN {_EPOCH_SQL}%s AND {_EPOCH_SQL}%s)",
        (sources, min(guids), max(guids), int(published.min()), int(published.max())),
    )  # "C"-collated guids: BETWEEN compares bytes, as min and max compare str here
    guid_join = "JOIN headlines AS h ON h.source = k.source AND h.guid = k.guid"
    time_join = (
        f"JOIN headlines AS h ON h.title_key = k.title_key AND h.published_at = {_EPOCH_SQL}k.published_us"
    )
    joins = [join for join, near in zip((guid_join, time_join), cursor.fetchone(), strict=True) if near]
    stored = np.zeros(len(frame), dtype=bool)
    if not joins:
        return stored
    keys = pa.table({name: frame[name] for name in ("source", "guid", "title_key", "published_us", "ord")})
    buffer = pa.BufferOutputStream()
    pa_csv.write_csv(keys, buffer, pa_csv.WriteOptions(include_header=False))
    cursor.execute("DROP TABLE IF EXISTS headlines_frame_keys")
    cursor.execute(
        "CREATE TEMP TABLE headlines_frame_keys AS SELECT source, guid, title_key, 0::bigint AS"
        " published_us, 0::bigint AS ord FROM headlines WITH NO DATA"
    )
    with cursor.copy("COPY headlines_frame_keys FROM STDIN (FORMAT csv)") as copy:
        copy.write(memoryview(buffer.getvalue()))
    # Its size known to the planner: with none (a fresh temporary table) it planned an index
    # probe per row of the batch, each with a heap visit on a table just loaded (6.4 s a
    # million against the stored million, where hash joins take about 2 s).
    cursor.execute("ANALYZE headlines_frame_keys")
    # Joins, not EXISTS ... OR EXISTS: that took an index probe per row, 11 s a million. UNION
    # ALL: a row found by both keys is marked twice here, not deduplicated there (1 s).
    cursor.execute(
        " UNION ALL ".join(f"SELECT k.ord FROM headlines_frame_keys AS k {join}" for join in joins)
    )
    stored[np.array([row[0] for row in cursor.fetchall()], dtype=np.int64)] = True
    cursor.execute("DROP TABLE headlines_frame_keys")
    return stored


def _drop_secondary_indexes(cursor: Any) -> list[str]:
    """Drop ``headlines``' indexes but the primary key and any a foreign key references;
    returns the statements that recreate them as they were (the catalog's own definitions;
    a unique one as its constraint, under its name)."""
    cursor.execute(
        "SELECT i.indexrelid::regclass::text, con.conname, pg_get_constraintdef(con.oid),"
        " pg_get_indexdef(i.indexrelid) FROM pg_index AS i"
        " LEFT JOIN pg_constraint AS con ON con.conindid = i.indexrelid AND con.conrelid = i.indrelid"
        " WHERE i.indrelid = 'headlines'::regclass AND NOT i.indisprimary AND NOT EXISTS"
        " (SELECT FROM pg_constraint AS f WHERE f.contype = 'f' AND f.conindid = i.indexrelid)"
        " ORDER BY 1"
    )
    rebuild = []
    for index, constraint, definition, index_definition in cursor.fetchall():
        if constraint:
            cursor.execute(f'ALTER TABLE headlines DROP CONSTRAINT "{constraint}"')
            rebuild.append(f'ALTER TABLE headlines ADD CONSTRAINT "{constraint}" {definition}')
        else:
            cursor.execute(f"DROP INDEX {index}")
            rebuild.append(index_definition)
    return rebuild


def _copy_binary(cursor: Any, frame: pd.DataFrame, first_id: int, now: datetime) -> None:
    """The frame's rows into ``headlines`` by one binary COPY, sent in chunks of COPY_CHUNK_ROWS
    from a second thread (psycopg's ``QueuedLibpqWriter``; it waits on the socket with the
    GIL released) while this one builds the next chunk: the backend's work on a chunk (a core
    of its own) overlaps the making of the next, where one body built whole and then sent
    left each side idle while the other ran (2.5-2.9 s a million rows, in chunks 1.6-1.9 s;
    on loopback the socket's buffers alone gave the same, the thread keeps it so where they
    are smaller). A failure in either (a row PostgreSQL refuses, an exception here) ends the
    COPY with an error: the caller's transaction rolls back."""
    from psycopg.copy import QueuedLibpqWriter

    names = ", ".join(f'"{name}"' for name, _ in _BINARY_FIELDS)
    statement = f"COPY headlines ({names}) FROM STDIN (FORMAT binary)"
    with cursor.copy(statement, writer=QueuedLibpqWriter(cursor)) as copy:
        for part in _binary_rows(frame, first_id, now):
            copy.write(part)


def _binary_rows(frame: pd.DataFrame, first_id: int, now: datetime) -> Iterator[bytes | memoryview]:
    """The frame's rows in PostgreSQL's binary COPY format (``_BINARY_FIELDS``), as pieces to
    write in turn: the header, each chunk of COPY_CHUNK_ROWS rows, the
    trailer. Each chunk is made when asked for (the caller sends one while the next is made).
    pyarrow joins, row by row, each text column with its length prefix and the fixed-size
    fields between (numpy structured arrays): the joined array's data buffer is the chunk,
    no Python object per row. A null is length -1 and no bytes."""
    rows, step = len(frame), COPY_CHUNK_ROWS
    yield _COPY_HEADER
    if rows:  # (none: every row repeated or stored, nothing to copy)
        values: dict[str, Any] = {
            "id": first_id + frame["ord"].to_numpy(dtype=np.int64),
            "published_at": frame["published_us"].to_numpy(dtype=np.int64) - _PG_EPOCH_US,
            "first_seen_at": np.full(rows, round(now.timestamp() * 1_000_000) - _PG_EPOCH_US, dtype=np.int64),
            "known_at": frame["known_us"].to_numpy(dtype=np.int64) - _PG_EPOCH_US,
        }
        for name, kind in _BINARY_FIELDS:  # each text column one Arrow array, sliced per chunk
            if kind == "text":
                values[name] = _arrow(frame[name], pa.large_string())
        for start in range(0, rows, step):
            yield _binary_chunk({name: value[start : start + step] for name, value in values.items()})
    yield _COPY_TRAILER


def _binary_chunk(values: dict[str, Any]) -> memoryview:
    """Rows (``values``: each field's column, numpy or Arrow) as one binary COPY body."""
    rows = len(values["id"])
    pieces: list[pa.Array] = []
    layout: list[tuple[str, str, Any]] = [("fields", ">i2", len(_BINARY_FIELDS))]
    for name, kind in _BINARY_FIELDS:
        if kind == "int4":
            layout += [(f"{name}_size", ">i4", 4), (name, ">i4", values[name])]
        elif kind == "timestamptz":
            layout += [(f"{name}_size", ">i4", 8), (name, ">i8", values[name])]
        else:
            text = values[name]
            sizes = pc.fill_null(pc.binary_length(text), -1)
            layout.append((f"{name}_size", ">i4", np.asarray(sizes, dtype=np.int64)))
            pieces.append(_fixed(layout, rows))
            pieces.append(pc.fill_null(text, "").cast(pa.large_binary()))
            layout = []
    if layout:
        pieces.append(_fixed(layout, rows))
    joined = pc.binary_join_element_wise(*pieces, pa.scalar(b"", pa.large_binary()))
    offsets = np.frombuffer(joined.buffers()[1], dtype=np.int64)[joined.offset : joined.offset + rows + 1]
    return memoryview(joined.buffers()[2])[offsets[0] : offsets[-1]]


def _arrow(values: pd.Series, kind: pa.DataType | None = None) -> pa.Array:
    """A column as one Arrow array (pandas may hold it in chunks, after a concat)."""
    array = pa.array(values, kind)
    return array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array


def _fixed(layout: list[tuple[str, str, Any]], rows: int) -> pa.Array:
    """Fixed-size fields side by side in each row, as one binary column."""
    packed = np.empty(rows, dtype=np.dtype([(name, kind) for name, kind, _ in layout]))
    for name, _, value in layout:
        packed[name] = value
    width = packed.dtype.itemsize
    array = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(width), rows, [None, pa.py_buffer(packed.tobytes())]
    )
    return array.cast(pa.large_binary())
