"""The typed configuration of one training job, validated before anything heavy starts.

A ``TrainConfig`` is what ``POST /v1/jobs`` accepts, what ``hsig train run`` reads from a JSON
file, and what is saved beside the adapter it produced (``training_config.json``). Field
descriptions are the help text. Checks that need no data or weights live here; those that
need the model's config or the rows live in ``services/trainer/validate.py``.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from services.common.cutoffs import CutoffSpec, cutoff_for
from services.common.methods import TrainingMethod
from services.common.schemas import LoraSettings, Method, Task

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"

# The research note's two models (LoRA targets default to q_proj, v_proj: peft's Llama default).
PRESETS: dict[str, str] = {
    "llama-2-7b": "meta-llama/Llama-2-7b-hf",
    "llama-2-13b-chat": "meta-llama/Llama-2-13b-chat-hf",
}
TINY_PRESET = "tiny"  # the tiny local Llama (services.common.tiny_model), built on first use


class TimeWindow(BaseModel):
    """Rows whose split time t satisfies start <= t < end (either bound may be open).

    t is ``known_at - 1 s`` (``services.common.labelled_rows.split_time``): the window holds the
    rows known by its end and not at its start; for a second-precision row t is its headline time.
    """

    model_config = ConfigDict(extra="forbid")

    start: AwareDatetime | None = Field(
        None, description="Rows known after this are included (known_at - 1 s >= start)."
    )
    end: AwareDatetime | None = Field(
        None, description="Rows known by this are included (known_at - 1 s < end)."
    )

    @model_validator(mode="after")
    def _ordered(self) -> TimeWindow:
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ValueError(
                f"window end {self.end.isoformat()} is not after its start {self.start.isoformat()}"
            )
        return self

    def contains(self, moment: datetime) -> bool:
        return (self.start is None or moment >= self.start) and (self.end is None or moment < self.end)


class DataConfig(BaseModel):
    """Where the examples come from and how they are split."""

    model_config = ConfigDict(extra="forbid")

    source: Literal["database", "file"] = Field(
        "database",
        description="btc-trend rows from the database or from `path` (.jsonl/.json/.csv/.parquet, "
        "LabelledRowOut shape); chat and implicit-hate always read `path`.",
    )
    path: Path | None = Field(
        None,
        description="Rows file, chat corpus (.parquet/.jsonl) or hate corpus (TSV, or the Davidson CSV).",
    )
    symbol: str | None = Field(
        None, max_length=32, description="Database rows: market (default: settings.symbol)."
    )
    horizon: str | None = Field(
        None, max_length=8, description="Database rows: label horizon (default: first of settings.horizons)."
    )
    exchange: str | None = Field(
        None, max_length=64, description="Database rows: exchange id (default: any)."
    )
    train: TimeWindow | None = Field(None, description="btc-trend: explicit training window.")
    validation: TimeWindow | None = Field(None, description="btc-trend: explicit validation window.")
    test: TimeWindow | None = Field(None, description="btc-trend: explicit test window (optional).")
    validation_fraction: float = Field(
        0.15, ge=0, lt=1, description="Without explicit windows: share of rows, by time, for validation."
    )
    test_fraction: float = Field(
        0.15, ge=0, lt=1, description="Without explicit windows: share of rows, by time, for test."
    )
    embargo_seconds: float | None = Field(
        None,
        ge=0,
        description="Gap between windows; default and minimum: the longest label span "
        "(exit_time - (known_at - 1 s)) of the rows the windows hold.",
    )
    hate_labels: dict[Annotated[str, Field(max_length=64)], str | None] = Field(
        default_factory=lambda: {"implicit_hate": "Yes", "not_hate": "No"},
        max_length=32,
        description="implicit-hate: class -> Yes/No/Unsure, or null to drop the class.",
    )
    hate_other: str | None = Field(
        None,
        description="implicit-hate: answer for classes not in hate_labels (Yes/No/Unsure), null drops them.",
    )
    max_examples: int | None = Field(None, ge=1, description="Chat/hate: use only the first N examples.")
    max_length: int = Field(
        512, ge=8, description="Longest example in tokens; longer ones are cut at the end."
    )
    packing: bool = Field(
        False,
        description="chat only: lay short training examples end to end in blocks of max_length "
        "tokens, attention kept within each example (position ids restart per example); "
        "validation stays one example per sequence.",
    )

    @model_validator(mode="after")
    def _fractions(self) -> DataConfig:
        if self.validation_fraction + self.test_fraction >= 0.9:
            raise ValueError("validation_fraction + test_fraction must leave at least 10% for training")
        for label in [*self.hate_labels.values(), self.hate_other]:
            if label is not None and label not in ("Yes", "No", "Unsure"):
                raise ValueError(f"implicit-hate answer {label!r} is not Yes, No or Unsure")
        return self


class OptimConfig(BaseModel):
    """How long and how fast to train."""

    model_config = ConfigDict(extra="forbid")

    epochs: float = Field(1.0, gt=0, description="Passes over the training window (fractions allowed).")
    max_steps: int | None = Field(
        None, ge=1, description="Stop after this many optimizer steps (overrides epochs)."
    )
    batch_size: int = Field(8, ge=1, description="Examples per optimizer step.")
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate (AdamW).")
    schedule: Literal["constant", "linear", "cosine"] = Field(
        "constant", description="Learning-rate schedule."
    )
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping; null disables it.")
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute each decoder layer's activations in backward (less memory, more "
        "time; non-reentrant, as LoRA/QLoRA with peft need).",
    )
    eval_steps: int | None = Field(
        None,
        ge=1,
        description="Validation loss every N optimizer steps (always before the first and after "
        "the last step); null: only those two.",
    )
    seed: int = Field(0, description="Seeds weights init (LoRA), data order and dropout.")
    checkpoint_every: int = Field(50, ge=1, description="Save a resumable checkpoint every N steps.")


class TrainConfig(BaseModel):
    """One fine-tuning job: base model, method, data and optimisation."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, description="Adapter name (the inference service's adapter id).")
    task: Task = Field("btc-trend", description="btc-trend, implicit-hate or chat.")
    base_model: str = Field(
        TINY_PRESET,
        min_length=1,
        max_length=1000,
        description=f"Local directory, Hugging Face id, or a preset: {', '.join([TINY_PRESET, *PRESETS])}.",
    )
    method: Method = Field(TrainingMethod.LORA, description="lora, qlora (GPU + bitsandbytes) or full.")
    lora: LoraSettings = Field(default_factory=LoraSettings, description="LoRA settings (lora and qlora).")
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 on GPU, fp32 on CPU.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when available.")
    evaluate_accuracy: bool = Field(
        True, description="Score the held-out window by label scoring after training."
    )
    max_eval_examples: int = Field(400, ge=1, description="Most held-out rows scored for accuracy.")
    base_model_cutoff: CutoffSpec | None = Field(
        None,
        description="The base model's knowledge cutoff, recorded in the manifest; default: the shipped "
        "table or HSIG_MODEL_CUTOFFS (services/common/cutoffs.py), else unknown.",
    )

    @model_validator(mode="after")
    def _data_source(self) -> TrainConfig:
        if self.task != "btc-trend" and self.data.path is None:
            raise ValueError(f"task {self.task} needs data.path (a corpus file)")
        if self.task == "btc-trend" and self.data.source == "file" and self.data.path is None:
            raise ValueError("data.source 'file' needs data.path")
        if self.task != "btc-trend" and any((self.data.train, self.data.validation, self.data.test)):
            raise ValueError("time windows apply to btc-trend rows only")
        if self.data.packing and self.task != "chat":
            raise ValueError(
                f"data.packing applies to chat only: task {self.task} scores a label token, so "
                "each example keeps a sequence of its own"
            )
        if self.base_model_cutoff is not None:  # checked now (future, after release), not at publish
            cutoff_for(PRESETS.get(self.base_model, self.base_model), job=self.base_model_cutoff)
        return self
