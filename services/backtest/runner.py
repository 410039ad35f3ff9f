"""Run one backtest end to end: rows, predictors, leakage guard, metrics, report, run record.

``run_backtest(settings, config)`` is the one entry point the CLI, the HTTP API, the
schedule and the demo share.
"""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from services.backtest import store
from services.backtest.evaluate import EvaluationOptions, evaluate
from services.backtest.leakage import guard
from services.backtest.overfitting import overfitting_report
from services.backtest.post_cutoff import (
    CutoffSplit,
    cutoff_section,
    predictor_cutoffs,
    require_post_rows,
    split_rows,
    take,
)
from services.backtest.predictors.base import PredictionSet
from services.backtest.predictors.baselines import BaselineUnavailable
from services.backtest.predictors.factory import build_predictor
from services.backtest.report import cutoff_text, share_over_time, summary_rows, summary_table, write_report
from services.backtest.rows import EvalRows, load_rows
from services.backtest.schemas import BacktestConfig
from services.backtest.settings import BacktestSettings
from services.backtest.strategy import buy_and_hold_report, window_net_returns
from services.backtest.verdicts import Sample, Scored, verdict_table
from services.common.queue import new_holder

log = logging.getLogger(__name__)


class LostRun(RuntimeError):
    """The process running an attempt no longer holds its run (its lease expired and another
    holder took it over): it writes no report and records nothing."""


@dataclass(frozen=True)
class BacktestResult:
    run_id: int
    json_path: Path
    html_path: Path
    summary: list[dict[str, Any]]
    summary_table: str
    report: dict[str, Any]


def options_of(config: BacktestConfig, settings: BacktestSettings) -> EvaluationOptions:
    return EvaluationOptions(
        fees_bps=settings.fees_bps if config.fees_bps is None else config.fees_bps,
        decrease_position=config.decrease_position or settings.decrease_position,
        bootstrap_reps=settings.bootstrap_reps if config.bootstrap_reps is None else config.bootstrap_reps,
        confidence=config.confidence,
        bias_alpha=config.bias_alpha,
        reliability_bins=config.reliability_bins,
        seed=config.seed,
    )


def _data_section(rows: EvalRows, windows_count: int, sleeves: int) -> dict[str, Any]:
    return {
        "symbol": rows.symbol,
        "exchange": rows.exchange,
        "timeframe": rows.timeframe,
        "horizon": rows.horizon,
        "rows": len(rows),
        "label_windows": windows_count,
        "first_headline": rows.first_time.isoformat(),
        "last_headline": rows.last_time.isoformat(),
        "share_increase": float(rows.y_true.mean()),
        "flat_rows_left_out": rows.flat_rows_left_out,
        "sleeves": sleeves,
    }


def config_rows(settings: BacktestSettings, config: BacktestConfig) -> EvalRows:
    """The labelled rows a config asks for (its market, or the settings' defaults)."""
    return load_rows(
        settings.resolved_database_url,
        config.symbol or settings.symbol,
        config.horizon or settings.horizons[0],
        config.start,
        config.end,
        config.exchange,
    )


def _rows_and_predictors(settings: BacktestSettings, config: BacktestConfig):  # type: ignore[no-untyped-def]
    rows = config_rows(settings, config)
    predictors = [
        build_predictor(spec, settings, config.seed, config.majority_before) for spec in config.predictors
    ]
    # Knowledge cutoffs (issue 15): with post_cutoff_only, rows a scored model could have read
    # about are dropped before anything else sees them (the leakage guard included).
    split = split_rows(rows, predictor_cutoffs(config.predictors, predictors, settings))
    if config.post_cutoff_only:
        require_post_rows(rows, split)
        rows = take(rows, split.post)
        split = split_rows(rows, split.models)
    return rows, predictors, split


def preflight(settings: BacktestSettings, config: BacktestConfig) -> dict[str, Any]:
    """The cheap checks of a run, before it is queued: rows exist, adapters are known, no leakage,
    and with post_cutoff_only some row after the latest knowledge cutoff.

    Raises the same InvalidInput / NotFound / LeakageError the run itself would, so an API
    caller hears about bad input at once instead of from a failed run later.
    """
    rows, predictors, split = _rows_and_predictors(settings, config)
    overlaps = guard(predictors, rows, config.allow_overlap)
    return {
        "rows": len(rows),
        "overlaps": [overlap.describe() for overlap in overlaps],
        "cutoff": cutoff_section(rows, split, config.post_cutoff_only)["lines"],
    }


