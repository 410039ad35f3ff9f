"""Statistics that account for having tried several predictors: DSR, PBO, and the IC.

- **Probabilistic and Deflated Sharpe Ratio** (Bailey & López de Prado, "The Deflated Sharpe
  Ratio", J. Portfolio Management 2014). PSR(SR*) = Phi((SR - SR*) sqrt(T - 1) /
  sqrt(1 - g3 SR + (g4 - 1) / 4 SR^2)), SR the per-observation (not annualised) Sharpe, g3 the
  skewness and g4 the (non-excess) kurtosis of the T returns. DSR is the PSR against the
  Sharpe the best of N unskilled trials would show: SR0 = sqrt(V[SR_n]) ((1 - gamma)
  Phi^-1(1 - 1/N) + gamma Phi^-1(1 - 1/(N e))), gamma the Euler-Mascheroni constant and
  V[SR_n] the variance of the trials' Sharpe ratios. The paper's example (N = 100, V = 1/2
  annualised, SR 2.5 annualised over 1,250 days, skew -3, kurtosis 10) gives DSR 0.9004.
- **Probability of backtest overfitting** by combinatorially symmetric cross-validation
  (Bailey, Borwein, López de Prado & Zhu, "The Probability of Backtest Overfitting", J.
  Computational Finance 2017): a T x N matrix of returns (T periods in time order, N
  predictors) is cut into S contiguous blocks; for each of the C(S, S/2) ways to pick half the
  blocks as in-sample, the in-sample best predictor's out-of-sample rank r among N gives
  omega = r / (N + 1) and lambda = log(omega / (1 - omega)); PBO is the share of
  combinations with lambda <= 0 (the in-sample winner at or below the out-of-sample median).
- **Information coefficient**: Pearson (IC) and Spearman (rank IC) correlation of p(Increase)
  with the realised return, per fold; pooled as the mean of the folds' ICs, with a block
  bootstrap interval over label windows (within folds) and, with several folds, the t
  statistic of the fold ICs. The rank IC's interval keeps the full-sample ranks fixed in each
  replicate (the bootstrap of the correlation of ranks, not of re-ranked draws).

Everything takes plain arrays, so the walk-forward folds feed it directly: DSR and PBO take
each predictor's returns over all folds in time order; the IC takes the fold of every row.
"""

from __future__ import annotations

import math
import warnings
from itertools import combinations
from typing import Any

import numpy as np
from scipy.stats import kurtosis, norm, rankdata, skew

from services.backtest.verdicts import Sample, percentile_interval, resample_totals

EULER_MASCHERONI = 0.5772156649015329
PBO_BLOCKS = 16  # the paper's S: C(16, 8) = 12,870 combinations


def probabilistic_sharpe_ratio(
    sharpe: float, benchmark: float, observations: int, skewness: float, kurtosis_: float
) -> float:
    """P(true Sharpe > benchmark) given the per-observation Sharpe of ``observations`` returns.

    ``kurtosis_`` is the plain kurtosis (3 for a normal distribution), as in the paper.
    """
    if observations < 2:
        return float("nan")
    spread = 1 - skewness * sharpe + (kurtosis_ - 1) / 4 * sharpe**2
    if spread <= 0:
        return float("nan")
    return float(norm.cdf((sharpe - benchmark) * math.sqrt(observations - 1) / math.sqrt(spread)))


def expected_max_sharpe(trials: int, variance: float) -> float:
    """E[max of ``trials`` Sharpe ratios] of unskilled trials whose Sharpes vary by ``variance``."""
    if trials < 2 or variance <= 0:
        return 0.0
    gamma = EULER_MASCHERONI
    return float(
        math.sqrt(variance)
        * ((1 - gamma) * norm.ppf(1 - 1 / trials) + gamma * norm.ppf(1 - 1 / (trials * math.e)))
    )


def _moments(returns: np.ndarray) -> tuple[float, float, float]:
    """Per-observation Sharpe (mean / std, ddof 1), skewness and kurtosis (plain) of the returns."""
    std = float(np.std(returns, ddof=1))
    if not std > 0:
        return float("nan"), float("nan"), float("nan")
    return (
        float(np.mean(returns) / std),
        float(skew(returns)),
        float(kurtosis(returns, fisher=False)),
    )


