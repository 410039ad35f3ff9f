"""The ``hsig`` command line run as a user runs it: a subprocess on a data directory of its own.

``hsig_command(data_dir, "ingest", "backfill-candles")`` gives a runner of that subcommand; the
database URL variables of the test session are dropped, so it stores into SQLite under
``data_dir``. ``summary`` and ``refusal`` read its two outcomes: a JSON summary last on stdout
(exit 0), or one ``hsig: error:`` line on stderr and nothing on stdout (exit 2).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import REPO_ROOT

Run = subprocess.CompletedProcess[str]


def hsig_command(data_dir: Path, *subcommand: str) -> Callable[..., Run]:
    """A runner of ``hsig <subcommand> <args>`` with ``HSIG_DATA_DIR=data_dir``."""
    env = {**os.environ, "HSIG_DATA_DIR": str(data_dir), "OMP_NUM_THREADS": "1"}
    env.pop("HSIG_DATABASE_URL", None)
    env.pop("DATABASE_URL", None)

    def hsig(*args: str) -> Run:
        command = [sys.executable, "-m", "services.pipeline.cli", *subcommand, *args]
        return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)

    return hsig


def summary(done: Run) -> dict[str, Any]:
    """The JSON summary a command that succeeded printed last (asserting exit 0)."""
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def refusal(refused: Run) -> str:
    """The one line a refused command printed (asserting exit 2, nothing on stdout, one
    ``hsig: error:`` line on stderr)."""
    assert refused.returncode == 2 and refused.stdout == ""
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hsig: error: "), refused.stderr
    return lines[0]
