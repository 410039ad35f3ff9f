"""RSS feeds: conditional GET with httpx, parsing with feedparser, items to HeadlineRecords.

A whole payload is refused (``FeedError``) when it is not a feed at all (malformed XML, an
HTML error page, bytes that are not valid UTF-8); single items are refused and counted
(missing or future pubDate, no title, a guid repeated inside the feed).
"""

from __future__ import annotations

import calendar
import codecs
import re
import xml.sax
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import feedparser
import httpx

from services.common.errors import InvalidInput, TemporaryError
from services.ingest.headlines import HeadlineRecord, Rejects, normalise_title, payload_sha256

FUTURE_TOLERANCE = timedelta(minutes=5)  # clocks differ a little; more than this is a bad date
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
    client: httpx.Client, url: str, etag: str | None = None, last_modified: str | None = None
) -> FeedFetch:
    """GET ``url`` with the stored validators; HTTP and network failures become HsigErrors."""
    headers = {"Accept": "application/rss+xml, application/xml;q=0.9, */*;q=0.1"}
    if etag:
        headers["If-None-Match"] = etag
    if last_modified:
        headers["If-Modified-Since"] = last_modified
    try:
        response = client.get(url, headers=headers, follow_redirects=True)
    except httpx.TimeoutException as exc:
        raise TemporaryError(f"timeout fetching {url}: {type(exc).__name__}", param="timeout") from exc
    except httpx.HTTPError as exc:
        raise TemporaryError(f"network error fetching {url}: {exc}", param="network") from exc
    if response.status_code == 304:
        return FeedFetch(None, etag, last_modified, 304)
    if response.status_code == 429 or response.status_code >= 500:
        retry_after = _retry_after(response)
        raise TemporaryError(
            f"HTTP {response.status_code} from {url}",
            retry_after=retry_after,
            param=f"http_{response.status_code}",
        )
    if response.status_code >= 400:
        raise FeedError(f"http_{response.status_code}", f"HTTP {response.status_code} from {url}")
    return FeedFetch(
        response.content,
        response.headers.get("ETag"),
        response.headers.get("Last-Modified"),
        response.status_code,
    )


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


def parse_feed(content: bytes, source: str, now: datetime | None = None) -> ParsedFeed:
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
        record = _record(entry, source, now, result.rejects)
        if record is None:
            continue
        if record.guid in seen_guids:
            result.rejects.add("duplicate_in_feed", record.guid)
            continue
        seen_guids.add(record.guid)
        result.records.append(record)
    return result


def _record(entry: Any, source: str, now: datetime, rejects: Rejects) -> HeadlineRecord | None:
    title = normalise_title(entry.get("title", ""))
    if not title:
        rejects.add("missing_title", str(entry.get("id", "")))
        return None
    published = entry.get("published_parsed") or entry.get("updated_parsed")
    if published is None:
        rejects.add("missing_pubdate", title)
        return None
    published_at = datetime.fromtimestamp(calendar.timegm(published), tz=UTC)  # struct is UTC
    if published_at > now + FUTURE_TOLERANCE:
        rejects.add("future_pubdate", f"{title} @ {published_at.isoformat()}")
        return None
    raw = {key: entry.get(key) for key in ("id", "title", "link", "published", "summary")}
    guid = entry.get("id") or entry.get("link") or payload_sha256(raw)
    summary = normalise_title(entry.get("summary", "")) or None
    return HeadlineRecord(source, str(guid), title, published_at, entry.get("link"), summary, raw)