def deflated_sharpe(returns: dict[str, np.ndarray], trials: int | None = None) -> dict[str, Any]:
    """PSR against 0 and DSR of every predictor, the trials being the predictors with a Sharpe.

    ``returns``: each predictor's returns per period (per label window, folds in time order).
    ``trials``: how many configurations were tried, if more than the predictors given (the
    variance of the Sharpes is still that of the ones given).
    """
    moments = {name: _moments(np.asarray(r, dtype=float)) for name, r in returns.items()}
    sharpes = np.array([m[0] for m in moments.values() if np.isfinite(m[0])])
    count = int(sharpes.size) if trials is None else int(trials)
    variance = float(np.var(sharpes, ddof=1)) if sharpes.size > 1 else 0.0
    benchmark = expected_max_sharpe(count, variance)
    rows = []
    for name, (sharpe, skewness, kurt) in moments.items():
        observations = int(np.asarray(returns[name]).size)
        finite = np.isfinite(sharpe)
        rows.append(
            {
                "predictor": name,
                "observations": observations,
                "sharpe_per_period": sharpe if finite else None,
                "skewness": skewness if finite else None,
                "kurtosis": kurt if finite else None,
                "psr": probabilistic_sharpe_ratio(sharpe, 0.0, observations, skewness, kurt)
                if finite
                else None,
                "dsr": probabilistic_sharpe_ratio(sharpe, benchmark, observations, skewness, kurt)
                if finite
                else None,
                "unavailable": None if finite else "returns do not vary: no Sharpe",
            }
        )
    best = max(
        (r for r in rows if r["sharpe_per_period"] is not None),
        key=lambda r: r["sharpe_per_period"],
        default=None,
    )
    return {
        "trials": count,
        "sharpe_variance": variance,
        "expected_max_sharpe": benchmark,
        "best": best["predictor"] if best else None,
        "predictors": rows,
        "note": None if count >= 2 else "one trial: DSR is the PSR against 0",
    }


