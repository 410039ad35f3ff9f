"""Headline times as the text holds them: the instant, the precision, the zone.

A time is parsed with explicit patterns that name the parts present (year, month, day, hour,
minute, second), never with a parser that fills what is missing: ``Apr-18`` has no day (or no
year), ``14:05`` no date, and such a row is rejected rather than stored in year 0001 or on
today's date. The precision is the finest part the text holds; ``published_at`` is the start
of that period in UTC and ``known_at`` its end in the row's zone (``time_precision``).

Day-first against month-first (``5-7-2022``) is a property of the file, not of a row: it is
taken from ``--dayfirst``/``--no-dayfirst``, else from the file (some first field over 12 means
day-first), and a file where every numeric date reads both ways is refused as a whole.

``parse_time`` is the reference, one row at a time. ``parse_time_column`` parses a whole column:
it finds the common layout on a sample, parses every row in that layout with one vectorised
pandas call (checked against ``parse_time`` on the sample), and sends only the rows that call
could not read through ``parse_time``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from services.common.errors import InvalidInput
from services.common.time_precision import Precision, known_at, period_start

EASTERN = ZoneInfo("America/New_York")
_MONTHS = {
    name: number
    for number, names in enumerate(
        [
            ("jan", "january"), ("feb", "february"), ("mar", "march"), ("apr", "april"), ("may",),
            ("jun", "june"), ("jul", "july"), ("aug", "august"), ("sep", "sept", "september"),
            ("oct", "october"), ("nov", "november"), ("dec", "december"),
        ],
        start=1,
    )
    for name in names
}  # fmt: skip
# Abbreviations read as a zone. Others ("CST": China or US Central?) are refused, not guessed.
_ZONE_NAMES: dict[str, tzinfo] = {
    "z": UTC, "utc": UTC, "gmt": UTC, "et": EASTERN,
    "est": timezone(timedelta(hours=-5)), "edt": timezone(timedelta(hours=-4)),
}  # fmt: skip

_WEEKDAY = r"(?:(?:mon|tue|wed|thu|fri|sat|sun)[a-z]*\.?,?\s+)?"
_MONTH = r"(?P<mname>[a-z]{3,9})\.?"
_CLOCK = (
    r"(?P<hour>\d{1,2})(?::(?P<minute>\d{2})(?::(?P<second>\d{2})(?:[.,](?P<fraction>\d{1,9}))?)?)?"
    r"(?:\s*(?P<ampm>[ap])\.?m\.?)?"
)
_ZONE = r"(?:\s*(?P<zone>z|[+-]\d{2}(?::?\d{2})?|utc|gmt|et|est|edt))?"
_DATE_TIME = rf"(?:(?:t|,?\s+(?:at\s+)?){_CLOCK})?{_ZONE}"


def _full(pattern: str) -> re.Pattern[str]:
    return re.compile(rf"^(?:{pattern})$", re.IGNORECASE)


_FORMS: tuple[re.Pattern[str], ...] = (
    # 2020-07-18, 2020/07/18 14:05, 2020-07-18T14:05:33.5Z, 2020-07-18 14+02:00
    _full(rf"(?P<year>\d{{4}})(?P<sep>[-/.])(?P<month>\d{{1,2}})(?P=sep)(?P<day>\d{{1,2}}){_DATE_TIME}"),
    # 20200718, 20200718T140533Z
    _full(
        r"(?P<year>\d{4})(?P<month>\d{2})(?P<day>\d{2})"
        rf"(?:t(?P<hour>\d{{2}})(?P<minute>\d{{2}})(?P<second>\d{{2}})?)?{_ZONE}"
    ),
    # 5-7-2022 04:24, 07/05/22 (day or month first: the file decides)
    _full(rf"(?P<a>\d{{1,2}})(?P<sep>[-/.])(?P<b>\d{{1,2}})(?P=sep)(?P<year>\d{{4}}|\d{{2}}){_DATE_TIME}"),
    # 18-Jul-20, 17 July 2020, Fri, 17 Jul 2020 19:51:33 +0000
    _full(
        rf"{_WEEKDAY}(?P<day>\d{{1,2}})(?:st|nd|rd|th)?[\s./-]+{_MONTH}[\s./,-]+(?P<year>\d{{4}}|\d{{2}})"
        rf"{_DATE_TIME}"
    ),
    # July 17, 2020; Jul 17 2020 7:51 PM
    _full(rf"{_WEEKDAY}{_MONTH}[\s./-]+(?P<day>\d{{1,2}})(?:st|nd|rd|th)?,?\s+(?P<year>\d{{4}}){_DATE_TIME}"),
    # 7:51 PM ET Fri, 17 July 2020 (the Kaggle CNBC file)
    _full(rf"{_CLOCK}{_ZONE},?\s+{_WEEKDAY}(?P<day>\d{{1,2}})\s+{_MONTH}\s+(?P<year>\d{{4}})"),
)
_NUMERIC_FORM = _FORMS[2]
# A time of day alone (04:24, 16:03:10, 4:24 PM, 4 PM, 16:03 UTC): what a separate clock
# column holds. A bare number is not one (an hour column of "14" could be anything).
CLOCK_ONLY = (
    r"(?:\d{1,2}:\d{2}(?::\d{2}(?:[.,]\d{1,9})?)?(?:\s*[ap]\.?m\.?)?|\d{1,2}\s*[ap]\.?m\.?)"
    r"(?:\s*(?:z|[+-]\d{2}(?::?\d{2})?|utc|gmt|et|est|edt))?"
)
_EPOCH = _full(r"(?P<seconds>\d{9,10}(?:\.\d{1,9})?)|(?P<millis>\d{12,13})")
# What a time lacking a part looks like; each is refused with the part it lacks.
_INCOMPLETE: tuple[tuple[re.Pattern[str], str], ...] = (
    # (with a clock too: "Apr-18 10:00", a date column joined to a time column)
    (
        _full(rf"{_MONTH}[\s./,-]+(?:\d{{4}}|\d{{2}})(?:,?\s+{_CLOCK}{_ZONE})?"),
        "a month and one number: no day, or no year",
    ),
    (
        _full(rf"(?:\d{{4}}[-/.]\d{{1,2}}|\d{{1,2}}[-/.]\d{{4}})(?:[t\s]{_CLOCK}{_ZONE})?"),
        "a year and a month: no day",
    ),
    (_full(r"\d{4}"), "a year alone: no month or day"),
    (_full(rf"{_WEEKDAY}\d{{1,2}}(?:st|nd|rd|th)?[\s./-]+{_MONTH}(?:,?\s+{_CLOCK})?{_ZONE}"), "no year"),
    (_full(rf"{_WEEKDAY}{_MONTH}\s+\d{{1,2}}(?:st|nd|rd|th)?(?:,?\s+{_CLOCK})?{_ZONE}"), "no year"),
    (_full(r"\d{1,2}[-/.]\d{1,2}"), "a day and a month: no year"),
    (_full(rf"(?:\d{{1,2}}:\d{{2}}(?::\d{{2}})?(?:\s*[ap]\.?m\.?)?|\d{{1,2}}\s*[ap]\.?m\.?){_ZONE}"), "no date"),
)  # fmt: skip


class TimeRejected(ValueError):
    """A time that cannot be stored: ``reason`` is the rejects key, the message says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ParsedTime:
    """``published_at``: start of the precision period, UTC; ``zone``: the row's zone."""

    published_at: datetime
    precision: Precision
    zone: tzinfo

    @property
    def known_at(self) -> datetime:
        return known_at(self.published_at, self.precision, self.zone)  # type: ignore[arg-type]


