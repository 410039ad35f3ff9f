"""Window-aware verdicts: is a predictor biased, and is a model better than each baseline?

Headlines that share a label window share its outcome (7,150 crypto headlines on daily candles
fell in 183 windows), so rows are not independent observations and a test that treats them as
such is far too confident: a seeded coin flip came out "biased" at binomial p = 0.007. Every
verdict here comes from a **block bootstrap over label windows**: a replicate draws as many
windows as there are, with replacement, and rows sharing a window move together. The effective
sample is the number of label windows, and it stands beside every interval.

- Bias: the gap (share predicted Increase minus share actually Increase) with its percentile
  interval; biased when the interval at level 1 - alpha excludes 0. Beside it, the two-sided
  binomial p-value that takes rows as independent, labelled as such.
- Model against baseline, on the same rows: the paired accuracy difference (model minus
  baseline, rows where both are right or both wrong add 0); better when the interval's lower
  end is above 0. Beside it, the exact McNemar p-value (binomial test of the discordant rows),
  which again takes rows as independent.

Folds: a ``Sample`` may carry the fold of every row (the walk-forward folds); windows are then
resampled within their fold (a stratified bootstrap), so each replicate keeps every fold's
size and the pooled figures weigh the folds as the data do. With one fold it is the plain
block bootstrap.

The bootstrap p-value is the two-sided percentile one, 2 min(P*(theta* <= 0), P*(theta* >= 0)),
with the (1 + count) / (1 + reps) correction so it is never 0; the verdict is the interval's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import binomtest

from services.backtest.bias import bias_test

_INDEX_DRAWS_PER_CHUNK = 4_000_000  # window indices drawn at once (32 MB of int64)


@dataclass(frozen=True)
class Sample:
    """The rows scored, grouped in label windows (and folds): what the bootstrap resamples."""

    window: np.ndarray  # per row: 0..windows-1
    fold_of_window: np.ndarray  # per window: 0..folds-1

    @classmethod
    def of(cls, window: np.ndarray, fold: np.ndarray | None = None) -> Sample:
        """From each row's window id (and fold id); ids are renumbered, a window lies in one fold."""
        window = np.asarray(window)
        if window.ndim != 1:
            raise ValueError("window must hold one id per row")
        unique, first, inverse = np.unique(window, return_index=True, return_inverse=True)
        inverse = inverse.reshape(-1).astype(np.int64)
        if fold is None:
            folds = np.zeros(unique.size, dtype=np.int64)
        else:
            fold = np.asarray(fold)
            if fold.shape != window.shape:
                raise ValueError("fold must hold one id per row")
            folds = np.unique(fold, return_inverse=True)[1].reshape(-1).astype(np.int64)
            per_window = folds[first]
            if np.any(per_window[inverse] != folds):
                raise ValueError("a label window lies in two folds: give windows ids unique across folds")
            folds = per_window
        return cls(inverse, folds)

    @classmethod
    def from_folds(cls, windows_per_fold: Sequence[np.ndarray]) -> Sample:
        """From each fold's own window ids (0..W_f-1 per fold, as ``EvalRows.windows()`` gives)."""
        ids, folds, offset = [], [], 0
        for number, window in enumerate(windows_per_fold):
            window = np.asarray(window, dtype=np.int64)
            ids.append(window + offset)
            folds.append(np.full(window.size, number, dtype=np.int64))
            offset += int(window.max()) + 1 if window.size else 0
        return cls.of(np.concatenate(ids), np.concatenate(folds))

    @property
    def rows(self) -> int:
        return int(self.window.size)

    @property
    def windows(self) -> int:
        return int(self.fold_of_window.size)

    @property
    def folds(self) -> int:
        return int(self.fold_of_window.max()) + 1 if self.fold_of_window.size else 0

    def per_window(self, columns: np.ndarray) -> np.ndarray:
        """(windows, k) sums of the (rows, k) ``columns`` over each window's rows."""
        columns = np.asarray(columns, dtype=float)
        if columns.ndim == 1:
            columns = columns[:, None]
        order = np.argsort(self.window, kind="stable")
        sorted_window = self.window[order]
        starts = np.flatnonzero(np.concatenate([[True], sorted_window[1:] != sorted_window[:-1]]))
        return np.add.reduceat(columns[order], starts, axis=0)

    def unavailable(self, reps: int) -> str | None:
        """Why no bootstrap can run on this sample, or None."""
        if reps <= 0:
            return "bootstrap turned off (bootstrap_reps = 0): no window-aware interval, no verdict"
        if self.windows < 2:
            return (
                f"{self.windows} label window{'s' if self.windows != 1 else ''}: a block bootstrap needs "
                "at least 2, so there is no window-aware interval and no verdict"
            )
        return None


