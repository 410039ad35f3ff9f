"""Assemble the report dict from evaluated predictors and write it as JSON and HTML, atomically."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from services.backtest.predictors.base import PredictionSet
from services.backtest.rows import EvalRows

SHARE_BINS = 20


def share_over_time(
    rows: EvalRows, predictions: list[PredictionSet], bins: int = SHARE_BINS
) -> dict[str, Any]:
    """Share predicted Increase (and actually Increase) in equal-time bins of the window."""
    times = rows.headline_time
    edges = np.linspace(times.min(), times.max() + 1, bins + 1)
    index = np.clip(np.searchsorted(edges, times, side="right") - 1, 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    filled = count > 0

    def shares(values: np.ndarray) -> list[float]:
        return (np.bincount(index, weights=values, minlength=bins)[filled] / count[filled]).tolist()

    middle = ((edges[:-1] + edges[1:]) / 2)[filled]
    return {
        "time": middle.tolist(),
        "rows": count[filled].tolist(),
        "actual": shares(rows.y_true.astype(float)),
        "predicted": {p.name: shares(p.y_pred.astype(float)) for p in predictions},
    }


def summary_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in report["predictors"]:
        metrics = p["metrics"]
        c, calibration, strategy = metrics["classification"], metrics["calibration"], metrics["strategy"]
        out.append(
            {
                "predictor": p["name"],
                "kind": p["kind"],
                "rows": c["rows"],
                "accuracy": c["accuracy"],
                "balanced_accuracy": c["balanced_accuracy"],
                "mcc": c["mcc"],
                "share_predicted_increase": metrics["bias"]["share_predicted_increase"],
                "biased": metrics["bias"]["biased"],
                "brier": calibration["brier"] if calibration else None,
                "cumulative_return": strategy["cumulative_return"],
                "sharpe": strategy["sharpe"],
            }
        )
    bh = report["buy_and_hold"]
    out.append(
        {
            "predictor": "buy_and_hold",
            "kind": "benchmark",
            "rows": report["data"]["rows"],
            "accuracy": None,
            "balanced_accuracy": None,
            "mcc": None,
            "share_predicted_increase": None,
            "biased": False,
            "brier": None,
            "cumulative_return": bh["cumulative_return"],
            "sharpe": bh["sharpe"],
        }
    )
    return out


def summary_table(summary: list[dict[str, Any]]) -> str:
    """A fixed-width text table for the terminal and the demo."""

    def cell(value: Any, kind: str = "f") -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        return f"{100 * value:+.1f}%" if kind == "%" else f"{value:.3f}"

    header = f"{'predictor':<24}{'rows':>6}{'acc':>7}{'bal.acc':>8}{'MCC':>7}{'pred.Inc':>9}{'biased':>7}{'Brier':>7}{'return':>9}{'Sharpe':>8}"
    lines = [header, "-" * len(header)]
    for s in summary:
        predicted = (
            "-" if s["share_predicted_increase"] is None else f"{100 * s['share_predicted_increase']:.0f}%"
        )
        lines.append(
            f"{s['predictor'][:23]:<24}{s['rows']:>6}{cell(s['accuracy']):>7}{cell(s['balanced_accuracy']):>8}"
            f"{cell(s['mcc']):>7}{predicted:>9}{('YES' if s['biased'] else 'no'):>7}{cell(s['brier']):>7}"
            f"{cell(s['cumulative_return'], '%'):>9}{s['sharpe']:>8.2f}"
        )
    return "\n".join(lines)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    raise TypeError(f"cannot serialise {type(value).__name__}")


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {key: _nan_to_none(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(item) for item in value]
    return value


def write_atomic(path: Path, text: str) -> None:
    """Write aside then rename: a reader sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(temporary, 0o644)  # mkstemp makes 0600; reports are for readers on the volume
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_report(report: dict[str, Any], directory: Path, stem: str) -> tuple[Path, Path]:
    from services.backtest.html_report import render_html

    json_path, html_path = directory / f"{stem}.json", directory / f"{stem}.html"
    clean = _nan_to_none(report)
    write_atomic(html_path, render_html(clean))
    write_atomic(json_path, json.dumps(clean, indent=1, default=_json_default, allow_nan=False))
    return json_path, html_path
