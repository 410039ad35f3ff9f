"""Walk-forward evaluation: train and score a fresh version of each method on every fold.

A walk-forward cuts the labelled rows into K folds along time. Fold i's test window is
``test_days`` long and starts ``step_days`` after fold i-1's; its training window ends one
embargo before the test window and starts at the first row (``expanding``) or ``train_days``
before its end (``rolling``); the first fold's training window is ``train_days`` long in both
modes. The last share of each training window (``validation_fraction`` of its rows, one
embargo before it) is the trainer's validation window, so every row the trainer reads lies
before the test window minus the embargo.

For every fold and requested method (LoRA, QLoRA, full) a training job goes through the
trainer's queue (``services.trainer.jobs``; idempotency key ``walk-forward:<id>:fold<i>:<method>``)
and is run by this process as its worker (``run_jobs="inline"``: the same
``services.trainer.job_process.run_claimed_job`` a trainer worker's child runs, hence the
same ``services.trainer.training.train`` the reproduction uses) or by a trainer service's
worker (``run_jobs="queue"``: this process waits for it). Each version is named
``<id>-f<i>-<method>``; its manifest's training window is the fold's, and the walk-forward's
state file maps fold -> job, adapter, version, path. The backtest
(``services.backtest.runner.run_backtest``) scores the fold's versions, the untuned base and
the baselines on that fold's test window only, with the leakage guard on. The folds'
predictions are pooled by the existing statistics: window-aware verdicts with the windows
resampled within their fold (``verdicts.Sample.from_folds``), DSR and PBO over every
predictor's per-window returns, folds in time order (``overfitting.overfitting_report``), and
the IC and rank IC pooled from the folds' reports (``pooled_information_coefficient``).

Bad input (an empty training window, a test window shorter than the label horizon, more
folds than the data holds, overlapping test windows, an embargo shorter than the labels'
span) raises ``WalkForwardInputError`` (an InvalidInput: exit 2 / HTTP 422; ``services.common.walk_forward_plan``) naming the
setting and the largest K that fits, before any job is queued.

Resumable: the state lives in ``<reports>/walk-forwards/<id>.json``, written after every
step; a rerun with the same id and settings skips the folds already finished (succeeded or
failed), reuses the jobs already trained in the fold it stopped in (a job interrupted while
training resumes from its checkpoint), and pools again. A fold whose training jobs all fail is
marked failed with the jobs' reasons; the others go on, and the pooled figures say which
folds they cover. A fold where only some methods fail (QLoRA on a host without CUDA) is scored
with the versions that trained; the failed methods are named per fold and in the pooled note.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from services.common.errors import Conflict, HsigError, OperationalError

# The plan, the options and the checks live in services.common so that the backtest API checks
# a POSTed walk-forward with the very code that runs it; re-exported here for the CLI and tests.
from services.common.walk_forward_plan import (
    FoldPlan,
    WalkForwardInputError,
    WalkForwardOptions,
    plan_folds,
    prepare_walk_forward,
    state_path,
)

__all__ = [
    "FoldPlan",
    "WalkForwardInputError",
    "WalkForwardOptions",
    "WalkForwardResult",
    "plan_folds",
    "prepare_walk_forward",
    "run_walk_forward",
    "state_path",
]

log = logging.getLogger(__name__)
Progress = Callable[[str], None]
Boundary = Callable[[str], None]  # called between folds; raises to stop there (a cancel)
METHOD_LABELS = {"lora": "LoRA", "qlora": "QLoRA", "full": "full fine-tune"}
BASE_LABEL = "base (untuned)"
TRIGGER = "walk-forward"  # the backtest runs' trigger (at most 16 characters)


@dataclass(frozen=True)
class WalkForwardResult:
    id: str
    state_path: Path
    state: dict[str, Any]
    summary_table: str


def _spec(
    options: WalkForwardOptions, plans: list[FoldPlan], embargo: float, symbol: str, horizon: str
) -> dict:
    """What makes two runs the same walk-forward (a rerun with other settings is refused)."""
    return {
        "model": options.model,
        "methods": list(options.methods),
        "symbol": symbol,
        "horizon": horizon,
        "train_mode": options.train_mode,
        "embargo_seconds": embargo,
        "folds": [plan.as_json() for plan in plans],
        "epochs": options.epochs,
        "max_steps": options.max_steps,
        "batch_size": options.batch_size,
        "learning_rates": dict(sorted(options.learning_rates.items())),
        "seed": options.seed,
        "include_base": options.include_base,
        "baselines": list(options.baselines) if options.baselines is not None else None,
        "bootstrap_reps": options.bootstrap_reps,
    }


def _write_state(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(state, indent=2, default=str, allow_nan=False))
    os.replace(temporary, path)


def _clean(value: Any) -> Any:
    """NaN and infinities as None (the state file is strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _clean(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(item) for item in value]
    if isinstance(value, np.generic):
        return _clean(value.item())
    return value


# --- training one version through the queue ------------------------------------------------------


def _train_config(options: WalkForwardOptions, plan: FoldPlan, method: str, name: str, embargo: float) -> Any:
    from services.pipeline.reproduce import default_learning_rate
    from services.trainer.config import TrainConfig

    rate = options.learning_rates.get(method) or default_learning_rate(method, options.model == "tiny")
    return TrainConfig.model_validate(
        {
            "name": name,
            "base_model": options.model,
            "method": method,
            "data": {
                "source": "database",
                "train": {"start": plan.train_start, "end": plan.train_end},
                "validation": {"start": plan.validation_start, "end": plan.validation_end},
                "embargo_seconds": embargo,
            },
            "optim": {
                "epochs": options.epochs,
                "max_steps": options.max_steps,
                "batch_size": options.batch_size,
                "learning_rate": rate,
                "seed": options.seed,
            },
        }
    )


def _run_job(
    trainer_settings: Any, body: dict[str, Any], name: str, key: str, options: WalkForwardOptions
) -> Any:
    """Queue the job once (per key) and see it to a final state; returns the job row."""
    from services.common.queue import new_holder
    from services.trainer import jobs
    from services.trainer.job_process import run_claimed_job

    url = trainer_settings.resolved_database_url
    inline = options.run_jobs == "inline"
    holder = new_holder("walk-forward")
    job, replayed = jobs.QUEUE.submit(
        url, body, key, holder=holder if inline else None, adapter_name=name, total_steps=0
    )
    claim = jobs.Claim(job.id, holder, 1) if inline and not replayed else None
    deadline = time.monotonic() + options.job_wait_seconds
    while True:
        if claim is not None:
            try:
                run_claimed_job(claim, trainer_settings)
            except Exception as exc:  # a crash, as the worker would see it: retried while attempts last
                jobs.after_crash(url, claim, f"{type(exc).__name__}: {exc}", trainer_settings.max_attempts)
            except BaseException:  # interrupted: back in the queue; a rerun resumes from its checkpoint
                jobs.release(url, claim)
                raise
            claim = None
        job = jobs.get_job(url, job.id)
        if job.state in jobs.FINAL:
            return job
        if inline:  # queued again, or left running by a killed run whose lease has lapsed
            claim = jobs.QUEUE.claim(
                url,
                holder,
                job.id,
                lease_seconds=trainer_settings.lease_seconds,
                max_attempts=trainer_settings.max_attempts,
            )
            if claim is not None:
                continue
        if time.monotonic() > deadline:
            raise OperationalError(
                f"training job {job.id} ({name}) is still {job.state} after {options.job_wait_seconds:.0f} s"
            )
        time.sleep(trainer_settings.worker_poll_seconds)


# --- scoring and pooling ---------------------------------------------------------------------


def _fold_predictors(options: WalkForwardOptions, base_dir: str, versions: list[dict[str, Any]]) -> list[Any]:
    from services.backtest.schemas import BASELINES, BaselineSpec, LocalSpec

    predictors: list[Any] = []
    if options.include_base:
        predictors.append(LocalSpec(model=base_dir, label=BASE_LABEL))
    for version in versions:
        predictors.append(
            LocalSpec(model=base_dir, adapter_dir=version["path"], label=METHOD_LABELS[version["method"]])
        )
    baselines = BASELINES if options.baselines is None else options.baselines
    predictors += [BaselineSpec(name=name) for name in baselines]  # type: ignore[arg-type]
    return predictors


def _fold_rows_summary(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keys = (
        "predictor", "kind", "rows", "windows", "accuracy", "balanced_accuracy", "mcc",
        "share_predicted_increase", "biased", "cumulative_return", "sharpe", "unavailable",
    )  # fmt: skip
    return [{key: row.get(key) for key in keys} for row in summary]


def pool(settings: Any, folds: list[dict[str, Any]]) -> dict[str, Any]:
    """The succeeded folds' predictions, pooled: window-aware verdicts (windows resampled within
    their fold), DSR and PBO over the per-window returns of every fold in time order."""
    from services.backtest.overfitting import overfitting_report
    from services.backtest.rows import load_rows
    from services.backtest.strategy import window_net_returns
    from services.backtest.verdicts import Sample, Scored, verdict_table

    covered = [fold for fold in folds if fold["state"] == "succeeded"]
    failed = [
        {"fold": fold["fold"], "error": fold.get("error")} for fold in folds if fold["state"] == "failed"
    ]
    out: dict[str, Any] = {
        "folds_covered": [fold["fold"] for fold in covered],
        "folds_failed": failed,
        "folds_total": len(folds),
        "methods_failed": _methods_failed(covered),
    }
    if not covered:
        out["unavailable"] = "no fold succeeded: nothing to pool"
        out["note"] = f"covers no fold of {len(folds)}"
        return out
    reports = [json.loads(Path(fold["backtest"]["json_path"]).read_text()) for fold in covered]
    names = [name for name in reports[0]["predictions"] if all(name in r["predictions"] for r in reports)]
    kinds = {p["name"]: p["kind"] for report in reports for p in report["predictors"]}
    y_true, windows, predictions = [], [], {name: [] for name in names}
    headline_times: list[np.ndarray] = []
    returns: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for fold, report in zip(covered, reports, strict=True):
        data = report["data"]
        rows = load_rows(
            settings.resolved_database_url,
            data["symbol"],
            data["horizon"],
            datetime.fromisoformat(fold["window"]["test_start"]),
            datetime.fromisoformat(fold["window"]["test_end"]),
            data["exchange"],
        )
        if rows.row_id.tolist() != report["row_ids"]:
            raise OperationalError(
                f"fold {fold['fold']}: the stored rows of its test window changed since it was scored"
            )
        fold_windows = rows.windows()
        windows.append(fold_windows.row_window)
        headline_times.append(rows.headline_time)
        y_true.append(np.asarray(report["labels"], dtype=np.int8))
        config = report["config"]
        for name in names:
            y_pred = np.asarray(report["predictions"][name], dtype=np.int8)
            predictions[name].append(y_pred)
            returns[name].append(
                window_net_returns(y_pred, fold_windows, config["fees_bps"], config["decrease_position"])
            )
    truth = np.concatenate(y_true)
    sample = Sample.from_folds(windows)
    scored = [Scored(name, kinds.get(name, "model"), np.concatenate(predictions[name])) for name in names]
    reps = reports[0]["config"]["bootstrap_reps"]
    seed = reports[0]["config"]["seed"]
    alpha = reports[0]["config"]["bias_alpha"]
    out.update(
        {
            "rows": sample.rows,
            "windows": sample.windows,
            "predictors": [
                {
                    "predictor": s.name,
                    "kind": s.kind,
                    "accuracy": float(np.mean(s.y_pred == truth)),
                    "share_predicted_increase": float(np.mean(s.y_pred)),
                    "fold_accuracy": {
                        str(fold["fold"]): float(np.mean(p == t))
                        for fold, p, t in zip(covered, predictions[s.name], y_true, strict=True)
                    },
                }
                for s in scored
                if s.y_pred is not None
            ],
            "share_increase": float(np.mean(truth)),
            "left_out": sorted(set(kinds) - set(names)),
            "verdicts": verdict_table(truth, scored, sample, reps, seed, alpha),
            "overfitting": overfitting_report({name: np.concatenate(r) for name, r in returns.items()}),
            "information_coefficient": {
                name: pooled_information_coefficient(
                    [_fold_ic(report, name) for report in reports], [f["fold"] for f in covered]
                )
                for name in names
            },
            "note": _note(covered, failed, out["methods_failed"], len(folds)),
        }
    )
    post_cutoff = PooledRows(truth, scored, windows, headline_times)
    out["cutoff"] = pooled_cutoff(reports, post_cutoff, reps, seed, alpha)
    return _clean(out)


@dataclass(frozen=True)
class PooledRows:
    """The pooled test rows in fold order: labels, each predictor's predictions, and per fold
    the rows' label windows and headline times (epoch seconds)."""

    truth: np.ndarray
    scored: list[Any]
    windows: list[np.ndarray]
    headline_times: list[np.ndarray]


def pooled_cutoff(
    reports: list[dict[str, Any]], pooled: PooledRows, reps: int, seed: int, alpha: float
) -> dict[str, Any]:
    """The pooled verdicts on the rows after the latest knowledge cutoff of the models the folds
    scored (each fold report's own ``cutoff`` section says which that is): pooled figures over
    rows a model could have read in pretraining are contaminated, as in a single backtest."""
    from services.backtest.verdicts import Sample, Scored, verdict_table

    sections = [report.get("cutoff") or {} for report in reports]
    stated = [section["latest"] for section in sections if section.get("latest")]
    latest = max((datetime.fromisoformat(value) for value in stated), default=None)
    unknown = sorted({name for section in sections for name in section.get("unknown") or []})
    post = [
        np.ones(times.size, dtype=bool) if latest is None else times >= latest.timestamp()
        for times in pooled.headline_times
    ]
    mask = np.concatenate(post)
    out: dict[str, Any] = {
        "latest": latest.isoformat() if latest else None,
        "unknown": unknown,
        "rows_post": int(mask.sum()),
        "rows_pre": int(mask.size - mask.sum()),
    }
    lines = []
    if latest is not None:
        lines.append(
            f"latest cutoff {latest.isoformat()}: {out['rows_post']} of {mask.size} pooled rows after it; "
            f"{out['rows_pre']} before it are CONTAMINATED (the pooled verdicts over all rows include them)"
        )
    else:
        lines.append("no scored model has a stated cutoff that falls inside these folds' rows")
    if unknown:
        lines.append(f"cutoff unknown for {', '.join(unknown)}: no pooled row is provably clean")
    if unknown:
        out["verdicts_post"] = {"unavailable": f"cutoff unknown for {', '.join(unknown)}"}
    elif out["rows_pre"] == 0:
        out["verdicts_post"] = "same as the pooled verdicts: every row is after the latest cutoff"
    elif out["rows_post"] == 0:
        out["verdicts_post"] = {"unavailable": "no pooled row after the latest cutoff"}
    else:
        sample = Sample.from_folds([w[p] for w, p in zip(pooled.windows, post, strict=True)])
        scored = [Scored(s.name, s.kind, s.y_pred[mask]) for s in pooled.scored if s.y_pred is not None]
        out["verdicts_post"] = verdict_table(pooled.truth[mask], scored, sample, reps, seed, alpha)
    out["lines"] = lines
    return out


def _methods_failed(covered: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Method label -> the covered folds where its training failed (the others were scored)."""
    failed: dict[str, list[dict[str, Any]]] = {}
    for fold in covered:
        for method, error in (fold.get("methods_failed") or {}).items():
            failed.setdefault(METHOD_LABELS[method], []).append({"fold": fold["fold"], "error": error})
    return failed


def _note(
    covered: list[dict[str, Any]],
    failed: list[dict[str, Any]],
    methods_failed: dict[str, list[dict[str, Any]]],
    total: int,
) -> str:
    note = f"covers folds {', '.join(str(f['fold']) for f in covered)} of {total}"
    if failed:
        note += "; failed: " + "; ".join(f"fold {f['fold']}: {f['error']}" for f in failed)
    for label, where in methods_failed.items():
        folds = ", ".join(str(f["fold"]) for f in where)
        note += f"; {label} not trained in folds {folds}: {where[0]['error']}"
    return note


def _fold_ic(report: dict[str, Any], name: str) -> dict[str, Any] | None:
    """A fold report's IC section of one predictor (None: it gives no p(Increase))."""
    for section in report["predictors"]:
        if section["name"] == name and section.get("metrics"):
            return section["metrics"].get("information_coefficient")
    return None


def pooled_information_coefficient(
    per_fold: list[dict[str, Any] | None], fold_numbers: list[int]
) -> dict[str, Any]:
    """IC and rank IC pooled over folds from each fold report's own IC section.

    The same estimate and window-aware interval as ``overfitting.information_coefficients`` on
    the pooled rows with the folds marked (the mean of the folds' ICs; its variance the sum of
    the folds' cluster-robust variances over F^2; Fisher z interval): each fold's variance
    depends on its own rows and windows only, so the per-row p(Increase), which the reports do
    not keep, is not needed.
    """
    from scipy.stats import norm

    if any(section is None or not section.get("folds") for section in per_fold):
        return {"unavailable": "no p(Increase) in every fold"}
    sections: list[dict[str, Any]] = per_fold  # type: ignore[assignment]
    rows = [section["folds"][0] for section in sections]  # a fold report holds one fold
    level = float(next((s["level"] for s in sections if s.get("level")), 0.95))
    z = float(norm.ppf(0.5 + level / 2))
    windows = sum(int(row["windows"]) for row in rows)
    folds = [
        {"fold": number, **{key: row[key] for key in ("rows", "windows", "ic", "rank_ic")}}
        for number, row in zip(fold_numbers, rows, strict=True)
    ]
    if all(row["ic"] is None for row in rows):
        return {"unavailable": "p(Increase) or the return does not vary: no correlation", "folds": folds}
    result: dict[str, Any] = {
        "folds": folds,
        "rows": sum(int(row["rows"]) for row in rows),
        "windows": windows,
        "level": level,
        "method": "mean of the folds' ICs; influence function summed within label windows "
        "(cluster-robust) per fold, Fisher z interval",
        "interval_unavailable": None
        if windows >= 2
        else "fewer than 2 label windows: no window-aware interval",
        "unavailable": None,
    }
    for key in ("ic", "rank_ic"):
        values = np.array([np.nan if row[key] is None else row[key] for row in rows], dtype=float)
        spread = np.array(
            [np.nan if s.get(f"{key}_se") is None else s[f"{key}_se"] for s in sections], dtype=float
        )
        finite = np.isfinite(values)
        if not finite.any():
            result[key], result[f"{key}_se"], result[f"{key}_interval"] = None, None, None
            continue
        estimate = float(values[finite].mean())
        variance = float(np.nansum(spread[finite] ** 2) / finite.sum() ** 2)
        result[key] = estimate
        result[f"{key}_se"] = math.sqrt(variance)
        interval = None
        if result["interval_unavailable"] is None and abs(estimate) < 1:
            centre, half = math.atanh(estimate), z * math.sqrt(variance) / (1 - estimate**2)
            interval = [math.tanh(centre - half), math.tanh(centre + half)]
        result[f"{key}_interval"] = interval
        if len(sections) > 1:
            deviation = float(np.std(values[finite], ddof=1)) if finite.sum() > 1 else 0.0
            result[f"{key}_t_across_folds"] = (
                float(estimate / (deviation / math.sqrt(finite.sum()))) if deviation > 0 else None
            )
    return result


def summary_table(state: dict[str, Any]) -> str:
    """Per-fold accuracy of every predictor, the pooled accuracy, and what the pool covers."""
    pooled = state.get("pooled") or {}
    names = [row["predictor"] for row in pooled.get("predictors", [])]
    lines = [f"walk-forward {state['id']}: {pooled.get('note', 'not pooled yet')}"]
    lines += [f"  {line}" for line in (pooled.get("cutoff") or {}).get("lines", [])]
    if not names:
        for fold in state["folds"]:
            lines.append(f"  fold {fold['fold']}: {fold['state']} {fold.get('error') or ''}".rstrip())
        return "\n".join(lines)
    header = f"{'predictor':<24}" + "".join(f"{'fold ' + str(f['fold']):>10}" for f in state["folds"])
    header += f"{'pooled':>10}"
    lines += [header, "-" * len(header)]
    for row in pooled["predictors"]:
        cells = "".join(
            f"{row['fold_accuracy'][str(f['fold'])]:>10.3f}"
            if str(f["fold"]) in row["fold_accuracy"]
            else f"{f['state'][:9]:>10}"
            for f in state["folds"]
        )
        lines.append(f"{row['predictor'][:23]:<24}{cells}{row['accuracy']:>10.3f}")
    lines.append("accuracy per fold and pooled (rows of every covered fold together)")
    comparisons = (pooled.get("verdicts") or {}).get("comparisons", [])
    for verdict in comparisons:
        if verdict.get("interval") is None:
            continue
        low, high = verdict["interval"]
        word = "YES" if verdict["better"] else "no"
        lines.append(
            f"  {verdict['model']} vs {verdict['baseline']}: {100 * verdict['difference']:+.1f} pts "
            f"[{100 * low:+.1f}, {100 * high:+.1f}] ({verdict['windows']} windows, {verdict['folds']} folds): {word}"
        )
    pbo = (pooled.get("overfitting") or {}).get("pbo") or {}
    if pbo.get("pbo") is not None:
        lines.append(f"  PBO across the predictors: {pbo['pbo']:.2f} ({pbo['combinations']} combinations)")
    for name, ic in (pooled.get("information_coefficient") or {}).items():
        if ic.get("ic") is None:
            continue
        span = "" if ic.get("ic_interval") is None else " [{:+.3f}, {:+.3f}]".format(*ic["ic_interval"])
        rank = "" if ic.get("rank_ic") is None else f", rank IC {ic['rank_ic']:+.3f}"
        lines.append(
            f"  IC of {name}: {ic['ic']:+.3f}{span}{rank} ({ic['windows']} windows, pooled over folds)"
        )
    return "\n".join(lines)


# --- the walk-forward --------------------------------------------------------------------


def run_walk_forward(
    settings: Any,
    options: WalkForwardOptions,
    progress: Progress | None = None,
    at_boundary: Boundary | None = None,
) -> WalkForwardResult:
    """Plan the folds, train and score each fold (skipping those a previous run finished), pool.

    ``at_boundary`` is called before each fold this run starts and before pooling, with where
    it stands ("before fold 2 of 3"); it may raise to stop there (a cancel). The state file
    then holds nothing this run wrote of the next fold, so a rerun of the id resumes there."""
    from services.backtest.runner import run_backtest
    from services.backtest.schemas import BacktestConfig
    from services.common.db.migrate import upgrade
    from services.pipeline.reproduce import TINY_DISCLAIMER, _as, _is_tiny
    from services.trainer.settings import TrainerSettings

    say = progress or (lambda message: log.info("%s", message))
    url = settings.resolved_database_url
    upgrade(url)
    plans, embargo = prepare_walk_forward(settings, options)
    walk_id = options.id or f"wf-{datetime.now(UTC):%Y%m%dT%H%M%S}"
    spec = _spec(options, plans, embargo, settings.symbol, settings.horizons[0])
    path = state_path(settings.reports_path, walk_id)
    if path.is_file():
        state = json.loads(path.read_text())
        if state.get("spec") != spec:
            raise Conflict(
                f"walk-forward {walk_id} was started with other settings (or the rows changed); "
                "give a new id for new settings",
                param="id",
            )
        unfinished = [f["fold"] for f in state["folds"] if f["state"] not in ("succeeded", "failed")]
        say(f"walk-forward {walk_id}: resuming at fold {unfinished[0]}" if unfinished else
            f"walk-forward {walk_id}: every fold already finished; pooling again")  # fmt: skip
    else:
        state = {
            "id": walk_id,
            "created_at": datetime.now(UTC).isoformat(),
            "spec": spec,
            "folds": [
                {
                    "fold": plan.fold,
                    "window": plan.as_json(),
                    "state": "pending",
                    "versions": {},
                    "error": None,
                }
                for plan in plans
            ],
            "pooled": None,
        }
        _write_state(path, state)
        say(
            f"walk-forward {walk_id}: {len(plans)} folds ({options.train_mode}), methods {', '.join(options.methods)}"
        )
    trainer_settings = _as(TrainerSettings, settings).model_copy(update={"inference_url": ""})
    total = len(plans)
    for plan, fold in zip(plans, state["folds"], strict=True):
        if fold["state"] in ("succeeded", "failed"):
            continue
        if at_boundary is not None:
            at_boundary(f"before fold {plan.fold} of {total}")
        where = f"walk-forward {walk_id}: fold {plan.fold}/{total}"
        fold["state"] = "training"
        _write_state(path, state)
        errors = []
        for method in options.methods:
            known = fold["versions"].get(method)
            if known and known["state"] == "succeeded":
                continue
            name = f"{walk_id}-f{plan.fold}-{method}"
            say(
                f"{where}: {method} on {plan.train_rows} rows {plan.train_start:%Y-%m-%d} to {plan.train_end:%Y-%m-%d %H:%M} ..."
            )
            config = _train_config(options, plan, method, name, embargo)
            job = _run_job(
                trainer_settings, config.model_dump(mode="json"), name,
                f"walk-forward:{walk_id}:fold{plan.fold}:{method}", options,
            )  # fmt: skip
            version: dict[str, Any] = {"method": method, "job_id": job.id, "state": str(job.state)}
            if job.state == "succeeded":
                version.update(
                    {key: job.metrics.get(key) for key in ("adapter", "version", "path", "train_seconds")}
                )
            else:
                version["error"] = job.error or f"job {job.id} ended {job.state}"
                errors.append(f"{method}: {version['error']}")
            fold["versions"][method] = version
            _write_state(path, state)
        versions = [
            fold["versions"][m] for m in options.methods if fold["versions"][m]["state"] == "succeeded"
        ]
        if not versions:  # no version to score: the fold fails with every job's reason
            fold.update(state="failed", error="training failed: " + "; ".join(errors))
            _write_state(path, state)
            say(f"{where} failed: {fold['error']}")
            continue
        if errors:  # e.g. QLoRA on a host without CUDA: the other methods' versions are still scored
            fold["methods_failed"] = {
                m: fold["versions"][m]["error"]
                for m in options.methods
                if fold["versions"][m]["state"] != "succeeded"
            }
            say(f"{where}: training failed for {'; '.join(errors)}; scoring the other versions")
        base_dir = _base_dir(versions[0]["path"])
        notes = [TINY_DISCLAIMER] if options.model == "tiny" or _is_tiny(base_dir) else []
        notes.append(
            f"Walk-forward {walk_id}, fold {plan.fold} of {total} ({options.train_mode} training window "
            f"{plan.train_start:%Y-%m-%d} to {plan.train_end:%Y-%m-%d %H:%M}, embargo {embargo:g} s): each "
            "version is scored on this fold's test window only."
        )
        config = BacktestConfig(
            title=f"Walk-forward {walk_id}: fold {plan.fold} of {total}",
            start=plan.test_start,
            end=plan.test_end,
            predictors=_fold_predictors(options, base_dir, versions),
            bootstrap_reps=options.bootstrap_reps,
            seed=options.seed,
            allow_overlap=False,
            notes=notes,
        )
        say(
            f"{where}: scoring on {plan.test_rows} rows {plan.test_start:%Y-%m-%d %H:%M} to {plan.test_end:%Y-%m-%d %H:%M} ..."
        )
        try:
            result = run_backtest(settings, config, trigger=TRIGGER)
        except HsigError as exc:
            fold.update(state="failed", error=f"backtest failed: {type(exc).__name__}: {exc.message}")
            _write_state(path, state)
            say(f"{where} failed: {fold['error']}")
            continue
        fold.update(
            state="succeeded",
            backtest={
                "run_id": result.run_id,
                "json_path": str(result.json_path),
                "html_path": str(result.html_path),
            },
            summary=_clean(_fold_rows_summary(result.summary)),
        )
        _write_state(path, state)
        say(f"{where} succeeded (backtest {result.run_id})")
    if at_boundary is not None:
        at_boundary(f"before pooling (the {total} folds finished)")
    state["pooled"] = pool(settings, state["folds"])
    state["finished_at"] = datetime.now(UTC).isoformat()
    _write_state(path, state)
    say(f"walk-forward {walk_id}: pooled, {state['pooled']['note']}")
    return WalkForwardResult(walk_id, path, state, summary_table(state))


def _base_dir(adapter_path: str) -> str:
    """The base model a published version names in its manifest (what the backtest loads)."""
    from services.common.adapters import read_manifest

    return read_manifest(Path(adapter_path)).base_model
