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


def gross_and_traded(
    y_pred: np.ndarray, windows: Windows, decrease: Literal["short", "flat"]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per window: position, gross return and notional traded (each a share of the capital)."""
    position = window_positions(y_pred, windows, decrease)
    traded = traded_notional(position, windows) / windows.sleeves
    gross = position * windows.window_return / windows.sleeves
    return position, gross, traded


def window_net_returns(
    y_pred: np.ndarray, windows: Windows, fees_bps: float, decrease: Literal["short", "flat"]
) -> np.ndarray:
    """Each window's net return after fees, in exit order: the series DSR and PBO read."""
    _, gross, traded = gross_and_traded(y_pred, windows, decrease)
    order = np.argsort(windows.exit_time, kind="stable")
    return (gross - traded * fees_bps / 1e4)[order]


def strategy_report(
    y_pred: np.ndarray, windows: Windows, fees_bps: float, decrease: Literal["short", "flat"]
) -> dict[str, Any]:
    position, gross, traded = gross_and_traded(y_pred, windows, decrease)
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


FEE_SWEEP_BPS = tuple(float(fee) for fee in range(0, 55, 5))  # 0, 5, ..., 50 bps


def _compounded(gross: np.ndarray, traded: np.ndarray, fee: float) -> float:
    """Cumulative return at a fee (a fraction, not bps); -1 once a window loses everything."""
    step = 1 + gross - traded * fee
    if np.any(step <= 0):
        return -1.0
    return float(np.expm1(np.log(step).sum()))


def break_even_fee_bps(gross: np.ndarray, traded: np.ndarray) -> dict[str, float | None]:
    """The fees (bps of notional) at which the strategy stops earning.

    ``compounded``: cumulative return after fees is 0 (the root of prod(1 + g - t f) = 1,
    which falls as the fee rises). ``mean``: the mean net return per window is 0, i.e. Sharpe
    0: sum(g) / sum(t). None when nothing is traded; 0 when it loses before any fee.
    """
    total_traded = float(traded.sum())
    if total_traded <= 0:
        return {"compounded": None, "mean": None}
    mean = max(0.0, float(gross.sum()) / total_traded * 1e4)
    if _compounded(gross, traded, 0.0) <= 0:
        return {"compounded": 0.0, "mean": mean}
    low, high = 0.0, 1.0
    while _compounded(gross, traded, high) > 0 and high < 1e3:
        high *= 2
    for _ in range(100):  # bisection: the compounded return is monotone in the fee
        middle = (low + high) / 2
        low, high = (middle, high) if _compounded(gross, traded, middle) > 0 else (low, middle)
    return {"compounded": (low + high) / 2 * 1e4, "mean": mean}


def fee_sweep(
    gross: np.ndarray,
    traded: np.ndarray,
    periods: float,
    periods_per_year: float,
    fees_bps: tuple[float, ...] = FEE_SWEEP_BPS,
) -> dict[str, Any]:
    """Cumulative return and Sharpe at each fee, and the break-even fees.

    ``gross`` and ``traded`` are per window (any order; folds concatenated); ``periods`` is the
    calendar of horizon-long periods the Sharpe spreads them over, as ``strategy_report`` does.
    """
    rows = []
    for fee in fees_bps:
        net = gross - traded * fee / 1e4
        rows.append(
            {
                "fees_bps": float(fee),
                "cumulative_return": _compounded(gross, traded, fee / 1e4),
                "sharpe": _calendar_sharpe(net, periods, periods_per_year),
                "fees_paid": float((traded * fee / 1e4).sum()),
            }
        )
    return {"sweep": rows, "break_even_bps": break_even_fee_bps(gross, traded)}


def strategy_fee_sweep(
    y_pred: np.ndarray,
    windows: Windows,
    decrease: Literal["short", "flat"],
    fees_bps: tuple[float, ...] = FEE_SWEEP_BPS,
) -> dict[str, Any]:
    """``fee_sweep`` of one predictor on one set of windows (the strategy's calendar)."""
    _, gross, traded = gross_and_traded(y_pred, windows, decrease)
    span = float(windows.exit_time.max() - windows.entry_time.min()) if windows.count else 0.0
    horizon = windows.horizon_seconds or 1.0
    return fee_sweep(gross, traded, span / horizon, YEAR_SECONDS / horizon, fees_bps)