def resample_totals(sample: Sample, per_window: np.ndarray, reps: int, seed: int) -> np.ndarray:
    """(reps, folds, k): sums of ``per_window`` (windows, k) over windows drawn within each fold.

    Each replicate draws W_f windows uniformly with replacement in fold f. When a fold's
    windows take few distinct values (integer counts do), drawing how many of each distinct
    row from a multinomial is the same distribution at a fraction of the cost.
    """
    per_window = np.asarray(per_window, dtype=float)
    rng = np.random.default_rng(seed)
    out = np.zeros((reps, sample.folds, per_window.shape[1]))
    for fold in range(sample.folds):
        block = per_window[sample.fold_of_window == fold]
        size = block.shape[0]
        if per_window.shape[1] <= 4:
            distinct, frequency = np.unique(block, axis=0, return_counts=True)
            if 4 * distinct.shape[0] <= size:
                out[:, fold] = rng.multinomial(size, frequency / size, size=reps) @ distinct
                continue
        chunk = max(1, _INDEX_DRAWS_PER_CHUNK // size)
        for start in range(0, reps, chunk):
            count = min(chunk, reps - start)
            picks = rng.integers(0, size, size=(count, size)) + (np.arange(count) * size)[:, None]
            drawn = np.bincount(picks.ravel(), minlength=count * size).reshape(count, size)
            out[start : start + count, fold] = drawn.astype(np.float64) @ block  # float: BLAS
    return out


def percentile_interval(replicates: np.ndarray, level: float) -> list[float]:
    tail = (1 - level) / 2 * 100
    return [float(v) for v in np.nanpercentile(replicates, [tail, 100 - tail])]


def bootstrap_p_value(replicates: np.ndarray, null: float = 0.0) -> float:
    """Two-sided percentile p-value of ``null``: 2 min(P*(<= null), P*(>= null)), never 0."""
    finite = replicates[np.isfinite(replicates)]
    below = int(np.sum(finite <= null))
    above = int(np.sum(finite >= null))
    return float(min(1.0, 2 * (min(below, above) + 1) / (finite.size + 1)))


def _test(
    estimate: float,
    replicates: np.ndarray | None,
    sample: Sample,
    reps: int,
    seed: int,
    alpha: float,
    reason: str | None,
) -> dict[str, Any]:
    """An estimate with its window-aware interval, p-value and the effective sample beside it."""
    out: dict[str, Any] = {
        "estimate": estimate,
        "interval": None,
        "level": 1 - alpha,
        "p_value": None,
        "windows": sample.windows,
        "rows": sample.rows,
        "folds": sample.folds,
        "reps": reps if reason is None else 0,
        "seed": seed,
        "unavailable": reason,
    }
    if reason is None and replicates is not None:
        low, high = percentile_interval(replicates, 1 - alpha)
        out["interval"] = [low, high]
        out["p_value"] = bootstrap_p_value(replicates)
    return out


def bias_verdict(
    y_true: np.ndarray, y_pred: np.ndarray, sample: Sample, reps: int, seed: int, alpha: float = 0.05
) -> dict[str, Any]:
    """The bias section: the window-aware verdict, with the rows-as-independent binomial beside it."""
    return bias_verdicts(y_true, {"": y_pred}, sample, reps, seed, alpha)[""]


def bias_verdicts(
    y_true: np.ndarray,
    predictions: dict[str, np.ndarray],
    sample: Sample,
    reps: int,
    seed: int,
    alpha: float = 0.05,
) -> dict[str, dict[str, Any]]:
    """``bias_verdict`` of several predictors on the same rows, from one shared bootstrap."""
    reason = sample.unavailable(reps)
    replicates: dict[str, np.ndarray] = {}
    if reason is None and predictions:
        columns = np.stack(
            [np.ones(y_true.size)] + [y.astype(float) - y_true.astype(float) for y in predictions.values()],
            axis=1,
        )
        totals = resample_totals(sample, sample.per_window(columns), reps, seed).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            for number, name in enumerate(predictions, start=1):
                replicates[name] = totals[:, number] / totals[:, 0]
    out = {}
    for name, y_pred in predictions.items():
        naive = bias_test(y_true, y_pred, alpha)
        test = _test(naive["gap"], replicates.get(name), sample, reps, seed, alpha, reason)
        interval = test["interval"]
        out[name] = {
            **naive,
            "method": "block bootstrap over label windows (rows sharing a window resampled together)",
            "gap_interval_windows": interval,
            "p_value_windows": test["p_value"],
            "biased": None if interval is None else bool(interval[0] > 0 or interval[1] < 0),
            "windows": test["windows"],
            "rows": test["rows"],
            "folds": test["folds"],
            "level": test["level"],
            "reps": test["reps"],
            "unavailable": reason,
        }
    return out


@dataclass(frozen=True)
class Scored:
    """One predictor's answers on the sample's rows, or why it has none."""

    name: str
    kind: str
    y_pred: np.ndarray | None
    unavailable: str | None = None

    @property
    def is_baseline(self) -> bool:
        return self.kind == "baseline"


def mcnemar_exact(model_right: np.ndarray, baseline_right: np.ndarray) -> tuple[float, int, int]:
    """Exact McNemar p-value (rows as independent), and the discordant counts b, c."""
    b = int(np.sum(model_right & ~baseline_right))
    c = int(np.sum(~model_right & baseline_right))
    return (float(binomtest(b, b + c, 0.5).pvalue) if b + c else 1.0), b, c


def compare_to_baselines(
    y_true: np.ndarray,
    predictors: Sequence[Scored],
    sample: Sample,
    reps: int,
    seed: int,
    alpha: float = 0.05,
) -> list[dict[str, Any]]:
    """Every model (a non-baseline predictor) against every baseline: the paired accuracy difference.

    One bootstrap for all pairs: a replicate's windows are the same for every pair.
    """
    models = [p for p in predictors if not p.is_baseline]
    baselines = [p for p in predictors if p.is_baseline]
    pairs = [(m, b) for m in models for b in baselines]
    right = {p.name: p.y_pred == y_true for p in predictors if p.y_pred is not None}
    computable = [(m, b) for m, b in pairs if m.name in right and b.name in right]
    reason = sample.unavailable(reps)
    replicates: dict[tuple[str, str], np.ndarray] = {}
    if reason is None and computable:
        columns = np.stack(
            [np.ones(y_true.size)]
            + [right[m.name].astype(float) - right[b.name].astype(float) for m, b in computable],
            axis=1,
        )
        totals = resample_totals(sample, sample.per_window(columns), reps, seed).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            for number, (m, b) in enumerate(computable, start=1):
                replicates[(m.name, b.name)] = totals[:, number] / totals[:, 0]
    out = []
    for model, baseline in pairs:
        missing = model.unavailable or baseline.unavailable
        if model.name not in right or baseline.name not in right:
            who = model if model.name not in right else baseline
            out.append(
                {
                    "model": model.name,
                    "baseline": baseline.name,
                    "unavailable": f"{who.name} unavailable: {missing or 'no predictions'}",
                    "better": None,
                    "windows": sample.windows,
                    "rows": sample.rows,
                }
            )
            continue
        model_right, baseline_right = right[model.name], right[baseline.name]
        difference = float(model_right.mean() - baseline_right.mean()) if y_true.size else float("nan")
        test = _test(
            difference, replicates.get((model.name, baseline.name)), sample, reps, seed, alpha, reason
        )
        p_naive, b, c = mcnemar_exact(model_right, baseline_right)
        interval = test["interval"]
        out.append(
            {
                "model": model.name,
                "baseline": baseline.name,
                "model_accuracy": float(model_right.mean()),
                "baseline_accuracy": float(baseline_right.mean()),
                "difference": difference,
                "interval": interval,
                "p_value_windows": test["p_value"],
                "better": None if interval is None else bool(interval[0] > 0),
                "worse": None if interval is None else bool(interval[1] < 0),
                "p_value_rows_independent": p_naive,
                "discordant": {"model_only_right": b, "baseline_only_right": c},
                **{key: test[key] for key in ("windows", "rows", "folds", "level", "reps")},
                "unavailable": reason,
            }
        )
    return out


def verdict_table(
    y_true: np.ndarray,
    predictors: Sequence[Scored],
    sample: Sample,
    reps: int,
    seed: int,
    alpha: float = 0.05,
    bias: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Bias verdicts of every predictor and every model against every baseline, window-aware.

    ``bias`` may hold bias sections already computed (the runner's, per predictor); the rest
    are computed here on the same sample.
    """
    bias = dict(bias or {})
    missing = {p.name: p.y_pred for p in predictors if p.name not in bias and p.y_pred is not None}
    bias.update(bias_verdicts(y_true, missing, sample, reps, seed, alpha))
    bias_rows = []
    for p in predictors:
        if p.y_pred is None:
            bias_rows.append({"predictor": p.name, "biased": None, "unavailable": p.unavailable})
            continue
        b = bias[p.name]
        bias_rows.append(
            {
                "predictor": p.name,
                "gap": b["gap"],
                "interval": b["gap_interval_windows"],
                "p_value_windows": b["p_value_windows"],
                "biased": b["biased"],
                "direction": b["direction"],
                "p_value_rows_independent": b["p_value_rows_independent"],
                "biased_if_rows_independent": b["biased_if_rows_independent"],
                "windows": b["windows"],
                "rows": b["rows"],
                "unavailable": b["unavailable"],
            }
        )
    comparisons = compare_to_baselines(y_true, predictors, sample, reps, seed, alpha)
    notes = []
    if not any(not p.is_baseline for p in predictors):
        notes.append("no model among the predictors: only the bias verdicts apply")
    reason = sample.unavailable(reps)
    if reason:
        notes.append(reason)
    return {
        "method": (
            "block bootstrap over label windows: rows sharing a window are resampled together"
            + (", windows resampled within their fold" if sample.folds > 1 else "")
        ),
        "windows": sample.windows,
        "rows": sample.rows,
        "folds": sample.folds,
        "reps": reps if reason is None else 0,
        "seed": seed,
        "level": 1 - alpha,
        "alpha": alpha,
        "bias": bias_rows,
        "comparisons": comparisons,
        "notes": notes,
    }
