"""Backtest metrics over 1,000,000 predictions: vectorised numpy against a row-by-row loop.

All of a predictor's figures (confusion, accuracy, balanced accuracy, per-class F1, MCC,
Wilson interval, block bootstrap with 1,000 resamples of label windows, binomial bias test,
Brier, log loss, reliability bins, the long/short strategy with fees, buy-and-hold) on 1M
synthetic rows whose headlines share hourly label windows as the real ones do.

The baseline is the straightforward row-by-row Python a first version would write. Its
bootstrap (1,000 x ~490,000 window draws) would run for minutes, so it is timed on 5
resamples and scaled to 1,000, and the script says so. Both compute the same figures; the
script checks they agree.

Run: OMP_NUM_THREADS=1 .venv/bin/python bench/bench_backtest.py [--rows N] [--repeats R]
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time

import numpy as np
from scipy.stats import binomtest

from services.backtest.evaluate import EvaluationOptions, evaluate
from services.backtest.strategy import YEAR_SECONDS, Windows, buy_and_hold_report

GOAL_SECONDS = 2.0
BOOTSTRAP_REPS = 1000
LOOP_BOOTSTRAP_REPS = 5


def synthetic(rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Rows at random hours of a random-walk price; about two headlines per busy hour."""
    rng = np.random.default_rng(seed)
    hours = rows * 6 // 10
    prices = 10_000 * np.exp(np.cumsum(rng.normal(0, 0.01, hours + 1)))
    hour = np.sort(rng.integers(0, hours, rows))
    entry = 1_500_000_000 + hour * 3600
    y_pred = rng.integers(0, 2, rows).astype(np.int8)
    return {
        "entry": entry.astype(np.int64),
        "exit": (entry + 3600).astype(np.int64),
        "entry_price": prices[hour],
        "exit_price": prices[hour + 1],
        "y_true": (prices[hour + 1] > prices[hour]).astype(np.int8),
        "y_pred": y_pred,
        "p": np.clip(rng.normal(0.5, 0.15, rows), 0, 1),
    }


def vectorised(data: dict[str, np.ndarray]) -> dict:
    windows = Windows.from_rows(data["entry"], data["exit"], data["entry_price"], data["exit_price"])
    options = EvaluationOptions(fees_bps=10, decrease_position="short", bootstrap_reps=BOOTSTRAP_REPS)
    report = evaluate(data["y_true"], data["y_pred"], data["p"], windows, options)
    report["buy_and_hold"] = buy_and_hold_report(windows, 10)
    return report


