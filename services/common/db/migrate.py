"""Run Alembic migrations from code: ``upgrade(url)`` brings any database to head."""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, text

from services.common.db.engine import get_engine, normalise_url

log = logging.getLogger(__name__)
_ADVISORY_KEY = 0x68736967  # "hsig": one lock for every headline-signal migration in a database
MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


@contextmanager
def _file_lock(engine: Engine) -> Iterator[None]:
    """SQLite has no advisory locks: an exclusive lock on a file beside the database."""
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:":
        yield
        return
    lock_path = Path(database).with_name(Path(database).name + ".migrate-lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file is closed
        yield


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolates '%': escape it so passwords with '%' survive.
    config.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Idempotent: a database already at head is left as it is.

    Safe when several processes start at once on a fresh database (compose's services, a
    scaled deployment): the upgrade runs under a lock, so the loser waits, then finds the
    schema current instead of failing on tables the winner has just created.
    """
    config = alembic_config(url)
    engine = get_engine(normalise_url(url))
    with _file_lock(engine), engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Held to the end of this transaction, which holds the whole upgrade.
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_KEY})
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
    log.debug("database at %s migrated to %s", url.split("@")[-1], revision)
