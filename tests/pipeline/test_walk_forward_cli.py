"""`hsig backtest walk-forward`: one line and exit 2 on bad input, the pooled table otherwise."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from services.backtest.settings import BacktestSettings
from services.pipeline.cli import main
from tests.pipeline.conftest import stored_jobs


def hsig(monkeypatch: pytest.MonkeyPatch, *arguments: str) -> int:
    monkeypatch.setattr(sys, "argv", ["hsig", "backtest", "walk-forward", *arguments])
    with pytest.raises(SystemExit) as exited:
        main()
    return int(exited.value.code or 0)


def test_bad_input_is_one_line_and_exit_2(
    settings: BacktestSettings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = hsig(monkeypatch, "--id", "wf-cli", "--train-days", "4", "--test-days", "1", "--k", "10")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("hsig: error: k=10") and "largest k that fits: 4" in err[0]
    assert hsig(monkeypatch, "--train-days", "4", "--test-days", "0.01") == 2  # shorter than the 1h horizon
    assert "test_days" in capsys.readouterr().err
    assert stored_jobs(settings.resolved_database_url) == []


def test_one_fold_prints_the_pooled_table(
    settings: BacktestSettings,
    tiny_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = hsig(
        monkeypatch,
        *("--id", "wf-cli", "--model", str(tiny_model_dir), "--train-mode", "rolling"),
        *("--train-days", "3", "--test-days", "1", "--k", "1", "--max-steps", "2"),
        *("--no-base", "--baseline", "always_increase", "--bootstrap-reps", "50"),
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "covers folds 1 of 1" in out and "LoRA" in out and "always_increase" in out
    state = json.loads(Path(out.split("JSON: ")[1].split()[0]).read_text())
    assert state["folds"][0]["state"] == "succeeded" and state["pooled"]["folds_covered"] == [1]
