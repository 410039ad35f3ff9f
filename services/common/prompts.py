"""Prompt formats, label names and the prompt/answer tokenisation, shared by every service.

The trainer builds its examples here and the inference service scores with the same
functions, so the text a model was tuned on and the text it is asked cannot drift apart.

Three tasks, from the research note:
- ``btc-trend``: headline, time and market situation -> "Increase" or "Decrease";
- ``implicit-hate``: "Yes, No, or Unsure" about a short post, then an explanation;
- ``chat``: Llama-2 ``<s>[INST] ... [/INST] ... </s>`` instruction data (guanaco-llama2-1k).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

INCREASE = "Increase"
DECREASE = "Decrease"
FLAT = "Flat"
TREND_LABELS: tuple[str, ...] = (INCREASE, DECREASE)
HATE_LABELS: tuple[str, ...] = ("Yes", "No", "Unsure")

TASKS = ("btc-trend", "implicit-hate", "chat")
BTC_TREND = "btc-trend"  # the task of the untuned base model, and the default one
ANSWER_MARKER = "### Answer:"

# Answers start with a space so the label is tokenised as a word, not glued to the colon.
ANSWER_PREFIX = " "


def format_time(published_at: datetime, precision: str = "second") -> str:
    """The headline time as the model sees it: UTC, weekday for context, and no part the
    source did not give. A time to the second or minute reads "Fri 2020-07-17 19:51 UTC" (the
    text every adapter was tuned on); an hour, its span "Fri 2020-07-17 19:00-20:00 UTC"; a
    day, its date "Fri 2020-07-17". ``published_at`` is the start of the period; a day's date
    is read 12 hours in, which is the source's own date for any zone within 12 hours of UTC.
    """
    if published_at.tzinfo is None:
        raise ValueError("published_at must be timezone-aware")
    start = published_at.astimezone(UTC)
    if precision == "day":
        return (start + timedelta(hours=12)).strftime("%a %Y-%m-%d")
    if precision == "hour":
        return f"{start:%a %Y-%m-%d %H:%M}-{start + timedelta(hours=1):%H:%M} UTC"
    if precision not in ("second", "minute"):
        raise ValueError(f"unknown time precision {precision!r}: second, minute, hour or day")
    return start.strftime("%a %Y-%m-%d %H:%M UTC")


def btc_trend_prompt(
    headline: str, published_at: datetime, market_situation: str | None = None, precision: str = "second"
) -> str:
    situation = (market_situation or "").strip() or "Unknown"
    return (
        "### Instruction: Given a CNBC news headline, the time it was published and the recent "
        "Bitcoin market situation, will the Bitcoin price Increase or Decrease over the next "
        "hour? Answer Increase or Decrease.\n"
        f"### Headline: {headline.strip()}\n"
        f"### Time: {format_time(published_at, precision)}\n"
        f"### Market situation: {situation}\n"
        f"{ANSWER_MARKER}"
    )


def btc_trend_probe_prompt(published_at: datetime) -> str:
    """``btc_trend_prompt``'s format with no headline and no market situation: the memorisation
    probe (services/backtest/probe.py) asks what the model knows from the date alone. The
    situation is left out too, since it would measure momentum rather than memory."""
    return (
        "### Instruction: Given only the time, will the Bitcoin price Increase or Decrease over the "
        "next hour? Answer Increase or Decrease.\n"
        f"### Time: {format_time(published_at)}\n"
        f"{ANSWER_MARKER}"
    )


def implicit_hate_prompt(post: str) -> str:
    return (
        "### Question: Given the short text of a social media post, is it implicit hate speech? "
        "Can you answer Yes, No, or Unsure, and then explain your answer?\n"
        f"### Text: {post.strip()}\n"
        f"{ANSWER_MARKER}"
    )


def prompt_for(task: str, **fields: Any) -> str:
    """The prompt of any scored task from its fields (used by inference and backtest)."""
    if task == "btc-trend":
        return btc_trend_prompt(
            fields["headline"],
            fields["published_at"],
            fields.get("market_situation"),
            fields.get("precision") or "second",
        )
    if task == "implicit-hate":
        return implicit_hate_prompt(fields["post"])
    raise ValueError(f"task {task!r} has no scored prompt; choose btc-trend or implicit-hate")


def labels_for(task: str) -> tuple[str, ...]:
    if task == "btc-trend":
        return TREND_LABELS
    if task == "implicit-hate":
        return HATE_LABELS
    raise ValueError(f"task {task!r} has no labels; choose btc-trend or implicit-hate")


# --- chat (Llama-2) ----------------------------------------------------------------------

_CHAT_RE = re.compile(
    r"^\s*(?:<s>)?\s*\[INST\](?P<instruction>.*?)\[/INST\](?P<answer>.*?)(?:</s>)?\s*$", re.S
)


@dataclass(frozen=True)
class ChatExample:
    instruction: str
    answer: str


def parse_chat_text(text: str) -> ChatExample:
    """Split one guanaco-llama2 ``text`` into instruction and answer; ValueError if malformed."""
    match = _CHAT_RE.match(text)
    if not match or not match.group("answer").strip():
        raise ValueError("not in the Llama-2 '<s>[INST] ... [/INST] ... </s>' format")
    return ChatExample(match.group("instruction").strip(), match.group("answer").strip())


def chat_prompt(instruction: str) -> str:
    return f"[INST] {instruction.strip()} [/INST]"


# --- tokenisation shared by training and scoring -----------------------------------------


class Tokenizer(Protocol):
    def encode(self, text: str, add_special_tokens: bool = ..., verbose: bool = ...) -> list[int]: ...


@dataclass(frozen=True)
class EncodedExample:
    """Token ids of prompt + answer, and where the answer starts (loss and scores use it)."""

    input_ids: list[int]
    answer_start: int

    @property
    def answer_ids(self) -> list[int]:
        return self.input_ids[self.answer_start :]


def encode_prompt_answer(
    tokenizer: Tokenizer, prompt: str, answer: str, bos_id: int | None = None, eos_id: int | None = None
) -> EncodedExample:
    """Tokenise prompt and answer apart and concatenate, so the answer's tokens never depend
    on how a tokenizer would merge across the boundary: trainer and scorer see the same ids.
    """
    # verbose=False: a long conversation is the trainer's to drop or cut (max_length, counted in
    # the manifest), not a warning on stderr for every such example.
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False, verbose=False)
    answer_ids = tokenizer.encode(ANSWER_PREFIX + answer.strip(), add_special_tokens=False, verbose=False)
    if not answer_ids:
        raise ValueError(f"answer {answer!r} tokenises to nothing")
    prefix = ([bos_id] if bos_id is not None else []) + prompt_ids
    suffix = [eos_id] if eos_id is not None else []
    return EncodedExample(prefix + answer_ids + suffix, len(prefix))


def label_token_ids(tokenizer: Tokenizer, labels: Sequence[str]) -> dict[str, list[int]]:
    """Each label's token sequence as it follows a prompt (multi-token labels allowed)."""
    return {label: tokenizer.encode(ANSWER_PREFIX + label, add_special_tokens=False) for label in labels}


def bos_id_of(tokenizer: object) -> int | None:
    """The BOS id every example starts with, added explicitly by trainer and scorer alike.

    The tiny tokenizer adds no BOS by itself and Llama-2's adds one; adding it explicitly (and
    tokenising with ``add_special_tokens=False``) gives both the same layout.
    """
    return getattr(tokenizer, "bos_token_id", None)
