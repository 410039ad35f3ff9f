"""Which adapters and full fine-tunes exist: the ``adapters`` table first, the volume second.

The trainer publishes to ``<adapters_path>/<name>/v<version>/`` and registers a row
(services/trainer/publish.py); the newest ``ready`` version of each name is the one served
(the layout and the queries: services/common/adapters.py).
A directory on the volume with a ``manifest.json`` and no row (copied by hand, restored from a
backup) is served too, unless a row of the same name exists: the database is the authority.
Reading never writes; a broken manifest is reported as unservable with its reason.
A LoRA or QLoRA adapter is served by the base model's engine; a full fine-tune is a model of its
own and gets its own engine (full_models.py), so it is checked for what that engine loads.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from services.common.adapters import (
    ADAPTER_CONFIG_FILE,
    MANIFEST_FILE,
    MODEL_CONFIG_FILE,
    TOKENIZER_FILES,
    expected_identity,
    is_adapter_dir,
    is_full_model_dir,
    newest_ready,
    outside_volume,
    published_dirs,
    read_manifest,
    registered_names,
    unsafe_weights,
)
from services.common.db import session_scope
from services.common.schemas import AdapterManifest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AdapterRecord:
    """One published adapter version, and whether this service can serve it."""

    name: str
    version: int
    path: str
    manifest: AdapterManifest | None
    source: str  # "database" or "volume"
    unservable: str | None = None  # why it cannot be served, or None

    @property
    def is_full(self) -> bool:
        """A full fine-tune: served by an engine of its own, not as an adapter of the base."""
        return self.manifest is not None and not self.manifest.method.is_adapter

    def describe(self, status: str, reason: str | None, **extra: Any) -> dict[str, Any]:
        """The row /v1/adapters lists: the manifest's fields, where it came from, how it is served."""
        manifest = self.manifest.model_dump(mode="json") if self.manifest else {}
        return {
            **manifest,
            "name": self.name,
            "version": self.version,
            "path": self.path,
            "source": self.source,
            "status": status,
            "reason": reason,
            **extra,
        }

    @property
    def identity(self) -> tuple[str, int, str]:
        """Changes whenever the weights may have: a new version or a new hash means a new engine id."""
        digest = self.manifest.weights_sha256 if self.manifest else ""
        return (self.name, self.version, digest)


def discover(
    database_url: str, adapters_path: Path, base_model_name: str, max_rank: int
) -> dict[str, AdapterRecord]:
    """Every adapter name known to the registry, newest version each, checked for servability."""
    from_database, known_names = _from_database(database_url)
    # A name the table knows is decided by the table (deleted stays deleted); others by the volume.
    found = {name: rec for name, rec in _from_volume(adapters_path).items() if name not in known_names}
    found.update(from_database)
    return {
        name: _check(record, adapters_path, base_model_name, max_rank)
        for name, record in sorted(found.items())
    }


def _from_database(database_url: str) -> tuple[dict[str, AdapterRecord], set[str]]:
    """The newest ``ready`` version of each name, and every name the table knows at all."""
    with session_scope(database_url) as session:
        names = registered_names(session)
        records = {
            name: AdapterRecord(
                row.name, row.version, row.path, _parse_manifest(row.manifest, row.name), "database"
            )
            for name, row in newest_ready(session).items()
        }
    return records, names


def _from_volume(adapters_path: Path) -> dict[str, AdapterRecord]:
    records: dict[str, AdapterRecord] = {}
    for directory in published_dirs(adapters_path):  # .staging and other hidden work are left out
        try:
            manifest = read_manifest(directory)
        except (OSError, json.JSONDecodeError) as exc:
            log.warning("skipping %s: %s", directory / MANIFEST_FILE, exc)
            continue
        except ValidationError as exc:
            _log_invalid(directory.name, exc)
            continue
        name, version = expected_identity(directory, adapters_path)
        if manifest.name != name or version not in (None, manifest.version):
            # Keyed by where it lies, never by what its manifest claims: a directory must not
            # stand in for another adapter (or a newer version of it) by naming it.
            claim = f"{manifest.name} v{manifest.version}"
            log.warning("skipping %s: its manifest claims %s", directory, claim)
            continue
        current = records.get(name)
        if current is None or manifest.version > current.version:
            records[name] = AdapterRecord(
                name, manifest.version, str(directory.resolve()), manifest, "volume"
            )
    return records


