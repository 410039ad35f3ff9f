"""Stand-ins (test doubles, named as such) for servers that cannot run in these tests.

- ``StandInInference``: the inference service's POST /v1/predict contract, scoring with the
  shared transformers scorer on the tiny model (the real service runs vLLM + Ray Serve, which
  the lead's end-to-end test covers). It answers 503 + Retry-After on chosen calls.
- ``StandInOpenAI``: an OpenAI-compatible /v1/chat/completions, with or without logprobs.
Both are real HTTP servers (uvicorn on a free loopback port), reached by the real clients.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from services.common.prompts import TREND_LABELS, bos_id_of, btc_trend_prompt
from services.common.schemas import PredictRequest
from services.common.scoring import best_label, score_with_transformers
from tests.support.net import free_port


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def inference_standin(model_dir: Path, busy_calls: set[int]) -> tuple[FastAPI, list[dict[str, Any]]]:
    """The app and a log of the calls it got (batch sizes, adapters, whether it refused)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    calls: list[dict[str, Any]] = []
    app = FastAPI()

    @app.post("/v1/predict")
    async def predict(request: Request) -> JSONResponse:
        body = PredictRequest.model_validate(await request.json())
        number = len(calls)
        calls.append(
            {"items": len(body.items), "adapter": body.adapter, "auth": request.headers.get("authorization")}
        )
        if number in busy_calls:
            return JSONResponse(
                {"error": {"message": "loading"}}, status_code=503, headers={"Retry-After": "1"}
            )
        prompts = [btc_trend_prompt(i.headline, i.published_at, i.market_situation) for i in body.items]
        scores = score_with_transformers(model, tokenizer, prompts, TREND_LABELS, bos_id=bos_id_of(tokenizer))
        predictions = [
            {"label": best_label(p), "p_increase": p["Increase"], "probabilities": p, "adapter": body.adapter,
             "base_model": "tiny", "latency_ms": 1.0}
            for p in scores
        ]  # fmt: skip
        return JSONResponse({"predictions": predictions})

    return app, calls


def openai_standin(
    answer: str, logprobs: list[tuple[str, float]] | None
) -> tuple[FastAPI, list[dict[str, Any]]]:
    calls: list[dict[str, Any]] = []
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> JSONResponse:
        body = await request.json()
        calls.append(body)
        content = None
        if logprobs is not None and body.get("logprobs"):
            top = [{"token": t, "logprob": lp, "bytes": None} for t, lp in logprobs]
            content = [
                {"token": logprobs[0][0], "logprob": logprobs[0][1], "bytes": None, "top_logprobs": top}
            ]
        return JSONResponse(
            {
                "id": "chatcmpl-standin", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": answer},
                             "logprobs": {"content": content} if content else None}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        )  # fmt: skip

    return app, calls
