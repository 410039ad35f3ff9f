"""Headline files as people have them (issue 11 item 2): sniffed delimiter and encoding, JSON
lines, and every row's time with its precision; rows lacking a part of their time, or out of
range, rejected by line and never stored with a made-up part."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from sqlalchemy import select

from services.common.db import session_scope
from services.common.db.models import Headline
from services.common.errors import InvalidInput
from services.common.time_precision import Precision, known_at, period_start
from services.ingest.backfill import backfill_headline_csv
from services.ingest.headline_import import ColumnMap, ReadOptions, import_headlines
from services.ingest.headline_times import TimeRejected, parse_time, parse_time_column
from services.ingest.settings import IngestSettings
from tests.conftest import REPO_ROOT

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "headlines"
EASTERN = ZoneInfo("America/New_York")
P = Precision


def _import(name: str, **options: object):  # type: ignore[no-untyped-def]
    return import_headlines(FIXTURES / name, "csv:test", options=ReadOptions(**options))  # type: ignore[arg-type]


def _summary(name: str, **options: object) -> list[tuple[str, datetime, Precision, datetime | None]]:
    return [(r.title, r.published_at, r.precision, r.known_at) for r in _import(name, **options).records]


def _utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def test_semicolon_file_with_day_first_times_and_commas_in_fields() -> None:
    # pandas' default read failed this file ("Expected 7 fields in line 3, saw 8").
    imported = _import("semicolon_dayfirst.csv")
    assert imported.detail["delimiter"] == ";" and imported.detail["dayfirst"] is True  # 18-7-2022
    assert _summary("semicolon_dayfirst.csv") == [
        ("Bitcoin falls, then rebounds", _utc(2022, 7, 5, 4, 24), P.minute, _utc(2022, 7, 5, 4, 25)),
        ("Ether, bitcoin and the Fed", _utc(2022, 7, 18, 10), P.minute, _utc(2022, 7, 18, 10, 1)),
        ("Year ends, crypto down", _utc(2021, 12, 31, 23, 59), P.minute, _utc(2022, 1, 1)),
        ("Date only, no clock", _utc(2022, 7, 5), P.day, _utc(2022, 7, 6)),
    ]
    assert imported.records[0].guid == "n1" and imported.records[1].summary == "Rates, again"
    assert imported.rejects.counts == {"bad_time": 1, "bad_fields": 1}
    assert imported.lines == {"bad_time": [6], "bad_fields": [7]}  # 13-13-2022; a surplus field


def test_month_year_rows_are_rejected_not_stored_in_year_one() -> None:
    imported = _import("month_year.csv")
    assert [r.title for r in imported.records] == [
        "Bitcoin steady near 9k", "Twitter hack, bitcoin scam", "Miners sell", "ETF hopes fade",
    ]  # fmt: skip
    assert {r.precision for r in imported.records} == {P.day}
    assert imported.records[0].published_at == _utc(2020, 7, 18)
    assert imported.records[0].known_at == _utc(2020, 7, 19)  # the day's end: no look-ahead
    assert imported.rejects.counts == {"incomplete_time": 2}
    assert imported.lines == {"incomplete_time": [5, 8]}  # the file's own lines, blank ones counted
    assert "no day" in imported.rejects.examples["incomplete_time"]
    assert imported.detail["columns"] == {
        "title": "Headline",
        "time": "Date",
        "summary": "Description",
        "guid": None,
    }


def test_bom_crlf_and_a_quoted_field_holding_the_delimiter_and_a_line_break() -> None:
    imported = _import("bom_crlf.csv")
    assert imported.detail["encoding"] == "utf-8-sig"
    assert imported.detail["columns"]["title"] == "title"  # no BOM stuck to the first name
    assert _summary("bom_crlf.csv") == [
        (
            "Crypto, stocks \u2014 both up",
            _utc(2020, 7, 18, 14, 5, 33),
            P.second,
            _utc(2020, 7, 18, 14, 5, 34),
        ),
        ("Two-line headline", _utc(2020, 7, 18, 13), P.second, _utc(2020, 7, 18, 13, 0, 1)),
        ("Caf\u00e9 owners take bitcoin", _utc(2020, 7, 19, 8, 15), P.minute, _utc(2020, 7, 19, 8, 16)),
    ]
    assert [r.guid for r in imported.records] == ["g1", "g2", "g3"] and imported.rejects.total() == 0


def test_cp1252_pipe_and_utf16_tab_files() -> None:
    cp1252 = _import("cp1252_pipe.csv")
    assert (cp1252.detail["encoding"], cp1252.detail["delimiter"]) == ("cp1252", "|")
    assert [r.title for r in cp1252.records] == [
        "Bitcoin tops \u20ac10,000 \u2014 caf\u00e9s cheer",
        "Na\u00efve investors lose",
    ]
    utf16 = _import("utf16.tsv", timezone="Europe/Berlin")
    assert (utf16.detail["encoding"], utf16.detail["delimiter"]) == ("utf-16", "\t")
    assert _summary("utf16.tsv", timezone="Europe/Berlin") == [
        ("\u00dcberraschung: BTC steigt", _utc(2020, 7, 22, 12), P.hour, _utc(2020, 7, 22, 13)),
        ("Kurs f\u00e4llt", _utc(2020, 7, 22, 13, 30), P.minute, _utc(2020, 7, 22, 13, 31)),
    ]
    # An explicit wrong encoding is refused whole, not decoded into mojibake row by row.
    with pytest.raises(InvalidInput, match="is not utf-8"):
        _import("cp1252_pipe.csv", encoding="utf-8")


def test_json_lines_with_epoch_times() -> None:
    imported = _import("epoch.jsonl")
    assert _summary("epoch.jsonl") == [
        ("Epoch seconds", _utc(2020, 7, 17, 20, 45, 33), P.second, _utc(2020, 7, 17, 20, 45, 34)),
        ("Epoch millis", _utc(2020, 7, 17, 20, 45, 33), P.second, _utc(2020, 7, 17, 20, 45, 34)),
        ("ISO string", _utc(2020, 7, 18, 14, 5, 33), P.second, _utc(2020, 7, 18, 14, 5, 34)),
    ]
    assert imported.rejects.counts == {"bad_json": 2, "missing_time": 1}
    assert imported.lines == {"bad_json": [5, 6], "missing_time": [7]}


def test_mixed_formats_row_by_row_in_the_given_zone() -> None:
    imported = _import("mixed.csv", timezone="America/New_York")
    assert _summary("mixed.csv", timezone="America/New_York") == [
        ("CNBC style", _utc(2020, 7, 17, 23, 51), P.minute, _utc(2020, 7, 17, 23, 52)),
        ("RFC 2822", _utc(2020, 7, 17, 19, 51, 33), P.second, _utc(2020, 7, 17, 19, 51, 34)),
        ("Epoch", _utc(2020, 7, 17, 20, 45, 33), P.second, _utc(2020, 7, 17, 20, 45, 34)),
        ("Hour only", _utc(2020, 7, 18, 18), P.hour, _utc(2020, 7, 18, 19)),
        ("Day only", _utc(2020, 7, 18, 4), P.day, _utc(2020, 7, 19, 4)),  # New York's day
    ]
    assert imported.lines == {
        "incomplete_time": [7, 8],  # 14:05, July 2020
        "future_pubdate": [9],  # 2999
        "early_pubdate": [10],  # 1999, before HSIG_EARLIEST_TIME
        "ambiguous_time": [11],  # 01:30 on the night clocks go back
        "nonexistent_time": [12],  # 02:30 on the night they skip it
        "bad_time": [13],  # yesterday
        "missing_title": [14],
    }  # line 15 (",") is blank in both columns: skipped, not counted


def test_ambiguous_day_month_order_is_refused_unless_given() -> None:
    with pytest.raises(InvalidInput, match=r"line 2: '5-7-2022 04:24'.*--dayfirst or --no-dayfirst"):
        _import("ambiguous_dates.csv")
    assert [r.published_at for r in _import("ambiguous_dates.csv", dayfirst=True).records] == [
        _utc(2022, 7, 5, 4, 24), _utc(2022, 7, 6, 9), _utc(2022, 7, 7),
    ]  # fmt: skip
    assert _import("ambiguous_dates.csv", dayfirst=False).records[0].published_at == _utc(2022, 5, 7, 4, 24)
    by_format = _import("ambiguous_dates.csv", time_format="%d-%m-%Y %H:%M")  # the format says the order
    assert [r.published_at for r in by_format.records] == [_utc(2022, 7, 5, 4, 24), _utc(2022, 7, 6, 9)]
    assert by_format.lines == {"bad_time": [4]}  # 7-7-2022 has no clock: not the format


def test_a_file_showing_both_orders_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "both.csv"
    path.write_text("title,time\na,25-12-2021\nb,12-25-2021\n")
    with pytest.raises(InvalidInput, match=r"day-first on line 2.*month-first on line 3"):
        import_headlines(path, "csv:t")


def test_overrides_delimiter_time_format_and_columns(tmp_path: Path) -> None:
    path = tmp_path / "odd.txt"
    path.write_text("a:b:c\nx:Story one:2020/07/18 14h05\nx:Story two:18 Jul\n")
    imported = import_headlines(
        path,
        "csv:t",
        ColumnMap(title="b", time="c"),
        ReadOptions(delimiter=":", time_format="%Y/%m/%d %Hh%M"),
    )
    assert [(r.title, r.published_at, r.precision) for r in imported.records] == [
        ("Story one", _utc(2020, 7, 18, 14, 5), P.minute)
    ]
    assert imported.rejects.counts == {"bad_time": 1}
    with pytest.raises(InvalidInput, match="lacks a year"):
        import_headlines(
            path, "csv:t", ColumnMap(title="b", time="c"), ReadOptions(delimiter=":", time_format="%d %b")
        )
    with pytest.raises(InvalidInput, match="column 'nope' not in"):
        import_headlines(path, "csv:t", ColumnMap(title="nope", time="c"), ReadOptions(delimiter=":"))
    with pytest.raises(InvalidInput, match="one character"):
        import_headlines(path, "csv:t", options=ReadOptions(delimiter="::"))


def test_a_file_in_no_known_layout_names_its_real_header() -> None:
    with pytest.raises(InvalidInput) as caught:
        _import("no_layout.csv")
    message = str(caught.value)
    assert "\n" not in message
    assert "columns found: ['symbol', 'open', 'close']" in message and "BTC" not in message
    assert "title column" in message and "time column" in message


@pytest.mark.parametrize(
    ("text", "precision"),
    [
        ("2020-07-18", P.day), ("18-Jul-20", P.day), ("July 17, 2020", P.day), ("20200718", P.day),
        ("2020-07-18T14", P.hour), ("2020-07-18 2 PM", P.hour),
        ("7:51 PM ET Fri, 17 July 2020", P.minute), ("2020-07-18 14:05", P.minute),
        ("2020-07-18T14:05:33Z", P.second), ("1595018733", P.second), ("2020-07-18T14:05:33.25+05:30", P.second),
    ],
)  # fmt: skip
def test_precision_is_what_the_text_holds(text: str, precision: Precision) -> None:
    assert parse_time(text, UTC).precision is precision


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("Apr-18", "incomplete_time"), ("July 2020", "incomplete_time"), ("14:05", "incomplete_time"),
        ("2020-07", "incomplete_time"), ("18 Jul", "incomplete_time"), ("2020", "incomplete_time"),
        ("7:51 PM ET", "incomplete_time"), ("5-7-2022 04:24", "ambiguous_time"), ("2020-02-30", "bad_time"),
        ("2020-07-18 25:00", "bad_time"), ("2020-07-18 14:05 CST", "bad_time"), ("", "missing_time"),
    ],
)  # fmt: skip
def test_times_lacking_a_part_are_rejected(text: str, reason: str) -> None:
    with pytest.raises(TimeRejected) as caught:
        parse_time(text, UTC)
    assert caught.value.reason == reason


_ZONES = [UTC, EASTERN, ZoneInfo("Europe/Berlin"), ZoneInfo("Asia/Kolkata"), ZoneInfo("Australia/Lord_Howe")]
_LAYOUTS = {
    P.day: "%Y-%m-%d",
    P.hour: "%Y-%m-%d %H",
    P.minute: "%Y-%m-%d %H:%M",
    P.second: "%Y-%m-%dT%H:%M:%S",
}


@settings(max_examples=300, deadline=None)
@given(
    moment=st.datetimes(
        min_value=datetime(2001, 1, 1), max_value=datetime(2035, 12, 31), timezones=st.just(UTC)
    ),
    precision=st.sampled_from(list(P)),
    zone=st.sampled_from(_ZONES),
)
def test_known_at_ends_the_precision_period_and_never_precedes_the_moment(
    moment: datetime, precision: Precision, zone: ZoneInfo
) -> None:
    """A time written to some precision in some zone: the true moment lies in [published_at,
    known_at), and known_at is the period's end (time_precision.known_at)."""
    text = moment.astimezone(zone).strftime(_LAYOUTS[precision])
    try:
        parsed = parse_time(text, zone)
    except TimeRejected as exc:  # only a wall time the zone shows twice or skips
        assert exc.reason in {"ambiguous_time", "nonexistent_time"} and precision is not P.day
        return
    assert parsed.precision is precision
    assert parsed.published_at <= moment < parsed.known_at
    assert parsed.published_at == period_start(moment, precision, zone)
    assert parsed.known_at == known_at(moment, precision, zone)


