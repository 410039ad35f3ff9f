"""Hostile and broken upstreams (issue 14, items 1, 4, 6 and 9), on SQLite and PostgreSQL.

A local feed server and a local Coinbase-shaped exchange (``tests/ingest/hostile.py``, ccxt's
own ``coinbaseexchange`` class pointed at it) serve each case; every test says what is stored,
what is rejected or quarantined, what error is recorded, and that the rest is labelled.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from sqlalchemy import select

from services.common.db import session_scope
from services.common.db.models import Candle, Headline, LabelledRow, SourceState
from services.common.redact import redact_text, redact_url
from services.common.schemas import PredictItem
from services.ingest.app import build_app
from services.ingest.csv_import import CandleFrame
from services.ingest.cycle import candle_source, feed_source, run_cycle
from services.ingest.settings import IngestSettings
from services.ingest.store import upsert_candles
from tests.ingest.hostile import (
    CANDLES_PATH,
    HostileServer,
    Reply,
    coinbase_rows,
    drip,
    endless,
    exchange_routes,
    item,
    rfc822,
    rss,
)

H = 3600
T0 = datetime(2024, 1, 1, tzinfo=UTC)
NOW = T0 + timedelta(hours=6, minutes=10)  # candles T0..T0+5h closed, T0+6h still open
GOOD_DATE = "Tue, 23 Jul 2019 21:39 GMT"


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def hostile() -> Iterator[HostileServer]:
    with HostileServer() as server:
        yield server


def _feed_settings(
    settings: IngestSettings, server: HostileServer, path: str, **update: object
) -> IngestSettings:
    name = f"h-{uuid.uuid4().hex[:8]}"  # log_once and metrics are per process: a fresh source per test
    return settings.model_copy(update={"feed_urls": [f"{name}={server.url}{path}"], **update})


def _state(settings: IngestSettings, source: str) -> SourceState | None:
    with session_scope(settings.resolved_database_url) as session:
        state = session.get(SourceState, source)
        if state is not None:
            session.expunge(state)
        return state


def _count(settings: IngestSettings, model: type) -> int:
    with session_scope(settings.resolved_database_url) as session:
        return len(session.scalars(select(model)).all())


# --- item 4: deadlines and size caps on feeds ---------------------------------------------


def test_a_drip_feeding_server_is_cut_off_at_the_deadline(
    ingest_settings: IngestSettings, hostile: HostileServer
) -> None:
    hostile.routes["/drip"] = Reply(drip(), pause=0.05)  # a byte every 50 ms: no read ever times out
    settings = _feed_settings(
        ingest_settings, hostile, "/drip", feed_deadline_seconds=0.5, http_timeout_seconds=2.0
    )
    started = time.monotonic()
    outcome = run_cycle(settings, candles=False, label=False).sources[0]
    took = time.monotonic() - started
    assert not outcome.ok and outcome.reason == "deadline", outcome
    assert took < 2.0  # the deadline, not the per-read timeout, ends the fetch (153 s before)
    state = _state(settings, outcome.source)
    assert state is not None and state.last_success_at is None and "deadline" in (state.last_error or "")
    assert _count(settings, Headline) == 0


@pytest.mark.parametrize("declared", [False, True])
def test_a_huge_body_is_refused_after_the_cap_not_read_whole(
    ingest_settings: IngestSettings, hostile: HostileServer, declared: bool
) -> None:
    cap = 1_048_576
    if declared:  # says 378 MB up front: refused before a byte of the body is read
        hostile.routes["/huge"] = Reply(b"x" * 1000, headers={"Content-Length": "378000000"})
    else:  # chunked, never ends
        hostile.routes["/huge"] = Reply(endless())
    settings = _feed_settings(ingest_settings, hostile, "/huge", feed_max_bytes=cap)
    outcome = run_cycle(settings, candles=False, label=False).sources[0]
    assert not outcome.ok and outcome.reason == "too_large", outcome
    if not declared:
        assert hostile.sent["/huge"] < 8 * cap  # the client hung up soon after the cap
    assert _count(settings, Headline) == 0


def test_fields_over_their_caps_reject_the_item_and_nothing_is_truncated(
    ingest_settings: IngestSettings, hostile: HostileServer
) -> None:
    hostile.routes["/fields"] = Reply(
        rss(
            item("A fine headline", GOOD_DATE, "ok", "a short summary", "https://example.com/a"),
            item("T" * 1001, GOOD_DATE, "long-title"),
            item("Long summary", GOOD_DATE, "long-summary", "s" * 10_001),
            item("Long link", GOOD_DATE, "long-link", link="https://example.com/" + "l" * 3000),
            item("Long guid", GOOD_DATE, "g" * 513),
        )
    )
    settings = _feed_settings(ingest_settings, hostile, "/fields")
    outcome = run_cycle(settings, candles=False, label=False).sources[0]
    assert outcome.ok and outcome.stored == 1
    assert outcome.rejected == {
        "title_too_long": 1,
        "summary_too_long": 1,
        "link_too_long": 1,
        "guid_too_long": 1,
    }
    assert _metric("hsig_ingest_errors_total", source=outcome.source, reason="title_too_long") == 1
    with session_scope(settings.resolved_database_url) as session:
        (stored,) = session.scalars(select(Headline)).all()
        assert (stored.title, stored.guid, stored.summary) == ("A fine headline", "ok", "a short summary")
        PredictItem(headline=stored.title, published_at=stored.published_at)  # inference would accept it


# --- item 1: validation of times at the door ----------------------------------------------


def test_implausible_and_naive_dates_are_rejected_at_the_door(
    ingest_settings: IngestSettings, hostile: HostileServer
) -> None:
    future = datetime.now(UTC) + timedelta(days=2)
    hostile.routes["/dates"] = Reply(
        rss(
            item("Good", GOOD_DATE, "good"),
            item("Year one", "Mon, 01 Jan 0001 00:00:00 GMT", "y1"),
            item("Year 1900", "Mon, 01 Jan 1900 00:00:00 GMT", "y1900"),
            item("Year 1969", "Wed, 31 Dec 1969 23:00:00 GMT", "y1969"),
            item("Future", rfc822(future), "future"),
            item("Naive", "Tue, 23 Jul 2019 21:39:00", "naive"),
            item("Naive ISO", "2019-07-23T21:39:00", "naive-iso"),
            item("With offset", "Tue, 23 Jul 2019 17:39:00 -0400", "offset"),
        )
    )
    settings = _feed_settings(ingest_settings, hostile, "/dates")
    outcome = run_cycle(settings, candles=False, label=False).sources[0]
    assert outcome.ok and outcome.stored == 2
    # feedparser cannot read the naive RFC 822 date at all (missing); it reads the naive ISO one as UTC
    assert outcome.rejected == {
        "early_pubdate": 3,
        "future_pubdate": 1,
        "naive_pubdate": 1,
        "missing_pubdate": 1,
    }
    with session_scope(settings.resolved_database_url) as session:
        times = sorted(session.scalars(select(Headline.published_at)).all())
    assert times == [datetime(2019, 7, 23, 21, 39, tzinfo=UTC)] * 2  # "Good" and "With offset"


# --- item 1: quarantine, not poison ---------------------------------------------------------


def _good_candles(hours: int = 6) -> list[Candle]:
    return [
        Candle(
            exchange="coinbaseexchange",
            symbol="BTC/USD",
            timeframe="1h",
            open_time=T0 + timedelta(hours=h),
            open=100.0 + h,
            high=102.0 + h,
            low=99.0 + h,
            close=101.0 + h,
            volume=5.0,
        )
        for h in range(hours)
    ]


def _headline(title: str, published: datetime) -> Headline:
    return Headline(
        source="old",
        guid=title,
        title=title,
        title_key=title.lower(),
        published_at=published,
        payload_sha256="0" * 64,
    )


def test_rows_stored_before_validation_are_quarantined_and_the_rest_labelled(
    ingest_settings: IngestSettings,
) -> None:
    settings = ingest_settings.model_copy(update={"exchange": "coinbaseexchange", "symbol": "BTC/USD"})
    url = settings.resolved_database_url
    candles = _good_candles(12)
    candles[7].open = 0.0  # zero price
    candles[7].low = 0.0
    candles[9].close = -2.0  # negative price (a return of -2.01 before)
    candles[9].low = -3.0
    candles[10].high = 50.0  # high below open and close
    with session_scope(url) as session:
        session.add_all(candles)
        session.add(
            Candle(
                exchange="coinbaseexchange",
                symbol="BTC/USD",
                timeframe="1h",
                open_time=T0 + timedelta(hours=12, minutes=30),  # off the grid
                open=1,
                high=2,
                low=0.5,
                close=1.5,
                volume=1,
            )
        )
        session.add_all(
            [
                _headline("year one", datetime(1, 1, 1, tzinfo=UTC)),
                _headline("year 1900", datetime(1900, 1, 1, tzinfo=UTC)),
                _headline("year 1969", datetime(1969, 12, 31, 23, tzinfo=UTC)),
                _headline("far future", datetime(2999, 1, 1, tzinfo=UTC)),
                *(_headline(f"good {h}", T0 + timedelta(hours=h, minutes=15)) for h in range(1, 6)),
                _headline("no candle after it yet", T0 + timedelta(hours=11, minutes=15)),
                _headline("entry candle is zero", T0 + timedelta(hours=6, minutes=15)),
            ]
        )
    before = _metric("hsig_ingest_quarantined_total", kind="headline", reason="early_pubdate")
    first = run_cycle(settings, feeds=False, candles=False).sources[0]
    assert first.ok, first  # one bad row no longer stops the pass (ValueError: year 0 before)
    assert first.stored == 5  # good 1..5 (exit candles 2..6 are fine)
    assert first.detail["quarantined"] == {
        "headlines": {"early_pubdate": 3, "future_pubdate": 1},
        "candles": {"bad_price": 2, "inconsistent_range": 1, "off_grid": 1},
    }
    assert _metric("hsig_ingest_quarantined_total", kind="headline", reason="early_pubdate") == before + 3
    with session_scope(url) as session:
        rows = session.scalars(select(LabelledRow)).all()
        assert sorted(row.headline_id for row in rows) == sorted(
            session.scalars(select(Headline.id).where(Headline.title.like("good %"))).all()
        )
        assert all(-1 < row.return_ < 1 for row in rows)
        quarantined = dict(
            session.execute(
                select(Headline.title, Headline.quarantine_reason).where(
                    Headline.quarantine_reason.is_not(None)
                )
            ).all()
        )
        assert quarantined == {
            "year one": "early_pubdate",
            "year 1900": "early_pubdate",
            "year 1969": "early_pubdate",
            "far future": "future_pubdate",
        }
        waiting = session.scalars(select(Headline).where(Headline.title == "entry candle is zero")).one()
        assert waiting.quarantine_reason is None  # its entry candle is missing: it waits, like in a gap
    second = run_cycle(settings, feeds=False, candles=False).sources[0]
    assert second.ok and second.stored == 0 and "quarantined" not in second.detail  # marked once

    with TestClient(build_app(settings)) as client:
        stats = client.get("/v1/stats").json()
    assert stats["quarantined"] == {
        "headlines": {"early_pubdate": 3, "future_pubdate": 1},
        "candles": {"bad_price": 2, "inconsistent_range": 1, "off_grid": 1},
    }


def test_a_fresh_valid_candle_lifts_its_quarantine(ingest_settings: IngestSettings) -> None:
    settings = ingest_settings.model_copy(update={"exchange": "coinbaseexchange", "symbol": "BTC/USD"})
    url = settings.resolved_database_url
    candles = _good_candles(3)
    candles[1].open, candles[1].low = 0.0, 0.0
    with session_scope(url) as session:
        session.add_all(candles)
        session.add(_headline("enters at candle 1", T0 + timedelta(minutes=30)))
    first = run_cycle(settings, feeds=False, candles=False).sources[0]
    assert first.stored == 0 and first.detail["quarantined"]["candles"] == {"bad_price": 1}
    fixed = CandleFrame(
        *(
            np.array([value])
            for value in (int((T0 + timedelta(hours=1)).timestamp()), 101.0, 103.0, 100.0, 102.0, 5.0)
        )
    )
    with session_scope(url) as session:  # the exchange's corrected copy, through the pull's path
        upsert_candles(session, "coinbaseexchange", "BTC/USD", "1h", fixed)
    with session_scope(url) as session:
        assert session.scalars(select(Candle.quarantine_reason)).all() == [None] * 3
    assert run_cycle(settings, feeds=False, candles=False).sources[0].stored == 1


# --- item 6 and item 1: garbage and bad candles from the exchange ---------------------------


def _rows(hours: range, **override: tuple[object, ...]) -> list[tuple[object, ...]]:
    rows = {
        h: (int((T0 + timedelta(hours=h)).timestamp()), 100.0 + h, 102.0 + h, 99.0 + h, 101.0 + h, 5.0)
        for h in hours
    }
    for key, row in override.items():
        rows[int(key.removeprefix("h"))] = row
    return list(rows.values())


def _candle_settings(settings: IngestSettings, server: HostileServer, **update: object) -> IngestSettings:
    return settings.model_copy(
        update={
            "exchange": "coinbaseexchange",
            "symbol": "BTC/USD",
            "timeframe": "1h",
            "exchange_api_url": server.url,
            "candle_since": T0,
            "rate_limit_ms": 0,
            "http_timeout_seconds": 2.0,
            **update,
        }
    )


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"<html><body>Bad gateway, but 200</body></html>", "malformed_reply"),
        (b"not json at all", "malformed_reply"),
        (b'{"candles": [[1704067200, 1, 2, 1, 1, 1]]}', "empty_reply"),  # wrong shape: nothing read
        (b"[1, 2, 3]", "malformed_reply"),  # a list, but not of candles
        (b"[]", "empty_reply"),
        (b'[["x", "y"]]', "malformed_reply"),  # rows ccxt cannot read
        (b"[[1704067200, 0, 0, 0, 0, 0]]", "empty_reply"),  # every candle refused: nothing usable
    ],
)
def test_garbage_from_the_exchange_is_an_error_not_a_success(
    ingest_settings: IngestSettings, hostile: HostileServer, body: bytes, reason: str
) -> None:
    hostile.routes.update(exchange_routes(body))
    settings = _candle_settings(ingest_settings, hostile)
    source = candle_source("coinbaseexchange", "BTC/USD", "1h")
    before = _metric("hsig_ingest_errors_total", source=source, reason=reason)
    outcome = run_cycle(settings, now=NOW, feeds=False, label=False).sources[0]
    assert not outcome.ok and outcome.reason == reason, outcome
    state = _state(settings, source)
    assert state is not None and state.last_success_at is None  # the stale-source alert can fire
    assert reason in (state.last_error or "")
    assert _metric("hsig_ingest_errors_total", source=source, reason=reason) == before + 1
    assert _count(settings, Candle) == 0


def test_after_garbage_last_success_stays_where_the_last_good_pull_left_it(
    ingest_settings: IngestSettings, hostile: HostileServer
) -> None:
    hostile.routes.update(exchange_routes(coinbase_rows(_rows(range(4)))))
    settings = _candle_settings(ingest_settings, hostile)
    source = candle_source("coinbaseexchange", "BTC/USD", "1h")
    assert run_cycle(settings, now=T0 + timedelta(hours=3, minutes=5), feeds=False, label=False).sources[0].ok
    good = _state(settings, source)
    assert good is not None and good.last_success_at is not None
    hostile.routes[CANDLES_PATH] = Reply(b"<html>maintenance</html>", headers={"Content-Type": "text/html"})
    outcome = run_cycle(settings, now=NOW, feeds=False, label=False).sources[0]
    assert not outcome.ok and outcome.reason == "malformed_reply"
    state = _state(settings, source)
    assert state is not None and state.last_success_at == good.last_success_at and state.last_error


def test_bad_candles_are_rejected_and_the_good_ones_in_the_same_reply_kept(
    ingest_settings: IngestSettings, hostile: HostileServer
) -> None:
    t = lambda h: int((T0 + timedelta(hours=h)).timestamp())  # noqa: E731
    hostile.routes.update(
        exchange_routes(
            coinbase_rows(
                [
                    *_rows(
                        range(12),
                        h1=(t(1), 0.0, 0.0, 0.0, 0.0, 1.0),  # zero price
                        h2=(t(2), -5.0, 1.0, -6.0, 0.5, 1.0),  # negative
                        h3=(t(3), "NaN", 105.0, 100.0, 103.0, 1.0),  # NaN: the whole reply was lost
                        h4=(t(4), None, 106.0, 101.0, 104.0, 1.0),  # null: failed every pull at this candle
                        h5=(t(5), 105.0, 104.0, 103.0, 105.5, 1.0),  # high below close
                        h6=(t(6), 1e15, 2e15, 1e15, 1e15, 1.0),  # absurd
                        h7=(t(7), 107.0, 109.0, 106.0, 108.0, -1.0),  # negative volume
                        h8=(t(8) + 1800, 107.0, 109.0, 106.0, 108.0, 1.0),  # off the grid
                    ),
                    (t(40), 100.0, 101.0, 99.0, 100.5, 1.0),  # from the future
                ]
            )
        )
    )
    settings = _candle_settings(ingest_settings, hostile)
    now = T0 + timedelta(hours=12, minutes=10)
    first = run_cycle(settings, now=now, feeds=False, label=False).sources[0]
    assert first.ok, first
    assert first.rejected == {
        "bad_price": 5,
        "inconsistent_range": 1,
        "bad_volume": 1,
        "off_grid": 1,
        "future_candle": 1,
    }
    with session_scope(settings.resolved_database_url) as session:
        stored = sorted(int(c.open_time.timestamp()) for c in session.scalars(select(Candle)))
    assert stored == [t(h) for h in (0, 9, 10, 11)]
    # The null candle no longer fails every later pull at the same place.
    again = run_cycle(settings, now=now + timedelta(hours=1), feeds=False, label=False).sources[0]
    assert again.reason == "empty_reply"  # nothing new after candle 11: stale, not a TypeError


# --- item 9: credentials in feed URLs -------------------------------------------------------


SECRETS = ("hunter2", "SECRETKEY", "TOKENVALUE", "KEYVALUE", "s3cr3t")


def test_credentials_never_reach_stats_summaries_logs_or_source_state(
    ingest_settings: IngestSettings, hostile: HostileServer, caplog: pytest.LogCaptureFixture
) -> None:
    hostile.routes.update(exchange_routes(b"boom", status=500))
    base = hostile.url.replace("http://", "")
    feeds = [
        f"http://alice:hunter2@{base}/missing?apikey=SECRETKEY&page=1",
        f"http://{base}/missing?token=TOKENVALUE",
        f"http://{base}/drip?key=KEYVALUE",
    ]
    hostile.routes["/drip"] = Reply(drip(), pause=0.05)
    settings = _candle_settings(
        ingest_settings,
        hostile,
        feed_urls=feeds,
        exchange_api_url=f"http://bob:s3cr3t@{base}",
        feed_deadline_seconds=0.3,
    )
    caplog.set_level(logging.DEBUG)
    report = run_cycle(settings, now=NOW, label=False)
    assert [source.ok for source in report.sources] == [False] * 4
    summary = str(report.summary())
    with TestClient(build_app(settings)) as client:
        stats = client.get("/v1/stats").text
    with session_scope(settings.resolved_database_url) as session:
        recorded = " ".join(f"{s.source} {s.last_error}" for s in session.scalars(select(SourceState)))
    # ours: third-party debug loggers (ccxt at DEBUG, httpx at INFO) are set to WARNING by
    # configure_logging and still print whole URLs when turned up
    logs = " ".join(record.getMessage() for record in caplog.records if record.name.startswith("services"))
    for where, text in {"summary": summary, "stats": stats, "source_state": recorded, "logs": logs}.items():
        for secret in SECRETS:
            assert secret not in text, f"{secret} in {where}"
    assert "***" in stats and "http_404" in stats
    assert feed_source(feeds[1]).startswith(f"rss:http://{base}/missing?token=***#")


def test_redact_url_and_text() -> None:
    assert (
        redact_url("https://u:p@h:8/f?apikey=1&page=2&access_token=3")
        == "https://***@h:8/f?apikey=***&page=2&access_token=***"
    )
    assert redact_url("https://h/rss.html") == "https://h/rss.html"
    assert (
        redact_url("http://h/?Key=x&x-api-key=y&client_secret=z")
        == "http://h/?Key=***&x-api-key=***&client_secret=***"
    )
    assert redact_text("GET http://a:b@h/x?token=t: 500.") == "GET http://***@h/x?token=***: 500."
    assert redact_text(None) is None and redact_text("no url here") == "no url here"
