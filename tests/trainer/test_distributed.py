"""Training one job across processes under a real launcher (torchrun), two CPU processes over
gloo: data-parallel (DDP) and sharded (FSDP2, as accelerate's FSDP launch config asks).

Exactly one adapter (or model) is published, by the main rank. What it published is scored
again in a fresh single process: under FSDP each rank holds half of every weight, so a
publish that saved the main rank's shards, or the weights before training, would fail here.
A launch killed part-way resumes from its checkpoint when relaunched, to the same weights.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from services.common.db import session_scope
from services.common.db.migrate import upgrade
from services.common.db.models import Adapter
from services.common.errors import InvalidInput
from services.common.schemas import AdapterManifest
from services.trainer.distributed import Parallel, accelerate_launch_env, requested_strategy
from tests.conftest import REPO_ROOT
from tests.support.net import free_port
from tests.trainer.conftest import FULL_OPTIM, LORA_OPTIM, lora_config
from tests.trainer.test_training import published_accuracy

pytestmark = pytest.mark.slow


# torchrun is the launcher `accelerate launch` runs for these configs; on CPU it gives gloo.
LAUNCHES = {
    "ddp": {},
    "fsdp": accelerate_launch_env(REPO_ROOT / "deploy" / "accelerate" / "fsdp.yaml"),
}


def test_single_process_shares_nothing() -> None:
    parallel = Parallel()
    assert (parallel.strategy, parallel.world, parallel.rank, parallel.is_main) == ("single", 1, 0, True)
    assert parallel.shard([5, 6, 7]) == [5, 6, 7]


def test_the_shipped_fsdp_config_asks_for_what_the_trainer_reads() -> None:
    env = LAUNCHES["fsdp"]
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
    assert env["FSDP_TRANSFORMER_CLS_TO_WRAP"] == "LlamaDecoderLayer"
    assert env["FSDP_RESHARD_AFTER_FORWARD"] == "true"


def test_the_launch_environment_picks_the_strategy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WORLD_SIZE", "ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"):
        monkeypatch.delenv(name, raising=False)
    assert requested_strategy() == "single"
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert requested_strategy() == "ddp"
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert requested_strategy() == "fsdp"
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(InvalidInput, match="DeepSpeed is not supported"):
        requested_strategy()


def test_a_deepspeed_launch_is_refused_in_one_line(
    planted_file: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    data_dir = tmp_path / "var"
    config_path = tmp_path / "job.json"
    config_path.write_text(lora_config(planted_file, tiny_model_dir, name="ds").model_dump_json())
    result = subprocess.run(
        [sys.executable, "-m", "services.pipeline.cli", "train", "run", str(config_path)],
        env={**os.environ, "ACCELERATE_USE_DEEPSPEED": "true", "HSIG_DATA_DIR": str(data_dir)},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("hsig: error:") and "DeepSpeed is not supported" in last
    assert not (data_dir / "adapters").exists() or not any((data_dir / "adapters").iterdir())


def test_qlora_and_undersized_batches_are_refused_before_loading() -> None:
    sharded = Parallel(strategy="fsdp", world=4)
    with pytest.raises(InvalidInput, match="QLoRA cannot be sharded"):
        sharded.check("qlora", 8)
    with pytest.raises(InvalidInput, match="smaller than the 4 processes"):
        sharded.check("lora", 2)
    sharded.check("lora", 8)


def _launch_command(
    strategy: str, config_path: Path, data_dir: Path, database_url: str
) -> tuple[list[str], dict[str, str]]:
    torchrun = Path(sys.executable).parent / "torchrun"
    command = [str(torchrun), "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
    command += [
        "--master_port",
        str(free_port()),
        "-m",
        "services.pipeline.cli",
        "train",
        "run",
        str(config_path),
    ]
    env = {
        **os.environ,
        **LAUNCHES[strategy],
        "HSIG_DATA_DIR": str(data_dir),
        "HSIG_DATABASE_URL": database_url,
        "HSIG_INFERENCE_URL": "",
        "OMP_NUM_THREADS": "1",
        "ACCELERATE_USE_CPU": "1",
    }
    return command, env


def _launch(
    strategy: str, config_path: Path, data_dir: Path, database_url: str
) -> subprocess.CompletedProcess:
    command, env = _launch_command(strategy, config_path, data_dir, database_url)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)


@pytest.mark.parametrize(
    ("strategy", "method"), [("ddp", "lora"), ("fsdp", "lora"), ("fsdp", "full")], ids=str
)
def test_two_processes_train_one_job_and_publish_it_once(
    strategy: str, method: str, planted_file: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    data_dir = tmp_path / "var"
    database_url = f"sqlite:///{data_dir / 'db.sqlite'}"
    data_dir.mkdir()
    upgrade(database_url)
    name = f"{strategy}-{method}"
    overrides = {"method": method}
    if method == "full":
        overrides["optim"] = FULL_OPTIM
    config = lora_config(planted_file, tiny_model_dir, name=name, **overrides)
    config_path = tmp_path / "job.json"
    config_path.write_text(config.model_dump_json())

    result = _launch(strategy, config_path, data_dir, database_url)

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count(f"published {name} v1") == 1, result.stdout
    with session_scope(database_url) as session:
        assert session.scalar(select(func.count()).select_from(Adapter).where(Adapter.name == name)) == 1
        adapter = session.scalars(select(Adapter).where(Adapter.name == name)).one()
    manifest = AdapterManifest.model_validate_json((Path(adapter.path) / "manifest.json").read_text())
    assert manifest.extra["processes"] == 2  # really two ranks, not one process run twice
    assert manifest.extra["parallelism"] == strategy
    assert manifest.extra["evaluation"]["accuracy"] >= 0.9, manifest.extra["evaluation"]
    if method == "full":
        assert manifest.trainable_parameters == manifest.total_parameters
    # The published weights, loaded in this process, know the rule as well as the ranks did.
    assert published_accuracy(Path(adapter.path), tiny_model_dir, planted_file, manifest) >= 0.9
    saved = json.loads((Path(adapter.path) / "training_config.json").read_text())
    assert saved["method"] == method


def test_a_finished_rank_ends_with_status_0_after_its_output_and_threads() -> None:
    """end_finished_rank ends the process without the interpreter's finalisation: what the rank
    wrote (block-buffered into a pipe) and what a thread of its was still doing come out first."""
    script = (
        "import sys, threading, time\n"
        "from services.trainer.distributed import end_finished_rank\n"
        "threading.Thread(target=lambda: (time.sleep(0.5), sys.stdout.write('joined'))).start()\n"
        "sys.stdout.write('written ')\n"
        "end_finished_rank()\n"
        "sys.stdout.write(' and past the end')\n"
    )
    env = {name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "written joined"


def test_a_rank_that_fails_after_joining_the_group_fails_the_launch(
    planted_file: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Only a rank that finished its job ends with status 0: one that fails once in the process
    group (a batch smaller than the process count, refused on every rank) fails the launch."""
    data_dir = tmp_path / "var"
    database_url = f"sqlite:///{data_dir / 'db.sqlite'}"
    data_dir.mkdir()
    upgrade(database_url)
    config = lora_config(
        planted_file, tiny_model_dir, name="undersized", optim={**LORA_OPTIM, "batch_size": 1}
    )
    config_path = tmp_path / "undersized.json"
    config_path.write_text(config.model_dump_json())

    result = _launch("ddp", config_path, data_dir, database_url)

    assert result.returncode != 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "batch_size 1 is smaller than the 2 processes" in result.stderr, result.stderr[-3000:]
    assert not (data_dir / "adapters" / "undersized").exists()


