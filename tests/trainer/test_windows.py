"""Time windows: ordered, embargoed, purged; overlapping or short-embargo plans are refused."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.errors import InvalidInput
from services.trainer.config import TimeWindow
from services.trainer.windows import (
    WindowPlan,
    assert_time_ordered,
    check_plan,
    longest_label_span_seconds,
    plan_by_fraction,
    split_rows,
)

T0 = datetime(2020, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Row:
    headline_time: datetime
    exit_time: datetime


def hourly(count: int, span_minutes: int = 90) -> list[Row]:
    return [Row(T0 + timedelta(hours=i), T0 + timedelta(hours=i, minutes=span_minutes)) for i in range(count)]


def test_fraction_split_is_time_ordered_with_embargo_gaps() -> None:
    rows = hourly(100)
    embargo = longest_label_span_seconds(rows)
    assert embargo == 5400
    split = split_rows(rows, plan_by_fraction(rows, 0.2, 0.2, embargo))
    train, validation, test = split.rows["train"], split.rows["validation"], split.rows["test"]
    # the embargo (1.5 h) before each cut leaves out the one hourly row that falls in it
    assert len(test) == 20 and len(validation) == 19 and len(train) == 59
    assert split.dropped_in_gaps == 2
    assert max(r.exit_time for r in train) <= min(r.headline_time for r in validation)
    assert max(r.exit_time for r in validation) <= min(r.headline_time for r in test)
    assert_time_ordered(split)


def test_rows_whose_label_crosses_into_the_next_window_are_purged() -> None:
    rows = hourly(10, span_minutes=30)
    plan = WindowPlan(
        windows={
            "train": TimeWindow(start=T0, end=T0 + timedelta(hours=4, minutes=45)),
            "validation": TimeWindow(start=T0 + timedelta(hours=5), end=None),
        },
        embargo_seconds=0,
    )
    split = split_rows(rows, plan)
    # the 04:00 row's label runs to 04:30 (< 05:00): kept; nothing crosses, nothing purged
    assert [r.headline_time.hour for r in split.rows["train"]] == [0, 1, 2, 3, 4]
    late = [*rows, Row(T0 + timedelta(hours=4, minutes=40), T0 + timedelta(hours=5, minutes=40))]
    split = split_rows(late, plan)
    assert split.purged == 1 and len(split.rows["train"]) == 5


def test_overlapping_windows_are_refused() -> None:
    plan = WindowPlan(
        windows={
            "train": TimeWindow(start=T0, end=T0 + timedelta(days=10)),
            "validation": TimeWindow(start=T0 + timedelta(days=9), end=T0 + timedelta(days=12)),
        },
        embargo_seconds=3600,
    )
    with pytest.raises(InvalidInput, match="overlap"):
        check_plan(plan, 3600)


def test_an_embargo_shorter_than_the_label_span_is_refused() -> None:
    plan = WindowPlan(
        windows={"train": TimeWindow(end=T0), "validation": TimeWindow(start=T0)}, embargo_seconds=60
    )
    with pytest.raises(InvalidInput, match="embargo"):
        check_plan(plan, 3600)


def test_a_gap_smaller_than_the_embargo_is_refused() -> None:
    plan = WindowPlan(
        windows={
            "train": TimeWindow(end=T0),
            "validation": TimeWindow(start=T0 + timedelta(minutes=30)),
        },
        embargo_seconds=3600,
    )
    with pytest.raises(InvalidInput, match="embargo needs 3600"):
        check_plan(plan, 3600)


def test_an_open_boundary_between_windows_is_refused() -> None:
    plan = WindowPlan(windows={"train": TimeWindow(), "validation": TimeWindow(start=T0)}, embargo_seconds=0)
    with pytest.raises(InvalidInput, match="needs an end"):
        check_plan(plan, 0)


@settings(max_examples=60, deadline=None)
@given(
    offsets=st.lists(st.integers(min_value=0, max_value=50_000), min_size=30, max_size=200),
    spans=st.integers(min_value=1, max_value=240),
    validation=st.floats(min_value=0.05, max_value=0.3),
    test=st.floats(min_value=0.0, max_value=0.3),
)
def test_no_split_ever_lets_a_label_reach_into_a_later_window(
    offsets: list[int], spans: int, validation: float, test: float
) -> None:
    rows = [Row(T0 + timedelta(minutes=m), T0 + timedelta(minutes=m + spans)) for m in offsets]
    embargo = longest_label_span_seconds(rows)
    try:
        plan = plan_by_fraction(rows, validation, test, embargo)
    except InvalidInput:
        return  # too few distinct times for these shares: refused, never split badly
    check_plan(plan, embargo)
    split = split_rows(rows, plan)
    assert_time_ordered(split)
    assert sum(len(found) for found in split.rows.values()) + split.dropped_in_gaps + split.purged == len(
        rows
    )
