from pathlib import Path

import pytest
from pydantic import ValidationError

from services.common.settings import CommonSettings


def test_defaults_put_sqlite_under_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("HSIG_DATA_DIR", "/tmp/hsig-x")
    settings = CommonSettings()
    assert settings.resolved_database_url == "sqlite:////tmp/hsig-x/headline-signal.db"
    assert settings.adapters_path == Path("/tmp/hsig-x/adapters")


def test_plain_database_url_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@db/x")
    assert CommonSettings().resolved_database_url == "postgresql://u@db/x"


def test_horizons_from_comma_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HSIG_HORIZONS", "1h, 4h")
    assert CommonSettings().horizons == ["1h", "4h"]


def test_production_refuses_placeholder_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HSIG_ENVIRONMENT", "production")
    monkeypatch.setenv("HSIG_API_TOKEN", "changeme")
    with pytest.raises(ValidationError, match="HSIG_API_TOKEN"):
        CommonSettings()
    monkeypatch.setenv("HSIG_API_TOKEN", "a-real-secret-value")
    assert CommonSettings().api_token == "a-real-secret-value"


def test_seconds_settings_also_read_their_old_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every duration ends in _seconds; a deployment still setting the old *_S name keeps working."""
    from services.backtest.settings import BacktestSettings
    from services.ingest.settings import IngestSettings
    from services.trainer.settings import TrainerSettings

    monkeypatch.setenv("HSIG_RUN_LEASE_S", "30")
    monkeypatch.setenv("HSIG_FEED_INTERVAL_S", "45")
    monkeypatch.setenv("HSIG_STALE_AFTER_SECONDS", "90")
    assert BacktestSettings().lease_seconds == 30
    assert IngestSettings().feed_interval_seconds == 45
    assert TrainerSettings().lease_seconds == 90
    monkeypatch.setenv("HSIG_LEASE_SECONDS", "12")  # the new name wins over the old one
    assert BacktestSettings().lease_seconds == 12
    assert IngestSettings(feed_interval_seconds=5).feed_interval_seconds == 5
