"""Several processes migrating one fresh database at once (compose starting every service
together): each ends with the schema at head and none crashes (issue 14 item 8)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from services.common.db import get_engine
from tests.conftest import REPO_ROOT

PROCESSES = 3
# Each child imports first, then sleeps until a shared moment, so the upgrades start together.
CHILD = """
import sys, time
from services.common.db.migrate import upgrade
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
upgrade(sys.argv[1])
"""


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
    else:
        yield request.getfixturevalue("empty_postgres_url")


def test_processes_migrating_a_fresh_database_at_once_all_succeed(fresh_url: str) -> None:
    start_at = str(time.time() + 4.0)  # after every child has imported sqlalchemy and alembic
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, fresh_url, start_at],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(PROCESSES)
    ]
    outcomes = [(child.wait(timeout=120), child.stderr.read()) for child in children]  # type: ignore[union-attr]
    assert [code for code, _ in outcomes] == [0] * PROCESSES, [err[-2000:] for _, err in outcomes]
    with get_engine(fresh_url).connect() as connection:
        versions = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    assert len(versions) == 1  # one head, written once
