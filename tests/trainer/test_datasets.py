"""Datasets: rows from the database and from files agree; chat and hate corpora; answer-only loss."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from transformers import AutoTokenizer

from services.common.errors import InvalidInput
from services.common.prompts import ANSWER_MARKER
from services.trainer.config import DataConfig, TrainConfig
from services.trainer.datasets import (
    build_dataset,
    load_chat_corpus,
    load_hate_tsv,
    load_rows_from_database,
    load_rows_from_file,
    trend_split,
)
from services.trainer.loop import IGNORE_INDEX, collate, encode_examples
from tests.conftest import DATA_DIR
from tests.trainer.planted import insert_rows, planted_rows, write_jsonl

GUANACO = DATA_DIR / "guanaco_llama2_1k" / "guanaco_llama2_1k.parquet"


def test_database_rows_match_the_exported_file(db_url: str, tmp_path: Path) -> None:
    rows = planted_rows(60)
    insert_rows(db_url, rows)
    from_db = load_rows_from_database(db_url, "BTC/USD", "1h")
    from_file = load_rows_from_file(write_jsonl(rows, tmp_path / "rows.jsonl"))
    assert [(r.headline, r.headline_time, r.label, r.exit_time) for r in from_db] == [
        (r.headline, r.headline_time, r.label, r.exit_time) for r in from_file
    ]
    assert load_rows_from_database(db_url, "ETH/USD", "1h") == []


def test_csv_parquet_and_json_exports_read_the_same(tmp_path: Path) -> None:
    rows = planted_rows(20)
    frame = pd.DataFrame(rows).assign(situation_candles=lambda f: f.situation_candles.map(json.dumps))
    frame.to_csv(tmp_path / "rows.csv", index=False)
    frame.to_parquet(tmp_path / "rows.parquet")
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    reference = load_rows_from_file(write_jsonl(rows, tmp_path / "rows.jsonl"))
    for name in ("rows.csv", "rows.parquet", "rows.json"):
        assert load_rows_from_file(tmp_path / name) == reference, name


def test_a_malformed_row_names_its_line(tmp_path: Path) -> None:
    path = write_jsonl(planted_rows(5), tmp_path / "rows.jsonl")
    path.write_text(path.read_text() + '{"id": 9, "headline": "no times"}\n')
    with pytest.raises(InvalidInput, match="row 6"):
        load_rows_from_file(path)
    path.write_text('{"id": 1,\n')
    with pytest.raises(InvalidInput, match="line 1 is not valid JSON"):
        load_rows_from_file(path)


def test_trend_split_stores_class_balance_and_the_training_window(tmp_path: Path) -> None:
    rows = load_rows_from_file(write_jsonl(planted_rows(200), tmp_path / "rows.jsonl"))
    split = trend_split(rows, DataConfig(source="file", path=tmp_path / "rows.jsonl"))
    assert sum(split.class_balance["train"].values()) == len(split.train)
    assert set(split.class_balance["train"]) == {"Increase", "Decrease"}
    assert split.embargo_seconds == 3600  # the planted rows' labels span one hour
    assert split.first_row_time == rows[0].headline_time
    assert split.last_row_time == max(e.time for e in split.train)
    assert max(e.time for e in split.train) < min(e.time for e in split.validation)
    assert max(e.time for e in split.validation) < min(e.time for e in split.test)


def test_single_class_and_empty_windows_are_refused(tmp_path: Path) -> None:
    rows = planted_rows(100)
    for row in rows[:70]:
        row["label"] = "Increase"
    loaded = load_rows_from_file(write_jsonl(rows, tmp_path / "rows.jsonl"))
    with pytest.raises(InvalidInput, match="one class only"):
        trend_split(loaded, DataConfig(source="file", path=tmp_path / "rows.jsonl"))
    late = DataConfig.model_validate(
        {
            "source": "file",
            "path": str(tmp_path / "rows.jsonl"),
            "train": {"start": "2019-01-01T00:00:00Z", "end": "2019-02-01T00:00:00Z"},
            "validation": {"start": "2019-02-02T00:00:00Z", "end": "2019-03-01T00:00:00Z"},
        }
    )
    with pytest.raises(InvalidInput, match="train window holds no rows"):
        trend_split(loaded, late)


def test_the_real_guanaco_corpus_becomes_chat_examples_turn_by_turn() -> None:
    examples = load_chat_corpus(GUANACO)
    texts = pd.read_parquet(GUANACO).text
    turns = sum(text.count("[/INST]") for text in texts)
    unanswered = sum(len(re.findall(r"\[/INST\]\s*</s>", text)) for text in texts)
    assert unanswered > 0 and len(examples) == turns - unanswered  # one example per answered turn
    assert all(e.prompt.startswith("[INST] ") and e.prompt.endswith(" [/INST]") for e in examples)
    assert all(e.answer and "[INST]" not in e.answer and "</s>" not in e.answer for e in examples)
    later = next(e for e in examples if e.key.endswith("turn:1"))
    first = next(e for e in examples if e.key == later.key.replace("turn:1", "turn:0"))
    assert later.prompt.startswith(f"{first.prompt} {first.answer} </s><s>[INST] ")
    assert len(load_chat_corpus(GUANACO, max_examples=50)) == 50


def test_a_malformed_chat_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "chat.jsonl"
    good = json.dumps({"text": "<s>[INST] Hi [/INST] Hello </s>"})
    path.write_text(f"{good}\n{good}\n" + json.dumps({"text": "no instruction markers"}) + "\n")
    with pytest.raises(InvalidInput, match="line 3"):
        load_chat_corpus(path)
    path.write_text(f"{good}\nnot json\n")
    with pytest.raises(InvalidInput, match="line 2 is not valid JSON"):
        load_chat_corpus(path)


def test_hate_tsv_maps_classes_and_allows_unsure(tmp_path: Path) -> None:
    path = tmp_path / "hate.tsv"
    path.write_text(
        "post\tclass\nthey ruin everything\timplicit_hate\nnice weather\tnot_hate\nhmm\texplicit_hate\n"
    )
    default = DataConfig(source="file", path=path)
    assert [e.answer for e in load_hate_tsv(path, default)] == ["Yes", "No"]  # other classes dropped
    unsure = DataConfig(source="file", path=path, hate_other="Unsure")
    examples = load_hate_tsv(path, unsure)
    assert [e.answer for e in examples] == ["Yes", "No", "Unsure"]
    assert examples[0].prompt.endswith(ANSWER_MARKER) and "they ruin everything" in examples[0].prompt
    path.write_text("post\tclass\nonly one field\n")
    with pytest.raises(InvalidInput, match="line 2"):
        load_hate_tsv(path, default)


def test_loss_falls_on_answer_tokens_only(tiny_model_dir: Path, tmp_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = TrainConfig.model_validate(
        {
            "name": "x",
            "data": {"source": "file", "path": str(write_jsonl(planted_rows(40), tmp_path / "r.jsonl"))},
        }
    )
    split = build_dataset(config, "sqlite://", "BTC/USD", "1h")
    encoded, dropped = encode_examples(tokenizer, split.train[:4], max_length=512, with_eos=False)
    assert dropped == 0
    batch = collate(encoded, tokenizer.pad_token_id)
    for row, item in enumerate(encoded):
        labels = batch["labels"][row].tolist()
        learned = [token for token in labels if token != IGNORE_INDEX]
        assert learned == item.answer_ids  # the label's own tokens, nothing of the prompt or padding
        assert tokenizer.decode(learned).strip() == split.train[row].answer
        assert item.input_ids[0] == tokenizer.bos_token_id


def test_the_answer_only_loss_equals_transformers_own(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The loop projects only answer positions onto the vocabulary; the loss must not change."""
    import torch
    from transformers import AutoModelForCausalLM

    from services.trainer.loop import answer_loss

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    config = TrainConfig.model_validate(
        {
            "name": "x",
            "data": {"source": "file", "path": str(write_jsonl(planted_rows(40), tmp_path / "r.jsonl"))},
        }
    )
    examples = build_dataset(config, "sqlite://", "BTC/USD", "1h").train[:6]
    encoded, _ = encode_examples(tokenizer, examples, max_length=512, with_eos=True)  # 2 answer tokens each
    batch = collate(encoded, tokenizer.pad_token_id)
    ours = answer_loss(model, batch)
    theirs = model(**batch).loss
    assert torch.allclose(ours, theirs, atol=1e-6)
    ours.backward()
    grad = model.lm_head.weight.grad.clone()
    model.zero_grad()
    theirs.backward()
    assert torch.allclose(grad, model.lm_head.weight.grad, atol=1e-6)
