"""API schemas that cross service boundaries: rows, adapter manifests, predictions.

A service's private request/response models live in its own ``schemas.py``; these are the
contracts of DESIGN.md that two services must agree on.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from services.common.cutoffs import KnowledgeCutoff
from services.common.methods import Method  # TrainingMethod with its rules, as a field type

Task = Literal["btc-trend", "implicit-hate", "chat"]
BASE_MODEL_NAME = "base"  # the adapter name that means "no adapter"


class LabelledRowOut(BaseModel):
    """One labelled row as the ingest API exports it and the trainer and backtest read it."""

    model_config = ConfigDict(from_attributes=True, populate_by_name=True)

    id: int
    headline_id: int
    headline: str
    headline_time: AwareDatetime
    exchange: str
    symbol: str
    timeframe: str
    horizon: str
    entry_time: AwareDatetime
    exit_time: AwareDatetime
    entry_price: float
    exit_price: float
    return_: float = Field(alias="return")
    label: str
    market_situation: str
    situation_candles: list[str] = Field(default_factory=list)
    # When the headline counts as known (the end of its time's precision period): the entry
    # opens at or after it. Absent from files exported before migration 0006.
    known_at: AwareDatetime | None = None
    entry_shift_seconds: float | None = Field(None, description="known_at - headline_time, seconds.")
    time_precision: Literal["second", "minute", "hour", "day"] = "second"


class LoraSettings(BaseModel):
    r: int = Field(8, ge=1, description="LoRA rank.")
    alpha: int = Field(16, ge=1, description="LoRA alpha (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"])


class TrainingWindow(BaseModel):
    first_row_time: AwareDatetime | None = None
    last_row_time: AwareDatetime | None = None
    embargo_seconds: float = 0.0

    def end_with_embargo(self) -> datetime | None:
        """The first time a row may have to count as out-of-sample for this adapter."""
        if self.last_row_time is None:
            return None
        from datetime import timedelta

        return self.last_row_time.astimezone(UTC) + timedelta(seconds=self.embargo_seconds)


class AdapterManifest(BaseModel):
    """``manifest.json`` beside every published adapter or full model (DESIGN.md)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    version: int = 1
    base_model: str
    method: Method
    task: Task
    lora: LoraSettings | None = None
    training_window: TrainingWindow = Field(default_factory=TrainingWindow)
    dataset_sha256: str = ""
    train_seconds: float = 0.0
    seconds_per_epoch: float = 0.0
    peak_memory_bytes: int = 0
    peak_memory_kind: Literal["cuda_max_allocated", "cpu_peak_rss", "unknown"] = "unknown"
    trainable_parameters: int = 0
    total_parameters: int = 0
    tokens_per_second: float = 0.0
    weights_sha256: str = ""
    # The base model's knowledge cutoff when it was trained (services/common/cutoffs.py); None in
    # manifests written before cutoffs were recorded: readers look the base model up instead.
    base_model_cutoff: KnowledgeCutoff | None = None
    created_at: AwareDatetime = Field(default_factory=lambda: datetime.now(UTC))
    extra: dict[str, Any] = Field(default_factory=dict)


# --- predictions (inference API, used by backtest) ---------------------------------------

MAX_HEADLINE_CHARS = 1000
MAX_SITUATION_CHARS = 2000


class PredictItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    headline: str = Field(min_length=1, max_length=MAX_HEADLINE_CHARS)
    published_at: AwareDatetime
    market_situation: str | None = Field(None, max_length=MAX_SITUATION_CHARS)
    adapter: str | None = Field(None, description="Adapter for this item; overrides the request's.")
    time_precision: Literal["second", "minute", "hour", "day"] = Field(
        "second",
        description="How precisely published_at is known; the prompt shows no finer part "
        "(an hour as its span, a day as its date).",
    )

    @field_validator("headline")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("headline is blank")
        return value


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[PredictItem] = Field(min_length=1)
    adapter: str | None = Field(None, description=f"Adapter name, or '{BASE_MODEL_NAME}' for the base model.")
    explain: bool = False


class Prediction(BaseModel):
    label: str
    p_increase: float
    probabilities: dict[str, float]
    adapter: str
    base_model: str
    latency_ms: float
    explanation: str | None = None


class PredictResponse(BaseModel):
    predictions: list[Prediction]
