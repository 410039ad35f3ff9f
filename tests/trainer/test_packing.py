"""Packing of short chat examples (data.packing): the packed blocks carry exactly the answer
tokens (loss mask) of the unpacked examples, attention stays within each example (the tiny
model's loss on a packed batch equals its loss on the same examples one per row), and the
tasks that score a label token refuse packing before anything runs (422, CLI exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from services.common.errors import InvalidInput
from services.trainer.app import build_app
from services.trainer.cli import _load_config
from services.trainer.config import TrainConfig
from services.trainer.loop import (
    IGNORE_INDEX,
    PackedBlock,
    answer_loss,
    collate,
    collate_packed,
    pack_examples,
)
from services.trainer.settings import TrainerSettings
from services.trainer.training import prepare
from tests.trainer.conftest import lora_config

MAX_LENGTH = 256
SUBJECTS = ("the sky", "grass", "snow", "coal", "a lemon", "the sea", "blood", "milk")
COLOURS = ("blue", "green", "white", "black", "yellow", "blue", "red", "white")


def short_chat_corpus(directory: Path, count: int = 60) -> Path:
    """A chat corpus in the guanaco-llama2 format whose turns are short (guanaco's own answers
    fill a block alone with the tiny model's byte-level tokenizer), with a rule to learn."""
    path = directory / "short-chat.jsonl"
    lines = []
    for number in range(count):
        subject, colour = SUBJECTS[number % len(SUBJECTS)], COLOURS[number % len(COLOURS)]
        question = f"What colour is {subject}?" + " Please answer." * (number % 3)
        lines.append(json.dumps({"text": f"<s>[INST] {question} [/INST] It is {colour}. </s>"}))
    path.write_text("\n".join(lines) + "\n")
    return path


def chat_config(corpus: Path, tiny: Path, packing: bool, **optim: object) -> TrainConfig:
    return TrainConfig.model_validate(
        {
            "name": "chat-packed" if packing else "chat-plain",
            "task": "chat",
            "base_model": str(tiny),
            "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
            "data": {
                "path": str(corpus),
                "max_examples": 60,
                "max_length": MAX_LENGTH,
                "packing": packing,
            },
            "optim": {"max_steps": 4, "batch_size": 4, "learning_rate": 1e-3, **optim},
            "evaluate_accuracy": False,
        }
    )


def _segments(block: PackedBlock) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) of each example inside a packed block, from the collated batch."""
    batch = collate_packed([block], pad_id=0)
    out = []
    for start, _, end in block.segments:
        assert batch["position_ids"][0, start:end].tolist() == list(range(end - start))
        out.append((batch["input_ids"][0, start:end].tolist(), batch["labels"][0, start:end].tolist()))
    return out


def test_packed_blocks_carry_the_same_answer_tokens(
    session_trainer_settings: TrainerSettings, tiny_model_dir: Path, tmp_path: Path
) -> None:
    corpus = short_chat_corpus(tmp_path)
    plain = prepare(chat_config(corpus, tiny_model_dir, packing=False), session_trainer_settings)
    packed = prepare(chat_config(corpus, tiny_model_dir, packing=True), session_trainer_settings)

    blocks = packed.train_set
    assert all(isinstance(b, PackedBlock) and len(b.input_ids) <= MAX_LENGTH for b in blocks)
    assert len(blocks) < len(plain.train_set)  # short examples share blocks
    assert packed.total_steps == plain.total_steps == 4  # max_steps decides; epochs would not
    assert packed.dataset.notes["packing"]["examples"] == len(plain.train_set)
    assert packed.dataset.notes["packing"]["blocks"] == len(blocks)

    unpacked = []
    for example in plain.train_set:
        batch = collate([example], pad_id=0)
        unpacked.append((batch["input_ids"][0].tolist(), batch["labels"][0].tolist()))
    from_blocks = [segment for block in blocks for segment in _segments(block)]
    assert from_blocks == unpacked  # same examples, same order, same loss mask
    answer_tokens = sum(sum(label != IGNORE_INDEX for label in labels) for _, labels in unpacked)
    assert answer_tokens > 0
    assert packed.validation_set == plain.validation_set  # validation is never packed


def test_attention_does_not_cross_examples(tiny_model_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from services.common.prompts import EncodedExample

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    generator = torch.Generator().manual_seed(0)
    examples = [
        EncodedExample(torch.randint(4, 500, (n,), generator=generator).tolist(), n // 2)
        for n in (30, 12, 45, 20, 33, 9)
    ]
    blocks = pack_examples(examples, 64)
    # Next-fit: 30 + 12; 45 (87 > 64); 20 + 33 + 9 (45 + 20 = 65 > 64).
    assert [[end - start for start, _, end in b.segments] for b in blocks] == [[30, 12], [45], [20, 33, 9]]
    with torch.no_grad():
        packed_loss = answer_loss(model, collate_packed(blocks, pad_id=3))
        plain_loss = answer_loss(model, collate(examples, pad_id=3))
        # The control: the same blocks with positions running on, so examples see each other.
        crossing = collate_packed(blocks, pad_id=3)
        crossing["position_ids"] = torch.arange(crossing["input_ids"].shape[1]).expand_as(
            crossing["input_ids"]
        )
        crossing_loss = answer_loss(model, crossing)
    assert float(packed_loss) == pytest.approx(float(plain_loss), abs=1e-5)
    assert abs(float(crossing_loss) - float(plain_loss)) > 1e-3


@pytest.mark.parametrize("task", ["btc-trend", "implicit-hate"])
def test_label_tasks_refuse_packing(
    task: str,
    session_trainer_settings: TrainerSettings,
    planted_file: Path,
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    raw = lora_config(planted_file, tiny_model_dir, name="packed").model_dump(mode="json")
    raw["task"] = task
    raw["data"]["packing"] = True
    with pytest.raises(ValidationError, match=rf"data\.packing applies to chat only: task {task}"):
        TrainConfig.model_validate(raw)

    config_file = tmp_path / "job.json"
    config_file.write_text(json.dumps(raw))
    with pytest.raises(InvalidInput, match=r"data\.packing applies to chat only"):
        _load_config(config_file)  # the CLI prints this in one line and exits 2

    settings = session_trainer_settings.model_copy(update={"worker_enabled": False})
    with TestClient(build_app(settings)) as client:
        before = client.get("/v1/jobs").json()["jobs"]  # the session's database: others' jobs
        answer = client.post("/v1/jobs", json=raw, headers={"Authorization": "Bearer test-token"})
        assert answer.status_code == 422, answer.text
        assert "data.packing applies to chat only" in answer.text
        assert client.get("/v1/jobs").json()["jobs"] == before  # nothing queued
