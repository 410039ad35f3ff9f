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
predictor's per-window returns, folds in time order (``overfitting.overfitting_report``).

Bad input (an empty training window, a test window shorter than the label horizon, more
folds than the data holds, overlapping test windows, an embargo shorter than the labels'
span) raises ``WalkForwardInputError`` (an InvalidInput: exit 2 / HTTP 4xx) naming the
setting and the largest K that fits, before any job is queued.

Resumable: the state lives in ``<reports>/walk-forwards/<id>.json``, written after every
step; a rerun with the same id and settings skips the folds already finished (succeeded or
failed), reuses the jobs already trained in the fold it stopped in (a job interrupted while
training resumes from its checkpoint), and pools again. A fold whose training job fails is
marked failed with the job's reason; the others go on, and the pooled figures say which
folds they cover.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np

from services.common.errors import Conflict, HsigError, InvalidInput, OperationalError

log = logging.getLogger(__name__)
Progress = Callable[[str], None]
TrainMode = Literal["expanding", "rolling"]
DAY = timedelta(days=1)
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
METHOD_LABELS = {"lora": "LoRA", "qlora": "QLoRA", "full": "full fine-tune"}
BASE_LABEL = "base (untuned)"
TRIGGER = "walk-forward"  # the backtest runs' trigger (at most 16 characters)


class WalkForwardInputError(InvalidInput):
    """A walk-forward the data cannot hold; ``largest_k`` says how many folds would fit."""

    def __init__(self, message: str, *, param: str, largest_k: int | None = None) -> None:
        if largest_k is not None:
            message = f"{message} (largest k that fits: {largest_k})"
        super().__init__(message, param=param)
        self.largest_k = largest_k


# --- the folds -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FoldPlan:
    """One fold: the trainer's windows (train, then validation) and the backtest's test window.

    Every window holds headline times t with start <= t < end. ``train_end`` is one embargo
    before ``validation_start``, ``validation_end`` one embargo before ``test_start``.
    """

    fold: int  # 1..K
    train_start: datetime
    train_end: datetime
    validation_start: datetime
    validation_end: datetime
    test_start: datetime
    test_end: datetime
    train_rows: int
    validation_rows: int
    test_rows: int

    def as_json(self) -> dict[str, Any]:
        return {
            key: value.isoformat() if isinstance(value, datetime) else value
            for key, value in asdict(self).items()
        }


def _count(times: Sequence[datetime], start: datetime, end: datetime) -> int:
    return bisect.bisect_left(times, end) - bisect.bisect_left(times, start)


def _days(value: float) -> str:
    return f"{value:g} day{'s' if value != 1 else ''}"


