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


def _empty_row(name: str, kind: str, rows: int) -> dict[str, Any]:
    return {
        "predictor": name,
        "kind": kind,
        "rows": rows,
        "windows": None,
        "accuracy": None,
        "balanced_accuracy": None,
        "mcc": None,
        "share_predicted_increase": None,
        "biased": None,
        "bias_p_value_windows": None,
        "bias_p_value_rows_independent": None,
        "better_than": {},
        "brier": None,
        "cumulative_return": None,
        "sharpe": None,
        "break_even_fee_bps": None,
        "unavailable": None,
        "knowledge_cutoff": None,
        "share_possibly_seen_in_pretraining": None,
        "accuracy_post_cutoff": None,
        "accuracy_pre_cutoff_contaminated": None,
    }


def _cutoff_fields(report: dict[str, Any], name: str) -> dict[str, Any]:
    """A predictor's cutoff and its accuracy on post-cutoff rows and (contaminated) pre-cutoff rows."""
    cutoff = report.get("cutoff") or {}
    model = next((m for m in cutoff.get("models", []) if m["predictor"] == name), None)
    post, pre = cutoff.get("post") or {}, cutoff.get("pre") or {}
    return {
        "knowledge_cutoff": (model["latest"] or model["status"]) if model else "none",
        "share_possibly_seen_in_pretraining": model["share_possibly_seen_in_pretraining"] if model else 0.0,
        "accuracy_post_cutoff": (post.get("accuracy") or {}).get(name),
        "accuracy_pre_cutoff_contaminated": (pre.get("accuracy") or {}).get(name),
    }


