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
  with the realised return, per fold; pooled as the mean of the folds' ICs, with a
  window-aware interval (the delta-method variance of r from its influence function, summed
  within label windows: cluster-robust, no resampling, so it stays cheap on 1M rows) and, with
  several folds, the t statistic of the fold ICs. The rank IC is the same on the ranks.

Everything takes plain arrays, so the walk-forward folds feed it directly: DSR and PBO take
each predictor's returns over all folds in time order; the IC takes the fold of every row.
"""

from __future__ import annotations

import math
from itertools import combinations
from typing import Any

import numpy as np
from scipy.stats import kurtosis, norm, rankdata, skew

from services.backtest.verdicts import Sample

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


def _pearson_with_influence(x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Pearson r and each row's influence on it, u v - r (u^2 + v^2) / 2 (u, v standardised)."""
    sx, sy = float(np.std(x)), float(np.std(y))
    if not (sx > 0 and sy > 0):
        return float("nan"), np.zeros(x.size)
    u, v = (x - x.mean()) / sx, (y - y.mean()) / sy
    r = float(np.mean(u * v))
    return r, u * v - r * (u * u + v * v) / 2


def _clustered_variance(influence: np.ndarray, window: np.ndarray, windows: int) -> float:
    """Var(r) with rows of a window dependent: sum over windows of their summed influence, squared."""
    per_window = np.bincount(window, weights=influence, minlength=windows)
    used = int(np.count_nonzero(np.bincount(window, minlength=windows)))
    correction = used / (used - 1) if used > 1 else float("nan")
    return float(correction * np.sum(per_window**2) / influence.size**2)


def information_coefficient(
    p_increase: np.ndarray,
    realised_return: np.ndarray,
    sample: Sample,
    fold: np.ndarray | None = None,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """IC and rank IC of p(Increase) against each row's realised return, per fold and pooled.

    ``fold`` (per row) must match the sample's folds; default: the sample's fold of each window.
    """
    return information_coefficients({"": p_increase}, realised_return, sample, fold, confidence)[""]


def information_coefficients(
    p_increase: dict[str, np.ndarray],
    realised_return: np.ndarray,
    sample: Sample,
    fold: np.ndarray | None = None,
    confidence: float = 0.95,
) -> dict[str, dict[str, Any]]:
    """``information_coefficient`` of several predictors on the same rows.

    The interval is window-aware without resampling: the variance of r from its influence
    function summed within label windows (a cluster-robust, delta-method variance; rows
    repeated inside their window leave it unchanged), per fold; the pooled IC is the mean of the
    folds', its variance the folds' summed over F^2; the interval is built on Fisher's z.
    """
    realised_return = np.asarray(realised_return, dtype=float)
    fold = sample.fold_of_window[sample.window] if fold is None else np.asarray(fold)
    in_fold = [np.flatnonzero(fold == number) for number in range(sample.folds)]
    ranked_return = [rankdata(realised_return[rows]) for rows in in_fold]
    z = float(norm.ppf(0.5 + confidence / 2))
    out: dict[str, dict[str, Any]] = {}
    for name, values in p_increase.items():
        values = np.asarray(values, dtype=float)
        if values.size == 0 or np.isnan(values).any():
            out[name] = {"unavailable": "no p(Increase)"}
            continue
        folds, variances = [], {"ic": [], "rank_ic": []}
        for number, rows in enumerate(in_fold):
            x, y = values[rows], realised_return[rows]
            window = sample.window[rows]
            row: dict[str, Any] = {
                "fold": number,
                "rows": int(rows.size),
                "windows": int(np.sum(sample.fold_of_window == number)),
            }
            for key, (a, b) in (("ic", (x, y)), ("rank_ic", (rankdata(x), ranked_return[number]))):
                r, influence = _pearson_with_influence(a, b)
                row[key] = _nan_none(r)
                variances[key].append(
                    _clustered_variance(influence, window, sample.windows) if row[key] is not None else np.nan
                )
            folds.append(row)
        ics = np.array([np.nan if f["ic"] is None else f["ic"] for f in folds])
        if np.all(np.isnan(ics)):
            out[name] = {
                "unavailable": "p(Increase) or the return does not vary: no correlation",
                "folds": folds,
            }
            continue
        result: dict[str, Any] = {
            "folds": folds,
            "windows": sample.windows,
            "rows": sample.rows,
            "level": confidence,
            "method": "influence function summed within label windows (cluster-robust), Fisher z interval",
            "interval_unavailable": None
            if sample.windows >= 2
            else "fewer than 2 label windows: no window-aware interval",
            "unavailable": None,
        }
        for key in ("ic", "rank_ic"):
            values_f = np.array([np.nan if f[key] is None else f[key] for f in folds])
            finite = np.isfinite(values_f)
            if not finite.any():
                result[key], result[f"{key}_se"], result[f"{key}_interval"] = None, None, None
                continue
            estimate = float(values_f[finite].mean())
            variance = float(np.nansum(np.array(variances[key])[finite]) / finite.sum() ** 2)
            result[key] = estimate
            result[f"{key}_se"] = math.sqrt(variance) if np.isfinite(variance) else None
            interval = None
            if result["interval_unavailable"] is None and np.isfinite(variance) and abs(estimate) < 1:
                centre, half = math.atanh(estimate), z * math.sqrt(variance) / (1 - estimate**2)
                interval = [math.tanh(centre - half), math.tanh(centre + half)]
            result[f"{key}_interval"] = interval
            if sample.folds > 1:
                spread = float(np.std(values_f[finite], ddof=1)) if finite.sum() > 1 else 0.0
                result[f"{key}_t_across_folds"] = (
                    float(estimate / (spread / math.sqrt(finite.sum()))) if spread > 0 else None
                )
        out[name] = result
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