def parse_time(text: str, zone: tzinfo = UTC, dayfirst: bool | None = None) -> ParsedTime:
    """One time as written; raises TimeRejected (``bad_time``, ``incomplete_time``,
    ``ambiguous_time``, ``nonexistent_time``, ``missing_time``). Times without an offset are
    read in ``zone``; ``dayfirst`` None reads a numeric date only where one order is possible."""
    clean = " ".join(str(text).split())
    if not clean:
        raise TimeRejected("missing_time", "empty time")
    epoch = _EPOCH.match(clean)
    if epoch:
        seconds = float(epoch["seconds"]) if epoch["seconds"] else int(epoch["millis"]) / 1000
        return ParsedTime(datetime.fromtimestamp(int(seconds), UTC), Precision.second, UTC)
    for form in _FORMS:
        match = form.match(clean)
        if match:
            return _from_match(match, clean, zone, dayfirst)
    for pattern, lacks in _INCOMPLETE:
        if pattern.match(clean):
            raise TimeRejected("incomplete_time", f"{clean!r} has {lacks}")
    raise TimeRejected("bad_time", f"unrecognised time {clean!r}")


def _from_match(match: re.Match[str], text: str, zone: tzinfo, dayfirst: bool | None) -> ParsedTime:
    parts = match.groupdict()
    year, month, day = _date_parts(parts, text, dayfirst)
    hour, minute, second, micro, precision = _clock_parts(parts, text)
    row_zone = _ZONE_NAMES.get((parts.get("zone") or "").lower()) or _offset(parts.get("zone"), zone)
    try:
        naive = datetime(year, month, day, hour, minute, second, micro)
    except ValueError as exc:
        raise TimeRejected("bad_time", f"{text!r}: {exc}") from exc
    local = naive.replace(tzinfo=row_zone)
    if precision is not Precision.day:
        _check_wall_time(naive, row_zone, text)
    return ParsedTime(period_start(local, precision, row_zone), precision, row_zone)  # type: ignore[arg-type]


