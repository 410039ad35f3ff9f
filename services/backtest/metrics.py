"""Prometheus metrics of the backtest service (hsig_backtest_*), set after every report."""

from __future__ import annotations

import math
from typing import Any

from prometheus_client import Counter, Gauge

ACCURACY = Gauge("hsig_backtest_accuracy", "Accuracy of the last report, by predictor.", ["predictor"])
BALANCED_ACCURACY = Gauge(
    "hsig_backtest_balanced_accuracy", "Balanced accuracy of the last report, by predictor.", ["predictor"]
)
SHARE_PREDICTED_INCREASE = Gauge(
    "hsig_backtest_share_predicted_increase",
    "Share of rows predicted Increase in the last report.",
    ["predictor"],
)
BIASED = Gauge("hsig_backtest_biased", "1 when the last report flagged the predictor's bias.", ["predictor"])
SHARPE = Gauge(
    "hsig_backtest_sharpe", "Annualised Sharpe of the predictor's strategy, last report.", ["predictor"]
)
CUMULATIVE_RETURN = Gauge(
    "hsig_backtest_cumulative_return", "Cumulative return after fees, last report.", ["predictor"]
)
LAST_REPORT = Gauge("hsig_backtest_last_report_timestamp_seconds", "Unix time the last report was written.")
RUNS = Counter(
    "hsig_backtest_runs_total", "Backtest run attempts, by trigger and outcome.", ["trigger", "outcome"]
)
SCHEDULED_SKIPPED = Counter(
    "hsig_backtest_scheduled_skipped_total",
    "Work this replica skipped because another replica had claimed it: a rolling-backtest cron fire"
    " (job=rolling) or a run's attempt (job=run).",
    ["job"],
)

PREDICTED_ITEMS = Counter(
    "hsig_backtest_predicted_items_total",
    "Rows scored by the inference service for backtests and walk-forward folds, by predictor.",
    ["predictor"],
)
PREDICTED_ITEMS_PER_SECOND = Gauge(
    "hsig_backtest_predicted_items_per_second",
    "Rows per second the inference service scored in the predictor's current (or last) pass.",
    ["predictor"],
)


def _set(gauge: Gauge, predictor: str, value: Any) -> None:
    if value is not None and not (isinstance(value, float) and math.isnan(value)):
        gauge.labels(predictor).set(float(value))


def publish(summary: list[dict[str, Any]], written_at: float) -> None:
    """Show the last report only: predictors it did not score disappear from the gauges."""
    for gauge in (ACCURACY, BALANCED_ACCURACY, SHARE_PREDICTED_INCREASE, BIASED, SHARPE, CUMULATIVE_RETURN):
        gauge.clear()
    for row in summary:
        name = row["predictor"]
        _set(ACCURACY, name, row["accuracy"])
        _set(BALANCED_ACCURACY, name, row["balanced_accuracy"])
        _set(SHARE_PREDICTED_INCREASE, name, row["share_predicted_increase"])
        # No verdict (too few label windows, no bootstrap, an unavailable predictor): no sample,
        # rather than a 0 that would read as "not biased".
        biased = row.get("biased")
        _set(BIASED, name, None if biased is None else float(bool(biased)))
        _set(SHARPE, name, row["sharpe"])
        _set(CUMULATIVE_RETURN, name, row["cumulative_return"])
    LAST_REPORT.set(written_at)
