"""Backfills from files: headline CSVs and JSON lines, and candle files (``candle_import``), stored idempotently."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from services.common.db import session_scope
from services.common.labelling import timeframe_seconds
from services.ingest import metrics
from services.ingest.candle_import import ImportOptions, import_candle_file
from services.ingest.candles import find_gaps
from services.ingest.csv_import import (
    KAGGLE_CNBC_SOURCE,
    import_headline_csv,
    import_kaggle_cnbc,
)
from services.ingest.cycle import SourceOutcome, candle_source, count_rejects, store_headlines
from services.ingest.headline_import import HeadlineImport
from services.ingest.headlines import ItemLimits
from services.ingest.settings import IngestSettings
from services.ingest.store import insert_gaps, upsert_candles

log = logging.getLogger(__name__)


def backfill_kaggle_cnbc(settings: IngestSettings, path: Path) -> SourceOutcome:
    """The bundled Kaggle CNBC headlines file (US Eastern times) into the headlines table."""
    imported = import_kaggle_cnbc(Path(path), KAGGLE_CNBC_SOURCE, ItemLimits.from_settings(settings))
    return _store_import(settings, KAGGLE_CNBC_SOURCE, imported)


def backfill_headline_csv(
    settings: IngestSettings,
    path: Path,
    title_column: str | None = None,
    time_column: str | None = None,
    timezone: str = "UTC",
    summary_column: str | None = None,
    guid_column: str | None = None,
    time_format: str | None = None,
    source: str | None = None,
    *,
    delimiter: str | None = None,
    encoding: str | None = None,
    dayfirst: bool | None = None,
) -> SourceOutcome:
    """Any headline file (CSV or JSON lines) by column mapping, columns left None found by
    name; naive times are read in ``timezone``. A file that cannot be read as a whole raises
    InvalidInput and stores nothing; rows rejected one by one are counted with their lines."""
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
        delimiter=delimiter,
        encoding=encoding,
        dayfirst=dayfirst,
    )
    return _store_import(settings, source, imported)


def _store_import(settings: IngestSettings, source: str, imported: HeadlineImport) -> SourceOutcome:
    """Store the good rows; the rejects go to the metrics and the summary with their lines."""
    outcome = store_headlines(settings.resolved_database_url, source, imported.records, imported.rejects)
    for reason, count in imported.rejects.counts.items():
        metrics.IMPORT_REJECTED.labels("headline", reason).inc(count)
    outcome.detail.update(imported.summary())
    return outcome


# Layouts only one exchange writes: their prices are that exchange's, whatever name they are
# stored under (labels use the candles of HSIG_EXCHANGE, so a mismatch mixes two markets).
_EXCHANGE_OF_LAYOUT = {"binance": "binance", "kraken": "kraken"}


def _warn_other_exchange(layout: str, exchange: str) -> None:
    own = _EXCHANGE_OF_LAYOUT.get(layout)
    if own and not exchange.startswith(own):
        log.warning(
            "a %s file stored as exchange %r: its prices are %s's; pass --exchange %s to keep them apart",
            layout, exchange, own, own,
        )  # fmt: skip


def backfill_candles_csv(
    settings: IngestSettings,
    path: Path,
    exchange: str,
    symbol: str,
    timeframe: str | None = None,
    options: ImportOptions | None = None,
) -> SourceOutcome:
    """A candle file in any layout ``candle_import`` reads; the timeframe is the file's spacing
    (a ``timeframe`` given must agree). Rows that fail validation are rejected, counted by
    reason (with their first line numbers in ``detail``) and in the metrics; the rest are
    stored in one transaction (an upsert: importing a file twice changes nothing). Gaps are
    recorded, never filled. A file in no known layout raises InvalidInput: nothing stored."""
    imported = import_candle_file(
        Path(path),
        options,
        timeframe,
        now_seconds=time.time(),
        earliest_seconds=settings.earliest_time.timestamp(),
        max_price=settings.max_candle_price,
    )
    frame, timeframe = imported.candles, imported.timeframe
    _warn_other_exchange(imported.layout, exchange)
    gaps = find_gaps(frame.open_time, timeframe_seconds(timeframe))
    source = candle_source(exchange, symbol, timeframe)
    with session_scope(settings.resolved_database_url) as session:
        written = upsert_candles(session, exchange, symbol, timeframe, frame)
        new_gaps = insert_gaps(session, exchange, symbol, timeframe, gaps)
    count_rejects(source, imported.rejects.as_rejects())
    for reason, count in imported.rejects.counts.items():
        metrics.IMPORT_REJECTED.labels("candle", reason).inc(count)
    metrics.CANDLES.labels(source).inc(written)
    detail = {
        "layout": imported.layout,
        "timeframe": timeframe,
        "rows": imported.rows,
        "rejected_lines": imported.rejects.lines,
        "gaps": new_gaps,
    }
    return SourceOutcome(source, True, stored=written, rejected=dict(imported.rejects.counts), detail=detail)
