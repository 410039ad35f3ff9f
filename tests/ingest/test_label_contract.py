"""The label contract for coarse times, as properties: for every precision and a range of
zones (UTC, New York with its DST days, Kolkata +5:30, Lord Howe with its 30-minute DST,
Chatham +12:45/+13:45), no label uses a candle opening before the end of its headline's
precision period, nor a situation candle closing after it.

The end-to-end property stores headlines the way the importers do (``HeadlineRecord.row()``
with the period's start and ``known_at``) in SQLite and runs the real labeller over a random
candle grid with gaps; the pure one runs ``label_headlines`` on many more cases."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, select

from services.common.db import get_engine, session_scope
from services.common.db.migrate import upgrade
from services.common.db.models import Candle, Headline, LabelledRow
from services.common.labelling import Candles, label_headlines
from services.common.time_precision import Precision, known_at, period_start
from services.ingest.headlines import HeadlineRecord
from services.ingest.labeller import Market, label_new_rows
from services.ingest.store import insert_headlines

ZONES = [
    ZoneInfo(name)
    for name in ("UTC", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe", "Pacific/Chatham")
]
PRECISIONS = list(Precision)
TIMEFRAMES = {"1m": 60, "15m": 900, "1h": 3600, "4h": 14_400, "1d": 86_400}
# DST changes, where days and repeated hours are odd: New York, Lord Howe and Chatham, 2024.
DST_DAYS = [
    datetime(2024, 3, 10, tzinfo=UTC),
    datetime(2024, 11, 3, tzinfo=UTC),
    datetime(2024, 4, 6, 12, tzinfo=UTC),  # Lord Howe and Chatham leave DST on the 7th, local
    datetime(2024, 10, 5, 12, tzinfo=UTC),  # ...and enter it on the 6th
]


def _epoch(moment: datetime) -> int:
    return int(moment.timestamp())


def _moments() -> st.SearchStrategy[datetime]:
    """Any second of 2020-2026, with weight on the hours around the DST changes."""
    anywhere = st.datetimes(datetime(2020, 1, 1), datetime(2026, 12, 31), timezones=st.just(UTC))
    near_dst = st.builds(
        lambda day, offset: day + timedelta(seconds=offset),
        st.sampled_from(DST_DAYS),
        st.integers(-36 * 3600, 36 * 3600),
    )
    return st.one_of(anywhere, near_dst).map(lambda moment: moment.replace(microsecond=0))


# --- known_at itself ----------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(_moments(), st.sampled_from(PRECISIONS), st.sampled_from(ZONES))
def test_a_moment_lies_in_its_period_and_is_known_at_its_end(
    moment: datetime, precision: Precision, zone: ZoneInfo
) -> None:
    start, end = period_start(moment, precision, zone), known_at(moment, precision, zone)
    assert start <= moment < end
    assert start.tzinfo is UTC and end.tzinfo is UTC
    assert known_at(end - timedelta(seconds=1), precision, zone) == end
    offsets = {instant.astimezone(zone).utcoffset() for instant in (start, moment, end)}
    if precision is Precision.day or len(offsets) == 1:
        # Periods tile the time line: the period's start is its own, the next one starts at its
        # end. Not across Lord Howe's 30-minute change, where the wall-clock hour 01:00-02:00 is
        # lived one and a half times: its second pass (01:30-02:00 standard time) is read at
        # that offset from 01:00, so it overlaps the first. Its end, known_at, is still right.
        assert period_start(start, precision, zone) == start
        assert period_start(end, precision, zone) == end
    length = (end - start).total_seconds()
    if precision is Precision.day:
        assert start.astimezone(zone).date() == moment.astimezone(zone).date()
        assert 23 * 3600 <= length <= 25 * 3600  # 23 or 25 h on DST days, 23.5/24.5 at Lord Howe
    else:
        assert length == precision.seconds


@pytest.mark.parametrize(
    ("zone", "day", "hours"),
    [
        ("America/New_York", datetime(2024, 3, 10, 12, tzinfo=UTC), 23),
        ("America/New_York", datetime(2024, 11, 3, 12, tzinfo=UTC), 25),
        ("America/New_York", datetime(2024, 11, 4, 12, tzinfo=UTC), 24),
        ("Australia/Lord_Howe", datetime(2024, 4, 7, 0, tzinfo=UTC), 24.5),
        ("Australia/Lord_Howe", datetime(2024, 10, 6, 0, tzinfo=UTC), 23.5),
        ("Pacific/Chatham", datetime(2024, 4, 7, 0, tzinfo=UTC), 25),
        ("Asia/Kolkata", datetime(2024, 4, 7, 0, tzinfo=UTC), 24),
    ],
)
def test_a_day_ends_at_the_zones_next_midnight(zone: str, day: datetime, hours: float) -> None:
    tz = ZoneInfo(zone)
    start, end = period_start(day, Precision.day, tz), known_at(day, Precision.day, tz)
    assert (end - start) == timedelta(hours=hours)
    assert start.astimezone(tz).time() == end.astimezone(tz).time() == datetime.min.time()


def test_the_second_pass_of_a_repeated_hour_is_its_own_period() -> None:
    """01:30 EST on the fall-back night (06:30 UTC) is in 01:00-02:00 EST, not 01:00 EDT's."""
    moment = datetime(2024, 11, 3, 6, 30, tzinfo=UTC)
    ny = ZoneInfo("America/New_York")
    assert period_start(moment, Precision.hour, ny) == datetime(2024, 11, 3, 6, tzinfo=UTC)
    assert known_at(moment, Precision.hour, ny) == datetime(2024, 11, 3, 7, tzinfo=UTC)