def _date_parts(parts: dict[str, str | None], text: str, dayfirst: bool | None) -> tuple[int, int, int]:
    if parts.get("a"):
        first, second = int(parts["a"]), int(parts["b"])  # type: ignore[arg-type]
        if dayfirst is None and first != second and first <= 12 and second <= 12:
            raise TimeRejected("ambiguous_time", f"{text!r} reads day-first and month-first")
        day_first = dayfirst if dayfirst is not None else first > 12
        day, month = (first, second) if day_first else (second, first)
    else:
        day = int(parts["day"])  # type: ignore[arg-type]
        month = int(parts["month"]) if parts.get("month") else _month(parts["mname"], text)
    return _year(parts["year"]), month, day  # type: ignore[arg-type]


def _month(name: str | None, text: str) -> int:
    number = _MONTHS.get((name or "").lower())
    if number is None:
        raise TimeRejected("bad_time", f"unknown month {name!r} in {text!r}")
    return number


def _year(digits: str) -> int:
    # Two digits as strptime's %y reads them: 00-68 are 2000-2068, 69-99 are 1969-1999.
    value = int(digits)
    return value if len(digits) == 4 else value + (2000 if value < 69 else 1900)


def _clock_parts(parts: dict[str, str | None], text: str) -> tuple[int, int, int, int, Precision]:
    if parts.get("hour") is None:
        return 0, 0, 0, 0, Precision.day
    hour = int(parts["hour"])  # type: ignore[arg-type]
    if parts.get("ampm"):
        if not 1 <= hour <= 12:
            raise TimeRejected("bad_time", f"{text!r}: hour {hour} with AM/PM")
        hour = hour % 12 + (12 if parts["ampm"].lower() == "p" else 0)  # type: ignore[union-attr]
    minute = int(parts.get("minute") or 0)
    second = int(parts.get("second") or 0)
    if hour > 23 or minute > 59 or second > 59:
        raise TimeRejected("bad_time", f"{text!r}: no such time of day")
    precision = (
        Precision.second
        if parts.get("second") is not None
        else Precision.minute
        if parts.get("minute") is not None
        else Precision.hour
    )
    return hour, minute, second, 0, precision


def _offset(text: str | None, default: tzinfo) -> tzinfo:
    if not text:
        return default
    digits = text.replace(":", "")
    hours, minutes = int(digits[1:3]), int(digits[3:5] or 0)
    if hours > 14 or minutes > 59:
        raise TimeRejected("bad_time", f"no such UTC offset {text!r}")
    sign = -1 if digits[0] == "-" else 1
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def _check_wall_time(naive: datetime, zone: tzinfo, text: str) -> None:
    """A wall time the zone's clock shows twice (autumn) or skips (spring) names no one
    instant: refused rather than one reading picked."""
    early, late = naive.replace(tzinfo=zone, fold=0), naive.replace(tzinfo=zone, fold=1)
    if early.utcoffset() == late.utcoffset():
        return
    if early.astimezone(UTC).astimezone(zone).replace(tzinfo=None) != naive:
        raise TimeRejected("nonexistent_time", f"{text!r} does not exist in {zone} (clocks skip it)")
    raise TimeRejected("ambiguous_time", f"{text!r} happens twice in {zone} (clocks go back)")