RESUME_STEPS, RESUME_EVERY = 120, 20


def _checkpoint_step(path: Path) -> int:
    import torch

    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["step"])
    except (FileNotFoundError, RuntimeError, EOFError):  # not written yet (it is renamed into place)
        return 0


def _kill_launch(launcher: subprocess.Popen) -> None:
    """SIGKILL torchrun and its ranks at once, as a lost machine would. torchrun starts each
    rank in a session of its own, so killing its process group alone would leave them running."""
    import psutil

    ranks = psutil.Process(launcher.pid).children(recursive=True)
    for process in [psutil.Process(launcher.pid), *ranks]:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    launcher.wait()
    psutil.wait_procs(ranks, timeout=30)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_killed_two_process_job_resumes_from_its_checkpoint(
    strategy: str, planted_file: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    data_dir = tmp_path / "var"
    database_url = f"sqlite:///{data_dir / 'db.sqlite'}"
    data_dir.mkdir()
    upgrade(database_url)
    optim = {
        "max_steps": RESUME_STEPS,
        "batch_size": 8,
        "learning_rate": 5e-3,
        "checkpoint_every": RESUME_EVERY,
    }
    config = lora_config(planted_file, tiny_model_dir, name="resumed", optim=optim, evaluate_accuracy=False)
    config_path = tmp_path / "resumed.json"
    config_path.write_text(config.model_dump_json())
    checkpoint = data_dir / "checkpoints" / "cli-resumed" / "checkpoint.pt"

    # Kill the whole launch (torchrun and both ranks) once two checkpoints are written, at a
    # lower priority so that on a busy machine the kill still lands part-way.
    command, env = _launch_command(strategy, config_path, data_dir, database_url)
    doomed = subprocess.Popen(
        command, env=env, cwd=REPO_ROOT, preexec_fn=lambda: os.nice(10),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while _checkpoint_step(checkpoint) < 2 * RESUME_EVERY and doomed.poll() is None:
            assert time.monotonic() < deadline, "no second checkpoint"
            time.sleep(0.05)
    finally:
        _kill_launch(doomed)
    killed_at = _checkpoint_step(checkpoint)
    assert 2 * RESUME_EVERY <= killed_at < RESUME_STEPS, "the kill did not land part-way"
    assert not (data_dir / "adapters" / "resumed").exists()  # nothing half-published

    result = _launch(strategy, config_path, data_dir, database_url)  # the same command again
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    manifest = json.loads((data_dir / "adapters" / "resumed" / "v1" / "manifest.json").read_text())
    resumed_from = manifest["extra"]["resumed_from_step"]
    assert resumed_from >= 2 * RESUME_EVERY and resumed_from % RESUME_EVERY == 0
    assert manifest["extra"]["steps"] == RESUME_STEPS and manifest["extra"]["parallelism"] == strategy
    assert not checkpoint.parent.exists()  # cleaned up once published

    # Resuming changed nothing: an uninterrupted launch of the same job gives the same weights.
    straight_path = tmp_path / "straight.json"
    straight_path.write_text(config.model_copy(update={"name": "straight"}).model_dump_json())
    assert _launch(strategy, straight_path, data_dir, database_url).returncode == 0
    resumed = load_file(data_dir / "adapters" / "resumed" / "v1" / "adapter_model.safetensors")
    straight = load_file(data_dir / "adapters" / "straight" / "v1" / "adapter_model.safetensors")
    assert resumed.keys() == straight.keys()
    for name in resumed:
        assert (resumed[name] - straight[name]).abs().max() <= 1e-6, name