@settings(max_examples=25, deadline=None)
@given(
    moments=st.lists(
        st.datetimes(
            min_value=datetime(2001, 1, 1), max_value=datetime(2035, 12, 31), timezones=st.just(UTC)
        ),
        min_size=1,
        max_size=40,
    ),
    precision=st.sampled_from(list(P)),
    zone=st.sampled_from(_ZONES),
)
def test_the_vectorised_column_parser_agrees_with_the_row_parser(
    moments: list[datetime], precision: Precision, zone: ZoneInfo
) -> None:
    texts = [moment.astimezone(zone).strftime(_LAYOUTS[precision]) for moment in moments]
    column = parse_time_column(texts, zone, None)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    for index, text in enumerate(texts):
        try:
            parsed = parse_time(text, zone)
        except TimeRejected as exc:
            assert column.faults[index][0] == exc.reason
            continue
        assert index not in column.faults and column.precision[index] is parsed.precision
        assert epoch + timedelta(microseconds=int(column.published_us[index])) == parsed.published_at
        assert epoch + timedelta(microseconds=int(column.known_us[index])) == parsed.known_at


def _stored(url: str) -> list[tuple[str, datetime, str, datetime]]:
    with session_scope(url) as session:
        rows = session.execute(
            select(
                Headline.title, Headline.published_at, Headline.time_precision, Headline.known_at
            ).order_by(Headline.published_at)
        ).all()
    return [
        (title, _aware(published), precision, _aware(known)) for title, published, precision, known in rows
    ]


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)  # SQLite returns naive UTC


