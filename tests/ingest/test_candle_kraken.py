"""Kraken's OHLCVT files (the CSVs of its historical-data zip, e.g. ``XBTUSD_60.csv``): no header,
``time,open,high,low,close,volume,trades`` with the time in epoch seconds. The fixture,
tests/fixtures/candles/kraken_XBTUSD_60.csv, has CRLF, a blank line, a candle whose high is below
its open, an hour missing, a zero-volume hour and a negative volume."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from services.common.errors import InvalidInput
from services.ingest.candle_import import ImportOptions, import_candle_file

FIXTURES = Path(__file__).parent.parent / "fixtures" / "candles"
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC).timestamp()
JAN_2024 = int(datetime(2024, 1, 1, tzinfo=UTC).timestamp())
H = 3600


def test_kraken_ohlcvt_is_found_without_a_header_and_validated() -> None:
    imported = import_candle_file(FIXTURES / "kraken_XBTUSD_60.csv", earliest_seconds=EARLIEST)
    assert (imported.layout, imported.timeframe) == ("kraken", "1h")
    assert set(imported.rejects.lines) == {"inconsistent_range", "bad_volume"}
    assert imported.rejects.lines["inconsistent_range"] == [5]  # high 42300 below open 42400.1
    assert imported.rejects.lines["bad_volume"] == [7]  # -3
    candles = imported.candles
    np.testing.assert_array_equal(candles.open_time, JAN_2024 + H * np.array([0, 1, 2, 5]))
    np.testing.assert_array_equal(candles.open, [42283.6, 42502.9, 42555.5, 42420.0])
    np.testing.assert_array_equal(candles.close, [42502.9, 42555.5, 42400.1, 42470.5])
    np.testing.assert_array_equal(candles.volume, [58.31252331, 41.10223109, 37.200012, 0.0])


def test_seven_numbers_with_a_time_in_milliseconds_are_not_taken_for_kraken(tmp_path: Path) -> None:
    path = tmp_path / "ms.csv"
    path.write_text("1704067200000,42283.6,42554.6,42180.0,42502.9,58.3,1821\n")
    with pytest.raises(InvalidInput, match=r"no known candle layout.*kraken"):
        import_candle_file(path, earliest_seconds=EARLIEST)


def test_layout_forced_to_another_refuses_a_kraken_file() -> None:
    with pytest.raises(InvalidInput, match="binance layout in this file: found no header line"):
        import_candle_file(
            FIXTURES / "kraken_XBTUSD_60.csv", ImportOptions(layout="binance"), earliest_seconds=EARLIEST
        )


def test_a_kraken_file_stored_under_another_exchange_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from services.common.db.migrate import upgrade
    from services.ingest.backfill import backfill_candles_csv
    from services.ingest.settings import IngestSettings

    url = f"sqlite:///{tmp_path / 'k.db'}"
    upgrade(url)
    settings = IngestSettings(data_dir=tmp_path, database_url=url)
    path = FIXTURES / "kraken_XBTUSD_60.csv"
    with caplog.at_level("WARNING", logger="services.ingest.backfill"):
        stored = backfill_candles_csv(settings, path, "coinbaseexchange", "BTC/USD").stored
        assert stored == 4 and "pass --exchange kraken" in caplog.text
        caplog.clear()
        backfill_candles_csv(settings, path, "kraken", "BTC/USD")
    assert "pass --exchange" not in caplog.text
