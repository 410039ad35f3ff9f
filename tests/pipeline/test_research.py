"""`hsig reproduce qa|hate`: the research note's RQ1 and RQ2 end to end on the tiny model (real
trainer, real publishing, real scoring), their figures against scikit-learn and hand-computed
values, and bad input refused in one line with exit 2 before anything trains."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from services.backtest.scores import wilson_interval
from services.common.errors import InvalidInput
from services.pipeline.cli import main
from services.pipeline.research_hate import LABELS, classification, post_of
from services.pipeline.research_qa import loss_figures, seeded_split
from tests.conftest import DATA_DIR

DAVIDSON_HEADER = ",count,hate_speech,offensive_language,neither,class,tweet\n"


def hsig(monkeypatch: pytest.MonkeyPatch, *arguments: str) -> int:
    monkeypatch.setattr(sys, "argv", ["hsig", "reproduce", *arguments])
    with pytest.raises(SystemExit) as exited:
        main()
    return int(exited.value.code or 0)


def cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# --- figures -------------------------------------------------------------------------------


def test_classification_matches_scikit_learn() -> None:
    rng = np.random.default_rng(3)
    truth = list(rng.choice(LABELS, size=200, p=[0.1, 0.3, 0.6]))
    predicted = list(rng.choice(LABELS[:2], size=200))  # never says Unsure: its F1 is 0, not NaN
    ours = classification(truth, predicted)
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, predicted, labels=list(LABELS), zero_division=0
    )
    assert ours["accuracy"] == pytest.approx(accuracy_score(truth, predicted))
    for i, label in enumerate(LABELS):
        assert ours["per_class"][label]["precision"] == pytest.approx(precision[i])
        assert ours["per_class"][label]["recall"] == pytest.approx(recall[i])
        assert ours["per_class"][label]["f1"] == pytest.approx(f1[i])
        assert ours["per_class"][label]["support"] == support[i]
    assert ours["macro_f1"] == pytest.approx(
        f1_score(truth, predicted, labels=list(LABELS), average="macro", zero_division=0)
    )
    assert ours["confusion"]["matrix"] == confusion_matrix(truth, predicted, labels=list(LABELS)).tolist()
    assert ours["accuracy_wilson"] == list(wilson_interval(ours["correct"], 200))


def test_wilson_interval_by_hand() -> None:
    # 8 of 10 at 95%: centre (0.8 + z²/20) / (1 + z²/10), half-width z·sqrt(0.016 + z²/400) / (1 + z²/10)
    low, high = classification(["Yes"] * 8 + ["No"] * 2, ["Yes"] * 10)["accuracy_wilson"]
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)


def test_loss_figures_weight_tokens_and_bootstrap_examples() -> None:
    losses = np.array([[2.0, 1.0], [6.0, 3.0], [40.0, 10.0]])  # per example: summed loss, tokens
    figures = loss_figures(losses, reps=500, seed=0, confidence=0.95)
    assert figures["mean_loss"] == pytest.approx(48 / 14)  # tokens-weighted, not the mean of 2, 2, 4
    assert figures["perplexity"] == pytest.approx(math.exp(48 / 14))
    low, high = figures["loss_interval"]
    assert 2.0 <= low < figures["mean_loss"] < high <= 4.0  # resamples of whole examples stay within
    assert figures["perplexity_interval"] == pytest.approx([math.exp(low), math.exp(high)])
    same = loss_figures(np.array([[3.0, 1.0]] * 5), reps=100, seed=0, confidence=0.95)
    assert same["loss_interval"] == pytest.approx([3.0, 3.0])


def test_the_qa_split_is_seeded_disjoint_and_never_empty() -> None:
    texts = [f"<s>[INST] q{i} [/INST] a{i} </s>" for i in range(40)]
    first = seeded_split(texts, 0.25, seed=1, max_examples=None, source=Path("c"))
    assert first == seeded_split(texts, 0.25, seed=1, max_examples=None, source=Path("c"))
    assert first != seeded_split(texts, 0.25, seed=2, max_examples=None, source=Path("c"))
    assert not set(first["train"]) & set(first["heldout"]) and len(first["heldout"]) == 10
    assert len(seeded_split(texts, 0.25, seed=1, max_examples=20, source=Path("c"))["heldout"]) == 5
    with pytest.raises(InvalidInput, match="held-out"):
        seeded_split(texts, 0.25, seed=1, max_examples=1, source=Path("c"))


def test_post_of_reads_the_text_back_from_the_prompt() -> None:
    from services.common.prompts import implicit_hate_prompt

    assert post_of(implicit_hate_prompt("  you are all great \n")) == "you are all great"


# --- end to end ------------------------------------------------------------------------------


def test_qa_and_hate_end_to_end_share_one_report(
    settings_env: Path,
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "research"
    common = ("--model", str(tiny_model_dir), "--max-steps", "2", "--out", str(out), "--seed", "0")
    qa = hsig(
        monkeypatch, "qa", *common, "--methods", "lora,full", "--max-examples", "24", "--max-new-tokens", "6"
    )
    assert qa == 0, capsys.readouterr().err
    hate = hsig(
        monkeypatch,
        *("hate", *common, "--methods", "lora,qlora", "--max-examples", "120", "--eval-examples", "18"),
    )
    assert hate == 0, capsys.readouterr().err

    qa_json = json.loads((out / "qa.json").read_text())
    models = {row["method"]: row for row in qa_json["models"]}
    assert list(models) == ["base", "lora", "full"]
    for row in models.values():
        held = row["heldout"]
        assert held["examples"] == qa_json["split"]["turns"]["heldout"] > 0
        assert held["loss_interval"][0] <= held["mean_loss"] <= held["loss_interval"][1]
        assert held["perplexity"] == pytest.approx(math.exp(held["mean_loss"]))
        assert set(row["answers"]) == set(qa_json["questions"]) >= {"How do I use the OpenAI API?"}
    for method in ("lora", "full"):
        cost = models[method]["cost"]
        assert cost["seconds_per_epoch"] > 0 and cost["peak_memory_bytes"] > 0 and cost["steps"] == 2
        # The trainer's validation part is the held-out part, and its manifest records the split.
        assert models[method]["manifest_split"]["counts"]["validation"] >= held["examples"]
    assert models["lora"]["cost"]["trainable_parameters"] < models["full"]["cost"]["trainable_parameters"]
    assert qa_json["split"]["seed"] == 0 and qa_json["tiny"] is True

    hate_json = json.loads((out / "hate.json").read_text())
    assert hate_json["layout"] == "davidson-csv" and hate_json["label_map"] == {
        "0": "Yes",
        "1": "Unsure",
        "2": "No",
    }
    rows = {row["method"]: row for row in hate_json["models"]}
    assert list(rows) == ["base", "baseline", "lora", "qlora"]
    for method in ("base", "baseline", "lora"):
        row = rows[method]
        assert row["rows"] == 18 and sum(map(sum, row["confusion"]["matrix"])) == 18
        assert row["accuracy_wilson"][0] <= row["accuracy"] <= row["accuracy_wilson"][1]
        assert set(row["per_class"]) == {"Yes", "No", "Unsure"} and 0 <= row["macro_f1"] <= 1
    assert rows["baseline"]["predicted_share"]["Unsure"] == 1.0  # Davidson's majority: offensive
    explained = rows["lora"]["explanations"]
    assert len(explained) == 3 and all(item["label"] in LABELS for item in explained)
    if not cuda():
        assert rows["qlora"]["status"] == "not run" and "CUDA" in rows["qlora"]["reason"]

    page = (out / "report.html").read_text()
    assert "id='qa'" in page and "id='hate'" in page and "id='btc'" not in page
    assert "2 out of 3" in page and "How do I use the OpenAI API?" in page
    assert "say NOTHING about Llama-2" in page and "not run" in page
    assert "Explanations generated after the scored label" in page


# --- bad input ---------------------------------------------------------------------------------


def _davidson(path: Path, rows: list[tuple[int, str]]) -> Path:
    body = "".join(f'{i},3,0,0,3,{klass},"{tweet}"\n' for i, (klass, tweet) in enumerate(rows))
    path.write_text(DAVIDSON_HEADER + body, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("nope",), "no question 'nope'"),
        (("hate", "--methods", "lora,dora"), "method 'dora'"),
        (("hate", "--hate-data", "{tmp}/wrong.csv"), "neither hate corpus layout"),
        (("hate", "--hate-data", "{tmp}/class7.csv"), "class '7' is not 0, 1 or 2"),
        (("hate", "--hate-data", "{tmp}/tiny.csv"), "split is empty"),
        (("qa", "--qa-data", "{tmp}/notext.jsonl"), "no string 'text'"),
        (("qa", "--max-examples", "2"), "held-out split is empty"),
        (("all", "--hate-data", "{tmp}/class7.csv"), "class '7'"),  # checked before qa trains
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_trained(
    settings_env: Path,
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    arguments: tuple[str, ...],
    message: str,
) -> None:
    from services.common.settings import get_settings

    monkeypatch.setenv("HSIG_LOG_LEVEL", "WARNING")  # progress logs aside, stderr holds the error alone
    get_settings.cache_clear()
    (tmp_path / "wrong.csv").write_text("text,label\nhello,0\n", encoding="utf-8")
    _davidson(tmp_path / "class7.csv", [(0, "a"), (1, "b"), (7, "c")])
    _davidson(tmp_path / "tiny.csv", [(0, "a"), (1, "b"), (2, "c")])
    (tmp_path / "notext.jsonl").write_text('{"prompt": "x"}\n', encoding="utf-8")
    resolved = [a.replace("{tmp}", str(tmp_path)) for a in arguments]
    extra = (
        ["--model", str(tiny_model_dir), "--out", str(tmp_path / "out")]
        if len(resolved) > 1 or resolved[0] != "nope"
        else []
    )
    code = hsig(monkeypatch, *resolved, *extra)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("hsig: error:") and message in err[0]
    assert not (settings_env / "adapters").exists() or not any((settings_env / "adapters").iterdir())
    assert not (tmp_path / "out" / "report.html").exists()


def test_the_trainer_api_answers_a_label_or_task_outside_the_task_with_422(
    settings_env: Path, sqlite_url: str, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.common.settings import get_settings
    from services.trainer.app import build_app
    from services.trainer.settings import TrainerSettings

    monkeypatch.setenv("HSIG_DATABASE_URL", sqlite_url)
    get_settings.cache_clear()
    settings = get_settings(TrainerSettings).model_copy(update={"worker_enabled": False})
    job = {
        "name": "hate-bad-label",
        "task": "implicit-hate",
        "base_model": str(tiny_model_dir),
        "data": {"path": str(DATA_DIR / "hate_speech_davidson" / "labeled_data.csv")},
    }
    with TestClient(build_app(settings)) as client:
        auth = {"Authorization": "Bearer test-token"}
        bad_label = {**job, "data": {**job["data"], "hate_labels": {"implicit_hate": "Maybe"}}}
        answer = client.post("/v1/jobs", json=bad_label, headers=auth)
        assert answer.status_code == 422 and "Maybe" in answer.text
        bad_task = client.post("/v1/jobs", json={**job, "task": "qa-hate"}, headers=auth)
        assert bad_task.status_code == 422 and "task" in bad_task.text
        assert client.get("/v1/jobs").json()["jobs"] == []
