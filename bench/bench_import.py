"""Import benchmarks (issue 11): files into PostgreSQL end to end, against pandas' own read_csv.

Headlines: a CSV of 1,000,000 headline rows (title, time to the second, id; a few rows bad) is
generated in a temporary directory and imported as ``hsig ingest backfill-headlines`` does it
(services.ingest.headline_import.import_headlines: decode, sniff, parse every time with its
precision, validate, the stored columns computed vectorised, the payload hashes in a second
process; then services.ingest.store.insert_headlines into a throwaway PostgreSQL database
migrated to head, so with migration 0008's COLLATE "C" keys: into an empty or small table the
bulk path of services/ingest/headline_copy.py, table locked, secondary indexes dropped, binary
COPY sent in chunks from a writer thread, indexes rebuilt; else COPY into a temporary table and
one INSERT ... SELECT ... ON CONFLICT DO NOTHING). The floor is ``pandas.read_csv`` of the same
file (dtype=str), which parses no time and validates nothing. Goal: >= 100,000 rows/s end to
end. The load average before and after is in the JSON: the figures mean something only on a
quiet machine (run it under the machine lock).

The candle part is bench/bench_import_candles.py (``--candle-rows N`` runs it from here too).

Run: OMP_NUM_THREADS=1 .venv/bin/python bench/bench_import.py [--headline-rows 1000000] [--scenarios]
[--candle-rows N] (--scenarios: also the same file again, and into a table of as many other rows)
Needs PostgreSQL at 127.0.0.1:5432 (database `test`), or HSIG_TEST_POSTGRES_URL; it creates
and drops its own throwaway database.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from bench_ingest import _drop, _throwaway_database

from services.common.db.engine import session_scope
from services.common.db.migrate import upgrade
from services.ingest.headline_import import import_headlines
from services.ingest.store import insert_headlines

HEADLINE_GOAL = 100_000  # rows/s end to end
_WORDS = np.array(
    [
        "bitcoin",
        "ether",
        "rally",
        "falls",
        "surges",
        "regulators",
        "exchange",
        "miners",
        "halving",
        "fed",
        "rates",
        "etf",
        "court",
        "stocks",
        "dollar",
        "crash",
        "record",
        "outflows",
        "whales",
        "treasury",
    ]
)


def write_headline_csv(path: Path, rows: int, seed: int = 11, prefix: str = "h", year: int = 2001) -> int:
    """``rows`` headlines, ids ``prefix`` + row number, one a minute-and-a-bit apart from
    ``year`` (second precision); every 10,000th row's time is month-year only (``Apr-18``,
    rejected). Returns the bad rows."""
    rng = np.random.default_rng(seed)
    words = _WORDS[rng.integers(0, len(_WORDS), size=(rows, 8))]
    titles = (
        pd.Series([" ".join(row) for row in words]).str.capitalize()
        + " #"
        + pd.Series(range(rows)).astype(str)
    )
    start = pd.Timestamp(datetime(year, 1, 1))
    times = (start + pd.to_timedelta(np.arange(rows, dtype=np.int64) * 97, unit="s")).strftime(
        "%Y-%m-%d %H:%M:%S"
    )
    times = pd.Series(times)
    bad = np.arange(rows) % 10_000 == 9_999
    times[bad] = "Apr-18"
    frame = pd.DataFrame({"id": [f"{prefix}{i}" for i in range(rows)], "time": times, "title": titles})
    frame.to_csv(path, index=False)
    return int(bad.sum())


def _timed_import(url: str, path: Path) -> tuple[float, float, int, object]:
    """``hsig ingest backfill-headlines``'s path, timed: (parse s, total s, stored, import)."""
    started = time.perf_counter()
    imported = import_headlines(path, "csv:bench")
    parse_seconds = time.perf_counter() - started
    with session_scope(url) as session:
        stored = insert_headlines(session, imported.records)
    return parse_seconds, time.perf_counter() - started, stored, imported


