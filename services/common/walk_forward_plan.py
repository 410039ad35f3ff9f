"""A walk-forward's plan: its settings, its folds over time, and the checks that need only the rows.

One implementation for both sides of ``POST /v1/walk-forwards``: the backtest service checks a
request with it before queueing anything (a 422 naming the setting and the largest K that
fits), and the pipeline's walk-forward (``services.pipeline.walk_forward``) plans the folds it
trains and scores with it, so what the API accepted is what the worker runs.

Fold i's test window is ``test_days`` long and starts ``step_days`` after fold i-1's; its
training window ends one embargo before the test window and starts at the first row
(``expanding``) or ``train_days`` before its end (``rolling``); the first fold's training window
is ``train_days`` long in both modes. The last share of each training window
(``validation_fraction`` of its rows, one embargo before it) is the trainer's validation window,
so every row the trainer reads lies before the test window minus the embargo.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from services.common.errors import InvalidInput
from services.common.labelled_rows import BY_KNOWN
from services.common.methods import MethodName, TrainingMethod

TrainMode = Literal["expanding", "rolling"]
DAY = timedelta(days=1)
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
BaselineName = Literal["always_increase", "always_decrease", "majority", "momentum", "coin_flip"]
MAX_DAYS = 36_500.0  # a century: longer windows overflow nothing but mean nothing either


class WalkForwardInputError(InvalidInput):
    """A walk-forward the data cannot hold; ``largest_k`` says how many folds would fit.

    HTTP 422 (the request is well formed; the rows cannot hold it), CLI exit 2."""

    status_code = 422

    def __init__(self, message: str, *, param: str, largest_k: int | None = None) -> None:
        if largest_k is not None:
            message = f"{message} (largest k that fits: {largest_k})"
        super().__init__(message, param=param)
        self.largest_k = largest_k


# --- the folds -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FoldPlan:
    """One fold: the trainer's windows (train, then validation) and the backtest's test window.

    Every window holds the rows whose split time t (``labelled_rows.split_time``: known_at - 1 s,
    a second-precision row's headline time) is in start <= t < end: rows known by its end and not
    at its start. ``train_end`` is one embargo before ``validation_start``, ``validation_end``
    one embargo before ``test_start``.
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


def _check_settings(
    train_mode: str,
    train_days: float,
    test_days: float,
    step_days: float,
    k: int | None,
    embargo: timedelta,
    validation_fraction: float,
) -> None:
    if train_mode not in ("expanding", "rolling"):
        raise WalkForwardInputError(
            f"train_mode must be expanding or rolling, not {train_mode!r}", param="train_mode"
        )
    for name, value in (("train_days", train_days), ("test_days", test_days), ("step_days", step_days)):
        if not (0 < value <= MAX_DAYS and math.isfinite(value)):
            raise WalkForwardInputError(
                f"{name} must be a positive number of days (at most {MAX_DAYS:g}), not {value}", param=name
            )
    if not 0 < validation_fraction < 1:
        raise WalkForwardInputError(
            f"validation_fraction must be between 0 and 1, not {validation_fraction}",
            param="validation_fraction",
        )
    if embargo < timedelta(0):
        raise WalkForwardInputError("embargo must not be negative", param="embargo_seconds")
    if k is not None and k < 1:
        raise WalkForwardInputError(f"k must be at least 1, not {k}", param="k")


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
    """The K folds over rows with these split times (any order), or WalkForwardInputError.

    ``step_days`` None: the test length (folds' test windows back to back). ``k`` None: as
    many folds as fit. Pure: no database, nothing queued.
    """
    step_days = test_days if step_days is None else step_days
    _check_settings(train_mode, train_days, test_days, step_days, k, embargo, validation_fraction)
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
                f"holds {len(before)} row{'s' if len(before) != 1 else ''} {BY_KNOWN}: too few for a training "
                "and a validation window",
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
                f"holds no rows {BY_KNOWN}",
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
    embargo_seconds: float | None = None  # default: the longest label span of the rows in range
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


Days = Annotated[float, Field(gt=0, le=MAX_DAYS)]


class WalkForwardRequest(BaseModel):
    """The ``POST /v1/walk-forwards`` body: ``WalkForwardOptions`` as JSON (the CLI's options).

    Stored as the queue item's config, so the worker runs exactly what the API checked."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(
        None,
        pattern=ID_PATTERN.pattern,
        description="The walk-forward's id (CLI --id): its state file and versions <name>-f<i>-<method>; "
        "default wf-<UTC time>-<random>. The same name with the same settings resumes it.",
    )
    model: str = Field(
        "tiny", min_length=1, max_length=512, description="tiny, a model directory or a Hugging Face id."
    )
    methods: list[MethodName] = Field(["lora"], min_length=1, max_length=3, description="lora, qlora, full.")
    train_mode: TrainMode = "expanding"
    train_days: Days = Field(90.0, description="The first fold's training window, in days.")
    test_days: Days = Field(30.0, description="Each fold's test window, in days.")
    step_days: Days | None = Field(None, description="From one test window to the next (default: test_days).")
    k: int | None = Field(3, ge=1, le=1000, description="Folds; null: as many as fit.")
    embargo_seconds: float | None = Field(
        None,
        ge=0,
        le=MAX_DAYS * 86_400,
        description="Gap before each window (default: the longest label span).",
    )
    validation_fraction: float = Field(0.15, gt=0, lt=1)
    start: AwareDatetime | None = Field(None, description="Only rows from here ...")
    end: AwareDatetime | None = Field(None, description="... and before here.")
    epochs: float = Field(1.0, gt=0, le=1000)
    max_steps: int | None = Field(None, ge=1, le=10_000_000)
    batch_size: int = Field(8, ge=1, le=4096)
    learning_rates: dict[MethodName, Annotated[float, Field(gt=0, le=1)]] = Field(default_factory=dict)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    include_base: bool = Field(True, description="Score the untuned base too.")
    baselines: list[BaselineName] | None = Field(None, max_length=5, description="Default: every baseline.")
    bootstrap_reps: int | None = Field(None, ge=0, le=100_000)
    run_jobs: Literal["inline", "queue"] = Field(
        "inline",
        description="inline: the walk-forward worker trains; queue: a trainer service's worker does.",
    )

    def options(self, name: str) -> WalkForwardOptions:
        return WalkForwardOptions(
            id=name,
            model=self.model,
            methods=tuple(self.methods),
            train_mode=self.train_mode,
            train_days=self.train_days,
            test_days=self.test_days,
            step_days=self.step_days,
            k=self.k,
            embargo_seconds=self.embargo_seconds,
            validation_fraction=self.validation_fraction,
            start=self.start,
            end=self.end,
            epochs=self.epochs,
            max_steps=self.max_steps,
            batch_size=self.batch_size,
            learning_rates=dict(self.learning_rates),
            seed=self.seed,
            include_base=self.include_base,
            baselines=None if self.baselines is None else tuple(self.baselines),
            bootstrap_reps=self.bootstrap_reps,
            run_jobs=self.run_jobs,
        )


def state_path(reports_dir: Path, walk_forward_id: str) -> Path:
    """Where a walk-forward's state lives (plan, folds, versions, pooled figures)."""
    return reports_dir / "walk-forwards" / f"{walk_forward_id}.json"


# --- the checks that need the rows -------------------------------------------------------------


def _labelled(settings: Any, options: WalkForwardOptions) -> tuple[list[datetime], float]:
    """Split times of the Increase/Decrease rows in range, and their longest label span.

    Folds are cut where rows become known (known_at - 1 s), as the trainer's windows and the
    backtest's rows are read, and the span runs from there to the exit: a day-dated row is not
    before a fold's boundary just because its day started before it. The span is the trainer's
    own measure (services/common/embargo.py) over every row of the range, which holds every
    fold's windows, so no fold's trainer, checking the rows its windows hold, asks for more; the
    read is bounded to the range, so a row outside it (a label stretched by a candle gap before
    ``start``) is no fold's row and sets nothing."""
    from services.common.db import session_scope
    from services.common.embargo import longest_label_span_seconds, row_split_time
    from services.common.labelled_rows import read_labelled_rows
    from services.common.prompts import DECREASE, INCREASE

    with session_scope(settings.resolved_database_url) as session:
        rows = read_labelled_rows(
            session, settings.symbol, settings.horizons[0], start=options.start, end=options.end, on="known"
        )
    usable = [row for row in rows if row.label in (INCREASE, DECREASE)]
    times = [row_split_time(row).astimezone(UTC) for row in usable]
    return times, longest_label_span_seconds(usable)


def _horizon(settings: Any) -> timedelta:
    from services.common.labelling import timeframe_seconds

    try:
        return timedelta(seconds=timeframe_seconds(settings.horizons[0]))
    except ValueError as exc:
        raise InvalidInput(str(exc), param="horizon") from exc


def _check_request(options: WalkForwardOptions) -> None:
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
    if options.start is not None and options.end is not None and options.start >= options.end:
        raise InvalidInput("start must be before end", param="start")


def prepare_walk_forward(settings: Any, options: WalkForwardOptions) -> tuple[list[FoldPlan], float]:
    """The checks of a walk-forward that need only the rows: its folds and embargo, or bad input.

    ``settings``: any service's settings with the database, symbol and horizons."""
    _check_request(options)
    times, span = _labelled(settings, options)
    embargo = span if options.embargo_seconds is None else float(options.embargo_seconds)
    if embargo < span:
        raise WalkForwardInputError(
            f"embargo of {embargo:g} s is shorter than the longest label span of the rows in range ({span:g} s): "
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
