"""The anonymisation ablation: the same rows scored as written and with entity names masked.

A model that has read the future may know what a named company, person or coin did next; one
distracted by names reads them instead of the news (Glasserman and Lin). Scoring the same rows
twice, as written and masked by ``services.backtest.masking``, and taking the paired accuracy
difference (masked minus as written) separates the two readings from the headline's content:
a difference whose window-aware interval excludes 0 says the names move the answers.

The interval is the backtest's own: a block bootstrap over label windows
(``verdicts.compare_to_baselines`` with the masked run as the model and the run as written as
its baseline), so rows sharing a label window move together. Beside it: how many rows changed
their answer, the mean absolute shift of p(Increase), and how many headlines the masker changed
(rows without a name cannot change, and dilute the difference: both figures are given).
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from services.backtest.leakage import guard
from services.backtest.masking import default_masker
from services.backtest.post_cutoff import cutoff_section, predictor_cutoffs, split_rows
from services.backtest.predictors.base import PredictionSet, Predictor
from services.backtest.predictors.factory import build_predictor
from services.backtest.report import write_atomic
from services.backtest.rows import EvalRows
from services.backtest.runner import config_rows
from services.backtest.schemas import BacktestConfig
from services.backtest.settings import BacktestSettings
from services.backtest.verdicts import Sample, Scored, compare_to_baselines
from services.common.errors import InvalidInput

AS_WRITTEN, MASKED = "as written", "masked"


@dataclass(frozen=True)
class ReportFiles:
    json_path: Path
    html_path: Path
    report: dict[str, Any]


def masked_rows(rows: EvalRows) -> tuple[EvalRows, int]:
    """The rows with every headline masked, and how many headlines the masker changed."""
    masked = default_masker().mask_many(rows.headline)
    changed = sum(a != b for a, b in zip(rows.headline, masked, strict=True))
    return replace(rows, headline=masked), changed


def first_rows(rows: EvalRows, limit: int | None) -> EvalRows:
    """The first ``limit`` rows (oldest first), or all of them."""
    if limit is None or limit >= len(rows):
        return rows
    if limit < 1:
        raise InvalidInput("limit must be at least 1", param="limit")
    # Every per-row field (arrays and lists one entry a row), whatever fields EvalRows gains.
    per_row = {
        item.name: getattr(rows, item.name)
        for item in fields(rows)
        if isinstance(getattr(rows, item.name), np.ndarray | list)
        and len(getattr(rows, item.name)) == len(rows)
    }
    arrays = {name: value[:limit] for name, value in per_row.items()}
    return replace(rows, **arrays)


def load_for(settings: BacktestSettings, config: BacktestConfig, limit: int | None) -> EvalRows:
    return first_rows(config_rows(settings, config), limit)


def _model_predictors(settings: BacktestSettings, config: BacktestConfig) -> list[Predictor]:
    predictors = [build_predictor(spec, settings, config.seed, None) for spec in config.predictors]
    blind = [p.name for p in predictors if p.kind == "baseline"]
    if blind:
        raise InvalidInput(
            f"{', '.join(blind)}: baselines never read the headline, so masking cannot change them; "
            "give a model (--local-model, --adapter, --base or --openai-model)",
            param="predictors",
        )
    return predictors


def paired_effect(
    rows: EvalRows, written: PredictionSet, masked: PredictionSet, reps: int, seed: int, alpha: float
) -> dict[str, Any]:
    """Masked minus as-written accuracy on the same rows, with its window-aware interval."""
    windows = rows.windows()
    sample = Sample(windows.row_window, np.zeros(windows.count, dtype=np.int64))
    comparison = compare_to_baselines(
        rows.y_true,
        [Scored(MASKED, "model", masked.y_pred), Scored(AS_WRITTEN, "baseline", written.y_pred)],
        sample,
        reps,
        seed,
        alpha,
    )[0]
    shift = np.abs(masked.p_increase - written.p_increase)
    return {
        "accuracy_as_written": comparison["baseline_accuracy"],
        "accuracy_masked": comparison["model_accuracy"],
        "difference": comparison["difference"],
        "interval": comparison["interval"],
        "p_value_windows": comparison["p_value_windows"],
        "names_matter": None
        if comparison["interval"] is None
        else bool(comparison["better"] or comparison["worse"]),
        "p_value_rows_independent": comparison["p_value_rows_independent"],
        "answers_changed": int(np.sum(masked.y_pred != written.y_pred)),
        "mean_abs_p_increase_shift": float(np.nanmean(shift)) if not np.isnan(shift).all() else None,
        **{key: comparison[key] for key in ("windows", "rows", "level", "reps", "unavailable")},
    }


def build_ablation(
    settings: BacktestSettings, config: BacktestConfig, limit: int | None = None
) -> dict[str, Any]:
    """Score every predictor of ``config`` on its rows as written and masked; the report as a dict."""
    rows = load_for(settings, config, limit)
    predictors = _model_predictors(settings, config)
    overlaps = guard(predictors, rows, config.allow_overlap)
    # What share of the rows each model could have read in pretraining, as a backtest says it.
    cutoff = cutoff_section(
        rows, split_rows(rows, predictor_cutoffs(config.predictors, predictors, settings)), False
    )
    masked, changed = masked_rows(rows)
    reps = settings.bootstrap_reps if config.bootstrap_reps is None else config.bootstrap_reps
    results = []
    for predictor in predictors:
        written_set, masked_set = predictor.predict(rows), predictor.predict(masked)
        effect = paired_effect(rows, written_set, masked_set, reps, config.seed, config.bias_alpha)
        results.append({"predictor": predictor.name, "kind": predictor.kind, **effect})
    return {
        "kind": "anonymisation ablation",
        "title": config.title,
        "created_at": datetime.now(UTC).isoformat(),
        "method": (
            "each row scored as written and with companies, people, tickers and coin names masked "
            "(services/backtest/masking.py); difference = masked minus as-written accuracy on the same "
            "rows; interval: block bootstrap over label windows"
        ),
        "data": {
            "symbol": rows.symbol,
            "horizon": rows.horizon,
            "exchange": rows.exchange,
            "rows": len(rows),
            "first_headline": rows.first_time.isoformat(),
            "last_headline": rows.last_time.isoformat(),
            "headlines_masked": changed,
        },
        "examples": [
            {"as_written": a, "masked": b}
            for a, b in zip(rows.headline, masked.headline, strict=True)
            if a != b
        ][:5],
        "overlaps": [overlap.describe() for overlap in overlaps],
        "cutoff": cutoff,
        "notes": [*cutoff["lines"], *config.notes],
        "results": results,
    }


def results_page(report: dict[str, Any], heading: str, columns: list[tuple[str, str]], intro: str) -> str:
    """A small standalone HTML page: the intro, one table of ``results`` and the notes."""
    head = "".join(f"<th>{html.escape(label)}</th>" for label, _ in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(row.get(key)))}</td>" for _, key in columns) + "</tr>"
        for row in report["results"]
    )
    notes = "".join(f"<li>{html.escape(str(note))}</li>" for note in report.get("notes", []))
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(heading)}</title></head><body>"
        f"<h1>{html.escape(heading)}</h1><p>{html.escape(intro)}</p>"
        f"<table border='1' cellpadding='4'><tr>{head}</tr>{body}</table>"
        f"<ul>{notes}</ul></body></html>"
    )


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, list):
        return "[" + ", ".join(_cell(item) for item in value) + "]"
    return "" if value is None else str(value)


def ablation_html(report: dict[str, Any]) -> str:
    data = report["data"]
    intro = (
        f"{data['rows']} rows from {data['first_headline']} to {data['last_headline']}; the masker changed "
        f"{data['headlines_masked']} headlines. {report['method']}."
    )
    columns = [
        ("predictor", "predictor"), ("accuracy as written", "accuracy_as_written"),
        ("accuracy masked", "accuracy_masked"), ("difference", "difference"), ("interval", "interval"),
        ("label windows", "windows"), ("names matter", "names_matter"), ("answers changed", "answers_changed"),
        ("mean |shift of p(Increase)|", "mean_abs_p_increase_shift"),
    ]  # fmt: skip
    return results_page(report, "Anonymisation ablation", columns, intro)


def write_pair(report: dict[str, Any], directory: Path, stem: str, page: str) -> ReportFiles:
    """JSON and HTML written aside and renamed into place."""
    json_path, html_path = directory / f"{stem}.json", directory / f"{stem}.html"
    write_atomic(html_path, page)
    write_atomic(json_path, json.dumps(report, indent=1, allow_nan=False, default=_plain))
    return ReportFiles(json_path, html_path, report)


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def stem_now(kind: str) -> str:
    return f"{kind}-{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}"


def run_ablation(settings: BacktestSettings, config: BacktestConfig, limit: int | None = None) -> ReportFiles:
    report = finite(build_ablation(settings, config, limit))
    return write_pair(report, settings.reports_path, stem_now("ablation"), ablation_html(report))


def finite(value: Any) -> Any:
    """NaN (an empty class, no probabilities) as null, so the JSON stays strict."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [finite(item) for item in value]
    return value
