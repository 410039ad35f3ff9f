"""The app every service is built from: health, readiness, auth, one error shape."""

from fastapi import APIRouter
from fastapi.testclient import TestClient
from pydantic import BaseModel

from services.common.auth import Authorized
from services.common.errors import InvalidInput, Overloaded
from services.common.http import create_app
from services.common.settings import CommonSettings


class Body(BaseModel):
    count: int


def _app(db_url: str) -> TestClient:
    router = APIRouter()

    @router.post("/v1/things", dependencies=[Authorized])
    def make_thing(body: Body) -> dict[str, int]:
        if body.count < 0:
            raise InvalidInput("count must be >= 0", param="count")
        if body.count > 100:
            raise Overloaded("too busy", retry_after=2.4)
        return {"count": body.count}

    settings = CommonSettings(database_url=db_url, api_token="s3cret")
    return TestClient(create_app("demo", settings, [router]))


def test_health_ready_metrics(db_url: str) -> None:
    with _app(db_url) as client:
        assert client.get("/healthz").json() == {"status": "ok", "service": "demo"}
        assert client.get("/readyz").status_code == 200
        client.get("/healthz")
        body = client.get("/metrics").text
        assert 'hsig_http_requests_total{method="GET",route="/healthz",service="demo",status="200"}' in body


def test_readyz_reports_unreachable_database() -> None:
    settings = CommonSettings(database_url="postgresql+psycopg://nobody@127.0.0.1:1/none", api_token="x")
    with TestClient(create_app("demo", settings)) as client:
        response = client.get("/readyz")
        assert response.status_code == 503
        assert "database_ready" in response.json()["failures"][0]


def test_auth_required_and_checked(db_url: str) -> None:
    with _app(db_url) as client:
        assert client.post("/v1/things", json={"count": 1}).status_code == 401
        wrong = client.post("/v1/things", json={"count": 1}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 403
        assert wrong.json()["error"]["message"] == "invalid bearer token"
        ok = client.post("/v1/things", json={"count": 1}, headers={"Authorization": "Bearer s3cret"})
        assert ok.json() == {"count": 1}


def test_errors_share_one_shape(db_url: str) -> None:
    auth = {"Authorization": "Bearer s3cret"}
    with _app(db_url) as client:
        bad = client.post("/v1/things", json={"count": -1}, headers=auth)
        assert bad.status_code == 400
        assert bad.json() == {
            "error": {
                "message": "count must be >= 0",
                "type": "invalid_request_error",
                "param": "count",
                "code": 400,
            }
        }
        malformed = client.post("/v1/things", json={"count": "many"}, headers=auth)
        assert malformed.status_code == 422
        assert malformed.json()["error"]["param"] == "count"
        busy = client.post("/v1/things", json={"count": 101}, headers=auth)
        assert busy.status_code == 503
        assert busy.headers["Retry-After"] == "2"


def test_a_fresh_database_is_migrated_as_the_app_starts(tmp_path) -> None:
    from sqlalchemy import inspect

    from services.common.db import get_engine

    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    with TestClient(create_app("demo", CommonSettings(database_url=url, api_token="x"))) as client:
        assert client.get("/readyz").status_code == 200
    assert {"headlines", "labelled_rows", "adapters", "alembic_version"} <= set(
        inspect(get_engine(url)).get_table_names()
    )


def test_readyz_answers_while_a_database_attempt_hangs(tmp_path) -> None:
    """A connect to an unreachable host can hang for its whole timeout: /readyz must not wait."""
    import threading

    entered, release = threading.Event(), threading.Event()
    calls = []

    def hook(_app) -> None:  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("not yet")  # start-up fails: the background retry takes over
        entered.set()
        release.wait(30)  # the retry hangs, holding its attempt

    settings = CommonSettings(database_url=f"sqlite:///{tmp_path / 'db.sqlite'}", api_token="x")
    with TestClient(create_app("demo", settings, on_database_ready=[hook])) as client:
        assert entered.wait(10), "the background retry never ran"
        answers: list[int] = []
        probe = threading.Thread(target=lambda: answers.append(client.get("/readyz").status_code))
        probe.start()
        probe.join(10)
        hung = probe.is_alive()
        release.set()
        probe.join()
        assert not hung and answers == [503]
        assert client.get("/readyz").status_code == 200  # the attempt finished: ready
