"""Exchange candles through ccxt: any exchange id, symbol and timeframe, paged up to now.

The one place ccxt is called. Its exceptions are translated here (freqtrade's pattern):
network trouble, rate limits and maintenance become TemporaryError (retry next cycle); an
unknown exchange or symbol is InvalidInput; any other exchange error body is an
OperationalError (a person must look). The candle still open at ``now`` is dropped; gaps are
reported, never filled.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import ccxt
import numpy as np

from services.common.errors import InvalidInput, OperationalError, TemporaryError
from services.common.labelling import timeframe_seconds
from services.ingest.csv_import import CandleFrame

log = logging.getLogger(__name__)


def _rebase(url: str, base: str) -> str:
    """Keep the path of a ccxt API URL, swap its scheme and host (and prefix) for ``base``."""
    original, target = urlsplit(url), urlsplit(base)
    return urlunsplit((target.scheme, target.netloc, target.path.rstrip("/") + original.path, "", ""))


def _rebase_all(urls: Any, base: str) -> Any:
    if isinstance(urls, str):
        return _rebase(urls, base)
    if isinstance(urls, dict):
        return {key: _rebase_all(value, base) for key, value in urls.items()}
    return urls


def build_exchange(
    exchange_id: str,
    api_url: str | None = None,
    timeout_seconds: float = 10.0,
    rate_limit_ms: int | None = None,
) -> ccxt.Exchange:
    """A ccxt exchange with the rate limiter on; ``api_url`` points every API host elsewhere.

    ``rate_limit_ms`` replaces the exchange's own pause between requests: only for a local
    replay server, which has no limit to honour.
    """
    exchange_class = getattr(ccxt, exchange_id, None)
    if not isinstance(exchange_class, type) or not issubclass(exchange_class, ccxt.Exchange):
        raise InvalidInput(f"unknown ccxt exchange id {exchange_id!r}", param="exchange")
    options: dict[str, Any] = {"enableRateLimit": True, "timeout": int(timeout_seconds * 1000)}
    if exchange_id.startswith("binance"):
        options["options"] = {"fetchMarkets": {"types": ["spot"]}}  # spot only: one markets call
    if rate_limit_ms is not None:
        options["rateLimit"] = rate_limit_ms
    exchange = exchange_class(options)
    if api_url:
        exchange.urls["api"] = _rebase_all(exchange.urls["api"], api_url)
        exchange.hostname = urlsplit(api_url).netloc
    return exchange


def call_exchange(what: str, call: Callable[[], Any]) -> Any:
    """Run one ccxt call, translating its exceptions into ours at the boundary."""
    try:
        return call()
    except (ccxt.RateLimitExceeded, ccxt.DDoSProtection) as exc:
        raise TemporaryError(f"{what}: rate limited: {exc}", retry_after=60, param="rate_limited") from exc
    except ccxt.RequestTimeout as exc:
        raise TemporaryError(f"{what}: timeout: {exc}", param="timeout") from exc
    except (ccxt.ExchangeNotAvailable, ccxt.OnMaintenance) as exc:
        raise TemporaryError(f"{what}: exchange unavailable: {exc}", param="unavailable") from exc
    except ccxt.NetworkError as exc:
        raise TemporaryError(f"{what}: network error: {exc}", param="network") from exc
    except ccxt.BadSymbol as exc:
        raise InvalidInput(f"{what}: unknown symbol: {exc}", param="symbol") from exc
    except ccxt.BaseError as exc:
        raise OperationalError(f"{what}: exchange error: {exc}", param="exchange_error") from exc


@dataclass
class CandlePull:
    """What one pull fetched: closed candles (sorted, unique) and the gaps seen among them."""

    candles: CandleFrame
    gaps: list[tuple[int, int, int]] = field(default_factory=list)  # (first, last missing, count)
    pages: int = 0
    dropped_open: int = 0


def _frame(rows: list[list[float]]) -> CandleFrame:
    if not rows:
        empty = np.array([], dtype=np.float64)
        return CandleFrame(np.array([], dtype=np.int64), empty, empty, empty, empty, empty)
    array = np.asarray(rows, dtype=np.float64)
    times = (array[:, 0] // 1000).astype(np.int64)
    order = np.argsort(times, kind="stable")
    times, array = times[order], array[order]
    keep = np.concatenate([times[1:] != times[:-1], [True]])  # last copy of a repeated time wins
    volume = np.nan_to_num(array[keep, 5]) if array.shape[1] > 5 else np.zeros(int(keep.sum()))
    return CandleFrame(times[keep], array[keep, 1], array[keep, 2], array[keep, 3], array[keep, 4], volume)


def find_gaps(
    open_times: np.ndarray, timeframe_seconds: int, previous: int | None = None
) -> list[tuple[int, int, int]]:
    """Runs of missing grid candles between consecutive open times (and after ``previous``)."""
    times = open_times if previous is None else np.concatenate([[previous], open_times])
    steps = np.diff(times)
    where = np.flatnonzero(steps > timeframe_seconds)
    return [
        (
            int(times[i] + timeframe_seconds),
            int(times[i + 1] - timeframe_seconds),
            int(steps[i] // timeframe_seconds - 1),
        )
        for i in where
    ]


def pull_candles(
    exchange: ccxt.Exchange,
    symbol: str,
    timeframe: str,
    since_seconds: int,
    now_seconds: int,
    limit: int = 300,
    max_pages: int = 1000,
    previous_open_seconds: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> CandlePull:
    """Page ``fetch_ohlcv`` from ``since_seconds`` until the candle open at ``now_seconds`` (dropped)."""
    tf = timeframe_seconds(timeframe)
    rows: list[list[float]] = []
    cursor, pages = since_seconds - since_seconds % tf, 0
    while cursor + tf <= now_seconds and pages < max_pages:
        page = call_exchange(
            f"{exchange.id} fetch_ohlcv {symbol} {timeframe}",
            lambda cursor=cursor: exchange.fetch_ohlcv(symbol, timeframe, since=cursor * 1000, limit=limit),
        )
        pages += 1
        fresh = [row for row in page if row[0] // 1000 >= cursor]
        rows.extend(fresh)
        if fresh:
            cursor = int(max(row[0] for row in fresh) // 1000) + tf
        else:
            cursor += limit * tf  # a window with no trades at all: step over it
        if progress:
            progress(pages, len(rows))
    frame = _frame(rows)
    closed = frame.open_time + tf <= now_seconds
    dropped = int((~closed).sum())
    frame = CandleFrame(
        *(getattr(frame, name)[closed] for name in ("open_time", "open", "high", "low", "close", "volume"))
    )
    return CandlePull(frame, find_gaps(frame.open_time, tf, previous_open_seconds), pages, dropped)
