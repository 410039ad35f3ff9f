"""Data-parallel training under a real launcher (torchrun) with two CPU processes (gloo).

Two processes train one LoRA job together, each on half of every batch; exactly one adapter
is published, by the main rank, and it learned the planted rule like a single process does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from services.common.db import session_scope
from services.common.db.migrate import upgrade
from services.common.db.models import Adapter
from services.common.processes import free_port
from services.trainer.distributed import Parallel
from tests.conftest import REPO_ROOT
from tests.trainer.conftest import lora_config

pytestmark = pytest.mark.slow


def test_single_process_shares_nothing() -> None:
    parallel = Parallel()
    assert (parallel.world, parallel.rank, parallel.is_main) == (1, 0, True)
    assert parallel.shard([5, 6, 7]) == [5, 6, 7]


def test_two_processes_train_one_adapter_and_publish_it_once(
    planted_file: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    data_dir = tmp_path / "var"
    database_url = f"sqlite:///{data_dir / 'db.sqlite'}"
    data_dir.mkdir()
    upgrade(database_url)
    config = lora_config(planted_file, tiny_model_dir, name="ddp-lora")
    config_path = tmp_path / "job.json"
    config_path.write_text(config.model_dump_json())
    # torchrun is the launcher `accelerate launch --multi_gpu` uses; on CPU it gives gloo
    # processes that accelerate's Accelerator picks up as MULTI_CPU.
    torchrun = Path(sys.executable).parent / "torchrun"
    result = subprocess.run(
        [
            str(torchrun),
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port()),
            "-m",
            "services.cli",
            "train",
            "run",
            str(config_path),
        ],
        env={
            **os.environ,
            "HSIG_DATA_DIR": str(data_dir),
            "HSIG_DATABASE_URL": database_url,
            "HSIG_INFERENCE_URL": "",
            "OMP_NUM_THREADS": "1",
            "ACCELERATE_USE_CPU": "1",
        },
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("published ddp-lora v1") == 1, result.stdout
    with session_scope(database_url) as session:
        assert (
            session.scalar(select(func.count()).select_from(Adapter).where(Adapter.name == "ddp-lora")) == 1
        )
        adapter = session.scalars(select(Adapter).where(Adapter.name == "ddp-lora")).one()
    extra = json.loads((Path(adapter.path) / "manifest.json").read_text())["extra"]
    assert extra["processes"] == 2  # really data-parallel, not one process run twice
    assert extra["evaluation"]["accuracy"] >= 0.9, extra["evaluation"]