def plan_folds(
    rows_times: Sequence[datetime],
    horizon: timedelta,
    train_mode: str,
    train_days: float,
    test_days: float,
    step_days: float | None,
    k: int | None,
    embargo: timedelta,
    validation_fraction: float = 0.15,
) -> list[FoldPlan]:
    """The K folds over rows with these headline times (any order), or WalkForwardInputError.

    ``step_days`` None: the test length (folds' test windows back to back). ``k`` None: as
    many folds as fit. Pure: no database, nothing queued.
    """
    step_days = test_days if step_days is None else step_days
    if train_mode not in ("expanding", "rolling"):
        raise WalkForwardInputError(
            f"train_mode must be expanding or rolling, not {train_mode!r}", param="train_mode"
        )
    for name, value in (("train_days", train_days), ("test_days", test_days), ("step_days", step_days)):
        if not (value > 0 and math.isfinite(value)):
            raise WalkForwardInputError(f"{name} must be a positive number of days, not {value}", param=name)
    if not 0 < validation_fraction < 1:
        raise WalkForwardInputError(
            f"validation_fraction must be between 0 and 1, not {validation_fraction}",
            param="validation_fraction",
        )
    if embargo < timedelta(0):
        raise WalkForwardInputError("embargo must not be negative", param="embargo_seconds")
    if k is not None and k < 1:
        raise WalkForwardInputError(f"k must be at least 1, not {k}", param="k")
    test, step, training = test_days * DAY, step_days * DAY, train_days * DAY
    if test < horizon:
        raise WalkForwardInputError(
            f"test_days of {_days(test_days)} is shorter than the label horizon ({horizon}): "
            "no label of the test window would end inside it",
            param="test_days",
        )
    if step < test:
        raise WalkForwardInputError(
            f"step_days ({_days(step_days)}) is shorter than test_days ({_days(test_days)}): the folds' "
            "test windows would overlap, and a row would be scored in two folds",
            param="step_days",
        )
    times = sorted(rows_times)
    if not times:
        raise WalkForwardInputError("no labelled rows to walk forward over", param="start", largest_k=0)
    first = times[0]
    data_end = times[-1] + timedelta(seconds=1)  # windows are start <= t < end
    folds: list[FoldPlan] = []
    problem: tuple[str, str] | None = None  # why fold len(folds)+1 does not fit: (param, reason)
    while k is None or len(folds) < k:
        number = len(folds) + 1
        test_start = first + training + embargo + (number - 1) * step
        test_end = test_start + test
        if test_end > data_end:
            problem = (
                "k",
                f"fold {number}'s test window ({test_start:%Y-%m-%d %H:%M} to {test_end:%Y-%m-%d %H:%M}) "
                f"ends after the last row ({times[-1]:%Y-%m-%d %H:%M}): {_days(train_days)} of training, "
                f"then test windows of {_days(test_days)} every {_days(step_days)}",
            )
            if number == 1:
                problem = ("train_days", problem[1])
            break
        window_end = test_start - embargo  # the trainer reads rows before this
        train_start = first if train_mode == "expanding" else window_end - training
        before = times[bisect.bisect_left(times, train_start) : bisect.bisect_left(times, window_end)]
        validation_count = max(1, round(len(before) * validation_fraction))
        if len(before) <= validation_count:
            problem = (
                "train_days",
                f"fold {number}'s training window ({train_start:%Y-%m-%d %H:%M} to {window_end:%Y-%m-%d %H:%M}) "
                f"holds {len(before)} row{'s' if len(before) != 1 else ''}: too few for a training and a "
                "validation window",
            )
            break
        validation_start = before[len(before) - validation_count]
        train_end = validation_start - embargo
        train_rows = _count(times, train_start, train_end)
        if train_rows == 0:
            problem = (
                "train_days",
                f"fold {number}'s training window is empty once the validation window and the embargo "
                f"({embargo}) are taken from its {len(before)} rows",
            )
            break
        test_rows = _count(times, test_start, test_end)
        if test_rows == 0:
            problem = (
                "test_days",
                f"fold {number}'s test window ({test_start:%Y-%m-%d %H:%M} to {test_end:%Y-%m-%d %H:%M}) "
                "holds no rows",
            )
            break
        folds.append(
            FoldPlan(
                fold=number,
                train_start=train_start,
                train_end=train_end,
                validation_start=validation_start,
                validation_end=window_end,
                test_start=test_start,
                test_end=test_end,
                train_rows=train_rows,
                validation_rows=_count(times, validation_start, window_end),
                test_rows=test_rows,
            )
        )
    if problem is not None and (k is not None or not folds):
        param, reason = problem
        asked = f"k={k}: " if k is not None and param == "k" else ""
        raise WalkForwardInputError(f"{asked}{reason}", param=param, largest_k=len(folds))
    return folds


# --- what a walk-forward is asked to do --------------------------------------------------------


@dataclass(frozen=True)
class WalkForwardOptions:
    id: str | None = None  # default: wf-<UTC time>; the same id resumes
    model: str = "tiny"
    methods: tuple[str, ...] = ("lora",)
    train_mode: TrainMode = "expanding"
    train_days: float = 90.0
    test_days: float = 30.0
    step_days: float | None = None  # default: test_days
    k: int | None = 3  # None: as many folds as fit
    embargo_seconds: float | None = None  # default: the longest label span of the rows
    validation_fraction: float = 0.15
    start: datetime | None = None  # only rows from here ...
    end: datetime | None = None  # ... and before here
    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 8
    learning_rates: dict[str, float] = field(default_factory=dict)  # method -> rate
    seed: int = 0
    include_base: bool = True
    baselines: tuple[str, ...] | None = None  # default: every baseline
    bootstrap_reps: int | None = None
    run_jobs: Literal["inline", "queue"] = "inline"
    job_wait_seconds: float = 6 * 3600.0  # run_jobs="queue": how long to wait for a trainer worker


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


