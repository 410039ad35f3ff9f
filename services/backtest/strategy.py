"""Trading the signal: long on Increase, short (or flat) on Decrease, over each label window.

How overlapping rows are handled: rows that share a label window (the same entry and exit
candles) are one bet, not several. The window's position is the mean of its rows' signals
(+1 Increase, -1 or 0 Decrease), so three Increase headlines and one Decrease in the same
hour give a position of +0.5 (short mode). Windows whose horizons overlap in time (a horizon
longer than the candle timeframe) are traded as k staggered sleeves, each holding 1/k of the
capital, k being the most windows ever open at once; with the default 1h labels on 1h
candles k = 1 and every figure is exact.

Fees are charged in basis points of the notional traded. Entering a window trades |position|;
rolling from a window that ends exactly when the next begins trades only the change of
position; leaving trades |position| unless the next window starts at that moment.

Sharpe is annualised for the horizon: the strategy is flat between windows, so the calendar
of horizon-long periods from the first entry to the last exit is filled with zero returns
and Sharpe = mean / std x sqrt(periods per year). Buy-and-hold holds from the first window's
entry price to the last window's exit price, paying the fee once in and once out; its path
is sampled at every window's entry and exit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

YEAR_SECONDS = 365.25 * 24 * 3600


@dataclass(frozen=True)
class Windows:
    """Label windows of a set of rows: each row's window index and each window's outcome."""

    row_window: np.ndarray  # int64 per row: index into the arrays below
    entry_time: np.ndarray  # int64 epoch seconds, ascending
    exit_time: np.ndarray
    entry_price: np.ndarray
    exit_price: np.ndarray
    rows_per_window: np.ndarray
    horizon_seconds: float
    sleeves: int

    @property
    def count(self) -> int:
        return int(self.entry_time.size)

    @property
    def window_return(self) -> np.ndarray:
        return self.exit_price / self.entry_price - 1

    @classmethod
    def from_rows(
        cls, entry_time: np.ndarray, exit_time: np.ndarray, entry_price: np.ndarray, exit_price: np.ndarray
    ) -> Windows:
        keys = np.stack([entry_time, exit_time], axis=1)
        unique, first, inverse, counts = np.unique(
            keys, axis=0, return_index=True, return_inverse=True, return_counts=True
        )
        entries, exits = unique[:, 0], unique[:, 1]
        horizon = float(np.median(exits - entries)) if entries.size else 0.0
        return cls(
            row_window=inverse.reshape(-1).astype(np.int64),
            entry_time=entries,
            exit_time=exits,
            entry_price=entry_price[first],
            exit_price=exit_price[first],
            rows_per_window=counts,
            horizon_seconds=horizon,
            sleeves=_max_open_at_once(entries, exits),
        )


def _max_open_at_once(entries: np.ndarray, exits: np.ndarray) -> int:
    if entries.size == 0:
        return 1
    opened = np.arange(1, entries.size + 1)  # windows entered at or before each entry (entries sorted)
    closed = np.searchsorted(np.sort(exits), entries, side="right")
    return int(max(1, (opened - closed).max()))


def window_positions(y_pred: np.ndarray, windows: Windows, decrease: Literal["short", "flat"]) -> np.ndarray:
    """The mean signal of each window's rows: +1 Increase, -1 (short) or 0 (flat) Decrease."""
    signal = np.where(y_pred == 1, 1.0, -1.0 if decrease == "short" else 0.0)
    return np.bincount(windows.row_window, weights=signal, minlength=windows.count) / windows.rows_per_window


def _neighbour(times: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """For each target time, the index of the window whose ``times`` equals it, else -1."""
    order = np.argsort(times, kind="stable")
    where = np.searchsorted(times[order], targets)
    where = np.minimum(where, times.size - 1)
    found = times[order][where] == targets
    return np.where(found, order[where], -1)


def traded_notional(position: np.ndarray, windows: Windows) -> np.ndarray:
    """Notional traded per window (entering or rolling in, plus leaving when nothing follows)."""
    previous = _neighbour(windows.exit_time, windows.entry_time)
    following = _neighbour(windows.entry_time, windows.exit_time)
    prior_position = np.where(previous >= 0, position[np.maximum(previous, 0)], 0.0)
    entering = np.abs(position - prior_position)
    leaving = np.where(following >= 0, 0.0, np.abs(position))
    return entering + leaving


def _max_drawdown(equity: np.ndarray) -> float:
    if equity.size == 0:
        return 0.0
    peak = np.maximum.accumulate(np.concatenate([[1.0], equity]))[1:]
    return float(np.max(1 - equity / peak))


def _calendar_sharpe(returns: np.ndarray, periods: float, periods_per_year: float) -> float:
    periods = max(periods, float(returns.size), 1.0)
    mean = returns.sum() / periods
    variance = (returns**2).sum() / periods - mean**2
    if variance <= 0:
        return 0.0
    return float(mean / np.sqrt(variance) * np.sqrt(periods_per_year))


def strategy_report(
    y_pred: np.ndarray, windows: Windows, fees_bps: float, decrease: Literal["short", "flat"]
) -> dict[str, Any]:
    position = window_positions(y_pred, windows, decrease)
    traded = traded_notional(position, windows) / windows.sleeves
    gross = position * windows.window_return / windows.sleeves
    net = gross - traded * fees_bps / 1e4
    order = np.argsort(windows.exit_time, kind="stable")
    equity = np.cumprod(1 + net[order])
    span = float(windows.exit_time.max() - windows.entry_time.min()) if windows.count else 0.0
    horizon = windows.horizon_seconds or 1.0
    active = position != 0
    return {
        "cumulative_return": float(equity[-1] - 1) if equity.size else 0.0,
        "sharpe": _calendar_sharpe(net, span / horizon, YEAR_SECONDS / horizon),
        "max_drawdown": _max_drawdown(equity),
        "hit_rate": float(np.mean(net[active] > 0)) if active.any() else float("nan"),
        "turnover_per_window": float(traded.sum() / windows.count) if windows.count else 0.0,
        "turnover_total": float(traded.sum()),
        "fees_paid": float((traded * fees_bps / 1e4).sum()),
        "windows_traded": int(active.sum()),
        "equity": {"time": windows.exit_time[order].tolist(), "value": equity.tolist()},
    }


def buy_and_hold_report(windows: Windows, fees_bps: float) -> dict[str, Any]:
    """Long from the first window's entry to the last window's exit, beside every strategy."""
    times = np.concatenate([windows.entry_time, windows.exit_time])
    prices = np.concatenate([windows.entry_price, windows.exit_price])
    order = np.lexsort((np.arange(times.size), times))
    times, prices = times[order], prices[order]
    keep = np.concatenate([[True], times[1:] != times[:-1]])  # one price per instant
    times, prices = times[keep], prices[keep]
    fee = fees_bps / 1e4
    equity = prices / prices[0] * (1 - fee)
    equity[-1] *= 1 - fee
    steps = prices[1:] / prices[:-1] - 1
    span_years = float(times[-1] - times[0]) / YEAR_SECONDS if times.size > 1 else 0.0
    per_year = steps.size / span_years if span_years > 0 else 0.0
    return {
        "cumulative_return": float(equity[-1] - 1),
        "sharpe": _calendar_sharpe(steps, steps.size, per_year) if steps.size else 0.0,
        "max_drawdown": _max_drawdown(equity),
        "equity": {"time": times.tolist(), "value": equity.tolist()},
    }
