"""ccxt's own exchange classes against the local replay server: recorded responses, paging,
the still-open candle, gaps, and exchange failures translated at the boundary."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from services.common.errors import InvalidInput, OperationalError, TemporaryError
from services.ingest.candles import build_exchange, find_gaps, pull_candles
from services.pipeline.replay_server import CoinbaseSeries, Fault, ReplayServer, generated_series, recording
from tests.ingest.conftest import EXCHANGE_DIR, T0

H = 3600


@pytest.mark.parametrize("exchange_id", ["coinbaseexchange", "kraken", "binanceus", "bitstamp"])
def test_recorded_responses_parse_exactly(recorded_exchange: ReplayServer, exchange_id: str) -> None:
    case = recording(EXCHANGE_DIR, exchange_id)
    exchange = build_exchange(exchange_id, recorded_exchange.url)
    assert exchange.fetch_ohlcv(*case["input"]) == case["parsedResponse"]


def _series_server(
    count: int, gap: tuple[int, int] | None = None
) -> tuple[ReplayServer, np.ndarray, datetime]:
    series = generated_series(T0, count, H, gap=gap)
    now = T0 + timedelta(hours=count - 1, minutes=20)  # inside the last candle: it is still open
    server = ReplayServer(CoinbaseSeries(series, H, now).routes()).start()
    return server, series, now


def test_paging_drops_the_open_candle_and_reports_the_gap() -> None:
    server, series, now = _series_server(1000, gap=(400, 7))
    try:
        exchange = build_exchange("coinbaseexchange", server.url)
        pages_seen: list[int] = []
        pull = pull_candles(
            exchange,
            "BTC/USD",
            "1h",
            int(T0.timestamp()),
            int(now.timestamp()),
            limit=300,
            progress=lambda pages, _rows: pages_seen.append(pages),
        )
    finally:
        server.stop()
    closed = series.open_time + H <= now.timestamp()
    assert pull.dropped_open == 1 and closed.sum() == len(series) - 1
    np.testing.assert_array_equal(pull.candles.open_time, series.open_time[closed])
    np.testing.assert_array_equal(pull.candles.close, series.close[closed])
    assert pull.pages == len(pages_seen) >= 4  # 993 candles at 300 a page, plus the gap window
    gap_start = int((T0 + timedelta(hours=400)).timestamp())
    assert pull.gaps == [(gap_start, gap_start + 6 * H, 7)]  # recorded, not interpolated
    assert not np.isin(np.arange(gap_start, gap_start + 7 * H, H), pull.candles.open_time).any()


def test_an_empty_window_is_stepped_over() -> None:
    # 700 missing candles: more than two pages of nothing, then the series resumes.
    server, series, now = _series_server(1200, gap=(100, 700))
    try:
        pull = pull_candles(
            build_exchange("coinbaseexchange", server.url),
            "BTC/USD",
            "1h",
            int(T0.timestamp()),
            int(now.timestamp()),
            limit=300,
        )
    finally:
        server.stop()
    assert len(pull.candles) == len(series) - 1
    assert [gap[2] for gap in pull.gaps] == [700]


def test_gaps_after_the_previous_stored_candle() -> None:
    times = np.array([10 * H, 11 * H, 14 * H], dtype=np.int64)
    assert find_gaps(times, H, previous=8 * H) == [(9 * H, 9 * H, 1), (12 * H, 13 * H, 2)]
    assert find_gaps(times[:2], H, previous=9 * H) == []


@pytest.mark.parametrize(
    ("fault", "error", "reason"),
    [
        (
            Fault("/products/BTC-USD/candles", 429, b'{"message": "Slow down"}'),
            TemporaryError,
            "rate_limited",
        ),
        (
            Fault("/products/BTC-USD/candles", 500, b"<html>oops</html>", {"Content-Type": "text/html"}),
            TemporaryError,
            "unavailable",
        ),
        (
            Fault("/products/BTC-USD/candles", 400, b'{"message": "Invalid end"}'),
            OperationalError,
            "exchange_error",
        ),
        (Fault("/products/BTC-USD/candles", 200, b"[]", delay_seconds=2.5), TemporaryError, "timeout"),
    ],
)
def test_exchange_failures_are_translated(fault: Fault, error: type[Exception], reason: str) -> None:
    server, _series, now = _series_server(50)
    server.add_fault(fault)
    try:
        exchange = build_exchange("coinbaseexchange", server.url, timeout_seconds=1.0)
        with pytest.raises(error) as caught:
            pull_candles(exchange, "BTC/USD", "1h", int(T0.timestamp()), int(now.timestamp()))
    finally:
        server.stop()
    assert caught.value.param == reason  # type: ignore[attr-defined]


def test_unknown_exchange_and_symbol(recorded_exchange: ReplayServer) -> None:
    with pytest.raises(InvalidInput, match="unknown ccxt exchange"):
        build_exchange("nosuchexchange")
    exchange = build_exchange("coinbaseexchange", recorded_exchange.url)
    with pytest.raises(InvalidInput, match="unknown symbol"):
        pull_candles(exchange, "DOGE/EUR", "1h", int(T0.timestamp()), int(datetime.now(UTC).timestamp()))
