"""Run Alembic migrations from code: ``upgrade(url)`` brings any database to head."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config

from services.common.db.engine import get_engine, normalise_url

log = logging.getLogger(__name__)
MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolates '%': escape it so passwords with '%' survive.
    config.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Idempotent: a database already at head is left as it is."""
    config = alembic_config(url)
    with get_engine(normalise_url(url)).begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
    log.debug("database at %s migrated to %s", url.split("@")[-1], revision)
