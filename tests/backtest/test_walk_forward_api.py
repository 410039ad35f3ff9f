"""POST /v1/walk-forwards on the real backtest app (both dialects): bad plans are a 422 naming the
setting with nothing queued; a good one is queued, run by the pipeline's walk-forward worker
with the tiny model, and read back over GET (item state, progress, folds, pooled figures)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from services.backtest.settings import BacktestSettings
from services.common.walk_forward_plan import state_path
from services.common.walk_forward_queue import WALK_FORWARDS
from tests.backtest.conftest import WALK_FORWARD_PLAN
from tests.pipeline.conftest import stored_jobs

AUTH = {"Authorization": "Bearer test-token"}
GOOD = {"name": "wf-api", **WALK_FORWARD_PLAN}


# (changes to GOOD, the setting the 422 names, the largest k it reports: None when not a count)
BAD_PLANS = [
    ({"train_days": 20}, "train_days", 0),  # no fold fits: the rows span about 8 days
    ({"train_mode": "rolling", "train_days": 1 / 24, "k": 1}, "train_days", 0),  # 1 row: no training window
    ({"test_days": 1 / 48}, "test_days", None),  # 30 minutes, shorter than the 1h horizon
    ({"k": 10}, "k", 4),
    ({"step_days": 0.5}, "step_days", None),  # test windows would overlap
    ({"embargo_seconds": 60}, "embargo_seconds", None),  # shorter than the labels' span
]


def test_bad_plans_are_a_422_naming_the_setting_and_queue_nothing(
    wf_client: TestClient, wf_settings: BacktestSettings
) -> None:
    for change, param, largest in BAD_PLANS:
        answer = wf_client.post("/v1/walk-forwards", json={**GOOD, **change}, headers=AUTH)
        assert answer.status_code == 422, (change, answer.text)
        error = answer.json()["error"]
        assert error["param"] == param, (change, error)
        if largest is not None:
            assert f"(largest k that fits: {largest})" in error["message"], error
    answer = wf_client.post("/v1/walk-forwards", json={**GOOD, "methods": ["sgd"]}, headers=AUTH)
    assert answer.status_code == 422 and "methods" in answer.json()["error"]["param"]
    outside = wf_client.post("/v1/walk-forwards", json={**GOOD, "model": "/etc"}, headers=AUTH)
    assert outside.status_code == 400 and outside.json()["error"]["param"] == "model"
    assert wf_client.post("/v1/walk-forwards", json=GOOD).status_code == 401
    assert WALK_FORWARDS.list(wf_settings.resolved_database_url) == []
    assert not state_path(wf_settings.reports_path, "wf-api").exists()
    assert wf_client.get("/v1/walk-forwards").json() == []


def test_a_queued_walk_forward_is_run_by_the_worker_and_read_back(
    wf_client: TestClient, wf_settings: BacktestSettings
) -> None:
    from services.pipeline.walk_forward_worker import run_worker

    keyed = {**AUTH, "Idempotency-Key": "wf-api-1"}
    answer = wf_client.post("/v1/walk-forwards", json=GOOD, headers=keyed)
    assert answer.status_code == 202, answer.text
    queued = answer.json()
    assert queued["state"] == "queued" and queued["name"] == "wf-api" and queued["folds"] == []
    assert answer.headers["location"] == f"/v1/walk-forwards/{queued['id']}"

    again = wf_client.post("/v1/walk-forwards", json=GOOD, headers=keyed)  # a retried POST
    assert again.status_code == 202 and again.json()["id"] == queued["id"]
    assert again.headers["idempotent-replayed"] == "true"
    other = wf_client.post("/v1/walk-forwards", json={**GOOD, "k": 1}, headers=keyed)
    assert other.status_code == 409 and other.json()["error"]["param"] == "Idempotency-Key"
    twin = wf_client.post("/v1/walk-forwards", json=GOOD, headers=AUTH)  # the name is already queued
    assert twin.status_code == 409 and twin.json()["error"]["param"] == "name"
    assert len(WALK_FORWARDS.list(wf_settings.resolved_database_url)) == 1

    assert run_worker(wf_settings, once=True) == 1  # the pipeline floor's worker claims and runs it

    done = wf_client.get(f"/v1/walk-forwards/{queued['id']}").json()
    assert done["state"] == "succeeded", done
    assert done["attempts"] == 1 and done["error"] is None and "pooled" in done["progress"]
    assert [fold["state"] for fold in done["folds"]] == ["succeeded", "succeeded"]
    for fold in done["folds"]:
        assert fold["versions"]["lora"]["state"] == "succeeded"
        assert fold["versions"]["lora"]["adapter"] == f"wf-api-f{fold['fold']}-lora"
        assert "path" not in fold["versions"]["lora"]  # the volume's paths stay on the server
        report = wf_client.get(fold["backtest"]["json_url"])
        assert report.status_code == 200 and report.json()["data"]["rows"] == 24  # its own test day
    pooled = done["pooled"]
    assert pooled["folds_covered"] == [1, 2] and pooled["note"].startswith("covers folds 1, 2 of 2")
    assert pooled["rows"] == 48
    ic = pooled["information_coefficient"]
    assert [f["fold"] for f in ic["LoRA"]["folds"]] == [1, 2] and ic["LoRA"]["windows"] == pooled["windows"]
    assert ic["always_increase"]["unavailable"]  # a baseline gives no p(Increase)
    assert [item["id"] for item in wf_client.get("/v1/walk-forwards?state=succeeded").json()] == [
        queued["id"]
    ]
    assert wf_client.get("/v1/walk-forwards/999999").status_code == 404

    rerun = wf_client.post("/v1/walk-forwards", json=GOOD, headers=AUTH)  # finished: the name may resume
    assert rerun.status_code == 202
    assert run_worker(wf_settings, once=True) == 1  # every fold finished: nothing retrained, pooled again
    resumed = wf_client.get(f"/v1/walk-forwards/{rerun.json()['id']}").json()
    assert resumed["state"] == "succeeded" and resumed["pooled"]["folds_covered"] == [1, 2]
    assert len(stored_jobs(wf_settings.resolved_database_url)) == 2  # one training job per fold, ever


def test_a_walk_forward_the_worker_cannot_run_fails_with_the_reason_and_is_not_retried(
    wf_client: TestClient, wf_settings: BacktestSettings
) -> None:
    from services.pipeline.walk_forward_worker import run_worker

    answer = wf_client.post("/v1/walk-forwards", json=GOOD, headers=AUTH)
    assert answer.status_code == 202
    # The name's state file holds another walk-forward (started with other settings).
    path = state_path(wf_settings.reports_path, "wf-api")
    path.parent.mkdir(parents=True)
    path.write_text('{"id": "wf-api", "spec": {"k": 9}, "folds": []}')
    assert run_worker(wf_settings, once=True) == 1
    item = wf_client.get(f"/v1/walk-forwards/{answer.json()['id']}").json()
    assert item["state"] == "failed" and item["attempts"] == 1
    assert item["error"].startswith("Conflict: walk-forward wf-api was started with other settings")
    assert run_worker(wf_settings, once=True) == 0  # failed for good: nothing is claimed again
    assert stored_jobs(wf_settings.resolved_database_url) == []  # nothing was trained