def test_known_at_refuses_a_naive_time() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        known_at(datetime(2024, 1, 1), Precision.day)


# --- label_headlines on known_at -------------------------------------------------------------


@st.composite
def _labelling_case(draw: st.DrawFn) -> tuple[datetime, Precision, ZoneInfo, Candles, int, int]:
    """A true publication instant, its source's precision and zone, and a candle grid with gaps
    around it."""
    truth = draw(_moments())
    precision, zone = draw(st.sampled_from(PRECISIONS)), draw(st.sampled_from(ZONES))
    tf = draw(st.sampled_from(list(TIMEFRAMES.values())))
    horizon = tf * draw(st.integers(1, 3))
    lookback = draw(st.integers(0, 3))
    first = (_epoch(truth) // tf - draw(st.integers(0, 30))) * tf
    count = draw(st.integers(1, 60))
    times = first + tf * np.arange(count, dtype=np.int64)
    keep = np.array(draw(st.lists(st.booleans(), min_size=count, max_size=count)), dtype=bool)
    times = times[keep | (np.arange(count) % 3 == 0)]  # gaps, but never an empty grid
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    opens = 100 + rng.random(times.size)
    closes = opens * (1 + rng.normal(0, 0.01, times.size))
    highs, lows = np.maximum(opens, closes) * 1.001, np.minimum(opens, closes) * 0.999
    return truth, precision, zone, Candles(times, opens, highs, lows, closes, tf), horizon, lookback


@settings(max_examples=300, deadline=None)
@given(_labelling_case())
def test_no_label_uses_a_candle_from_inside_its_headlines_period(
    case: tuple[datetime, Precision, ZoneInfo, Candles, int, int],
) -> None:
    truth, precision, zone, candles, horizon, lookback = case
    known = _epoch(known_at(truth, precision, zone))
    labels = label_headlines(np.array([known]), candles, horizon, lookback=lookback)
    tf = candles.timeframe_seconds
    if labels.labelled[0]:
        entry_open = int(candles.open_time[labels.entry_idx[0]])
        assert entry_open >= known > _epoch(truth)
        assert entry_open < known + tf  # the first open at or after known_at: no needless wait
    for index in labels.situation_idx[0].tolist():
        if index >= 0:
            assert int(candles.open_time[index]) + tf <= known


# --- the real labeller, end to end -------------------------------------------------------------


@pytest.fixture(scope="module")
def contract_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = f"sqlite:///{Path(tmp_path_factory.mktemp('contract')) / 'contract.db'}"
    upgrade(url)
    yield url
    get_engine(url).dispose()


def _clear(url: str) -> None:
    with session_scope(url) as session:
        for model in (LabelledRow, Candle, Headline):
            session.execute(delete(model))


@st.composite
def _stored_case(draw: st.DrawFn) -> tuple[list[HeadlineRecord], str, list[int], int]:
    """Headlines as an importer stores them (the period's start, its precision, its known_at),
    an hourly or 15-minute grid with gaps, and a horizon."""
    base = draw(_moments())
    timeframe = draw(st.sampled_from(["15m", "1h"]))
    tf = TIMEFRAMES[timeframe]
    records = []
    for number in range(draw(st.integers(1, 8))):
        truth = base + timedelta(seconds=draw(st.integers(0, 2 * 86_400)))
        precision, zone = draw(st.sampled_from(PRECISIONS)), draw(st.sampled_from(ZONES))
        start = period_start(truth, precision, zone)
        end = known_at(truth, precision, zone)
        records.append(
            HeadlineRecord(
                "prop", f"g{number}", f"headline {number}", start, precision=precision, known_at=end
            )
        )
    first = (_epoch(base) // tf - 4) * tf
    slots = (4 * 86_400) // tf
    missing = set(draw(st.lists(st.integers(0, slots - 1), max_size=5)))
    grid = [first + tf * slot for slot in range(slots) if slot not in missing]
    return records, timeframe, grid, tf * draw(st.integers(1, 2))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=_stored_case())
def test_the_labeller_enters_after_every_headlines_period(
    contract_db: str, case: tuple[list[HeadlineRecord], str, list[int], int]
) -> None:
    records, timeframe, grid, horizon = case
    _clear(contract_db)
    market = Market("prop", "BTC/USD", timeframe)
    candles = [
        Candle(
            exchange="prop", symbol="BTC/USD", timeframe=timeframe, open_time=datetime.fromtimestamp(t, UTC),
            open=100.0 + i % 7, high=110.0, low=90.0, close=100.0 + i % 5, volume=1.0,
        )
        for i, t in enumerate(grid)
    ]  # fmt: skip
    with session_scope(contract_db) as session:
        insert_headlines(session, records)
        session.add_all(candles)
    with session_scope(contract_db) as session:
        label_new_rows(session, market, f"{horizon // 60}m", lookback=2, now=datetime(2100, 1, 1, tzinfo=UTC))
    tf = TIMEFRAMES[timeframe]
    with session_scope(contract_db) as session:
        stored = session.execute(select(LabelledRow, Headline).join(Headline)).all()
        for row, headline in stored:
            record = next(r for r in records if r.guid == headline.guid)
            assert headline.known_at == record.known_at and headline.time_precision == record.precision
            assert row.known_at == record.known_at  # the row says what it was derived from
            assert row.headline_time == record.published_at
            assert row.entry_time >= row.known_at and row.entry_time < row.known_at + timedelta(seconds=tf)
            for opened in row.situation_candles:
                assert datetime.fromisoformat(opened) + timedelta(seconds=tf) <= row.known_at
        # Every headline whose first open at or after known_at (and its exit) is stored got a row.
        on_grid = set(grid)
        for record in records:
            entry = -(-_epoch(record.known_at) // tf) * tf
            expected = entry in on_grid and entry + horizon - tf in on_grid
            assert expected == any(headline.guid == record.guid for _, headline in stored)


# --- what the rows carry downstream ------------------------------------------------------------


def test_rows_carry_known_at_the_shift_and_a_prompt_time_without_invented_parts(db_url: str) -> None:
    """A New York day headline and a minute one, labelled and read back the three ways rows
    leave the database: the export shape, the trainer's prompt and the backtest's."""
    from services.backtest.predictors.base import prompts_of
    from services.backtest.rows import load_rows
    from services.common.labelled_rows import read_labelled_rows
    from services.trainer.datasets import _trend_example

    ny = ZoneInfo("America/New_York")
    day = datetime(2024, 3, 5, 15, tzinfo=UTC)  # some time on Tuesday 5 March in New York
    minute = datetime(2024, 3, 5, 14, 0, tzinfo=UTC)  # on the hour, to the minute
    records = [
        HeadlineRecord(
            "csv:days", "d", "Day headline", period_start(day, Precision.day, ny),
            precision=Precision.day, known_at=known_at(day, Precision.day, ny),
        ),
        HeadlineRecord("csv:cnbc_headlines", "m", "Minute headline", minute, precision=Precision.minute),
    ]  # fmt: skip
    grid = [datetime(2024, 3, 4, tzinfo=UTC) + timedelta(hours=h) for h in range(72)]
    with session_scope(db_url) as session:
        insert_headlines(session, records)
        session.add_all(
            Candle(
                exchange="x", symbol="BTC/USD", timeframe="1h", open_time=t, open=100.0 + i % 3,
                high=110.0, low=90.0, close=100.0 + i % 5, volume=1.0,
            )
            for i, t in enumerate(grid)
        )  # fmt: skip
    with session_scope(db_url) as session:
        assert label_new_rows(session, Market("x", "BTC/USD", "1h"), "1h").labelled == 2
        out = {row.headline: row for row in read_labelled_rows(session, "BTC/USD", "1h")}
    by_day, by_minute = out["Day headline"], out["Minute headline"]
    assert by_day.headline_time == datetime(2024, 3, 5, 5, tzinfo=UTC)  # NY midnight, EST
    assert by_day.known_at == by_day.entry_time == datetime(2024, 3, 6, 5, tzinfo=UTC)
    assert (by_day.entry_shift_seconds, by_day.time_precision) == (86_400, "day")
    assert by_minute.known_at == minute + timedelta(minutes=1) and by_minute.entry_shift_seconds == 60
    assert by_minute.entry_time == datetime(2024, 3, 5, 15, tzinfo=UTC)  # not the 14:00 open
    dumped = by_day.model_dump(mode="json", by_alias=True)
    assert dumped["entry_shift_seconds"] == 86_400 and dumped["known_at"].startswith("2024-03-06T05:00")

    assert "### Time: Tue 2024-03-05\n" in _trend_example(by_day).prompt
    assert "### Time: Tue 2024-03-05 14:00 UTC\n" in _trend_example(by_minute).prompt
    rows = load_rows(db_url, "BTC/USD", "1h")
    prompts = dict(zip(rows.headline, prompts_of(rows), strict=True))
    assert "### Time: Tue 2024-03-05\n" in prompts["Day headline"]
    assert "### Time: Tue 2024-03-05 14:00 UTC\n" in prompts["Minute headline"]
