"""The labelling contract of DESIGN.md, in one pure, vectorised module.

Every service that needs a label or a market situation imports it from here, so a label can
be re-derived and audited anywhere. Times are int64 seconds since the epoch (UTC); candles are
stamped with their OPEN time (ccxt's convention) and must be sorted, unique and closed.

The "headline time" t below is when the headline is KNOWN: its ``known_at``, the end of its
time's precision period in its zone (``services.common.time_precision``), never the start of
a coarse period. A headline dated only "2020-07-17" is known at the next midnight, so no
candle of that day can be its entry or its market situation.

- Entry: the open of the first candle whose open time is >= the headline time, and only if
  that candle is the next one on the grid (open time < headline time + timeframe). A headline
  that falls in a gap gets no entry: we never reach past a gap for a later price.
- Exit: the close of the candle that ends at entry + horizon (open time = entry + horizon -
  timeframe); it must exist exactly.
- return = exit / entry - 1; Increase if > band, Decrease if < -band, Flat otherwise. Band 0
  (the default) disables Flat: a return of exactly 0 is then Decrease ("did not increase").
- Market situation: words for the last ``lookback`` candles that CLOSED at or before the
  headline time (close time = open time + timeframe <= t): only data known at t. A missing
  candle on the grid says "no data" rather than borrowing an older one.

Nothing here touches a database, a clock or the network: inputs in, arrays out.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from services.common.prompts import DECREASE, FLAT, INCREASE

LABELS: tuple[str, ...] = (INCREASE, DECREASE, FLAT)
NO_LABEL = -1  # label code of a headline that cannot be labelled (yet)

_TIMEFRAME = re.compile(r"^\s*(\d+)\s*([smhdwM])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "M": 2592000}


def timeframe_seconds(timeframe: str) -> int:
    """ccxt notation ('1m', '15m', '1h', '1d') to seconds; raises ValueError on anything else."""
    match = _TIMEFRAME.match(timeframe)
    if not match or int(match.group(1)) <= 0:
        raise ValueError(f"unknown timeframe {timeframe!r}: use ccxt notation such as 1m, 15m, 1h, 1d")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


@dataclass(frozen=True)
class SituationWords:
    """Thresholds that turn one candle into words ("sharp small increase").

    size: |close/open - 1| below ``small_move`` is "small", else "large";
    pace: (high - low) / open at or above ``sharp_range`` is "sharp", else "steady".
    Defaults suit hourly BTC candles (median hourly |move| about 0.3%, range about 0.8%).
    """

    small_move: float = 0.005
    sharp_range: float = 0.01


DEFAULT_WORDS = SituationWords()
_DIRECTIONS = ("increase", "decrease", "no change")
_SIZES = ("small", "large")
_PACES = ("steady", "sharp")
_MISSING = "no data"


def _phrases() -> np.ndarray:
    """Every one-candle phrase by code: pace * 6 + size * 3 + direction; last one is missing."""
    phrases = [
        f"{pace} {size} {direction}" for pace in _PACES for size in _SIZES for direction in _DIRECTIONS
    ]
    return np.array([*phrases, _MISSING], dtype=object)


_PHRASES = _phrases()
_MISSING_CODE = len(_PHRASES) - 1


def candle_codes(
    opens: np.ndarray, highs: np.ndarray, lows: np.ndarray, closes: np.ndarray, words: SituationWords
) -> np.ndarray:
    """One phrase code per candle (see ``_phrases``)."""
    move = closes / opens - 1.0
    direction = np.where(move > 0, 0, np.where(move < 0, 1, 2))
    size = (np.abs(move) >= words.small_move).astype(np.int64)
    pace = ((highs - lows) / opens >= words.sharp_range).astype(np.int64)
    return pace * 6 + size * 3 + direction


def situation_text(codes: Sequence[int]) -> str:
    """Newest first: "Sharp small increase after a steady large decrease"."""
    phrases = [str(_PHRASES[code]) for code in codes]
    if not phrases:
        return "Unknown"
    text = phrases[0] + "".join(f" after a {phrase}" for phrase in phrases[1:])
    return text[0].upper() + text[1:]


@dataclass(frozen=True)
class Candles:
    """Closed candles of one market, sorted by open time (int64 seconds), as parallel arrays."""

    open_time: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    timeframe_seconds: int

    def __post_init__(self) -> None:
        times = self.open_time
        if times.size and np.any(np.diff(times) <= 0):
            raise ValueError("candle open times must be strictly increasing")
        if times.size and np.any(times % self.timeframe_seconds != 0):
            raise ValueError("candle open times must sit on the timeframe grid")


def candle_faults(
    open_time: np.ndarray,
    opens: np.ndarray,
    highs: np.ndarray,
    lows: np.ndarray,
    closes: np.ndarray,
    timeframe_seconds: int,
    volume: np.ndarray | None = None,
    max_price: float = np.inf,
) -> np.ndarray:
    """Why each candle cannot be used, or None: one object array aligned with the candles.

    A usable candle has positive finite prices (at most ``max_price``), ``high >= max(open,
    close)``, ``low <= min(open, close)``, an open time on the timeframe grid and, when given, a
    finite volume >= 0. The first fault found wins: ``bad_price``, ``inconsistent_range``,
    ``off_grid``, ``bad_volume``. Pure and vectorised, like the rest of this module.
    """
    prices = np.vstack(
        [np.asarray(column, dtype=np.float64) for column in (opens, highs, lows, closes)]
    ).reshape(4, -1)
    times = np.asarray(open_time, dtype=np.int64)
    faults = np.full(times.shape, None, dtype=object)
    with np.errstate(invalid="ignore"):
        bad_price = ~np.all(np.isfinite(prices) & (prices > 0) & (prices <= max_price), axis=0)
        o, h, lo, c = prices
        inconsistent = ~bad_price & ((h < np.maximum(o, c)) | (lo > np.minimum(o, c)) | (lo > h))
    off_grid = times % timeframe_seconds != 0
    checks = [("bad_price", bad_price), ("inconsistent_range", inconsistent), ("off_grid", off_grid)]
    if volume is not None:
        vol = np.asarray(volume, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            checks.append(("bad_volume", ~(np.isfinite(vol) & (vol >= 0))))
    for reason, mask in reversed(checks):  # the first check listed wins
        faults[mask] = reason
    return faults


@dataclass(frozen=True)
class Labels:
    """Per-headline outcome, aligned with the input headline times.

    ``label`` is an index into LABELS or NO_LABEL; ``entry_idx``/``exit_idx`` index the
    candles (-1 when missing); ``situation_idx`` holds the candle index of each lookback slot,
    newest first (-1 when that candle is missing).
    """

    label: np.ndarray
    entry_idx: np.ndarray
    exit_idx: np.ndarray
    entry_price: np.ndarray
    exit_price: np.ndarray
    return_: np.ndarray
    situation_idx: np.ndarray
    situation_code: np.ndarray

    @property
    def labelled(self) -> np.ndarray:
        return self.label != NO_LABEL

    def situation(self, row: int) -> str:
        return situation_text(self.situation_code[row].tolist())


class _GridIndex:
    """Candle index by open time. Candles sit on a grid, so when they cover their span densely a
    lookup table (slot -> index) replaces binary search: O(1) per query, no cache-missing probes.
    """

    def __init__(self, open_time: np.ndarray, timeframe_seconds: int) -> None:
        self.open_time = open_time
        self.tf = timeframe_seconds
        self.first = int(open_time[0]) if open_time.size else 0
        slots = (int(open_time[-1]) - self.first) // timeframe_seconds + 1 if open_time.size else 0
        self.table: np.ndarray | None = None
        if 0 < slots <= 4 * open_time.size + 1024:  # dense enough: a table costs little memory
            self.table = np.full(slots, -1, dtype=np.int64)
            self.table[(open_time - self.first) // timeframe_seconds] = np.arange(
                open_time.size, dtype=np.int64
            )

    def exact(self, wanted: np.ndarray) -> np.ndarray:
        """Index of the candle opening exactly at ``wanted`` (grid times), or -1."""
        if self.table is not None:
            slot = (wanted - self.first) // self.tf
            inside = (slot >= 0) & (slot < self.table.size) & ((wanted - self.first) % self.tf == 0)
            return np.where(inside, self.table[np.clip(slot, 0, self.table.size - 1)], -1)
        idx = np.searchsorted(self.open_time, wanted, side="left")
        inside = idx < self.open_time.size
        found = np.zeros(wanted.shape, dtype=bool)
        found[inside] = self.open_time[idx[inside]] == wanted[inside]
        return np.where(found, idx, -1)


def label_headlines(
    headline_times: np.ndarray,
    candles: Candles,
    horizon_seconds: int,
    neutral_band: float = 0.0,
    lookback: int = 2,
    words: SituationWords = DEFAULT_WORDS,
) -> Labels:
    """Label every headline time against ``candles`` (see the module docstring for the rules)."""
    tf = candles.timeframe_seconds
    if horizon_seconds <= 0 or horizon_seconds % tf != 0:
        raise ValueError(f"horizon {horizon_seconds}s must be a positive multiple of the timeframe {tf}s")
    if neutral_band < 0:
        raise ValueError("neutral band must be >= 0")
    times = np.asarray(headline_times, dtype=np.int64)
    index = _GridIndex(candles.open_time, tf)

    # Entry: the next grid candle at or after t; the candle containing t is never used.
    entry_open = -(-times // tf) * tf  # ceil to the grid
    entry_idx = index.exact(entry_open)
    exit_idx = np.where(entry_idx >= 0, index.exact(entry_open + horizon_seconds - tf), -1)
    ok = (entry_idx >= 0) & (exit_idx >= 0)

    # Padding with a NaN candle keeps the gathers valid when there are no candles at all.
    opens, closes = np.append(candles.open, np.nan), np.append(candles.close, np.nan)
    entry_price = np.where(ok, opens[entry_idx], np.nan)
    exit_price = np.where(ok, closes[exit_idx], np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        ret = exit_price / entry_price - 1.0
    label = np.full(times.shape, NO_LABEL, dtype=np.int64)
    flat_code = 2 if neutral_band > 0 else 1  # band 0: no Flat class, an unchanged price is Decrease
    label[ok] = np.where(ret[ok] > neutral_band, 0, np.where(ret[ok] < -neutral_band, 1, flat_code))

    # Situation: slot k is the candle that closed k candles before the last close at or before t.
    last_closed_open = (times // tf) * tf - tf
    slots = last_closed_open[:, None] - tf * np.arange(lookback, dtype=np.int64)[None, :]
    situation_idx = index.exact(slots.ravel()).reshape(slots.shape)
    codes_per_candle = candle_codes(candles.open, candles.high, candles.low, candles.close, words)
    if codes_per_candle.size:
        situation_code = np.where(
            situation_idx >= 0, codes_per_candle[np.maximum(situation_idx, 0)], _MISSING_CODE
        )
    else:
        situation_code = np.full(slots.shape, _MISSING_CODE, dtype=np.int64)
    return Labels(label, entry_idx, exit_idx, entry_price, exit_price, ret, situation_idx, situation_code)


def situation_texts(situation_code: np.ndarray) -> np.ndarray:
    """Vectorised ``situation_text`` for many rows: one lookup per distinct combination."""
    if situation_code.size == 0:
        return np.array([], dtype=object)
    base = len(_PHRASES)
    weights = base ** np.arange(situation_code.shape[1] - 1, -1, -1, dtype=np.int64)
    keys = situation_code @ weights
    unique_keys, inverse = np.unique(keys, return_inverse=True)
    texts = np.empty(unique_keys.size, dtype=object)
    for position, key in enumerate(unique_keys.tolist()):
        digits = [(key // int(w)) % base for w in weights]
        texts[position] = situation_text(digits)
    return texts[inverse.ravel()]


def label_names(label_codes: np.ndarray) -> np.ndarray:
    """Label codes to names; NO_LABEL becomes None."""
    names = np.array([*LABELS, None], dtype=object)
    return names[np.where(label_codes == NO_LABEL, len(LABELS), label_codes)]
