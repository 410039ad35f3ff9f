"""Baselines computed from the rows alone, with nothing a headline's reader could not know.

- always_increase / always_decrease: the constant answers (the note's untuned models and
  ChatGPT behaved like always_increase);
- majority: the majority class of rows whose outcome was known before the test window (the
  training window's labels), with that share as its p(Increase);
- momentum: the sign of the last candle that had closed when the headline appeared (a
  headline at 10:20 sees the 09:00-10:00 candle, never the 10:00 one it falls in);
- coin_flip: a seeded fair coin, p(Increase) = 0.5.

A baseline that cannot be computed for a window (majority with no row whose outcome was known
before it) raises ``BaselineUnavailable`` with the reason: the runner reports it as unavailable
and goes on with the other predictors.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np

from services.backtest.predictors.base import PredictionSet
from services.backtest.rows import EvalRows, increase_share_before, previous_closed_moves
from services.common.errors import InvalidInput
from services.common.schemas import AdapterManifest


class BaselineUnavailable(Exception):
    """This baseline has no answer for this window; the message says why (the report shows it)."""


@dataclass
class BaselinePredictor:
    name: str
    database_url: str
    seed: int = 0
    majority_before: datetime | None = None
    kind: str = "baseline"

    def manifest(self) -> AdapterManifest | None:
        return None

    def predict(self, rows: EvalRows) -> PredictionSet:
        builders = {
            "always_increase": self._constant(1),
            "always_decrease": self._constant(0),
            "majority": self._majority,
            "momentum": self._momentum,
            "coin_flip": self._coin_flip,
        }
        if self.name not in builders:
            raise InvalidInput(f"unknown baseline {self.name!r}; choose one of {', '.join(builders)}")
        return builders[self.name](rows)

    def _constant(self, label: int):  # type: ignore[no-untyped-def]
        def build(rows: EvalRows) -> PredictionSet:
            y_pred = np.full(len(rows), label, dtype=np.int8)
            return PredictionSet(self.name, self.kind, y_pred, np.full(len(rows), np.nan))

        return build

    def _majority(self, rows: EvalRows) -> PredictionSet:
        before = self.majority_before or rows.first_time
        share, count = increase_share_before(self.database_url, rows, before)
        if count == 0:
            raise BaselineUnavailable(
                f"no rows whose outcome was known before {before.isoformat()}: no majority to follow "
                "(start the window later, or set majority_before to a time with known outcomes)"
            )
        y_pred = np.full(len(rows), 1 if share >= 0.5 else 0, dtype=np.int8)
        note = f"majority of {count} rows known before {before.isoformat()}: {share:.1%} Increase"
        return PredictionSet(self.name, self.kind, y_pred, np.full(len(rows), share), [note])

    def _momentum(self, rows: EvalRows) -> PredictionSet:
        moves = previous_closed_moves(self.database_url, rows)
        missing = int(np.isnan(moves).sum())
        y_pred = np.where(np.isnan(moves), 1, moves > 0).astype(np.int8)
        notes = (
            [f"{missing} rows had no closed candle before them and were answered Increase"] if missing else []
        )
        return PredictionSet(self.name, self.kind, y_pred, np.full(len(rows), np.nan), notes)

    def _coin_flip(self, rows: EvalRows) -> PredictionSet:
        rng = np.random.default_rng(self.seed)
        y_pred = rng.integers(0, 2, size=len(rows)).astype(np.int8)
        return PredictionSet(self.name, self.kind, y_pred, np.full(len(rows), 0.5), [f"seed {self.seed}"])
