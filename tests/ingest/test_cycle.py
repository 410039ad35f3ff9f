"""Whole cycles against the real database (SQLite and PostgreSQL) and local HTTP servers."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import func, select

from services.common.db import session_scope
from services.common.db.models import Candle, CandleGap, Headline, LabelledRow, SourceState
from services.ingest.backfill import backfill_headline_csv
from services.ingest.cycle import candle_source, feed_source, run_cycle
from services.ingest.settings import IngestSettings
from services.pipeline.replay_server import (
    CoinbaseSeries,
    Fault,
    FeedSequence,
    ReplayServer,
    generated_series,
)
from tests.ingest.conftest import T0, snapshot

H = 3600


def _count(url: str, model: type) -> int:
    with session_scope(url) as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_snapshots_in_sequence_store_overlap_once(
    ingest_settings: IngestSettings, server: ReplayServer
) -> None:
    server.routes["/finance"] = FeedSequence([snapshot(0), snapshot(1), snapshot(2)])
    settings = ingest_settings.model_copy(update={"feed_urls": [f"{server.url}/finance"]})
    url = settings.resolved_database_url
    outcomes = [run_cycle(settings, candles=False, label=False).sources[0] for _ in range(4)]
    assert [(o.stored, o.duplicates) for o in outcomes[:3]] == [(30, 0), (12, 18), (30, 0)]
    assert outcomes[3].detail == {"not_modified": True}  # conditional GET: ETag answered with 304
    assert _count(url, Headline) == 72
    with session_scope(url) as session:
        state = session.get(SourceState, feed_source(f"{server.url}/finance"))
        assert state is not None and state.etag and state.last_error is None
        hashes = session.scalars(select(Headline.payload_sha256)).all()
    assert len(set(hashes)) == 72 and all(len(value) == 64 for value in hashes)


def test_same_story_in_two_feeds_is_stored_once(
    ingest_settings: IngestSettings, server: ReplayServer
) -> None:
    copy = snapshot(0).replace(b"guid_", b"other_guid_").replace(b"   ", b" ")
    server.routes["/a"] = FeedSequence([snapshot(0)])
    server.routes["/b"] = FeedSequence([copy])
    settings = ingest_settings.model_copy(update={"feed_urls": [f"{server.url}/a", f"{server.url}/b"]})
    first, second = run_cycle(settings, candles=False, label=False).sources
    assert (first.stored, second.stored, second.duplicates) == (30, 0, 30)


BAD_FEEDS = {
    "/http500": Fault("/http500", 500, b"Internal Server Error", {"Content-Type": "text/plain"}),
    "/html": Fault(
        "/html", 200, b"<!DOCTYPE html><html><body>Maintenance</body></html>", {"Content-Type": "text/html"}
    ),
    "/truncated": Fault("/truncated", 200, snapshot(1)[:4000], {"Content-Type": "application/rss+xml"}),
    "/latin1": Fault(
        "/latin1", 200, snapshot(1).replace(b"Stocks", b"St\xf6cks"), {"Content-Type": "application/rss+xml"}
    ),
    "/slow": Fault("/slow", 200, snapshot(1), {"Content-Type": "application/rss+xml"}, delay_seconds=3.0),
    "/ratelimited": Fault("/ratelimited", 429, b"", {"Retry-After": "30"}),
}
EXPECTED_REASON = {
    "/http500": "http_500",
    "/html": "not_a_feed",
    "/truncated": "malformed_xml",
    "/latin1": "invalid_encoding",
    "/slow": "timeout",
    "/ratelimited": "http_429",
}


def test_failing_sources_never_stop_the_others(
    ingest_settings: IngestSettings, server: ReplayServer, caplog: pytest.LogCaptureFixture
) -> None:
    series = generated_series(T0, 30, H)
    now = T0 + timedelta(hours=29, minutes=10)
    server.routes.update(CoinbaseSeries(series, H, now).routes())
    server.routes["/good"] = FeedSequence([snapshot(0)])
    settings = ingest_settings.model_copy(
        update={
            "feed_urls": [f"{server.url}{path}" for path in BAD_FEEDS] + [f"{server.url}/good"],
            "exchange_api_url": server.url,
            "candle_since": T0,
            "http_timeout_seconds": 1.0,
        }
    )
    url = settings.resolved_database_url
    before = {
        path: _metric(
            "hsig_ingest_errors_total",
            source=feed_source(f"{server.url}{path}"),
            reason=EXPECTED_REASON[path],
        )
        for path in BAD_FEEDS
    }
    market = candle_source("coinbaseexchange", "BTC/USD", "1h")
    rate_limited_before = _metric("hsig_ingest_errors_total", source=market, reason="rate_limited")
    caplog.set_level(logging.WARNING, logger="services.ingest.cycle")
    for _ in range(2):  # twice: each failure is logged once, counted twice
        for fault in BAD_FEEDS.values():
            server.add_fault(fault)
        server.add_fault(Fault("/products/BTC-USD/candles", 429, b'{"message": "Too many requests"}'))
        report = run_cycle(settings, now=now, label=False)
    by_source = {outcome.source: outcome for outcome in report.sources}
    for path, reason in EXPECTED_REASON.items():
        outcome = by_source[feed_source(f"{server.url}{path}")]
        assert (outcome.ok, outcome.reason) == (False, reason)
        source = feed_source(f"{server.url}{path}")
        assert _metric("hsig_ingest_errors_total", source=source, reason=reason) == before[path] + 2
        assert sum(source in record.getMessage() for record in caplog.records) == 1
    assert by_source[feed_source(f"{server.url}/good")].ok
    assert by_source[market].reason == "rate_limited"
    assert (
        _metric("hsig_ingest_errors_total", source=market, reason="rate_limited") == rate_limited_before + 2
    )
    assert _count(url, Headline) == 30  # only the good feed's items
    assert _count(url, Candle) == 0  # the exchange failed both times: nothing half-written
    with session_scope(url) as session:
        state = session.get(SourceState, market)
        assert state is not None and "rate_limited" in (state.last_error or "")
    # Once the exchange answers again, the same cycle fills in the candles.
    report = run_cycle(settings, now=now, feeds=False, label=False)
    assert report.sources[0].ok and _count(url, Candle) == 29


def test_headlines_wait_for_candles_then_get_labelled(
    ingest_settings: IngestSettings, server: ReplayServer, tmp_path: Path
) -> None:
    csv = tmp_path / "news.csv"
    csv.write_text(
        "time,title\n"
        + "".join(f"{(T0 + timedelta(hours=h, minutes=30)).isoformat()},story {h}\n" for h in range(2, 40, 3))
    )
    settings = ingest_settings.model_copy(
        update={"exchange_api_url": server.url, "candle_since": T0, "horizons": ["1h", "2h"]}
    )
    url = settings.resolved_database_url
    assert backfill_headline_csv(settings, csv, "title", "time").stored == 13
    series = generated_series(T0, 48, H, gap=(20, 2))
    server.routes.update(CoinbaseSeries(series, H, T0 + timedelta(hours=24, minutes=5)).routes())
    report = run_cycle(settings, now=T0 + timedelta(hours=24, minutes=5), feeds=False)
    assert all(outcome.ok for outcome in report.sources)
    labelled_first = _count(url, LabelledRow)
    # Closed by 24:05: candles up to the one opening at 23:00; 20:00 and 21:00 are missing.
    # Stories at 02:30, 05:30, ... 17:30 (6) label at both horizons (entry h+1, exit h+1 or h+2;
    # 17:30 at 2h exits with the 19:00 candle); 20:30 enters at 21:00 (missing: never labelled);
    # 23:30 enters at 00:00, not closed yet.
    assert labelled_first == 6 + 6
    assert _count(url, CandleGap) == 1
    # More candles arrive (the clock moves on): the waiting headlines get labelled, once.
    server.routes.update(CoinbaseSeries(series, H, T0 + timedelta(hours=47, minutes=5)).routes())
    run_cycle(settings, now=T0 + timedelta(hours=47, minutes=5), feeds=False)
    run_cycle(settings, now=T0 + timedelta(hours=47, minutes=5), feeds=False)
    with session_scope(url) as session:
        rows = session.scalars(select(LabelledRow)).all()
        for row in rows:
            assert row.entry_time >= row.headline_time
            assert row.exit_time == row.entry_time + timedelta(seconds=3600 if row.horizon == "1h" else 7200)
            assert all(
                datetime.fromisoformat(t) + timedelta(hours=1) <= row.headline_time
                for t in row.situation_candles
            )
    # 13 stories x 2 horizons, minus 20:30 at both (its entry candle is in the gap); every other
    # exit has closed by 47:05 (the last story is at 38:30).
    assert len(rows) == 2 * 13 - 2


def test_rejected_items_are_counted_and_logged_once(
    ingest_settings: IngestSettings, server: ReplayServer, caplog: pytest.LogCaptureFixture
) -> None:
    item = "<item><title>{}</title>{}<guid>{}</guid></item>"
    feed = (
        '<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>'
        + item.format("Good", "<pubDate>Tue, 23 Jul 2019 21:39 GMT</pubDate>", "1")
        + item.format("No date", "", "2")
        + item.format("Future", "<pubDate>Fri, 01 Jan 2100 10:00 GMT</pubDate>", "3")
        + item.format("Good again", "<pubDate>Tue, 23 Jul 2019 21:39 GMT</pubDate>", "1")
        + "</channel></rss>"
    ).encode()
    server.routes["/mixed"] = FeedSequence([feed, feed + b" "])  # a new ETag: parsed again
    name = f"mixed-{uuid.uuid4().hex[:8]}"  # log_once is per process: a fresh source per run
    settings = ingest_settings.model_copy(update={"feed_urls": [f"{name}={server.url}/mixed"]})
    before = {
        reason: _metric("hsig_ingest_errors_total", source=f"rss:{name}", reason=reason)
        for reason in ("missing_pubdate", "future_pubdate", "duplicate_in_feed")
    }
    caplog.set_level(logging.WARNING, logger="services.ingest.cycle")
    first = run_cycle(settings, candles=False, label=False).sources[0]
    second = run_cycle(settings, candles=False, label=False).sources[0]
    assert (first.stored, second.stored, second.duplicates) == (1, 0, 1)
    assert first.rejected == {"missing_pubdate": 1, "future_pubdate": 1, "duplicate_in_feed": 1}
    for reason, value in before.items():
        assert _metric("hsig_ingest_errors_total", source=f"rss:{name}", reason=reason) == value + 2
        assert sum(reason in record.getMessage() for record in caplog.records) == 1
    with session_scope(settings.resolved_database_url) as session:
        assert session.scalars(select(Headline.title)).all() == ["Good"]
