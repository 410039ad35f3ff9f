"""Candle files separated by `;` (European exports, decimal commas `29345,5`, thousands dots
`29.345,5`) and by tabs (issue 11 item 1): the delimiter sniffed from the header line, the
layouts (CryptoDataDownload, Yahoo, generic) detected as with commas, `--delimiter` to force
one; a file in no known layout still names its real header. The fixtures are
tests/fixtures/candles/*semicolon* and generic_btcusd_1h.tsv."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from services.common.db import session_scope
from services.common.db.migrate import upgrade
from services.common.db.models import Candle
from services.common.errors import InvalidInput
from services.ingest.backfill import backfill_candles_csv
from services.ingest.candle_import import CandleImport, ImportOptions, import_candle_file
from services.ingest.settings import IngestSettings
from tests.support.cli import hsig_command, refusal, summary

FIXTURES = Path(__file__).parent.parent / "fixtures" / "candles"
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC).timestamp()
D, H, M = 86400, 3600, 60
JAN_2024 = int(datetime(2024, 1, 1, tzinfo=UTC).timestamp())
BTC_0708_14H = int(datetime(2020, 7, 8, 14, tzinfo=UTC).timestamp())


def _import(name: str, options: ImportOptions | None = None) -> CandleImport:
    return import_candle_file(FIXTURES / name, options, earliest_seconds=EARLIEST)


def test_yahoo_with_semicolons_decimal_commas_and_thousands_dots() -> None:
    """BOM, CRLF, a blank line, quoted cells; `38.345,5` is 38345.5 and `39.200` is 39200."""
    imported = _import("yahoo_btc-eur_1d_semicolon.csv")
    assert (imported.layout, imported.timeframe, imported.delimiter, imported.rows) == ("yahoo", "1d", ";", 7)
    assert imported.rejects.lines == {
        "missing_value": [4],  # null row
        "bad_number": [7],  # 39300.5: a decimal point in a file whose mark is the comma
        "inconsistent_range": [8],  # 39.200 / 39.000 read as 39200 / 39000: high below open
    }
    candles = imported.candles
    np.testing.assert_array_equal(candles.open_time, JAN_2024 + D * np.array([0, 1, 3, 6]))
    np.testing.assert_array_equal(candles.open, [38345.5, 38750.75, 39100.1, 39100])
    np.testing.assert_array_equal(candles.high, [38900.25, 39200, 39500, 39600])
    np.testing.assert_array_equal(candles.low, [38100, 38500.5, 38900, 39050])
    np.testing.assert_array_equal(candles.close, [38750.75, 39100.1, 39300.5, 39550.25])
    np.testing.assert_array_equal(candles.volume, [1234567, 2345678, 3456789, 4000000])


def test_cryptodatadownload_with_semicolons_tells_the_volumes_apart_by_value() -> None:
    """Banner line, newest first, the volume columns swapped in one row, quoted cells."""
    imported = _import("cdd_old_btceur_1h_semicolon.csv")
    assert (imported.layout, imported.timeframe, imported.delimiter) == ("cryptodatadownload", "1h", ";")
    assert imported.rejects.counts == {}
    candles = imported.candles
    np.testing.assert_array_equal(candles.open_time, BTC_0708_14H + H * np.arange(3))  # oldest first
    np.testing.assert_array_equal(candles.close, [8370, 8390.1, 8410.25])
    np.testing.assert_array_equal(candles.volume, [98.1, 149.68, 120.5])  # BTC, not EUR


def test_semicolons_with_decimal_points_and_a_tab_file() -> None:
    points = _import("generic_btcusd_15m_semicolon_points.csv")
    assert (points.layout, points.timeframe, points.delimiter) == ("generic", "15m", ";")
    assert points.rejects.lines == {"inconsistent_range": [4]}  # high 42300 below open 42310.25
    np.testing.assert_array_equal(points.candles.open_time, JAN_2024 + 15 * M * np.array([0, 1, 3]))
    np.testing.assert_array_equal(points.candles.close, [42298.61, 42310.25, 42325.5])
    np.testing.assert_array_equal(points.candles.volume, [35.92724, 12.5, 12.5])  # 1.25e1
    tab = _import("generic_btcusd_1h.tsv")
    assert (tab.layout, tab.timeframe, tab.delimiter, tab.rejects.counts) == ("generic", "1h", "\t", {})
    np.testing.assert_array_equal(tab.candles.volume, [35.92724, 1250.5, 8])  # "1,250.5": a thousands comma


def test_the_fixtures_keep_their_quirks() -> None:
    data = (FIXTURES / "yahoo_btc-eur_1d_semicolon.csv").read_bytes()
    assert data.startswith(b"\xef\xbb\xbf") and b"\r\n\r\n" in data and b'"39.100,1"' in data


def test_the_comma_layouts_are_read_as_before() -> None:
    for name in ("yahoo_btc-usd_1d.csv", "cdd_new_btcusd_1h.csv", "binance_BTCUSDT-1m-2024-01-01.csv"):
        assert _import(name).delimiter == ","
    assert _import("ccxt_btcusd_1h.json").delimiter is None


def test_delimiter_given() -> None:
    for given in (";", "semicolon"):
        forced = _import("yahoo_btc-eur_1d_semicolon.csv", ImportOptions(delimiter=given))
        assert forced.delimiter == ";" and len(forced.candles) == 4
    tab = _import("generic_btcusd_1h.tsv", ImportOptions(delimiter="tab"))
    assert tab.delimiter == "\t" and len(tab.candles) == 3
    with pytest.raises(InvalidInput) as caught:  # the wrong one: the header shown whole, no data row
        _import("yahoo_btc-eur_1d_semicolon.csv", ImportOptions(delimiter=","))
    assert "found columns ['Date;Open;High;Low;Close;Adj Close;Volume']" in caught.value.message
    assert "2024-01-01" not in caught.value.message
    with pytest.raises(InvalidInput, match="one character"):
        _import("yahoo_btc-eur_1d_semicolon.csv", ImportOptions(delimiter="::"))


def test_no_known_layout_names_the_real_header_split_on_its_delimiter() -> None:
    with pytest.raises(InvalidInput) as caught:
        _import("unknown_layout_semicolon.csv")
    message = caught.value.message
    assert "found columns ['when', 'price', 'size'] (split on ';')" in message
    assert "\n" not in message and "2024-01-01" not in message and "SomeTool" not in message
    assert "known layouts: cryptodatadownload, yahoo, binance, kraken, ccxt-json, generic" in message


def test_backfill_stores_the_decimal_comma_values(ingest_settings: IngestSettings) -> None:
    url = ingest_settings.resolved_database_url
    upgrade(url)
    outcome = backfill_candles_csv(
        ingest_settings, FIXTURES / "yahoo_btc-eur_1d_semicolon.csv", "x", "BTC/EUR"
    )
    assert (outcome.stored, outcome.detail["layout"], outcome.detail["timeframe"]) == (4, "yahoo", "1d")
    assert outcome.detail["rejected_lines"] == {
        "missing_value": [4],
        "bad_number": [7],
        "inconsistent_range": [8],
    }
    with session_scope(url) as session:
        stored = session.execute(
            select(Candle.open, Candle.close, Candle.volume).order_by(Candle.open_time)
        ).all()
    assert [tuple(row) for row in stored] == [
        (38345.5, 38750.75, 1234567),
        (38750.75, 39100.1, 2345678),
        (39100.1, 39300.5, 3456789),
        (39100, 39550.25, 4000000),
    ]


def test_cli_delimiter_and_the_one_line_refusal(tmp_path: Path) -> None:
    hsig = hsig_command(tmp_path / "var", "ingest", "backfill-candles")
    done = summary(hsig(str(FIXTURES / "cdd_old_btceur_1h_semicolon.csv"), "--delimiter", "semicolon"))
    assert done["stored"] == 3 and done["detail"]["layout"] == "cryptodatadownload"
    assert "['when', 'price', 'size']" in refusal(hsig(str(FIXTURES / "unknown_layout_semicolon.csv")))
