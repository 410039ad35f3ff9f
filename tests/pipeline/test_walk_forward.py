"""Walk-forward evaluation: the fold plan (pure) and one small walk-forward end to end."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.backtest.settings import BacktestSettings
from services.common.adapters import read_manifest
from services.common.errors import Conflict, InvalidInput
from services.pipeline.walk_forward import (
    WalkForwardInputError,
    WalkForwardOptions,
    plan_folds,
    run_walk_forward,
    state_path,
)
from tests.pipeline.conftest import stored_jobs

HOUR = timedelta(hours=1)
START = datetime(2020, 1, 1, tzinfo=UTC)


def hourly(hours: int, start: datetime = START) -> list[datetime]:
    return [start + i * HOUR for i in range(hours)]


# --- the plan ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["expanding", "rolling"])
def test_no_test_window_touches_its_training_window_plus_embargo(mode: str) -> None:
    times = hourly(24 * 12)
    folds = plan_folds(times, HOUR, mode, 4, 1, None, 5, 2 * HOUR)
    assert [f.fold for f in folds] == [1, 2, 3, 4, 5]
    for fold in folds:
        assert fold.train_start < fold.train_end
        assert fold.train_end + 2 * HOUR <= fold.validation_start < fold.validation_end
        assert fold.validation_end + 2 * HOUR <= fold.test_start < fold.test_end
        assert fold.test_end - fold.test_start == timedelta(days=1)
        assert min(fold.train_rows, fold.validation_rows, fold.test_rows) > 0
        # every row the trainer reads is before the test window minus the embargo
        assert fold.validation_end == fold.test_start - 2 * HOUR
    for earlier, later in itertools.pairwise(folds):
        assert earlier.test_end <= later.test_start  # ordered, test windows disjoint
        assert later.test_start - earlier.test_start == timedelta(days=1)
    if mode == "expanding":
        assert {f.train_start for f in folds} == {START}
        assert [f.train_rows for f in folds] == sorted(f.train_rows for f in folds)
        assert folds[-1].train_rows > folds[0].train_rows
    else:
        assert [f.train_start for f in folds] == [START + timedelta(days=i) for i in range(5)]
        assert {f.validation_end - f.train_start for f in folds} == {timedelta(days=4)}


def test_a_step_longer_than_the_test_window_leaves_gaps_between_test_windows() -> None:
    folds = plan_folds(hourly(24 * 12), HOUR, "expanding", 2, 1, 3, 3, HOUR)
    assert [f.test_start - folds[0].test_start for f in folds] == [timedelta(days=d) for d in (0, 3, 6)]


def test_k_too_large_names_k_and_the_largest_k_that_fits() -> None:
    times = hourly(24 * 10)  # 4 days of training, then 1-day folds: 5 fit (the last ends before hour 240)
    assert len(plan_folds(times, HOUR, "expanding", 4, 1, None, None, HOUR)) == 5
    with pytest.raises(WalkForwardInputError) as caught:
        plan_folds(times, HOUR, "expanding", 4, 1, None, 9, HOUR)
    assert caught.value.param == "k" and caught.value.largest_k == 5
    assert "largest k that fits: 5" in caught.value.message and "k=9" in caught.value.message
    assert isinstance(caught.value, InvalidInput)  # exit 2 / HTTP 4xx


@pytest.mark.parametrize(
    ("arguments", "param", "largest"),
    [
        ({"train_days": 20}, "train_days", 0),  # not even one fold: the data is 10 days long
        ({"test_days": 1 / 48}, "test_days", None),  # 30 minutes < the 1h horizon
        ({"step_days": 0.5}, "step_days", None),  # test windows would overlap
        ({"train_mode": "sliding"}, "train_mode", None),
        ({"k": 0}, "k", None),
    ],
)
def test_bad_settings_name_the_setting(arguments: dict, param: str, largest: int | None) -> None:
    settings = {"train_mode": "expanding", "train_days": 4, "test_days": 1, "step_days": None, "k": 3}
    settings.update(arguments)
    with pytest.raises(WalkForwardInputError) as caught:
        plan_folds(hourly(24 * 10), HOUR, embargo=HOUR, **settings)
    assert caught.value.param == param and caught.value.largest_k == largest


def test_a_fold_with_an_empty_window_stops_the_plan_there() -> None:
    times = [t for t in hourly(24 * 10) if not timedelta(days=6) <= t - START < timedelta(days=7, hours=2)]
    with pytest.raises(WalkForwardInputError) as caught:  # fold 3's test day holds no rows
        plan_folds(times, HOUR, "expanding", 4, 1, None, 4, HOUR)
    assert caught.value.param == "test_days" and caught.value.largest_k == 2
    assert caught.value.message == (  # rows are counted on known_at - 1 s, as the backtest reads them
        "fold 3's test window (2020-01-07 01:00 to 2020-01-08 01:00) holds no rows by when they became "
        "known (known_at - 1 s, not the headline time) (largest k that fits: 2)"
    )
    rolling_gap = [t for t in hourly(24 * 10) if t - START >= timedelta(days=3)] + hourly(2)
    with pytest.raises(WalkForwardInputError) as caught:  # a 1-day rolling window on the gap
        plan_folds(rolling_gap, HOUR, "rolling", 1, 1, None, 3, HOUR)
    assert caught.value.param == "train_days" and caught.value.largest_k == 0
    one_row = [t for t in hourly(24 * 10) if t - START >= timedelta(days=3)] + hourly(1)
    with pytest.raises(WalkForwardInputError) as caught:  # its first day holds one row: no validation
        plan_folds(one_row, HOUR, "rolling", 1, 1, None, 3, HOUR)
    assert caught.value.message.startswith(
        "fold 1's training window (2020-01-01 00:00 to 2020-01-02 00:00) holds 1 row by when they became "
        "known (known_at - 1 s, not the headline time): too few for a training and a validation window"
    )


# --- end to end ------------------------------------------------------------------------------


class Killed(Exception):
    pass


def test_bad_input_queues_nothing(settings: BacktestSettings, tiny_model_dir: Path) -> None:
    options = WalkForwardOptions(id="wf-bad", model=str(tiny_model_dir), train_days=4, test_days=1, k=10)
    with pytest.raises(WalkForwardInputError) as caught:
        run_walk_forward(settings, options)
    assert caught.value.param == "k" and caught.value.largest_k == 4
    with pytest.raises(WalkForwardInputError) as caught:
        run_walk_forward(settings, replace(options, k=2, embargo_seconds=60))
    assert caught.value.param == "embargo_seconds"
    assert stored_jobs(settings.resolved_database_url) == []
    assert not state_path(settings.reports_path, "wf-bad").exists()


def test_walk_forward_trains_per_fold_resumes_and_pools(
    settings: BacktestSettings, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.trainer import job_process

    real_train = job_process.train
    trained: list[str] = []

    def train(config, trainer_settings, **kwargs):  # type: ignore[no-untyped-def]
        trained.append(config.name)
        if "-f2-" in config.name:
            raise InvalidInput("planted failure of fold 2", param="data")
        return real_train(config, trainer_settings, **kwargs)

    monkeypatch.setattr(job_process, "train", train)
    options = WalkForwardOptions(
        id="wf-test",
        model=str(tiny_model_dir),
        methods=("lora",),
        train_days=4,
        test_days=1,
        k=3,
        max_steps=4,
        include_base=False,
        baselines=("always_increase", "majority"),
        bootstrap_reps=100,
    )
    messages: list[str] = []

    def killed_after_fold_1(message: str) -> None:
        messages.append(message)
        if "fold 1/3 succeeded" in message:
            raise Killed

    with pytest.raises(Killed):
        run_walk_forward(settings, options, killed_after_fold_1)
    path = state_path(settings.reports_path, "wf-test")
    assert [f["state"] for f in json.loads(path.read_text())["folds"]] == ["succeeded", "pending", "pending"]
    assert trained == ["wf-test-f1-lora"]

    result = run_walk_forward(settings, options, messages.append)
    assert trained == ["wf-test-f1-lora", "wf-test-f2-lora", "wf-test-f3-lora"]  # fold 1 not retrained
    assert any("resuming at fold 2" in message for message in messages)
    folds = result.state["folds"]
    assert [f["state"] for f in folds] == ["succeeded", "failed", "succeeded"]
    assert "planted failure of fold 2" in folds[1]["error"]

    url = settings.resolved_database_url
    stored = stored_jobs(url)
    assert [(job.adapter_name, job.state) for job in stored] == [
        ("wf-test-f1-lora", "succeeded"), ("wf-test-f2-lora", "failed"), ("wf-test-f3-lora", "succeeded"),
    ]  # fmt: skip
    assert "planted failure" in stored[1].error
    for fold in (folds[0], folds[2]):
        version = fold["versions"]["lora"]
        assert version["adapter"] == f"wf-test-f{fold['fold']}-lora" and version["version"] == 1
        window = read_manifest(Path(version["path"])).training_window  # the version records its fold
        assert window.first_row_time == datetime.fromisoformat(fold["window"]["train_start"])
        assert window.end_with_embargo() < datetime.fromisoformat(fold["window"]["test_start"])
        report = json.loads(Path(fold["backtest"]["json_path"]).read_text())
        assert report["leakage"] == [] and not report["overlap_allowed"]
        assert report["data"]["rows"] == 24  # its own fold's test day only
        assert report["data"]["first_headline"] >= fold["window"]["test_start"]
        assert report["data"]["last_headline"] < fold["window"]["test_end"]

    pooled = result.state["pooled"]
    assert pooled["folds_covered"] == [1, 3] and [f["fold"] for f in pooled["folds_failed"]] == [2]
    assert pooled["note"].startswith("covers folds 1, 3 of 3") and "fold 2" in pooled["note"]
    assert pooled["rows"] == 48 and pooled["verdicts"]["folds"] == 2
    assert {row["predictor"] for row in pooled["predictors"]} == {"LoRA", "always_increase", "majority"}
    assert pooled["overfitting"]["pbo"]["trials"] == 3
    assert "LoRA" in result.summary_table and "covers folds 1, 3" in result.summary_table

    before = len(trained)  # a rerun of a finished walk-forward trains nothing and pools again
    again = run_walk_forward(settings, options, messages.append)
    assert len(trained) == before and again.state["pooled"]["folds_covered"] == [1, 3]
    with pytest.raises(Conflict):  # the same id with other settings
        run_walk_forward(settings, replace(options, max_steps=5))
