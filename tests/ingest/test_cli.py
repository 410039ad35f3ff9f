"""`hsig ingest ...` in a real subprocess: exit codes and one-line errors."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import DATA_DIR
from tests.support.cli import hsig_command


def _hsig(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return hsig_command(tmp_path / "var", "ingest")(*args)


def test_backfills_labels_and_exports(tmp_path: Path) -> None:
    candles = DATA_DIR / "btc_prices" / "Coinbase_BTCUSD_1h_2017-07-01_2020-07-08.csv"
    done = _hsig(tmp_path, "backfill-candles", str(candles), "--exchange", "coinbaseexchange")
    assert done.returncode == 0, done.stderr
    assert '"stored": 26476' in done.stdout
    headlines = DATA_DIR / "cnbc_headlines" / "cnbc_headlines.csv"
    assert _hsig(tmp_path, "backfill-headlines", str(headlines), "--kaggle-cnbc").returncode == 0
    labelled = _hsig(tmp_path, "label")
    assert (
        labelled.returncode == 0
        and '"Increase": 1353' in labelled.stdout  # at known_at: docs/ingest.md, the label contract
        and '"Decrease": 1427' in labelled.stdout
    )
    out = tmp_path / "rows.parquet"
    assert _hsig(tmp_path, "rows", "--format", "parquet", "--out", str(out)).returncode == 0
    import pandas as pd

    assert len(pd.read_parquet(out)) == 2780


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    for args, message in [
        (("backfill-headlines", str(tmp_path / "nope.csv")), "no such file"),
        (("rows", "--format", "parquet"), "parquet needs --out"),
        (("rows", "--format", "xml"), "unknown format"),
    ]:
        done = _hsig(tmp_path, *args)
        assert done.returncode == 2, (args, done.stderr)
        assert done.stderr.strip().splitlines()[-1].startswith("hsig: error: ")
        assert message in done.stderr
