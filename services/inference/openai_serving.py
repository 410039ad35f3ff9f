"""OpenAI-compatible completions and chat completions, given an engine and what resolves model names."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from services.common.errors import InvalidInput
from services.inference.engine import Generation, TokenLogprob, VllmEngine
from services.inference.openai_protocol import (
    MAX_STOP_SEQUENCES,
    AssistantMessage,
    ChatChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatLogprobs,
    ChatTokenLogprob,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    TopLogprob,
    Usage,
)
from services.inference.scorer import Resolver


@dataclass(frozen=True)
class OpenAIConfig:
    base_model_name: str
    base_model_path: str
    max_model_len: int
    max_prompt_chars: int
    max_completion_tokens: int


class OpenAIServing:
    def __init__(self, engine: VllmEngine, tokenizer: Any, pool: Resolver, config: OpenAIConfig) -> None:
        self._engine = engine
        self._tokenizer = tokenizer
        self._pool = pool
        self._config = config

    async def completion(self, request: CompletionRequest) -> CompletionResponse:
        lora = self._pool.resolve(request.model)
        self._check_chars(request.prompt, "prompt")
        bos = getattr(self._tokenizer, "bos_token_id", None)
        ids = ([bos] if bos is not None else []) + self._tokenizer.encode(
            request.prompt, add_special_tokens=False
        )
        generation = await self._generate(ids, lora, request.max_tokens, request, request.logprobs)
        logprobs = _completion_logprobs(generation.logprobs) if generation.logprobs is not None else None
        choice = CompletionChoice(
            text=generation.text, logprobs=logprobs, finish_reason=generation.finish_reason
        )
        return CompletionResponse(model=request.model, choices=[choice], usage=_usage(generation))

    async def chat(self, request: ChatCompletionRequest) -> ChatCompletionResponse:
        lora = self._pool.resolve(request.model)
        for index, message in enumerate(request.messages):
            self._check_chars(message.content, f"messages.{index}.content")
        text = self._tokenizer.apply_chat_template(
            [message.model_dump() for message in request.messages], tokenize=False, add_generation_prompt=True
        )
        ids = self._tokenizer.encode(text, add_special_tokens=False)  # the template writes the BOS itself
        top = (request.top_logprobs or 0) if request.logprobs else None
        max_tokens = request.max_completion_tokens or request.max_tokens or 16
        generation = await self._generate(ids, lora, max_tokens, request, top)
        logprobs = _chat_logprobs(generation.logprobs) if generation.logprobs is not None else None
        choice = ChatChoice(
            message=AssistantMessage(content=generation.text),
            logprobs=logprobs,
            finish_reason=generation.finish_reason,
        )
        return ChatCompletionResponse(model=request.model, choices=[choice], usage=_usage(generation))

    async def _generate(
        self, ids: list[int], lora: Any, max_tokens: int, request: Any, logprobs: int | None
    ) -> Generation:
        if max_tokens > self._config.max_completion_tokens:
            raise InvalidInput(
                f"max_tokens {max_tokens} is above the limit {self._config.max_completion_tokens}",
                param="max_tokens",
            )
        if len(ids) + max_tokens > self._config.max_model_len:
            raise InvalidInput(
                f"prompt of {len(ids)} tokens plus max_tokens {max_tokens} exceeds the model's "
                f"{self._config.max_model_len}",
                param="max_tokens",
            )
        return await self._engine.generate(
            ids,
            lora,
            max_tokens=max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            stop=_stops(request.stop),
            logprobs=logprobs,
            seed=request.seed,
        )

    def _check_chars(self, text: str, param: str) -> None:
        if len(text) > self._config.max_prompt_chars:
            raise InvalidInput(
                f"{param} has {len(text)} characters; at most {self._config.max_prompt_chars}", param=param
            )


def _stops(stop: str | list[str] | None) -> list[str] | None:
    if stop is None:
        return None
    stops = [stop] if isinstance(stop, str) else stop
    if len(stops) > MAX_STOP_SEQUENCES or any(not item for item in stops):
        raise InvalidInput(f"stop takes 1 to {MAX_STOP_SEQUENCES} non-empty strings", param="stop")
    return stops


def _usage(generation: Generation) -> Usage:
    completion = len(generation.token_ids)
    return Usage(
        prompt_tokens=generation.prompt_tokens,
        completion_tokens=completion,
        total_tokens=generation.prompt_tokens + completion,
    )


def _completion_logprobs(steps: Sequence[TokenLogprob]) -> CompletionLogprobs:
    offsets, position = [], 0
    for step in steps:
        offsets.append(position)
        position += len(step.token)
    return CompletionLogprobs(
        tokens=[step.token for step in steps],
        token_logprobs=[step.logprob for step in steps],
        top_logprobs=[step.top for step in steps],
        text_offset=offsets,
    )


def _chat_logprobs(steps: Sequence[TokenLogprob]) -> ChatLogprobs:
    return ChatLogprobs(
        content=[
            ChatTokenLogprob(
                token=step.token,
                logprob=step.logprob,
                bytes=list(step.token.encode()),
                top_logprobs=[
                    TopLogprob(token=token, logprob=value, bytes=list(token.encode()))
                    for token, value in step.top.items()
                ],
            )
            for step in steps
        ]
    )
