"""Settings for every service: one base class, one subclass per service.

All values come from the environment with the prefix ``HSIG_`` (``HSIG_API_TOKEN``...), or
from a ``.env`` file. The database URL is also read from plain ``DATABASE_URL``, the name
every PostgreSQL tool knows. Nothing is created at import time: call ``get_settings(cls)``,
which caches one instance per class; tests call ``get_settings.cache_clear()``.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Annotated, TypeVar

from pydantic import AliasChoices, BeforeValidator, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def split_csv(value: object) -> object:
    """``"a, b"`` -> ``["a", "b"]``; a JSON list or a list passes through."""
    if isinstance(value, str) and not value.strip().startswith("["):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


# A list setting given in the environment as "a,b" (or as a JSON list).
CsvList = Annotated[list[str], NoDecode, BeforeValidator(split_csv)]

# Tokens that must never protect a deployed service: refused outside local mode.
_PLACEHOLDER_TOKENS = {"", "changeme", "change-me", "secret", "token"}


class CommonSettings(BaseSettings):
    """What every service needs: where state lives, how to authenticate, how to log."""

    model_config = SettingsConfigDict(env_prefix="HSIG_", env_file=".env", extra="ignore")

    environment: str = Field(
        "local", description="local, test or production; production refuses placeholder secrets."
    )
    data_dir: Path = Field(Path("var"), description="Root for the SQLite file, adapters, reports and models.")
    database_url: str = Field(
        "",
        validation_alias=AliasChoices("HSIG_DATABASE_URL", "DATABASE_URL"),
        description="SQLAlchemy URL; empty means a SQLite file at <data_dir>/headline-signal.db.",
    )
    api_token: str = Field("dev-token", description="Bearer token every mutating endpoint requires.")
    log_level: str = Field("INFO", description="Python logging level.")
    max_body_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="Largest request body any endpoint accepts (413 beyond)."
    )
    symbol: str = Field("BTC/USD", description="Market the headlines are labelled against.")
    timeframe: str = Field("1h", description="Candle timeframe used for labels (ccxt notation).")
    horizons: CsvList = Field(default_factory=lambda: ["1h"], description="Label horizons (ccxt notation).")
    neutral_band: float = Field(0.0, ge=0, description="|return| <= band is Flat; 0 disables Flat.")
    keep_flat: bool = Field(False, description="Keep Flat rows (True) or leave them out of datasets (False).")
    adapters_dir: Path | None = Field(None, description="Adapter volume; default <data_dir>/adapters.")
    reports_dir: Path | None = Field(None, description="Report volume; default <data_dir>/reports.")
    models_dir: Path | None = Field(None, description="Local base models; default <data_dir>/models.")
    model_cutoffs: str = Field(
        "",
        description="Knowledge cutoffs of models the shipped table lacks (services/common/cutoffs.py), as JSON: "
        '{"model id, directory name or endpoint model": {"pretraining": "2023-12", "tuning": "2024-03", '
        '"released": "2024-04-18", "source": "..."} or "unknown" or "none"}.',
    )

    @field_validator("api_token")
    @classmethod
    def _refuse_placeholder_in_production(cls, value: str, info) -> str:  # type: ignore[no-untyped-def]
        if info.data.get("environment") == "production" and value.strip().lower() in _PLACEHOLDER_TOKENS | {
            "dev-token"
        }:
            raise ValueError("HSIG_API_TOKEN must be set to a real secret when HSIG_ENVIRONMENT=production")
        return value

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'headline-signal.db').as_posix()}"

    @property
    def adapters_path(self) -> Path:
        return self.adapters_dir or self.data_dir / "adapters"

    @property
    def reports_path(self) -> Path:
        return self.reports_dir or self.data_dir / "reports"

    @property
    def models_path(self) -> Path:
        return self.models_dir or self.data_dir / "models"


SettingsT = TypeVar("SettingsT", bound=CommonSettings)


@cache
def get_settings(cls: type[SettingsT] = CommonSettings) -> SettingsT:  # type: ignore[assignment]
    """One cached instance per settings class; ``get_settings.cache_clear()`` re-reads the env."""
    return cls()