def summary_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per predictor and buy-and-hold. ``biased`` and ``better_than`` are the
    window-aware verdicts (``report["verdicts"]``); the rows-as-independent p-value is beside."""
    comparisons = report.get("verdicts", {}).get("comparisons", [])
    out = []
    for p in report["predictors"]:
        row = _empty_row(p["name"], p["kind"], report["data"]["rows"])
        if p.get("unavailable") or p["metrics"] is None:
            row["unavailable"] = p.get("unavailable") or "no predictions"
            out.append(row)
            continue
        metrics = p["metrics"]
        c, calibration, strategy, bias = (
            metrics["classification"], metrics["calibration"], metrics["strategy"], metrics["bias"]
        )  # fmt: skip
        sweep = metrics.get("fee_sweep")
        row.update(
            {
                "rows": c["rows"],
                "windows": metrics["windows"],
                "accuracy": c["accuracy"],
                "balanced_accuracy": c["balanced_accuracy"],
                "mcc": c["mcc"],
                "share_predicted_increase": bias["share_predicted_increase"],
                "biased": bias["biased"],
                "bias_p_value_windows": bias["p_value_windows"],
                "bias_p_value_rows_independent": bias["p_value_rows_independent"],
                "better_than": {
                    v["baseline"]: {
                        "better": v["better"],
                        "difference": v.get("difference"),
                        "interval": v.get("interval"),
                        "windows": v["windows"],
                        "unavailable": v.get("unavailable"),
                    }
                    for v in comparisons
                    if v["model"] == p["name"]
                },
                "brier": calibration["brier"] if calibration else None,
                "cumulative_return": strategy["cumulative_return"],
                "sharpe": strategy["sharpe"],
                "break_even_fee_bps": sweep["break_even_bps"]["compounded"] if sweep else None,
                **_cutoff_fields(report, p["name"]),
            }
        )
        out.append(row)
    bh = report["buy_and_hold"]
    row = _empty_row("buy_and_hold", "benchmark", report["data"]["rows"])
    row.update({"biased": False, "cumulative_return": bh["cumulative_return"], "sharpe": bh["sharpe"]})
    out.append(row)
    return out


def _verdict_word(value: bool | None) -> str:
    return "-" if value is None else ("YES" if value else "no")


def summary_table(summary: list[dict[str, Any]]) -> str:
    """A fixed-width text table for the terminal and the demo, then the window-aware verdicts."""

    def cell(value: Any, kind: str = "f") -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        return f"{100 * value:+.1f}%" if kind == "%" else f"{value:.3f}"

    header = (
        f"{'predictor':<24}{'rows':>6}{'windows':>8}{'acc':>7}{'bal.acc':>8}{'MCC':>7}{'pred.Inc':>9}"
        f"{'biased':>7}{'p(win)':>7}{'p(rows)':>8}{'Brier':>7}{'return':>9}{'Sharpe':>8}{'BE fee':>8}"
    )

    def p_cell(value: float | None) -> str:
        if value is None:
            return "-"
        return f"{value:.3f}" if value >= 0.001 else f"{value:.0e}"

    lines = [header, "-" * len(header)]
    for s in summary:
        if s.get("unavailable"):
            lines.append(f"{s['predictor'][:23]:<24}unavailable: {s['unavailable']}")
            continue
        predicted = (
            "-" if s["share_predicted_increase"] is None else f"{100 * s['share_predicted_increase']:.0f}%"
        )
        windows = "-" if s.get("windows") is None else str(s["windows"])
        fee = "-" if s.get("break_even_fee_bps") is None else f"{s['break_even_fee_bps']:.1f}"
        sharpe = "-" if s["sharpe"] is None else f"{s['sharpe']:.2f}"
        lines.append(
            f"{s['predictor'][:23]:<24}{s['rows']:>6}{windows:>8}{cell(s['accuracy']):>7}"
            f"{cell(s['balanced_accuracy']):>8}{cell(s['mcc']):>7}{predicted:>9}"
            f"{_verdict_word(s['biased']):>7}{p_cell(s.get('bias_p_value_windows')):>7}"
            f"{p_cell(s.get('bias_p_value_rows_independent')):>8}{cell(s['brier']):>7}"
            f"{cell(s['cumulative_return'], '%'):>9}{sharpe:>8}{fee:>8}"
        )
    lines.append(
        "biased: block bootstrap over label windows (p(win)); p(rows): binomial with rows taken as "
        "independent, not a verdict. BE fee: break-even fee in bps."
    )
    verdicts = [(s["predictor"], b, v) for s in summary for b, v in (s.get("better_than") or {}).items()]
    if verdicts:
        lines += ["", "model better than baseline? paired accuracy difference, block bootstrap over windows"]
        for model, baseline, v in verdicts:
            if v.get("unavailable") or v.get("interval") is None:
                lines.append(f"  {model} vs {baseline}: - ({v.get('unavailable') or 'no interval'})")
                continue
            low, high = v["interval"]
            lines.append(
                f"  {model} vs {baseline}: {100 * v['difference']:+.1f} pts "
                f"[{100 * low:+.1f}, {100 * high:+.1f}] ({v['windows']} windows): {_verdict_word(v['better'])}"
            )
    return "\n".join(lines)


def _comparison_text(v: dict[str, Any] | None) -> str:
    if v is None:
        return "-"
    if v.get("unavailable") or v.get("interval") is None:
        return f"- ({v.get('unavailable') or 'no interval'})"
    low, high = v["interval"]
    return (
        f"{100 * v['difference']:+.1f} pts [{100 * low:+.1f}, {100 * high:+.1f}] {_verdict_word(v['better'])}"
    )


def cutoff_text(report: dict[str, Any]) -> str:
    """The report's first lines: who could have seen what, then the verdicts on post-cutoff rows
    with the pre-cutoff figures beside them, marked contaminated (the same numbers as the JSON)."""
    cutoff = report.get("cutoff")
    if not cutoff:
        return ""
    lines = ["knowledge cutoffs:", *(f"  {line}" for line in cutoff["lines"])]
    post, pre = cutoff.get("post"), cutoff.get("pre")
    unknown = set(cutoff.get("unknown", []))
    where = (
        f"post-cutoff rows ({post['rows']} rows, {post['windows']} windows)"
        if post
        else "post-cutoff rows (none)"
    )
    if unknown:
        where += f"; NOT clean for {', '.join(sorted(unknown))} (cutoff unknown)"
    beside = f" | pre-cutoff ({pre['rows']} rows): CONTAMINATED" if pre else ""
    lines += ["", f"verdicts on {where}{beside}"]
    pre_pairs = {(v["model"], v["baseline"]): v for v in (pre["verdicts"]["comparisons"] if pre else [])}
    names = [p["name"] for p in report["predictors"]]
    for name in names:
        post_acc = (post or {}).get("accuracy", {}).get(name)
        pre_acc = (pre or {}).get("accuracy", {}).get(name)
        mark = " (cutoff unknown: possibly seen)" if name in unknown else ""
        accuracy = "-" if post_acc is None else f"{100 * post_acc:.1f}%"
        lines.append(
            f"  {name}{mark}: accuracy {accuracy}"
            + (f" | contaminated: {100 * pre_acc:.1f}%" if pre_acc is not None else "")
        )
    for v in post["verdicts"]["comparisons"] if post else []:
        key = (v["model"], v["baseline"])
        side = f" | contaminated: {_comparison_text(pre_pairs.get(key))}" if pre else ""
        mark = " (cutoff unknown: possibly seen)" if v["model"] in unknown else ""
        lines.append(f"  {v['model']} vs {v['baseline']}{mark}: {_comparison_text(v)}{side}")
    if not post:
        lines.append("  no post-cutoff rows: no verdict; the pre-cutoff figures beside are contaminated")
        for v in pre_pairs.values():
            lines.append(f"  {v['model']} vs {v['baseline']}: - | contaminated: {_comparison_text(v)}")
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
