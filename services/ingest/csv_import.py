"""CSV backfills: the Kaggle CNBC headlines file and any headline CSV by column mapping.
Candle files moved to ``candle_import`` (``CandleFrame`` and ``import_cryptodatadownload`` are
re-exported here for the callers that still import them from this module).

Every importer returns plain records (HeadlineRecord, or candle arrays); storing them is the
store module's job, so an import can be checked before anything is written.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pandas as pd

from services.common.errors import InvalidInput
from services.ingest.candle_import import CandleFrame as CandleFrame  # re-exported
from services.ingest.candle_import import import_cryptodatadownload as import_cryptodatadownload
from services.ingest.headlines import (
    DEFAULT_LIMITS,
    HeadlineRecord,
    ItemLimits,
    Rejects,
    field_fault,
    normalise_title,
    payload_sha256,
    time_fault,
)

EASTERN = ZoneInfo("America/New_York")
KAGGLE_CNBC_SOURCE = "csv:cnbc_headlines"
_CNBC_TIME = re.compile(
    r"^(?P<hour>\d{1,2}):(?P<minute>\d{2})\s*(?P<ampm>AM|PM)\s*ET\s*\w{3},\s*"
    r"(?P<day>\d{1,2})\s+(?P<month>[A-Za-z]+)\.?\s+(?P<year>\d{4})$"
)
_MONTHS = {
    name.lower(): number
    for number, names in enumerate(
        [
            ("jan", "january"),
            ("feb", "february"),
            ("mar", "march"),
            ("apr", "april"),
            ("may",),
            ("jun", "june"),
            ("jul", "july"),
            ("aug", "august"),
            ("sep", "sept", "september"),
            ("oct", "october"),
            ("nov", "november"),
            ("dec", "december"),
        ],
        start=1,
    )
    for name in names
}


def parse_cnbc_time(text: str, zone: ZoneInfo = EASTERN) -> datetime:
    """' 7:51  PM ET Fri, 17 July 2020' (US Eastern, DST applies) to aware UTC."""
    match = _CNBC_TIME.match(" ".join(str(text).split()))
    if not match:
        raise ValueError(f"unrecognised CNBC time {text!r}")
    month = _MONTHS.get(match["month"].lower())
    if month is None:
        raise ValueError(f"unknown month {match['month']!r} in {text!r}")
    hour = int(match["hour"]) % 12 + (12 if match["ampm"] == "PM" else 0)
    local = datetime(int(match["year"]), month, int(match["day"]), hour, int(match["minute"]), tzinfo=zone)
    return local.astimezone(UTC)


@dataclass
class HeadlineImport:
    records: list[HeadlineRecord] = field(default_factory=list)
    rejects: Rejects = field(default_factory=Rejects)


def _read_csv(path: Path, **kwargs: object) -> pd.DataFrame:
    if not path.is_file():
        raise InvalidInput(f"no such file: {path}", param="path")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, **kwargs)  # type: ignore[call-overload]
    except (UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise InvalidInput(f"cannot read {path} as CSV: {exc}", param="path") from exc


def import_kaggle_cnbc(
    path: Path, source: str = KAGGLE_CNBC_SOURCE, limits: ItemLimits = DEFAULT_LIMITS
) -> HeadlineImport:
    """The Kaggle "Financial News Headlines" CNBC file: Headlines, Time, Description."""
    return import_headline_csv(
        path,
        title_column="Headlines",
        time_column="Time",
        summary_column="Description",
        source=source,
        time_parser=parse_cnbc_time,
        limits=limits,
    )


def import_headline_csv(
    path: Path,
    title_column: str,
    time_column: str,
    source: str,
    summary_column: str | None = None,
    guid_column: str | None = None,
    timezone: str = "UTC",
    time_format: str | None = None,
    time_parser: Callable[[str], datetime] | None = None,
    limits: ItemLimits = DEFAULT_LIMITS,
) -> HeadlineImport:
    """Any headline CSV by column mapping. Times without an offset are read in ``timezone``;
    implausible times and fields over their caps are rejected like a feed's (``limits``)."""
    zone = _zone(timezone)
    frame = _read_csv(Path(path))
    for column in (title_column, time_column, summary_column, guid_column):
        if column and column not in frame.columns:
            raise InvalidInput(
                f"column {column!r} not in {path} (columns: {list(frame.columns)})", param="column"
            )
    result = HeadlineImport()
    now = datetime.now(UTC)
    for line, row in enumerate(frame.to_dict("records"), start=2):
        title = normalise_title(row[title_column])
        raw_time = str(row[time_column]).strip()
        if not title and not raw_time:
            continue  # the blank ",," lines of the Kaggle file
        if not title:
            result.rejects.add("missing_title", f"line {line}")
            continue
        try:
            published_at = time_parser(raw_time) if time_parser else _parse_time(raw_time, zone, time_format)
        except (ValueError, OverflowError) as exc:
            result.rejects.add("bad_time", f"line {line}: {exc}")
            continue
        fault = time_fault(published_at, now, limits)
        if fault:
            result.rejects.add(fault, f"line {line}: {raw_time}")
            continue
        raw = {str(key): value for key, value in row.items()}
        guid = str(row[guid_column]) if guid_column else payload_sha256({"title": title, "time": raw_time})
        summary = normalise_title(row[summary_column]) if summary_column else None
        record = HeadlineRecord(source, guid, title, published_at, None, summary or None, raw)
        fault = field_fault(record, limits)
        if fault:
            result.rejects.add(fault, f"line {line}")
            continue
        result.records.append(record)
    return result


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidInput(f"unknown timezone {name!r}", param="timezone") from exc


def _parse_time(text: str, zone: ZoneInfo, time_format: str | None) -> datetime:
    if not text:
        raise ValueError("empty time")
    if time_format:
        moment = datetime.strptime(text, time_format)
    else:
        try:
            moment = pd.Timestamp(text).to_pydatetime()
        except (ValueError, TypeError) as exc:
            raise ValueError(f"unrecognised time {text!r}") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    return moment.astimezone(UTC)
