"""Adapters as the trainer registered them (``adapters`` table), read-only for the backtest."""

from __future__ import annotations

from sqlalchemy import select

from services.common.db import session_scope
from services.common.db.models import Adapter
from services.common.errors import NotFound
from services.common.schemas import AdapterManifest


def registered_adapters(url: str, task: str = "btc-trend") -> list[Adapter]:
    """The newest ready version of every adapter of ``task``, by name."""
    with session_scope(url) as session:
        adapters = session.scalars(
            select(Adapter).where(Adapter.status == "ready", Adapter.task == task).order_by(Adapter.version)
        ).all()
    newest = {adapter.name: adapter for adapter in adapters}
    return [newest[name] for name in sorted(newest)]


def adapter_manifest(url: str, name: str) -> AdapterManifest:
    """The manifest of the newest ready version of ``name``; NotFound lists what exists."""
    adapters = {adapter.name: adapter for adapter in registered_adapters(url)}
    if name not in adapters:
        known = ", ".join(sorted(adapters)) or "none"
        raise NotFound(
            f"adapter {name!r} is not registered (registered btc-trend adapters: {known})", param="adapter"
        )
    adapter = adapters[name]
    manifest = dict(adapter.manifest or {})
    manifest.setdefault("name", adapter.name)
    manifest.setdefault("version", adapter.version)
    manifest.setdefault("base_model", adapter.base_model)
    manifest.setdefault("method", adapter.method)
    manifest.setdefault("task", adapter.task)
    return AdapterManifest.model_validate(manifest)