def state_path(reports_dir: Path, walk_forward_id: str) -> Path:
    return reports_dir / "walk-forwards" / f"{walk_forward_id}.json"


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
    }
    if not covered:
        out["unavailable"] = "no fold succeeded: nothing to pool"
        out["note"] = f"covers no fold of {len(folds)}"
        return out
    reports = [json.loads(Path(fold["backtest"]["json_path"]).read_text()) for fold in covered]
    names = [name for name in reports[0]["predictions"] if all(name in r["predictions"] for r in reports)]
    kinds = {p["name"]: p["kind"] for report in reports for p in report["predictors"]}
    y_true, windows, predictions = [], [], {name: [] for name in names}
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
            "note": (
                f"covers folds {', '.join(str(f['fold']) for f in covered)} of {len(folds)}"
                + (
                    "; failed: " + "; ".join(f"fold {f['fold']}: {f['error']}" for f in failed)
                    if failed
                    else ""
                )
            ),
        }
    )
    return _clean(out)


def summary_table(state: dict[str, Any]) -> str:
    """Per-fold accuracy of every predictor, the pooled accuracy, and what the pool covers."""
    pooled = state.get("pooled") or {}
    names = [row["predictor"] for row in pooled.get("predictors", [])]
    lines = [f"walk-forward {state['id']}: {pooled.get('note', 'not pooled yet')}"]
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
    return "\n".join(lines)


# --- the walk-forward --------------------------------------------------------------------


def _labelled(settings: Any, options: WalkForwardOptions) -> tuple[list[datetime], float]:
    """Headline times of the Increase/Decrease rows in range, and their longest label span."""
    from services.common.db import session_scope
    from services.common.labelled_rows import read_labelled_rows
    from services.common.prompts import DECREASE, INCREASE

    with session_scope(settings.resolved_database_url) as session:
        rows = read_labelled_rows(
            session, settings.symbol, settings.horizons[0], start=options.start, end=options.end
        )
    usable = [row for row in rows if row.label in (INCREASE, DECREASE)]
    times = [row.headline_time.astimezone(UTC) for row in usable]
    span = max(((row.exit_time - row.headline_time).total_seconds() for row in usable), default=0.0)
    return times, float(math.ceil(span))


def _horizon(settings: Any) -> timedelta:
    from services.common.labelling import timeframe_seconds

    try:
        return timedelta(seconds=timeframe_seconds(settings.horizons[0]))
    except ValueError as exc:
        raise InvalidInput(str(exc), param="horizon") from exc


def prepare_walk_forward(settings: Any, options: WalkForwardOptions) -> tuple[list[FoldPlan], float]:
    """The checks of a walk-forward that need only the rows: its folds and embargo, or bad input."""
    from services.common.methods import TrainingMethod

    if options.id is not None and not ID_PATTERN.fullmatch(options.id):
        raise InvalidInput(
            "id must be 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit",
            param="id",
        )
    if not options.methods:
        raise InvalidInput("give at least one method (lora, qlora, full)", param="methods")
    for method in options.methods:
        if method not in {m.value for m in TrainingMethod}:
            raise InvalidInput(f"unknown method {method!r}: lora, qlora or full", param="methods")
    if len(set(options.methods)) != len(options.methods):
        raise InvalidInput("a method is given twice", param="methods")
    times, span = _labelled(settings, options)
    embargo = span if options.embargo_seconds is None else float(options.embargo_seconds)
    if embargo < span:
        raise WalkForwardInputError(
            f"embargo of {embargo:g} s is shorter than the longest label span of the rows ({span:g} s): "
            "a training label would still be open when the test window starts",
            param="embargo_seconds",
        )
    plans = plan_folds(
        times,
        _horizon(settings),
        options.train_mode,
        options.train_days,
        options.test_days,
        options.step_days,
        options.k,
        timedelta(seconds=embargo),
        options.validation_fraction,
    )
    return plans, embargo


def run_walk_forward(
    settings: Any, options: WalkForwardOptions, progress: Progress | None = None
) -> WalkForwardResult:
    """Plan the folds, train and score each fold (skipping those a previous run finished), pool."""
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
        if errors:
            fold.update(state="failed", error="training failed: " + "; ".join(errors))
            _write_state(path, state)
            say(f"{where} failed: {fold['error']}")
            continue
        versions = [fold["versions"][method] for method in options.methods]
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
    state["pooled"] = pool(settings, state["folds"])
    state["finished_at"] = datetime.now(UTC).isoformat()
    _write_state(path, state)
    say(f"walk-forward {walk_id}: pooled, {state['pooled']['note']}")
    return WalkForwardResult(walk_id, path, state, summary_table(state))


def _base_dir(adapter_path: str) -> str:
    """The base model a published version names in its manifest (what the backtest loads)."""
    from services.common.adapters import read_manifest

    return read_manifest(Path(adapter_path)).base_model
