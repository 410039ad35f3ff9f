"""Splits, embargoes and walk-forward folds place rows by when they were known (issue 11).

A headline dated only to the day has headline_time = its day's first midnight in its zone and
known_at = the next one; the labeller enters at the first candle opening at or after known_at.
Rows of every precision (second, minute, hour, day) in zones with whole, half and 45-minute
offsets and DST changes are split by the trainer's windows and the walk-forward's plan; for every
split: each row is known inside its window (after its start, by its end), no row of an earlier
window is known at or after a later window's start, and no earlier row's label window
[entry_time, exit_time] reaches into a later window. Second-precision rows split exactly as
they did on headline_time.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.errors import InvalidInput
from services.common.time_precision import Precision
from services.common.walk_forward_plan import WalkForwardInputError, plan_folds
from services.trainer.config import TimeWindow
from services.trainer.windows import (
    WindowPlan,
    WindowSplit,
    assert_time_ordered,
    check_plan,
    longest_label_span_seconds,
    plan_by_fraction,
    row_time,
    split_rows,
    window_bounds,
)
from tests.support.known_at_rows import Row, labelled

T0 = datetime(2020, 3, 1, tzinfo=UTC)  # the range below crosses the US, EU and Lord Howe DST changes
SPAN_SECONDS = 120 * 86_400
HOUR = 3600
ZONES = (
    "UTC",
    "America/New_York",
    "Europe/London",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
)


row_specs = st.tuples(
    st.integers(min_value=0, max_value=SPAN_SECONDS),
    st.sampled_from(list(Precision)),
    st.sampled_from(ZONES),
)


def build(specs: Sequence[tuple[int, Precision, str]], horizon_hours: int) -> list[Row]:
    return [
        labelled(i, T0 + timedelta(seconds=offset), precision, zone, horizon_hours)
        for i, (offset, precision, zone) in enumerate(specs)
    ]


def check_known_inside(split: WindowSplit[Row], rows: Sequence[Row]) -> None:
    """The properties every split must have, stated on known_at and [entry_time, exit_time]."""
    ordered = split.plan.ordered()
    for name, window in ordered:
        for row in split.rows[name]:
            # known by the window's end and not at its start: a row exists only once known
            assert window.end is None or row.known_at <= window.end, (name, row)
            assert window.start is None or row.known_at > window.start, (name, row)
            assert row.entry_time >= row.known_at
    for (early_name, _), (late_name, late) in itertools.combinations(ordered, 2):
        assert late.start is not None
        first_entry = min((row.entry_time for row in split.rows[late_name]), default=None)
        for row in split.rows[early_name]:
            assert row.known_at < late.start, (early_name, late_name, row)
            assert row.exit_time <= late.start, (early_name, late_name, row)  # label window ends first
            assert first_entry is None or row.exit_time <= first_entry
    kept = sum(len(found) for found in split.rows.values())
    assert kept + split.dropped_in_gaps + split.purged == len(rows)


@settings(max_examples=150, deadline=None)
@given(
    specs=st.lists(row_specs, min_size=40, max_size=200),
    horizon_hours=st.sampled_from([1, 4, 24]),
    validation=st.floats(min_value=0.05, max_value=0.3),
    test=st.floats(min_value=0.0, max_value=0.3),
)
def test_fraction_splits_keep_every_row_inside_the_window_it_became_known_in(
    specs: list[tuple[int, Precision, str]], horizon_hours: int, validation: float, test: float
) -> None:
    rows = build(specs, horizon_hours)
    embargo = longest_label_span_seconds(rows)
    try:
        plan = plan_by_fraction(rows, validation, test, embargo)
    except InvalidInput:
        return  # too few rows for these shares and this embargo: refused, never split badly
    check_plan(plan, embargo)
    split = split_rows(rows, plan)
    check_known_inside(split, rows)
    assert_time_ordered(split)


@settings(max_examples=150, deadline=None)
@given(
    specs=st.lists(row_specs, min_size=20, max_size=200),
    horizon_hours=st.sampled_from([1, 4, 24]),
    cuts=st.tuples(
        st.integers(min_value=86_400, max_value=SPAN_SECONDS // 2),
        st.integers(min_value=0, max_value=10 * 86_400),
        st.integers(min_value=3600, max_value=20 * 86_400),
        st.integers(min_value=0, max_value=10 * 86_400),
    ),
)
def test_explicit_windows_at_any_second_never_train_on_a_row_known_after_them(
    specs: list[tuple[int, Precision, str]], horizon_hours: int, cuts: tuple[int, int, int, int]
) -> None:
    """Boundaries at arbitrary seconds (not midnights): a day-dated row whose day starts before a
    boundary and ends after it is known after it, so it is never in the window before it."""
    rows = build(specs, horizon_hours)
    embargo = longest_label_span_seconds(rows)
    train_end = T0 + timedelta(seconds=cuts[0])
    validation_start = train_end + timedelta(seconds=embargo + cuts[1])
    validation_end = validation_start + timedelta(seconds=cuts[2])
    test_start = validation_end + timedelta(seconds=embargo + cuts[3])
    plan = WindowPlan(
        windows={
            "train": TimeWindow(end=train_end),
            "validation": TimeWindow(start=validation_start, end=validation_end),
            "test": TimeWindow(start=test_start),
        },
        embargo_seconds=embargo,
    )
    check_plan(plan, embargo)
    split = split_rows(rows, plan)
    check_known_inside(split, rows)
    assert_time_ordered(split)


def test_a_day_dated_row_known_after_the_training_window_ends_is_not_trained_on() -> None:
    """New York, 2 March 2020, date only: headline_time 05:00 UTC that day, known 05:00 UTC on
    the 3rd. A training window ending at midnight UTC on the 3rd started before the row's day
    ended; splitting on headline_time put the row in it (known 5 hours after the window's end)."""
    new_york = labelled(0, datetime(2020, 3, 2, 12, tzinfo=UTC), Precision.day, "America/New_York", 1)
    assert new_york.headline_time == datetime(2020, 3, 2, 5, tzinfo=UTC)
    assert new_york.known_at == datetime(2020, 3, 3, 5, tzinfo=UTC)
    utc_day = labelled(
        1, datetime(2020, 3, 2, 12, tzinfo=UTC), Precision.day, "UTC", 1
    )  # known at 3 Mar 00:00
    seconds = [labelled(2 + i, T0 + timedelta(hours=i), Precision.second, "UTC", 1) for i in range(24)]
    rows = [new_york, utc_day, *seconds]
    train_end = datetime(2020, 3, 3, tzinfo=UTC)
    plan = WindowPlan(
        windows={
            "train": TimeWindow(end=train_end),
            "validation": TimeWindow(start=train_end + timedelta(days=2)),
        },
        embargo_seconds=2 * 86_400,
    )
    check_plan(plan, longest_label_span_seconds(rows))
    split = split_rows(rows, plan)
    trained = {row.id for row in split.rows["train"]}
    assert new_york.id not in trained and split.dropped_in_gaps == 1
    assert utc_day.id in trained  # the UTC day's rows are known at midnight: by the window's end
    check_known_inside(split, rows)


def test_the_embargo_is_the_wait_from_when_a_row_is_known_to_its_exit() -> None:
    """A day-dated row's label is decided one horizon after its day ends, not a day plus a horizon
    after its headline_time; a second-precision row's span is exit - headline_time as before."""
    day = labelled(0, datetime(2020, 3, 2, 12, tzinfo=UTC), Precision.day, "UTC", 1)
    second = labelled(1, datetime(2020, 3, 2, 12, 20, 5, tzinfo=UTC), Precision.second, "UTC", 1)
    assert longest_label_span_seconds([day]) == (day.exit_time - day.known_at).total_seconds() + 1 == 3601
    assert longest_label_span_seconds([second]) == (second.exit_time - second.headline_time).total_seconds()


def split_on_headline_time(rows: Sequence[Row], plan: WindowPlan) -> dict[str, list[int]]:
    """The rule before known_at: windows and purges on headline_time (the reference for second rows)."""
    ordered = plan.ordered()
    next_start = {name: nxt.start for (name, _), (_, nxt) in itertools.pairwise(ordered)}
    found: dict[str, list[int]] = {name: [] for name, _ in ordered}
    for row in sorted(rows, key=lambda r: r.headline_time):
        name = next((name for name, window in ordered if window.contains(row.headline_time)), None)
        boundary = next_start.get(name) if name else None
        if name is not None and (boundary is None or row.exit_time <= boundary):
            found[name].append(row.id)
    return found


@settings(max_examples=100, deadline=None)
@given(
    offsets=st.lists(st.integers(min_value=0, max_value=SPAN_SECONDS), min_size=30, max_size=200),
    zone=st.sampled_from(ZONES),
    horizon_hours=st.sampled_from([1, 4]),
    validation=st.floats(min_value=0.05, max_value=0.3),
    test=st.floats(min_value=0.05, max_value=0.3),
    cut=st.integers(min_value=0, max_value=SPAN_SECONDS),
)
def test_second_precision_rows_split_exactly_as_on_headline_time(
    offsets: list[int], zone: str, horizon_hours: int, validation: float, test: float, cut: int
) -> None:
    rows = build([(offset, Precision.second, zone) for offset in offsets], horizon_hours)
    assert all(row_time(row) == row.headline_time for row in rows)
    embargo = longest_label_span_seconds(rows)
    assert embargo == math.ceil(max((r.exit_time - r.headline_time).total_seconds() for r in rows))
    times = sorted(row.headline_time for row in rows)
    try:
        plan = plan_by_fraction(rows, validation, test, embargo)
    except InvalidInput:
        return
    # the cuts fall on the same rows' headline times as before
    assert plan.windows["test"].start == times[len(times) - round(len(times) * test)]
    split = split_rows(rows, plan)
    assert {name: [r.id for r in found] for name, found in split.rows.items()} == split_on_headline_time(
        rows, plan
    )
    edge = T0 + timedelta(seconds=cut)  # explicit windows at any second, rows on them included
    explicit = WindowPlan(
        windows={
            "train": TimeWindow(end=edge),
            "validation": TimeWindow(start=edge + timedelta(seconds=embargo)),
        },
        embargo_seconds=embargo,
    )
    split = split_rows(rows, explicit)
    assert {name: [r.id for r in found] for name, found in split.rows.items()} == split_on_headline_time(
        rows, explicit
    )


def within(rows: Sequence[Row], start: datetime, end: datetime) -> list[Row]:
    """What the backtest reads for a window (labelled_rows on="known"): start <= known_at - 1 s < end."""
    return [row for row in rows if start <= row_time(row) < end]


@settings(max_examples=60, deadline=None)
@given(
    specs=st.lists(row_specs, min_size=150, max_size=400),
    horizon_hours=st.sampled_from([1, 4]),
    train_mode=st.sampled_from(["expanding", "rolling"]),
    days=st.tuples(st.integers(min_value=10, max_value=40), st.integers(min_value=3, max_value=20)),
)
def test_walk_forward_folds_train_only_on_rows_whose_labels_end_before_their_test_window(
    specs: list[tuple[int, Precision, str]], horizon_hours: int, train_mode: str, days: tuple[int, int]
) -> None:
    """Each fold as the walk-forward runs it: the trainer's explicit windows over every row, the
    backtest's test window read on the same axis, the leakage guard on the manifest it records."""
    rows = build(specs, horizon_hours)
    embargo = longest_label_span_seconds(rows)
    try:
        folds = plan_folds(
            [row_time(row) for row in rows], timedelta(hours=horizon_hours), train_mode, days[0], days[1],
            None, None, timedelta(seconds=embargo),
        )  # fmt: skip
    except WalkForwardInputError:
        return
    for fold in folds:
        plan = WindowPlan(
            windows={
                "train": TimeWindow(start=fold.train_start, end=fold.train_end),
                "validation": TimeWindow(start=fold.validation_start, end=fold.validation_end),
            },
            embargo_seconds=embargo,
        )
        needed = longest_label_span_seconds(rows, window_bounds(plan))  # what the fold's trainer asks
        assert needed <= embargo  # its windows lie in the plan's range: it never asks more
        check_plan(plan, needed)
        split = split_rows(rows, plan)
        check_known_inside(split, rows)
        test_rows = within(rows, fold.test_start, fold.test_end)
        assert len(test_rows) == fold.test_rows and len(split.rows["train"]) <= fold.train_rows
        read = [row for found in split.rows.values() for row in found]
        for row in read:  # nothing the trainer reads is known, or still open, when the test starts
            assert row.known_at < fold.test_start and row.exit_time <= fold.test_start
        for row in test_rows:
            assert row.known_at > fold.test_start and row.entry_time >= row.known_at
        if split.rows["train"]:  # the leakage guard's premise on the manifest the trainer writes
            end = row_time(split.rows["train"][-1]) + timedelta(seconds=embargo)
            assert all(row.exit_time <= end for row in split.rows["train"])
            assert all(row_time(row) > end for row in test_rows)  # the guard lets the fold be scored


@pytest.mark.parametrize("zone", ZONES)
def test_a_day_row_sits_at_the_last_second_of_its_day(zone: str) -> None:
    row = labelled(0, datetime(2020, 3, 8, 12, tzinfo=UTC), Precision.day, zone, 1)
    assert row_time(row) == row.known_at - timedelta(seconds=1)
    assert row.headline_time < row_time(row) < row.known_at <= row.entry_time
