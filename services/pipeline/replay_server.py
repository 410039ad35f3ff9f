"""A local exchange on 127.0.0.1 that ccxt's own classes can be pointed at.

Two jobs:
(a) replay the recorded ``fetchOHLCV`` responses in data/exchange_ohlcv/ (Coinbase Exchange,
    Kraken, Binance US, Bitstamp), with the few market-list endpoints each ccxt class asks
    for first, so ``exchange.fetch_ohlcv`` gives exactly the recorded ``parsedResponse``;
(b) serve a long candle series in Coinbase Exchange's raw shape
    (``GET /products/{id}/candles?granularity&start&end``, newest first,
    ``[time_s, low, high, open, close, volume]``, at most 300 per answer) with the candle still
    open at the server's "now", gaps where the series has none, and scripted faults (HTTP 429,
    500, an exchange error body, a stall) for the bad-input tests.

It is a test and demo fixture, not a mock of our code: the code under test is ccxt's parser
and our paging, against bytes in the exchanges' own formats.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

from services.ingest.csv_import import CandleFrame

COINBASE_MAX_CANDLES = 300
Reply = tuple[int, dict[str, str], bytes]
Handler = Callable[[str, dict[str, str], dict[str, str]], Reply]  # path, query, headers


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
    return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(body).encode()


@dataclass
class Fault:
    """One scripted answer for the next request whose path starts with ``path_prefix``."""

    path_prefix: str
    status: int = 500
    body: bytes = b'{"message": "Internal Server Error"}'
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})
    delay_seconds: float = 0.0


# --- (a) recorded responses --------------------------------------------------------------


# Minimal market lists in each exchange's raw shape: just enough for ccxt's load_markets to
# map the unified symbol of the recording to the exchange's own id.
def _coinbase_markets(base: str, quote: str) -> dict[str, Reply]:
    product = {
        "id": f"{base}-{quote}",
        "base_currency": base,
        "quote_currency": quote,
        "quote_increment": "0.01",
        "base_increment": "0.00000001",
        "min_market_funds": "1",
        "status": "online",
        "trading_disabled": False,
    }
    return {"/products": _json([product]), "/currencies": _json([])}


def _kraken_markets(base: str, quote: str, pair_id: str) -> dict[str, Reply]:
    kraken_base = "XXBT" if base == "BTC" else base
    pair = {
        "altname": pair_id,
        "wsname": f"XBT/{quote}",
        "base": kraken_base,
        "quote": quote,
        "pair_decimals": 1,
        "lot_decimals": 8,
        "ordermin": "0.0001",
        "fees": [[0, 0.26]],
        "fees_maker": [[0, 0.16]],
        "status": "online",
    }
    assets = {
        kraken_base: {
            "aclass": "currency",
            "altname": "XBT",
            "decimals": 10,
            "display_decimals": 5,
            "status": "enabled",
        },
        quote: {
            "aclass": "currency",
            "altname": quote,
            "decimals": 8,
            "display_decimals": 4,
            "status": "enabled",
        },
    }
    return {
        "/0/public/AssetPairs": _json({"error": [], "result": {pair_id: pair}}),
        "/0/public/Assets": _json({"error": [], "result": assets}),
    }


def _binance_markets(base: str, quote: str) -> dict[str, Reply]:
    symbol = {
        "symbol": f"{base}{quote}",
        "status": "TRADING",
        "baseAsset": base,
        "quoteAsset": quote,
        "baseAssetPrecision": 8,
        "quotePrecision": 8,
        "isSpotTradingAllowed": True,
        "isMarginTradingAllowed": False,
        "permissions": ["SPOT"],
        "filters": [],
    }
    return {"/api/v3/exchangeInfo": _json({"timezone": "UTC", "serverTime": 0, "symbols": [symbol]})}


def _bitstamp_markets(base: str, quote: str) -> dict[str, Reply]:
    market = {
        "name": f"{base}/{quote}",
        "market_symbol": f"{base}{quote}".lower(),
        "base_currency": base,
        "counter_currency": quote,
        "market_type": "SPOT",
        "base_decimals": 8,
        "counter_decimals": 0,
        "instant_order_counter_decimals": 2,
        "minimum_order_value": "10",
        "trading": "Enabled",
        "instant_and_market_orders": "Enabled",
        "description": f"{base} / {quote}",
    }
    return {"/api/v2/markets/": _json([market]), "/api/v2/currencies/": _json([])}


def recorded_routes(data_dir: Path) -> dict[str, Reply]:
    """Path -> reply for the four recorded exchanges (paths do not clash between them)."""
    routes: dict[str, Reply] = {}
    for exchange_id in ("coinbaseexchange", "kraken", "binanceus", "bitstamp"):
        case = recording(data_dir, exchange_id)
        base, quote = case["input"][0].split("/")
        body = case["httpResponse"]
        if exchange_id == "coinbaseexchange":
            routes.update(_coinbase_markets(base, quote))
            routes[f"/products/{base}-{quote}/candles"] = _json(body)
        elif exchange_id == "kraken":
            pair_id = next(key for key in body["result"] if key != "last")
            routes.update(_kraken_markets(base, quote, pair_id))
            routes["/0/public/OHLC"] = _json(body)
        elif exchange_id == "binanceus":
            routes.update(_binance_markets(base, quote))
            routes["/api/v3/klines"] = _json(body)
        else:
            routes.update(_bitstamp_markets(base, quote))
            routes[f"/api/v2/ohlc/{base}{quote}/".lower()] = _json(body)
    return routes


def recording(data_dir: Path, exchange_id: str) -> dict[str, Any]:
    """The first recorded fetchOHLCV case of ``exchange_id`` (input, httpResponse, parsedResponse)."""
    payload = json.loads((Path(data_dir) / f"{exchange_id}_fetchOHLCV.json").read_text())
    return payload["fetchOHLCV"][0]


# --- (b) a long series in Coinbase Exchange's shape --------------------------------------


class CoinbaseSeries:
    """Closed candles plus one still-open candle at ``now``, served the way Coinbase pages them."""

    def __init__(
        self, candles: CandleFrame, granularity_seconds: int, now: datetime, product_id: str = "BTC-USD"
    ):
        self.candles = candles
        self.granularity_seconds = granularity_seconds
        self.now_seconds = int(now.timestamp())
        self.product_id = product_id

    def routes(self) -> dict[str, Handler]:
        base, quote = self.product_id.split("-")
        static = _coinbase_markets(base, quote)
        handlers: dict[str, Handler] = {
            path: (lambda _p, _q, _h, reply=reply: reply) for path, reply in static.items()
        }
        handlers[f"/products/{self.product_id}/candles"] = self._candles
        return handlers

    def _candles(self, _path: str, query: dict[str, str], _headers: dict[str, str]) -> Reply:
        if int(query.get("granularity", self.granularity_seconds)) != self.granularity_seconds:
            return _json({"message": "Unsupported granularity"}, 400)
        start = (
            _iso_seconds(query.get("start"))
            if "start" in query
            else self.now_seconds - 300 * self.granularity_seconds
        )
        end = _iso_seconds(query.get("end")) if "end" in query else self.now_seconds
        times = self.candles.open_time
        chosen = np.flatnonzero((times >= start) & (times <= min(end, self.now_seconds)))[
            :COINBASE_MAX_CANDLES
        ]
        rows = [
            [
                int(times[i]),
                self.candles.low[i],
                self.candles.high[i],
                self.candles.open[i],
                self.candles.close[i],
                self.candles.volume[i],
            ]
            for i in chosen
        ]
        open_candle_time = self.now_seconds - self.now_seconds % self.granularity_seconds
        already_there = bool(rows) and rows[-1][0] >= open_candle_time
        if (
            start <= open_candle_time <= end
            and len(rows) < COINBASE_MAX_CANDLES
            and rows
            and not already_there
        ):
            last_close = rows[-1][4]
            rows.append([open_candle_time, last_close, last_close, last_close, last_close, 0.0])
        return _json([[float(v) if k else v for k, v in enumerate(row)] for row in reversed(rows)])


def _iso_seconds(text: str | None) -> int:
    return int(datetime.fromisoformat(str(text).replace("Z", "+00:00")).astimezone(UTC).timestamp())


def generated_series(
    start: datetime, count: int, granularity_seconds: int, seed: int = 7, gap: tuple[int, int] | None = None
) -> CandleFrame:
    """A seeded random walk of ``count`` candles; ``gap=(first, n)`` leaves n candles out."""
    rng = np.random.default_rng(seed)
    closes = 10_000 * np.exp(np.cumsum(rng.normal(0, 0.004, count)))
    opens = np.concatenate([[10_000.0], closes[:-1]])
    spread = np.abs(rng.normal(0, 0.002, count)) * closes
    times = int(start.timestamp()) + granularity_seconds * np.arange(count, dtype=np.int64)
    keep = np.ones(count, dtype=bool)
    if gap:
        keep[gap[0] : gap[0] + gap[1]] = False
    highs = np.maximum(opens, closes) + spread
    lows = np.minimum(opens, closes) - spread
    volume = rng.uniform(1, 100, count)
    return CandleFrame(times[keep], opens[keep], highs[keep], lows[keep], closes[keep], volume[keep])


class FeedSequence:
    """Serves saved feed payloads one per poll (then the last again), with ETag / 304."""

    def __init__(self, payloads: list[bytes], content_type: str = "application/rss+xml") -> None:
        self.payloads = payloads
        self.content_type = content_type
        self.served = 0

    def __call__(self, _path: str, _query: dict[str, str], headers: dict[str, str]) -> Reply:
        payload = self.payloads[min(self.served, len(self.payloads) - 1)]
        etag = '"' + hashlib.sha256(payload).hexdigest()[:16] + '"'
        if headers.get("if-none-match") == etag:
            return 304, {"ETag": etag}, b""
        self.served += 1
        return 200, {"Content-Type": self.content_type, "ETag": etag}, payload


# --- the server ---------------------------------------------------------------------------


class ReplayServer:
    """A threaded HTTP server on 127.0.0.1 and a free port; use as a context manager."""

    def __init__(self, routes: dict[str, Reply | Handler] | None = None, port: int = 0) -> None:
        self.routes: dict[str, Reply | Handler] = dict(routes or {})
        self.faults: deque[Fault] = deque()
        self.requests: list[str] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="replay-server", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> ReplayServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> ReplayServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def add_fault(self, fault: Fault) -> None:
        with self._lock:
            self.faults.append(fault)

    def _next_fault(self, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if path.startswith(fault.path_prefix):
                    self.faults.remove(fault)
                    return fault
        return None

    def answer(self, path: str, query: dict[str, str], headers: dict[str, str] | None = None) -> Reply:
        with self._lock:
            self.requests.append(path)
        fault = self._next_fault(path)
        if fault is not None:
            time.sleep(fault.delay_seconds)
            return fault.status, fault.headers, fault.body
        route = self.routes.get(path) or self.routes.get(path.rstrip("/") + "/")
        if route is None:
            return _json({"message": f"NotFound: {path}"}, 404)
        return route(path, query, headers or {}) if callable(route) else route

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class _Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
                request_headers = {key.lower(): value for key, value in self.headers.items()}
                status, headers, body = server.answer(parts.path, query, request_headers)
                try:
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test): nothing to answer

            def log_message(self, *_args: object) -> None:  # quiet: tests read server.requests
                pass

        return _Handler
