"""Bad input gets a clear 4xx, never a 5xx; a burst past capacity gets 503s, then answers again."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.inference.conftest import Stack

pytestmark = pytest.mark.slow

ITEM = {"headline": "Bitcoin slides", "published_at": "2020-02-01T10:00:00Z"}


def test_malformed_body_is_a_422_naming_the_field(inference_stack: Stack) -> None:
    with inference_stack.client() as client:
        no_time = client.post("/v1/predict", json={"items": [{"headline": "x"}]})
        naive = client.post("/v1/predict", json={"items": [{**ITEM, "published_at": "2020-02-01T10:00:00"}]})
        not_json = client.post("/v1/predict", content=b"{", headers={"content-type": "application/json"})
    assert no_time.status_code == 422 and no_time.json()["error"]["param"] == "items.0.published_at"
    assert naive.status_code == 422 and "published_at" in naive.json()["error"]["param"]
    assert not_json.status_code == 422


def test_limits_on_text_and_batch_size(inference_stack: Stack) -> None:
    limit = inference_stack.settings.max_batch_items
    with inference_stack.client() as client:
        too_many = client.post("/v1/predict", json={"items": [ITEM] * (limit + 1)})
        too_long = client.post("/v1/predict", json={"items": [{**ITEM, "headline": "x" * 1001}]})
        blank = client.post("/v1/predict", json={"items": [{**ITEM, "headline": "   "}]})
        far_past = client.post(
            "/v1/predict", json={"items": [{**ITEM, "published_at": "0001-01-01T00:00:00+05:00"}]}
        )
    assert too_many.status_code == 422 and too_many.json()["error"]["param"] == "items"
    assert str(limit) in too_many.json()["error"]["message"]
    assert too_long.status_code == 422 and too_long.json()["error"]["param"] == "items.0.headline"
    assert blank.status_code == 422
    assert far_past.status_code == 400


def test_unknown_adapter_is_a_404_naming_the_served_ones(inference_stack: Stack) -> None:
    with inference_stack.client() as client:
        response = client.post(
            "/v1/predict", json={"items": [ITEM, {**ITEM, "adapter": "missing"}], "adapter": "alpha"}
        )
    assert response.status_code == 404
    message = response.json()["error"]["message"]
    assert "missing" in message and "alpha" in message and "beta" in message


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_property_based_inputs_never_give_a_5xx(inference_stack: Stack, mode: str) -> None:
    """schemathesis over the live OpenAPI schema: valid and invalid requests all get answers below 500."""
    import schemathesis

    schema = schemathesis.openapi.from_url(f"{inference_stack.base_url}/openapi.json")
    generation_mode = schemathesis.GenerationMode(mode)
    failures: list[str] = []
    operations = [
        ("/v1/predict", "POST"),
        ("/v1/completions", "POST"),
        ("/v1/chat/completions", "POST"),
        ("/v1/adapters/{name}/load", "POST"),
        ("/v1/adapters/{name}", "DELETE"),
    ]
    for path, method in operations:
        _fuzz(inference_stack, schema[path][method], generation_mode, failures)
    assert not failures, failures[:5]


def _fuzz(stack: Stack, operation: object, mode: object, failures: list[str]) -> None:
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    path, method = operation.path, operation.method.upper()  # type: ignore[attr-defined]
    headers = {"Authorization": "Bearer test-token"} if "{name}" in path else None

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(case=operation.as_strategy(mode))  # type: ignore[attr-defined]
    def check(case: schemathesis.Case) -> None:
        if headers and (case.path_parameters or {}).get("name") in {"alpha", "beta", "gamma", "hate"}:
            return  # never unload the adapters other tests use
        response = case.call(base_url=stack.base_url, headers=headers, timeout=120)
        if response.status_code >= 500:
            failures.append(
                f"{method} {path} -> {response.status_code} {response.text[:200]} body={case.body!r:.200}"
            )

    check()


def test_a_burst_past_capacity_gets_503s_and_the_service_answers_again(inference_stack: Stack) -> None:
    limit = inference_stack.settings.max_in_flight
    body = {"items": [ITEM] * 4, "adapter": "alpha", "explain": True}

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=inference_stack.base_url, timeout=120) as client:
            return await asyncio.gather(*(client.post("/v1/predict", json=body) for _ in range(limit * 5)))

    responses = asyncio.run(burst())
    codes = [response.status_code for response in responses]
    refused = [response for response in responses if response.status_code == 503]
    assert refused, codes
    assert codes.count(200) >= 1 and set(codes) <= {200, 503}, codes
    for response in refused:
        assert response.headers["Retry-After"] == "1"
        assert response.json()["error"]["type"] == "overloaded_error"
    with inference_stack.client() as client:
        after = client.post("/v1/predict", json={"items": [ITEM], "adapter": "alpha"})
    assert after.status_code == 200
