"""Hostile upstreams for the ingest tests: a feed server and a Coinbase-shaped exchange server
that misbehave on purpose (issue 14). Plain ``http.server`` in a daemon thread on 127.0.0.1.

Each route is a ``Reply``: a status, headers and a body that is bytes or an iterator of byte
chunks (sent with chunked encoding, each chunk after ``pause`` seconds), so a slow drip and a
never-ending body cost the test nothing. ``sent`` counts the body bytes each route got out
before the client hung up: a client with a size cap stops the stream early.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    body: bytes | Callable[[], Iterable[bytes]] = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/rss+xml"})
    pause: float = 0.0  # seconds before each chunk of an iterated body


class HostileServer:
    """``routes[path] = Reply(...)``; ``url`` once started (``with HostileServer() as s:``)."""

    def __init__(self) -> None:
        self.routes: dict[str, Reply] = {}
        self.sent: dict[str, int] = {}
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                server.requests.append(self.path)
                reply = server.routes.get(path, Reply(b"not found", 404, {"Content-Type": "text/plain"}))
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                try:
                    if isinstance(reply.body, bytes):
                        if "Content-Length" not in reply.headers:
                            self.send_header("Content-Length", str(len(reply.body)))
                        self.end_headers()
                        self.wfile.write(reply.body)
                        server.sent[path] = server.sent.get(path, 0) + len(reply.body)
                        return
                    self.send_header("Transfer-Encoding", "chunked")
                    self.send_header("Connection", "close")
                    self.end_headers()
                    for chunk in reply.body():
                        if reply.pause:
                            time.sleep(reply.pause)
                        self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                        self.wfile.flush()
                        server.sent[path] = server.sent.get(path, 0) + len(chunk)
                    self.wfile.write(b"0\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
                    pass  # the client gave up on us: that is the point
                self.close_connection = True

            def log_message(self, *_args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_port}"

    def __enter__(self) -> HostileServer:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


# --- feeds --------------------------------------------------------------------------------


def rss(*items: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel><title>t</title>'
        + "".join(items)
        + "</channel></rss>"
    ).encode()


def item(title: str, date: str, guid: str, summary: str = "", link: str = "") -> str:
    parts = [f"<title>{title}</title>", f"<pubDate>{date}</pubDate>" if date else "", f"<guid>{guid}</guid>"]
    if summary:
        parts.append(f"<description>{summary}</description>")
    if link:
        parts.append(f"<link>{link}</link>")
    return "<item>" + "".join(parts) + "</item>"


def rfc822(moment: datetime) -> str:
    return f"{moment:%a, %d %b %Y %H:%M:%S} GMT"


def drip(byte: bytes = b" ") -> Callable[[], Iterator[bytes]]:
    """One byte per chunk, forever (the server's ``pause`` sets the pace)."""
    return lambda: itertools.repeat(byte)


def endless(chunk_bytes: int = 65536) -> Callable[[], Iterator[bytes]]:
    """A valid-looking feed that never ends: an opening, then item after item."""

    def body() -> Iterator[bytes]:
        yield rss()[: -len(b"</channel></rss>")]
        filler = item("x" * 200, "Tue, 23 Jul 2019 21:39 GMT", "g", "y" * 1000).encode()
        block = filler * max(1, chunk_bytes // len(filler))
        while True:
            yield block

    return body


# --- a Coinbase Exchange-shaped exchange ----------------------------------------------------

_PRODUCT = {
    "id": "BTC-USD",
    "base_currency": "BTC",
    "quote_currency": "USD",
    "quote_increment": "0.01",
    "base_increment": "0.00000001",
    "min_market_funds": "1",
    "status": "online",
    "trading_disabled": False,
}
CANDLES_PATH = "/products/BTC-USD/candles"


def exchange_routes(candles_body: bytes, status: int = 200) -> dict[str, Reply]:
    """The two market lists ccxt's ``coinbaseexchange`` loads first, and a candles reply."""
    as_json = {"Content-Type": "application/json"}
    return {
        "/products": Reply(json.dumps([_PRODUCT]).encode(), headers=as_json),
        "/currencies": Reply(b"[]", headers=as_json),
        CANDLES_PATH: Reply(candles_body, status, headers=as_json),
    }


def coinbase_rows(rows: list[tuple[Any, ...]]) -> bytes:
    """(time s, open, high, low, close, volume) tuples in Coinbase's raw shape: [time, low,
    high, open, close, volume], newest first. Values are written as given: None is null and
    the strings "NaN" / "Infinity" are written bare (what a broken exchange sends)."""

    def value(v: Any) -> str:
        if v is None:
            return "null"
        if isinstance(v, str) and v in {"NaN", "Infinity", "-Infinity"}:
            return v
        return json.dumps(v)

    ordered = sorted(rows, key=lambda row: row[0] if isinstance(row[0], int) else 0, reverse=True)
    raw = [[row[0], row[3], row[2], row[1], row[4], row[5]] for row in ordered]
    return ("[" + ",".join("[" + ",".join(value(v) for v in row) + "]" for row in raw) + "]").encode()
