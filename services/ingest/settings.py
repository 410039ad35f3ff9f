"""Ingest settings: feeds, the exchange to pull candles from, polling intervals, the HTTP port."""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import SettingsConfigDict

from services.common.settings import CommonSettings, CsvList

CNBC_FEED = "https://www.cnbc.com/id/{}/device/rss/rss.html"
DEFAULT_FEEDS = [CNBC_FEED.format(100003114), CNBC_FEED.format(10000664)]  # top news, finance


class IngestSettings(CommonSettings):
    """Everything ``HSIG_*`` the ingest service reads (the common fields included)."""

    model_config = SettingsConfigDict(populate_by_name=True)  # IngestSettings(port=...) works too

    feed_urls: CsvList = Field(
        default_factory=lambda: list(DEFAULT_FEEDS),
        description="RSS feeds to poll, comma-separated; each a URL or name=URL (the name is the source id).",
    )
    feed_interval_seconds: float = Field(
        300.0,
        validation_alias=AliasChoices("HSIG_FEED_INTERVAL_SECONDS", "HSIG_FEED_INTERVAL_S"),
        gt=0,
        description="Seconds between polls of each feed.",
    )
    candle_interval_seconds: float = Field(
        600.0,
        validation_alias=AliasChoices("HSIG_CANDLE_INTERVAL_SECONDS", "HSIG_CANDLE_INTERVAL_S"),
        gt=0,
        description="Seconds between candle pulls.",
    )
    label_interval_seconds: float = Field(
        600.0,
        validation_alias=AliasChoices("HSIG_LABEL_INTERVAL_SECONDS", "HSIG_LABEL_INTERVAL_S"),
        gt=0,
        description="Seconds between labelling passes.",
    )
    http_timeout_seconds: float = Field(
        10.0,
        validation_alias=AliasChoices("HSIG_HTTP_TIMEOUT_SECONDS", "HSIG_HTTP_TIMEOUT_S"),
        gt=0,
        description="Connect/read timeout for feeds and exchanges.",
    )
    feed_deadline_seconds: float = Field(
        30.0,
        gt=0,
        description="Longest one feed fetch may take, whole body included (a drip-feeding server is cut off).",
    )
    feed_max_bytes: int = Field(
        5_242_880,
        ge=1024,
        description="Largest feed body read (decompressed); a larger one is refused unread.",
    )
    max_title_chars: int = Field(
        1000,
        ge=1,
        le=1000,
        description="Longest headline title stored; longer items are rejected (inference accepts 1,000).",
    )
    max_summary_chars: int = Field(
        10_000, ge=1, description="Longest summary stored; longer items are rejected."
    )
    max_link_chars: int = Field(2048, ge=1, description="Longest link stored; longer items are rejected.")
    max_guid_chars: int = Field(
        512, ge=1, le=512, description="Longest guid stored; longer items are rejected."
    )
    earliest_time: datetime = Field(
        datetime(2000, 1, 1, tzinfo=UTC),
        description="Headlines and candles dated before this are rejected (and quarantined if stored).",
    )
    future_skew_seconds: float = Field(
        300.0, ge=0, description="Headlines and candles dated more than this after now are rejected."
    )
    max_candle_price: float = Field(
        1e12,
        gt=0,
        description="Candle prices above this are rejected as absurd (like zero or negative ones).",
    )
    exchange: str = Field("coinbaseexchange", description="ccxt exchange id for candles.")
    exchange_api_url: str | None = Field(
        None, description="Replace every ccxt API base URL with this one (tests, replay server)."
    )
    candle_since: datetime = Field(
        datetime(2017, 7, 1, tzinfo=UTC), description="First candle to fetch when nothing is stored."
    )
    rate_limit_ms: int | None = Field(
        None, ge=0, description="Override ccxt's pause between requests (ms); unset keeps the exchange's own."
    )
    candle_page_limit: int = Field(300, ge=1, le=5000, description="Candles per fetch_ohlcv page.")
    candle_max_pages: int = Field(1000, ge=1, description="Most pages one pull may fetch (a cycle ends).")
    small_move: float = Field(0.005, gt=0, description="Market situation: |move| below this is 'small'.")
    sharp_range: float = Field(0.01, gt=0, description="Market situation: range at/above this is 'sharp'.")
    situation_lookback: int = Field(2, ge=1, le=24, description="Closed candles described in words.")
    host: str = Field(
        "127.0.0.1",
        validation_alias=AliasChoices("HSIG_INGEST_HOST", "HSIG_HOST"),
        description="HTTP bind address (HSIG_INGEST_HOST, else HSIG_HOST).",
    )
    port: int = Field(
        8001,
        validation_alias=AliasChoices("HSIG_INGEST_PORT", "HSIG_PORT"),
        description="HTTP port (HSIG_INGEST_PORT, else HSIG_PORT): one shell can run every service.",
    )
    scheduler_enabled: bool = Field(True, description="Poll on the intervals while the service runs.")

    @field_validator("candle_since", "earliest_time")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        return value if value.tzinfo else value.replace(tzinfo=UTC)
