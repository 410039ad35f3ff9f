"""RSS feeds: conditional GET with httpx, parsing with feedparser, items to HeadlineRecords.

A whole payload is refused (``FeedError``) when it is not a feed at all (malformed XML, an
HTML error page, bytes that are not valid UTF-8) or is larger than ``max_bytes``; a fetch
that runs past its overall deadline is cut off (``TemporaryError``, reason ``deadline``).
Single items are refused and counted: a missing, naive, implausibly early or future pubDate,
no title, a field over its cap, a guid repeated inside the feed. URLs in messages are
redacted (``services.common.redact``).
"""

from __future__ import annotations

import calendar
import codecs
import re
import time
import xml.sax
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import feedparser
import httpx

from services.common.errors import InvalidInput, TemporaryError
from services.common.redact import redact_url
from services.ingest.headlines import (
    DEFAULT_LIMITS,
    HeadlineRecord,
    ItemLimits,
    Rejects,
    field_fault,
    normalise_title,
    payload_sha256,
    time_fault,
)

DEFAULT_MAX_BYTES = 5_242_880  # HSIG_FEED_MAX_BYTES
DEFAULT_DEADLINE_SECONDS = 30.0  # HSIG_FEED_DEADLINE_SECONDS
# A date text carries a zone when it ends in one: +0100, -05:00, Z, GMT, UT, EST, a military letter.
_ZONE_AT_END = re.compile(r"(?:[+-]\d{2}:?\d{2}|\d[Zz]|\b[A-Za-z]{1,5})\s*$")
_XML_ENCODING = re.compile(rb"""<\?xml[^>]*encoding=["']([A-Za-z0-9._-]+)["']""")


