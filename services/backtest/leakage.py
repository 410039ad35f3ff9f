"""The leakage guard: no adapter is scored on rows it could have learnt from.

An adapter's manifest records its training window; rows up to its last training row plus
the embargo (which covers the label horizon, so no training label's candles reach into the
test) are in-sample, rows compared by their split time (known_at - 1 s) as the trainer's
windows place them. Scoring them is refused unless the caller allows overlap, and then the
report says so on its first line.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.backtest.predictors.base import Predictor
from services.backtest.rows import EvalRows
from services.common.errors import InvalidInput


class LeakageError(InvalidInput):
    """The test window overlaps an adapter's training window (plus embargo). Move the window
    start past the date in the message, or pass allow_overlap / --allow-overlap."""


@dataclass(frozen=True)
class Overlap:
    predictor: str
    adapter: str
    training_end_with_embargo: str | None
    rows_in_sample: int

    def describe(self) -> str:
        if self.training_end_with_embargo is None:
            return f"{self.predictor}: adapter {self.adapter!r} records no training window, so no row is provably out-of-time"
        return (
            f"{self.predictor}: adapter {self.adapter!r} trained on rows up to {self.training_end_with_embargo} "
            f"(with embargo); {self.rows_in_sample} scored rows are not after it"
        )


def find_overlaps(predictors: list[Predictor], rows: EvalRows) -> list[Overlap]:
    overlaps = []
    for predictor in predictors:
        manifest = predictor.manifest()
        if manifest is None:
            continue
        end = manifest.training_window.end_with_embargo()
        if end is None:
            overlaps.append(Overlap(predictor.name, manifest.name, None, len(rows)))
            continue
        # On the trainer's split axis (known_at - 1 s), where last_row_time and the embargo are
        # measured: a row after the end became known after every training label was decided.
        in_sample = int(np.sum(rows.split_times() <= end.timestamp()))
        if in_sample:
            overlaps.append(Overlap(predictor.name, manifest.name, end.isoformat(), in_sample))
    return overlaps


def guard(predictors: list[Predictor], rows: EvalRows, allow_overlap: bool) -> list[Overlap]:
    """Raise LeakageError on any overlap unless allowed; return the overlaps (for the report)."""
    overlaps = find_overlaps(predictors, rows)
    if overlaps and not allow_overlap:
        details = "; ".join(overlap.describe() for overlap in overlaps)
        raise LeakageError(
            f"refusing to score adapters on rows they may have trained on: {details}. "
            "Start the window later, or pass --allow-overlap (allow_overlap) to run anyway with the report marked"
        )
    return overlaps
