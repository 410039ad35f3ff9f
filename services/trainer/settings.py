"""Trainer settings: the common ones plus the job queue, the worker and the inference hook."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import CommonSettings


class TrainerSettings(CommonSettings):
    model_config = SettingsConfigDict(populate_by_name=True)  # old env names are aliases

    host: str = Field("127.0.0.1", description="Address the trainer API binds to.")
    port: int = Field(8002, description="Port of the trainer API.")
    worker_enabled: bool = Field(True, description="Run a job worker inside the API process.")
    worker_poll_seconds: float = Field(2.0, gt=0, description="How often an idle worker looks for jobs.")
    heartbeat_seconds: float = Field(2.0, gt=0, description="How often a running job reports progress.")
    lease_seconds: float = Field(
        60.0,
        validation_alias=AliasChoices("HSIG_LEASE_SECONDS", "HSIG_STALE_AFTER_SECONDS"),
        gt=0,
        description="A running job whose heartbeat is older than this is requeued.",
    )
    max_attempts: int = Field(3, ge=1, description="Attempts (crashes included) before a job fails for good.")
    return_freed_memory: bool = Field(
        True,
        description="CPU: return freed activations to the OS after each step (glibc mmap threshold 64 KiB), "
        "so the process holds, and the manifest's peak RSS reports, what training uses.",
    )
    inference_url: str = Field(
        "", description="Inference service to tell about new adapters (POST /v1/adapters/{name}/load)."
    )
    notify_timeout_seconds: float = Field(10.0, gt=0, description="Timeout of the inference notify call.")

    @property
    def checkpoints_path(self) -> Path:
        return self.data_dir / "checkpoints"