def _parse_manifest(raw: object, where: str) -> AdapterManifest | None:
    try:
        return AdapterManifest.model_validate(raw)
    except ValidationError as exc:
        _log_invalid(where, exc)
        return None


def _log_invalid(where: str, exc: ValidationError) -> None:
    log.warning("adapter %s has an invalid manifest: %s", where, exc.errors()[0].get("msg"))


def _check(record: AdapterRecord, adapters_path: Path, base_model_name: str, max_rank: int) -> AdapterRecord:
    # Only what lies on the volume, and only safetensors: a row or a link may name any path.
    path = Path(record.path)
    reason = (
        outside_volume(path, adapters_path)
        or _unservable_reason(record, base_model_name, max_rank)
        or (unsafe_weights(path) if path.is_dir() else f"{path} does not exist")
    )
    if reason is None:
        return record
    return AdapterRecord(record.name, record.version, record.path, record.manifest, record.source, reason)


def _unservable_reason(record: AdapterRecord, base_model_name: str, max_rank: int) -> str | None:
    manifest = record.manifest
    if manifest is None:
        return "manifest.json is missing or invalid"
    if not manifest.method.is_adapter:  # a full model: its own engine, its own base
        return _full_model_reason(Path(record.path))
    if Path(manifest.base_model).name != base_model_name:
        return f"trained on base model {manifest.base_model!r}, this service serves {base_model_name!r}"
    path = Path(record.path)
    if not is_adapter_dir(path):
        return f"no {ADAPTER_CONFIG_FILE} in {path}"
    rank = rank_of(path)
    if rank is not None and rank > max_rank:
        return f"LoRA rank {rank} is above max_lora_rank {max_rank}"
    return None


def _full_model_reason(path: Path) -> str | None:
    """What a full fine-tune's engine would miss (its weights: ``unsafe_weights``); vLLM itself
    judges the rest when it loads."""
    if not is_full_model_dir(path):
        return f"a full model needs {MODEL_CONFIG_FILE}; none in {path}"
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        return f"a full model carries its tokenizer ({' or '.join(TOKENIZER_FILES)}); none in {path}"
    return None


def rank_of(path: Path) -> int | None:
    """The LoRA rank in an adapter folder's ``adapter_config.json``, or None if unreadable."""
    try:
        return int(json.loads((path / ADAPTER_CONFIG_FILE).read_text()).get("r"))
    except (OSError, ValueError, TypeError):
        return None


# The values vLLM 0.32 accepts for max_lora_rank (vllm.config.lora.MaxLoRARanks).
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def padding_hint(records: Iterable[AdapterRecord], max_rank: int) -> str | None:
    """A line for the log when every servable adapter's rank is well below ``max_lora_rank``.

    vLLM pads every adapter to ``max_lora_rank`` in its LoRA kernels; on the CPU, rank 16 ran
    the engine 2-3x slower than rank 8 for rank-8 adapters (docs/benchmarks.md, issue 17).
    Only a hint: an adapter of a higher rank published later needs the headroom.
    """
    ranks = [rank_of(Path(r.path)) for r in records if r.unservable is None and not r.is_full]
    known = [rank for rank in ranks if rank is not None]
    if not known or len(known) < len(ranks):
        return None
    enough = min(rank for rank in VLLM_MAX_LORA_RANKS if rank >= max(known))
    if enough >= max_rank:
        return None
    return (
        f"every adapter served has LoRA rank <= {max(known)} but max_lora_rank is {max_rank}: vLLM pads "
        f"each to {max_rank} (on the CPU 2-3x slower scoring than at rank 8, docs/benchmarks.md); "
        f"HSIG_MAX_LORA_RANK={enough} if no larger adapter is coming"
    )
