"""CSV backfills: the Kaggle CNBC file, a mapped generic file, CryptoDataDownload candles."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from services.common.errors import InvalidInput
from services.ingest.csv_import import (
    import_cryptodatadownload,
    import_headline_csv,
    import_kaggle_cnbc,
    parse_cnbc_time,
)
from tests.conftest import DATA_DIR


def test_cnbc_times_are_us_eastern_with_dst() -> None:
    # July: EDT (UTC-4); January: EST (UTC-5); "Sept" and messy spacing.
    assert parse_cnbc_time(" 7:51  PM ET Fri, 17 July 2020") == datetime(2020, 7, 17, 23, 51, tzinfo=UTC)
    assert parse_cnbc_time("10:57 PM ET Tue, 4 Dec 2018") == datetime(2018, 12, 5, 3, 57, tzinfo=UTC)
    assert parse_cnbc_time("12:05 AM ET Mon, 9 Sept 2019") == datetime(2019, 9, 9, 4, 5, tzinfo=UTC)
    assert parse_cnbc_time("12:30 PM ET Mon, 9 March 2020") == datetime(2020, 3, 9, 16, 30, tzinfo=UTC)
    with pytest.raises(ValueError):
        parse_cnbc_time("yesterday")


def test_bundled_kaggle_file() -> None:
    imported = import_kaggle_cnbc(DATA_DIR / "cnbc_headlines" / "cnbc_headlines.csv")
    # 2,800 headlines; the 280 blank ",," lines are skipped, not counted as rejects.
    assert len(imported.records) == 2800 and imported.rejects.total() == 0
    times = [record.published_at for record in imported.records]
    assert min(times) == datetime(2017, 12, 22, 23, 52, tzinfo=UTC)
    assert max(times) == datetime(2020, 7, 17, 23, 51, tzinfo=UTC)
    assert times != sorted(times, reverse=True)  # only roughly newest-first: order is not trusted
    assert len({(record.title_key, record.published_at) for record in imported.records}) == 2800


def test_generic_importer_with_mapping_and_timezone(tmp_path: Path) -> None:
    path = tmp_path / "news.csv"
    path.write_text(
        "when,text,id\n"
        "2021-03-01 09:30,  Bitcoin   surges ,a1\n"
        "2021-07-01T09:30:00+00:00,Explicit offset wins,a2\n"
        "not a time,Bad time,a3\n"
        ",,\n"
        "2999-01-01 00:00,From the future,a4\n"
    )
    imported = import_headline_csv(
        path,
        title_column="text",
        time_column="when",
        source="csv:news",
        guid_column="id",
        timezone="Europe/Berlin",
    )
    assert [(record.title, record.published_at, record.guid) for record in imported.records] == [
        ("Bitcoin surges", datetime(2021, 3, 1, 8, 30, tzinfo=UTC), "a1"),
        ("Explicit offset wins", datetime(2021, 7, 1, 9, 30, tzinfo=UTC), "a2"),
    ]
    assert imported.rejects.counts == {"bad_time": 1, "future_pubdate": 1}
    with pytest.raises(InvalidInput, match="column 'title'"):
        import_headline_csv(path, title_column="title", time_column="when", source="s")
    with pytest.raises(InvalidInput, match="timezone"):
        import_headline_csv(
            path, title_column="text", time_column="when", source="s", timezone="Mars/Olympus"
        )
    with pytest.raises(InvalidInput, match="no such file"):
        import_headline_csv(tmp_path / "missing.csv", title_column="a", time_column="b", source="s")


def test_cryptodatadownload_hourly_file() -> None:
    frame = import_cryptodatadownload(
        DATA_DIR / "btc_prices" / "Coinbase_BTCUSD_1h_2017-07-01_2020-07-08.csv"
    )
    assert len(frame) == 26476
    assert np.all(np.diff(frame.open_time) == 3600)  # sorted oldest first, no gap in this file
    assert frame.open_time[0] == datetime(2017, 7, 1, 11, tzinfo=UTC).timestamp()
    assert frame.open_time[-1] == datetime(2020, 7, 8, 14, tzinfo=UTC).timestamp()  # "2020-07-08 02-PM"
    assert (frame.open[-1], frame.close[-1], frame.volume[-1]) == (9444.76, 9436.64, 478.88)


def test_cryptodatadownload_daily_file_keeps_its_gap() -> None:
    frame = import_cryptodatadownload(DATA_DIR / "btc_prices" / "Coinbase_BTCUSD_d_2014-12-01_2020-07-08.csv")
    steps = np.diff(frame.open_time)
    assert len(frame) == 2035
    assert steps.max() > 86400  # the 2019-03-19..2019-04-01 hole stays a hole


def test_cryptodatadownload_bad_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("banner\nDate,Symbol,Open,High,Low,Close\n2020-07-08 02-PM,BTCUSD,1,2,0.5,oops\n")
    with pytest.raises(InvalidInput, match="not a number"):
        import_cryptodatadownload(bad)
    bad.write_text("banner\nwhen,price\n1,2\n")
    with pytest.raises(InvalidInput, match="not a CryptoDataDownload"):
        import_cryptodatadownload(bad)
