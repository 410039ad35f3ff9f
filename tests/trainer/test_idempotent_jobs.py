"""POST /v1/jobs with an Idempotency-Key queues one job however often it is repeated, on the
real trainer app (worker off, so the queue is what is looked at) and both databases."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi.testclient import TestClient

from services.trainer.app import build_app
from services.trainer.settings import TrainerSettings
from tests.trainer.conftest import lora_config

AUTH = {"Authorization": "Bearer test-token"}


def test_a_repeated_job_post_queues_one_job(
    trainer_settings: TrainerSettings, planted_file: Path, tiny_model_dir: Path
) -> None:
    settings = trainer_settings.model_copy(update={"worker_enabled": False})
    config = json.loads(lora_config(planted_file, tiny_model_dir, name="retried").model_dump_json())
    keyed = {**AUTH, "Idempotency-Key": "job-retry-1"}
    with TestClient(build_app(settings)) as client:
        first = client.post("/v1/jobs", json=config, headers=keyed)
        assert first.status_code == 201, first.text
        assert "idempotent-replayed" not in first.headers
        again = client.post("/v1/jobs", json=config, headers=keyed)
        assert again.status_code == 201 and again.json()["id"] == first.json()["id"]
        assert again.headers["idempotent-replayed"] == "true"
        other = client.post("/v1/jobs", json={**config, "name": "another"}, headers=keyed)
        assert other.status_code == 409 and "different request" in other.json()["error"]["message"]
        unkeyed = client.post("/v1/jobs", json=config, headers=AUTH)
        assert unkeyed.status_code == 201 and unkeyed.json()["id"] != first.json()["id"]
        malformed = client.post("/v1/jobs", json=config, headers={**AUTH, "Idempotency-Key": "x" * 200})
        assert malformed.status_code == 400
        jobs = client.get("/v1/jobs").json()["jobs"]
    assert sorted(job["id"] for job in jobs) == sorted([first.json()["id"], unkeyed.json()["id"]])
