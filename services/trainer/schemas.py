"""Request and response models of the trainer API (the job config is TrainConfig itself)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class JobOut(BaseModel):
    """A training job as the API shows it: where it is, how far, and what it produced."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    state: str = Field(description="queued, running, cancelling, succeeded, failed or cancelled.")
    adapter_name: str | None
    step: int = Field(description="Optimizer steps done.")
    total_steps: int
    progress: float = Field(0.0, description="step / total_steps.")
    loss: float | None = Field(description="Training loss at the last heartbeat.")
    eta_seconds: float | None = Field(description="Estimated seconds to the last step.")
    error: str | None
    attempts: int
    checkpoint_path: str | None
    tensorboard_dir: str | None = Field(
        None,
        description="Where the job writes its TensorBoard event files (train loss, learning rate, "
        "validation loss, held-out scores): <data_dir>/jobs/job-<id>/tensorboard, once it runs.",
    )
    metrics: dict[str, Any] = Field(
        description="Filled when the job succeeds: time, memory, tokens/s, adapter."
    )
    config: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    heartbeat_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, job: object, tensorboard_dir: str | None = None) -> JobOut:
        out = cls.model_validate(job)
        out.progress = out.step / out.total_steps if out.total_steps else 0.0
        out.tensorboard_dir = tensorboard_dir
        return out


class JobList(BaseModel):
    jobs: list[JobOut]
