"""Exchange candles through ccxt: any exchange id, symbol and timeframe, paged up to now.

The one place ccxt is called. Its exceptions are translated here (freqtrade's pattern):
network trouble, rate limits and maintenance become TemporaryError (retry next cycle); an
unknown exchange or symbol is InvalidInput; any other exchange error body is an
OperationalError (a person must look). The candle still open at ``now`` is dropped; gaps are
reported, never filled.

Garbage from the exchange is not success: a reply that is not JSON, or holds data ccxt could
not read as candles, is ``OperationalError(param='malformed_reply')``; a pull that finds no
usable closed candle where candles were expected is ``empty_reply``. A bad candle (a null,
NaN, zero, negative or absurd price, high below open/close, low above them, an open time off
the grid, before ``HSIG_EARLIEST_TIME`` or in the future, a negative or non-finite volume) is
rejected and counted while the good ones in the same reply are kept. URLs in messages are
redacted.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import ccxt
import numpy as np

from services.common.errors import HsigError, InvalidInput, OperationalError, TemporaryError
from services.common.labelling import candle_faults, timeframe_seconds
from services.common.redact import redact_text
from services.ingest.candle_import import CandleFrame
from services.ingest.headlines import Rejects

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
    # ccxt's own parser (orjson) refuses a whole reply for one NaN and ccxt then answers []:
    # read NaN / Infinity as null instead, so that one candle is rejected, not the reply.
    exchange.on_json_response = _lenient_json
    if api_url:
        exchange.urls["api"] = _rebase_all(exchange.urls["api"], api_url)
        exchange.hostname = urlsplit(api_url).netloc
    return exchange


def _lenient_json(text: str) -> Any:
    return json.loads(text, parse_constant=lambda _name: None)


def call_exchange(what: str, call: Callable[[], Any]) -> Any:
    """Run one ccxt call, translating its exceptions into ours at the boundary (messages
    redacted: a ccxt error quotes the URL it called)."""
    try:
        return call()
    except HsigError:
        raise
    except Exception as exc:
        raise _translate(what, exc) from exc


def _translate(what: str, raised: Exception) -> HsigError:
    try:
        raise raised
    except (ccxt.RateLimitExceeded, ccxt.DDoSProtection) as exc:
        return TemporaryError(f"{what}: rate limited: {_said(exc)}", retry_after=60, param="rate_limited")
    except ccxt.RequestTimeout as exc:
        return TemporaryError(f"{what}: timeout: {_said(exc)}", param="timeout")
    except (ccxt.ExchangeNotAvailable, ccxt.OnMaintenance) as exc:
        return TemporaryError(f"{what}: exchange unavailable: {_said(exc)}", param="unavailable")
    except ccxt.NetworkError as exc:
        return TemporaryError(f"{what}: network error: {_said(exc)}", param="network")
    except ccxt.BadSymbol as exc:
        return InvalidInput(f"{what}: unknown symbol: {_said(exc)}", param="symbol")
    except ccxt.BaseError as exc:
        return OperationalError(f"{what}: exchange error: {_said(exc)}", param="exchange_error")
    except (TypeError, KeyError, IndexError, ValueError, AttributeError) as exc:  # ccxt choked on the shape
        return OperationalError(
            f"{what}: unreadable reply ({type(exc).__name__}: {_said(exc)})", param="malformed_reply"
        )
    except Exception as exc:
        return OperationalError(f"{what}: {type(exc).__name__}: {_said(exc)}", param=type(exc).__name__)


def _said(exc: Exception) -> str:
    return str(redact_text(str(exc)))[:500]


@dataclass
class CandlePull:
    """What one pull fetched: closed candles (sorted, unique) and the gaps seen among them.

    ``rejects`` counts the candles refused by reason; ``error`` is set when a later page failed
    (or nothing usable came back): the candles before it are kept, the source is not a success.
    """

    candles: CandleFrame
    gaps: list[tuple[int, int, int]] = field(default_factory=list)  # (first, last missing, count)
    pages: int = 0
    dropped_open: int = 0
    rejects: Rejects = field(default_factory=Rejects)
    error: HsigError | None = None
    asked_to: int | None = None  # the exchange was asked for every candle opening before this


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return math.nan
    try:
        return float(value)
    except ValueError:
        return math.nan


def _clean_rows(page: Any, rejects: Rejects) -> list[list[float]]:
    """ccxt rows as [ms, open, high, low, close, volume] floats; a row without a usable time
    (or not a row at all) is rejected here, a bad price later (``validate_candles``)."""
    if not isinstance(page, list):
        raise OperationalError(
            f"fetch_ohlcv answered {type(page).__name__}, not a list", param="malformed_reply"
        )
    rows = []
    for row in page:
        if not isinstance(row, list | tuple) or len(row) < 5:
            rejects.add("malformed_candle", repr(row)[:80])
            continue
        stamp = _number(row[0])
        if not math.isfinite(stamp) or abs(stamp) > 1e15:
            rejects.add("bad_candle_time", repr(row)[:80])
            continue
        rows.append(
            [stamp, *(_number(value) for value in row[1:5]), _number(row[5]) if len(row) > 5 else math.nan]
        )
    return rows


def _holds_data(body: Any) -> bool:
    """True when a reply holds data but no candle-shaped row: ccxt could not read it. Rows
    that look like candles (a list of five or more, a number first) are ones ccxt dropped
    itself (before ``since``...): an empty window, not garbage."""
    if isinstance(body, dict):
        return any(_holds_data(value) for value in body.values())
    if not isinstance(body, list) or not body:
        return False
    if any(_candle_like(row) for row in body):
        return False
    return any(_holds_data(row) for row in body) or not all(isinstance(row, list | dict) for row in body)


def _candle_like(row: Any) -> bool:
    return (
        isinstance(row, list)
        and len(row) >= 5
        and isinstance(row[0], int | float)
        and not isinstance(row[0], bool)
    )


def _check_empty_page(exchange: ccxt.Exchange, what: str) -> None:
    """ccxt answers [] for a reply it cannot read: look at the reply itself before calling an
    empty page an empty window."""
    raw = getattr(exchange, "last_http_response", None)
    if not isinstance(raw, str):
        return
    try:
        body = _lenient_json(raw)
    except ValueError as exc:
        raise OperationalError(
            f"{what}: the reply is not JSON: {redact_text(raw[:80])!r}", param="malformed_reply"
        ) from exc
    if _holds_data(body):
        raise OperationalError(
            f"{what}: the reply holds data that is not candles: {redact_text(raw[:80])!r}",
            param="malformed_reply",
        )


def _frame(rows: list[list[float]]) -> CandleFrame:
    if not rows:
        empty = np.array([], dtype=np.float64)
        return CandleFrame(np.array([], dtype=np.int64), empty, empty, empty, empty, empty)
    array = np.asarray(rows, dtype=np.float64)
    times = (array[:, 0] // 1000).astype(np.int64)
    order = np.argsort(times, kind="stable")
    times, array = times[order], array[order]
    keep = np.concatenate([times[1:] != times[:-1], [True]])  # last copy of a repeated time wins
    return CandleFrame(
        times[keep], array[keep, 1], array[keep, 2], array[keep, 3], array[keep, 4], array[keep, 5]
    )


def _select(frame: CandleFrame, mask: np.ndarray) -> CandleFrame:
    return CandleFrame(
        *(getattr(frame, name)[mask] for name in ("open_time", "open", "high", "low", "close", "volume"))
    )


def validate_candles(
    frame: CandleFrame,
    timeframe_seconds: int,
    now_seconds: int,
    earliest_seconds: int | None = None,
    max_price: float = math.inf,
    rejects: Rejects | None = None,
) -> tuple[CandleFrame, Rejects]:
    """The usable candles of ``frame`` and what was refused, by reason (``candle_faults``,
    plus ``early_candle`` before ``earliest_seconds`` and ``future_candle`` for an open time
    after ``now_seconds``). Nothing is repaired: a refused candle is simply not stored."""
    rejects = rejects if rejects is not None else Rejects()
    if not len(frame):
        return frame, rejects
    faults = candle_faults(
        frame.open_time,
        frame.open,
        frame.high,
        frame.low,
        frame.close,
        timeframe_seconds,
        frame.volume,
        max_price,
    )
    faults[frame.open_time > now_seconds] = "future_candle"
    if earliest_seconds is not None:
        faults[frame.open_time < earliest_seconds] = "early_candle"
    bad = faults != None  # noqa: E711 (elementwise on an object array)
    for reason in sorted({str(reason) for reason in faults[bad]}):
        where = np.flatnonzero(faults == reason)
        rejects.add(reason, f"open time {int(frame.open_time[where[0]])}", count=int(where.size))
    return _select(frame, ~bad), rejects


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
    earliest_seconds: int | None = None,
    max_price: float = math.inf,
    known_end_seconds: int | None = None,
) -> CandlePull:
    """Page ``fetch_ohlcv`` from ``since_seconds`` until the candle open at ``now_seconds`` (dropped).

    A failure on the first page raises; on a later page the candles gathered so far come back
    with ``error`` set. Bad candles are rejected (``validate_candles``), the rest kept.

    ``known_end_seconds`` is a previous pull's ``asked_to``: the exchange had nothing more up
    to there. The range is asked once more from ``since_seconds`` (late candles are caught);
    at the first short or empty page inside it the pull jumps to its end instead of paging
    through empty windows again, so at the present, where an exchange's data stops (a market
    delisted, a replay of old data), a cycle asks once or twice, not once per empty page.
    """
    tf = timeframe_seconds(timeframe)
    what = f"{exchange.id} fetch_ohlcv {symbol} {timeframe}"
    rows: list[list[float]] = []
    rejects = Rejects()
    error: HsigError | None = None
    cursor, pages = since_seconds - since_seconds % tf, 0
    known_end = known_end_seconds - known_end_seconds % tf if known_end_seconds is not None else None
    expected = False  # a page asked beyond the known end: there, no candle at all is an error
    while cursor + tf <= now_seconds and pages < max_pages:
        expected = expected or known_end is None or cursor >= known_end
        try:
            page = call_exchange(
                what,
                lambda cursor=cursor: exchange.fetch_ohlcv(
                    symbol, timeframe, since=cursor * 1000, limit=limit
                ),
            )
            pages += 1
            cleaned = _clean_rows(page, rejects)
            if not page:
                _check_empty_page(exchange, what)
        except HsigError as exc:
            if not rows:
                raise  # nothing gathered yet: the pull failed
            error = exc
            break
        fresh = [row for row in cleaned if row[0] // 1000 >= cursor]
        rows.extend(fresh)
        usable = [int(row[0] // 1000) for row in fresh if row[0] // 1000 <= now_seconds]
        if usable:
            cursor = max(usable) - max(usable) % tf + tf
        elif fresh:
            break  # only candles from the future: nothing later can be closed yet
        else:
            cursor += limit * tf  # a window with no trades at all: step over it
        if known_end is not None and cursor < known_end and len(fresh) < limit:
            cursor = known_end  # asked before and found empty: no need to page through it again
        if progress:
            progress(pages, len(rows))
    frame, rejects = validate_candles(_frame(rows), tf, now_seconds, earliest_seconds, max_price, rejects)
    closed = frame.open_time + tf <= now_seconds
    dropped = int((~closed).sum())
    frame = _select(frame, closed)
    asked_to = min(cursor, now_seconds - now_seconds % tf)  # the open candle is asked again
    if error is None and pages and expected and not len(frame):
        error = OperationalError(
            f"{what}: no usable closed candle in {pages} page(s) from {since_seconds} to {now_seconds}"
            f" (rejected: {rejects.counts or 'none'})",
            param="empty_reply",
        )
    gaps = find_gaps(frame.open_time, tf, previous_open_seconds)
    return CandlePull(frame, gaps, pages, dropped, rejects, error, asked_to)
