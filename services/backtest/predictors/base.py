"""What every predictor returns, and what the runner needs to know about it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from services.backtest.rows import EvalRows
from services.common.prompts import INCREASE, btc_trend_prompt
from services.common.schemas import AdapterManifest


@dataclass
class PredictionSet:
    """One predictor's answer for every row, in row order."""

    name: str
    kind: str  # baseline | service | openai | local
    y_pred: np.ndarray  # int8, 1 = Increase
    p_increase: np.ndarray  # float; NaN everywhere when the predictor gives no probability
    notes: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


class Predictor(Protocol):
    name: str
    kind: str

    def manifest(self) -> AdapterManifest | None:
        """The adapter's manifest when the predictor is a trained adapter (for the leakage guard)."""
        ...

    def predict(self, rows: EvalRows) -> PredictionSet: ...


def from_labels(name: str, kind: str, labels: list[str], probabilities: list[float | None]) -> PredictionSet:
    """Build a PredictionSet from label names and optional p(Increase) per row."""
    y_pred = np.array([label == INCREASE for label in labels], dtype=np.int8)
    have_all = all(p is not None for p in probabilities)
    p_increase = np.array(probabilities if have_all else [np.nan] * len(labels), dtype=float)
    return PredictionSet(name, kind, y_pred, p_increase)


def prompts_of(rows: EvalRows) -> list[str]:
    """The btc-trend prompt of each row, built by the shared prompt module (as in training)."""
    return [
        btc_trend_prompt(headline, published_at, situation, precision)
        for headline, published_at, situation, precision in zip(
            rows.headline, rows.published_at, rows.market_situation, rows.precisions(), strict=True
        )
    ]