def _verdicts_on(
    rows: EvalRows, mask: np.ndarray, scored: list[Scored], options: EvaluationOptions
) -> dict[str, Any] | None:
    """Accuracy and the window-aware verdicts on the rows where ``mask`` holds (None if none)."""
    if not mask.any():
        return None
    part = take(rows, mask)
    windows = part.windows()
    sample = Sample(windows.row_window, np.zeros(windows.count, dtype=np.int64))
    picked = [
        Scored(s.name, s.kind, None if s.y_pred is None else s.y_pred[mask], s.unavailable) for s in scored
    ]
    verdicts = verdict_table(
        part.y_true, picked, sample, options.bootstrap_reps, options.seed, options.bias_alpha
    )
    accuracy = {s.name: float(np.mean(s.y_pred == part.y_true)) for s in picked if s.y_pred is not None}
    return {"rows": len(part), "windows": windows.count, "accuracy": accuracy, "verdicts": verdicts}


def _cutoff_report(
    rows: EvalRows,
    split: CutoffSplit,
    config: BacktestConfig,
    scored: list[Scored],
    options: EvaluationOptions,
    verdicts: dict[str, Any],
) -> dict[str, Any]:
    """The cutoff section: who could have seen what, and the verdicts on post- and pre-cutoff rows."""
    section = cutoff_section(rows, split, config.post_cutoff_only)
    if split.rows_pre == 0:  # every row is post-cutoff: the verdicts are the report's own
        accuracy = {s.name: float(np.mean(s.y_pred == rows.y_true)) for s in scored if s.y_pred is not None}
        windows = verdicts["windows"]
        section["post"] = {"rows": len(rows), "windows": windows, "accuracy": accuracy, "verdicts": verdicts}
    else:
        section["post"] = _verdicts_on(rows, split.post, scored, options)
    pre = _verdicts_on(rows, ~split.post, scored, options)
    section["pre"] = None if pre is None else {**pre, "contaminated": True}
    return section


def build_report(
    settings: BacktestSettings, config: BacktestConfig, run_id: int | None = None
) -> dict[str, Any]:
    """Every figure of the backtest as a dict (what the JSON file holds)."""
    rows, predictors, split = _rows_and_predictors(settings, config)
    overlaps = guard(predictors, rows, config.allow_overlap)
    windows = rows.windows()
    options = options_of(config, settings)
    log.info(
        "backtest: %d rows in %d label windows, %d predictors", len(rows), windows.count, len(predictors)
    )
    predictions: list[PredictionSet] = []
    sections = []
    scored: list[Scored] = []
    for number, predictor in enumerate(predictors, start=1):
        started = time.perf_counter()
        try:
            prediction = predictor.predict(rows)
        except BaselineUnavailable as exc:  # reported as unavailable; the other predictors go on
            log.warning("backtest: predictor %s unavailable: %s", predictor.name, exc)
            sections.append(
                {"name": predictor.name, "kind": predictor.kind, "unavailable": str(exc), "notes": [str(exc)],
                 "meta": {}, "seconds": round(time.perf_counter() - started, 3), "metrics": None}
            )  # fmt: skip
            scored.append(Scored(predictor.name, predictor.kind, None, str(exc)))
            continue
        predictions.append(prediction)
        metrics = evaluate(rows.y_true, prediction.y_pred, prediction.p_increase, windows, options)
        sections.append(
            {
                "name": prediction.name,
                "kind": prediction.kind,
                "unavailable": None,
                "notes": prediction.notes,
                "meta": prediction.meta,
                "seconds": round(time.perf_counter() - started, 3),
                "metrics": metrics,
            }
        )
        scored.append(Scored(prediction.name, prediction.kind, prediction.y_pred))
        log.info("backtest: predictor %d/%d %s done", number, len(predictors), prediction.name)
    sample = Sample(windows.row_window, np.zeros(windows.count, dtype=np.int64))
    verdicts = verdict_table(
        rows.y_true,
        scored,
        sample,
        options.bootstrap_reps,
        options.seed,
        options.bias_alpha,
        bias={s["name"]: s["metrics"]["bias"] for s in sections if s["metrics"]},
    )
    returns = {
        p.name: window_net_returns(p.y_pred, windows, options.fees_bps, options.decrease_position)
        for p in predictions
    }
    notes = list(config.notes)
    notes += [f"{s['name']} unavailable: {s['unavailable']}" for s in sections if s["unavailable"]]
    cutoff = _cutoff_report(rows, split, config, scored, options, verdicts)
    notes[0:0] = cutoff["lines"]  # the report's first lines: what each model could have seen
    if overlaps:  # first of all: in-sample rows are worse than rows the base may have read about
        notes.insert(
            0, "OVERLAP ALLOWED: some adapters are scored on rows from their training window plus embargo"
        )
    report: dict[str, Any] = {
        "title": config.title,
        "generated_at": datetime.now(UTC).isoformat(),
        "run_id": run_id,
        "config": {**config.model_dump(mode="json"), **_resolved(options)},
        "notes": notes,
        "data": _data_section(rows, windows.count, windows.sleeves),
        "leakage": [overlap.describe() for overlap in overlaps],
        "overlap_allowed": bool(overlaps),
        "predictors": sections,
        "verdicts": verdicts,
        "cutoff": cutoff,
        "overfitting": overfitting_report(returns),
        "buy_and_hold": buy_and_hold_report(windows, options.fees_bps),
        "share_over_time": share_over_time(rows, predictions),
        "row_ids": rows.row_id.tolist(),
        "predictions": {p.name: p.y_pred.tolist() for p in predictions},
        "labels": np.asarray(rows.y_true).tolist(),
    }
    report["summary"] = summary_rows(report)
    return report