def _sharpe_from_sums(total: np.ndarray, squares: np.ndarray, count: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / count
        variance = squares / count - mean**2
        sharpe = mean / np.sqrt(variance)
    return np.where(variance > 1e-300, sharpe, 0.0)


def probability_of_backtest_overfitting(
    performance: np.ndarray,
    names: list[str] | None = None,
    blocks: int = PBO_BLOCKS,
    metric: str = "sharpe",
) -> dict[str, Any]:
    """PBO by CSCV on a (T periods, N predictors) matrix of returns, periods in time order.

    ``metric``: "sharpe" (mean / std of the block's returns) or "mean". ``blocks`` (S) is
    lowered to the largest even number <= T when there are fewer periods.
    """
    performance = np.asarray(performance, dtype=float)
    periods, trials = performance.shape
    names = names or [str(i) for i in range(trials)]
    blocks = min(blocks, periods - periods % 2)
    if trials < 2 or blocks < 2:
        return {
            "pbo": None,
            "unavailable": f"needs at least 2 predictors and 2 periods ({trials} predictors, {periods} periods)",
        }
    if metric not in ("sharpe", "mean"):
        raise ValueError(f"unknown metric {metric!r}")
    edges = np.linspace(0, periods, blocks + 1).round().astype(np.int64)
    starts = edges[:-1]
    sums = np.add.reduceat(performance, starts, axis=0)  # (S, N)
    squares = np.add.reduceat(performance**2, starts, axis=0)
    sizes = np.diff(edges).astype(float)
    chosen = np.array(list(combinations(range(blocks), blocks // 2)), dtype=np.int64)
    membership = np.zeros((chosen.shape[0], blocks))
    np.put_along_axis(membership, chosen, 1.0, axis=1)  # (C, S): 1 for the in-sample blocks

    def scores(weights: np.ndarray) -> np.ndarray:
        count = (weights @ sizes)[:, None]
        if metric == "mean":
            return (weights @ sums) / count
        return _sharpe_from_sums(weights @ sums, weights @ squares, count)

    in_sample, out_of_sample = scores(membership), scores(1 - membership)
    best = np.argmax(in_sample, axis=1)
    best_oos = out_of_sample[np.arange(best.size), best][:, None]
    rank = (out_of_sample < best_oos).sum(axis=1) + ((out_of_sample == best_oos).sum(axis=1) - 1) / 2 + 1
    omega = rank / (trials + 1)
    logits = np.log(omega / (1 - omega))
    best_is = in_sample[np.arange(best.size), best]
    slope = float(np.polyfit(best_is, best_oos[:, 0], 1)[0]) if np.ptp(best_is) > 0 else None
    picked = np.bincount(best, minlength=trials)
    return {
        "pbo": float(np.mean(logits <= 0)),
        "combinations": int(chosen.shape[0]),
        "blocks": int(blocks),
        "periods": int(periods),
        "trials": int(trials),
        "metric": metric,
        "logit_median": float(np.median(logits)),
        "logits": logits.tolist() if logits.size <= 100 else None,
        # the in-sample best's out-of-sample figure: below 0 is a loss; the slope of OOS on IS
        # is the performance degradation (negative: the better in-sample, the worse after)
        "probability_oos_loss": float(np.mean(best_oos[:, 0] < 0)),
        "degradation_slope": slope,
        "selected_in_sample": {names[i]: int(picked[i]) for i in range(trials) if picked[i]},
        "unavailable": None,
    }


def _correlation(totals: np.ndarray) -> np.ndarray:
    """Pearson correlation from sums (..., 6): n, x, y, xx, yy, xy."""
    n, x, y, xx, yy, xy = (totals[..., i] for i in range(6))
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = xy - x * y / n
        denominator = np.sqrt((xx - x * x / n) * (yy - y * y / n))
        return np.where(denominator > 0, cov / denominator, np.nan)


def _moment_columns(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.stack([np.ones_like(x), x, y, x * x, y * y, x * y], axis=1)


def information_coefficient(
    p_increase: np.ndarray,
    realised_return: np.ndarray,
    sample: Sample,
    fold: np.ndarray | None = None,
    reps: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """IC and rank IC of p(Increase) against each row's realised return, per fold and pooled.

    ``fold`` (per row) must match the sample's folds; default: the sample's fold of each window.
    """
    return information_coefficients({"": p_increase}, realised_return, sample, fold, reps, seed, confidence)[
        ""
    ]


def information_coefficients(
    p_increase: dict[str, np.ndarray],
    realised_return: np.ndarray,
    sample: Sample,
    fold: np.ndarray | None = None,
    reps: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, dict[str, Any]]:
    """``information_coefficient`` of several predictors on the same rows, one shared bootstrap."""
    realised_return = np.asarray(realised_return, dtype=float)
    fold = sample.fold_of_window[sample.window] if fold is None else np.asarray(fold)
    in_fold = [fold == number for number in range(sample.folds)]
    ranked_return = [rankdata(realised_return[rows]) for rows in in_fold]
    out: dict[str, dict[str, Any]] = {}
    columns: dict[str, np.ndarray] = {}
    for name, values in p_increase.items():
        values = np.asarray(values, dtype=float)
        if values.size == 0 or np.isnan(values).any():
            out[name] = {"unavailable": "no p(Increase)"}
            continue
        block = np.zeros((values.size, 12))
        folds = []
        for number, rows in enumerate(in_fold):
            x, y = values[rows], realised_return[rows]
            # centred within the fold: the sums' cancellation stays small
            centred = _moment_columns(x - x.mean(), y - y.mean())
            rx, ry = rankdata(x), ranked_return[number]
            ranked = _moment_columns(rx - rx.mean(), ry - ry.mean())
            block[rows, :6], block[rows, 6:] = centred, ranked
            folds.append(
                {
                    "fold": number,
                    "rows": int(rows.sum()),
                    "windows": int(np.sum(sample.fold_of_window == number)),
                    "ic": _nan_none(_correlation(centred.sum(axis=0))),
                    "rank_ic": _nan_none(_correlation(ranked.sum(axis=0))),
                }
            )
        ics = np.array([np.nan if f["ic"] is None else f["ic"] for f in folds])
        rank_ics = np.array([np.nan if f["rank_ic"] is None else f["rank_ic"] for f in folds])
        if np.all(np.isnan(ics)):
            out[name] = {
                "unavailable": "p(Increase) or the return does not vary: no correlation",
                "folds": folds,
            }
            continue
        result: dict[str, Any] = {
            "ic": float(np.nanmean(ics)),
            "rank_ic": float(np.nanmean(rank_ics)),
            "folds": folds,
            "windows": sample.windows,
            "rows": sample.rows,
            "level": confidence,
            "ic_interval": None,
            "rank_ic_interval": None,
            "interval_unavailable": sample.unavailable(reps),
            "unavailable": None,
        }
        if sample.folds > 1:
            for key, fold_values in (("ic", ics), ("rank_ic", rank_ics)):
                finite = fold_values[np.isfinite(fold_values)]
                spread = float(np.std(finite, ddof=1)) if finite.size > 1 else 0.0
                result[f"{key}_t_across_folds"] = (
                    float(finite.mean() / (spread / math.sqrt(finite.size))) if spread > 0 else None
                )
        out[name] = result
        columns[name] = block
    if columns and sample.unavailable(reps) is None:
        stacked = np.concatenate(list(columns.values()), axis=1)
        totals = resample_totals(sample, sample.per_window(stacked), reps, seed)  # (reps, folds, 12 each)
        for number, name in enumerate(columns):
            part = totals[..., 12 * number : 12 * (number + 1)]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a fold may not vary in a replicate
                ic = np.nanmean(_correlation(part[..., :6]), axis=1)
                rank_ic = np.nanmean(_correlation(part[..., 6:]), axis=1)
            out[name]["ic_interval"] = percentile_interval(ic, confidence)
            out[name]["rank_ic_interval"] = percentile_interval(rank_ic, confidence)
    return out


def _nan_none(value: Any) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def overfitting_report(returns: dict[str, np.ndarray], blocks: int = PBO_BLOCKS) -> dict[str, Any]:
    """DSR of every predictor and the PBO across them, from each one's returns per period.

    ``returns``: predictor -> its net returns per label window in time order (folds
    concatenated in time), the same periods for every predictor.
    """
    names = list(returns)
    out: dict[str, Any] = {
        "periods": "label windows, in exit order (one return per window, after fees)",
        "deflated_sharpe": deflated_sharpe(returns),
    }
    if len(names) >= 2:
        matrix = np.stack([np.asarray(returns[name], dtype=float) for name in names], axis=1)
        out["pbo"] = probability_of_backtest_overfitting(matrix, names, blocks)
    else:
        out["pbo"] = {"pbo": None, "unavailable": "PBO needs at least 2 predictors"}
    return out
