"""Candle files in every layout (issue 11 item 1): the fixtures in tests/fixtures/candles/ carry
the quirks of real downloads (banner lines, newest first, CRLF, BOM, blank lines, quoted
thousands, Yahoo's null rows, swapped volume columns, ms and us times, a zip), plus bad rows of
every kind; stored into SQLite and PostgreSQL through the backfill, idempotently."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import func, select

from services.common.db import session_scope
from services.common.db.migrate import upgrade
from services.common.db.models import Candle, CandleGap
from services.common.errors import InvalidInput
from services.ingest.backfill import backfill_candles_csv
from services.ingest.candle_import import (
    CandleFrame,
    ImportOptions,
    import_candle_file,
    import_cryptodatadownload,
    infer_timeframe,
    parse_column_mapping,
)
from services.ingest.settings import IngestSettings
from services.ingest.store import COPY_THRESHOLD, quarantine_candles, upsert_candles
from services.pipeline.replay_server import generated_series
from tests.support.cli import hsig_command, refusal, summary

FIXTURES = Path(__file__).parent.parent / "fixtures" / "candles"
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC).timestamp()
H, M = 3600, 60
BTC_0708_10H = int(datetime(2020, 7, 8, 10, tzinfo=UTC).timestamp())
BINANCE_START = int(datetime(2024, 1, 1, tzinfo=UTC).timestamp())
GENERIC = ImportOptions(
    columns={"time": "Time (UTC)", "open": "O", "high": "H", "low": "L", "close": "C", "volume": "Vol (BTC)"},
    time_format="%d/%m/%Y %H:%M",
)


def _import(name: str, options: ImportOptions | None = None, **kwargs: object):  # type: ignore[no-untyped-def]
    return import_candle_file(FIXTURES / name, options, earliest_seconds=EARLIEST, **kwargs)  # type: ignore[arg-type]


def test_cryptodatadownload_older_layout() -> None:
    """Banner, CRLF, newest first, ms times; a future row, a high below the open, an off-grid row."""
    imported = _import("cdd_old_btcusd_1h.csv")
    assert (imported.layout, imported.timeframe, imported.rows) == ("cryptodatadownload", "1h", 7)
    assert imported.rejects.counts == {"future_candle": 1, "inconsistent_range": 1, "off_grid": 1}
    assert imported.rejects.lines == {"future_candle": [3], "inconsistent_range": [5], "off_grid": [6]}
    candles = imported.candles
    np.testing.assert_array_equal(
        candles.open_time, BTC_0708_10H + H * np.array([0, 1, 2, 4])
    )  # oldest first
    np.testing.assert_array_equal(candles.close, [9370.5, 9390, 9400.1, 9436.64])
    np.testing.assert_array_equal(candles.volume, [98.1, 150.25, 212, 478.88])  # BTC, not USD


def test_cryptodatadownload_newer_layout_tells_the_volumes_apart_by_value() -> None:
    """BOM, banner, blank lines, quoted thousands; volto/volfrom swapped in most rows."""
    imported = _import("cdd_new_btcusd_1h.csv")
    assert (imported.layout, imported.timeframe, imported.rows, imported.rejects.counts) == (
        "cryptodatadownload",
        "1h",
        5,
        {},
    )
    np.testing.assert_array_equal(imported.candles.open_time, BTC_0708_10H + H * np.arange(5))
    np.testing.assert_array_equal(imported.candles.open, [9350, 9370.5, 9390, 9400.1, 9444.76])
    np.testing.assert_array_equal(imported.candles.volume, [98.1, 150.25, 212, 360.5, 478.88])
    assert np.all(imported.candles.volume * imported.candles.close < 1e7)  # base x price ~ quote
    below_one = _import("cdd_new_dogeusd_1h.csv").candles  # under a price of 1 base is the larger
    np.testing.assert_array_equal(below_one.volume, [3000, 2000, 1000])


def test_yahoo_daily_null_rows_are_rejected_not_zero() -> None:
    imported = _import("yahoo_btc-usd_1d.csv")
    assert (imported.layout, imported.timeframe) == ("yahoo", "1d")
    assert imported.rejects.counts == {"missing_value": 1} and imported.rejects.lines == {
        "missing_value": [4]
    }
    days = [datetime(2020, 7, day, tzinfo=UTC).timestamp() for day in (1, 2, 4, 5)]
    np.testing.assert_array_equal(imported.candles.open_time, days)
    assert imported.candles.close[0] == 9228.325195 and imported.candles.volume[0] == 15971550355


@pytest.mark.parametrize(
    "name",
    [
        "binance_BTCUSDT-1m-2024-01-01.csv",  # open time in milliseconds
        "binance_BTCUSDT-1m-2025-01-01_us.csv",  # in microseconds, as newer Binance files
        "binance_BTCUSDT-1m-2024-01-01.zip",  # the download itself: a zip holding one csv
    ],
)
def test_binance_klines(name: str) -> None:
    imported = _import(name)
    assert (imported.layout, imported.timeframe, imported.rows, imported.rejects.counts) == (
        "binance",
        "1m",
        5,
        {},
    )
    np.testing.assert_array_equal(imported.candles.open_time, BINANCE_START + M * np.arange(5))
    np.testing.assert_array_equal(imported.candles.volume, [35.92724, 21.5, 18.2, 12.0, 30.75])  # base


def test_ccxt_json() -> None:
    imported = _import("ccxt_btcusd_1h.json")
    assert (imported.layout, imported.timeframe) == ("ccxt-json", "1h")
    assert imported.rejects.lines == {"missing_value": [3], "malformed_row": [4], "bad_price": [6]}
    np.testing.assert_array_equal(imported.candles.open_time, BINANCE_START + H * np.array([0, 1, 4]))


def test_generic_by_column_mapping() -> None:
    imported = _import("generic_btcusd_15m.csv", GENERIC)
    assert (imported.layout, imported.timeframe, imported.rejects.counts) == ("generic", "15m", {})
    np.testing.assert_array_equal(imported.candles.open_time, BINANCE_START + 15 * M * np.arange(4))
    np.testing.assert_array_equal(imported.candles.open, [42283.58, 42290.1, 42305, 42330])
    with pytest.raises(InvalidInput, match="Vol"):  # without the mapping: no known layout
        _import("generic_btcusd_15m.csv")
    assert parse_column_mapping(["time=Time (UTC)", "Open=O"]) == {"time": "Time (UTC)", "open": "O"}
    for bad in (["time"], ["when=x"], ["open=a", "open=b"]):
        with pytest.raises(InvalidInput, match="--column"):
            parse_column_mapping(bad)


def test_every_kind_of_bad_row_is_counted_with_its_line() -> None:
    imported = _import("bad_rows_1h.csv")
    assert imported.layout == "generic"  # timestamp, open, high, low, close, volume: found by name
    assert imported.rejects.lines == {
        "inconsistent_range": [3],
        "bad_price": [4],
        "bad_volume": [5],
        "off_grid": [6],
        "duplicate_time": [8],  # the first row for 04:00 is kept
        "missing_value": [9],
        "bad_number": [10],
        "bad_time": [11],
        "malformed_row": [12],  # more cells than the header
        "future_candle": [13],
        "early_candle": [14],
    }
    assert sum(imported.rejects.counts.values()) == 11 and imported.rows == 14
    np.testing.assert_array_equal(imported.candles.open_time, BINANCE_START + H * np.array([0, 4, 8]))
    assert imported.candles.close[1] == 107  # line 7's values, not line 8's


def test_the_fixtures_keep_their_quirks() -> None:
    """Guards against an editor or git normalising the files the tests depend on."""
    assert b"\r\n" in (FIXTURES / "cdd_old_btcusd_1h.csv").read_bytes()
    assert (FIXTURES / "cdd_new_btcusd_1h.csv").read_bytes().startswith(b"\xef\xbb\xbf")
    assert b"\n\n" in (FIXTURES / "cdd_new_btcusd_1h.csv").read_bytes()


def test_a_wide_or_short_line_deep_in_a_large_file(tmp_path: Path) -> None:
    """Past the lines scanned for the header, a line with one cell too many is still caught
    (the fast read of only some columns would drop the extra cell silently), one too few is a
    missing value."""
    lines = ["timestamp,open,high,low,close,volume"]
    lines += [f"{BINANCE_START + i * M},100,110,95,105,{i}" for i in range(40)]
    lines[30] += ",7"  # line 31 of the file
    lines[35] = lines[35].rsplit(",", 1)[0]  # line 36
    path = tmp_path / "deep.csv"
    path.write_text("\n".join(lines) + "\n")
    imported = import_candle_file(path)
    assert imported.rejects.lines == {"malformed_row": [31], "missing_value": [36]}
    assert len(imported.candles) == 38


def test_a_candle_still_open_is_not_stored() -> None:
    last_open = BTC_0708_10H + 4 * H
    imported = _import("cdd_new_btcusd_1h.csv", now_seconds=last_open + 20 * M)
    assert imported.rejects.lines == {"not_closed": [3]} and len(imported.candles) == 4


def test_timeframe_given_must_match_the_file() -> None:
    assert _import("cdd_new_btcusd_1h.csv", timeframe="60m").timeframe == "1h"
    with pytest.raises(InvalidInput, match="--timeframe 1d but the file's candles are 1h apart"):
        _import("cdd_new_btcusd_1h.csv", timeframe="1d")
    assert infer_timeframe(np.array([0, 60, 120, 600, 660])) == 60  # a gap does not move it


def test_no_known_layout_names_the_real_header(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as caught:
        _import("unknown_layout.csv")
    message = caught.value.message
    assert "columns ['when', 'price', 'size']" in message and "cryptodatadownload, yahoo, binance" in message
    assert "\n" not in message and "2024-01-01" not in message  # one line; no data row as header
    with pytest.raises(InvalidInput, match=r"not a CryptoDataDownload file.*'Date', 'Open', 'High'"):
        import_cryptodatadownload(FIXTURES / "yahoo_btc-usd_1d.csv")  # the header, not a data row
    numbers = tmp_path / "numbers.csv"
    numbers.write_text("1,2,3,4,5\n6,7,8,9,10\n")
    with pytest.raises(InvalidInput, match="found no header line"):
        import_candle_file(numbers)
    with pytest.raises(InvalidInput, match="the yahoo layout in this file"):
        _import("cdd_new_btcusd_1h.csv", ImportOptions(layout="yahoo"))
    with pytest.raises(InvalidInput, match="unknown layout"):
        _import("cdd_new_btcusd_1h.csv", ImportOptions(layout="excel"))


def _stored(url: str) -> list[tuple[datetime, float, float]]:
    with session_scope(url) as session:
        rows = session.execute(
            select(Candle.open_time, Candle.close, Candle.volume).order_by(Candle.open_time)
        )
        return [tuple(row) for row in rows]  # type: ignore[misc]


def _metric(reason: str) -> float:
    labels = {"kind": "candle", "reason": reason}
    return REGISTRY.get_sample_value("hsig_ingest_import_rejected_total", labels) or 0.0


def test_backfill_stores_the_good_rows_idempotently(ingest_settings: IngestSettings) -> None:
    url = ingest_settings.resolved_database_url
    upgrade(url)
    before = _metric("duplicate_time")
    outcome = backfill_candles_csv(ingest_settings, FIXTURES / "bad_rows_1h.csv", "csvexchange", "BTC/USD")
    assert (outcome.source, outcome.stored) == ("candles:csvexchange:BTC/USD:1h", 3)
    assert outcome.rejected["off_grid"] == 1 and outcome.detail["rejected_lines"]["bad_time"] == [11]
    assert (outcome.detail["layout"], outcome.detail["rows"], outcome.detail["gaps"]) == ("generic", 14, 2)
    assert _metric("duplicate_time") == before + 1
    first = _stored(url)
    assert [close for _t, close, _v in first] == [105, 107, 108]
    again = backfill_candles_csv(ingest_settings, FIXTURES / "bad_rows_1h.csv", "csvexchange", "BTC/USD")
    assert again.detail["gaps"] == 0 and _stored(url) == first  # nothing new, nothing changed
    with session_scope(url) as session:
        assert session.scalar(select(func.count()).select_from(CandleGap)) == 2


def test_backfill_every_layout_into_one_database(ingest_settings: IngestSettings) -> None:
    url = ingest_settings.resolved_database_url
    upgrade(url)
    expected = {
        "cdd_old_btcusd_1h.csv": ("cdd-old", 4),
        "cdd_new_btcusd_1h.csv": ("cdd-new", 5),
        "yahoo_btc-usd_1d.csv": ("yahoo", 4),
        "binance_BTCUSDT-1m-2024-01-01.zip": ("binance", 5),
        "ccxt_btcusd_1h.json": ("ccxt", 3),
    }
    for name, (exchange, count) in expected.items():
        assert backfill_candles_csv(ingest_settings, FIXTURES / name, exchange, "BTC/USD").stored == count
    generic = backfill_candles_csv(
        ingest_settings, FIXTURES / "generic_btcusd_15m.csv", "x", "BTC/USD", "15m", GENERIC
    )
    with session_scope(url) as session:
        by_market = dict(
            session.execute(select(Candle.exchange, func.count()).group_by(Candle.exchange)).all()  # type: ignore[arg-type]
        )
        timeframes = set(session.scalars(select(Candle.timeframe).distinct()))
    assert generic.stored == 4 and by_market == {**{e: c for e, c in expected.values()}, "x": 4}
    assert timeframes == {"1h", "1d", "1m", "15m"}


def test_backfill_of_an_unknown_layout_stores_nothing(ingest_settings: IngestSettings) -> None:
    url = ingest_settings.resolved_database_url
    upgrade(url)
    with pytest.raises(InvalidInput, match="when"):
        backfill_candles_csv(ingest_settings, FIXTURES / "unknown_layout.csv", "x", "BTC/USD")
    with session_scope(url) as session:
        assert session.scalar(select(func.count()).select_from(Candle)) == 0


def test_cli_one_line_for_an_unknown_layout_and_a_summary_for_a_partly_bad_file(tmp_path: Path) -> None:
    hsig = hsig_command(tmp_path / "var", "ingest", "backfill-candles")
    assert "['when', 'price', 'size']" in refusal(hsig(str(FIXTURES / "unknown_layout.csv")))
    done = summary(hsig(str(FIXTURES / "bad_rows_1h.csv"), "--exchange", "csvexchange", "--timeframe", "1h"))
    assert done["stored"] == 3 and done["rejected"]["bad_price"] == 1
    assert done["detail"]["rejected_lines"]["malformed_row"] == [12]
    generic = hsig(
        str(FIXTURES / "generic_btcusd_15m.csv"),
        *("--column", "time=Time (UTC)", "--column", "open=O", "--column", "high=H"),
        *("--column", "low=L", "--column", "close=C", "--column", "volume=Vol (BTC)"),
        *("--time-format", "%d/%m/%Y %H:%M"),
    )
    assert summary(generic)["stored"] == 4


def test_a_large_frame_is_stored_exactly_and_upserted(ingest_settings: IngestSettings) -> None:
    """On PostgreSQL past COPY_THRESHOLD candles go by binary COPY (straight into an empty range,
    else staged and upserted); both dialects must store the same values and refresh the same way."""
    url = ingest_settings.resolved_database_url
    upgrade(url)
    count = COPY_THRESHOLD + 500
    series = generated_series(datetime(2024, 1, 1, tzinfo=UTC), count, H)
    with session_scope(url) as session:
        assert upsert_candles(session, "big", "BTC/USD", "1h", series) == count
    stored = _stored(url)
    assert [close for _t, close, _v in stored] == series.close.tolist()  # float8 round trip, exact
    assert [volume for _t, _c, volume in stored] == series.volume.tolist()
    assert stored[0][0] == datetime(2024, 1, 1, tzinfo=UTC)
    first_time = stored[0][0]
    with session_scope(url) as session:  # a quarantined candle, then a corrected copy of the file
        quarantine_candles(session, "big", "BTC/USD", "1h", {first_time: "bad_price"})
    corrected = CandleFrame(
        series.open_time, series.open, series.high, series.low, series.close, series.volume * 2
    )
    with session_scope(url) as session:
        assert upsert_candles(session, "big", "BTC/USD", "1h", corrected) == count
    refreshed = _stored(url)
    assert len(refreshed) == count and [v for _t, _c, v in refreshed] == (series.volume * 2).tolist()
    with session_scope(url) as session:
        reasons = session.scalars(select(Candle.quarantine_reason).where(Candle.open_time == first_time))
        assert list(reasons) == [None]
