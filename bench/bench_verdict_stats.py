"""The verdict and overfitting statistics over 1,000,000 predictions in 10 folds and 20 predictors.

No training and no model: synthetic walk-forward folds of rows whose headlines share hourly
label windows (about two headlines per busy hour, as in bench_backtest.py), 20 predictors
answering every row (15 "models" with p(Increase), 5 baselines): 50,000 rows x 20 = 1,000,000
predictions. Timed, each with 1,000 block-bootstrap resamples of label windows within folds:

- bias verdict of every predictor (one shared bootstrap);
- every model against every baseline, paired accuracy (75 pairs, one shared bootstrap);
- IC and rank IC of the 15 models per fold and pooled, with window-aware (cluster-robust) intervals;
- the fee sweep (0 to 50 bps) and break-even fees of every predictor;
- DSR of every predictor and PBO by CSCV (16 blocks: all 12,870 combinations).

Run: OMP_NUM_THREADS=2 .venv/bin/python bench/bench_verdict_stats.py [--rows N] [--reps R]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from services.backtest.overfitting import information_coefficients, overfitting_report
from services.backtest.strategy import YEAR_SECONDS, Windows, fee_sweep, gross_and_traded
from services.backtest.verdicts import Sample, Scored, bias_verdicts, compare_to_baselines

GOAL_SECONDS = 10.0
FOLDS, PREDICTORS, BASELINES = 10, 20, 5


def synthetic(rows: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    hours = rows * 6 // 10
    prices = 10_000 * np.exp(np.cumsum(rng.normal(0, 0.01, hours + 1)))
    hour = np.sort(rng.integers(0, hours, rows))
    y_true = (prices[hour + 1] > prices[hour]).astype(np.int8)
    realised = prices[hour + 1] / prices[hour] - 1
    predictions, probabilities = [], []
    for number in range(PREDICTORS):
        skill = 0.02 * (number % 4)  # a few with a little skill, most none
        p = np.clip(0.5 + skill * np.sign(realised) + rng.normal(0, 0.1, rows), 0, 1)
        predictions.append((p > 0.5).astype(np.int8))
        probabilities.append(p)
    return {
        "hour": hour,
        "prices": prices,
        "y_true": y_true,
        "realised": realised,
        "fold": np.minimum(np.arange(rows) * FOLDS // rows, FOLDS - 1),
        "predictions": predictions,
        "probabilities": probabilities,
    }


def run(data: dict, reps: int) -> dict[str, float]:
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    hour, prices, fold = data["hour"], data["prices"], data["fold"]
    fold_windows = []
    for number in range(FOLDS):
        rows = fold == number
        entry = 1_500_000_000 + hour[rows] * 3600
        fold_windows.append(
            Windows.from_rows(entry, entry + 3600, prices[hour[rows]], prices[hour[rows] + 1])
        )
    sample = Sample.from_folds([w.row_window for w in fold_windows])
    seconds["windows and folds"] = time.perf_counter() - started

    t = time.perf_counter()
    y_true = data["y_true"]
    bias_verdicts(y_true, {f"p{n}": y for n, y in enumerate(data["predictions"])}, sample, reps, seed=0)
    seconds[f"bias verdicts ({PREDICTORS})"] = time.perf_counter() - t

    t = time.perf_counter()
    scored = [
        Scored(f"p{n}", "baseline" if n >= PREDICTORS - BASELINES else "local", y)
        for n, y in enumerate(data["predictions"])
    ]
    pairs = compare_to_baselines(y_true, scored, sample, reps, seed=0)
    seconds[f"model vs baseline ({len(pairs)} pairs)"] = time.perf_counter() - t

    t = time.perf_counter()
    models = {f"p{n}": p for n, p in enumerate(data["probabilities"][: PREDICTORS - BASELINES])}
    information_coefficients(models, data["realised"], sample, fold)
    seconds[f"IC and rank IC ({PREDICTORS - BASELINES}, per fold)"] = time.perf_counter() - t

    t = time.perf_counter()
    returns = {}
    for n, y_pred in enumerate(data["predictions"]):
        gross, traded = [], []
        for number, windows in enumerate(fold_windows):
            _, g, tr = gross_and_traded(y_pred[fold == number], windows, "short")
            order = np.argsort(windows.exit_time, kind="stable")
            gross.append(g[order])
            traded.append(tr[order])
        gross_all, traded_all = np.concatenate(gross), np.concatenate(traded)
        fee_sweep(gross_all, traded_all, gross_all.size, YEAR_SECONDS / 3600)
        returns[f"p{n}"] = gross_all - traded_all * 10 / 1e4
    seconds[f"fee sweep ({PREDICTORS})"] = time.perf_counter() - t

    t = time.perf_counter()
    report = overfitting_report(returns)
    seconds["DSR and PBO (12,870 combinations)"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - started
    seconds["_windows"] = sample.windows
    seconds["_combinations"] = report["pbo"]["combinations"]
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000 // PREDICTORS, help="rows per predictor")
    parser.add_argument("--reps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    data = synthetic(args.rows)
    print(
        f"{args.rows:,} rows x {PREDICTORS} predictors = {args.rows * PREDICTORS:,} predictions, {FOLDS} folds, "
        f"{args.reps} bootstrap resamples; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
        f"{os.cpu_count()} CPUs"
    )
    runs = [run(data, args.reps) for _ in range(args.repeats)]
    print(f"label windows: {runs[0]['_windows']:,}; PBO combinations: {runs[0]['_combinations']:,}")
    for key in runs[0]:
        if key.startswith("_"):
            continue
        values = sorted(r[key] for r in runs)
        print(f"  {key:<40} best {values[0]:7.2f} s   median {values[len(values) // 2]:7.2f} s")
    best = min(r["total"] for r in runs)
    print(
        f"total, best of {args.repeats}: {best:.2f} s (goal < {GOAL_SECONDS:.0f} s): {'met' if best < GOAL_SECONDS else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
