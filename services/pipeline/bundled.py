"""The bundled data, ingested the way live data is: for the demo and the end-to-end tests.

RSS snapshots come over HTTP from a local server and through feedparser, the 2017-2020
Coinbase hourly candles come through ccxt's own Coinbase Exchange class from the replay
server, the Kaggle CNBC headlines from their CSV, and every headline is then labelled.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from services.common.db.migrate import upgrade
from services.common.labelling import timeframe_seconds
from services.ingest.backfill import backfill_kaggle_cnbc
from services.ingest.candle_import import import_cryptodatadownload
from services.ingest.cycle import label_pass, pull_market, run_cycle
from services.ingest.settings import IngestSettings
from services.pipeline.replay_server import CoinbaseSeries, FeedSequence, ReplayServer

log = logging.getLogger(__name__)
BUNDLED_CANDLES = "btc_prices/Coinbase_BTCUSD_1h_2017-07-01_2020-07-08.csv"
BUNDLED_HEADLINES = "cnbc_headlines/cnbc_headlines.csv"
BUNDLED_FEEDS = "cnbc_rss"
Progress = Callable[[str], None]


FEED_PATH = "/rss/cnbc-finance"


def bundled_replay_server(
    data_dir: Path = Path("data"), port: int = 0
) -> tuple[ReplayServer, datetime, datetime]:
    """A (not yet started) local server with the bundled feeds and hourly candles.

    Returns the server, the first candle's open time and the server's clock ("now"), which sits
    inside the hour after the file's last candle: that hour is the "still open" candle ccxt sees.
    """
    candles = import_cryptodatadownload(Path(data_dir) / BUNDLED_CANDLES)
    first = datetime.fromtimestamp(int(candles.open_time[0]), tz=UTC)
    series_end = datetime.fromtimestamp(int(candles.open_time[-1]) + timeframe_seconds("1h"), tz=UTC)
    server_now = series_end + timedelta(minutes=30)
    server = ReplayServer(port=port)
    server.routes.update(CoinbaseSeries(candles, 3600, server_now, product_id="BTC-USD").routes())
    feeds = sorted((Path(data_dir) / BUNDLED_FEEDS).glob("*.xml"))
    server.routes[FEED_PATH] = FeedSequence([path.read_bytes() for path in feeds])
    return server, first, server_now


def ingest_bundled_data(
    settings: IngestSettings, data_dir: Path = Path("data"), progress: Progress | None = None
) -> dict[str, Any]:
    """Ingest and label the bundled data into ``settings``' database; returns a summary.

    Uses exchange ``coinbaseexchange``, symbol BTC/USD, timeframe 1h (the bundled file's).
    Idempotent: a second call stores nothing new.
    """
    say = progress or (lambda message: log.info("%s", message))
    data_dir = Path(data_dir)
    upgrade(settings.resolved_database_url)
    feeds = sorted((data_dir / BUNDLED_FEEDS).glob("*.xml"))
    summary: dict[str, Any] = {}
    server, first, server_now = bundled_replay_server(data_dir)
    with server:
        local = settings.model_copy(
            update={
                "exchange": "coinbaseexchange",
                "symbol": "BTC/USD",
                "timeframe": "1h",
                "exchange_api_url": server.url,
                "rate_limit_ms": 5,  # our own loopback server: Coinbase's 100 ms pause buys nothing
                "candle_since": first,
                "feed_urls": [f"cnbc-finance-snapshots={server.url}{FEED_PATH}"],
            }
        )
        summary["feeds"] = []
        for snapshot in feeds:  # one poll per saved snapshot, in order: the overlap is stored once
            polled = run_cycle(local, candles=False, label=False).sources[0]
            say(f"feed snapshot {snapshot.name}: {_brief(polled)}")
            summary["feeds"].append(vars(polled))
        say(f"candles: pulling the bundled hourly candles through ccxt from {server.url} ...")
        pulled = pull_market(
            local,
            now=server_now,
            progress=lambda pages, rows: pages % 20 == 0 and say(f"  page {pages}: {rows} candles"),
        )
        say(f"candles: {_brief(pulled)}")
        summary["candles"] = vars(pulled)
    headlines = backfill_kaggle_cnbc(local, data_dir / BUNDLED_HEADLINES)
    say(f"CSV headlines: {_brief(headlines)}")
    summary["csv_headlines"] = vars(headlines)
    labelled = label_pass(local)
    for outcome in labelled:
        say(f"labels {outcome.source}: {outcome.stored} new, {outcome.detail}")
    summary["labels"] = [vars(outcome) for outcome in labelled]
    return summary


def _brief(outcome: Any) -> str:
    if not outcome.ok:
        return f"FAILED ({outcome.reason}): {outcome.error}"
    parts = [f"{outcome.stored} new"]
    if outcome.duplicates:
        parts.append(f"{outcome.duplicates} already stored")
    if outcome.rejected:
        parts.append(f"rejected {outcome.rejected}")
    parts.extend(f"{key} {value}" for key, value in outcome.detail.items())
    return ", ".join(parts)
