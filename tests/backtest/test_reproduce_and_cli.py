"""The research-note reproduction on the bundled data (real ingest, trainer and tiny model), and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from services.backtest.cli import app
from services.backtest.settings import BacktestSettings
from services.common.db import session_scope
from services.common.db.migrate import upgrade
from services.common.db.models import LabelledRow
from services.common.settings import get_settings
from services.pipeline.reproduce import TINY_DISCLAIMER, ReproduceOptions, reproduce
from tests.backtest.conftest import seed_market

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def sqlite_settings(settings_env: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[BacktestSettings]:
    monkeypatch.setenv("HSIG_SCHEDULE_CRON", "off")
    monkeypatch.setenv("HSIG_BOOTSTRAP_REPS", "200")
    get_settings.cache_clear()
    settings = get_settings(BacktestSettings)
    upgrade(settings.resolved_database_url)
    yield settings
    get_settings.cache_clear()


@pytest.mark.slow
def test_reproduce_on_the_bundled_data(sqlite_settings: BacktestSettings, tiny_model_dir: Path) -> None:
    options = ReproduceOptions(
        model=str(tiny_model_dir),
        max_steps=12,
        lora_learning_rate=5e-3,
        full_learning_rate=1e-3,
        test_end=datetime(2020, 3, 1, tzinfo=UTC),
        data_dir=REPO_ROOT / "data",
    )
    messages: list[str] = []
    result = reproduce(sqlite_settings, options, progress=messages.append)
    report = result.report
    names = [p["name"] for p in report["predictors"]]
    assert names[:3] == ["base (untuned)", "LoRA", "full fine-tune"]
    assert set(names[3:]) == {"always_increase", "always_decrease", "majority", "momentum", "coin_flip"}
    # The cutoff lines come first (issue 15: what each model could have seen), then the caller's
    # notes: a tiny-model run says its numbers mean nothing for Llama-2.
    assert report["notes"][0].startswith("base (untuned): no knowledge cutoff (none")
    assert report["notes"][len(report["cutoff"]["lines"])] == TINY_DISCLAIMER
    assert any(note.startswith("LoRA: ") and "parameters trained" in note for note in report["notes"])
    assert report["leakage"] == []  # the window starts after both training windows plus embargo
    assert report["data"]["first_headline"] >= "2020-01-01"
    assert report["data"]["last_headline"] < "2020-03-01"
    with session_scope(sqlite_settings.resolved_database_url) as session:
        stored = session.scalar(select(func.count()).select_from(LabelledRow))
    assert stored > 2700  # the bundled CNBC headlines, labelled by the ingest pipeline
    assert report["data"]["label_windows"] < report["data"]["rows"]
    lora = next(p for p in report["predictors"] if p["name"] == "LoRA")
    assert lora["metrics"]["calibration"] is not None and lora["meta"]["adapter_dir"].endswith("v1")
    assert "NOTHING about Llama-2" in result.html_path.read_text()
    assert any("ingest" in message for message in messages)


def test_cli_run_prints_the_summary(sqlite_settings: BacktestSettings) -> None:
    seed_market(sqlite_settings.resolved_database_url)
    outcome = CliRunner().invoke(
        app, ["run", "--start", "2019-01-05", "--baseline", "momentum", "--fees-bps", "5"]
    )
    assert outcome.exit_code == 0, outcome.output
    assert "momentum" in outcome.output and "buy_and_hold" in outcome.output
    json_path = Path(outcome.output.split("JSON: ")[1].split()[0])
    report = json.loads(json_path.read_text())
    assert report["config"]["fees_bps"] == 5 and [p["name"] for p in report["predictors"]] == ["momentum"]
    listed = CliRunner().invoke(app, ["reports"])
    assert "succeeded" in listed.output


def _hsig(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.pipeline.cli", "backtest", *args],
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_bad_input_is_one_line_and_exit_2(sqlite_settings: BacktestSettings) -> None:
    seed_market(sqlite_settings.resolved_database_url)
    env = {"HSIG_DATA_DIR": str(sqlite_settings.data_dir), "HSIG_SCHEDULE_CRON": "off"}
    empty = _hsig("run", "--start", "2030-01-01", env=env)
    assert empty.returncode == 2
    assert (
        empty.stderr.strip()
        .splitlines()[-1]
        .startswith("hsig: error: no labelled rows for BTC/USD 1h between 2030")
    )
    unknown = _hsig("run", "--adapter", "ghost", "--baseline", "none", env=env)
    assert unknown.returncode == 2 and "adapter 'ghost' is not registered" in unknown.stderr
    baseline = _hsig("run", "--baseline", "oracle", env=env)
    assert baseline.returncode == 2 and "unknown baseline oracle" in baseline.stderr
    cron = _hsig("serve", "--port", "1", env={**env, "HSIG_SCHEDULE_CRON": "61 * * * *"})
    assert cron.returncode == 2 and "HSIG_SCHEDULE_CRON '61 * * * *' is not a crontab" in cron.stderr
