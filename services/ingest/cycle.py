"""One ingest cycle: every feed, every candle market, then labelling. Each source runs in its
own transaction and its own try block: a failing source is logged once, counted and recorded
in SourceState, and the others carry on.

No credential leaves through here: source ids, messages, log lines and the errors recorded
in SourceState have every URL redacted (``services.common.redact``).
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from services.common.db import session_scope
from services.common.errors import HsigError
from services.common.labelling import SituationWords, timeframe_seconds
from services.common.logging import forget, log_once
from services.common.redact import redact_text, redact_url
from services.ingest import metrics
from services.ingest.candles import build_exchange, pull_candles
from services.ingest.headlines import HeadlineRecord, ItemLimits, Rejects
from services.ingest.labeller import Market, label_new_rows
from services.ingest.rss import FeedError, fetch_feed, parse_feed
from services.ingest.settings import IngestSettings
from services.ingest.store import (
    get_source_state,
    insert_gaps,
    insert_headlines,
    last_candle_time,
    record_failure,
    record_state,
    record_success,
    upsert_candles,
)

log = logging.getLogger(__name__)


@dataclass
class SourceOutcome:
    source: str
    ok: bool
    stored: int = 0
    duplicates: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    reason: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class CycleReport:
    sources: list[SourceOutcome] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {"seconds": round(self.seconds, 3), "sources": [vars(source) for source in self.sources]}


_NAMED_FEED = re.compile(r"^(?P<name>[A-Za-z0-9_.-]+)=(?P<url>https?://.+)$")


def split_feed(entry: str) -> tuple[str, str]:
    """A feed setting is a URL or ``name=URL``; returns (source id, URL).

    The source id keys dedupe and polling state, so it must outlive the URL's host and port
    (the demo's local feed server gets a new port every run).
    """
    match = _NAMED_FEED.match(entry.strip())
    if match:
        return f"rss:{match['name']}", match["url"]
    url = entry.strip()
    shown = redact_url(url)
    if shown != url:  # credentials in the URL: never in the id (stats, metrics, logs, rows)
        return f"rss:{shown}#{hashlib.sha256(url.encode()).hexdigest()[:8]}", url
    return f"rss:{url}", url


def feed_source(entry: str) -> str:
    return split_feed(entry)[0]


def candle_source(exchange: str, symbol: str, timeframe: str) -> str:
    return f"candles:{exchange}:{symbol}:{timeframe}"


def _reason(exc: Exception) -> str:
    if isinstance(exc, FeedError):
        return exc.reason
    if isinstance(exc, HsigError) and exc.param:
        return exc.param
    return type(exc).__name__


def guarded(source: str, work: Callable[[], SourceOutcome], url: str) -> SourceOutcome:
    """Run one source; any failure is logged once, counted, recorded, and swallowed."""
    try:
        outcome = work()
    except Exception as exc:
        reason = _reason(exc)
        message = exc.message if isinstance(exc, HsigError) else f"{type(exc).__name__}: {exc}"
        message = redact_text(message) or ""
        metrics.ERRORS.labels(source, reason).inc()
        _failing_reasons.setdefault(source, set()).add(reason)
        log_once(
            log, logging.WARNING, f"{source}:{reason}", "source %s failed (%s): %s", source, reason, message
        )
        try:
            with session_scope(url) as session:
                record_failure(session, source, f"{reason}: {message}")
        except Exception:  # the database itself is down: the log line above is all we can do
            log.exception("could not record the failure of %s", source)
        return SourceOutcome(source, ok=False, error=message, reason=reason)
    for reason in _failing_reasons.pop(source, set()):
        forget(log, f"{source}:{reason}")  # recovered: the next failure is news again
    metrics.LAST_SUCCESS.labels(source).set(time.time())
    return outcome


_failing_reasons: dict[str, set[str]] = {}  # source -> reasons logged while it was failing


def count_rejects(source: str, rejects: Rejects) -> None:
    for reason, count in rejects.counts.items():
        metrics.ERRORS.labels(source, reason).inc(count)
        metrics.ITEMS.labels(source, "rejected").inc(count)
        log_once(
            log,
            logging.WARNING,
            f"{source}:{reason}",
            "source %s: %d item(s) rejected (%s), e.g. %s",
            source,
            count,
            reason,
            rejects.examples.get(reason, ""),
        )


def _count_quarantined(source: str, kind: str, reasons: dict[str, int]) -> None:
    for reason, count in reasons.items():
        metrics.QUARANTINED.labels(kind, reason).inc(count)
        log_once(
            log,
            logging.WARNING,
            f"{source}:quarantine:{kind}:{reason}",
            "%s: %d %s quarantined (%s): skipped, the rest labelled",
            source,
            count,
            kind,
            reason,
        )


def store_headlines(
    url: str, source: str, records: list[HeadlineRecord], rejects: Rejects, **state: Any
) -> SourceOutcome:
    """Write one source's headlines and its new state in one transaction."""
    with session_scope(url) as session:
        stored = insert_headlines(session, records)
        record_success(session, source, **state)
    count_rejects(source, rejects)
    metrics.ITEMS.labels(source, "stored").inc(stored)
    metrics.ITEMS.labels(source, "duplicate").inc(len(records) - stored)
    return SourceOutcome(source, True, stored, len(records) - stored, dict(rejects.counts))


def poll_feed(settings: IngestSettings, client: httpx.Client, feed: str) -> SourceOutcome:
    (source, feed_url), url = split_feed(feed), settings.resolved_database_url
    with session_scope(url) as session:
        state = get_source_state(session, source)
        etag, last_modified = state.etag, state.last_modified
    fetched = fetch_feed(
        client,
        feed_url,
        etag,
        last_modified,
        max_bytes=settings.feed_max_bytes,
        deadline_seconds=settings.feed_deadline_seconds,
    )
    if fetched.content is None:  # 304: nothing new
        with session_scope(url) as session:
            record_success(session, source)
        return SourceOutcome(source, True, detail={"not_modified": True})
    parsed = parse_feed(fetched.content, source, limits=ItemLimits.from_settings(settings))
    return store_headlines(
        url, source, parsed.records, parsed.rejects, etag=fetched.etag, last_modified=fetched.last_modified
    )


def pull_market(
    settings: IngestSettings,
    now: datetime,
    until: datetime | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SourceOutcome:
    """Fetch closed candles after the last stored one, up to ``until`` (default now)."""
    source, url = (
        candle_source(settings.exchange, settings.symbol, settings.timeframe),
        settings.resolved_database_url,
    )
    tf = timeframe_seconds(settings.timeframe)
    with session_scope(url) as session:
        last = last_candle_time(session, settings.exchange, settings.symbol, settings.timeframe)
        known_end = get_source_state(session, source).cursor  # where the exchange's data ended
    since = last + timedelta(seconds=tf) if last else settings.candle_since
    end = min(now, until) if until else now
    exchange = build_exchange(
        settings.exchange, settings.exchange_api_url, settings.http_timeout_seconds, settings.rate_limit_ms
    )
    pull = pull_candles(
        exchange,
        settings.symbol,
        settings.timeframe,
        int(since.timestamp()),
        int(end.timestamp()),
        settings.candle_page_limit,
        settings.candle_max_pages,
        int(last.timestamp()) if last else None,
        progress,
        earliest_seconds=int(settings.earliest_time.timestamp()),
        max_price=settings.max_candle_price,
        known_end_seconds=int(known_end.timestamp()) if known_end else None,
    )
    with session_scope(url) as session:
        written = upsert_candles(
            session, settings.exchange, settings.symbol, settings.timeframe, pull.candles
        )
        gaps = insert_gaps(session, settings.exchange, settings.symbol, settings.timeframe, pull.gaps)
        # The cursor is where the exchange's data was known to end: the next pull at the
        # present asks once from the last stored candle, then jumps there (pull_candles).
        asked_to = datetime.fromtimestamp(pull.asked_to, tz=UTC) if pull.asked_to is not None else since
        cursor = max(asked_to, known_end) if known_end else asked_to  # an --until pull keeps it
        if pull.error is None:
            record_success(session, source, cursor=cursor)
        else:
            record_state(session, source, cursor=cursor)  # the good candles are kept; not a success
    count_rejects(source, pull.rejects)
    metrics.CANDLES.labels(source).inc(written)
    if pull.error is not None:
        raise pull.error  # guarded(): recorded in source_state.last_error, last_success_at kept
    detail = {"pages": pull.pages, "gaps": gaps, "dropped_open": pull.dropped_open}
    return SourceOutcome(source, True, stored=written, rejected=dict(pull.rejects.counts), detail=detail)


def label_pass(settings: IngestSettings) -> list[SourceOutcome]:
    market = Market(settings.exchange, settings.symbol, settings.timeframe)
    words = SituationWords(settings.small_move, settings.sharp_range)
    outcomes = []
    for horizon in settings.horizons:
        source = f"label:{settings.exchange}:{settings.symbol}:{settings.timeframe}:{horizon}"

        def work(horizon: str = horizon, source: str = source) -> SourceOutcome:
            with session_scope(settings.resolved_database_url) as session:
                done = label_new_rows(
                    session,
                    market,
                    horizon,
                    settings.neutral_band,
                    settings.situation_lookback,
                    words,
                    earliest=settings.earliest_time,
                    future_skew=timedelta(seconds=settings.future_skew_seconds),
                )
            for label, count in done.by_label.items():
                metrics.LABELLED.labels(label).inc(count)
            _count_quarantined(source, "headline", done.quarantined_headlines)
            _count_quarantined(source, "candle", done.quarantined_candles)
            detail: dict[str, Any] = {"waiting": done.waiting, **done.by_label}
            if done.quarantined_headlines or done.quarantined_candles:
                detail["quarantined"] = {
                    "headlines": done.quarantined_headlines,
                    "candles": done.quarantined_candles,
                }
            return SourceOutcome(source, True, stored=done.labelled, detail=detail)

        outcomes.append(guarded(source, work, settings.resolved_database_url))
    return outcomes


def run_cycle(
    settings: IngestSettings,
    now: datetime | None = None,
    feeds: bool = True,
    candles: bool = True,
    label: bool = True,
    until: datetime | None = None,
) -> CycleReport:
    """One cycle now: feeds, candles, labelling (each part optional). Never raises for a source."""
    started = time.perf_counter()
    now = now or datetime.now(UTC)
    url = settings.resolved_database_url
    report = CycleReport()
    if feeds:
        with httpx.Client(
            timeout=settings.http_timeout_seconds, headers={"User-Agent": "headline-signal/0.1"}
        ) as client:
            for feed_url in settings.feed_urls:
                report.sources.append(
                    guarded(feed_source(feed_url), lambda f=feed_url: poll_feed(settings, client, f), url)
                )
    if candles:
        source = candle_source(settings.exchange, settings.symbol, settings.timeframe)
        report.sources.append(guarded(source, lambda: pull_market(settings, now, until), url))
    if label:
        report.sources.extend(label_pass(settings))
    report.seconds = time.perf_counter() - started
    metrics.CYCLE_SECONDS.observe(report.seconds)
    return report
