"""Headline files with the date and the time of day in two columns (issue 11 item 2):
`Date,Time` with `18-Jul-20`, `04:24` / `4:24 PM`, `date;time` with `2022-07-05`, `16:03:10`.
Each row's two cells are joined and parsed as one, so its precision is what that row holds (an
empty clock cell is a day, never midnight to the minute); a clock cell that is no time of day
rejects its row by line. The fixtures are tests/fixtures/headlines/date_time_*."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from services.common.db import session_scope
from services.common.db.models import Headline
from services.common.errors import InvalidInput
from services.common.time_precision import Precision
from services.ingest.backfill import backfill_headline_csv
from services.ingest.headline_import import ColumnMap, HeadlineImport, ReadOptions, import_headlines
from services.ingest.headline_times import clock_cells
from services.ingest.settings import IngestSettings
from tests.support.cli import hsig_command, refusal, summary

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "headlines"
P = Precision
Row = tuple[str, datetime, Precision, datetime | None]


def _utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def _rows(imported: HeadlineImport) -> list[Row]:
    return [(r.title, r.published_at, r.precision, r.known_at) for r in imported.records]


# Date,Time,Headline,Description (BOM, CRLF, quoted fields, a line break inside one, a blank line)
COLUMNS_ROWS: list[Row] = [
    ("Bitcoin, ether rally", _utc(2020, 7, 18, 4, 24), P.minute, _utc(2020, 7, 18, 4, 25)),
    ("Afternoon dip", _utc(2020, 7, 18, 16, 24), P.minute, _utc(2020, 7, 18, 16, 25)),  # 4:24 PM
    ("Date only: no clock", _utc(2020, 7, 17), P.day, _utc(2020, 7, 18)),  # the day's end
    ("Two-line headline", _utc(2020, 7, 16, 23, 59, 30), P.second, _utc(2020, 7, 16, 23, 59, 31)),
    ("Padded lower-case am", _utc(2020, 7, 15, 7, 5), P.minute, _utc(2020, 7, 15, 7, 6)),
]
COLUMNS_LINES = {
    "bad_time": [6, 10],  # "soon"; 25:00
    "incomplete_time": [7, 12],  # a clock and no date; Apr-18 (month and year only)
    "bad_fields": [13],
}


def test_date_and_time_columns_are_found_and_joined_per_row() -> None:
    imported = import_headlines(FIXTURES / "date_time_columns.csv", "csv:t")
    assert imported.detail["columns"] == {
        "title": "Headline",
        "time": "Time",
        "date": "Date",
        "summary": "Description",
        "guid": None,
    }
    assert imported.detail["encoding"] == "utf-8-sig" and imported.detail["delimiter"] == ","
    assert _rows(imported) == COLUMNS_ROWS
    assert imported.records[1].summary == "Sellers, again"
    assert imported.lines == COLUMNS_LINES
    assert imported.rejects.counts == {"bad_time": 2, "incomplete_time": 2, "bad_fields": 1}
    assert "'soon' in column 'Time' is not a time of day" in imported.rejects.examples["bad_time"]
    assert "'09:15' has no date" in imported.rejects.examples["incomplete_time"]
    assert imported.summary()["precision"] == {"minute": 3, "day": 1, "second": 1}


def test_the_pair_given_or_the_clock_column_given_reads_the_same() -> None:
    for columns in (ColumnMap(time="Date+Time"), ColumnMap(time="Time")):
        imported = import_headlines(FIXTURES / "date_time_columns.csv", "csv:t", columns)
        assert _rows(imported) == COLUMNS_ROWS and imported.lines == COLUMNS_LINES
    # The date column given as the time column: that column is the whole time (day precision).
    dates_only = import_headlines(FIXTURES / "date_time_columns.csv", "csv:t", ColumnMap(time="Date"))
    assert "date" not in dates_only.detail["columns"]
    assert {r.precision for r in dates_only.records} == {P.day}
    assert all(
        r.known_at == r.published_at + (_utc(2020, 1, 2) - _utc(2020, 1, 1)) for r in dates_only.records
    )


def test_semicolon_date_time_file_in_a_zone_with_its_rejects() -> None:
    imported = import_headlines(
        FIXTURES / "date_time_semicolon.csv", "csv:t", options=ReadOptions(timezone="Europe/Berlin")
    )
    assert imported.detail["delimiter"] == ";"
    assert imported.detail["columns"] == {
        "title": "title",
        "time": "time",
        "date": "date",
        "summary": None,
        "guid": "id",
    }
    assert _rows(imported) == [
        ("Bitcoin; ether up", _utc(2022, 7, 5, 14, 3, 10), P.second, _utc(2022, 7, 5, 14, 3, 11)),  # CEST
        ("Minute only", _utc(2022, 7, 5, 14, 3), P.minute, _utc(2022, 7, 5, 14, 4)),
        ("Day only in Berlin", _utc(2022, 7, 5, 22), P.day, _utc(2022, 7, 6, 22)),  # Berlin's midnights
        ("Hour from AM/PM", _utc(2022, 7, 6, 19), P.hour, _utc(2022, 7, 6, 20)),  # 9 PM
        ("Clock with its own zone", _utc(2022, 7, 7, 16, 3, 10), P.second, _utc(2022, 7, 7, 16, 3, 11)),
    ]
    assert [r.guid for r in imported.records] == ["a1", "a2", "a3", "a4", "a5"]
    assert imported.lines == {
        "bad_time": [7],  # 16h03
        "bad_fields": [8],
        "missing_title": [9],
        "nonexistent_time": [10],  # 02:30 on the night Berlin's clocks skip it
    }


def test_columns_with_other_names_given_as_date_plus_time() -> None:
    path = FIXTURES / "date_time_unnamed.csv"  # headline,on,at
    with pytest.raises(InvalidInput, match="no time column"):
        import_headlines(path, "csv:t")
    imported = import_headlines(path, "csv:t", ColumnMap(time="on+at"))
    assert _rows(imported) == [
        ("Unnamed columns", _utc(2020, 7, 18, 14, 5), P.minute, _utc(2020, 7, 18, 14, 6)),
        ("Quoted, with a comma", _utc(2020, 7, 19), P.day, _utc(2020, 7, 20)),
    ]
    with pytest.raises(InvalidInput, match=r"column 'when' of 'on\+when' not in"):
        import_headlines(path, "csv:t", ColumnMap(time="on+when"))
    with pytest.raises(InvalidInput, match="one column"):
        import_headlines(path, "csv:t", ColumnMap(time="on+on"))


def test_a_published_column_wins_over_a_date_and_time_pair(tmp_path: Path) -> None:
    path = tmp_path / "both.csv"
    path.write_text("title,published,date,time\nFull stamp,2020-07-18T14:05:33Z,2020-07-18,09:00\n")
    imported = import_headlines(path, "csv:t")
    assert "date" not in imported.detail["columns"] and imported.detail["columns"]["time"] == "published"
    assert _rows(imported) == [
        ("Full stamp", _utc(2020, 7, 18, 14, 5, 33), P.second, _utc(2020, 7, 18, 14, 5, 34))
    ]


def test_a_time_column_of_whole_times_is_not_taken_for_a_clock(tmp_path: Path) -> None:
    # "time" holds full timestamps and "date" only dates: the time column is read on its own.
    path = tmp_path / "whole.csv"
    path.write_text(
        "title,date,time\nStamp,2020-07-18,2020-07-18 14:05\nSecond,2020-07-19,2020-07-19 08:00\n"
    )
    imported = import_headlines(path, "csv:t")
    assert "date" not in imported.detail["columns"]
    assert [r.published_at for r in imported.records] == [_utc(2020, 7, 18, 14, 5), _utc(2020, 7, 19, 8)]


def test_clock_cells() -> None:
    cells = [
        "04:24",
        " 4:24 PM",
        "16:03:10",
        "16:03:10.5",
        "4 pm",
        "16:03 UTC",
        "16",
        "soon",
        "",
        "2020-07-18",
    ]
    assert clock_cells(cells).tolist() == [True] * 6 + [False] * 4


def test_the_fixture_keeps_its_quirks() -> None:
    data = (FIXTURES / "date_time_columns.csv").read_bytes()
    assert data.startswith(b"\xef\xbb\xbf") and b"\r\n\r\n" in data and b'"Two-line\r\nheadline"' in data


def _stored(url: str) -> list[Row]:
    with session_scope(url) as session:
        rows = session.execute(
            select(
                Headline.title, Headline.published_at, Headline.time_precision, Headline.known_at
            ).order_by(Headline.published_at)
        ).all()
    aware = lambda moment: moment if moment.tzinfo else moment.replace(tzinfo=UTC)  # noqa: E731  (SQLite: naive UTC)
    return [
        (title, aware(published), P(precision), aware(known)) for title, published, precision, known in rows
    ]


def test_backfill_stores_the_joined_times_with_their_precision(ingest_settings: IngestSettings) -> None:
    url = ingest_settings.resolved_database_url
    outcome = backfill_headline_csv(ingest_settings, FIXTURES / "date_time_columns.csv")
    assert (outcome.stored, outcome.rejected) == (5, {"bad_time": 2, "incomplete_time": 2, "bad_fields": 1})
    assert outcome.detail["rejected_lines"] == COLUMNS_LINES
    assert outcome.detail["columns"]["date"] == "Date"
    assert _stored(url) == sorted(COLUMNS_ROWS, key=lambda row: row[1])
    again = backfill_headline_csv(
        ingest_settings, FIXTURES / "date_time_columns.csv", time_column="Date+Time"
    )
    assert (again.stored, again.duplicates) == (0, 5)  # the same guids: idempotent


def test_cli_date_plus_time_and_a_one_line_refusal(tmp_path: Path) -> None:
    hsig = hsig_command(tmp_path / "var", "ingest", "backfill-headlines")
    done = summary(hsig(str(FIXTURES / "date_time_unnamed.csv"), "--time-column", "on+at"))
    assert done["stored"] == 2 and done["detail"]["precision"] == {"minute": 1, "day": 1}
    assert "'on+when'" in refusal(hsig(str(FIXTURES / "date_time_unnamed.csv"), "--time-column", "on+when"))
