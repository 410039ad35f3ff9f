"""The inference-service and OpenAI-compatible predictors, through real HTTP to stand-in servers."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from services.backtest.predictors.local import LocalPredictor
from services.backtest.predictors.openai_compat import OpenAIPredictor, label_from_logprobs, label_from_text
from services.backtest.predictors.service import ServicePredictor
from services.backtest.rows import load_rows
from services.backtest.settings import BacktestSettings
from services.common.errors import InvalidInput, TemporaryError
from tests.backtest.conftest import START
from tests.backtest.standins import inference_standin, openai_standin, serving


@pytest.fixture
def rows(backtest_settings: BacktestSettings, market: dict):  # type: ignore[no-untyped-def]
    return load_rows(backtest_settings.resolved_database_url, "BTC/USD", "1h", START + timedelta(days=15))


@pytest.mark.slow
def test_service_predictor_batches_retries_503_and_matches_local_scoring(
    backtest_settings: BacktestSettings, rows, tiny_model_dir: Path
) -> None:
    app, calls = inference_standin(tiny_model_dir, busy_calls={1})
    with serving(app) as url:
        predictor = ServicePredictor(
            "base", "base", url, backtest_settings.resolved_database_url, api_token="t", batch_size=7
        )
        served = predictor.predict(rows)
    batches = [call["items"] for call in calls]
    assert batches[0] == 7 and batches[1] == batches[2] == 7  # call 1 answered 503, then was retried
    assert sum(batches) - batches[1] == len(rows)
    assert calls[0]["adapter"] == "base" and calls[0]["auth"] == "Bearer t"
    local = LocalPredictor("local", str(tiny_model_dir)).predict(rows)
    assert np.allclose(served.p_increase, local.p_increase, atol=1e-6)
    assert (served.y_pred == local.y_pred).all()


def test_service_predictor_gives_up_with_a_clear_error(backtest_settings: BacktestSettings, rows) -> None:
    from tests.support.net import free_port

    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    predictor = ServicePredictor("base", "base", url, backtest_settings.resolved_database_url, retries=1)
    with pytest.raises(
        TemporaryError, match=r"did not answer for adapter 'base' after 2 attempts \(last: Connect"
    ):
        predictor.predict(rows)


def test_openai_predictor_scores_from_logprobs(rows, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STANDIN_KEY", "sk-test")
    app, calls = openai_standin(
        "Increase", [("Incre", np.log(0.7)), ("Decre", np.log(0.2)), ("The", np.log(0.1))]
    )
    with serving(app) as url:
        result = OpenAIPredictor("gpt", "gpt-standin", f"{url}/v1", "STANDIN_KEY", max_concurrency=2).predict(
            rows
        )
    assert len(calls) == len(rows) and calls[0]["temperature"] == 0 and calls[0]["logprobs"] is True
    assert "### Headline:" in calls[0]["messages"][0]["content"]  # the shared btc-trend prompt
    assert np.allclose(result.p_increase, 0.7 / 0.9)
    assert result.y_pred.all()


def test_openai_predictor_parses_words_without_logprobs(rows, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STANDIN_KEY", "sk-test")
    app, _ = openai_standin("Decrease, because rates rose.", None)
    with serving(app) as url:
        result = OpenAIPredictor("gpt", "gpt-standin", f"{url}/v1", "STANDIN_KEY").predict(rows)
    assert np.isnan(result.p_increase).all() and not result.y_pred.any()
    assert "first word" in result.notes[0] and result.notes[1].startswith("0 answers")


def test_openai_predictor_needs_its_key(rows, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    with pytest.raises(InvalidInput, match="NO_SUCH_KEY"):
        OpenAIPredictor("gpt", "gpt-4", None, "NO_SUCH_KEY").predict(rows)


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("Increase", "Increase"),
        (" increase.", "Increase"),
        ("Decreasing", "Decrease"),
        ("I think up", None),
        ("", None),
    ],
)
def test_label_from_text(text: str, label: str | None) -> None:
    assert label_from_text(text) == label


def test_label_from_logprobs_needs_both_labels() -> None:
    assert label_from_logprobs([("Increase", -0.1)]) is None
    assert label_from_logprobs([(" In", np.log(0.3)), (" De", np.log(0.1))]) == pytest.approx(0.75)
