"""Backtest settings: the common ones plus where predictions come from and the schedule."""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import CommonSettings, CsvList


class BacktestSettings(CommonSettings):
    model_config = SettingsConfigDict(populate_by_name=True)  # old env names are aliases

    host: str = Field("127.0.0.1", description="Address the HTTP API binds to.")
    port: int = Field(8003, description="Port of the HTTP API.")
    inference_url: str = Field("http://127.0.0.1:8000", description="Base URL of the inference service.")
    inference_allowed_hosts: CsvList = Field(
        default_factory=list,
        description="Other inference hosts (host[:port]) a service predictor's url may name; they get no token.",
    )
    openai_endpoints: CsvList = Field(
        default_factory=lambda: ["api.openai.com=OPENAI_API_KEY"],
        description="OpenAI-compatible endpoints a backtest may call, as host[:port]=KEY_ENV (KEY_ENV may be "
        "empty): the key of each is read from the variable named here, never one a request names.",
    )
    predict_batch_size: int = Field(64, ge=1, le=1024, description="Items per POST /v1/predict.")
    request_timeout_seconds: float = Field(
        120.0,
        validation_alias=AliasChoices("HSIG_REQUEST_TIMEOUT_SECONDS", "HSIG_REQUEST_TIMEOUT_S"),
        gt=0,
        description="Timeout of one inference request.",
    )
    request_retries: int = Field(5, ge=0, description="Retries of a 503 / timeout before giving up.")
    fees_bps: float = Field(10.0, ge=0, description="Fee per unit of notional traded, in basis points.")
    decrease_position: Literal["short", "flat"] = Field(
        "short", description="What the strategy does on a Decrease prediction."
    )
    bootstrap_reps: int = Field(1000, ge=0, description="Block-bootstrap resamples (0 disables).")
    schedule_cron: str = Field(
        "0 6 * * *",
        description=(
            "Crontab (UTC) of the rolling-window backtest of every adapter: 5 fields, or 6 with seconds "
            "first; empty or 'off' disables."
        ),
    )
    rolling_window_days: float = Field(
        30.0, gt=0, description="Scheduled runs score the last N days of labelled rows."
    )
    schedule_base_model: bool = Field(
        True, description="Scheduled runs also score the untuned base model through the inference service."
    )
    max_attempts: int = Field(3, ge=1, description="Attempts of a scheduled run before it stays failed.")
    retry_delay_seconds: float = Field(
        300.0,
        validation_alias=AliasChoices("HSIG_RETRY_DELAY_SECONDS", "HSIG_RETRY_DELAY_S"),
        ge=0,
        description="Wait before retrying a failed scheduled run.",
    )
    lease_seconds: float = Field(
        120.0,
        validation_alias=AliasChoices("HSIG_LEASE_SECONDS", "HSIG_RUN_LEASE_S"),
        gt=0,
        description=(
            "A replica running a backtest renews its claim every quarter of this; a run not renewed "
            "for this long (its replica died) is taken over by another replica."
        ),
    )

    def openai_key_envs(self) -> dict[str, str]:
        """HSIG_OPENAI_ENDPOINTS as {host[:port]: key variable}."""
        pairs = (entry.partition("=") for entry in self.openai_endpoints)
        return {host.strip().lower(): env.strip() for host, _, env in pairs if host.strip()}
