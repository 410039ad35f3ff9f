"""Headline files as people have them: CSV with any common delimiter and encoding, or JSON
lines; the columns found by name or given; every row's time parsed with its precision.

Reading: the encoding is taken from a byte-order mark (UTF-8, UTF-16, UTF-32), else UTF-8,
else cp1252, else latin-1 (which reads any bytes); the delimiter is the one of ``,`` ``;``
tab ``|`` that splits a sample of lines into the same number of fields as the header. Both
can be given (``ReadOptions``). Blank lines are skipped; quoted fields may hold the delimiter
and line breaks; line numbers in the rejects are the file's own (1 is the header). A file
whose records are each one line is split by Arrow kernels (the csv module reads only its lines
with a quote); one with a record over several lines goes through the csv module whole, the
same table either way (tests/ingest/test_headline_parse_fast.py).

A file may hold the date and the time of day in two columns (``Date,Time`` with ``18-Jul-20``,
``04:24``): the time column is then a clock column (named ``time``, ``hour``, ``clock``...
with most cells a time of day alone) and a date column is found by name (``date``, ``day``...),
or both are given as ``--time-column DATE+TIME``. Each row's time is the two cells joined
(``18-Jul-20 04:24``) and parsed as one, so its precision is what the row holds: an empty
clock cell leaves the date alone, day precision. A clock cell that is not a time of day
rejects the row (``bad_time``).

A file that cannot be read, or lacks a title or a time column, is refused whole
(InvalidInput, nothing returned). Otherwise every row is taken or rejected on its own, the
rejects counted by reason with their line numbers (``HeadlineImport``).
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from services.common.errors import InvalidInput
from services.ingest.headline_rows import (
    ColumnCells,
    HeadlineRows,
    PayloadHashes,
    normalise_titles,
    not_plain,
    payload_hashes,
    title_keys,
)
from services.ingest.headline_times import (
    TimeColumn,
    clock_cells,
    parse_time_column,
    resolve_dayfirst,
    to_us,
)
from services.ingest.headlines import DEFAULT_LIMITS, HeadlineRecord, ItemLimits, Rejects

DELIMITERS = (",", ";", "\t", "|")
JSON_LINES_SUFFIXES = (".jsonl", ".ndjson")
LINES_KEPT = 100  # line numbers kept per reject reason (the count is always whole)
_SNIFF_LINES = 50
# Column names each role is found under, in order of preference (compared lower-case, with
# spaces, "_" and "-" dropped).
COLUMN_NAMES: dict[str, tuple[str, ...]] = {
    "title": ("title", "headline", "headlines", "newstitle", "articletitle", "heading"),
    "time": (
        "publishedat", "published", "pubdate", "publishdate", "publicationdate", "datetime",
        "timestamp", "time", "date", "createdat",
    ),
    "summary": ("summary", "description", "desc", "abstract", "snippet", "lead"),
    "guid": ("guid", "id", "uuid", "articleid", "newsid"),
}  # fmt: skip
# A file with the date and the time of day in two columns: the names each is found under.
DATE_NAMES = ("date", "day", "pubdate", "publishdate", "publicationdate", "publisheddate", "newsdate")
CLOCK_NAMES = ("time", "hour", "clock", "timeofday", "publishtime", "publishedtime", "pubtime", "newstime")
_CLOCK_SAMPLE = 1000  # non-empty cells a clock column is recognised on
_NAME_DROP = re.compile(r"[\s_\-]+")
_FIRST_LINE = re.compile(r"[^\r\n]*")  # the line breaks io.StringIO(newline="") splits at


@dataclass(frozen=True)
class ReadOptions:
    """How to read a file; None means find it out from the file."""

    delimiter: str | None = None
    encoding: str | None = None
    dayfirst: bool | None = None
    time_format: str | None = None
    timezone: str = "UTC"


@dataclass(frozen=True)
class ColumnMap:
    """Which column holds what; None means found by name (``COLUMN_NAMES``). ``time`` may
    name two columns, ``"DATE+TIME"``: the date and the time of day, joined per row."""

    title: str | None = None
    time: str | None = None
    summary: str | None = None
    guid: str | None = None


@dataclass
class HeadlineImport:
    records: Sequence[HeadlineRecord] = field(default_factory=list)  # HeadlineRows once read
    rejects: Rejects = field(default_factory=Rejects)
    lines: dict[str, list[int]] = field(default_factory=dict)  # reason -> first LINES_KEPT lines
    detail: dict[str, Any] = field(default_factory=dict)  # encoding, delimiter, columns, time layout

    def reject(self, reason: str, line: int, message: str = "") -> None:
        self.rejects.add(reason, f"line {line}: {message}" if message else f"line {line}")
        kept = self.lines.setdefault(reason, [])
        if len(kept) < LINES_KEPT:
            kept.append(line)

    def summary(self) -> dict[str, Any]:
        """What a backfill reports beside its counts."""
        frame = getattr(self.records, "frame", None)
        counts = frame["time_precision"].value_counts() if frame is not None else pd.Series(dtype=int)
        precision = {str(name): int(count) for name, count in counts.items()}
        return {**self.detail, "precision": precision, "rejected_lines": self.lines}


@dataclass
class RawTable:
    """A file's header and rows as text, held by column (``cells[j]``: column j of every
    row), each row with the line it starts on."""

    columns: list[str]
    cells: list[pa.Array]
    lines: np.ndarray
    detail: dict[str, Any]
    bad: list[tuple[int, str, str]] = field(default_factory=list)  # (line, reason, message)

    def __len__(self) -> int:
        return len(self.lines)


def import_headlines(
    path: Path,
    source: str,
    columns: ColumnMap = ColumnMap(),
    options: ReadOptions = ReadOptions(),
    limits: ItemLimits = DEFAULT_LIMITS,
    now: datetime | None = None,
) -> HeadlineImport:
    """Read a headline file (CSV, or JSON lines by its suffix) into records and rejects."""
    path = Path(path)
    zone = _zone(options.timezone)
    table = read_table(path, options)
    hashes = PayloadHashes(table.columns, table.cells)  # every row's, made beside the rest
    try:
        return _import_table(path, table, hashes, source, columns, options, limits, zone, now)
    finally:
        hashes.close()


def _import_table(
    path: Path,
    table: RawTable,
    hashes: PayloadHashes,
    source: str,
    columns: ColumnMap,
    options: ReadOptions,
    limits: ItemLimits,
    zone: ZoneInfo,
    now: datetime | None,
) -> HeadlineImport:
    """``import_headlines`` once the file is read (``hashes``: its rows' payload hashes)."""
    columns, date_given = _split_pair(path, table.columns, columns)
    mapping = _map_columns(path, table.columns, columns)
    mapping = _pair_clock_column(table, mapping, columns, date_given)
    result = HeadlineImport(detail={**table.detail, "columns": mapping})
    for line, reason, message in table.bad:
        result.reject(reason, line, message)
    positions = {name: table.columns.index(name) for name in mapping.values() if name}
    raw_times, clock_faults = _time_texts(table, mapping, positions)
    # Rows blank in both title and time (the Kaggle file's ",,") are skipped.
    faulty = np.zeros(len(table), dtype=bool)
    faulty[list(clock_faults)] = True
    keep = np.flatnonzero(~(blank(table.cells[positions[mapping["title"]]]) & blank(raw_times)) | faulty)  # type: ignore[index]
    times: list[str] = raw_times.take(pa.array(keep, pa.int64())).to_pylist()
    lines = table.lines[keep]
    # A --time-format says the order itself; otherwise the file's numeric dates decide it.
    dayfirst = options.dayfirst if options.time_format else resolve_dayfirst(times, lines, options.dayfirst)
    parsed = parse_time_column(times, zone, dayfirst, options.time_format)
    for row, message in clock_faults.items():  # a clock cell that is no time of day: the row's fault
        parsed.faults[int(np.searchsorted(keep, row))] = ("bad_time", message)
    result.detail.update(dayfirst=dayfirst, time_layout=parsed.fast_format)
    stamp = now or datetime.now(UTC)
    _build(result, table, keep, times, positions, mapping, parsed, source, limits, stamp, hashes)
    return result


def _split_pair(path: Path, found: list[str], given: ColumnMap) -> tuple[ColumnMap, str | None]:
    """``time="DATE+TIME"`` (``--time-column Date+Time``): the clock column as the time
    column and the date column's name; a name that exists as written is one column."""
    if given.time is None or given.time in found or "+" not in given.time:
        return given, None
    date, _, clock = given.time.partition("+")
    for name in (date, clock):
        if name not in found:
            raise InvalidInput(
                f"column {name!r} of {given.time!r} not in {path} (columns: {found})", param="column"
            )
    if date == clock:
        raise InvalidInput(f"{given.time!r}: the date and the time are one column", param="column")
    return replace(given, time=clock), date


def _pair_clock_column(
    table: RawTable, mapping: dict[str, str | None], given: ColumnMap, date_given: str | None
) -> dict[str, str | None]:
    """The mapping with ``date`` added when the time is a clock column beside a date column:
    given as a pair; or the time column (given, or found among ``CLOCK_NAMES`` when not
    given) holds mostly times of day alone and a ``DATE_NAMES`` column is there (the column
    found by ``COLUMN_NAMES`` being one of the two). Otherwise the mapping as it was: the
    time column holds the whole time."""
    if date_given is not None:
        return {**mapping, "date": date_given}
    by_key = {_NAME_DROP.sub("", name.lower()): name for name in reversed(table.columns)}
    clocks = [mapping["time"]] if given.time else [by_key[key] for key in CLOCK_NAMES if key in by_key]
    clock = next((name for name in clocks if name and _mostly_clocks(table, name)), None)
    date = next(
        (by_key[key] for key in DATE_NAMES if key in by_key and by_key[key] not in (clock, mapping["title"])),
        None,
    )
    if clock is None or date is None or mapping["time"] not in (clock, date):
        return mapping  # (a file's published_at column, found first, wins over the pair)
    return {**mapping, "time": clock, "date": date}


def _mostly_clocks(table: RawTable, name: str) -> bool:
    """Over half of the column's first non-empty cells are a time of day alone (each other
    row is rejected when joined, not the column taken for the whole time)."""
    column = table.cells[table.columns.index(name)]
    cells: list[str] = []
    for start in range(0, len(column), _CLOCK_SAMPLE):  # a chunk at a time: no list of every cell
        chunk = column.slice(start, _CLOCK_SAMPLE).to_pylist()
        cells.extend(
            itertools.islice(filter(None, (cell.strip() for cell in chunk)), _CLOCK_SAMPLE - len(cells))
        )
        if len(cells) == _CLOCK_SAMPLE:
            break
    return bool(cells) and int(clock_cells(cells).sum()) * 2 > len(cells)


def _time_texts(
    table: RawTable, mapping: dict[str, str | None], positions: dict[str, int]
) -> tuple[pa.Array, dict[int, str]]:
    """Each row's time as text, and the rows whose clock cell is not a time of day (row index
    -> message). With a date column the text is the date and the clock joined by a space,
    or the date alone where the clock cell is empty or bad (so the date still tells the
    file's day-first order); parse_time then reads the precision from what the row holds."""
    time_at = positions[mapping["time"]]  # type: ignore[index]
    if not mapping.get("date"):
        return table.cells[time_at], {}
    dates = [cell.strip() for cell in table.cells[positions[mapping["date"]]].to_pylist()]  # type: ignore[index]
    clocks = [cell.strip() for cell in table.cells[time_at].to_pylist()]
    is_clock = clock_cells(clocks)
    texts, faults = [], {}
    for index, (date, clock) in enumerate(zip(dates, clocks, strict=True)):
        if clock and not is_clock[index]:
            faults[index] = f"{clock!r} in column {mapping['time']!r} is not a time of day"
            clock = ""
        texts.append(f"{date} {clock}" if date and clock else date or clock)
    return pa.array(texts, pa.string()), faults


def _build(
    result: HeadlineImport,
    table: RawTable,
    keep: np.ndarray,
    times: list[str],
    positions: dict[str, int],
    mapping: dict[str, str | None],
    parsed: TimeColumn,
    source: str,
    limits: ItemLimits,
    now: datetime,
    payload: PayloadHashes,
) -> None:
    """The rows whose title, time and fields pass, as columns (``HeadlineRows``); the rest
    rejected by line. Early and future times by ``time_fault``'s rule, field caps by
    ``field_fault``'s (title, guid, summary: the first over its cap names the reason).
    Every column stays an Arrow array: a million rows as Python lists cost seconds.
    ``payload``: the payload hash of every row of the table, kept rows or not."""
    kept = np.zeros(len(table), dtype=bool)
    kept[keep] = True
    column = lambda role: _pick(table.cells[positions[mapping[role]]], kept)  # type: ignore[index]  # noqa: E731
    empty = pa.nulls(len(keep), pa.string()).fill_null("")
    raw_titles = column("title")
    odd_titles = not_plain(raw_titles)  # found once: the title keys look only at these again
    titles = normalise_titles(raw_titles, odd_titles)
    guids = strip(column("guid")) if mapping["guid"] else empty
    summaries = normalise_titles(column("summary")) if mapping["summary"] else empty
    reasons = np.full(len(keep), "", dtype=object)
    reasons[parsed.published_us < to_us(limits.earliest)] = "early_pubdate"
    reasons[parsed.published_us > to_us(now + limits.future_skew)] = "future_pubdate"
    for index, (reason, _) in parsed.faults.items():
        reasons[index] = reason
    reasons[_lengths(titles) == 0] = "missing_title"
    _field_caps(reasons, titles, guids, summaries, limits)
    passed = reasons == ""
    good = np.flatnonzero(passed)
    for index in np.flatnonzero(reasons != ""):
        fault = parsed.faults.get(int(index))
        message = fault[1] if fault and fault[0] == reasons[index] else ""
        if reasons[index] in ("early_pubdate", "future_pubdate"):
            message = times[index].strip()  # with a date column: date and clock joined
        result.reject(str(reasons[index]), int(table.lines[keep[index]]), message)
    good_titles, good_guids = _pick(titles, passed), _pick(guids, passed)
    missing = np.flatnonzero(_lengths(good_guids) == 0)
    if len(missing):  # the guid of a file without ids: the hash of its title and time
        hashes = payload_hashes(
            ["title", "time"],
            [
                good_titles.take(pa.array(missing)),
                pa.array([times[good[i]].strip() for i in missing], pa.string()),
            ],
        )
        mask = np.zeros(len(good), dtype=bool)
        mask[missing] = True
        good_guids = pc.replace_with_mask(good_guids, pa.array(mask), pa.array(hashes, pa.string()))
    kept[keep[~passed]] = False
    cells = [_pick(values, kept) for values in table.cells]
    good_summaries = _pick(summaries, passed)
    filled = _lengths(good_summaries) > 0
    summary = (  # None where empty; with none anywhere an object column of None, as before
        pc.if_else(pa.array(filled), good_summaries, pa.scalar(None, pa.string())).to_pandas()
        if filled.any()
        else [None] * len(good)
    )
    stored: dict[str, Any] = {
        "source": source[:128],
        "guid": good_guids.to_pandas(),
        "title": good_titles.to_pandas(),
        "title_key": title_keys(good_titles, odd_titles[passed]).to_pandas(),
        "published_us": parsed.published_us[good],
        "link": None,
        "summary": summary,
        "payload_sha256": _pick(payload.result(), kept).to_pandas(),
        "time_precision": pa.array(parsed.precision[good], pa.string()).to_pandas(),
        "known_us": parsed.known_us[good],
    }
    if not len(good):  # no row stored: the text columns empty lists, as before (pandas: float64)
        stored = {name: [] if isinstance(value, pd.Series) else value for name, value in stored.items()}
    frame = pd.DataFrame(stored)
    result.records = HeadlineRows(frame, table.columns, ColumnCells(cells))


def _pick(values: pa.Array, mask: np.ndarray) -> pa.Array:
    """The values where ``mask``; all of them as they are when it holds everywhere."""
    return values if mask.all() else values.filter(pa.array(mask))


def _lengths(values: pa.Array) -> np.ndarray:
    """Each value's length in characters (code points, as Python's ``len``)."""
    return np.asarray(pc.utf8_length(values), dtype=np.int64)


def _field_caps(
    reasons: np.ndarray, titles: pa.Array, guids: pa.Array, summaries: pa.Array, limits: ItemLimits
) -> None:
    for name, values, cap in (
        ("summary", summaries, limits.max_summary_chars),
        ("guid", guids, limits.max_guid_chars),
        ("title", titles, limits.max_title_chars),
    ):  # the last written wins: the same order of precedence as field_fault
        reasons[(_lengths(values) > cap) & (reasons == "")] = f"{name}_too_long"


def read_table(path: Path, options: ReadOptions = ReadOptions()) -> RawTable:
    """The file's header and rows (InvalidInput if it cannot be read at all)."""
    if not path.is_file():
        raise InvalidInput(f"no such file: {path}", param="path")
    text, encoding = decode(path.read_bytes(), options.encoding, path)
    if path.suffix.lower() in JSON_LINES_SUFFIXES:
        return _json_lines(text, path, {"encoding": encoding, "layout": "jsonl"})
    delimiter = parse_delimiter(options.delimiter) if options.delimiter else sniff_delimiter(text, path)
    return _csv_rows(text, delimiter, path, {"encoding": encoding, "delimiter": delimiter, "layout": "csv"})


def decode(data: bytes, encoding: str | None, path: Path) -> tuple[str, str]:
    """Bytes to text and the encoding used (a BOM is dropped, never read as a character)."""
    if encoding:
        try:
            codecs.lookup(encoding)
            return data.decode(encoding).lstrip("\ufeff"), encoding
        except LookupError as exc:
            raise InvalidInput(f"unknown encoding {encoding!r}", param="encoding") from exc
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"{path} is not {encoding}: {exc}", param="encoding") from exc
    for bom, name in (
        (codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
        (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"),
    ):  # fmt: skip
        if data.startswith(bom):
            try:
                return data.decode(name).lstrip("\ufeff"), name
            except UnicodeDecodeError as exc:
                raise InvalidInput(f"{path} starts with a {name} mark but is not {name}: {exc}") from exc
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    try:  # the Windows code page most non-UTF-8 exports are in; it leaves five bytes undefined
        return data.decode("cp1252"), "cp1252"
    except UnicodeDecodeError:
        return data.decode("latin-1"), "latin-1"


def parse_delimiter(given: str) -> str:
    """``--delimiter``: one character, or ``tab`` (``\\t``), ``comma``, ``semicolon``, ``pipe``."""
    named = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}
    value = named.get(given.lower(), given)
    if len(value) != 1 or value in '"\r\n':
        raise InvalidInput(f"delimiter must be one character, not {given!r}", param="delimiter")
    return value


def sniff_delimiter(text: str, path: Path) -> str:
    """The candidate that splits the first lines most consistently into the header's count
    of fields (two at least: a headline file has a title and a time)."""
    sample = [line for line in text[: 1 << 16].splitlines()[:-1] or text.splitlines() if line.strip()]
    sample = sample[:_SNIFF_LINES]
    best, best_score = None, (0.0, 0)
    for delimiter in DELIMITERS:
        rows = list(csv.reader(sample, delimiter=delimiter))
        width = len(rows[0]) if rows else 0
        if width < 2:
            continue
        score = (sum(len(row) == width for row in rows) / len(rows), width)
        if score > best_score:
            best, best_score = delimiter, score
    if best is None:
        header = sample[0][:200] if sample else ""
        raise InvalidInput(
            f"{path}: no delimiter (, ; tab |) splits the header {header!r} into columns; pass --delimiter",
            param="delimiter",
        )
    return best


# What Python's str.strip removes among ASCII characters (\t \n \v \f \r, \x1c-\x1f, space).
_ASCII_SPACE = "[\\t-\\r\\x1c-\\x20]"


def blank(values: pa.Array) -> np.ndarray:
    """Which values ``str.strip`` leaves empty: an Arrow pattern for ASCII values, Python's
    own rule for the others (Unicode spaces; pyarrow's set is not Python's)."""
    ascii_ = np.asarray(pc.string_is_ascii(values), dtype=bool)
    out = np.asarray(pc.match_substring_regex(values, f"^{_ASCII_SPACE}*$"), dtype=bool) & ascii_
    where = np.flatnonzero(~ascii_)
    if len(where):  # one list for them all: an Arrow scalar per value costs a microsecond or two
        out[where] = [not text.strip() for text in values.take(pa.array(where)).to_pylist()]
    return out


def strip(values: pa.Array) -> pa.Array:
    """``str.strip`` of each value, through Python only where it may change something."""
    odd = pc.or_(
        pc.invert(pc.string_is_ascii(values)),
        pc.match_substring_regex(values, f"^{_ASCII_SPACE}|{_ASCII_SPACE}$"),
    )
    where = np.flatnonzero(np.asarray(odd, dtype=bool))
    if not len(where):
        return values
    fixed = [text.strip() for text in values.take(pa.array(where)).to_pylist()]
    return pc.replace_with_mask(values, odd, pa.array(fixed, pa.string()))


def _csv_rows(text: str, delimiter: str, path: Path, detail: dict[str, Any]) -> RawTable:
    """The file's rows: split by Arrow kernels when every record is one line (the csv
    module reads only the lines holding a quote), else by the csv module alone."""
    fast = _csv_rows_clean(text, delimiter) if '"' not in text else None
    fast = fast or _csv_rows_fast(text, delimiter)
    if fast is None:
        return _csv_rows_slow(text, delimiter, path, detail)
    columns, cells, lines, bad = fast
    if columns is None:
        raise InvalidInput(f"{path} is empty", param="path")
    return RawTable(columns, cells, lines, detail, bad)


_FIELD_LIMIT = csv.field_size_limit()  # a longer field is the csv module's error: its path says it


def _csv_rows_clean(
    text: str, delimiter: str
) -> tuple[list[str] | None, list[pa.Array], np.ndarray, list[tuple[int, str, str]]] | None:
    """A file without a quote, with a header on line 1 and every line after it as wide:
    Arrow's CSV reader, quoting off, reads it as the csv module does (a line is its cells
    joined by the delimiter). None for any other file, or when Arrow refuses it (an empty
    or ragged line: ``_csv_rows_fast`` finds which). Rows of empty cells (``,,``) are the
    csv module's blank lines: dropped."""
    first = _FIRST_LINE.match(text).group()  # type: ignore[union-attr]  # (it matches "")
    if not first.strip(delimiter) or len(delimiter.encode()) != 1:
        return None
    columns = [cell.strip() for cell in first.split(delimiter)]
    try:
        table = pa_csv.read_csv(
            pa.BufferReader(text.encode()),
            read_options=pa_csv.ReadOptions(column_names=[str(j) for j in range(len(columns))], skip_rows=1),
            parse_options=pa_csv.ParseOptions(
                delimiter=delimiter, quote_char=False, ignore_empty_lines=False
            ),
            convert_options=pa_csv.ConvertOptions(
                column_types=dict.fromkeys(map(str, range(len(columns))), pa.string()),
                strings_can_be_null=False,
                include_columns=[str(j) for j in range(len(columns))],
            ),
        )
    except (pa.ArrowInvalid, ValueError):
        return None
    cells = [table.column(j).combine_chunks() for j in range(len(columns))]
    lengths = [np.asarray(pc.utf8_length(values), dtype=np.int64) for values in cells]
    if any(len(values) and int(values.max()) > _FIELD_LIMIT for values in lengths):
        return None
    lines = np.arange(2, table.num_rows + 2, dtype=np.int64)
    empty = np.logical_and.reduce([values == 0 for values in lengths]) if lengths else np.zeros(0, bool)
    if empty.any():
        kept = pa.array(~empty)
        cells, lines = [values.filter(kept) for values in cells], lines[~empty]
    return columns, cells, lines, []


def _csv_rows_fast(
    text: str, delimiter: str
) -> tuple[list[str] | None, list[pa.Array], np.ndarray, list[tuple[int, str, str]]] | None:
    """``_csv_rows_slow``'s table without a Python object per row, or None when a record
    may span lines (a quote left open at a line's end) or a line is longer than the csv
    module's field limit. Lines are split as ``io.StringIO(newline="")`` splits them
    (``\\r\\n``, ``\\r``, ``\\n``): with one-line records no value holds a line break, so
    the breaks can be made one. A line without a quote is its cells joined by the delimiter
    (the csv module does nothing else to it); the lines with one go through the csv module,
    each alone, and a record continued on a later line shows as fewer rows than lines."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = pc.list_flatten(pc.split_pattern(pa.array([text], pa.large_string()), "\n")).cast(pa.string())
    if len(lines) and int(pc.max(pc.utf8_length(lines)).as_py()) > _FIELD_LIMIT:
        return None
    quoted = np.asarray(pc.match_substring(lines, '"'), dtype=bool)
    # A line of delimiters alone (or empty) is all empty cells: the csv module's blank line.
    commas = np.asarray(pc.count_substring(lines, delimiter), dtype=np.int64)
    widths = commas + 1
    skip = (commas * len(delimiter) == np.asarray(pc.utf8_length(lines), dtype=np.int64)) & ~quoted
    at_quote = np.flatnonzero(quoted)
    parsed: list[list[str]] = []
    if len(at_quote):
        try:  # the sentinel line: a quote open at the last quoted line's end would take it in
            parsed = list(csv.reader([*lines.take(pa.array(at_quote)).to_pylist(), "x"], delimiter=delimiter))
        except csv.Error:
            return None
        if len(parsed) != len(at_quote) + 1:
            return None
        parsed.pop()
        widths[at_quote] = [len(row) for row in parsed]
        skip[at_quote] = [not any(row) for row in parsed]
    rows = np.flatnonzero(~skip)
    if not len(rows):
        return None, [], np.zeros(0, dtype=np.int64), []
    quote_row = {int(line): position for position, line in enumerate(at_quote)}
    first = int(rows[0])
    header = parsed[quote_row[first]] if first in quote_row else lines[first].as_py().split(delimiter)
    columns = [cell.strip() for cell in header]
    rows = rows[1:]
    ragged = widths[rows] != len(columns)
    bad = [
        (int(line) + 1, "bad_fields", f"{widths[line]} fields, the header has {len(columns)}")
        for line in rows[ragged]
    ]
    rows = rows[~ragged]
    plain = rows[~quoted[rows]]
    split = pc.split_pattern(lines.take(pa.array(plain, pa.int64())), delimiter)
    cells = [pc.list_element(split, j) for j in range(len(columns))]
    with_quote = rows[quoted[rows]]
    if len(with_quote):  # the quoted rows' cells after the plain ones, then file order again
        quoted_rows = [parsed[quote_row[int(line)]] for line in with_quote]
        order = np.argsort(np.concatenate([plain, with_quote]), kind="stable")
        cells = [
            pa.concat_arrays([cells[j], pa.array([row[j] for row in quoted_rows], pa.string())]).take(
                pa.array(order)
            )
            for j in range(len(columns))
        ]
    return columns, cells, rows + 1, bad


def _csv_rows_slow(text: str, delimiter: str, path: Path, detail: dict[str, Any]) -> RawTable:
    """The csv module over the whole text: records over several lines, odd quoting."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    columns: list[str] | None = None
    rows, lines, bad = [], [], []
    start = 1
    try:
        for row in reader:
            line, start = start, reader.line_num + 1
            if not any(row):  # a blank line; rows of blank cells are dropped by the caller
                continue
            if columns is None:
                columns = [cell.strip() for cell in row]
            elif len(row) != len(columns):
                bad.append((line, "bad_fields", f"{len(row)} fields, the header has {len(columns)}"))
            else:
                rows.append(row)
                lines.append(line)
    except csv.Error as exc:
        raise InvalidInput(
            f"cannot read {path} as CSV near line {reader.line_num}: {exc}", param="path"
        ) from exc
    if columns is None:
        raise InvalidInput(f"{path} is empty", param="path")
    return RawTable(columns, _by_column(rows, len(columns)), np.asarray(lines, dtype=np.int64), detail, bad)


def _by_column(rows: list[list[str]], width: int) -> list[pa.Array]:
    return [pa.array([row[j] for row in rows], pa.string()) for j in range(width)]


def _json_lines(text: str, path: Path, detail: dict[str, Any]) -> RawTable:
    objects, lines, bad = [], [], []
    for line, content in enumerate(text.splitlines(), start=1):
        if not content.strip():
            continue
        try:
            value = json.loads(content)
        except json.JSONDecodeError as exc:
            bad.append((line, "bad_json", str(exc)))
            continue
        if not isinstance(value, dict):
            bad.append((line, "bad_json", f"a JSON {type(value).__name__}, not an object"))
            continue
        objects.append(value)
        lines.append(line)
    if not objects and not bad:
        raise InvalidInput(f"{path} is empty", param="path")
    columns = list(dict.fromkeys(key for value in objects for key in value))
    rows = [[_text(value.get(name)) for name in columns] for value in objects]
    cells = _by_column(rows, len(columns))
    return RawTable([str(name) for name in columns], cells, np.asarray(lines, dtype=np.int64), detail, bad)


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return repr(value)
    return json.dumps(value, ensure_ascii=False)


def _map_columns(path: Path, found: list[str], given: ColumnMap) -> dict[str, str | None]:
    """Each role's column: the given name (which must exist) or the first known name."""
    by_key = {_NAME_DROP.sub("", name.lower()): name for name in reversed(found)}
    mapping: dict[str, str | None] = {}
    for role in ("title", "time", "summary", "guid"):
        name = getattr(given, role)
        if name is not None and name not in found:
            raise InvalidInput(f"column {name!r} not in {path} (columns: {found})", param="column")
        mapping[role] = name or next((by_key[key] for key in COLUMN_NAMES[role] if key in by_key), None)
    missing = [role for role in ("title", "time") if mapping[role] is None]
    if missing:
        raise InvalidInput(
            f"{path.name}: no {' and no '.join(missing)} column; columns found: {found}; a headline "
            "file needs a title column (title, headline, headlines...) and a time column (time, "
            "date, published, published_at, timestamp...), or --title-column and --time-column",
            param="column",
        )
    return mapping


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidInput(f"unknown timezone {name!r}", param="timezone") from exc
