"""Post-cutoff verdicts (issue 15): rows split at the latest knowledge cutoff of the models scored.

The tiny model read nothing (its cutoff is "none"); HSIG_MODEL_CUTOFFS gives it a cutoff inside
the seeded market so the rows straddle it, with the real local predictor scoring them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from services.backtest.app import build_app
from services.backtest.post_cutoff import NoPostCutoffRows
from services.backtest.report import cutoff_text
from services.backtest.rows import load_rows
from services.backtest.runner import preflight, run_backtest
from services.backtest.schemas import BacktestConfig, BaselineSpec, LocalSpec, OpenAISpec, ServiceSpec
from services.backtest.settings import BacktestSettings
from services.common.db.migrate import upgrade
from services.common.settings import get_settings
from tests.backtest.conftest import START, register_adapter, seed_market, stored_runs
from tests.conftest import REPO_ROOT

WINDOW_START, WINDOW_END = START + timedelta(days=5), START + timedelta(days=9)
CUTOFF = "2019-01-07"  # a day counts through its end: rows from 2019-01-08T00:00Z on are post-cutoff
CUTOFF_END = datetime(2019, 1, 8, tzinfo=UTC)


def _settings(monkeypatch: pytest.MonkeyPatch, cutoffs: dict) -> BacktestSettings:
    monkeypatch.setenv("HSIG_MODEL_CUTOFFS", json.dumps(cutoffs))
    get_settings.cache_clear()
    return get_settings(BacktestSettings)


@pytest.fixture
def sqlite_market(settings_env: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[BacktestSettings]:
    """The seeded market on SQLite only: these tests score with the tiny model, once is enough."""
    monkeypatch.setenv("HSIG_SCHEDULE_CRON", "off")
    monkeypatch.setenv("HSIG_BOOTSTRAP_REPS", "200")
    get_settings.cache_clear()
    settings = get_settings(BacktestSettings)
    upgrade(settings.resolved_database_url)
    seed_market(settings.resolved_database_url)
    yield settings
    get_settings.cache_clear()


def _config(tiny: Path, **fields: object) -> BacktestConfig:
    predictors = [LocalSpec(model=str(tiny), label="tiny"), BaselineSpec(name="always_increase")]
    return BacktestConfig(start=WINDOW_START, end=WINDOW_END, predictors=predictors, **fields)  # type: ignore[arg-type]


def test_verdicts_are_computed_on_post_cutoff_rows_with_the_rest_marked_contaminated(
    sqlite_market: BacktestSettings, monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path
) -> None:
    settings = _settings(monkeypatch, {"tiny-llama": {"pretraining": CUTOFF, "source": "test"}})
    report = run_backtest(settings, _config(tiny_model_dir)).report
    rows = load_rows(settings.resolved_database_url, "BTC/USD", "1h", WINDOW_START, WINDOW_END)
    post = rows.headline_time >= CUTOFF_END.timestamp()
    assert 0 < post.sum() < len(rows)  # the rows straddle the cutoff

    cutoff = report["cutoff"]
    assert cutoff["latest"] == CUTOFF_END.isoformat() and cutoff["latest_model"] == "tiny"
    assert (cutoff["rows_post"], cutoff["rows_pre"]) == (int(post.sum()), int((~post).sum()))
    model = next(m for m in cutoff["models"] if m["predictor"] == "tiny")
    assert model["share_possibly_seen_in_pretraining"] == pytest.approx((~post).mean())
    # The report's first lines say what each model could have seen.
    assert report["notes"][0].startswith(
        f"tiny: could have seen {100 * (~post).mean():.1f}% of rows in pretraining"
    )

    truth, predicted = np.array(report["labels"]), np.array(report["predictions"]["tiny"])
    assert cutoff["post"]["rows"] == post.sum()
    assert cutoff["post"]["accuracy"]["tiny"] == pytest.approx(np.mean(predicted[post] == truth[post]))
    assert cutoff["pre"]["contaminated"] is True
    assert cutoff["pre"]["accuracy"]["tiny"] == pytest.approx(np.mean(predicted[~post] == truth[~post]))
    comparison = cutoff["post"]["verdicts"]["comparisons"][0]
    assert comparison["rows"] == post.sum() and comparison["model"] == "tiny"
    assert comparison["model_accuracy"] == pytest.approx(cutoff["post"]["accuracy"]["tiny"])
    summary = next(row for row in report["summary"] if row["predictor"] == "tiny")
    assert summary["accuracy_post_cutoff"] == cutoff["post"]["accuracy"]["tiny"]
    assert summary["accuracy_pre_cutoff_contaminated"] == cutoff["pre"]["accuracy"]["tiny"]

    text = cutoff_text(report)  # the same numbers as the JSON, in the CLI's first lines
    assert f"{100 * cutoff['post']['accuracy']['tiny']:.1f}%" in text and "CONTAMINATED" in text
    html_path = Path(settings.reports_path) / f"backtest-{report['run_id']:06d}.html"
    page = html_path.read_text()
    assert 'id="cutoff"' in page and "contaminated" in page


def test_post_cutoff_only_scores_nothing_else(
    sqlite_market: BacktestSettings, monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path
) -> None:
    settings = _settings(monkeypatch, {"tiny-llama": {"pretraining": CUTOFF}})
    report = run_backtest(settings, _config(tiny_model_dir, post_cutoff_only=True)).report
    assert report["data"]["first_headline"] >= CUTOFF_END.isoformat()
    assert report["cutoff"]["rows_pre"] == 0 and report["cutoff"]["pre"] is None
    assert report["cutoff"]["post"]["rows"] == report["data"]["rows"] == len(report["labels"])
    assert report["cutoff"]["all_rows_post_cutoff"] is True


def test_the_tiny_model_is_clean_and_an_unknown_cutoff_is_never_clean(
    sqlite_market: BacktestSettings, monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path
) -> None:
    clean = preflight(_settings(monkeypatch, {}), _config(tiny_model_dir))
    assert clean["cutoff"][0].startswith("tiny: no knowledge cutoff (none")
    assert any(line.startswith("post-cutoff: every row") for line in clean["cutoff"])

    settings = _settings(monkeypatch, {"tiny-llama": "unknown"})
    lines = preflight(settings, _config(tiny_model_dir))["cutoff"]
    assert lines[0].startswith("tiny: knowledge cutoff UNKNOWN: all") and "none clean" in lines[0]
    assert not any(line.startswith("post-cutoff: every row") for line in lines)
    with pytest.raises(NoPostCutoffRows, match=r"knowledge cutoff of tiny is unknown.*last row 2019-01-09"):
        preflight(settings, _config(tiny_model_dir, post_cutoff_only=True))


def test_cli_post_cutoff_only_without_post_rows_is_one_line_exit_2_and_stores_nothing(
    sqlite_market: BacktestSettings, tiny_model_dir: Path
) -> None:
    env = {
        **os.environ,
        "HSIG_DATA_DIR": str(sqlite_market.data_dir),
        "HSIG_MODEL_CUTOFFS": json.dumps({"tiny-llama": {"pretraining": "2019-02"}}),
    }
    outcome = subprocess.run(
        [sys.executable, "-m", "services.pipeline.cli", "backtest", "run", "--post-cutoff-only",
         "--local-model", str(tiny_model_dir), "--baseline", "none"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert outcome.returncode == 2, outcome.stderr
    last = outcome.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "hsig: error: no post-cutoff rows: latest cutoff 2019-03-01T00:00:00+00:00 (local:base), last row 2019-01-17"
    )
    assert stored_runs(sqlite_market.resolved_database_url) == []


def test_api_answers_422_naming_the_cutoff_and_queues_nothing(
    backtest_settings: BacktestSettings, market: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A registered adapter on the base "tiny", given a cutoff after every row by the setting.
    register_adapter(backtest_settings.resolved_database_url, "late", START - timedelta(days=1))
    settings = _settings(monkeypatch, {"tiny": {"pretraining": "2019-06", "tuning": "2019-08"}})
    body = {"post_cutoff_only": True, "predictors": [ServiceSpec(adapter="late").model_dump()]}
    with TestClient(build_app(settings)) as client:
        answer = client.post("/v1/backtests", json=body, headers={"Authorization": "Bearer test-token"})
        listed = client.get("/v1/reports").json()
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["param"] == "post_cutoff_only"
    assert error["message"].startswith("no post-cutoff rows: latest cutoff 2019-09-01T00:00:00+00:00 (late)")
    assert listed == [] and stored_runs(settings.resolved_database_url) == []


def test_an_endpoint_model_has_the_cutoff_the_settings_give_it_else_unknown(
    backtest_settings: BacktestSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.backtest.post_cutoff import predictor_cutoff
    from services.backtest.predictors.factory import build_predictor

    spec = OpenAISpec(model="gpt-4o-mini")
    predictor = build_predictor(spec, backtest_settings, 0, None)
    assert predictor_cutoff(spec, predictor, backtest_settings).status == "unknown"
    settings = _settings(monkeypatch, {"gpt-4o-mini": {"pretraining": "2023-10", "source": "vendor"}})
    cutoff = predictor_cutoff(spec, predictor, settings)
    assert cutoff.latest == datetime(2023, 11, 1, tzinfo=UTC) and cutoff.source == "vendor"
    # An endpoint serving a model the table knows gets the table's cutoff.
    llama = OpenAISpec(model="meta-llama/Llama-2-7b-chat-hf")
    assert (
        predictor_cutoff(llama, build_predictor(llama, settings, 0, None), settings).tuning_stated
        == "2023-07"
    )


def test_the_rolling_run_says_post_cutoff_by_construction_only_when_the_cutoffs_say_so(
    backtest_settings: BacktestSettings, market: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.backtest.schedule import rolling_config

    register_adapter(backtest_settings.resolved_database_url, "old", START - timedelta(days=1))
    quiet = {"schedule_base_model": False, "rolling_window_days": 3.0}
    clean = rolling_config(backtest_settings.model_copy(update=quiet))  # base "tiny": cutoff none
    assert clean.notes[-1].startswith("post-cutoff by construction: the window starts 2019-01-14")
    late = _settings(monkeypatch, {"tiny": {"pretraining": "2019-01"}}).model_copy(update=quiet)
    assert (
        rolling_config(late)
        .notes[-1]
        .startswith("NOT post-cutoff by construction: the window starts 2019-01-14")
        and "old (2019-02-01T00:00:00+00:00)" in rolling_config(late).notes[-1]
    )
    unknown = _settings(monkeypatch, {"tiny": "unknown"}).model_copy(update=quiet)
    assert "cutoff of old is unknown" in rolling_config(unknown).notes[-1]
