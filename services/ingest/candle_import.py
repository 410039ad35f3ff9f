"""Candle files in the layouts people hold: CryptoDataDownload (both layouts), Yahoo Finance,
Binance kline CSV (and its zip), ccxt's own JSON, and any OHLCV CSV by column mapping.

The layout is read from the header (found past any banner line), or forced. The delimiter is
the first of ``,`` ``;`` tab with which a header line names a known layout, or given; in a
``;`` file numbers may carry decimal commas (``29345,5``, ``29.345,5``: ``_comma_numbers``).
Every row is validated (``validate``): a row that cannot be a closed candle is rejected by
reason with its line number, never repaired; the rest come back as a ``CandleFrame``. Storing
them is the store module's job, so a file can be checked before anything is written.
"""

from __future__ import annotations

import csv
import io
import json
import math
import operator
import re
import time
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from services.common.errors import InvalidInput
from services.common.labelling import candle_faults, timeframe_seconds
from services.ingest.headline_import import parse_delimiter
from services.ingest.headlines import Rejects

LAYOUTS = ("cryptodatadownload", "yahoo", "binance", "kraken", "ccxt-json", "generic")
GENERIC_KEYS = ("time", "open", "high", "low", "close", "volume")
TIME_UNITS = ("s", "ms", "us")
EXAMPLE_LINES = 10  # line numbers kept per reject reason for the summary
_HEADER_SCAN_LINES = 20  # banner lines tolerated before the header
_BLANK_LINE = re.compile(r"\n[ \t\r]*\n")
_MISSING = frozenset({"", "null", "nan", "none", "na", "n/a", "-"})
_BINANCE_HEADER = ("open_time", "open", "high", "low", "close", "volume", "close_time")
_TIME_NAMES = ("timestamp", "time", "date", "datetime", "open_time", "unix", "open time")
DELIMITERS = (",", ";", "\t")  # tried in this order on the header lines
# With ";" between cells a comma in a number can only be a decimal comma; dots are then
# thousands separators in groups of three (29.345,5), never a second decimal mark.
_COMMA_NUMBER = r"[+-]?(?:\d{1,3}(?:\.\d{3})+|\d+)(?:,\d+)?(?:[eE][+-]?\d+)?"


@dataclass(frozen=True)
class CandleFrame:
    """Closed candles as parallel arrays: open time in epoch seconds, sorted ascending."""

    open_time: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray

    def __len__(self) -> int:
        return int(self.open_time.size)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> CandleFrame:
        frame = frame.sort_values("open_time").drop_duplicates("open_time", keep="last")
        return cls(*(frame[c].to_numpy(dtype=dtype) for c, dtype in _CANDLE_COLUMNS))


_CANDLE_COLUMNS = (
    ("open_time", np.int64),
    ("open", np.float64),
    ("high", np.float64),
    ("low", np.float64),
    ("close", np.float64),
    ("volume", np.float64),
)


@dataclass
class LineRejects:
    """Rejected rows by reason: how many, and the first line numbers of each."""

    counts: dict[str, int] = field(default_factory=dict)
    lines: dict[str, list[int]] = field(default_factory=dict)

    def add(self, reason: str, lines: np.ndarray) -> None:
        if not lines.size:
            return
        self.counts[reason] = self.counts.get(reason, 0) + int(lines.size)
        kept = self.lines.setdefault(reason, [])
        kept.extend(int(line) for line in lines[: EXAMPLE_LINES - len(kept)])

    def total(self) -> int:
        return sum(self.counts.values())

    def as_rejects(self) -> Rejects:
        """The reasons in the shape the cycle's counters take (``cycle.count_rejects``)."""
        rejects = Rejects()
        for reason, count in self.counts.items():
            rejects.add(reason, "lines " + ", ".join(map(str, self.lines[reason])), count=count)
        return rejects


