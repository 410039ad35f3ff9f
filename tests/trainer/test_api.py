"""The trainer service end to end: a real server process with its worker, real runner
processes, both databases. The inference service is replaced by a stand-in HTTP server
(``InferenceStandIn``) that records the load notifications the trainer sends it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO_ROOT
from tests.support.net import free_port
from tests.trainer.conftest import lora_config

pytestmark = pytest.mark.slow
AUTH = {"Authorization": "Bearer test-token"}


class InferenceStandIn:
    """Test double for the inference service's POST /v1/adapters/{name}/load (not running here)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None]] = []
        calls = self.calls

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                calls.append((self.path, self.headers.get("Authorization")))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"loaded": true}')

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def trainer_service(
    db_url: str, tmp_path: Path, tiny_model_dir: Path
) -> Iterator[tuple[str, InferenceStandIn]]:
    inference = InferenceStandIn()
    port = free_port()
    env = {
        **os.environ,
        "HSIG_DATABASE_URL": db_url,
        "HSIG_DATA_DIR": str(tmp_path / "var"),
        "HSIG_API_TOKEN": "test-token",
        "HSIG_WORKER_POLL_SECONDS": "0.2",
        "HSIG_HEARTBEAT_SECONDS": "0.1",
        "HSIG_INFERENCE_URL": inference.url,
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "services.pipeline.cli", "train", "serve", "--port", str(port)],
        cwd=REPO_ROOT,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and server.poll() is None, "trainer service did not start"
            time.sleep(0.2)
        yield base, inference
    finally:
        server.terminate()
        server.wait(timeout=60)
        inference.close()


def poll(base: str, job_id: int, done: set[str], timeout: float = 180) -> tuple[dict, set[str]]:
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = httpx.get(f"{base}/v1/jobs/{job_id}", timeout=5).json()
        seen.add(job["state"])
        if job["state"] in done:
            return job, seen
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not reach {done}: {job}")


def test_jobs_run_report_progress_cancel_and_publish(
    trainer_service: tuple[str, InferenceStandIn], planted_file: Path, tiny_model_dir: Path
) -> None:
    base, inference = trainer_service
    config = json.loads(lora_config(planted_file, tiny_model_dir, name="api-lora").model_dump_json())
    assert httpx.post(f"{base}/v1/jobs", json=config).status_code == 401
    assert (
        httpx.post(f"{base}/v1/jobs", json=config, headers={"Authorization": "Bearer nope"}).status_code
        == 403
    )

    bad = {**config, "lora": {**config["lora"], "r": 4096}}
    response = httpx.post(f"{base}/v1/jobs", json=bad, headers=AUTH, timeout=60)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "lora.r" and "4096" in response.json()["error"]["message"]
    assert httpx.post(f"{base}/v1/jobs", json={**config, "epochs": 3}, headers=AUTH).status_code == 422

    response = httpx.post(f"{base}/v1/jobs", json=config, headers=AUTH, timeout=60)
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["state"] == "queued" and job["total_steps"] == 75 and job["adapter_name"] == "api-lora"
    finished, seen = poll(base, job["id"], {"succeeded", "failed"})
    assert finished["state"] == "succeeded", finished["error"]
    assert (
        "running" in seen
        and finished["step"] == finished["total_steps"] == 75
        and finished["progress"] == 1.0
    )
    assert finished["metrics"]["evaluation"]["accuracy"] >= 0.9
    assert Path(finished["metrics"]["path"], "adapter_model.safetensors").is_file()
    assert inference.calls == [("/v1/adapters/api-lora/load?wait=true", "Bearer test-token")]

    assert httpx.post(f"{base}/v1/jobs/{job['id']}/cancel", headers=AUTH).status_code == 409
    missing = httpx.get(f"{base}/v1/jobs/999999")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"

    long_job = {**config, "name": "api-long", "optim": {**config["optim"], "max_steps": 20000}}
    long_id = httpx.post(f"{base}/v1/jobs", json=long_job, headers=AUTH, timeout=60).json()["id"]
    deadline = time.monotonic() + 120
    while (running := httpx.get(f"{base}/v1/jobs/{long_id}").json())["step"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert running["state"] == "running" and running["eta_seconds"] > 0 and running["loss"] is not None
    assert httpx.post(f"{base}/v1/jobs/{long_id}/cancel", headers=AUTH).json()["state"] == "cancelling"
    cancelled, _ = poll(base, long_id, {"cancelled", "succeeded", "failed"})
    assert cancelled["state"] == "cancelled" and cancelled["step"] < 20000
    listed = httpx.get(f"{base}/v1/jobs").json()["jobs"]
    assert [(j["id"], j["state"]) for j in listed] == [(long_id, "cancelled"), (job["id"], "succeeded")]
    assert len(inference.calls) == 1  # nothing published for the cancelled job

    # the worker records a job's metrics once its runner process has exited: allow it a moment
    deadline = time.monotonic() + 30
    while 'outcome="cancelled"' not in (metrics := httpx.get(f"{base}/metrics").text):
        assert time.monotonic() < deadline, metrics
        time.sleep(0.2)
    assert 'hsig_trainer_job_duration_seconds_count{method="lora",outcome="succeeded"} 1.0' in metrics
    assert 'hsig_trainer_jobs_finished_total{outcome="cancelled"} 1.0' in metrics
    assert 'hsig_trainer_peak_memory_bytes{kind="cpu_peak_rss",method="lora"}' in metrics
    assert 'hsig_trainer_tokens_per_second{method="lora"}' in metrics
