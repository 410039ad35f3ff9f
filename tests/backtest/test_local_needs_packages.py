"""The in-process scorer (kind 'local') on a host without torch, transformers and peft.

The slim image (ingest, backtest) has none of them. Rather than uninstall torch from the venv,
these tests hide the packages: ``NotInstalled``, a finder first on ``sys.meta_path``, answers
ModuleNotFoundError for them, so ``import torch`` fails as it does where torch is absent. That
finder is the only test double here; the CLI, the API, the database and the scheduler are real.

``sys.modules["torch"] = None`` would not do: scipy takes any ``sys.modules["torch"]`` for torch
(``getattr(sys.modules["torch"], "Tensor")`` in its array-API check) and the CLI dies in scipy
with an AttributeError that no slim image shows.
"""

from __future__ import annotations

import importlib.abc
import inspect
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from services.backtest.app import build_app
from services.backtest.predictors.local import LocalPredictor
from services.backtest.settings import BacktestSettings
from services.common.db.migrate import upgrade
from services.common.errors import InvalidInput
from tests.backtest.conftest import START, seed_market, stored_runs

REPO_ROOT = Path(__file__).resolve().parents[2]
AUTH = {"Authorization": "Bearer test-token"}
PACKAGES = ("torch", "transformers", "peft")
EXPECTED = (
    "hsig: error: the local predictor scores in-process and needs torch and transformers (the GPU "
    "image's packages); torch and transformers are not installed here: use kind 'service' to "
    "score through the inference service"
)


class NotInstalled(importlib.abc.MetaPathFinder):
    """Test double for a host without ``names``: importing them, or a submodule, finds nothing."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> None:
        if fullname.partition(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None


# The CLI entry point (services.pipeline.cli:main, what the `hsig` script calls) with the packages hidden
# before anything is imported: the slim image's situation, in the venv that has them. The finder's
# own source goes into the program, so nothing else is imported before it is in place.
SLIM_HSIG = (
    "import importlib.abc\n"
    "import sys\n"
    f"{inspect.getsource(NotInstalled)}\n"
    f"sys.meta_path.insert(0, NotInstalled({PACKAGES!r}))\n"
    "from services.pipeline.cli import main\n"
    "sys.argv = ['hsig', *sys.argv[1:]]\n"
    "main()\n"
)


def _hide(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """Hide ``names`` in this process until the test ends (monkeypatch undoes every step)."""
    monkeypatch.setattr(sys, "meta_path", [NotInstalled(names), *sys.meta_path])
    for name in names:  # already imported by an earlier test: find_spec would answer from here
        monkeypatch.delitem(sys.modules, name, raising=False)


def test_the_cli_says_what_the_local_predictor_needs_in_one_line_and_exits_2(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hsig.db'}"
    upgrade(url)
    seed_market(url)  # rows exist: the refusal is about the packages, not about missing data
    env = {
        **os.environ,
        "HSIG_DATA_DIR": str(tmp_path / "var"),
        "HSIG_DATABASE_URL": url,
        "HSIG_SCHEDULE_CRON": "off",
        "HSIG_LOG_LEVEL": "WARNING",  # info lines would share stderr with the error line
    }
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            SLIM_HSIG,
            "backtest",
            "run",
            "--baseline",
            "none",
            "--local-model",
            "any/model",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [EXPECTED]
    assert result.stdout == ""


@pytest.fixture
def client(backtest_settings: BacktestSettings, market: dict) -> Iterator[TestClient]:
    with TestClient(build_app(backtest_settings)) as test_client:
        yield test_client


def test_the_api_answers_400_with_the_message_and_stores_no_run(
    client: TestClient, backtest_settings: BacktestSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    _hide(monkeypatch, *PACKAGES)
    body = {
        "start": (START + timedelta(days=5)).isoformat(),
        "predictors": [{"kind": "baseline", "name": "majority"}, {"kind": "local", "model": "any/model"}],
    }
    answer = client.post("/v1/backtests", json=body, headers=AUTH)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["message"] == EXPECTED.removeprefix("hsig: error: ")
    assert error["param"] == "kind"
    assert stored_runs(backtest_settings.resolved_database_url) == []


def test_peft_is_needed_for_an_adapter_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _hide(monkeypatch, "peft")
    full = tmp_path / "full"
    full.mkdir()
    (full / "config.json").write_text("{}")  # a full fine-tune: transformers loads it alone
    LocalPredictor("full", "any/model", str(full))
    LocalPredictor("base", "any/model")
    with pytest.raises(InvalidInput, match=r"needs torch, transformers and peft .*; peft is not installed"):
        LocalPredictor("lora", "any/model", str(tmp_path / "lora"))


def test_nothing_is_refused_where_the_packages_are_installed() -> None:
    assert LocalPredictor("base", "any/model").kind == "local"
