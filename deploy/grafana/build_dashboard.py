"""Writes deploy/grafana/dashboards/headline-signal.json (the provisioned dashboard).

The panels are data here, so the JSON is never edited by hand:
    .venv/bin/python deploy/grafana/build_dashboard.py
tests/deploy checks the committed JSON equals this output and that every series a panel
queries is one some service really exports.
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).resolve().parent / "dashboards" / "headline-signal.json"
NOT_BASELINE = 'predictor!~"always_increase|always_decrease|majority|momentum|coin_flip"'

# (row title, [(panel title, unit, [(expr, legend)])])
ROWS: list[tuple[str, list[tuple[str, str, list[tuple[str, str]]]]]] = [
    (
        "Ingest",
        [
            (
                "Items per second by source and outcome",
                "ops",
                [("sum by (source, outcome) (rate(hsig_ingest_items_total[5m]))", "{{source}} {{outcome}}")],
            ),
            (
                "Errors per second by source and reason",
                "ops",
                [("sum by (source, reason) (rate(hsig_ingest_errors_total[5m]))", "{{source}} {{reason}}")],
            ),
            (
                "Staleness: time since last success",
                "s",
                [("time() - hsig_ingest_last_success_timestamp_seconds", "{{source}}")],
            ),
            (
                "Label balance (rows labelled by this process)",
                "short",
                [("sum by (label) (hsig_ingest_labelled_rows_total)", "{{label}}")],
            ),
        ],
    ),
    (
        "Training",
        [
            ("Jobs by state", "short", [("hsig_trainer_jobs", "{{state}}")]),
            (
                "Job duration p50 by method",
                "s",
                [
                    (
                        "histogram_quantile(0.5, sum by (le, method) (rate(hsig_trainer_job_duration_seconds_bucket[6h])))",
                        "{{method}}",
                    )
                ],
            ),
            (
                "Peak memory of the last job",
                "bytes",
                [("hsig_trainer_peak_memory_bytes", "{{method}} {{kind}}")],
            ),
            (
                "Tokens per second and failures",
                "short",
                [
                    ("hsig_trainer_tokens_per_second", "tokens/s {{method}}"),
                    (
                        "sum by (reason) (increase(hsig_trainer_job_failures_total[1h]))",
                        "failures {{reason}}",
                    ),
                ],
            ),
        ],
    ),
    (
        "Inference",
        [
            (
                "Requests per second by adapter",
                "reqps",
                [
                    (
                        "sum by (adapter, endpoint) (rate(hsig_inference_requests_total[5m]))",
                        "{{adapter}} {{endpoint}}",
                    )
                ],
            ),
            (
                "Latency p50 / p99 by adapter",
                "s",
                [
                    (
                        "histogram_quantile(0.5, sum by (le, adapter) (rate(hsig_inference_latency_seconds_bucket[5m])))",
                        "p50 {{adapter}}",
                    ),
                    (
                        "histogram_quantile(0.99, sum by (le, adapter) (rate(hsig_inference_latency_seconds_bucket[5m])))",
                        "p99 {{adapter}}",
                    ),
                ],
            ),
            (
                "Share predicted Increase (live) against actual",
                "percentunit",
                [
                    (
                        'sum by (adapter) (rate(hsig_inference_predicted_labels_total{label="Increase"}[1h]))'
                        " / sum by (adapter) (rate(hsig_inference_predicted_labels_total[1h]))",
                        "predicted {{adapter}}",
                    ),
                    (
                        'sum(hsig_ingest_labelled_rows_total{label="Increase"}) / sum(hsig_ingest_labelled_rows_total)',
                        "actual (labelled rows)",
                    ),
                ],
            ),
            (
                "Mean p(Increase) by adapter",
                "percentunit",
                [("hsig_inference_p_increase_mean", "{{adapter}}")],
            ),
            (
                "Engine: vLLM requests running / waiting",
                "short",
                [
                    ("sum(vllm:num_requests_running)", "running"),
                    ("sum(vllm:num_requests_waiting)", "waiting"),
                ],
            ),
            (
                "Overload: 503s and in-flight",
                "short",
                [
                    ("rate(hsig_inference_rejected_total[5m])", "rejected/s"),
                    ("hsig_inference_in_flight", "in flight"),
                ],
            ),
        ],
    ),
    (
        "Backtest",
        [
            (
                "Accuracy and balanced accuracy by predictor",
                "percentunit",
                [
                    ("hsig_backtest_accuracy", "acc {{predictor}}"),
                    ("hsig_backtest_balanced_accuracy", "bal {{predictor}}"),
                ],
            ),
            (
                "Share predicted Increase by predictor",
                "percentunit",
                [("hsig_backtest_share_predicted_increase", "{{predictor}}")],
            ),
            (
                "Biased (binomial test) by adapter",
                "short",
                [(f"hsig_backtest_biased{{{NOT_BASELINE}}}", "{{predictor}}")],
            ),
            ("Strategy Sharpe by predictor", "short", [("hsig_backtest_sharpe", "{{predictor}}")]),
            (
                "Time since last report",
                "s",
                [("time() - hsig_backtest_last_report_timestamp_seconds", "age")],
            ),
        ],
    ),
]


def _panel(panel_id: int, title: str, unit: str, targets: list[tuple[str, str]], x: int, y: int) -> dict:
    return {
        "id": panel_id,
        "type": "timeseries",
        "title": title,
        "datasource": {"type": "prometheus", "uid": "prometheus"},
        "gridPos": {"h": 8, "w": 12, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [
            {"refId": chr(ord("A") + index), "expr": expr, "legendFormat": legend}
            for index, (expr, legend) in enumerate(targets)
        ],
    }


def build() -> dict:
    panels, panel_id, y = [], 1, 0
    for row_title, row_panels in ROWS:
        panels.append(
            {
                "id": panel_id,
                "type": "row",
                "title": row_title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        panel_id, y = panel_id + 1, y + 1
        for index, (title, unit, targets) in enumerate(row_panels):
            panels.append(_panel(panel_id, title, unit, targets, x=12 * (index % 2), y=y + 8 * (index // 2)))
            panel_id += 1
        y += 8 * ((len(row_panels) + 1) // 2)
    return {
        "uid": "headline-signal",
        "title": "headline-signal: is the signal healthy?",
        "tags": ["headline-signal"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-24h", "to": "now"},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


if __name__ == "__main__":
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(render())
    print(f"wrote {OUT}")
