"""Prometheus config, alert rules (with unit tests for every alert), the Grafana dashboard,
and the promise that every series they query is one some service really exports."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys

import pytest
import yaml

from tests.deploy.conftest import DEPLOY, REPO_ROOT

PROMETHEUS_DIR = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "headline-signal.json"
METRIC_MODULES = [
    "services.common.metrics",
    "services.ingest.metrics",
    "services.trainer.metrics",
    "services.inference.metrics",
    "services.backtest.metrics",
]
# Series the engines export themselves (vLLM through the inference /metrics mirror); their
# presence is checked against a live scrape in tests/test_end_to_end.py.
ENGINE_SERIES = {"vllm:num_requests_running", "vllm:num_requests_waiting"}
PROMQL_WORDS = {
    "sum", "rate", "increase", "histogram_quantile", "time", "by", "on", "ignoring", "group_left",
    "group_right", "and", "or", "unless", "without", "max", "min", "avg", "count", "le", "bool",
}  # fmt: skip


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)


def test_prometheus_config_is_valid(promtool: str) -> None:
    result = _run(promtool, "check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_are_valid_and_their_unit_tests_pass(promtool: str) -> None:
    check = _run(promtool, "check", "rules", str(PROMETHEUS_DIR / "alerts.yml"))
    assert check.returncode == 0, check.stdout + check.stderr
    unit = _run(promtool, "test", "rules", str(PROMETHEUS_DIR / "alerts_test.yml"))
    assert unit.returncode == 0, unit.stdout + unit.stderr


def _alerts() -> list[dict]:
    groups = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_every_alert_has_a_unit_test_that_fires_it() -> None:
    tests = yaml.safe_load((PROMETHEUS_DIR / "alerts_test.yml").read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert {rule["alert"] for rule in _alerts()} <= fired


def test_required_alerts_exist() -> None:
    names = {rule["alert"] for rule in _alerts()}
    assert {
        "IngestSourceStale",
        "IngestErrors",
        "AdapterBiasedLive",
        "InferenceP99LatencyHigh",
        "AdapterBelowMajorityBaseline",
    } <= names


def test_dashboard_is_the_generators_output() -> None:
    result = _run(
        sys.executable,
        "-c",
        "import runpy; print(runpy.run_path('deploy/grafana/build_dashboard.py')['render'](), end='')",
    )
    assert result.returncode == 0, result.stderr
    assert DASHBOARD.read_text() == result.stdout, "run deploy/grafana/build_dashboard.py and commit"


def _queried_series(expr: str) -> set[str]:
    expr = re.sub(r'"[^"]*"', "", expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range durations
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    tokens = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr))
    return {token for token in tokens if token not in PROMQL_WORDS}


def _all_queries() -> list[str]:
    exprs = [rule["expr"] for rule in _alerts()]
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        exprs += [target["expr"] for target in panel.get("targets", [])]
    return exprs


def _exported_names() -> set[str]:
    from prometheus_client import REGISTRY

    for module in METRIC_MODULES:
        importlib.import_module(module)
    suffixes = {
        "counter": ["_total"],
        "histogram": ["_bucket", "_sum", "_count"],
        "gauge": [""],
        "summary": ["_sum", "_count"],
    }
    return {
        metric.name + suffix for metric in REGISTRY.collect() for suffix in suffixes.get(metric.type, [""])
    }


def test_every_queried_series_is_exported_by_a_service() -> None:
    exported = _exported_names() | ENGINE_SERIES
    queried = set().union(*(_queried_series(expr) for expr in _all_queries()))
    assert queried, "found no series in the dashboard and alerts"
    missing = sorted(queried - exported)
    assert not missing, f"queried but exported by no service: {missing}"


@pytest.mark.parametrize("module", METRIC_MODULES)
def test_service_exposition_passes_promtool(promtool: str, module: str) -> None:
    from prometheus_client import generate_latest

    importlib.import_module(module)
    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=generate_latest().decode(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    # promtool flags lint issues (exit 3) apart from parse errors (exit 1): both must be absent
    assert result.returncode == 0, result.stdout + result.stderr