def _metric(reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "hsig_ingest_import_rejected_total", {"kind": "headline", "reason": reason}
    )
    return value or 0.0


def test_backfill_stores_the_good_rows_with_precision_and_counts_the_rest(
    ingest_settings: IngestSettings,
) -> None:
    url = ingest_settings.resolved_database_url
    before = _metric("incomplete_time")
    outcome = backfill_headline_csv(ingest_settings, FIXTURES / "month_year.csv")
    assert (outcome.stored, outcome.rejected) == (4, {"incomplete_time": 2})
    assert outcome.detail["rejected_lines"] == {"incomplete_time": [5, 8]}
    assert outcome.detail["precision"] == {"day": 4}
    assert _metric("incomplete_time") == before + 2
    assert _stored(url) == [
        ("ETF hopes fade", _utc(2020, 7, 15), "day", _utc(2020, 7, 16)),
        ("Miners sell", _utc(2020, 7, 16), "day", _utc(2020, 7, 17)),
        ("Twitter hack, bitcoin scam", _utc(2020, 7, 17), "day", _utc(2020, 7, 18)),
        ("Bitcoin steady near 9k", _utc(2020, 7, 18), "day", _utc(2020, 7, 19)),
    ]  # no row in year 0001
    again = backfill_headline_csv(ingest_settings, FIXTURES / "month_year.csv")
    assert (again.stored, again.duplicates) == (0, 4)  # idempotent
    mixed = backfill_headline_csv(ingest_settings, FIXTURES / "mixed.csv", timezone="America/New_York")
    assert mixed.stored == 5
    assert ("Hour only", _utc(2020, 7, 18, 18), "hour", _utc(2020, 7, 18, 19)) in _stored(url)
    with pytest.raises(InvalidInput, match="columns found"):
        backfill_headline_csv(ingest_settings, FIXTURES / "no_layout.csv")
    assert len(_stored(url)) == 9


