"""Import benchmark, the candle part (issue 11): a candle file end to end into PostgreSQL.

A 1,000,000-row one-minute candle CSV in CryptoDataDownload's newer layout (banner line, newest
first, the two volume columns swapped in half the rows) is written to a temporary directory,
then imported with ``hsig ingest backfill-candles``'s own path
(services.ingest.backfill.backfill_candles_csv: layout detection, parse, validation of every
candle, gaps, one upsert transaction) into a throwaway PostgreSQL database: rows/s end to end,
against ``pandas.read_csv`` of the same file (parse only, no validation) as the floor. Goal >=
100,000 rows/s end to end. A second import of the same file (every row already stored: the
upsert path) is timed too. bench/bench_import.py holds the headline part.

Run: OMP_NUM_THREADS=1 .venv/bin/python bench/bench_import_candles.py [--candle-rows 1000000]
Needs PostgreSQL at 127.0.0.1:5432 (database `test`), or HSIG_TEST_POSTGRES_URL; it creates
and drops its own throwaway database.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from bench_ingest import _drop, _throwaway_database
from sqlalchemy import func, select

from services.common.db.engine import session_scope
from services.common.db.migrate import upgrade
from services.common.db.models import Candle
from services.ingest.backfill import backfill_candles_csv
from services.ingest.candle_import import import_candle_file
from services.ingest.settings import IngestSettings

MINUTE = 60
CANDLE_START = int(datetime(2023, 1, 1, tzinfo=UTC).timestamp())
CANDLE_GOAL = 100_000  # rows/s end to end


def write_candle_csv(path: Path, rows: int, seed: int = 11) -> None:
    """CryptoDataDownload's newer layout, newest first, volto/volfrom swapped in half the rows."""
    rng = np.random.default_rng(seed)
    close = 20_000 * np.exp(np.cumsum(rng.normal(0, 0.0008, rows)))
    open_ = np.concatenate([[20_000.0], close[:-1]])
    spread = np.abs(rng.normal(0, 0.0005, rows)) * close
    base = rng.uniform(0.1, 50, rows)
    swap = rng.random(rows) < 0.5
    times = CANDLE_START + MINUTE * np.arange(rows, dtype=np.int64)
    frame = pd.DataFrame(
        {
            "id": np.arange(rows),
            "unix": times,
            "date": pd.to_datetime(times, unit="s").strftime("%Y-%m-%d %H:%M:%S"),
            "symbol": "BTC/USD",
            "open": open_.round(2),
            "high": (np.maximum(open_, close) + spread).round(2) + 0.01,
            "low": (np.minimum(open_, close) - spread).round(2) - 0.01,
            "close": close.round(2),
            "volto": np.where(swap, base, base * close).round(4),
            "volfrom": np.where(swap, base * close, base).round(4),
        }
    ).iloc[::-1]
    with path.open("w") as out:
        out.write("https://www.CryptoDataDownload.com\n")
        frame.to_csv(out, index=False)


def _timed(work: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = work()
    return time.perf_counter() - started, result


def bench_candles(rows: int) -> dict[str, Any]:
    """Seconds and rows/s: the pandas floor, parse + validate alone, end to end, re-import."""
    admin, url = _throwaway_database()
    try:
        upgrade(url)
        settings = IngestSettings(database_url=url, feed_urls=[], scheduler_enabled=False)
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "candles_1m.csv"
            write_candle_csv(path, rows)
            floor, _frame = _timed(lambda: pd.read_csv(path, skiprows=1))
            parse, parsed = _timed(lambda: import_candle_file(path, earliest_seconds=0))
            assert len(parsed.candles) == rows, parsed.rejects.counts
            end_to_end, outcome = _timed(lambda: backfill_candles_csv(settings, path, "bench", "BTC/USD"))
            again, _outcome = _timed(lambda: backfill_candles_csv(settings, path, "bench", "BTC/USD"))
        with session_scope(url) as session:
            stored = session.scalar(select(func.count()).select_from(Candle))
        assert outcome.stored == rows == stored, (outcome.stored, stored)
    finally:
        _drop(admin, url)
    return {
        "rows": rows,
        "pandas_read_csv_seconds": round(floor, 3),
        "pandas_rows_per_s": round(rows / floor),
        "parse_validate_seconds": round(parse, 3),
        "end_to_end_seconds": round(end_to_end, 3),
        "end_to_end_rows_per_s": round(rows / end_to_end),
        "reimport_seconds": round(again, 3),
        "reimport_rows_per_s": round(rows / again),
        "times_slower_than_pandas": round(end_to_end / floor, 2),
        "ratio_to_goal": round(rows / end_to_end / CANDLE_GOAL, 3),
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candle-rows", type=int, default=1_000_000)
    args = parser.parse_args()
    print(json.dumps({"candles": bench_candles(args.candle_rows)}, indent=2))


if __name__ == "__main__":
    main()