class FeedError(InvalidInput):
    """The payload is not a usable feed; ``reason`` is the metric label. Nothing is stored."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class FeedFetch:
    """One conditional GET: ``content`` is None when the server said 304 Not Modified."""

    content: bytes | None
    etag: str | None
    last_modified: str | None
    status: int


def fetch_feed(
    client: httpx.Client,
    url: str,
    etag: str | None = None,
    last_modified: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    deadline_seconds: float = DEFAULT_DEADLINE_SECONDS,
) -> FeedFetch:
    """GET ``url`` with the stored validators; HTTP and network failures become HsigErrors.

    The body is streamed and the read stops at ``max_bytes`` (decompressed; a larger declared
    Content-Length is refused before reading) with ``FeedError('too_large')``. The whole fetch,
    connect to last byte, has ``deadline_seconds``: each read waits at most the time left (and
    at most the client's own timeout), and a server that drips bytes is cut off at the deadline
    with ``TemporaryError(param='deadline')``.
    """
    shown = redact_url(url)
    headers = {"Accept": "application/rss+xml, application/xml;q=0.9, */*;q=0.1"}
    if etag:
        headers["If-None-Match"] = etag
    if last_modified:
        headers["If-Modified-Since"] = last_modified
    started = time.monotonic()
    deadline = started + deadline_seconds
    read_timeout = min(_client_timeout(client), deadline_seconds)
    try:
        with client.stream(
            "GET", url, headers=headers, follow_redirects=True, timeout=httpx.Timeout(read_timeout)
        ) as response:
            if response.status_code == 304:
                return FeedFetch(None, etag, last_modified, 304)
            if response.status_code == 429 or response.status_code >= 500:
                raise TemporaryError(
                    f"HTTP {response.status_code} from {shown}",
                    retry_after=_retry_after(response),
                    param=f"http_{response.status_code}",
                )
            if response.status_code >= 400:
                raise FeedError(f"http_{response.status_code}", f"HTTP {response.status_code} from {shown}")
            content = _read_capped(response, shown, max_bytes, deadline, deadline_seconds)
            return FeedFetch(
                content,
                response.headers.get("ETag"),
                response.headers.get("Last-Modified"),
                response.status_code,
            )
    except httpx.TimeoutException as exc:
        if time.monotonic() >= deadline:
            raise _deadline_error(shown, deadline_seconds) from exc
        raise TemporaryError(f"timeout fetching {shown}: {type(exc).__name__}", param="timeout") from exc
    except httpx.HTTPError as exc:
        raise TemporaryError(
            f"network error fetching {shown}: {redact_url(str(exc))}", param="network"
        ) from exc


def _client_timeout(client: httpx.Client) -> float:
    timeout = client.timeout
    values = [value for value in (timeout.connect, timeout.read) if value is not None]
    return min(values) if values else DEFAULT_DEADLINE_SECONDS


def _deadline_error(shown: str, deadline_seconds: float) -> TemporaryError:
    return TemporaryError(
        f"fetching {shown} took longer than the {deadline_seconds:g} s deadline", param="deadline"
    )


def _read_capped(
    response: httpx.Response, shown: str, max_bytes: int, deadline: float, deadline_seconds: float
) -> bytes:
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise FeedError("too_large", f"{shown} declares {int(declared)} bytes, over the {max_bytes}-byte cap")
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > max_bytes:
            raise FeedError(
                "too_large", f"{shown} sent more than the {max_bytes}-byte cap; the rest was not read"
            )
        chunks.append(chunk)
        if time.monotonic() >= deadline:
            raise _deadline_error(shown, deadline_seconds)
    return b"".join(chunks)


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers.get("Retry-After", ""))
    except ValueError:
        return None


def _check_encoding(content: bytes) -> None:
    declared = _XML_ENCODING.search(content[:200])
    encoding = declared.group(1).decode().lower() if declared else "utf-8"
    try:
        codecs.lookup(encoding)
    except LookupError as exc:
        raise FeedError("bad_encoding", f"unknown declared encoding {encoding!r}") from exc
    try:
        content.decode(encoding)
    except UnicodeDecodeError as exc:
        raise FeedError(
            "invalid_encoding", f"payload is not valid {encoding}: {exc.reason} at byte {exc.start}"
        ) from exc


@dataclass
class ParsedFeed:
    records: list[HeadlineRecord] = field(default_factory=list)
    rejects: Rejects = field(default_factory=Rejects)


def parse_feed(
    content: bytes, source: str, now: datetime | None = None, limits: ItemLimits = DEFAULT_LIMITS
) -> ParsedFeed:
    """Parse one RSS/Atom payload into records; raises FeedError for a payload that is no feed."""
    if not content.strip():
        raise FeedError("empty", "the payload is empty")
    _check_encoding(content)
    parsed = feedparser.parse(content)
    if b"<html" in content[:2000].lower() and not parsed.get("version"):
        raise FeedError("not_a_feed", "an HTML page, not a feed (an error page?)")
    if isinstance(parsed.get("bozo_exception"), xml.sax.SAXException):
        # feedparser salvages what it can from broken XML; half an item is worse than none.
        raise FeedError("malformed_xml", f"malformed XML: {parsed.get('bozo_exception')}")
    if not parsed.get("version"):
        raise FeedError("not_a_feed", "the payload is not RSS or Atom")
    now = now or datetime.now(UTC)
    result = ParsedFeed()
    seen_guids: set[str] = set()
    for entry in parsed.entries:
        record = _record(entry, source, now, result.rejects, limits)
        if record is None:
            continue
        if record.guid in seen_guids:
            result.rejects.add("duplicate_in_feed", record.guid)
            continue
        seen_guids.add(record.guid)
        result.records.append(record)
    return result


def _has_zone(text: str) -> bool:
    """True when a date text names its timezone (feedparser reads a naive one as UTC)."""
    return bool(_ZONE_AT_END.search(text.strip()))


def _record(
    entry: Any, source: str, now: datetime, rejects: Rejects, limits: ItemLimits = DEFAULT_LIMITS
) -> HeadlineRecord | None:
    title = normalise_title(entry.get("title", ""))
    if not title:
        rejects.add("missing_title", str(entry.get("id", ""))[:200])
        return None
    published = entry.get("published_parsed") or entry.get("updated_parsed")
    if published is None:
        rejects.add("missing_pubdate", title)
        return None
    raw_date = str(entry.get("published") or entry.get("updated") or "")
    if not _has_zone(raw_date):
        rejects.add("naive_pubdate", f"{title[:150]} @ {raw_date[:40]}")
        return None
    try:
        published_at = datetime.fromtimestamp(calendar.timegm(published), tz=UTC)  # struct is UTC
    except (OverflowError, ValueError, OSError):
        rejects.add("early_pubdate", f"{title[:150]} @ {raw_date[:40]}")
        return None
    fault = time_fault(published_at, now, limits)
    if fault:
        rejects.add(fault, f"{title[:150]} @ {published_at.isoformat()}")
        return None
    raw = {key: entry.get(key) for key in ("id", "title", "link", "published", "summary")}
    guid = entry.get("id") or entry.get("link") or payload_sha256(raw)
    summary = normalise_title(entry.get("summary", "")) or None
    record = HeadlineRecord(source, str(guid), title, published_at, entry.get("link"), summary, raw)
    fault = field_fault(record, limits)
    if fault:
        rejects.add(fault, title[:200])
        return None
    return record
