"""The strategy's returns, fees, turnover and buy-and-hold, worked by hand on a few rows."""

from __future__ import annotations

import math

import numpy as np
import pytest

from services.backtest.strategy import YEAR_SECONDS, Windows, buy_and_hold_report, strategy_report

H = 3600
# Three label windows: 0-1h 100 -> 110 (+10%), 1h-2h 110 -> 99 (-10%), 3h-4h 100 -> 105 (+5%).
# Window one has two rows, window two one row, window three two rows.
ENTRY = np.array([0, 0, H, 3 * H, 3 * H])
EXIT = ENTRY + H
ENTRY_PRICE = np.array([100.0, 100.0, 110.0, 100.0, 100.0])
EXIT_PRICE = np.array([110.0, 110.0, 99.0, 105.0, 105.0])
#                  Inc Inc  Dec  Inc Dec
PREDICTED = np.array([1, 1, 0, 1, 0], dtype=np.int8)


@pytest.fixture
def windows() -> Windows:
    return Windows.from_rows(ENTRY, EXIT, ENTRY_PRICE, EXIT_PRICE)


def test_rows_sharing_a_window_are_one_bet(windows: Windows) -> None:
    assert windows.count == 3
    assert windows.rows_per_window.tolist() == [2, 1, 2]
    assert windows.row_window.tolist() == [0, 0, 1, 2, 2]
    assert windows.sleeves == 1
    assert windows.window_return.tolist() == pytest.approx([0.10, -0.10, 0.05])


def test_long_short_with_fees_by_hand(windows: Windows) -> None:
    report = strategy_report(PREDICTED, windows, fees_bps=10, decrease="short")
    # Positions: +1, -1, and (+1 - 1) / 2 = 0 for the mixed window.
    # Trades: enter +1 (1); roll +1 -> -1 at 1h (2); leave -1 at 2h, nothing follows (1); window 3 none.
    # Net: 0.10 - 1 x 0.001 = 0.099; +0.10 - 3 x 0.001 = 0.097; 0.
    assert report["equity"]["value"] == pytest.approx([1.099, 1.099 * 1.097, 1.099 * 1.097])
    assert report["cumulative_return"] == pytest.approx(1.099 * 1.097 - 1)
    assert report["turnover_total"] == pytest.approx(4.0)
    assert report["turnover_per_window"] == pytest.approx(4 / 3)
    assert report["fees_paid"] == pytest.approx(0.004)
    assert report["hit_rate"] == 1.0
    assert report["windows_traded"] == 2
    assert report["max_drawdown"] == 0.0
    # Sharpe over the calendar: 4 one-hour periods from 0h to 4h, returns 0.099, 0.097, 0, 0.
    mean = (0.099 + 0.097) / 4
    std = math.sqrt((0.099**2 + 0.097**2) / 4 - mean**2)
    assert report["sharpe"] == pytest.approx(mean / std * math.sqrt(YEAR_SECONDS / H))


def test_long_flat_with_fees_by_hand(windows: Windows) -> None:
    report = strategy_report(PREDICTED, windows, fees_bps=10, decrease="flat")
    # Positions: +1, 0, (1 + 0) / 2 = 0.5. Trades: 1 in; 1 out at the roll; 0.5 in and 0.5 out.
    # Net: 0.099; -0.001; 0.5 x 0.05 - 0.001 = 0.024.
    assert report["equity"]["value"] == pytest.approx([1.099, 1.099 * 0.999, 1.099 * 0.999 * 1.024])
    assert report["turnover_total"] == pytest.approx(3.0)
    assert report["hit_rate"] == pytest.approx(2 / 2)
    assert report["max_drawdown"] == pytest.approx(0.001)


def test_fees_only_cost(windows: Windows) -> None:
    free = strategy_report(PREDICTED, windows, fees_bps=0, decrease="short")
    assert free["cumulative_return"] == pytest.approx(1.1 * 1.1 - 1)
    assert free["fees_paid"] == 0


def test_buy_and_hold_by_hand(windows: Windows) -> None:
    report = buy_and_hold_report(windows, fees_bps=10)
    # 100 at the first entry, 105 at the last exit, a 10 bps fee in and out.
    assert report["cumulative_return"] == pytest.approx(1.05 * 0.999 * 0.999 - 1)
    # The path 100, 110, 99, 100, 105: worst fall 110 -> 99.
    assert report["max_drawdown"] == pytest.approx(0.1)
    assert report["equity"]["time"] == [0, H, 2 * H, 3 * H, 4 * H]


def test_overlapping_horizons_become_sleeves() -> None:
    entry = np.arange(0, 10 * H, H)
    exit_ = entry + 2 * H  # two-hour labels every hour: two windows open at any moment
    price = np.linspace(100, 110, 12)
    windows = Windows.from_rows(entry, exit_, price[:10], price[2:12])
    assert windows.sleeves == 2
    report = strategy_report(np.ones(10, dtype=np.int8), windows, fees_bps=0, decrease="short")
    expected = np.prod(1 + (price[2:12] / price[:10] - 1) / 2) - 1
    assert report["cumulative_return"] == pytest.approx(expected)
