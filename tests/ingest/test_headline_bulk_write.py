"""The bulk headline write (services/ingest/headline_copy.py) against the per-row INSERTs.

A file imported into a small ``headlines`` takes the bulk path (table locked, secondary
indexes dropped and rebuilt, binary COPY); it must store exactly what ``INSERT ... ON
CONFLICT DO NOTHING`` of the same records in file order stores (every column, the ids
relative to the sequence), keep the schema as it was, and leave everything as before when it
fails halfway.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psycopg
import pytest
from sqlalchemy import text

from services.common.db.engine import session_scope
from services.ingest import headline_copy
from services.ingest.headline_import import import_headlines
from services.ingest.headline_rows import HeadlineRows
from services.ingest.store import COPY_THRESHOLD, insert_headlines

pytestmark = pytest.mark.postgres

_TITLES = (
    "Plain ASCII headline",
    "  Leading and  double   spaces ",
    "Bitcoin &amp; ether &amp;amp; more",
    "Caf\u00e9 \u2014 \ufb01nance (NFKC ligature)",
    'Quotes " and a backslash \\ inside',
    "A tab\tinside, and a comma",
    "STRASSE vs Stra\u00dfe casefold",
    "x" * 600,
)
_TIMES = ("2020-07-01 12:34:56", "2020-07-02", "2020-07-03 08:15")  # second, day, minute precision
_ROWS = 2400  # above COPY_THRESHOLD: a file's batch


def _csv_cell(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def _fixture(path: Path) -> Path:
    """``_ROWS`` rows (id, time, title, summary) with every kind of collision an import meets:
    an id repeated with another title, a title and time repeated under another id, an exact
    copy, and a chain (A; B shares A's id; C shares B's title and time but not A's: the
    per-row INSERTs skip B, so C's only rival is gone and C is stored)."""
    lines = ["id,time,title,summary"]
    for index in range(_ROWS):
        title = f"{_TITLES[index % len(_TITLES)]} {index // len(_TITLES)}"
        when = _TIMES[index % len(_TIMES)].replace("2020-07", f"20{10 + index % 9}-0{1 + index % 9}")
        summary = "" if index % 4 == 0 else f'Summary, "{index}" &amp; more'  # none: NULL
        lines.append(f"g{index},{when},{_csv_cell(title)},{_csv_cell(summary)}")
    lines += [
        'g5,2001-01-01 00:00:00,"Another title under id g5",',  # the id again
        f'other-id,{lines[1].split(",")[1]},"Plain ASCII headline 0","copy"',  # title+time again
        lines[20],  # an exact copy
        'chain-a,2002-02-02 02:02:02,"Chain A",',
        'chain-a,2003-03-03 03:03:03,"Chain B",',
        'chain-c,2003-03-03 03:03:03,"Chain B",',
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def pg(postgres_url: str) -> Iterator[str]:
    """The session's migrated PostgreSQL with no headlines before and after."""
    _clear(postgres_url)
    yield postgres_url
    _clear(postgres_url)


def _clear(url: str) -> None:
    with session_scope(url) as session:
        session.execute(text("DELETE FROM labelled_rows"))
        session.execute(text("DELETE FROM headlines"))


def _stored(url: str) -> list[dict[str, Any]]:
    """Every row, every column but first_seen_at (the moment of each import, checked apart)."""
    with session_scope(url) as session:
        rows = session.execute(text("SELECT * FROM headlines ORDER BY id")).mappings().all()
    return [{k: v for k, v in row.items() if k != "first_seen_at"} for row in rows]


def _sequence(url: str) -> int:
    with session_scope(url) as session:
        # The next id it gives (a fresh sequence has not given its last_value yet).
        query = "SELECT CASE WHEN is_called THEN last_value + 1 ELSE last_value END FROM headlines_id_seq"
        return int(session.execute(text(query)).scalar_one())


def _relative(rows: list[dict[str, Any]], base: int) -> list[dict[str, Any]]:
    return [{**row, "id": row["id"] - base} for row in rows]


def _index_oids(url: str) -> dict[str, int]:
    with session_scope(url) as session:
        found = session.execute(
            text(
                "SELECT indexrelid::regclass::text, indexrelid::int FROM pg_index WHERE indrelid = 'headlines'::regclass"
            )
        ).all()
    return dict(found)  # type: ignore[arg-type]


def _schema(url: str) -> tuple[list[Any], list[Any]]:
    """The indexes and constraints of ``headlines`` (and those referencing it) as the catalog
    writes them."""
    with session_scope(url) as session:
        indexes = session.execute(
            text("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'headlines' ORDER BY 1")
        ).all()
        constraints = session.execute(
            text(
                "SELECT conname, contype, conrelid::regclass::text, pg_get_constraintdef(oid), condeferrable,"
                " condeferred, convalidated FROM pg_constraint WHERE conrelid = 'headlines'::regclass"
                " OR confrelid = 'headlines'::regclass ORDER BY 1"
            )
        ).all()
    return [tuple(row) for row in indexes], [tuple(row) for row in constraints]


def _import_bulk(url: str, rows: HeadlineRows) -> int:
    with session_scope(url) as session:
        return insert_headlines(session, rows)


def _import_per_row(url: str, rows: HeadlineRows) -> int:
    """The records one by one through multi-row INSERTs (batches under COPY_THRESHOLD, in order)."""
    records = list(rows)
    stored = 0
    with session_scope(url) as session:
        for start in range(0, len(records), COPY_THRESHOLD - 1):
            stored += insert_headlines(session, records[start : start + COPY_THRESHOLD - 1])
    return stored


def _preload(url: str, rows: HeadlineRows) -> None:
    """Rows stored before the import (fewer than the batch: the bulk path still runs): one
    sharing a file row's id, one sharing another's title and time, one unrelated."""
    same_id = replace(rows[3], title="A stored title", summary=None)
    same_title_time = replace(rows[10], guid="stored-guid", summary="stored")
    unrelated = replace(rows[10], source="csv:other", guid="x", title="Unrelated")
    with session_scope(url) as session:
        assert insert_headlines(session, [same_id, same_title_time, unrelated]) == 3


def _preload_elsewhere(url: str, rows: HeadlineRows) -> None:
    """A row of another feed, from before the file's first time: no key of it is near the
    batch's, so the bulk path joins nothing against the table."""
    first = min(rows, key=lambda record: record.published_at)
    early = replace(first, source="csv:other", published_at=datetime(2000, 1, 1, tzinfo=UTC), known_at=None)
    with session_scope(url) as session:
        assert insert_headlines(session, [early]) == 1


def _paths(url: str, rows: HeadlineRows, preload: bool) -> dict[str, tuple[int, list[dict[str, Any]], int]]:
    """Each path on a table holding the same rows before: (count returned, rows, ids used)."""
    results = {}
    for name, write in (("bulk", _import_bulk), ("per_row", _import_per_row)):
        _clear(url)
        if preload:
            _preload(url, rows)
        base = _sequence(url)
        stored = write(url, rows)
        results[name] = (stored, _relative(_stored(url), base), _sequence(url) - base)
    return results


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> HeadlineRows:
    path = _fixture(tmp_path_factory.mktemp("bulk") / "headlines.csv")
    result = import_headlines(path, "csv:bulk", now=datetime(2026, 1, 1, tzinfo=UTC))
    assert result.rejects.total() == 0 and isinstance(result.records, HeadlineRows)
    assert len(result.records) == _ROWS + 6
    return result.records


@pytest.mark.parametrize("preload", [False, True], ids=["empty-table", "rows-stored-before"])
def test_the_bulk_path_stores_what_per_row_inserts_store(
    pg: str, imported: HeadlineRows, preload: bool
) -> None:
    results = _paths(pg, imported, preload)
    bulk, per_row = results["bulk"], results["per_row"]
    assert bulk == per_row  # count, every column of every row, ids relative to the sequence
    stored, rows, _ = bulk
    titles = [row["title"] for row in rows]
    assert "Chain A" in titles and titles.count("Chain B") == 1  # the chain: A and C kept
    chain_c = next(row for row in rows if row["title"] == "Chain B")
    assert chain_c["guid"] == "chain-c"
    assert "Another title under id g5" not in titles  # the id repeated: the first kept
    summaries = {row["summary"] for row in rows}
    assert None in summaries and "" not in summaries and 'Summary, "1" & more' in summaries
    assert {row["time_precision"] for row in rows} == {"second", "day", "minute"}
    assert len(rows) == stored + 3 * preload < len(imported)  # the repeats were skipped
    guids = {row["guid"] for row in rows}
    assert ("g3" in guids, "g10" in guids) == (True, not preload)  # g10's title and time were taken
    if preload:
        assert next(row["title"] for row in rows if row["guid"] == "g3") == "A stored title"


def test_a_table_of_unrelated_rows_takes_the_bulk_path_without_a_join(
    pg: str, imported: HeadlineRows
) -> None:
    results = {}
    for name, write in (("bulk", _import_bulk), ("per_row", _import_per_row)):
        _clear(pg)
        _preload_elsewhere(pg, imported)
        base, oids = _sequence(pg), _index_oids(pg)
        stored = write(pg, imported)
        results[name] = (stored, _relative(_stored(pg), base), _sequence(pg) - base)
        assert (_index_oids(pg) != oids) == (name == "bulk")  # the bulk path ran
    assert results["bulk"] == results["per_row"] and len(results["bulk"][1]) == results["bulk"][0] + 1


def test_a_file_of_nothing_but_repeats(pg: str, imported: HeadlineRows) -> None:
    """Every row twice: none goes in by the binary COPY, all by the staged path after it."""
    twice = HeadlineRows(pd.concat([imported.frame, imported.frame], ignore_index=True), [], [])
    assert headline_copy.repeated_keys(twice.frame).all()
    results = {}
    for name, write in (("bulk", _import_bulk), ("per_row", _import_per_row)):
        _clear(pg)
        base = _sequence(pg)
        stored = write(
            pg,
            twice if name == "bulk" else HeadlineRows(twice.frame, imported._header, [*imported._cells] * 2),
        )
        results[name] = (stored, _relative(_stored(pg), base), _sequence(pg) - base)
    assert results["bulk"] == results["per_row"]


def test_the_bulk_path_ran_rebuilt_the_indexes_and_left_the_schema_as_it_was(
    pg: str, imported: HeadlineRows
) -> None:
    schema, oids = _schema(pg), _index_oids(pg)
    _import_bulk(pg, imported)
    after = _index_oids(pg)
    assert _schema(pg) == schema  # every index and constraint, byte for byte
    assert after["headlines_pkey"] == oids["headlines_pkey"]  # the key the foreign key uses stays
    rebuilt = {name for name in oids if after[name] != oids[name]}
    assert rebuilt == set(oids) - {"headlines_pkey"}  # the bulk path did run


def test_a_second_import_stores_nothing_and_changes_nothing(pg: str, imported: HeadlineRows) -> None:
    first = _import_bulk(pg, imported)
    rows = _stored(pg)
    assert first == len(rows) > 0
    with session_scope(pg) as session:  # one moment, the import's, not a made-up one
        seen = session.execute(text("SELECT DISTINCT first_seen_at FROM headlines")).scalars().all()
    assert len(seen) == 1 and abs((seen[0] - datetime.now(UTC)).total_seconds()) < 120
    oids = _index_oids(pg)
    assert _import_bulk(pg, imported) == 0
    assert _stored(pg) == rows and _index_oids(pg) == oids  # nothing to copy: no index rebuilt


def _failing(rows: HeadlineRows, where: str) -> HeadlineRows:
    """The rows with one that PostgreSQL refuses (a precision longer than its varchar(8)):
    among the rows copied straight in (the indexes dropped by then), or among the repeated
    ones inserted after the rebuild."""
    frame = rows.frame.copy()
    repeated = headline_copy.repeated_keys(frame)
    index = int(np.flatnonzero(~repeated if where == "copied" else repeated)[-1])
    frame.loc[frame.index[index], "time_precision"] = "fortnight"
    return HeadlineRows(frame, [], [])


@pytest.mark.parametrize("where", ["copied", "repeated"])
def test_a_write_failing_halfway_leaves_the_table_and_its_indexes_as_before(
    pg: str, imported: HeadlineRows, where: str
) -> None:
    _preload(pg, imported)
    rows, schema, oids, sequence = _stored(pg), _schema(pg), _index_oids(pg), _sequence(pg)
    with pytest.raises(psycopg.errors.StringDataRightTruncation, match="too long"):
        _import_bulk(pg, _failing(imported, where))
    assert _stored(pg) == rows and _schema(pg) == schema
    assert _index_oids(pg) == oids  # the very same indexes: the drops rolled back
    assert _sequence(pg) >= sequence  # (a sequence never goes back; ids are not reused)
    assert _import_bulk(pg, imported) > 0  # and the table takes the import afterwards


def test_a_table_another_session_holds_falls_back_to_the_staged_path(
    pg: str, imported: HeadlineRows, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader in an open transaction keeps its lock: the bulk path waits BULK_LOCK_TIMEOUT,
    then the staged INSERT stores the same rows with the indexes untouched."""
    monkeypatch.setattr(headline_copy, "BULK_LOCK_TIMEOUT", "200ms")
    expected = _paths(pg, imported, preload=False)["per_row"]
    _clear(pg)
    oids, base = _index_oids(pg), _sequence(pg)
    reader = psycopg.connect(pg.replace("postgresql+psycopg://", "postgresql://"))
    try:
        reader.execute("SELECT count(*) FROM headlines").fetchone()  # ACCESS SHARE until rollback
        stored = _import_bulk(pg, imported)
    finally:
        reader.rollback()
        reader.close()
    assert _index_oids(pg) == oids
    rows = _stored(pg)
    assert (stored, _relative(rows, base), _sequence(pg) - base) == expected


def test_repeated_keys_are_the_rows_pandas_calls_duplicated(imported: HeadlineRows) -> None:
    frame = imported.frame
    expected = frame.duplicated(["source", "guid"], keep=False) | frame.duplicated(
        ["title_key", "published_us"], keep=False
    )
    found = headline_copy.repeated_keys(frame)
    assert found.sum() > 4 and (found == expected.to_numpy()).all()


def test_binary_rows_round_trip_through_copy(pg: str) -> None:
    """Texts of every kind (empty, NULL, multi-byte, quotes, tab, backslash) come back as sent."""
    texts = ["", "plain", "caf\u00e9 \u2014 \U0001f680", 'q"u\\o\tte', "x" * 511]
    frame = pd.DataFrame(
        {
            "source": "s",
            "guid": [f"g{i}" for i in range(len(texts))],
            "title": texts,
            "title_key": [f"k{i}" for i in range(len(texts))],
            "published_us": np.arange(len(texts), dtype=np.int64) * 1_000_001 + 1_600_000_000_000_000,
            "link": [None, "http://a", None, "", None],
            "summary": [None, *texts[1:]],
            "payload_sha256": "0" * 64,
            "time_precision": "second",
            "known_us": np.arange(len(texts), dtype=np.int64) + 1_600_000_000_000_001,
        }
    )
    frame = frame.loc[frame.index.repeat(COPY_THRESHOLD // len(texts) + 1)].reset_index(drop=True)
    frame["guid"] = [f"g{i}" for i in range(len(frame))]
    frame["title_key"] = [f"k{i}" for i in range(len(frame))]
    assert _import_bulk(pg, HeadlineRows(frame, [], [])) == len(frame)
    with session_scope(pg) as session:
        found = session.execute(
            text(
                "SELECT guid, title, link, summary, extract(epoch FROM published_at) * 1000000,"
                " extract(epoch FROM known_at) * 1000000 FROM headlines"
            )
        ).all()
    got = {row[0]: row[1:] for row in found}
    for record in frame.itertuples():
        title, link, summary, published, known = got[record.guid]
        sent = [value if isinstance(value, str) else None for value in (record.link, record.summary)]
        assert (title, link, summary) == (record.title, *sent)  # pandas holds a None as NaN
        assert (int(published), int(known)) == (record.published_us, record.known_us)


def _failing_at(rows: HeadlineRows, position: int) -> HeadlineRows:
    """The rows with the ``position``-th of those copied straight in refused by PostgreSQL."""
    frame = rows.frame.copy()
    index = int(np.flatnonzero(~headline_copy.repeated_keys(frame))[position])
    frame.loc[frame.index[index], "time_precision"] = "fortnight"
    return HeadlineRows(frame, [], [])


def test_the_copy_in_chunks_stores_what_per_row_inserts_store(
    pg: str, imported: HeadlineRows, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks of 97 rows (about 25, the last short) sent from the writer thread: the same
    rows, columns and ids as the per-row INSERTs, on an empty table and on one with rows."""
    monkeypatch.setattr(headline_copy, "COPY_CHUNK_ROWS", 97)
    sent: list[int] = []
    chunk = headline_copy._binary_chunk
    monkeypatch.setattr(
        headline_copy, "_binary_chunk", lambda values: sent.append(len(values["id"])) or chunk(values)
    )
    alone = int((~headline_copy.repeated_keys(imported.frame)).sum())
    for preload in (False, True):
        sent.clear()
        results = _paths(pg, imported, preload)
        assert results["bulk"] == results["per_row"]
        assert len(sent) > 20 and set(sent[:-1]) == {97} and max(sent) == 97
        assert sum(sent) == alone - 2 * preload  # all but the repeats (and the two stored keys)


@pytest.mark.parametrize("position", [0, 500], ids=["first-chunk", "middle-chunk"])
def test_a_row_refused_while_later_chunks_are_sent_leaves_everything_as_before(
    pg: str, imported: HeadlineRows, monkeypatch: pytest.MonkeyPatch, position: int
) -> None:
    """PostgreSQL refuses a row of an early chunk while the thread still sends the rest: the
    error comes back from the COPY, and the transaction rolls back the drops and the rows."""
    monkeypatch.setattr(headline_copy, "COPY_CHUNK_ROWS", 100)
    _preload(pg, imported)
    rows, schema, oids = _stored(pg), _schema(pg), _index_oids(pg)
    with pytest.raises(psycopg.errors.StringDataRightTruncation, match="too long"):
        _import_bulk(pg, _failing_at(imported, position))
    assert _stored(pg) == rows and _schema(pg) == schema and _index_oids(pg) == oids
    assert _import_bulk(pg, imported) > 0


def test_an_error_here_while_a_chunk_is_made_leaves_everything_as_before(
    pg: str, imported: HeadlineRows, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception in this process after chunks went out (the fourth chunk's making): the
    COPY is ended with an error, nothing of the sent chunks stays, the indexes are the same."""
    monkeypatch.setattr(headline_copy, "COPY_CHUNK_ROWS", 100)
    made: list[int] = []
    chunk = headline_copy._binary_chunk

    def failing(values: dict[str, Any]) -> memoryview:
        made.append(1)
        if len(made) == 4:
            raise MemoryError("made up: the fourth chunk")
        return chunk(values)

    monkeypatch.setattr(headline_copy, "_binary_chunk", failing)
    _preload(pg, imported)
    rows, schema, oids = _stored(pg), _schema(pg), _index_oids(pg)
    with pytest.raises(MemoryError, match="fourth chunk"):
        _import_bulk(pg, imported)
    assert len(made) == 4
    assert _stored(pg) == rows and _schema(pg) == schema and _index_oids(pg) == oids
    monkeypatch.setattr(headline_copy, "_binary_chunk", chunk)
    assert _import_bulk(pg, imported) > 0