@dataclass
class CandleImport:
    """What one file held: its layout and timeframe, the valid candles, the rows refused."""

    layout: str
    timeframe: str
    candles: CandleFrame
    rows: int
    rejects: LineRejects = field(default_factory=LineRejects)
    delimiter: str | None = None  # None: ccxt JSON


@dataclass
class _Rows:
    """One file's data rows as text columns, with the line (or JSON row) each came from."""

    layout: str
    header: list[str]
    lines: np.ndarray
    columns: dict[str, pd.Series]  # time, open, high, low, close, volume (and volume2)
    malformed: np.ndarray  # rows with more cells than the header, JSON rows not six values
    time_format: str | None = None
    time_unit: str | None = None
    delimiter: str | None = None  # None: ccxt JSON


@dataclass(frozen=True)
class ImportOptions:
    layout: str | None = None
    columns: Mapping[str, str] = field(default_factory=dict)
    time_unit: str | None = None
    time_format: str | None = None
    delimiter: str | None = None  # None: sniffed from the header (DELIMITERS)


def parse_column_mapping(pairs: list[str]) -> dict[str, str]:
    """``["time=Timestamp", "open=O", ...]`` (the CLI's ``--column``) as a mapping."""
    mapping: dict[str, str] = {}
    for pair in pairs:
        key, sep, name = pair.partition("=")
        key = key.strip().lower()
        if not sep or not name.strip() or key not in GENERIC_KEYS:
            raise InvalidInput(
                f"--column {pair!r}: use KEY=COLUMN with KEY one of {', '.join(GENERIC_KEYS)}", param="column"
            )
        if key in mapping:
            raise InvalidInput(f"--column {key} given twice", param="column")
        mapping[key] = name.strip()
    return mapping


# --- reading the file ---------------------------------------------------------------------


def _file_text(path: Path) -> str:
    if not path.is_file():
        raise InvalidInput(f"no such file: {path}", param="path")
    data = path.read_bytes()
    if zipfile.is_zipfile(io.BytesIO(data)):
        data = _zip_member(path, data)
    try:
        return data.decode("utf-8-sig")  # a BOM is dropped
    except UnicodeDecodeError:
        return data.decode("latin-1")  # numbers and names are ASCII: every byte still decodes


def _zip_member(path: Path, data: bytes) -> bytes:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        members = [
            name
            for name in archive.namelist()
            if not name.endswith("/") and name.lower().endswith((".csv", ".json"))
        ]
        if len(members) != 1:
            raise InvalidInput(
                f"{path}: a zip must hold exactly one .csv or .json file (holds {members or 'none'})",
                param="path",
            )
        return archive.read(members[0])


def _fields(line: str, delimiter: str = ",") -> list[str]:
    return [cell.strip() for cell in next(csv.reader([line], delimiter=delimiter), [])]


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
    except ValueError:
        return False
    return True


def _names(fields: list[str]) -> list[str]:
    return [" ".join(cell.lower().split()) for cell in fields]


def _header_layouts(names: list[str], options: ImportOptions) -> list[str]:
    """The layouts a header line fits, most specific first."""
    have = set(names)
    if options.columns:
        return ["generic"] if {v.lower() for v in options.columns.values()} <= have else []
    fits = []
    if {"date", "open", "high", "low", "close", "adj close", "volume"} <= have:
        fits.append("yahoo")
    if {"date", "symbol", "open", "high", "low", "close"} <= have:
        fits.append("cryptodatadownload")
    if set(_BINANCE_HEADER) <= have:
        fits.append("binance")
    if {"open", "high", "low", "close", "volume"} <= have and any(n in have for n in _TIME_NAMES):
        fits.append("generic")
    return fits


def _binance_row(fields: list[str]) -> bool:
    return len(fields) == 12 and all(_is_number(cell) for cell in fields) and float(fields[0]) > 1e11


