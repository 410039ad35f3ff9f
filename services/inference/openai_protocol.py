"""OpenAI-compatible request and response models (the subset this service implements).

Fields follow the OpenAI API so the official ``openai`` client works unchanged; unknown
fields are refused (422 naming the field) rather than silently ignored.
"""

from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from services.common.cutoffs import KnowledgeCutoff

MAX_STOP_SEQUENCES = 4
MAX_TOP_LOGPROBS = 20


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CompletionRequest(_Strict):
    model: str = Field(min_length=1, max_length=128)
    prompt: str = Field(min_length=1)
    max_tokens: int = Field(16, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    stop: str | list[str] | None = Field(None, description=f"Up to {MAX_STOP_SEQUENCES} stop strings.")
    logprobs: int | None = Field(
        None, ge=0, le=MAX_TOP_LOGPROBS, description="Top log-probabilities per token."
    )
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    n: Literal[1] = 1
    stream: Literal[False] = False
    user: str | None = Field(None, max_length=256)


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str = Field(min_length=1)


class ChatCompletionRequest(_Strict):
    model: str = Field(min_length=1, max_length=128)
    messages: list[ChatMessage] = Field(min_length=1, max_length=64)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    stop: str | list[str] | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    n: Literal[1] = 1
    stream: Literal[False] = False
    user: str | None = Field(None, max_length=256)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class CompletionResponse(BaseModel):
    id: str = Field(default_factory=lambda: _id("cmpl"))
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str


class ChatCompletionResponse(BaseModel):
    id: str = Field(default_factory=lambda: _id("chatcmpl"))
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "headline-signal"
    root: str
    parent: str | None = None
    # Ours, beside OpenAI's fields (clients ignore them): a full fine-tune has an engine of its
    # own, which may be starting, waiting for room or refused (with vLLM's reason).
    kind: Literal["base", "adapter", "full"] = "adapter"
    status: str = "served"
    reason: str | None = None
    # What the model could have read (services/common/cutoffs.py): an adapter's and a full
    # fine-tune's are their base's, as their manifest recorded it.
    knowledge_cutoff: KnowledgeCutoff | None = None


class ServiceLimits(BaseModel):
    """What a replica accepts, for clients that size their batches (the backtest's predictor)."""

    max_batch_items: int = Field(description="Items one POST /v1/predict may carry; more is a 422.")
    max_in_flight: int = Field(description="Requests a replica works on at once; past it, 503 + Retry-After.")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
    limits: ServiceLimits | None = None  # an extension of OpenAI's list: ours always sets it
