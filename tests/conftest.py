"""Fixtures every test package shares: databases (SQLite always, PostgreSQL when it answers).

PostgreSQL tests run against 127.0.0.1:5432 (database ``test``, trust auth) or
``HSIG_TEST_POSTGRES_URL``. Each test session creates its own database there and drops it
after, so parallel runs never see each other's rows. Under CI (``CI=true``) a PostgreSQL that
does not answer fails the run instead of skipping it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import Connection, create_engine, text

from services.common.db.engine import get_engine, normalise_url
from services.common.db.migrate import alembic_config, upgrade
from services.common.db.models import Base
from services.common.settings import get_settings

os.environ.setdefault("OMP_NUM_THREADS", "1")  # 2 cores: default threading starves a second process
# No test reaches the Hugging Face Hub (`make test` exports these too; read at import, so set here
# for a bare `pytest` as well): a name that is not a local directory fails at once, offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

POSTGRES_ADMIN_URL = os.environ.get(
    "HSIG_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = REPO_ROOT / "data"


def _postgres_or_skip() -> str:
    """Create a throwaway database for this session; skip (or fail under CI) if none answers."""
    admin_url = normalise_url(POSTGRES_ADMIN_URL)
    name = f"hsig_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    try:
        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
    except Exception as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"PostgreSQL at {admin_url} is required under CI and did not answer: {exc}")
        pytest.skip(f"PostgreSQL at {admin_url} did not answer: {exc}")
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


def _drop_postgres(url: str) -> None:
    get_engine(url).dispose()
    name = url.rsplit("/", 1)[1]
    admin = create_engine(normalise_url(POSTGRES_ADMIN_URL), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    url = _postgres_or_skip()
    upgrade(url)
    yield url
    _drop_postgres(url)


@pytest.fixture
def empty_postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database of its own, not migrated, dropped after the test."""
    url = _postgres_or_skip()
    yield url
    _drop_postgres(url)


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.db'}"
    upgrade(url)
    return url


def _truncate_all(url: str) -> None:
    with get_engine(url).begin() as connection:
        for table in reversed(Base.metadata.sorted_tables):
            connection.execute(table.delete())


@contextmanager
def stored_at(db_url: str, revision: str) -> Iterator[Connection]:
    """The database as the migration ``revision`` left it: what is written through the
    connection is stored the old way, then every later migration runs on it (on exit, even
    after a failure, so the session's database is at head again)."""
    from alembic import command

    command.downgrade(alembic_config(db_url), revision)
    try:
        with get_engine(db_url).begin() as connection:
            yield connection
    finally:
        upgrade(db_url)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A migrated, empty database: each test using it runs on SQLite and on PostgreSQL."""
    yield from empty_database(request.getfixturevalue(f"{request.param}_url"))


# A module whose cases each start processes and train puts this in its pytestmark: ``db_url``
# on PostgreSQL only (the suite's time), where the dialect-specific part, the queue, is tested
# on both dialects elsewhere.
POSTGRES_ONLY = pytest.mark.parametrize(
    "db_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)


def empty_database(url: str) -> Iterator[str]:
    """``url`` emptied before and after the test (a fixture body: ``yield from``)."""
    _truncate_all(url)
    yield url
    _truncate_all(url)


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """Point every settings class at a fresh data dir; returns it. Settings re-read per test."""
    monkeypatch.setenv("HSIG_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("HSIG_API_TOKEN", "test-token")
    get_settings.cache_clear()
    yield tmp_path / "var"
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama, built once per test session (about 6 s)."""
    from services.common.tiny_model import build_tiny_model

    cache = os.environ.get("HSIG_TEST_MODEL_CACHE")
    out = Path(cache) / "tiny-llama" if cache else tmp_path_factory.mktemp("models") / "tiny-llama"
    return build_tiny_model(out)
