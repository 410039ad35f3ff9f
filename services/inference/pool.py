"""The adapters this replica serves: loaded from the registry, kept in step with it, each with its own id.

vLLM caches adapters by integer id and does not check that an id always means the same
weights, so ids are handed out here, one per (name, version, weights hash): a new version
under an old name gets a new id, and the old one is dropped from the engine.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any

from services.common.errors import Conflict, NotFound, OperationalError
from services.common.prompts import BTC_TREND
from services.common.schemas import BASE_MODEL_NAME
from services.inference import metrics
from services.inference.engine import LoraRef, VllmEngine
from services.inference.registry import AdapterRecord

log = logging.getLogger(__name__)


class AdapterPool:
    """Serves every servable LoRA adapter in the registry, except those unloaded on purpose.

    The service reads the registry (``registry.discover``) and hands this pool the adapters;
    full fine-tunes go to their own engines (full_models.py)."""

    def __init__(self, engine: VllmEngine, base_model_name: str) -> None:
        self._engine = engine
        self._base_model_name = base_model_name
        self._lock = asyncio.Lock()
        self._ids: dict[tuple[str, int, str], int] = {}
        self._next_id = itertools.count(1)
        self._records: dict[str, AdapterRecord] = {}
        self._served: dict[str, tuple[AdapterRecord, LoraRef]] = {}
        self._unloaded: dict[str, tuple[str, int, str]] = {}  # name -> identity unloaded by DELETE
        self._failed: dict[str, tuple[tuple[str, int, str], str]] = {}  # name -> (identity, vLLM's refusal)

    # --- names ----------------------------------------------------------------------------

    def base_names(self) -> set[str]:
        return {BASE_MODEL_NAME, self._base_model_name}

    def served_names(self) -> list[str]:
        return sorted(self._served)

    def resolve(self, name: str | None) -> LoraRef | None:
        """The engine's handle for ``name``; None means the base model. NotFound names the served ones."""
        if name is None or name in self.base_names():
            return None
        served = self._served.get(name)
        if served is None:
            available = ", ".join([BASE_MODEL_NAME, *self.served_names()])
            raise NotFound(f"adapter {name!r} is not served; served: {available}", param="adapter")
        return served[1]

    def record_of(self, name: str) -> AdapterRecord | None:
        served = self._served.get(name)
        return served[0] if served else None

    def task_of(self, name: str | None) -> str:
        """The task whose prompt and labels ``name`` answers (the base model's: btc-trend)."""
        record = self.record_of(name) if name else None
        return record.manifest.task if record is not None and record.manifest is not None else BTC_TREND

    # --- keeping in step with the registry --------------------------------------------------

    async def refresh(self, records: dict[str, AdapterRecord]) -> list[str]:
        """Serve what the registry publishes, drop what it no longer does; returns what changed."""
        async with self._lock:
            self._records = records
            changed = []
            for name, record in records.items():
                if record.unservable or self._unloaded.get(name) == record.identity:
                    continue
                failed = self._failed.get(name)
                if failed is not None and failed[0] == record.identity:
                    continue  # these weights were refused once; a new version gets a new try
                current = self._served.get(name)
                if current is None or current[0].identity != record.identity:
                    try:
                        await self._serve(record)
                    except OperationalError as exc:  # one bad adapter must not stop the others
                        self._failed[name] = (record.identity, exc.message)
                        log.warning("cannot serve adapter %s v%d: %s", name, record.version, exc.message)
                        continue
                    changed.append(name)
            for name in [name for name in self._served if name not in records]:
                await self._drop(name)
                changed.append(name)
            return changed

    async def load(self, record: AdapterRecord) -> AdapterRecord:
        """Serve ``record`` now (the trainer asks right after publishing)."""
        async with self._lock:
            name = record.name
            self._records[name] = record
            if record.unservable:
                raise Conflict(f"adapter {name!r} cannot be served: {record.unservable}", param="name")
            self._unloaded.pop(name, None)
            self._failed.pop(name, None)  # asked for explicitly: try again, and say why if it fails
            current = self._served.get(name)
            if current is None or current[0].identity != record.identity:
                try:
                    await self._serve(record)
                except OperationalError as exc:
                    self._failed[name] = (record.identity, exc.message)
                    raise Conflict(
                        f"adapter {name!r} could not be loaded: {exc.message}", param="name"
                    ) from exc
            return record

    async def unload(self, name: str) -> None:
        """Stop serving ``name``; the poll leaves it unloaded until a new version is published."""
        async with self._lock:
            if name not in self._served:
                available = ", ".join(self.served_names()) or "none"
                raise NotFound(f"adapter {name!r} is not served; served adapters: {available}", param="name")
            self._unloaded[name] = self._served[name][0].identity
            await self._drop(name)

    async def _serve(self, record: AdapterRecord) -> None:
        int_id = self._ids.setdefault(record.identity, next(self._next_id))
        lora = LoraRef(record.name, int_id, record.path)
        await self._engine.add_adapter(lora)  # loads now, so the first request is not the slow one
        previous = self._served.get(record.name)
        self._served[record.name] = (record, lora)
        metrics.ADAPTERS_SERVED.set(len(self._served))
        if previous is not None and previous[1].int_id != int_id:
            await self._engine.remove_adapter(previous[1])
        log.info("serving adapter %s v%d (engine id %d)", record.name, record.version, int_id)

    async def _drop(self, name: str) -> None:
        record, lora = self._served.pop(name)
        metrics.ADAPTERS_SERVED.set(len(self._served))
        await self._engine.remove_adapter(lora)
        log.info("stopped serving adapter %s v%d", name, record.version)

    # --- description ----------------------------------------------------------------------

    def describe(self) -> list[dict[str, Any]]:
        """Every registered adapter with its manifest fields and whether it is served here."""
        rows = []
        for name, record in sorted(self._records.items()):
            served = self._served.get(name)
            if served is not None:
                record = served[0]
                status, reason = "served", None
            elif record.unservable:
                status, reason = "unservable", record.unservable
            elif name in self._failed and self._failed[name][0] == record.identity:
                status, reason = "failed", self._failed[name][1]
            else:
                status, reason = "unloaded", None
            rows.append(record.describe(status, reason, engine_id=served[1].int_id if served else None))
        return rows
