"""Backfills from files: headline CSVs and CryptoDataDownload candle CSVs, stored idempotently."""

from __future__ import annotations

import time
from pathlib import Path

from services.common.db import session_scope
from services.common.labelling import timeframe_seconds
from services.ingest.candles import find_gaps, validate_candles
from services.ingest.csv_import import (
    KAGGLE_CNBC_SOURCE,
    import_cryptodatadownload,
    import_headline_csv,
    import_kaggle_cnbc,
)
from services.ingest.cycle import SourceOutcome, candle_source, count_rejects, store_headlines
from services.ingest.headlines import ItemLimits
from services.ingest.settings import IngestSettings
from services.ingest.store import insert_gaps, upsert_candles


def backfill_kaggle_cnbc(settings: IngestSettings, path: Path) -> SourceOutcome:
    """The bundled Kaggle CNBC headlines file (US Eastern times) into the headlines table."""
    imported = import_kaggle_cnbc(Path(path), KAGGLE_CNBC_SOURCE, ItemLimits.from_settings(settings))
    return store_headlines(
        settings.resolved_database_url, KAGGLE_CNBC_SOURCE, imported.records, imported.rejects
    )


def backfill_headline_csv(
    settings: IngestSettings,
    path: Path,
    title_column: str,
    time_column: str,
    timezone: str = "UTC",
    summary_column: str | None = None,
    guid_column: str | None = None,
    time_format: str | None = None,
    source: str | None = None,
) -> SourceOutcome:
    """Any headline CSV by column mapping; naive times are read in ``timezone``."""
    source = source or f"csv:{Path(path).name}"
    imported = import_headline_csv(
        Path(path),
        title_column,
        time_column,
        source,
        summary_column,
        guid_column,
        timezone,
        time_format,
        limits=ItemLimits.from_settings(settings),
    )
    return store_headlines(settings.resolved_database_url, source, imported.records, imported.rejects)


def backfill_candles_csv(
    settings: IngestSettings, path: Path, exchange: str, symbol: str, timeframe: str
) -> SourceOutcome:
    """A CryptoDataDownload candle file; gaps in it are recorded, never filled. Candles that
    fail validation (``candles.validate_candles``; one not closed yet counts as future) are
    rejected and counted, the rest stored."""
    tf = timeframe_seconds(timeframe)
    candles, rejects = validate_candles(
        import_cryptodatadownload(Path(path)),
        tf,
        int(time.time()) - tf,  # only closed candles: one opening after now - timeframe is open
        int(settings.earliest_time.timestamp()),
        settings.max_candle_price,
    )
    gaps = find_gaps(candles.open_time, tf)
    source = candle_source(exchange, symbol, timeframe)
    with session_scope(settings.resolved_database_url) as session:
        written = upsert_candles(session, exchange, symbol, timeframe, candles)
        new_gaps = insert_gaps(session, exchange, symbol, timeframe, gaps)
    count_rejects(source, rejects)
    return SourceOutcome(
        source, True, stored=written, rejected=dict(rejects.counts), detail={"gaps": new_gaps}
    )
