"""The embargo labelled rows need: one measure for the trainer and the walk-forward's plan.

The gap between two consecutive windows must outlast the label of every row the earlier window
holds: a row at split time t (``labelled_rows.split_time``: known_at - 1 s) in a window ending
at T has its label decided at its exit time, at most ``t + span`` < ``T + span``, so a next window
starting ``span`` or more after T holds no row whose outcome a training label already saw.

Only the rows inside the windows a job reads count. A row before them (a label stretched by a
candle gap years earlier) or after them (a row not yet known when the job's windows end) is
neither trained on nor scored, and letting it set the embargo would make a job's windows depend
on rows it never reads, later ones included. The trainer checks the rows its own windows hold;
the walk-forward plans on every row of its range, which holds every fold's windows, so the
default it picks is never shorter than what any fold's trainer asks for.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Protocol

from services.common.labelled_rows import split_time

Bounds = tuple[datetime | None, datetime | None]  # start <= t < end on the split axis; None: open
EVERY_ROW: tuple[Bounds, ...] = ((None, None),)


class SpannedRow(Protocol):
    """A labelled row; ``known_at`` is read when present (a row without one is second-precision)."""

    @property
    def headline_time(self) -> datetime: ...
    @property
    def exit_time(self) -> datetime: ...


def row_split_time(row: SpannedRow) -> datetime:
    """Where a row sits on the axis of every window: known_at - 1 s, not its headline time."""
    return split_time(row.headline_time, getattr(row, "known_at", None))


def _inside(moment: datetime, windows: Sequence[Bounds]) -> bool:
    return any((start is None or moment >= start) and (end is None or moment < end) for start, end in windows)


def longest_label_span_seconds(rows: Iterable[SpannedRow], windows: Sequence[Bounds] = EVERY_ROW) -> float:
    """The least embargo for the rows whose split time lies in one of ``windows``: the longest
    time a label stays undecided after its split time (the wait for the entry candle plus the
    horizon), whole seconds rounded up; 0 when no row is inside."""
    spans = [
        (row.exit_time - moment).total_seconds()
        for row in rows
        if _inside(moment := row_split_time(row), windows)
    ]
    return float(math.ceil(max(spans))) if spans else 0.0