def _kraken_row(fields: list[str]) -> bool:
    """A line of Kraken's OHLCVT files (its historical-data zip: ``XBTUSD_60.csv``): no header,
    ``time,open,high,low,close,volume,trades``, the time in epoch seconds. Seven numbers with a
    time in seconds is that shape and no other layout's; the prices are still validated."""
    return (
        len(fields) == 7
        and all(_is_number(cell) for cell in fields)
        and 1e8 <= float(fields[0]) < _LATEST_SECONDS
    )


_HEADERLESS = (("binance", _binance_row), ("kraken", _kraken_row))


def _find_header(lines: list[str], options: ImportOptions) -> tuple[int, str, str]:
    """(index of the header line, layout, delimiter); -1 for a header-less Binance file. The
    delimiter is the given one, else the first of ``DELIMITERS`` with which a line of the
    first 20 names a layout; a file in none is refused naming the widest header found."""
    given = parse_delimiter(options.delimiter) if options.delimiter else None
    scans = {
        delimiter: [
            (i, _fields(line, delimiter)) for i, line in enumerate(lines[:_HEADER_SCAN_LINES]) if line.strip()
        ]
        for delimiter in ((given,) if given else DELIMITERS)
    }
    for delimiter, scanned in scans.items():
        found = _layout_line(scanned, options)
        if found is not None:
            return (*found, delimiter)
    widest = max(scans, key=lambda delimiter: len(_real_header([f for _i, f in scans[delimiter]]) or []))
    raise InvalidInput(_unknown_layout(scans[widest], options, widest), param="layout")


def _layout_line(scanned: list[tuple[int, list[str]]], options: ImportOptions) -> tuple[int, str] | None:
    for index, fields in scanned:
        fits = [
            layout for layout in _header_layouts(_names(fields), options) if options.layout in (None, layout)
        ]
        if fits:
            return index, fits[0]
        for layout, fits_row in _HEADERLESS:
            if fits_row(fields) and options.layout in (None, layout) and not options.columns:
                return index - 1, layout
    return None


def _unknown_layout(
    scanned: list[tuple[int, list[str]]], options: ImportOptions, delimiter: str = ","
) -> str:
    """One line: the columns the file's real header holds (never a data row), what is known."""
    header = _real_header([fields for _i, fields in scanned])
    found = f"columns {header}" if header else "no header line"
    if header and delimiter != ",":
        found += f" (split on {delimiter!r})"
    wanted = f"the {options.layout} layout" if options.layout else "no known candle layout"
    if options.columns:
        wanted = f"the mapped columns {sorted(options.columns.values())}"
    return (
        f"{wanted} in this file: found {found}; known layouts: {', '.join(LAYOUTS)}"
        " (generic: --column time=C --column open=C --column high=C --column low=C"
        " --column close=C --column volume=C)"
    )


def _real_header(lines: list[list[str]]) -> list[str] | None:
    """The first line of names (no cell a number or starting with a digit, as a date does)
    that the next line matches in width: a banner line ("Timestamps are UTC
    timezone,https://...") is not it, nor is a data row, even one split on the wrong
    delimiter ("2024-01-01;38.345")."""
    names = [
        i
        for i, cells in enumerate(lines)
        if not any(_is_number(cell) or cell[:1].isdigit() for cell in cells if cell)
    ]
    for i in names:
        if i + 1 == len(lines) or len(lines[i + 1]) == len(lines[i]):
            return lines[i]
    return max((lines[i] for i in names), key=len, default=None)


