"""What a backtest is asked to do (the POST /v1/backtests body, the CLI's options) and its runs.

The config is saved beside the report it produced, so every figure can be traced to the
window, predictors and trading assumptions that made it.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import PurePath
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

BaselineName = Literal["always_increase", "always_decrease", "majority", "momentum", "coin_flip"]
# Bounds on what one request may ask for: a report is read by people, and a queued run holds
# the one backtest worker (10,000 predictors were once about a day of work).
MAX_PREDICTORS = 32
MAX_NOTES, MAX_NOTE = 20, 2_000
MAX_NAME, MAX_URL = 200, 2_000

BASELINES: tuple[str, ...] = ("always_increase", "always_decrease", "majority", "momentum", "coin_flip")


class BaselineSpec(BaseModel):
    """A predictor computed here from the rows alone."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["baseline"] = "baseline"
    name: BaselineName


class ServiceSpec(BaseModel):
    """An adapter (or the base model, adapter "base") scored by the inference service."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["service"] = "service"
    adapter: str = Field(min_length=1, max_length=128, description="Registered adapter name, or 'base'.")
    label: str | None = Field(
        None, max_length=MAX_NAME, description="Name shown in the report; default the adapter."
    )
    url: str | None = Field(
        None, max_length=MAX_URL, description="Inference base URL; default settings.inference_url."
    )


class OpenAISpec(BaseModel):
    """Any OpenAI-compatible chat endpoint (the note compared ChatGPT-3.5 and 4)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["openai"] = "openai"
    model: str = Field(min_length=1, max_length=MAX_NAME)
    base_url: str | None = Field(None, max_length=MAX_URL, description="Endpoint; default OpenAI's.")
    api_key_env: str | None = Field(
        None, max_length=128, description="Leave out: the operator pairs each endpoint with its key."
    )
    label: str | None = Field(None, max_length=MAX_NAME)
    max_concurrency: int = Field(4, ge=1, le=64)


class LocalSpec(BaseModel):
    """A model directory (and optionally a PEFT adapter or full fine-tune) scored in-process."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["local"] = "local"
    model: str = Field(
        min_length=1, max_length=MAX_URL, description="Base model directory or Hugging Face id."
    )
    adapter_dir: str | None = Field(
        None, max_length=MAX_URL, description="PEFT adapter or full fine-tune directory."
    )
    label: str | None = Field(None, max_length=MAX_NAME)
    batch_size: int = Field(16, ge=1, le=512)


PredictorSpec = Annotated[BaselineSpec | ServiceSpec | OpenAISpec | LocalSpec, Field(discriminator="kind")]


def default_predictors() -> list[PredictorSpec]:
    return [BaselineSpec(name=name) for name in BASELINES]  # type: ignore[arg-type]


class BacktestConfig(BaseModel):
    """One backtest: an out-of-time window of labelled rows, predictors, trading assumptions."""

    model_config = ConfigDict(extra="forbid")

    title: str = Field("Backtest", max_length=200)
    start: AwareDatetime | None = Field(None, description="First headline time scored (inclusive).")
    end: AwareDatetime | None = Field(None, description="Headline times scored are before this.")
    symbol: str | None = Field(None, description="Default settings.symbol.")
    horizon: str | None = Field(None, description="Label horizon; default the first of settings.horizons.")
    exchange: str | None = Field(None, description="Only rows labelled on this exchange.")
    predictors: list[PredictorSpec] = Field(
        default_factory=default_predictors, min_length=1, max_length=MAX_PREDICTORS
    )
    fees_bps: float | None = Field(None, ge=0, le=1000, description="Default settings.fees_bps.")
    decrease_position: Literal["short", "flat"] | None = None
    bootstrap_reps: int | None = Field(None, ge=0, le=100_000)
    confidence: float = Field(0.95, gt=0.5, lt=1)
    bias_alpha: float = Field(0.05, gt=0, lt=1, description="Bias flagged when the binomial p < alpha.")
    reliability_bins: int = Field(10, ge=2, le=50)
    seed: int = Field(0, description="Seeds the coin flip and the bootstrap.")
    allow_overlap: bool = Field(False, description="Score adapters on rows they may have trained on.")
    post_cutoff_only: bool = Field(
        False,
        description="Score only rows after the latest knowledge cutoff of the models scored; none: 422.",
    )
    majority_before: AwareDatetime | None = Field(
        None, description="Majority baseline learns from rows before this; default the window start."
    )
    notes: list[Annotated[str, Field(max_length=MAX_NOTE)]] = Field(
        default_factory=list, max_length=MAX_NOTES, description="Printed at the top of the report."
    )

    @model_validator(mode="after")
    def _window_is_ordered(self) -> BacktestConfig:
        if self.start and self.end and self.start >= self.end:
            raise ValueError(f"start {self.start.isoformat()} is not before end {self.end.isoformat()}")
        labels = [predictor_label(spec) for spec in self.predictors]
        duplicated = sorted({label for label in labels if labels.count(label) > 1})
        if duplicated:
            raise ValueError(f"predictor names repeat: {', '.join(duplicated)}; give each a distinct label")
        return self


def predictor_label(spec: BaselineSpec | ServiceSpec | OpenAISpec | LocalSpec) -> str:
    """The name a predictor has in the report, tables and metrics."""
    if isinstance(spec, BaselineSpec):
        return spec.name
    if spec.label:
        return spec.label
    if isinstance(spec, ServiceSpec):
        return spec.adapter
    if isinstance(spec, OpenAISpec):
        return f"openai:{spec.model}"
    path = PurePath(spec.adapter_dir or spec.model)
    # Published adapters live in <name>/v<N>: "note-lora/v1" says more than "v1".
    name = f"{path.parent.name}/{path.name}" if re.fullmatch(r"v\d+", path.name) else path.name
    return f"local:{name}"


class RunOut(BaseModel):
    """A backtest run as GET /v1/reports and POST /v1/backtests return it."""

    id: int
    state: str
    trigger: str
    attempts: int
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    summary: dict
    json_url: str | None = None
    html_url: str | None = None