def _figures(
    rows: int, parse_seconds: float, total_seconds: float, pandas_seconds: float
) -> dict[str, object]:
    return {
        "parse_validate_seconds": round(parse_seconds, 3),
        "write_seconds": round(total_seconds - parse_seconds, 3),
        "end_to_end_seconds": round(total_seconds, 3),
        "end_to_end_rows_per_s": round(rows / total_seconds),
        "times_slower_than_pandas": round(total_seconds / pandas_seconds, 2),
        "ratio_to_goal": round(rows / total_seconds / HEADLINE_GOAL, 3),
    }


def bench_headlines(rows: int, scenarios: bool = False) -> dict[str, object]:
    """The file into an empty table; with ``scenarios`` also the same file again (every row
    stored: nothing new) and the file into a table holding ``rows`` other headlines (other
    ids, times from 2201), each timed end to end with the load average beside it."""
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "headlines.csv"
        bad = write_headline_csv(path, rows)
        started = time.perf_counter()
        floor = pd.read_csv(path, dtype=str, keep_default_na=False)
        pandas_seconds = time.perf_counter() - started
        assert len(floor) == rows
        del floor
        extra: dict[str, object] = {}
        admin, url = _throwaway_database()
        try:
            upgrade(url)
            parse_seconds, total_seconds, stored, imported = _timed_import(url, path)
            if scenarios:
                load = os.getloadavg()
                parse_again, total_again, stored_again, _ = _timed_import(url, path)
                assert stored_again == 0
                extra["same_file_again"] = {
                    "stored": stored_again, **_figures(rows, parse_again, total_again, pandas_seconds),
                    "load_average_before": [round(value, 2) for value in load],
                }  # fmt: skip
        finally:
            _drop(admin, url)
        if scenarios:
            extra["into_a_table_of_other_rows"] = _into_other_rows(path, rows, bad, pandas_seconds)
    assert stored == rows - bad and imported.rejects.counts == {"incomplete_time": bad}  # type: ignore[attr-defined]
    return {
        "rows": rows,
        "rejected": bad,
        "pandas_read_csv_seconds": round(pandas_seconds, 3),
        "pandas_rows_per_s": round(rows / pandas_seconds),
        **_figures(rows, parse_seconds, total_seconds, pandas_seconds),
        "time_layout": imported.detail["time_layout"],  # type: ignore[attr-defined]
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_average_before_after": [round(value, 2) for value in (*load_before, *os.getloadavg())],
        **extra,
    }


def _into_other_rows(path: Path, rows: int, bad: int, pandas_seconds: float) -> dict[str, object]:
    """The file into a table already holding ``rows`` other headlines (stored first, untimed)."""
    other = path.with_name("other.csv")
    write_headline_csv(other, rows, seed=12, prefix="o", year=2201)
    admin, url = _throwaway_database()
    try:
        upgrade(url)
        _timed_import(url, other)
        load = os.getloadavg()
        parse_seconds, total_seconds, stored, _ = _timed_import(url, path)
    finally:
        _drop(admin, url)
    assert stored == rows - bad
    return {
        "stored_before": rows - bad, "stored": stored, **_figures(rows, parse_seconds, total_seconds, pandas_seconds),
        "load_average_before": [round(value, 2) for value in load],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--headline-rows", type=int, default=1_000_000)
    parser.add_argument(
        "--candle-rows", type=int, default=0, help="also run bench/bench_import_candles.py's part (0: skip)"
    )
    parser.add_argument(
        "--scenarios",
        action="store_true",
        help="also the same file a second time, and the file into a table holding as many other rows",
    )
    args = parser.parse_args()
    results: dict[str, object] = {"headlines": bench_headlines(args.headline_rows, args.scenarios)}
    if args.candle_rows:
        from bench_import_candles import bench_candles

        results["candles"] = bench_candles(args.candle_rows)
    print(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