def loop_metrics(data: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """Everything but the bootstrap, one row at a time in plain Python."""
    y_true, y_pred, p = data["y_true"].tolist(), data["y_pred"].tolist(), data["p"].tolist()
    entry, exit_ = data["entry"].tolist(), data["exit"].tolist()
    entry_price, exit_price = data["entry_price"].tolist(), data["exit_price"].tolist()
    tp = fn = fp = tn = 0
    brier = log_loss = 0.0
    bins = [[0, 0.0, 0.0] for _ in range(10)]
    windows: dict[tuple[int, int], list] = {}
    for i in range(len(y_true)):
        t, q = y_true[i], y_pred[i]
        if t and q:
            tp += 1
        elif t:
            fn += 1
        elif q:
            fp += 1
        else:
            tn += 1
        brier += (p[i] - t) ** 2
        clipped = min(max(p[i], 1e-15), 1 - 1e-15)
        log_loss -= math.log(clipped) if t else math.log(1 - clipped)
        b = min(int(p[i] * 10), 9)
        bins[b][0] += 1
        bins[b][1] += p[i]
        bins[b][2] += t
        key = (entry[i], exit_[i])
        if key not in windows:
            windows[key] = [0.0, 0, entry_price[i], exit_price[i], (tp, fn, fp, tn)]
        windows[key][0] += 1.0 if q else -1.0
        windows[key][1] += 1
    n = len(y_true)
    accuracy = (tp + tn) / n
    balanced = (tp / (tp + fn) + tn / (tn + fp)) / 2
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    precision_inc, recall_inc = tp / (tp + fp), tp / (tp + fn)
    f1_inc = 2 * precision_inc * recall_inc / (precision_inc + recall_inc)
    z = 1.959963984540054
    centre = (accuracy + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    bias_p = binomtest(tp + fp, n, (tp + fn) / n).pvalue
    # strategy: one position per window, fees on entering, rolling and leaving
    fee = 10 / 1e4
    keys = sorted(windows)
    entries = {k[0] for k in keys}
    position_until: dict[int, float] = {}  # the position held by the window ending at that time
    equity, peak, drawdown, returns = 1.0, 1.0, 0.0, []
    for k in keys:
        signal, count, ep, xp, _ = windows[k]
        position = signal / count
        prior = position_until.get(k[0])  # rolling from a window that ends as this one starts
        entering = abs(position - prior) if prior is not None else abs(position)
        leaving = 0.0 if k[1] in entries else abs(position)
        net = position * (xp / ep - 1) - (entering + leaving) * fee
        position_until[k[1]] = position
        returns.append(net)
        equity *= 1 + net
        peak = max(peak, equity)
        drawdown = max(drawdown, 1 - equity / peak)
    periods = (keys[-1][1] - keys[0][0]) / 3600
    mean = sum(returns) / periods
    sharpe = (
        mean / math.sqrt(sum(r * r for r in returns) / periods - mean**2) * math.sqrt(YEAR_SECONDS / 3600)
    )
    figures = {
        "accuracy": accuracy, "balanced_accuracy": balanced, "mcc": mcc, "f1_increase": f1_inc,
        "wilson": (centre - half, centre + half), "bias_p": bias_p, "brier": brier / n, "log_loss": log_loss / n,
        "cumulative_return": equity - 1, "max_drawdown": drawdown, "sharpe": sharpe, "windows": len(keys),
    }  # fmt: skip
    return figures, windows


def window_counts(data: dict[str, np.ndarray]) -> list[tuple[int, int]]:
    """(rows, correct) per window, built row by row."""
    per_window: dict[int, list[int]] = {}
    for e, t, q in zip(data["entry"].tolist(), data["y_true"].tolist(), data["y_pred"].tolist(), strict=True):
        cell = per_window.setdefault(e, [0, 0])
        cell[0] += 1
        cell[1] += t == q
    return [tuple(c) for c in per_window.values()]  # type: ignore[misc]


def loop_bootstrap_accuracy(counts: list[tuple[int, int]], reps: int, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    out = []
    for _ in range(reps):
        rows = correct = 0
        for _ in range(len(counts)):
            r, c = counts[rng.randrange(len(counts))]
            rows += r
            correct += c
        out.append(correct / rows)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    data = synthetic(args.rows)
    print(f"{args.rows:,} predictions, bootstrap {BOOTSTRAP_REPS} resamples of label windows")

    vectorised(data)  # warm-up: imports, first allocations
    times = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        report = vectorised(data)
        times.append(time.perf_counter() - started)
    fast = statistics.median(times)
    print(f"vectorised: median {fast:.3f} s of {args.repeats} (min {min(times):.3f}, max {max(times):.3f})")

    started = time.perf_counter()
    figures, _ = loop_metrics(data)
    counts = window_counts(data)
    loop_main = time.perf_counter() - started
    started = time.perf_counter()
    loop_bootstrap_accuracy(counts, LOOP_BOOTSTRAP_REPS)
    per_rep = (time.perf_counter() - started) / LOOP_BOOTSTRAP_REPS
    slow = loop_main + per_rep * BOOTSTRAP_REPS
    print(
        f"row-by-row loop: metrics and strategy {loop_main:.2f} s + bootstrap {per_rep:.3f} s/resample x "
        f"{BOOTSTRAP_REPS} (timed on {LOOP_BOOTSTRAP_REPS}, scaled) = {slow:.1f} s"
    )

    c, s = report["classification"], report["strategy"]
    checks = {
        "accuracy": (c["accuracy"], figures["accuracy"]),
        "balanced_accuracy": (c["balanced_accuracy"], figures["balanced_accuracy"]),
        "mcc": (c["mcc"], figures["mcc"]),
        "f1_increase": (c["per_class"]["Increase"]["f1"], figures["f1_increase"]),
        "wilson_low": (c["accuracy_wilson"][0], figures["wilson"][0]),
        "bias_p": (report["bias"]["p_value_rows_independent"], figures["bias_p"]),
        "brier": (report["calibration"]["brier"], figures["brier"]),
        "log_loss": (report["calibration"]["log_loss"], figures["log_loss"]),
        "cumulative_return": (s["cumulative_return"], figures["cumulative_return"]),
        "max_drawdown": (s["max_drawdown"], figures["max_drawdown"]),
        "sharpe": (s["sharpe"], figures["sharpe"]),
        "windows": (report["windows"], figures["windows"]),
    }
    disagree = [name for name, (a, b) in checks.items() if not math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)]
    print("figures agree with the loop:", "yes" if not disagree else f"NO: {disagree}")
    print(f"the loop without its bootstrap alone: {loop_main / fast:.0f}x the vectorised total")
    print(
        f"goal < {GOAL_SECONDS:.1f} s: {'met' if fast < GOAL_SECONDS else 'MISSED'}; speed-up over the loop: {slow / fast:.0f}x"
    )
    if disagree:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
