"""The embargo a job needs comes from the rows its windows hold, not from every row it was given.

Planted rows: one an hour from 2020-01-01 00:00 (second precision), each label one hour long
(3600 s). A long label (its entry waited for a candle gap) before the first window or after the
last is never read: it sets nothing. One inside a window does, and an embargo shorter than it is
refused naming its span. With shares the windows cover every row, so every row counts. The
walk-forward's plan uses the same measure (services/common/embargo.py) over its whole range.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from services.common import embargo as shared
from services.common.errors import InvalidInput
from services.common.schemas import LabelledRowOut
from services.trainer import windows
from services.trainer.config import DataConfig, TimeWindow
from services.trainer.datasets import trend_split
from tests.trainer.planted import START, planted_rows

HOUR = timedelta(hours=1)
TRAIN = {"start": START, "end": START + 100 * HOUR}
VALIDATION = {"start": START + 102 * HOUR, "end": START + 140 * HOUR}


def _rows(*stretched: tuple[int, datetime, timedelta]) -> list[LabelledRowOut]:
    """The planted rows plus rows (id, headline time, wait for the entry) exiting an hour after it."""
    rows = planted_rows(200)
    for number, moment, wait in stretched:
        rows.append(
            dict(
                rows[0], id=number, headline_id=number, headline_time=moment.isoformat(),
                entry_time=(moment + wait).isoformat(), exit_time=(moment + wait + HOUR).isoformat(),
            )
        )  # fmt: skip
    return sorted((LabelledRowOut.model_validate(row) for row in rows), key=lambda row: row.headline_time)


def _explicit(embargo: float | None = None) -> DataConfig:
    return DataConfig(source="file", train=TRAIN, validation=VALIDATION, embargo_seconds=embargo)


def test_long_labels_outside_the_windows_set_no_embargo() -> None:
    before = (
        9001,
        START - 5 * HOUR + timedelta(minutes=10, seconds=59),
        timedelta(hours=2, minutes=49, seconds=1),
    )
    gap = (9002, START + 101 * HOUR + timedelta(minutes=30), 3 * HOUR)  # in the embargo gap: dropped
    after = (9003, START + 150 * HOUR + timedelta(minutes=30), 5 * HOUR)  # after validation: never read
    rows = _rows(before, gap, after)
    assert windows.longest_label_span_seconds(rows) == 6 * 3600  # every row: the one after the windows
    split = trend_split(rows, _explicit())
    assert split.embargo_seconds == 3600  # the default: the planted labels, the only ones read
    assert trend_split(rows, _explicit(3600)).embargo_seconds == 3600  # was refused: "(21600 s)"
    read = {example.key for example in split.train + split.validation}
    assert not read & {"row:9001", "row:9002", "row:9003"}


def test_a_long_label_inside_a_window_sets_the_embargo_and_a_shorter_one_is_refused() -> None:
    inside = (9004, START + 50 * HOUR + timedelta(minutes=30), 3 * HOUR + timedelta(minutes=30))
    rows = _rows(inside)
    with pytest.raises(InvalidInput) as caught:
        trend_split(rows, _explicit(3600))
    assert "shorter than the longest label span of the rows in the windows (16200 s)" in caught.value.message
    assert caught.value.param == "data.embargo_seconds"
    with pytest.raises(
        InvalidInput, match="the embargo needs 16200 s"
    ):  # the default: 2 h gaps are too short
        trend_split(rows, _explicit())


def test_with_shares_every_row_counts() -> None:
    before = (9001, START - 5 * HOUR, 3 * HOUR)
    split = trend_split(_rows(before), DataConfig(source="file"))
    assert split.embargo_seconds == 4 * 3600  # the cuts depend on the embargo; the windows hold every row


def test_the_trainer_and_the_plan_measure_with_the_same_function() -> None:
    rows = _rows((9001, START - 5 * HOUR, 3 * HOUR))
    bounds = [(START, START + 50 * HOUR), (START + 60 * HOUR, None)]
    assert shared.longest_label_span_seconds(rows, bounds) == 3600
    assert shared.longest_label_span_seconds(rows, [(START - 6 * HOUR, START)]) == 4 * 3600
    assert shared.longest_label_span_seconds(rows, [(START + 300 * HOUR, None)]) == 0.0  # no row inside
    windowed = windows.WindowPlan(
        windows={"validation": TimeWindow(**VALIDATION), "train": TimeWindow(**TRAIN)}, embargo_seconds=3600
    )  # the bounds come in time order, whatever the order given
    assert windows.window_bounds(windowed) == [
        (TRAIN["start"], TRAIN["end"]),
        (VALIDATION["start"], VALIDATION["end"]),
    ]
