"""The anonymisation ablation and the memorisation probe with the tiny model, through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from services.backtest.ablation import masked_rows, paired_effect
from services.backtest.cli import app
from services.backtest.predictors.base import PredictionSet
from services.backtest.probe import probe_figures
from services.backtest.rows import load_rows
from services.backtest.settings import BacktestSettings
from services.common.db import session_scope
from services.common.db.migrate import upgrade
from services.common.db.models import Headline
from services.common.errors import InvalidInput
from services.common.prompts import TREND_LABELS, bos_id_of, btc_trend_probe_prompt
from services.common.settings import get_settings
from tests.backtest.conftest import seed_market

REPO_ROOT = Path(__file__).resolve().parents[2]
LABELLED = REPO_ROOT / "tests" / "fixtures" / "masking" / "labelled_headlines.jsonl"


@pytest.fixture
def named_market(settings_env: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[BacktestSettings]:
    """The seeded market of the backtest tests (SQLite), its headlines replaced by bundled CNBC
    headlines, so the masker has names to mask."""
    monkeypatch.setenv("HSIG_SCHEDULE_CRON", "off")
    get_settings.cache_clear()
    settings = get_settings(BacktestSettings)
    upgrade(settings.resolved_database_url)
    seed_market(settings.resolved_database_url, hours=120, headlines=150)
    titles = [json.loads(line)["headline"] for line in LABELLED.read_text().splitlines()]
    with session_scope(settings.resolved_database_url) as session:
        for number, headline in enumerate(session.scalars(select(Headline).order_by(Headline.id))):
            headline.title = titles[number % len(titles)]
    yield settings
    get_settings.cache_clear()


def _json_of(output: str) -> dict:
    return json.loads(Path(output.split("JSON: ")[1].split()[0]).read_text())


def test_ablation_scores_rows_as_written_and_masked(
    named_market: BacktestSettings, tiny_model_dir: Path
) -> None:
    outcome = CliRunner().invoke(
        app, ["ablation", "--local-model", str(tiny_model_dir), "--limit", "40", "--bootstrap-reps", "50"]
    )
    assert outcome.exit_code == 0, outcome.output
    report = _json_of(outcome.output)
    assert report["data"]["rows"] == 40 and 0 < report["data"]["headlines_masked"] <= 40
    assert all("[" in example["masked"] for example in report["examples"])
    (result,) = report["results"]
    assert result["predictor"] == "local:base" and result["rows"] == 40
    assert result["difference"] == pytest.approx(result["accuracy_masked"] - result["accuracy_as_written"])
    low, high = result["interval"]
    assert low <= result["difference"] <= high and result["windows"] < 40  # headlines share windows
    assert result["mean_abs_p_increase_shift"] > 0  # the masked prompts were scored, not the same ones
    assert report["cutoff"]["models"][0]["predictor"] == "local:base"  # the tiny model's cutoff: none
    assert report["cutoff"]["all_rows_post_cutoff"] is True and report["notes"] == report["cutoff"]["lines"]
    html_path = Path(outcome.output.split("HTML: ")[1].split()[0])
    assert "Anonymisation ablation" in html_path.read_text()


def test_masked_rows_change_only_headlines(named_market: BacktestSettings) -> None:
    rows = load_rows(named_market.resolved_database_url, "BTC/USD", "1h")
    masked, changed = masked_rows(rows)
    assert 0 < changed < len(rows)
    assert any("[PERSON]" in text for text in masked.headline)
    assert masked.row_id is rows.row_id and masked.published_at == rows.published_at


def test_paired_effect_by_hand(named_market: BacktestSettings) -> None:
    rows = load_rows(named_market.resolved_database_url, "BTC/USD", "1h")
    n = len(rows)
    right = PredictionSet("m", "local", rows.y_true.copy(), np.full(n, 0.5))
    wrong = PredictionSet("m", "local", 1 - rows.y_true, np.full(n, 0.5))
    same = paired_effect(rows, right, right, reps=100, seed=0, alpha=0.05)
    assert same["difference"] == 0 and same["interval"] == [0.0, 0.0] and same["names_matter"] is False
    better = paired_effect(rows, wrong, right, reps=100, seed=0, alpha=0.05)
    assert better["difference"] == 1 and better["names_matter"] is True and better["answers_changed"] == n


def test_probe_asks_without_headlines_before_the_cutoff(
    named_market: BacktestSettings, tiny_model_dir: Path
) -> None:
    outcome = CliRunner().invoke(
        app,
        ["probe", "--local-model", str(tiny_model_dir), "--before", "2019-01-04", "--sample", "25",
         "--bootstrap-reps", "50"],
    )  # fmt: skip
    assert outcome.exit_code == 0, outcome.output
    report = _json_of(outcome.output)
    (result,) = report["results"]
    questions = report["questions"]
    assert result["questions"] == len(questions) == 25 and report["cutoff"].startswith("2019-01-04")
    assert all(q["time"] < "2019-01-04" for q in questions)
    assert result["above_chance"] == pytest.approx(result["accuracy"] - 0.5)
    assert result["above_majority"] == pytest.approx(result["accuracy"] - result["majority_rate"])
    assert result["accuracy_interval"][0] <= result["accuracy"] <= result["accuracy_interval"][1]
    # The same label scoring as the predictors, on the headline-free prompt.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from services.common.scoring import score_with_transformers

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    first = datetime.fromisoformat(questions[0]["time"])
    expected = score_with_transformers(
        model, tokenizer, [btc_trend_probe_prompt(first)], TREND_LABELS, bos_id=bos_id_of(tokenizer)
    )[0][TREND_LABELS[0]]
    assert questions[0]["p_increase"] == pytest.approx(expected, abs=1e-6)
    assert "### Headline" not in btc_trend_probe_prompt(first)
    assert report["knowledge_cutoff"]["status"] == "none"  # the tiny model: --before chose the dates


def test_probe_stays_before_the_model_cutoff_it_knows(
    named_market: BacktestSettings, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cutoff = {"pretraining": "2019-01-02", "released": "2020-01-01", "source": "a test's setting"}
    monkeypatch.setenv("HSIG_MODEL_CUTOFFS", json.dumps({tiny_model_dir.name: cutoff}))
    get_settings.cache_clear()
    args = ["probe", "--local-model", str(tiny_model_dir), "--sample", "500", "--bootstrap-reps", "20"]
    outcome = CliRunner().invoke(app, args)
    assert outcome.exit_code == 0, outcome.output
    report = _json_of(outcome.output)
    assert report["knowledge_cutoff"]["status"] == "known"
    assert report["cutoff"] == "2019-01-03T00:00:00+00:00"  # a day counts through its end
    assert report["questions"] and all(q["time"] < "2019-01-03" for q in report["questions"])


def test_probe_figures_by_hand() -> None:
    y_true = np.array([1, 1, 1, 0] * 10, dtype=np.int8)
    knows = probe_figures(y_true, np.where(y_true == 1, 0.9, 0.1), reps=100, seed=0, alpha=0.05)
    assert knows["accuracy"] == 1 and knows["remembers"] is True and knows["majority_rate"] == 0.75
    assert knows["above_majority"] == pytest.approx(0.25)
    always_up = probe_figures(y_true, np.full(40, 0.6), reps=100, seed=0, alpha=0.05)
    assert always_up["accuracy"] == 0.75 and always_up["above_majority"] == 0  # no better than the majority
    assert always_up["share_predicted_increase"] == 1


def test_refusals_before_anything_is_scored(named_market: BacktestSettings, tiny_model_dir: Path) -> None:
    """Bad input raises the InvalidInput that the hsig entry point turns into one line and exit 2
    (the test below runs that path for real)."""
    runner, model = CliRunner(), str(tiny_model_dir)
    refusals = {
        "needs a model": ["ablation"],
        "no labelled rows for BTC/USD 1h between 2030": ["ablation", "--local-model", model, "--start", "2030-01-01"],
        "no label window before the cutoff 2018-06-01": ["probe", "--local-model", model, "--before", "2018-06-01"],
        "sample must be at least 1": ["probe", "--local-model", model, "--sample", "0"],
        "limit must be at least 1": ["ablation", "--local-model", model, "--limit", "0"],
    }  # fmt: skip
    for message, args in refusals.items():
        outcome = runner.invoke(app, args)
        assert isinstance(outcome.exception, InvalidInput) and message in str(outcome.exception), args
    assert not named_market.reports_path.exists() or not list(named_market.reports_path.iterdir())


def _hsig(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HSIG_DATA_DIR": str(data_dir), "HSIG_SCHEDULE_CRON": "off"}
    return subprocess.run(
        [sys.executable, "-m", "services.pipeline.cli", "backtest", *args],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("hsig: error:")]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    return lines[0]


def test_bad_input_is_one_line_and_exit_2(named_market: BacktestSettings, tiny_model_dir: Path) -> None:
    data_dir = named_market.data_dir
    unknown = _hsig("ablation", "--adapter", "ghost", data_dir=data_dir)
    assert "adapter 'ghost' is not registered" in _one_error_line(unknown)
    empty = _hsig("probe", "--local-model", str(tiny_model_dir), "--start", "2030-01-01", data_dir=data_dir)
    assert "no labelled rows for BTC/USD 1h between 2030" in _one_error_line(empty)
    reports = named_market.reports_path
    assert not reports.exists() or not list(reports.iterdir())  # nothing written