def _resolved(options: EvaluationOptions) -> dict[str, Any]:
    return {
        "fees_bps": options.fees_bps,
        "decrease_position": options.decrease_position,
        "bootstrap_reps": options.bootstrap_reps,
    }


def run_backtest(
    settings: BacktestSettings, config: BacktestConfig, trigger: str = "cli", run_id: int | None = None
) -> BacktestResult:
    """Run ``config``, write ``<reports>/backtest-<id>.json|.html`` and record the run.

    Without ``run_id`` a new run is recorded and claimed by this process (the CLI), which
    renews its lease while the report is built, so a running service never takes it over;
    a failure marks it failed and propagates. With ``run_id`` the caller (the scheduler) has
    claimed the run's attempt: the report is written and recorded under that claim (a caller
    that lost the run gets ``LostRun``, and nothing is written), and on failure the error
    propagates for the caller to record and maybe retry.
    """
    from services.backtest.metrics import RUNS, publish

    url = settings.resolved_database_url
    owned = run_id is None
    with ExitStack() as stack:
        if run_id is None:
            preflight(settings, config)  # bad input (no rows, an unknown model, leakage) stores no run
            holder = new_holder(f"backtest-{trigger}")
            run, _ = store.RUNS.submit(url, config.model_dump(mode="json"), holder=holder, trigger=trigger)
            run_id, claim = run.id, store.Claim(run.id, holder, 1)
            stack.enter_context(store.RUNS.keep_alive(url, claim, settings.lease_seconds / 4))
        else:
            claim = store.claim_of(url, run_id)
        try:
            report = build_report(settings, config, run_id)
            if claim is None or not store.RUNS.holds(url, claim):  # the report files are the holder's
                raise LostRun(f"backtest run {run_id} was taken over by another holder meanwhile")
            json_path, html_path = write_report(report, settings.reports_path, f"backtest-{run_id:06d}")
        except Exception as exc:
            if owned and not isinstance(exc, LostRun):
                store.RUNS.fail(url, claim, f"{type(exc).__name__}: {exc}")
            RUNS.labels(trigger, "failed").inc()
            raise
        summary = {"rows": report["summary"]}
        if not store.mark_succeeded(url, claim, str(json_path), str(html_path), summary):
            log.warning("backtest %d: the run was taken over meanwhile; this report is not recorded", run_id)
    publish(report["summary"], time.time())
    RUNS.labels(trigger, "succeeded").inc()
    log.info("backtest %d: report at %s", run_id, html_path)
    text = cutoff_text(report) + "\n\n" + summary_table(report["summary"])
    return BacktestResult(run_id, json_path, html_path, report["summary"], text, report)
