"""The scorer's prompt encoder gives the trainer's ids (``encode``, no special tokens) for real
headlines and awkward text, and keeps them when the shared tokenizer is changed elsewhere."""

from __future__ import annotations

import csv
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from services.common.prompts import btc_trend_prompt, implicit_hate_prompt
from services.inference.scorer import PromptEncoder

REPO_ROOT = Path(__file__).resolve().parents[2]
AWKWARD = [
    "",
    " leading space and trailing  ",
    "tabs\tand\nnewlines\r\n",
    "special tokens in text: <s> </s> <unk>",
    "Ünïcödé — “quotes” ‘single’ … 🚀 ₿ 比特币",
    "a" * 3000,
]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _sentencepiece_style(split_special_tokens: bool) -> Any:
    """A layout the tiny model does not have: SentencePiece-style BPE (Metaspace, as Llama-2's),
    trained here on the bundled headlines."""
    from tokenizers import SentencePieceBPETokenizer
    from transformers import PreTrainedTokenizerFast

    trained = SentencePieceBPETokenizer()
    trained.train_from_iterator(_headlines(), vocab_size=500, special_tokens=["<unk>", "<s>", "</s>"])
    return PreTrainedTokenizerFast(
        tokenizer_object=trained,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        split_special_tokens=split_special_tokens,
    )


def _headlines() -> list[str]:
    with (REPO_ROOT / "data" / "cnbc_headlines" / "cnbc_headlines.csv").open(encoding="utf-8") as handle:
        return [row["Headlines"] for row in csv.DictReader(handle) if row.get("Headlines")]


def _prompts() -> list[str]:
    headlines = _headlines()
    start = datetime(2020, 3, 1, 14, 30, tzinfo=UTC)
    trend = [
        btc_trend_prompt(text, start + timedelta(minutes=i)) for i, text in enumerate(headlines + AWKWARD)
    ]
    return trend + [implicit_hate_prompt(text) for text in AWKWARD] + AWKWARD


@pytest.mark.parametrize("layout", ["tiny model", "sentencepiece", "sentencepiece, split_special_tokens"])
def test_the_encoder_gives_the_ids_encode_gives(layout: str, tokenizer: Any) -> None:
    if layout != "tiny model":
        tokenizer = _sentencepiece_style(split_special_tokens=layout.endswith("split_special_tokens"))
    prompts = _prompts()
    assert len(prompts) > 2000
    expected = [tokenizer.encode(prompt, add_special_tokens=False) for prompt in prompts]
    encoder = PromptEncoder(tokenizer)
    assert encoder.uses_backend  # the fast path, not the fallback, gave these
    assert encoder(prompts) == expected
    assert encoder(prompts[:1]) == expected[:1]


def test_settings_made_on_the_shared_tokenizer_do_not_change_its_ids(tokenizer: Any) -> None:
    prompts = _prompts()[:50]
    encoder = PromptEncoder(tokenizer)
    expected = encoder(prompts)
    tokenizer.backend_tokenizer.enable_truncation(max_length=8)
    try:
        assert encoder(prompts) == expected
        assert any(len(ids) > 8 for ids in expected)
    finally:
        tokenizer.backend_tokenizer.no_truncation()


class CallOnlyTokenizer:
    """Test double: a tokenizer without a Rust backend (a slow tokenizer's interface)."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.calls = 0

    def __call__(self, prompts: list[str], add_special_tokens: bool) -> dict[str, list[list[int]]]:
        self.calls += 1
        return {"input_ids": [self.real.encode(p, add_special_tokens=add_special_tokens) for p in prompts]}


def test_a_tokenizer_without_a_backend_is_called_as_before(tokenizer: Any) -> None:
    stand_in = CallOnlyTokenizer(tokenizer)
    prompts = _prompts()[:20]
    assert PromptEncoder(stand_in)(prompts) == [
        tokenizer.encode(p, add_special_tokens=False) for p in prompts
    ]
    assert stand_in.calls == 1  # the whole batch in one call


class LowercasingTokenizer:
    """Test double: a fast tokenizer whose ``encode`` does more than its backend (lower-cases
    the text first), as transformers does around the backend for some settings."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.backend_tokenizer = real.backend_tokenizer
        self.all_special_tokens = real.all_special_tokens

    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        return self.real.encode(text.lower(), add_special_tokens=add_special_tokens)

    def __call__(self, prompts: list[str], add_special_tokens: bool) -> dict[str, list[list[int]]]:
        return {"input_ids": [self.encode(p, add_special_tokens) for p in prompts]}


def test_a_backend_that_disagrees_with_encode_is_not_used(tokenizer: Any) -> None:
    stand_in = LowercasingTokenizer(tokenizer)
    encoder = PromptEncoder(stand_in)
    prompts = _prompts()[:20]
    assert not encoder.uses_backend
    assert encoder(prompts) == [stand_in.encode(p, add_special_tokens=False) for p in prompts]
