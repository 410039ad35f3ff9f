"""Ingest metrics (Prometheus, default registry), all named ``hsig_ingest_*``."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ITEMS = Counter(
    "hsig_ingest_items_total",
    "Items seen per source: stored (new), duplicate (already stored) or rejected.",
    ["source", "outcome"],
)
ERRORS = Counter(
    "hsig_ingest_errors_total",
    "Failures per source and reason (whole payload or pull refused, or one item rejected).",
    ["source", "reason"],
)
LAST_SUCCESS = Gauge(
    "hsig_ingest_last_success_timestamp_seconds",
    "Unix time of the last successful poll of each source.",
    ["source"],
)
CYCLE_SECONDS = Histogram(
    "hsig_ingest_cycle_duration_seconds",
    "Time one ingest cycle (feeds, candles, labelling) took.",
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
LABELLED = Counter(
    "hsig_ingest_labelled_rows_total",
    "Labelled rows written, by label.",
    ["label"],
)
CANDLES = Counter(
    "hsig_ingest_candles_total",
    "Closed candles written per market source.",
    ["source"],
)
SCHEDULED_SKIPPED = Counter(
    "hsig_ingest_scheduled_skipped_total",
    "Scheduled slots this replica skipped because another replica had claimed them, by job.",
    ["job"],
)
IMPORT_REJECTED = Counter(
    "hsig_ingest_import_rejected_total",
    "Rows of an imported file (hsig ingest backfill-...) rejected, by kind (candle or headline) and reason.",
    ["kind", "reason"],
)
QUARANTINED = Counter(
    "hsig_ingest_quarantined_total",
    "Stored rows the labeller quarantined (marked with a reason and skipped), by kind (headline or"
    " candle) and reason.",
    ["kind", "reason"],
)
