"""CSV backfills: the Kaggle CNBC headlines file and any headline CSV by column mapping, both
through ``headline_import`` (delimiter, encoding and time precision found per file and row).
Candle files moved to ``candle_import`` (``CandleFrame`` and ``import_cryptodatadownload`` are
re-exported here for the callers that still import them from this module).

Every importer returns plain records (HeadlineRecord, or candle arrays); storing them is the
store module's job, so an import can be checked before anything is written.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from services.ingest.candle_import import CandleFrame as CandleFrame  # re-exported
from services.ingest.candle_import import import_cryptodatadownload as import_cryptodatadownload
from services.ingest.headline_import import ColumnMap, HeadlineImport, ReadOptions, import_headlines
from services.ingest.headlines import DEFAULT_LIMITS, ItemLimits

__all__ = ["HeadlineImport", "import_headline_csv", "import_kaggle_cnbc", "parse_cnbc_time"]

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


def import_kaggle_cnbc(
    path: Path, source: str = KAGGLE_CNBC_SOURCE, limits: ItemLimits = DEFAULT_LIMITS
) -> HeadlineImport:
    """The Kaggle "Financial News Headlines" CNBC file: Headlines, Time, Description; times
    like ' 7:51  PM ET Fri, 17 July 2020', minute precision, US Eastern."""
    return import_headline_csv(
        path,
        title_column="Headlines",
        time_column="Time",
        summary_column="Description",
        source=source,
        timezone="America/New_York",
        limits=limits,
    )


def import_headline_csv(
    path: Path,
    title_column: str | None,
    time_column: str | None,
    source: str,
    summary_column: str | None = None,
    guid_column: str | None = None,
    timezone: str = "UTC",
    time_format: str | None = None,
    limits: ItemLimits = DEFAULT_LIMITS,
    *,
    delimiter: str | None = None,
    encoding: str | None = None,
    dayfirst: bool | None = None,
) -> HeadlineImport:
    """Any headline file by column mapping (``headline_import.import_headlines``; a column
    given as None is found by name). Times without an offset are read in ``timezone``;
    implausible times and fields over their caps are rejected like a feed's (``limits``)."""
    return import_headlines(
        Path(path),
        source,
        ColumnMap(title_column, time_column, summary_column, guid_column),
        ReadOptions(delimiter, encoding, dayfirst, time_format, timezone),
        limits,
    )