def _read_table(
    text: str, lines: list[str], skip: int, width: int, wanted: list[int], delimiter: str = ","
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """The data lines after ``skip`` lines as text cells, each row's line number (1-based) and
    which rows had more cells than the header. Blank lines are dropped. pandas reads a clean
    file; one with a too-wide line goes through the csv module instead of being refused."""
    wide = any(
        len(_fields(line, delimiter)) > width
        for line in lines[skip : skip + _HEADER_SCAN_LINES]
        if line.strip()
    )
    blanks = _BLANK_LINE.search(text) is not None
    # Only some columns are read when every data line is known to hold exactly ``width``
    # cells (no quotes; each line's delimiter count): with ``usecols`` pandas would ignore a
    # too-wide line instead of refusing it.
    commas = set(map(operator.methodcaller("count", delimiter), lines[skip:]))
    exact = '"' not in text and commas <= {width - 1}
    try:
        if wide:  # pandas would silently cut a too-wide first line
            raise pd.errors.ParserError("a line wider than the header")
        frame = pd.read_csv(
            io.StringIO(text),
            sep=delimiter,
            header=None,
            names=list(range(width)),
            index_col=False,
            skiprows=skip,
            # Without blank lines pandas may type the columns itself (a clean numeric column
            # then needs no text pass: the fast path); with them every cell stays text so
            # a blank line can be told from a row of empty cells and line numbers hold. A ";"
            # file stays text too: pandas would read "29.345" (29345 there) as 29.345.
            dtype=str if blanks or delimiter == ";" else None,
            usecols=wanted if exact and not blanks else None,  # symbol and date text cost most
            keep_default_na=False,
            skip_blank_lines=False,
            skipinitialspace=True,
        )
        numbers = np.arange(skip + 1, skip + 1 + len(frame), dtype=np.int64)
        malformed = np.zeros(len(frame), dtype=bool)
    except pd.errors.ParserError:
        frame, numbers, malformed = _read_slowly(lines, skip, width, delimiter)
        blanks = True
    if not blanks:
        return frame, numbers, malformed
    blank = (frame == "").all(axis=1).to_numpy() & ~malformed
    return frame[~blank].reset_index(drop=True), numbers[~blank], malformed[~blank]


def _read_slowly(
    lines: list[str], skip: int, width: int, delimiter: str = ","
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    rows, malformed = [], []
    for line in lines[skip:]:
        cells = _fields(line, delimiter) if line.strip() else []
        malformed.append(len(cells) > width)  # more cells than the header: no column is sure
        rows.append(cells[:width] + [""] * (width - len(cells)))
    numbers = np.arange(skip + 1, skip + 1 + len(rows), dtype=np.int64)
    frame = pd.DataFrame(rows, columns=list(range(width)), dtype=str)
    return frame, numbers, np.asarray(malformed, dtype=bool)


def _csv_rows(text: str, options: ImportOptions) -> _Rows:
    lines = text.splitlines()
    index, layout, delimiter = _find_header(lines, options)
    header = _fields(lines[index], delimiter) if index >= 0 else []
    names = _names(header)
    width = max(len(header), _HEADERLESS_WIDTH.get(layout, 0))
    picks = _LAYOUT_COLUMNS[layout](names, options)
    frame, numbers, malformed = _read_table(
        text, lines, index + 1, width, sorted(set(picks.values())), delimiter
    )
    columns = {key: frame[position] for key, position in picks.items()}
    time_format = options.time_format
    if layout == "cryptodatadownload" and not time_format and "unix" not in _cdd_time_name(names):
        time_format = "%Y-%m-%d %I-%p"  # "2020-07-08 02-PM"; plain dates fall back to ISO
    return _Rows(layout, header, numbers, columns, malformed, time_format, options.time_unit, delimiter)


def _cdd_time_name(names: list[str]) -> str:
    return next((n for n in ("unix timestamp", "unix") if n in names), "date")


# Each layout: which column (by position) holds each value.


def _cdd_columns(names: list[str], _options: ImportOptions) -> dict[str, int]:
    volumes = [i for i, name in enumerate(names) if name.startswith("vol")]
    columns = {key: names.index(key) for key in ("open", "high", "low", "close")}
    columns["time"] = names.index(_cdd_time_name(names))
    if volumes:  # none: every row fails as bad_volume, nothing is made up
        columns["volume"] = volumes[0]
    if len(volumes) >= 2:
        columns["volume2"] = volumes[1]  # base or quote: told apart by value, per row
    return columns


def _yahoo_columns(names: list[str], _options: ImportOptions) -> dict[str, int]:
    columns = {key: names.index(key) for key in ("open", "high", "low", "close", "volume")}
    columns["time"] = names.index("date")
    return columns


def _binance_columns(_names: list[str], _options: ImportOptions) -> dict[str, int]:
    # open time, open, high, low, close, volume (base), close time, quote volume, trades, ...
    return {key: i for i, key in enumerate(("time", "open", "high", "low", "close", "volume"))}


def _kraken_columns(_names: list[str], _options: ImportOptions) -> dict[str, int]:
    # time (s), open, high, low, close, volume (base), trades
    return {key: i for i, key in enumerate(("time", "open", "high", "low", "close", "volume"))}


_HEADERLESS_WIDTH = {"binance": 12, "kraken": 7}


def _generic_columns(names: list[str], options: ImportOptions) -> dict[str, int]:
    mapping = {key: value.lower() for key, value in options.columns.items()}
    if not mapping:  # the standard names: time/timestamp/date..., open, high, low, close, volume
        mapping = {key: key for key in GENERIC_KEYS[1:]}
        mapping["time"] = next(n for n in _TIME_NAMES if n in names)
    missing = [key for key in GENERIC_KEYS if key not in mapping]
    if missing:
        raise InvalidInput(
            f"the generic layout needs --column {'=C --column '.join(missing)}=C (one per missing key)",
            param="column",
        )
    return {key: names.index(mapping[key]) for key in GENERIC_KEYS}


_LAYOUT_COLUMNS = {
    "cryptodatadownload": _cdd_columns,
    "yahoo": _yahoo_columns,
    "binance": _binance_columns,
    "kraken": _kraken_columns,
    "generic": _generic_columns,
}


def _json_rows(text: str) -> _Rows:
    """ccxt's ``fetch_ohlcv`` as JSON: ``[[ms, open, high, low, close, volume], ...]``."""
    try:
        payload = json.loads(text, parse_constant=lambda _name: None)
    except ValueError as exc:
        raise InvalidInput(f"not JSON: {exc}", param="path") from exc
    if not isinstance(payload, list):
        raise InvalidInput(
            f"ccxt JSON must be a list of [ms, o, h, l, c, v] rows, not {type(payload).__name__}"
        )
    malformed = np.array([not _json_candle(row) for row in payload], dtype=bool)
    cells = [
        [_json_cell(cell) for cell in row] if ok else [""] * 6
        for row, ok in zip(payload, ~malformed, strict=True)
    ]
    frame = pd.DataFrame(cells, columns=list(range(6)), dtype=str)
    lines = np.arange(1, len(cells) + 1, dtype=np.int64)  # "line" N: the Nth row of the list
    columns = dict(
        zip(("time", "open", "high", "low", "close", "volume"), (frame[i] for i in range(6)), strict=True)
    )
    return _Rows("ccxt-json", [], lines, columns, malformed, time_unit="ms")


def _json_candle(row: object) -> bool:
    return isinstance(row, list) and len(row) == 6 and not any(isinstance(c, bool | list | dict) for c in row)


def _json_cell(cell: object) -> str:
    return "" if cell is None else str(cell)


# --- text to numbers ----------------------------------------------------------------------


def _numbers(cells: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values, missing, unreadable): NaN where a cell is empty/"null" or not a number.
    Thousands separators are dropped only from the cells that need it (the fast path first)."""
    if pd.api.types.is_numeric_dtype(cells.dtype) and not pd.api.types.is_bool_dtype(cells.dtype):
        values = cells.to_numpy(dtype=np.float64, copy=True)  # pandas read every cell as a number
        return values, np.zeros(values.shape, bool), np.zeros(values.shape, bool)
    values = pd.to_numeric(cells, errors="coerce").to_numpy(dtype=np.float64, copy=True)
    missing = np.zeros(values.shape, dtype=bool)
    unreadable = np.zeros(values.shape, dtype=bool)
    retry = np.flatnonzero(np.isnan(values))
    if retry.size:
        text = cells.iloc[retry].str.strip()
        is_missing = text.str.lower().isin(_MISSING).to_numpy()
        again = pd.to_numeric(text.str.replace(r"[,_ ]", "", regex=True), errors="coerce").to_numpy(
            np.float64
        )
        values[retry] = again
        missing[retry] = is_missing
        unreadable[retry] = ~is_missing & np.isnan(again)
    return values, missing, unreadable


def _comma_numbers(cells: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``_numbers`` for a ``;`` file with decimal commas: ``29345,5`` and ``29.345,5`` are
    29345.5, ``1.234.567`` is 1234567; a cell of another shape (``29345.5``, the other mark,
    in a file that uses the comma) is not read, not guessed."""
    text = cells.astype(str).str.strip()
    ok = text.str.fullmatch(_COMMA_NUMBER).to_numpy(dtype=bool, na_value=False)
    values = np.full(len(text), np.nan)
    plain = text[ok].str.replace(".", "", regex=False).str.replace(",", ".", regex=False)
    values[ok] = pd.to_numeric(plain, errors="coerce").to_numpy(dtype=np.float64)
    missing = ~ok & text.str.lower().isin(_MISSING).to_numpy()
    return values, missing, ~ok & ~missing


def _decimal_comma(rows: _Rows) -> bool:
    """A ``;`` file whose price or volume cells hold a comma anywhere: its decimal mark."""
    if rows.delimiter != ";":
        return False
    keys = ("open", "high", "low", "close", "volume", "volume2")
    return any(
        rows.columns[key].astype(str).str.contains(",", regex=False).any()
        for key in keys
        if key in rows.columns
    )


_UNIT_DIVISOR = {"s": 1.0, "ms": 1e3, "us": 1e6}
_LATEST_SECONDS = 1e11  # year 5138: a larger "second" is a unit mistake, not a time


def _epoch_seconds(rows: _Rows) -> tuple[np.ndarray, np.ndarray]:
    """(open time in seconds as float, unreadable). Numbers take their unit from their size
    unless it is given: seconds below 1e11, milliseconds below 1e14, microseconds above
    (newer Binance files); anything else is read as a date, UTC unless it names an offset."""
    cells = rows.columns["time"]
    if rows.time_format is None:
        numbers, missing, _bad = _numbers(cells)
        if np.isfinite(numbers).sum() > (~missing).sum() / 2:
            if rows.time_unit:
                seconds = numbers / _UNIT_DIVISOR[rows.time_unit]
            else:
                size = np.abs(numbers)
                seconds = numbers / np.select([size >= 1e14, size >= 1e11], [1e6, 1e3], 1.0)
            with np.errstate(invalid="ignore"):
                return seconds, ~(np.isfinite(seconds) & (seconds >= 0) & (seconds < _LATEST_SECONDS))
    return _text_seconds(cells.astype(str).str.strip(), rows.time_format)


def _text_seconds(cells: pd.Series, time_format: str | None) -> tuple[np.ndarray, np.ndarray]:
    def parse(form: str) -> pd.Series:
        return pd.to_datetime(cells, format=form, errors="coerce", utc=True)

    stamps = parse(time_format or "ISO8601")
    if time_format == "%Y-%m-%d %I-%p":  # CryptoDataDownload hourly; its daily files are ISO
        stamps = stamps.fillna(parse("ISO8601"))
    seconds = (stamps - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy(dtype=np.float64)
    return seconds, np.isnan(seconds)


def _pick_base_volume(first: np.ndarray, second: np.ndarray, close: np.ndarray) -> np.ndarray:
    """Of two volume columns, the base one, row by row: base x close is the quote volume, so
    above a price of 1 the base volume is the smaller, below it the larger. The column names
    are not trusted (CryptoDataDownload swaps them in most rows of its newer layout)."""
    with np.errstate(invalid="ignore"):
        first_is_base = (close > 1) == (first <= second)
    return np.where(first_is_base, first, second)


# --- validation ---------------------------------------------------------------------------


def timeframe_name(seconds: int) -> str:
    """Seconds in ccxt notation: 3600 -> '1h', 86400 -> '1d'."""
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def infer_timeframe(open_times: np.ndarray) -> int | None:
    """The most common step between consecutive distinct open times (gaps do not move it)."""
    steps = np.diff(np.unique(open_times))
    if not steps.size:
        return None
    values, counts = np.unique(steps, return_counts=True)
    return int(values[np.argmax(counts)])


def _resolve_timeframe(times: np.ndarray, given: str | None) -> int:
    inferred = infer_timeframe(times)
    if given is None:
        if inferred is None:
            raise InvalidInput("fewer than two readable candles: give --timeframe", param="timeframe")
        return inferred
    try:
        wanted = timeframe_seconds(given)
    except ValueError as exc:
        raise InvalidInput(str(exc), param="timeframe") from exc
    if inferred is not None and inferred != wanted:
        raise InvalidInput(
            f"--timeframe {given} but the file's candles are {timeframe_name(inferred)} apart",
            param="timeframe",
        )
    return wanted


@dataclass
class _Converted:
    seconds: np.ndarray  # float, NaN where unreadable
    values: dict[str, np.ndarray]  # open, high, low, close, volume (the base one)
    readable: np.ndarray  # rows that survived the text checks
    rejects: LineRejects


def _convert(rows: _Rows) -> _Converted:
    """Text to numbers; rows rejected here: ``malformed_row`` (more cells than the header, or
    a JSON row that is not six values), ``missing_value`` (an empty or "null" cell, Yahoo's
    holidays), ``bad_number``, ``bad_time``."""
    shape = rows.lines.shape
    values, missing, unreadable = {}, np.zeros(shape, bool), np.zeros(shape, bool)
    read = _comma_numbers if _decimal_comma(rows) else _numbers
    for key in ("open", "high", "low", "close", "volume", "volume2"):
        if key in rows.columns:
            values[key], gone, bad = read(rows.columns[key])
            missing |= gone
            unreadable |= bad
    values.setdefault("volume", np.full(shape, np.nan))
    seconds, bad_time = _epoch_seconds(rows)
    if "volume2" in values:
        values["volume"] = _pick_base_volume(values["volume"], values.pop("volume2"), values["close"])
    rejects, readable = LineRejects(), np.ones(shape, bool)
    checks = (
        ("malformed_row", rows.malformed),
        ("missing_value", missing),
        ("bad_number", unreadable),
        ("bad_time", bad_time),
    )
    for reason, mask in checks:
        rejects.add(reason, rows.lines[readable & mask])
        readable &= ~mask
    return _Converted(seconds, values, readable, rejects)


_CANDLE_REASONS = ("bad_price", "inconsistent_range", "off_grid", "bad_volume")
_TIME_REASONS = ("future_candle", "not_closed", "early_candle")


def validate(
    rows: _Rows,
    timeframe: str | None,
    now_seconds: float,
    earliest_seconds: float | None = None,
    max_price: float = math.inf,
) -> CandleImport:
    """Every row checked; the first fault found wins: the text checks (``_convert``), then
    ``candle_faults``' ``bad_price``, ``inconsistent_range``, ``off_grid`` (a fractional
    second too), ``bad_volume``, then ``future_candle`` (opens after now), ``not_closed``
    (still open at now: only closed candles are stored), ``early_candle`` (before
    ``earliest_seconds``), and ``duplicate_time`` (a second row for one open time; the first
    in the file is kept). The timeframe is the file's spacing; one given must agree with it."""
    converted = _convert(rows)
    readable, values = converted.readable, converted.values
    exact = np.where(readable, converted.seconds, 0.0)
    times = np.floor(exact).astype(np.int64)
    tf = _resolve_timeframe(times[readable], timeframe)
    faults = candle_faults(
        times, values["open"], values["high"], values["low"], values["close"], tf, values["volume"], max_price
    )
    faults[~readable] = "unreadable"  # counted already
    clean = faults == None  # noqa: E711 (elementwise on an object array)
    faults[clean & (times != exact)] = "off_grid"
    time_faults = [times > now_seconds, times + tf > now_seconds]
    time_faults.append(
        times < earliest_seconds if earliest_seconds is not None else np.zeros(times.shape, bool)
    )
    for reason, mask in zip(_TIME_REASONS, time_faults, strict=True):  # in order: the first wins
        faults[mask & (faults == None)] = reason  # noqa: E711
    ok = np.flatnonzero(faults == None)  # noqa: E711
    first = np.zeros(times.shape, bool)
    first[ok[np.unique(times[ok], return_index=True)[1]]] = True
    faults[(faults == None) & ~first] = "duplicate_time"  # noqa: E711
    rejects = converted.rejects
    for reason in (*_CANDLE_REASONS, *_TIME_REASONS, "duplicate_time"):
        rejects.add(reason, rows.lines[faults == reason])
    keep = np.flatnonzero(first)
    keep = keep[np.argsort(times[keep], kind="stable")]
    candles = CandleFrame(
        times[keep], *(values[key][keep] for key in ("open", "high", "low", "close", "volume"))
    )
    return CandleImport(
        rows.layout, timeframe_name(tf), candles, int(rows.lines.size), rejects, rows.delimiter
    )


# --- entry points -------------------------------------------------------------------------


def read_rows(path: Path, options: ImportOptions | None = None) -> _Rows:
    """The file's data rows in the layout its header names (or ``options.layout``)."""
    options = options or ImportOptions()
    if options.layout is not None and options.layout not in LAYOUTS:
        raise InvalidInput(f"unknown layout {options.layout!r}; known: {', '.join(LAYOUTS)}", param="layout")
    if options.columns and options.layout not in (None, "generic"):
        raise InvalidInput("--column mappings are for the generic layout only", param="column")
    if options.time_unit is not None and options.time_unit not in TIME_UNITS:
        raise InvalidInput(f"unknown time unit {options.time_unit!r}; known: {', '.join(TIME_UNITS)}")
    text = _file_text(Path(path))
    if text.lstrip().startswith("[") and options.layout in (None, "ccxt-json"):
        return _json_rows(text)
    if options.layout == "ccxt-json":
        raise InvalidInput(f"{path} is not ccxt JSON (it does not start with '[')", param="layout")
    return _csv_rows(text, options)


def import_candle_file(
    path: Path,
    options: ImportOptions | None = None,
    timeframe: str | None = None,
    now_seconds: float | None = None,
    earliest_seconds: float | None = None,
    max_price: float = math.inf,
) -> CandleImport:
    """Read and validate one candle file. Raises InvalidInput for a file in no known layout or
    a timeframe that disagrees with the file's spacing; bad rows are rejected and counted."""
    rows = read_rows(Path(path), options)
    now = time.time() if now_seconds is None else now_seconds
    return validate(rows, timeframe, now, earliest_seconds, max_price)


def import_cryptodatadownload(path: Path) -> CandleFrame:
    """A CryptoDataDownload file as candles, strictly: an unreadable price or time fails the
    file. (The bundled data's reader; ``import_candle_file`` is the tolerant one.)"""
    path = Path(path)
    try:
        rows = read_rows(path, ImportOptions(layout="cryptodatadownload"))
    except InvalidInput as exc:
        if exc.param != "layout":
            raise
        raise InvalidInput(f"{path} is not a CryptoDataDownload file: {exc.message}") from exc
    unreadable = {
        reason: lines
        for reason, lines in _convert(rows).rejects.lines.items()
        if reason in ("bad_number", "bad_time", "malformed_row")
    }
    if unreadable:
        raise InvalidInput(f"{path}: a price or time is not a number ({unreadable})")
    return validate(rows, None, math.inf).candles
