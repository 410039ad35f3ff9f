"""Issue 11 item 4: candle pulls at the present do not page through empty ranges every cycle.

ccxt's own coinbaseexchange class against the local replay server, whose series ends long
before "now" (a delisted market, a replay of old data); the requests are counted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from services.common.db import session_scope
from services.common.db.migrate import upgrade
from services.common.db.models import Candle, SourceState
from services.common.errors import OperationalError
from services.ingest.cycle import candle_source, pull_market
from services.ingest.settings import IngestSettings
from services.pipeline.replay_server import CoinbaseSeries, ReplayServer, generated_series
from tests.ingest.conftest import T0

H = 3600
CANDLES = 50
DATA_END = T0 + timedelta(hours=CANDLES)  # the series' last candle closes here
NOW = DATA_END + timedelta(days=60, minutes=20)  # 1,440 empty hours: 5 pages of 300


def _candle_requests(server: ReplayServer) -> int:
    return sum(path.endswith("/candles") for path in server.requests)


def test_a_cycle_at_the_present_asks_once(ingest_settings: IngestSettings) -> None:
    series = generated_series(T0, CANDLES, H)
    with ReplayServer(CoinbaseSeries(series, H, NOW).routes()) as server:
        settings = ingest_settings.model_copy(
            update={"exchange_api_url": server.url, "candle_since": T0, "rate_limit_ms": 1}
        )
        url = settings.resolved_database_url
        upgrade(url)
        source = candle_source(settings.exchange, settings.symbol, settings.timeframe)

        first = pull_market(settings, NOW)
        backfill_requests = _candle_requests(server)
        assert first.stored == CANDLES
        assert backfill_requests == 1 + 5  # the data, then each empty window once
        with session_scope(url) as session:
            state = session.get(SourceState, source)
            assert state is not None and state.cursor == datetime(2024, 3, 3, 2, tzinfo=UTC)  # NOW's hour

        # Ten minutes later: one request from the last stored candle, empty: stop there.
        later = pull_market(settings, NOW + timedelta(minutes=10))
        assert later.ok and later.stored == 0 and later.detail["pages"] == 1
        assert _candle_requests(server) == backfill_requests + 1

        # A day later: the known-empty range once, then only the new day, where candles should
        # have closed and none did: a stale market is an error (empty_reply), in two requests.
        with pytest.raises(OperationalError) as caught:
            pull_market(settings, NOW + timedelta(days=1))
        assert caught.value.param == "empty_reply"
        assert _candle_requests(server) == backfill_requests + 3
        with session_scope(url) as session:
            state = session.get(SourceState, source)
            assert state is not None and state.cursor == datetime(2024, 3, 4, 2, tzinfo=UTC)

    with session_scope(url) as session:
        assert session.scalar(select(func.count()).select_from(Candle)) == CANDLES


def test_late_candles_inside_the_known_empty_range_are_still_fetched(
    ingest_settings: IngestSettings,
) -> None:
    """The range up to the known end is asked again from the last stored candle each cycle:
    candles the exchange publishes late there are caught (then the pull jumps on)."""
    series = generated_series(T0, CANDLES + 3, H)
    short = generated_series(T0, CANDLES, H)
    settings_update = {"candle_since": T0, "rate_limit_ms": 1}
    with ReplayServer(CoinbaseSeries(short, H, NOW).routes()) as server:
        settings = ingest_settings.model_copy(update={**settings_update, "exchange_api_url": server.url})
        upgrade(settings.resolved_database_url)
        pull_market(settings, NOW)
    with ReplayServer(CoinbaseSeries(series, H, NOW).routes()) as server:
        settings = settings.model_copy(update={"exchange_api_url": server.url})
        late = pull_market(settings, NOW + timedelta(minutes=10))
        assert late.stored == 3 and late.detail["pages"] == 1
        assert _candle_requests(server) == 1
