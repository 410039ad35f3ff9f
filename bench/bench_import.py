"""Import benchmarks (issue 11): files into PostgreSQL end to end, against pandas' own read_csv.

Headlines: a CSV of 1,000,000 headline rows (title, time to the second, id; a few rows bad) is
generated in a temporary directory and imported as ``hsig ingest backfill-headlines`` does it
(services.ingest.headline_import.import_headlines: decode, sniff, parse every time with its
precision, validate, the stored columns computed vectorised; then
services.ingest.store.insert_headlines, COPY of pyarrow-written CSV into a temporary table +
one INSERT ... SELECT ... ON CONFLICT DO NOTHING, into a throwaway PostgreSQL database migrated
to head, so with migration 0008's COLLATE "C" keys). The floor is ``pandas.read_csv`` of the same file (dtype=str), which parses no time
and validates nothing. Goal: >= 100,000 rows/s end to end.

The candle part is bench/bench_import_candles.py (``--candle-rows N`` runs it from here too).

Run: OMP_NUM_THREADS=1 .venv/bin/python bench/bench_import.py [--headline-rows 1000000] [--candle-rows N]
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


def write_headline_csv(path: Path, rows: int, seed: int = 11) -> int:
    """``rows`` headlines, one a minute-and-a-bit apart from 2001 (second precision); every
    10,000th row's time is month-year only (``Apr-18``, rejected). Returns the bad rows."""
    rng = np.random.default_rng(seed)
    words = _WORDS[rng.integers(0, len(_WORDS), size=(rows, 8))]
    titles = (
        pd.Series([" ".join(row) for row in words]).str.capitalize()
        + " #"
        + pd.Series(range(rows)).astype(str)
    )
    start = pd.Timestamp(datetime(2001, 1, 1))
    times = (start + pd.to_timedelta(np.arange(rows, dtype=np.int64) * 97, unit="s")).strftime(
        "%Y-%m-%d %H:%M:%S"
    )
    times = pd.Series(times)
    bad = np.arange(rows) % 10_000 == 9_999
    times[bad] = "Apr-18"
    frame = pd.DataFrame({"id": [f"h{i}" for i in range(rows)], "time": times, "title": titles})
    frame.to_csv(path, index=False)
    return int(bad.sum())


def bench_headlines(rows: int) -> dict[str, object]:
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "headlines.csv"
        bad = write_headline_csv(path, rows)
        started = time.perf_counter()
        floor = pd.read_csv(path, dtype=str, keep_default_na=False)
        pandas_seconds = time.perf_counter() - started
        assert len(floor) == rows
        del floor
        admin, url = _throwaway_database()
        try:
            upgrade(url)
            started = time.perf_counter()
            imported = import_headlines(path, "csv:bench")
            parse_seconds = time.perf_counter() - started
            with session_scope(url) as session:
                stored = insert_headlines(session, imported.records)
            total_seconds = time.perf_counter() - started
        finally:
            _drop(admin, url)
    assert stored == rows - bad and imported.rejects.counts == {"incomplete_time": bad}
    total_rate = rows / total_seconds
    return {
        "rows": rows,
        "rejected": bad,
        "pandas_read_csv_seconds": round(pandas_seconds, 3),
        "pandas_rows_per_s": round(rows / pandas_seconds),
        "parse_validate_seconds": round(parse_seconds, 3),
        "write_seconds": round(total_seconds - parse_seconds, 3),
        "end_to_end_seconds": round(total_seconds, 3),
        "end_to_end_rows_per_s": round(total_rate),
        "times_slower_than_pandas": round(total_seconds / pandas_seconds, 2),
        "ratio_to_goal": round(total_rate / HEADLINE_GOAL, 3),
        "time_layout": imported.detail["time_layout"],
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_average_before_after": [round(value, 2) for value in (*load_before, *os.getloadavg())],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--headline-rows", type=int, default=1_000_000)
    parser.add_argument(
        "--candle-rows", type=int, default=0, help="also run bench/bench_import_candles.py's part (0: skip)"
    )
    args = parser.parse_args()
    results: dict[str, object] = {"headlines": bench_headlines(args.headline_rows)}
    if args.candle_rows:
        from bench_import_candles import bench_candles

        results["candles"] = bench_candles(args.candle_rows)
    print(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
