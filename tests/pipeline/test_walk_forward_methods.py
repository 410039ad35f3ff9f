"""Walk-forward with every method on the tiny model (LoRA, full fine-tune, QLoRA), and the pooled
IC across folds checked against ``overfitting.information_coefficients`` on the pooled rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from services.backtest.overfitting import information_coefficient, information_coefficients
from services.backtest.settings import BacktestSettings
from services.backtest.verdicts import Sample
from services.common.adapters import read_manifest
from services.pipeline.walk_forward import (
    WalkForwardOptions,
    pooled_information_coefficient,
    run_walk_forward,
)
from tests.pipeline.conftest import stored_jobs


def _qlora_can_run() -> bool:
    import importlib.util

    import torch

    return torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None


def test_lora_and_full_fine_tune_per_fold_and_qlora_reported_as_failed_where_it_cannot_run(
    settings: BacktestSettings, tiny_model_dir: Path
) -> None:
    options = WalkForwardOptions(
        id="wf-methods",
        model=str(tiny_model_dir),
        methods=("lora", "full", "qlora"),
        train_days=4,
        test_days=1,
        k=2,
        max_steps=2,
        include_base=False,
        baselines=("always_increase",),
        bootstrap_reps=50,
    )
    result = run_walk_forward(settings, options)
    folds = result.state["folds"]
    assert [fold["state"] for fold in folds] == ["succeeded", "succeeded"]
    for fold in folds:
        full = fold["versions"]["full"]
        assert full["state"] == "succeeded" and full["adapter"] == f"wf-methods-f{fold['fold']}-full"
        assert read_manifest(Path(full["path"])).method == "full"  # a model of its own, not an adapter
        assert fold["versions"]["lora"]["state"] == "succeeded"
        report = json.loads(Path(fold["backtest"]["json_path"]).read_text())
        scored = {section["name"] for section in report["predictors"]}
        assert {"LoRA", "full fine-tune", "always_increase"} <= scored
    pooled = result.state["pooled"]
    assert pooled["folds_covered"] == [1, 2]
    names = {row["predictor"] for row in pooled["predictors"]}
    assert {"LoRA", "full fine-tune"} <= names
    for name in ("LoRA", "full fine-tune"):  # p(Increase) of each fold's version, pooled
        ic = pooled["information_coefficient"][name]
        assert [f["fold"] for f in ic["folds"]] == [1, 2] and ic["rows"] == 48
    if _qlora_can_run():
        assert all(fold["versions"]["qlora"]["state"] == "succeeded" for fold in folds)
        assert "QLoRA" in names and pooled["methods_failed"] == {}
    else:  # this host (no CUDA or no bitsandbytes): QLoRA's folds fail with the trainer's reason
        for fold in folds:
            qlora = fold["versions"]["qlora"]
            assert qlora["state"] == "failed" and "QLoRA needs" in qlora["error"]
            assert "QLoRA needs" in fold["methods_failed"]["qlora"]
        assert [f["fold"] for f in pooled["methods_failed"]["QLoRA"]] == [1, 2]
        assert "QLoRA not trained in folds 1, 2: " in pooled["note"] and "QLoRA needs" in pooled["note"]
        assert "QLoRA" not in names
        failed_jobs = [job for job in stored_jobs(settings.resolved_database_url) if job.state == "failed"]
        assert sorted(job.adapter_name for job in failed_jobs) == [
            "wf-methods-f1-qlora",
            "wf-methods-f2-qlora",
        ]


def test_the_pooled_ic_is_the_one_the_pooled_rows_give() -> None:
    rng = np.random.default_rng(3)
    folds = [rng.integers(0, size, size * 3) for size in (40, 25, 60)]  # each fold's own window ids
    sample = Sample.from_folds(folds)
    p_increase = rng.random(sample.rows)
    realised = 0.3 * (p_increase - 0.5) + rng.normal(0, 0.2, sample.windows)[sample.window]
    pooled = information_coefficients({"m": p_increase}, realised, sample)["m"]
    per_fold, start = [], 0
    for windows in folds:  # what each fold's own backtest report holds
        rows = slice(start, start + windows.size)
        start += windows.size
        per_fold.append(information_coefficient(p_increase[rows], realised[rows], Sample.of(windows)))
    ours = pooled_information_coefficient(per_fold, [1, 2, 3])
    for key in ("ic", "ic_se", "rank_ic", "rank_ic_se", "ic_t_across_folds", "rank_ic_t_across_folds"):
        assert ours[key] == pytest.approx(pooled[key], rel=1e-9), key
    assert ours["ic_interval"] == pytest.approx(pooled["ic_interval"], rel=1e-9)
    assert ours["rank_ic_interval"] == pytest.approx(pooled["rank_ic_interval"], rel=1e-9)
    assert ours["windows"] == pooled["windows"] and ours["rows"] == pooled["rows"]
    assert ours["ic_interval"][0] > 0  # the planted correlation is found
    assert [f["fold"] for f in ours["folds"]] == [1, 2, 3]
    assert pooled_information_coefficient([per_fold[0], None], [1, 2])["unavailable"]
