"""Adapters as the trainer registered them (``adapters`` table), read-only for the backtest.

The queries themselves are services/common/adapters.py's, shared with the inference service.
"""

from __future__ import annotations

from services.common.adapters import manifest_of, newest_ready, newest_ready_of
from services.common.db import session_scope
from services.common.db.models import Adapter
from services.common.errors import NotFound
from services.common.schemas import AdapterManifest


def registered_adapters(url: str, task: str = "btc-trend") -> list[Adapter]:
    """The newest ready version of every adapter of ``task``, by name."""
    with session_scope(url) as session:
        return list(newest_ready(session, task).values())


def adapter_manifest(url: str, name: str) -> AdapterManifest:
    """The manifest of the newest ready version of ``name``; NotFound lists what exists."""
    with session_scope(url) as session:
        adapter = newest_ready_of(session, name, task="btc-trend")
        known = [] if adapter is not None else list(newest_ready(session, "btc-trend"))
    if adapter is None:
        raise NotFound(
            f"adapter {name!r} is not registered (registered btc-trend adapters: {', '.join(known) or 'none'})",
            param="adapter",
        )
    return manifest_of(adapter)