def resolve_dayfirst(values: Sequence[str], lines: Sequence[int], dayfirst: bool | None) -> bool | None:
    """The file's order for numeric dates: ``dayfirst`` when given; else day-first if some
    first field is over 12, month-first if some second one is; None when no row needs it.
    Raises InvalidInput when the file shows both orders, or every such date reads both ways."""
    if dayfirst is not None:
        return dayfirst
    seen: dict[str, tuple[int, str]] = {}
    # One Arrow pass finds the rows that may be numeric dates (a superset: two numbers and two
    # separators, the first not after a digit); only those go through the Python pattern (an
    # ISO file has none, and the loop over a million of its rows cost 2 s).
    numeric = r"(^|\P{Nd})\p{Nd}{1,2}[-/.]\p{Nd}{1,2}[-/.]"  # \p{Nd}: any decimal digit, as \d in re
    maybe = pc.match_substring_regex(pa.array(values, pa.string()), numeric)
    for index in np.flatnonzero(np.asarray(pc.fill_null(maybe, False), dtype=bool)):
        value, line = values[index], lines[index]
        match = _NUMERIC_FORM.match(value.strip()) if value[:1].isdigit() else None
        if match:
            first, second = int(match["a"]), int(match["b"])
            kind = "day" if first > 12 else "month" if second > 12 else "both" if first != second else ""
            if kind:
                seen.setdefault(kind, (line, value.strip()))
    if "day" in seen and "month" in seen:
        (day_line, day_text), (month_line, month_text) = seen["day"], seen["month"]
        raise InvalidInput(
            f"dates are day-first on line {day_line} ({day_text!r}) and month-first on line "
            f"{month_line} ({month_text!r}): pass --dayfirst or --no-dayfirst",
            param="dayfirst",
        )
    if "day" in seen or "month" in seen:
        return "day" in seen
    if "both" in seen:
        line, text = seen["both"]
        raise InvalidInput(
            f"cannot tell day-first from month-first: every numeric date reads both ways "
            f"(line {line}: {text!r}); pass --dayfirst or --no-dayfirst",
            param="dayfirst",
        )
    return None


def clock_cells(values: Sequence[str]) -> np.ndarray:
    """Which cells hold a time of day alone (``CLOCK_ONLY``), whitespace around ignored."""
    text = pd.Series(values, dtype=object).str.strip()
    return text.str.fullmatch(CLOCK_ONLY, case=False).to_numpy(dtype=bool, na_value=False)


@dataclass
class TimeColumn:
    """A parsed column: epoch microseconds (UTC) of ``published_at`` and ``known_at`` and the
    precision for every row; rows in ``faults`` (index -> (reason, message)) hold no time."""

    published_us: np.ndarray
    known_us: np.ndarray
    precision: np.ndarray
    faults: dict[int, tuple[str, str]] = field(default_factory=dict)
    fast_format: str | None = None


def _fast_formats() -> list[tuple[str, Precision, bool | None]]:
    """Layouts pandas parses vectorised (format, precision, the day-first order it implies)."""
    clocks = (("", Precision.day), (" %H:%M", Precision.minute), (" %H:%M:%S", Precision.second))
    found: list[tuple[str, Precision, bool | None]] = []
    for sep in "-/":
        for clock, precision in clocks:
            found.append((f"%Y{sep}%m{sep}%d{clock}", precision, None))
            if clock:
                found.append((f"%Y{sep}%m{sep}%dT{clock[1:]}", precision, None))
    for sep in "-/.":
        for clock, precision in clocks:
            found.append((f"%d{sep}%m{sep}%Y{clock}", precision, True))
            found.append((f"%m{sep}%d{sep}%Y{clock}", precision, False))
    for layout in ("%d-%b-%y", "%d-%b-%Y", "%d %b %Y", "%d %B %Y", "%b %d, %Y", "%B %d, %Y"):
        found.append((layout, Precision.day, None))
    return found


_FAST_FORMATS = _fast_formats()
_SAMPLE = 500


def parse_time_column(
    values: Sequence[str], zone: ZoneInfo, dayfirst: bool | None, time_format: str | None = None
) -> TimeColumn:
    """Every value of a time column (``dayfirst`` already resolved, see resolve_dayfirst)."""
    count = len(values)
    column = TimeColumn(
        np.zeros(count, dtype=np.int64), np.zeros(count, dtype=np.int64), np.empty(count, dtype=object)
    )
    series = pd.Series([value.strip() for value in values], dtype=object)  # (pandas' .str.strip: 3x this)
    todo = np.ones(count, dtype=bool)
    layout = _explicit_layout(time_format) if time_format else _pick_layout(series, zone, dayfirst)
    if layout is not None:
        column.fast_format = layout[0]
        todo = ~_parse_fast(series, layout, zone, column)
    for index in np.flatnonzero(todo):
        if time_format and series.iat[index]:
            column.faults[int(index)] = ("bad_time", f"{series.iat[index]!r} does not match {time_format!r}")
            continue
        try:
            parsed = parse_time(series.iat[index], zone, dayfirst)
        except TimeRejected as exc:
            column.faults[int(index)] = (exc.reason, str(exc))
            continue
        column.published_us[index] = to_us(parsed.published_at)
        column.known_us[index] = to_us(parsed.known_at)
        column.precision[index] = parsed.precision
    return column


_EPOCH_UTC = datetime(1970, 1, 1, tzinfo=UTC)


