"""Adapters published, reloaded and unloaded while the service runs: no restart."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import update

from services.common.db import session_scope
from services.common.db.models import Adapter
from tests.inference.conftest import Stack
from tests.support.adapters import publish_lora
from tests.support.waits import wait_for

pytestmark = pytest.mark.slow

ITEM = {"headline": "Bitcoin rallies past 10,000 dollars", "published_at": "2020-02-01T10:00:00Z"}


def _p_increase(stack: Stack, adapter: str) -> float:
    with stack.client() as client:
        response = client.post("/v1/predict", json={"items": [ITEM], "adapter": adapter})
    assert response.status_code == 200, response.text
    return response.json()["predictions"][0]["p_increase"]


def _status(stack: Stack, name: str) -> str | None:
    with stack.client() as client:
        rows = client.get("/v1/adapters").json()["adapters"]
    return next((row["status"] for row in rows if row["name"] == name), None)


def test_adapters_lists_manifest_fields_and_status(inference_stack: Stack) -> None:
    with inference_stack.client() as client:
        rows = {row["name"]: row for row in client.get("/v1/adapters").json()["adapters"]}
    assert rows["alpha"]["status"] == "served"
    assert rows["alpha"]["method"] == "lora" and rows["alpha"]["task"] == "btc-trend"
    assert rows["alpha"]["lora"]["r"] == 8 and rows["alpha"]["source"] == "database"
    assert rows["gamma"]["source"] == "volume"
    assert len({row["engine_id"] for row in rows.values()}) == len(rows)  # one engine id per adapter


def test_load_endpoint_serves_a_newly_published_adapter(inference_stack: Stack) -> None:
    publish_lora(
        inference_stack.model_dir,
        inference_stack.adapters_path,
        "fresh",
        seed=11,
        database_url=inference_stack.database_url,
    )
    with inference_stack.client() as client:
        assert client.post("/v1/adapters/fresh/load").status_code == 401  # auth required
        bad = client.post("/v1/adapters/fresh/load", headers={"Authorization": "Bearer wrong"})
        assert bad.status_code == 403
        response = client.post("/v1/adapters/fresh/load", headers=inference_stack.auth)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "served"
    assert abs(_p_increase(inference_stack, "fresh") - _p_increase(inference_stack, "base")) > 1e-4


def test_registry_poll_serves_a_published_adapter_without_being_told(inference_stack: Stack) -> None:
    publish_lora(
        inference_stack.model_dir,
        inference_stack.adapters_path,
        "polled",
        seed=12,
        database_url=inference_stack.database_url,
    )
    assert wait_for(lambda: _status(inference_stack, "polled") == "served")
    assert 0.0 < _p_increase(inference_stack, "polled") < 1.0


def test_new_version_replaces_the_old_under_the_same_name(inference_stack: Stack) -> None:
    stack = inference_stack
    publish_lora(stack.model_dir, stack.adapters_path, "hot", seed=21, database_url=stack.database_url)
    with stack.client() as client:
        assert client.post("/v1/adapters/hot/load", headers=stack.auth).status_code == 200
    before = _p_increase(stack, "hot")
    publish_lora(
        stack.model_dir, stack.adapters_path, "hot", seed=22, database_url=stack.database_url, version=2
    )
    with stack.client() as client:
        reloaded = client.post("/v1/adapters/hot/load", headers=stack.auth).json()
    assert reloaded["version"] == 2
    after = _p_increase(stack, "hot")
    assert abs(after - before) > 1e-4  # new weights, so a new engine id, not vLLM's cached v1


def test_unload_stops_serving_until_loaded_again(inference_stack: Stack) -> None:
    stack = inference_stack
    publish_lora(stack.model_dir, stack.adapters_path, "brief", seed=31, database_url=stack.database_url)
    with stack.client() as client:
        assert client.post("/v1/adapters/brief/load", headers=stack.auth).status_code == 200
        expected = _p_increase(stack, "brief")
        assert client.delete("/v1/adapters/brief").status_code == 401
        assert client.delete("/v1/adapters/brief", headers=stack.auth).status_code == 204
        gone = client.post("/v1/predict", json={"items": [ITEM], "adapter": "brief"})
        assert gone.status_code == 404
        time.sleep(2.5)  # two registry polls: an unloaded adapter stays unloaded
        assert _status(stack, "brief") == "unloaded"
        assert client.delete("/v1/adapters/brief", headers=stack.auth).status_code == 404
        assert client.post("/v1/adapters/brief/load", headers=stack.auth).status_code == 200
    assert _p_increase(stack, "brief") == pytest.approx(expected, abs=1e-6)


def test_deleted_in_the_registry_stops_being_served(inference_stack: Stack) -> None:
    stack = inference_stack
    publish_lora(stack.model_dir, stack.adapters_path, "retired", seed=41, database_url=stack.database_url)
    with stack.client() as client:
        assert client.post("/v1/adapters/retired/load", headers=stack.auth).status_code == 200
    with session_scope(stack.database_url) as session:
        session.execute(update(Adapter).where(Adapter.name == "retired").values(status="deleted"))
    assert wait_for(lambda: _status(stack, "retired") is None)
    with stack.client() as client:
        assert client.post("/v1/predict", json={"items": [ITEM], "adapter": "retired"}).status_code == 404


def test_load_refuses_unknown_and_unservable_adapters(inference_stack: Stack) -> None:
    stack = inference_stack
    publish_lora(
        stack.model_dir, stack.adapters_path, "toowide", seed=51, database_url=stack.database_url, rank=32
    )
    with stack.client() as client:
        missing = client.post("/v1/adapters/nothing-here/load", headers=stack.auth)
        wide = client.post("/v1/adapters/toowide/load", headers=stack.auth)
        bad_name = client.post("/v1/adapters/..%2Fetc/load", headers=stack.auth)
    assert missing.status_code == 404 and "alpha" in missing.json()["error"]["message"]
    assert wide.status_code == 409 and "rank 32" in wide.json()["error"]["message"]
    assert bad_name.status_code in (404, 422)


def test_an_adapter_vllm_cannot_load_is_reported_and_the_rest_keep_serving(inference_stack: Stack) -> None:
    stack = inference_stack
    path = publish_lora(
        stack.model_dir, stack.adapters_path, "corrupt", seed=61, database_url=stack.database_url
    )
    (path / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    assert wait_for(lambda: _status(stack, "corrupt") == "failed")
    with stack.client() as client:
        rows = {row["name"]: row for row in client.get("/v1/adapters").json()["adapters"]}
        load = client.post("/v1/adapters/corrupt/load", headers=stack.auth)
    assert rows["corrupt"]["reason"]
    assert load.status_code == 409 and "corrupt" in load.json()["error"]["message"]
    assert 0.0 < _p_increase(stack, "alpha") < 1.0  # the engine and the other adapters are unharmed
