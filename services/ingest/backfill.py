"""Backfills from files: headline CSVs and CryptoDataDownload candle CSVs, stored idempotently."""

from __future__ import annotations

from pathlib import Path

from services.common.db import session_scope
from services.common.labelling import timeframe_seconds
from services.ingest.candles import find_gaps
from services.ingest.csv_import import (
    KAGGLE_CNBC_SOURCE,
    import_cryptodatadownload,
    import_headline_csv,
    import_kaggle_cnbc,
)
from services.ingest.cycle import SourceOutcome, candle_source, store_headlines
from services.ingest.settings import IngestSettings
from services.ingest.store import insert_gaps, upsert_candles


def backfill_kaggle_cnbc(settings: IngestSettings, path: Path) -> SourceOutcome:
    """The bundled Kaggle CNBC headlines file (US Eastern times) into the headlines table."""
    imported = import_kaggle_cnbc(Path(path), KAGGLE_CNBC_SOURCE)
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
        Path(path), title_column, time_column, source, summary_column, guid_column, timezone, time_format
    )
    return store_headlines(settings.resolved_database_url, source, imported.records, imported.rejects)


def backfill_candles_csv(
    settings: IngestSettings, path: Path, exchange: str, symbol: str, timeframe: str
) -> SourceOutcome:
    """A CryptoDataDownload candle file; gaps in it are recorded, never filled."""
    candles = import_cryptodatadownload(Path(path))
    gaps = find_gaps(candles.open_time, timeframe_seconds(timeframe))
    with session_scope(settings.resolved_database_url) as session:
        written = upsert_candles(session, exchange, symbol, timeframe, candles)
        new_gaps = insert_gaps(session, exchange, symbol, timeframe, gaps)
    return SourceOutcome(
        candle_source(exchange, symbol, timeframe), True, stored=written, detail={"gaps": new_gaps}
    )
