"""`hsig inference adapters`: the registry as the service would see it, without starting an engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.common.db.migrate import upgrade
from services.common.settings import get_settings
from services.pipeline.cli import app


def test_adapters_command_lists_servable_and_unservable(
    settings_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    adapters = settings_env / "adapters"
    for name, rank in (("small", 8), ("wide", 64)):
        path = adapters / name / "v1"
        path.mkdir(parents=True)
        (path / "adapter_config.json").write_text(json.dumps({"r": rank}))
        (path / "adapter_model.safetensors").write_bytes(b"weights")  # read by vLLM only, never here
        manifest = {"name": name, "base_model": "/m/tiny-llama", "method": "lora", "task": "btc-trend"}
        (path / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setenv("HSIG_BASE_MODEL", str(tmp_path / "tiny-llama"))
    get_settings.cache_clear()
    upgrade(get_settings().resolved_database_url)

    result = CliRunner().invoke(app, ["inference", "adapters"])

    assert result.exit_code == 0, result.output
    # CliRunner captures this process's stdout, where a Ray cluster started by other tests in
    # the session may forward its workers' log lines: read the command's JSON lines only.
    lines = [line for line in result.output.splitlines() if line.startswith("{")]
    rows = {row["name"]: row for row in map(json.loads, lines)}
    assert rows["small"]["servable"] is True
    assert rows["wide"]["servable"] is False and "rank 64" in rows["wide"]["reason"]
