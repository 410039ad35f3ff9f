"""The adapter volume's layout and the registry queries (services/common/adapters.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import select

from services.common import adapters
from services.common.db import session_scope
from services.common.db.models import Adapter
from services.common.methods import TrainingMethod
from services.common.schemas import AdapterManifest


def _manifest(name: str, version: int = 1, method: str = "lora", task: str = "btc-trend") -> AdapterManifest:
    return AdapterManifest(name=name, version=version, base_model="tiny", method=method, task=task)  # type: ignore[arg-type]


def _publish(root: Path, manifest: AdapterManifest) -> Path:
    directory = adapters.version_dir(root, manifest.name, manifest.version)
    directory.mkdir(parents=True)
    adapters.write_manifest(directory, manifest)
    return directory


def test_layout_round_trips_a_manifest_and_lists_what_readers_see(tmp_path: Path) -> None:
    assert adapters.version_dir(tmp_path, "btc", 3) == tmp_path / "btc" / "v3"
    assert adapters.published_dirs(tmp_path / "absent") == []
    first = _publish(tmp_path, _manifest("b", 2, method="full"))
    second = _publish(tmp_path, _manifest("a"))
    by_hand = tmp_path / "c"
    by_hand.mkdir()
    adapters.write_manifest(by_hand, _manifest("c"))
    hidden = adapters.staging_root(tmp_path) / "b-1234"
    hidden.mkdir(parents=True)
    adapters.write_manifest(hidden, _manifest("b", 9))
    (tmp_path / "d" / "v1").mkdir(parents=True)  # no manifest: not published

    assert adapters.published_dirs(tmp_path) == [second, first, by_hand]
    back = adapters.read_manifest(first)
    assert back == _manifest("b", 2, method="full").model_copy(update={"created_at": back.created_at})
    assert back.method is TrainingMethod.FULL
    assert json.loads(adapters.manifest_path(first).read_text())["method"] == "full"
    assert adapters.has_manifest(first) and not adapters.has_manifest(tmp_path / "d" / "v1")

    (first / "config.json").write_text("{}")
    (second / "adapter_config.json").write_text("{}")
    assert adapters.is_full_model_dir(first) and not adapters.is_adapter_dir(first)
    assert adapters.is_adapter_dir(second) and not adapters.is_full_model_dir(second)


def test_read_manifest_raises_what_each_caller_tells_apart(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        adapters.read_manifest(tmp_path)
    adapters.manifest_path(tmp_path).write_text("{not json")
    with pytest.raises(json.JSONDecodeError):
        adapters.read_manifest(tmp_path)
    adapters.manifest_path(tmp_path).write_text('{"name": "x"}')
    with pytest.raises(ValidationError):
        adapters.read_manifest(tmp_path)


def _register(url: str, manifest: AdapterManifest, status: str = adapters.READY) -> None:
    with session_scope(url) as session:
        session.add(Adapter.from_manifest(manifest.model_copy(update={"weights_sha256": "x"}), "/p", status))


def test_registry_queries_newest_ready_version_per_name(db_url: str) -> None:
    _register(db_url, _manifest("b", 1))
    _register(db_url, _manifest("b", 2))
    _register(db_url, _manifest("b", 3), status=adapters.DELETED)  # falls back to v2
    _register(db_url, _manifest("a", 1, method="qlora"))
    _register(db_url, _manifest("Z", 1))  # Python's order: capitals first, on any collation
    _register(db_url, _manifest("gone", 1), status=adapters.DELETED)
    _register(db_url, _manifest("chat", 4, task="chat"))

    with session_scope(db_url) as session:
        newest = adapters.newest_ready(session)
        assert {name: row.version for name, row in newest.items()} == {"Z": 1, "a": 1, "b": 2, "chat": 4}
        assert list(newest) == ["Z", "a", "b", "chat"]
        assert list(adapters.newest_ready(session, "btc-trend")) == ["Z", "a", "b"]
        assert adapters.newest_ready_of(session, "b").version == 2  # type: ignore[union-attr]
        assert adapters.newest_ready_of(session, "chat", task="btc-trend") is None
        assert adapters.newest_ready_of(session, "gone") is None
        assert adapters.registered_names(session) == {"Z", "a", "b", "chat", "gone"}
        assert adapters.next_version(session, "b") == 4 and adapters.next_version(session, "new") == 1
        stored = session.scalars(select(Adapter.method).where(Adapter.name == "a")).one()
        assert stored == "qlora" and type(stored) is str  # the table holds the plain string
    old = Adapter(name="old", version=2, base_model="tiny", method="qlora", task="btc-trend", manifest={})
    filled = adapters.manifest_of(old)  # a row without a manifest: its columns fill one in
    assert (filled.name, filled.version, filled.method) == ("old", 2, TrainingMethod.QLORA)
