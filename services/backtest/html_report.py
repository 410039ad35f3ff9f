"""One self-contained HTML page from a report dict: tables and inline PNG charts, no links out."""

from __future__ import annotations

import html
import math
from typing import Any

from services.backtest import charts

SECTIONS = (
    "notes",
    "data",
    "leakage",
    "summary",
    "classification",
    "per-class",
    "bias",
    "calibration",
    "strategy",
    "equity",
    "confusion",
    "reliability",
    "share-over-time",
)

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.warn{background:#fff3cd;border:1px solid #e0c36a;padding:0.6em}.flag{color:#b00020;font-weight:bold}
img{max-width:100%}
"""


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def _pct(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{100 * value:.1f}%"


def _interval(pair: list[float] | None) -> str:
    return "–" if not pair else f"[{_fmt(pair[0])}, {_fmt(pair[1])}]"


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{html.escape(title)}</h2>{body}</section>'


def _img(png: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{png}">'


def _notes(report: dict[str, Any]) -> str:
    items = "".join(f"<li>{html.escape(note)}</li>" for note in report["notes"])
    return f'<div class="warn"><ul>{items}</ul></div>' if items else "<p>No notes.</p>"


def _data(report: dict[str, Any]) -> str:
    data = report["data"]
    rows = [[html.escape(key.replace("_", " ")), _fmt(value)] for key, value in data.items()]
    return _table(["", "value"], rows)


def _leakage(report: dict[str, Any]) -> str:
    if not report["leakage"]:
        return "<p>Every adapter's training window (plus embargo) ends before the first scored row.</p>"
    items = "".join(f"<li>{html.escape(item)}</li>" for item in report["leakage"])
    return f'<div class="warn"><b>Overlap allowed: these figures are in-sample.</b><ul>{items}</ul></div>'


def _summary(report: dict[str, Any]) -> str:
    header = [
        "predictor",
        "rows",
        "accuracy",
        "balanced acc.",
        "MCC",
        "predicted Increase",
        "biased",
        "Brier",
        "cum. return",
        "Sharpe",
    ]
    rows = [
        [
            _fmt(s["predictor"]),
            _fmt(s["rows"]),
            _fmt(s["accuracy"]),
            _fmt(s["balanced_accuracy"]),
            _fmt(s["mcc"]),
            _pct(s["share_predicted_increase"]),
            '<span class="flag">yes</span>' if s["biased"] else "no",
            _fmt(s["brier"]),
            _pct(s["cumulative_return"]),
            _fmt(s["sharpe"], 2),
        ]
        for s in report["summary"]
    ]
    return _table(header, rows)


def _classification(report: dict[str, Any]) -> str:
    header = [
        "predictor",
        "accuracy",
        "Wilson 95% (rows)",
        "block bootstrap (windows)",
        "balanced acc.",
        "bootstrap",
        "MCC",
        "bootstrap",
        "macro F1",
    ]
    rows = []
    for p in report["predictors"]:
        c, b = p["metrics"]["classification"], p["metrics"]["bootstrap"]
        rows.append([
            _fmt(p["name"]), _fmt(c["accuracy"]), _interval(c["accuracy_wilson"]), _interval(b.get("accuracy")),
            _fmt(c["balanced_accuracy"]), _interval(b.get("balanced_accuracy")), _fmt(c["mcc"]),
            _interval(b.get("mcc")), _fmt(c["macro_f1"]),
        ])  # fmt: skip
    return _table(header, rows)


def _per_class(report: dict[str, Any]) -> str:
    rows = []
    for p in report["predictors"]:
        for label, figures in p["metrics"]["classification"]["per_class"].items():
            rows.append([_fmt(p["name"]), _fmt(label), _fmt(figures["precision"]), _fmt(figures["recall"]), _fmt(figures["f1"]), _fmt(figures["support"])])  # fmt: skip
    return _table(["predictor", "label", "precision", "recall", "F1", "support"], rows)


def _bias(report: dict[str, Any]) -> str:
    rows = []
    for p in report["predictors"]:
        b = p["metrics"]["bias"]
        flag = f'<span class="flag">biased towards {b["direction"]}</span>' if b["biased"] else "no"
        rows.append(
            [
                _fmt(p["name"]),
                _pct(b["share_predicted_increase"]),
                _pct(b["share_actual_increase"]),
                _fmt(b["p_value"], 4),
                flag,
                _interval(b.get("gap_interval_windows")),
                _fmt(b.get("biased_by_windows")),
            ]
        )
    intro = (
        "<p>Two-sided binomial test of the count predicted Increase against the share that was Increase "
        "(rows taken as independent); and the block-bootstrap interval of the gap (share predicted minus "
        "share actual, resampling label windows): biased by windows when that interval excludes 0.</p>"
    )
    header = ["predictor", "predicted Increase", "actually Increase", "p-value", "flagged"]
    return intro + _table([*header, "gap interval (windows)", "biased by windows"], rows)


def _calibration(report: dict[str, Any]) -> str:
    rows = []
    for p in report["predictors"]:
        c = p["metrics"]["calibration"]
        if c is None:
            rows.append([_fmt(p["name"]), "no probability", "–", "–"])
        else:
            rows.append(
                [
                    _fmt(p["name"]),
                    _fmt(c["brier"]),
                    _fmt(c["log_loss"]),
                    _fmt(c["expected_calibration_error"]),
                ]
            )
    return _table(["predictor", "Brier", "log loss", "ECE"], rows)


def _strategy(report: dict[str, Any]) -> str:
    rows = []
    for p in report["predictors"]:
        s = p["metrics"]["strategy"]
        rows.append([_fmt(p["name"]), _pct(s["cumulative_return"]), _fmt(s["sharpe"], 2), _pct(s["max_drawdown"]), _pct(s["hit_rate"]), _fmt(s["turnover_per_window"]), _fmt(s["windows_traded"])])  # fmt: skip
    bh = report["buy_and_hold"]
    rows.append(
        [
            "<b>buy and hold</b>",
            _pct(bh["cumulative_return"]),
            _fmt(bh["sharpe"], 2),
            _pct(bh["max_drawdown"]),
            "–",
            "–",
            "–",
        ]
    )
    cfg = report["config"]
    intro = (
        f"<p>Long on Increase, {html.escape(str(cfg['decrease_position']))} on Decrease, one position per label "
        f"window (the mean of its rows' signals), fees {_fmt(cfg['fees_bps'], 1)} bps of notional traded. "
        "Sharpe annualised for the horizon, flat periods counted as zero returns.</p>"
    )
    return intro + _table(
        [
            "predictor",
            "cum. return",
            "Sharpe",
            "max drawdown",
            "hit rate",
            "turnover / window",
            "windows traded",
        ],
        rows,
    )


def _charts(report: dict[str, Any]) -> dict[str, str]:
    curves = {p["name"]: p["metrics"]["strategy"]["equity"] for p in report["predictors"]}
    curves["buy_and_hold"] = report["buy_and_hold"]["equity"]
    calibrations = {
        p["name"]: p["metrics"]["calibration"] for p in report["predictors"] if p["metrics"]["calibration"]
    }
    return {
        "equity": _img(charts.equity_chart(curves), "equity curves"),
        "confusion": _img(
            charts.confusion_chart(
                {p["name"]: p["metrics"]["classification"]["confusion"] for p in report["predictors"]}
            ),
            "confusion matrices",
        ),
        "reliability": _img(charts.reliability_chart(calibrations), "reliability diagram")
        if calibrations
        else "<p>No predictor gave probabilities.</p>",
        "share-over-time": _img(
            charts.share_over_time_chart(report["share_over_time"]), "share predicted Increase"
        ),
    }


def render_html(report: dict[str, Any]) -> str:
    images = _charts(report)
    parts = [
        _section("notes", "Read this first", _notes(report)),
        _section("data", "Rows scored", _data(report)),
        _section("leakage", "Leakage guard", _leakage(report)),
        _section("summary", "Summary", _summary(report)),
        _section("classification", "Accuracy with intervals", _classification(report)),
        _section("per-class", "Precision, recall and F1 per label", _per_class(report)),
        _section("bias", "Bias: share predicted Increase", _bias(report)),
        _section("calibration", "Calibration of p(Increase)", _calibration(report)),
        _section("strategy", "Trading the signal", _strategy(report)),
        _section("equity", "Equity curves", images["equity"]),
        _section("confusion", "Confusion matrices", images["confusion"]),
        _section("reliability", "Reliability diagram", images["reliability"]),
        _section("share-over-time", "Share predicted Increase over time", images["share-over-time"]),
    ]
    title = html.escape(report["title"])
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{_STYLE}</style></head><body><h1>{title}</h1>"
        f"<p>Generated {html.escape(report['generated_at'])}; run {_fmt(report.get('run_id'))}.</p>"
        + "".join(parts)
        + "</body></html>"
    )