def _hsig(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HSIG_DATA_DIR": str(tmp_path / "var"), "OMP_NUM_THREADS": "1"}
    env.pop("HSIG_DATABASE_URL", None)
    env.pop("DATABASE_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "services.pipeline.cli", "ingest", "backfill-headlines", *args],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_cli_options_summary_and_one_line_refusal(tmp_path: Path) -> None:
    done = _hsig(tmp_path, str(FIXTURES / "ambiguous_dates.csv"), "--dayfirst", "--delimiter", ",")
    assert done.returncode == 0, done.stderr
    assert '"stored": 3' in done.stdout and '"dayfirst": true' in done.stdout
    refused = _hsig(tmp_path, str(FIXTURES / "no_layout.csv"))
    assert refused.returncode == 2, refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hsig: error: ")
    assert "columns found: ['symbol', 'open', 'close']" in lines[0]


def _tricky_file(path: Path, copies: int = 1) -> list[str]:
    """Titles each text function treats differently; no id column (guids are hashes)."""
    titles = [
        "Plain ASCII headline",
        "  Leading and  double   spaces ",
        "Bitcoin &amp; ether &amp;amp; more",
        "Caf\u00e9 \u2014 \ufb01nance (NFKC ligature)",
        'Quotes " and a backslash \\ inside',
        "A tab\tinside",
        "STRASSE vs Stra\u00dfe casefold",
        "Punctuation!!! -- and_underscores 42%",
        "x" * 600,
    ]
    lines = ["title,time,summary"]
    for copy in range(copies):
        for index, title in enumerate(titles):
            quoted = '"' + title.replace('"', '""') + '"'
            summary = f'"Summary &amp; ""{copy}"", a, b"' if copy % 3 else ""  # none: stored NULL
            lines.append(f"{quoted},2020-07-{1 + index:02d} {copy % 24:02d}:{copy % 60:02d},{summary}")
    path.write_text("\n".join(lines) + "\n")
    return titles


def test_the_column_path_equals_headline_record_row(tmp_path: Path) -> None:
    """Every stored value the vectorised path computes (title, title_key, payload hash, guid)
    is what HeadlineRecord's own functions give for that row."""
    from services.ingest.headlines import normalise_title, payload_sha256

    titles = _tricky_file(tmp_path / "tricky.csv", copies=2)
    imported = import_headlines(tmp_path / "tricky.csv", "csv:t")
    assert len(imported.records) == 2 * len(titles) and imported.rejects.total() == 0
    frame = imported.records.stored_frame()  # type: ignore[attr-defined]
    for index, record in enumerate(imported.records):
        raw = record.raw
        assert record.title == normalise_title(raw["title"])
        assert record.guid == payload_sha256({"title": record.title, "time": raw["time"].strip()})
        expected = record.row()
        stored = frame.iloc[index].to_dict()
        stored["summary"] = stored["summary"] if isinstance(stored["summary"], str) else None
        stored["link"] = None
        assert {
            k: (v.to_pydatetime() if hasattr(v, "to_pydatetime") else v) for k, v in stored.items()
        } == expected


def test_a_large_file_stores_the_same_rows_on_either_path(
    ingest_settings: IngestSettings, tmp_path: Path
) -> None:
    """2,700 rows, 1,620 of them repeats: on PostgreSQL through COPY (the file path), on
    SQLite through INSERTs; the same rows stored (every text column as row() gives it: quotes
    and commas inside, a missing summary and the link NULL, not empty), and a second import
    stores none."""
    path = tmp_path / "large.csv"
    _tricky_file(path, copies=300)
    outcome = backfill_headline_csv(ingest_settings, path)
    assert outcome.stored == 9 * 120  # hour copy % 24, minute copy % 60: 120 distinct times a title
    assert (outcome.stored + outcome.duplicates) == 2700
    imported = import_headlines(path, f"csv:{path.name}")
    expected: dict[str, dict] = {}
    for record in imported.records:
        expected.setdefault(record.guid, record.row())  # the first of a repeat is the one stored
    with session_scope(ingest_settings.resolved_database_url) as session:
        rows = session.execute(
            select(
                Headline.guid,
                Headline.title_key,
                Headline.payload_sha256,
                Headline.known_at,
                Headline.time_precision,
                Headline.title,
                Headline.summary,
                Headline.link,
                Headline.source,
            )
        ).all()
    assert len(rows) == outcome.stored
    summaries = {row[6] for row in rows}
    assert None in summaries and 'Summary & "1", a, b' in summaries and "" not in summaries
    for guid, key, payload, known, precision, title, summary, link, source in rows:
        row = expected[guid]
        assert (key, payload, _aware(known), precision, title, summary, link, source) == (
            row["title_key"], row["payload_sha256"], row["known_at"], row["time_precision"],
            row["title"], row["summary"], row["link"], row["source"],
        )  # fmt: skip
    assert backfill_headline_csv(ingest_settings, path).stored == 0


def test_a_header_alone_imports_nothing_and_an_empty_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "header.csv"
    path.write_text("title,time\n,\n")
    imported = import_headlines(path, "csv:t")
    assert len(imported.records) == 0 and imported.rejects.total() == 0
    path.write_text("\n\n")
    with pytest.raises(InvalidInput, match="no delimiter"):
        import_headlines(path, "csv:t")
