"""The leakage guard, and the local transformers/peft predictor on the tiny model (real peft)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from services.backtest.leakage import LeakageError
from services.backtest.predictors.base import prompts_of
from services.backtest.rows import load_rows
from services.backtest.runner import run_backtest
from services.backtest.schemas import BacktestConfig, BaselineSpec, LocalSpec, ServiceSpec
from services.backtest.settings import BacktestSettings
from services.common.errors import InvalidInput, NotFound
from services.common.prompts import TREND_LABELS, bos_id_of
from services.common.schemas import AdapterManifest, TrainingWindow
from tests.backtest.conftest import START, register_adapter

TRAIN_END = START + timedelta(days=6)


@pytest.fixture(scope="module")
def lora_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real PEFT LoRA adapter on the tiny model (random, non-zero B: it changes the scores)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    out = tmp_path_factory.mktemp("adapters") / "btc-lora"
    peft_model.save_pretrained(out)
    manifest = AdapterManifest(
        name="btc-lora",
        base_model=str(tiny_model_dir),
        method="lora",
        task="btc-trend",
        training_window=TrainingWindow(first_row_time=START, last_row_time=TRAIN_END, embargo_seconds=3600),
    )
    (out / "manifest.json").write_text(manifest.model_dump_json())
    return out


def test_guard_refuses_an_adapter_on_its_training_rows(
    backtest_settings: BacktestSettings, market: dict, tiny_model_dir: Path, lora_dir: Path
) -> None:
    spec = LocalSpec(model=str(tiny_model_dir), adapter_dir=str(lora_dir))
    config = BacktestConfig(start=START + timedelta(days=5), predictors=[spec])
    with pytest.raises(
        LeakageError, match=r"trained on rows up to 2019-01-07T01:00:00\+00:00.*--allow-overlap"
    ):
        run_backtest(backtest_settings, config)


def test_guard_checks_registered_adapters_before_any_request(
    backtest_settings: BacktestSettings, market: dict
) -> None:
    register_adapter(backtest_settings.resolved_database_url, "btc-served", TRAIN_END)
    inside = BacktestConfig(start=START + timedelta(days=5), predictors=[ServiceSpec(adapter="btc-served")])
    with pytest.raises(LeakageError, match="btc-served"):
        run_backtest(backtest_settings, inside)
    unknown = BacktestConfig(start=START + timedelta(days=5), predictors=[ServiceSpec(adapter="nope")])
    with pytest.raises(
        NotFound, match=r"adapter 'nope' is not registered \(registered btc-trend adapters: btc-served\)"
    ):
        run_backtest(backtest_settings, unknown)


@pytest.mark.slow
def test_local_predictor_scores_like_the_shared_scorer_and_allow_overlap_marks_the_report(
    backtest_settings: BacktestSettings, market: dict, tiny_model_dir: Path, lora_dir: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from services.common.scoring import score_with_transformers

    start = TRAIN_END - timedelta(hours=12)  # half a day inside the training window + embargo
    end = TRAIN_END + timedelta(days=1)
    config = BacktestConfig(
        start=start,
        end=end,
        allow_overlap=True,
        predictors=[
            LocalSpec(model=str(tiny_model_dir), label="base"),
            LocalSpec(model=str(tiny_model_dir), adapter_dir=str(lora_dir), label="lora"),
            BaselineSpec(name="coin_flip"),
        ],
    )
    result = run_backtest(backtest_settings, config)
    assert result.report["overlap_allowed"] is True
    assert result.report["notes"][0].startswith("OVERLAP ALLOWED")
    assert "lora: adapter 'btc-lora' trained on rows up to" in result.report["leakage"][0]
    assert "Overlap allowed: these figures are in-sample" in result.html_path.read_text()

    rows = load_rows(backtest_settings.resolved_database_url, "BTC/USD", "1h", start, end)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), lora_dir)
    expected = score_with_transformers(
        model, tokenizer, prompts_of(rows), TREND_LABELS, bos_id=bos_id_of(tokenizer)
    )
    lora = next(p for p in result.report["predictors"] if p["name"] == "lora")
    base = next(p for p in result.report["predictors"] if p["name"] == "base")
    expected_labels = [int(p["Increase"] >= 0.5) for p in expected]
    assert result.report["predictions"]["lora"] == expected_labels
    assert lora["metrics"]["calibration"]["brier"] == pytest.approx(
        sum((p["Increase"] - y) ** 2 for p, y in zip(expected, rows.y_true.tolist(), strict=True)) / len(rows)
    )
    assert lora["metrics"]["calibration"]["brier"] != base["metrics"]["calibration"]["brier"]


def test_local_adapter_without_manifest_is_refused(
    backtest_settings: BacktestSettings, market: dict, tiny_model_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "adapter_config.json").write_text(json.dumps({}))
    spec = LocalSpec(model=str(tiny_model_dir), adapter_dir=str(tmp_path / "bare"))
    with pytest.raises(InvalidInput, match=r"has no manifest\.json"):
        run_backtest(backtest_settings, BacktestConfig(predictors=[spec]))