def to_us(moment: datetime) -> int:
    """Microseconds since the epoch, exact for any year (nanoseconds end in 2262)."""
    return (moment - _EPOCH_UTC) // timedelta(microseconds=1)


def _explicit_layout(time_format: str) -> tuple[str, Precision, bool | None]:
    """``--time-format``: refused unless it names a year, a month and a day."""
    if (
        not ("%Y" in time_format or "%y" in time_format)
        or "%d" not in time_format
        or not any(month in time_format for month in ("%m", "%b", "%B"))
    ):
        raise InvalidInput(f"time format {time_format!r} lacks a year, month or day", param="time_format")
    precision = (
        Precision.second
        if "%S" in time_format
        else Precision.minute
        if "%M" in time_format
        else Precision.hour
        if "%H" in time_format or "%I" in time_format
        else Precision.day
    )
    return time_format, precision, None


def _pick_layout(
    series: pd.Series, zone: ZoneInfo, dayfirst: bool | None
) -> tuple[str, Precision, bool | None] | None:
    """The fast layout that reads the most of a sample, each row exactly as parse_time does
    (same instant, same precision), or None."""
    sample = series[series != ""].iloc[:_SAMPLE].reset_index(drop=True)
    if sample.empty:
        return None
    reference: dict[int, ParsedTime] = {}
    for index, text in enumerate(sample):
        try:
            reference[index] = parse_time(text, zone, dayfirst)
        except TimeRejected:
            continue
    head = sample.iloc[:20]
    best, best_hits = None, 0
    for layout in _FAST_FORMATS:
        if layout[2] is not None and dayfirst is not None and layout[2] != dayfirst:
            continue
        if pd.to_datetime(head, format=layout[0], errors="coerce").isna().all():
            continue  # reads none of the first rows: not this file's layout
        trial = TimeColumn(
            np.zeros(len(sample), np.int64), np.zeros(len(sample), np.int64), np.empty(len(sample), object)
        )
        read = np.flatnonzero(_parse_fast(sample, layout, zone, trial))
        if len(read) > best_hits and all(_same(trial, int(i), reference.get(int(i))) for i in read):
            best, best_hits = layout, len(read)
    return best


def _same(column: TimeColumn, index: int, expected: ParsedTime | None) -> bool:
    return (
        expected is not None
        and column.precision[index] is expected.precision
        and column.published_us[index] == to_us(expected.published_at)
        and column.known_us[index] == to_us(expected.known_at)
    )


def _parse_fast(
    series: pd.Series, layout: tuple[str, Precision, bool | None], zone: ZoneInfo, column: TimeColumn
) -> np.ndarray:
    """Parse the column in one layout; returns which rows it read. Wall times the zone shows
    twice or skips come out NaT here and go through parse_time, which says why."""
    time_format, precision, _ = layout
    try:
        parsed = pd.to_datetime(series, format=time_format, errors="coerce")
    except ValueError as exc:
        raise InvalidInput(f"bad time format {time_format!r}: {exc}", param="time_format") from exc
    if getattr(parsed.dt, "tz", None) is not None:
        raise InvalidInput(f"time format {time_format!r}: use --timezone, not %z", param="time_format")
    ok = parsed.notna().to_numpy().copy()
    if precision is Precision.day:
        _days(parsed, ok, zone, column)
    else:
        local = parsed.dt.tz_localize(zone, ambiguous="NaT", nonexistent="NaT").dt.tz_convert(UTC)
        if precision in (Precision.second, Precision.minute):  # a --time-format with %f
            local = local.dt.floor(f"{precision.seconds}s")
        ok &= local.notna().to_numpy()
        published = local.to_numpy(dtype="datetime64[us]").view(np.int64)
        column.published_us[ok] = published[ok]
        column.known_us[ok] = published[ok] + precision.seconds * 1_000_000
    column.precision[ok] = precision
    return ok


def _days(parsed: pd.Series, ok: np.ndarray, zone: ZoneInfo, column: TimeColumn) -> None:
    """Day-precision rows through the reference rule once per distinct date (a file holds a
    few thousand days however many rows)."""
    days = parsed.dt.normalize()
    codes, uniques = pd.factorize(days[ok])
    starts, ends = np.empty(len(uniques), np.int64), np.empty(len(uniques), np.int64)
    for position, day in enumerate(uniques):
        local = day.to_pydatetime().replace(tzinfo=zone)
        starts[position] = to_us(period_start(local, Precision.day, zone))
        ends[position] = to_us(known_at(local, Precision.day, zone))
    column.published_us[ok] = starts[codes]
    column.known_us[ok] = ends[codes]
