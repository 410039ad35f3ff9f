"""Ingest benchmarks (issue 2): labelling speed and bulk writes into PostgreSQL.

1. Label 1,000,000 headlines against 1,000,000 one-minute candles, market situation words
   included (services.common.labelling): rows/s and peak memory; goal >= 1,000,000 rows/s.
   Beside it, a plain row-by-row Python loop (bisect per headline) on a subset, for scale.
2. Write 100,000 labelled rows into PostgreSQL with the service's bulk path
   (services.ingest.store.insert_labelled_rows: on PostgreSQL, COPY into a temporary table then
   one INSERT ... SELECT ... ON CONFLICT DO NOTHING, one transaction) against row-at-a-time
   inserts (one INSERT and commit per row, as a naive loop does), measured on a subset and
   extrapolated; goal >= 20x.

Run: OMP_NUM_THREADS=1 .venv/bin/python bench/bench_ingest.py [--rows 1000000] [--write-rows 100000]
Needs PostgreSQL at 127.0.0.1:5432 (database `test`), or HSIG_TEST_POSTGRES_URL; it creates
and drops its own throwaway database.
"""

from __future__ import annotations

import argparse
import bisect
import os
import resource
import statistics
import time
import tracemalloc
import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
from sqlalchemy import create_engine, insert, text

from services.common.db.engine import get_engine, normalise_url, session_scope
from services.common.db.migrate import upgrade
from services.common.db.models import Headline, LabelledRow
from services.common.labelling import Candles, label_headlines, label_names, situation_texts
from services.ingest.store import insert_labelled_rows

MINUTE = 60
START = 1_600_000_020 // MINUTE * MINUTE
LABEL_GOAL = 1_000_000  # rows/s
WRITE_GOAL = 20.0  # x faster than row-at-a-time


def synthetic_market(count: int, seed: int = 1) -> Candles:
    rng = np.random.default_rng(seed)
    closes = 10_000 * np.exp(np.cumsum(rng.normal(0, 0.0008, count)))
    opens = np.concatenate([[10_000.0], closes[:-1]])
    spread = np.abs(rng.normal(0, 0.0005, count)) * closes
    times = START + MINUTE * np.arange(count, dtype=np.int64)
    return Candles(
        times, opens, np.maximum(opens, closes) + spread, np.minimum(opens, closes) - spread, closes, MINUTE
    )


def label_all(times: np.ndarray, candles: Candles, horizon_seconds: int) -> tuple[np.ndarray, np.ndarray]:
    labels = label_headlines(times, candles, horizon_seconds)
    return label_names(labels.label), situation_texts(labels.situation_code)


