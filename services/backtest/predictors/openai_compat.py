"""Any OpenAI-compatible chat endpoint (the research note compared ChatGPT-3.5 and 4).

Asked with the shared btc-trend prompt, temperature 0, a few tokens. When the endpoint
returns logprobs, p(Increase) comes from the first answer token's top alternatives: the
tokens that begin "Increase" against those that begin "Decrease", renormalised. When it does
not (or neither label is among them), the label is parsed from the first word of the answer
and the predictor has no probability; answers that are neither word are counted in the
report and scored as Decrease (so they cannot inflate the Increase bias).
"""

from __future__ import annotations

import math
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.backtest.predictors.base import PredictionSet, prompts_of
from services.backtest.rows import EvalRows
from services.common.errors import InvalidInput, OperationalError
from services.common.redact import redact_url
from services.common.schemas import AdapterManifest

_WORD = re.compile(r"[A-Za-z]+")


def label_from_logprobs(top: list[tuple[str, float]]) -> float | None:
    """p(Increase) from (token, logprob) alternatives of the first answer token, else None."""
    mass = {"increase": 0.0, "decrease": 0.0}
    for token, logprob in top:
        word = token.strip().lower()
        for label in mass:
            if word and label.startswith(word) and len(word) >= 2:
                mass[label] += math.exp(logprob)
    total = mass["increase"] + mass["decrease"]
    return mass["increase"] / total if total > 0 and min(mass.values()) > 0 else None


def label_from_text(text: str) -> str | None:
    """ "Increase" / "Decrease" from the first word of an answer, else None."""
    match = _WORD.search(text or "")
    word = match.group(0).lower() if match else ""
    if word.startswith("increas"):
        return "Increase"
    if word.startswith("decreas"):
        return "Decrease"
    return None


@dataclass
class OpenAIPredictor:
    name: str
    model: str
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    max_concurrency: int = 4
    kind: str = "openai"
    _logprobs: bool = field(default=True, repr=False)

    def manifest(self) -> AdapterManifest | None:
        return None

    def predict(self, rows: EvalRows) -> PredictionSet:
        import openai

        # The variable's name comes from the operator (outbound.openai_endpoint); empty: no key.
        key = os.environ.get(self.api_key_env) if self.api_key_env else "none"
        if not key:
            raise InvalidInput(f"environment variable {self.api_key_env} holding the API key is not set")
        client = openai.OpenAI(api_key=key, base_url=self.base_url, timeout=60.0, max_retries=5)
        with ThreadPoolExecutor(self.max_concurrency) as pool:
            answers = list(pool.map(lambda prompt: self._ask(client, prompt), prompts_of(rows)))
        probabilities = [p for p, _ in answers]
        words = [word for _, word in answers]
        from_probability = all(p is not None for p in probabilities)
        if from_probability:
            y_pred = np.array([p >= 0.5 for p in probabilities], dtype=np.int8)
            p_increase = np.array(probabilities, dtype=float)
            notes = ["scored from the endpoint's logprobs of the first answer token"]
        else:
            y_pred = np.array([word == "Increase" for word in words], dtype=np.int8)
            p_increase = np.full(len(rows), np.nan)
            unparsed = sum(word is None for word in words)
            notes = [
                "labels parsed from the first word of each answer (no usable logprobs): no calibration",
                f"{unparsed} answers were neither Increase nor Decrease and count as Decrease",
            ]
        meta = {"model": self.model, "base_url": redact_url(self.base_url or "https://api.openai.com/v1")}
        return PredictionSet(self.name, self.kind, y_pred, p_increase, notes, meta)

    def _ask(self, client: Any, prompt: str) -> tuple[float | None, str | None]:
        import openai

        kwargs: dict[str, Any] = {"logprobs": True, "top_logprobs": 5} if self._logprobs else {}
        try:
            response = client.chat.completions.create(
                model=self.model,
                messages=[{"role": "user", "content": prompt}],
                max_tokens=4,
                temperature=0,
                **kwargs,
            )
        except openai.BadRequestError as exc:
            if self._logprobs and "logprob" in str(exc).lower():
                self._logprobs = False  # this endpoint has none: parse words from here on
                return self._ask(client, prompt)
            raise InvalidInput(
                f"{self.model} at {redact_url(self.base_url) if self.base_url else 'OpenAI'} refused the request: {exc}"
            ) from exc
        except openai.OpenAIError as exc:
            raise OperationalError(
                f"{self.model} at {redact_url(self.base_url) if self.base_url else 'OpenAI'} failed: {exc}"
            ) from exc
        choice = response.choices[0]
        text = choice.message.content or ""
        probability = None
        content = getattr(choice.logprobs, "content", None) if choice.logprobs else None
        if content:
            top = [(alt.token, alt.logprob) for alt in content[0].top_logprobs or []]
            probability = label_from_logprobs(top)
        return probability, label_from_text(text)
