"""Time-ordered train / validation / test windows with an embargo between them.

No shuffling across time: every validation row is later than every training row, every
test row later than every validation row, and a gap of at least the longest label span
(``exit_time`` minus the row's split time) of the rows the windows hold separates them, so no
training label was still being decided when the next window began. Rows outside every window
are not read, so they set nothing (services/common/embargo.py). The backtest imports this module for its leakage guard.

Rows are placed by their split time (``services.common.labelled_rows.split_time``: ``known_at -
1 s``), never by ``headline_time``: a day-dated headline's headline_time is its day's first
midnight, but it exists for a model only at the next one, so a window ending between the two
must not train on it. For second-precision rows the split time is the headline time.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Generic, TypeVar

from services.common.embargo import Bounds
from services.common.embargo import SpannedRow as TimedRow

# The embargo measure is the walk-forward plan's too: one function, so the two cannot disagree.
from services.common.embargo import longest_label_span_seconds as longest_label_span_seconds
from services.common.embargo import row_split_time as row_time
from services.common.errors import InvalidInput
from services.trainer.config import TimeWindow

WINDOW_NAMES = ("train", "validation", "test")


@dataclass(frozen=True)
class WindowPlan:
    """Named windows in time order and the embargo between consecutive ones."""

    windows: dict[str, TimeWindow]
    embargo_seconds: float

    def ordered(self) -> list[tuple[str, TimeWindow]]:
        return [(name, self.windows[name]) for name in WINDOW_NAMES if name in self.windows]


def window_bounds(plan: WindowPlan) -> list[Bounds]:
    """The plan's windows as bounds on the split axis, for ``longest_label_span_seconds``."""
    return [(window.start, window.end) for _, window in plan.ordered()]


RowT = TypeVar("RowT", bound=TimedRow)


@dataclass
class WindowSplit(Generic[RowT]):
    rows: dict[str, list[RowT]]
    plan: WindowPlan
    dropped_in_gaps: int = 0  # rows in an embargo gap or outside every window
    purged: int = 0  # rows whose label window ran into the next window
    counts: dict[str, int] = field(default_factory=dict)


def check_plan(plan: WindowPlan, min_embargo_seconds: float) -> None:
    """Refuse overlapping windows, windows out of time order and embargoes that are too short."""
    if plan.embargo_seconds < min_embargo_seconds:
        raise InvalidInput(
            f"embargo of {plan.embargo_seconds:g} s is shorter than the longest label span "
            f"of the rows in the windows ({min_embargo_seconds:g} s): a training label would overlap "
            "the next window",
            param="data.embargo_seconds",
        )
    ordered = plan.ordered()
    for (prev_name, prev), (next_name, nxt) in itertools.pairwise(ordered):
        if prev.end is None or nxt.start is None:
            raise InvalidInput(
                f"windows {prev_name} and {next_name} overlap: {prev_name} needs an end and "
                f"{next_name} a start",
                param=f"data.{next_name}",
            )
        gap = (nxt.start - prev.end).total_seconds()
        if gap < 0:
            raise InvalidInput(
                f"windows {prev_name} (ends {prev.end.isoformat()}) and {next_name} "
                f"(starts {nxt.start.isoformat()}) overlap or are out of time order",
                param=f"data.{next_name}",
            )
        if gap < plan.embargo_seconds:
            raise InvalidInput(
                f"{next_name} starts {gap:g} s after {prev_name} ends; the embargo needs "
                f"{plan.embargo_seconds:g} s",
                param=f"data.{next_name}",
            )


def plan_by_fraction(
    rows: Sequence[TimedRow], validation_fraction: float, test_fraction: float, embargo_seconds: float
) -> WindowPlan:
    """Cut time-sorted rows at the validation and test shares; the embargo comes out of the
    window before each cut, so the later window keeps its first rows."""
    times = sorted(row_time(row) for row in rows)  # by when known, not the period's start
    if not times:
        raise InvalidInput("no labelled rows to split", param="data")
    embargo = timedelta(seconds=embargo_seconds)
    count = len(times)
    test_count = round(count * test_fraction)
    validation_count = round(count * validation_fraction)
    windows: dict[str, TimeWindow] = {}
    end: datetime | None = None
    if test_count:
        test_start = times[count - test_count]
        windows["test"] = TimeWindow(start=test_start, end=None)
        end = test_start - embargo
    if validation_count:
        validation_start = times[count - test_count - validation_count]
        if end is not None and validation_start >= end:
            raise InvalidInput("too few rows before the test window for a validation window and its embargo")
        windows["validation"] = TimeWindow(start=validation_start, end=end)
        end = validation_start - embargo
    if end is not None and end <= times[0]:
        raise InvalidInput(
            f"the embargo of {embargo_seconds:g} s leaves no training rows; give more rows or smaller shares",
            param="data",
        )
    windows["train"] = TimeWindow(start=None, end=end)
    return WindowPlan(windows=windows, embargo_seconds=embargo_seconds)


def split_rows(rows: Sequence[RowT], plan: WindowPlan) -> WindowSplit[RowT]:
    """Put each row in its window; drop rows in the gaps and purge labels that cross a cut."""
    ordered = plan.ordered()
    split: WindowSplit[RowT] = WindowSplit(rows={name: [] for name, _ in ordered}, plan=plan)
    next_start = {name: nxt.start for (name, _), (_, nxt) in itertools.pairwise(ordered)}
    for row in sorted(rows, key=row_time):
        # A window holds the rows known by its end and not at its start (split time in [start, end)).
        moment = row_time(row)
        name = next((name for name, window in ordered if window.contains(moment)), None)
        if name is None:
            split.dropped_in_gaps += 1
            continue
        boundary = next_start.get(name)
        if boundary is not None and row.exit_time > boundary:
            split.purged += 1
            continue
        split.rows[name].append(row)
    split.counts = {name: len(found) for name, found in split.rows.items()}
    return split


def assert_time_ordered(split: WindowSplit[RowT]) -> None:
    """The no-look-ahead invariant, checked on the result (tests and the backtest call it)."""
    ordered = [split.rows[name] for name in WINDOW_NAMES if split.rows.get(name)]
    for earlier, later in itertools.pairwise(ordered):
        last_exit = max(row.exit_time for row in earlier)
        first_start = min(row_time(row) for row in later)  # before its known_at, so before its entry
        if last_exit > first_start:
            raise AssertionError(f"a label ends at {last_exit} after the next window starts at {first_start}")