def loop_baseline(times: np.ndarray, candles: Candles, horizon_seconds: int) -> int:
    """What one would write first: bisect per headline, a dict of prices, an if per row."""
    open_times = candles.open_time.tolist()
    opens, closes = candles.open.tolist(), candles.close.tolist()
    index = {t: i for i, t in enumerate(open_times)}
    labelled = 0
    for t in times.tolist():
        i = bisect.bisect_left(open_times, t)
        if i == len(open_times) or open_times[i] >= t + MINUTE:
            continue
        j = index.get(open_times[i] + horizon_seconds - MINUTE)
        if j is None:
            continue
        ret = closes[j] / opens[i] - 1
        _label = "Increase" if ret > 0 else "Decrease"
        words = []
        for k in (1, 2):
            c = index.get((t // MINUTE) * MINUTE - k * MINUTE)
            words.append("no data" if c is None else ("increase" if closes[c] > opens[c] else "decrease"))
        _situation = " after a ".join(words)
        labelled += 1
    return labelled


def bench_labelling(rows: int, repeats: int) -> dict[str, float]:
    candles = synthetic_market(rows)
    rng = np.random.default_rng(2)
    times = np.sort(rng.integers(START, START + rows * MINUTE, rows))
    horizon = 60 * MINUTE
    label_all(times[:1000], candles, horizon)  # warm up
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        names, texts = label_all(times, candles, horizon)
        seconds.append(time.perf_counter() - started)
    tracemalloc.start()
    label_all(times, candles, horizon)
    _current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    subset = times[: rows // 20]
    started = time.perf_counter()
    loop_baseline(subset, candles, horizon)
    loop_rate = subset.size / (time.perf_counter() - started)
    median, best = statistics.median(seconds), min(seconds)
    labelled = int((names != None).sum())  # noqa: E711
    return {
        "rows": rows,
        "labelled": labelled,
        "seconds_median": median,
        "rows_per_s": rows / median,
        "best_rows_per_s": rows / best,
        "peak_traced_mib": peak / 2**20,
        "loop_rows_per_s": loop_rate,
        "distinct_situations": len(set(texts.tolist())),
    }


def _throwaway_database() -> tuple[str, str]:
    admin = normalise_url(
        os.environ.get("HSIG_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
    )
    name = f"hsig_bench_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return admin, admin.rsplit("/", 1)[0] + f"/{name}"


def _drop(admin: str, url: str) -> None:
    get_engine(url).dispose()
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)'))
    engine.dispose()


def _labelled_rows(headline_ids: list[int], base: datetime) -> list[dict]:
    rng = np.random.default_rng(3)
    returns = rng.normal(0, 0.01, len(headline_ids))
    rows = []
    for position, (headline_id, ret) in enumerate(zip(headline_ids, returns.tolist(), strict=True)):
        moment = base + timedelta(minutes=position)
        rows.append(
            {
                "headline_id": headline_id,
                "exchange": "coinbaseexchange",
                "symbol": "BTC/USD",
                "timeframe": "1h",
                "horizon": "1h",
                "headline_time": moment,
                "entry_time": moment + timedelta(minutes=1),
                "exit_time": moment + timedelta(hours=1, minutes=1),
                "entry_price": 10_000.0,
                "exit_price": 10_000.0 * (1 + ret),
                "return": ret,
                "label": "Increase" if ret > 0 else "Decrease",
                "market_situation": "Steady small increase after a steady small decrease",
                "situation_candles": [moment.isoformat(), (moment - timedelta(hours=1)).isoformat()],
                "labelled_at": moment,
            }
        )
    return rows


def bench_writes(rows: int, naive_rows: int) -> dict[str, float]:
    admin, url = _throwaway_database()
    try:
        upgrade(url)
        base = datetime(2020, 1, 1, tzinfo=UTC)
        headlines = [
            {
                "source": "bench",
                "guid": str(i),
                "title": f"headline {i}",
                "title_key": f"headline {i}",
                "published_at": base + timedelta(minutes=i),
                "payload_sha256": "0" * 64,
            }
            for i in range(rows + naive_rows)
        ]
        with session_scope(url) as session:
            session.execute(insert(Headline), headlines)
            ids = [row[0] for row in session.execute(text("SELECT id FROM headlines ORDER BY id"))]
        bulk_rows = _labelled_rows(ids[:rows], base)
        naive = _labelled_rows(ids[rows:], base + timedelta(days=400))

        started = time.perf_counter()
        with session_scope(url) as session:
            written = insert_labelled_rows(session, bulk_rows)
        bulk_seconds = time.perf_counter() - started
        assert written == rows

        started = time.perf_counter()
        for row in naive:
            with session_scope(url) as session:
                session.execute(insert(LabelledRow.__table__), [row])
        naive_seconds = time.perf_counter() - started
    finally:
        _drop(admin, url)
    naive_rate = naive_rows / naive_seconds
    return {
        "rows": rows,
        "bulk_seconds": bulk_seconds,
        "bulk_rows_per_s": rows / bulk_seconds,
        "naive_rows_measured": naive_rows,
        "naive_rows_per_s": naive_rate,
        "naive_seconds_extrapolated": rows / naive_rate,
        "ratio": (rows / naive_rate) / bulk_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="headlines and one-minute candles")
    parser.add_argument("--repeats", type=int, default=5, help="labelling repeats (median reported)")
    parser.add_argument("--write-rows", type=int, default=100_000, help="labelled rows written in bulk")
    parser.add_argument("--naive-rows", type=int, default=2_000, help="rows written one at a time")
    args = parser.parse_args()

    print(f"== labelling {args.rows:,} headlines against {args.rows:,} one-minute candles (1h horizon)")
    result = bench_labelling(args.rows, args.repeats)
    print(
        f"median {result['seconds_median']:.3f} s over {args.repeats} runs: {result['rows_per_s']:,.0f} rows/s "
        f"({result['rows_per_s'] / LABEL_GOAL:.2f}x the 1,000,000 rows/s goal); "
        f"{result['labelled']:,} labelled, {result['distinct_situations']} distinct situations"
    )
    print(
        f"best run: {result['best_rows_per_s']:,.0f} rows/s; load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    print(
        f"peak traced memory {result['peak_traced_mib']:.0f} MiB; process peak RSS "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
    )
    print(
        f"row-by-row Python loop (on {args.rows // 20:,} rows): {result['loop_rows_per_s']:,.0f} rows/s; "
        f"vectorised is {result['rows_per_s'] / result['loop_rows_per_s']:.0f}x faster"
    )

    print(f"\n== writing {args.write_rows:,} labelled rows into PostgreSQL")
    writes = bench_writes(args.write_rows, args.naive_rows)
    print(f"bulk: {writes['bulk_seconds']:.2f} s ({writes['bulk_rows_per_s']:,.0f} rows/s)")
    print(
        f"row-at-a-time: {writes['naive_rows_per_s']:,.0f} rows/s measured on {args.naive_rows:,} rows, "
        f"{writes['naive_seconds_extrapolated']:.1f} s extrapolated to {args.write_rows:,}"
    )
    print(f"ratio: {writes['ratio']:.1f}x ({writes['ratio'] / WRITE_GOAL:.2f}x the 20x goal)")


if __name__ == "__main__":
    main()
