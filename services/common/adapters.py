"""Published adapters: the volume's layout and the ``adapters`` table's queries, in one place.

Layout: ``<adapters_path>/<name>/v<version>/`` holds what one publish wrote: the weights (a PEFT
adapter, ``adapter_config.json`` and safetensors, for LoRA and QLoRA; a model directory,
``config.json``, safetensors and the tokenizer, for a full fine-tune), ``manifest.json`` (an
AdapterManifest) and ``training_config.json``. Work in progress lives under hidden directories
(``.staging``), which readers skip. A directory copied in by hand as ``<name>/manifest.json``
(no version directory) is read too.

Registry: one row per published version in ``adapters``, ``ready`` or ``deleted``; the version
of a name that is served and scored is its newest ready one. The trainer writes and registers
(services/trainer/publish.py), the inference service loads (services/inference/registry.py),
the backtest reads (services/backtest/predictors/); all three find them through this module.
"""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from services.common.db.models import Adapter
from services.common.schemas import AdapterManifest

MANIFEST_FILE = "manifest.json"
TRAINING_CONFIG_FILE = "training_config.json"
ADAPTER_CONFIG_FILE = "adapter_config.json"  # a PEFT adapter (LoRA, QLoRA)
MODEL_CONFIG_FILE = "config.json"  # a model of its own (a full fine-tune)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")  # either one: a full model's tokenizer
STAGING_DIR = ".staging"

READY = "ready"
DELETED = "deleted"


# --- the volume ----------------------------------------------------------------------------


def version_dir(adapters_path: Path, name: str, version: int) -> Path:
    """Where version ``version`` of ``name`` lives: ``<adapters_path>/<name>/v<version>``."""
    return adapters_path / name / f"v{version}"


def staging_root(adapters_path: Path) -> Path:
    """Where a publish writes before its rename into place; hidden, so readers skip it."""
    return adapters_path / STAGING_DIR


def manifest_path(directory: Path) -> Path:
    return directory / MANIFEST_FILE


def has_manifest(directory: Path) -> bool:
    return manifest_path(directory).is_file()


def write_manifest(directory: Path, manifest: AdapterManifest) -> None:
    manifest_path(directory).write_text(manifest.model_dump_json(indent=2))


def read_manifest(directory: Path) -> AdapterManifest:
    """The manifest in ``directory``. Raises OSError (missing, unreadable), json.JSONDecodeError
    (not JSON) or pydantic.ValidationError (not a manifest); each caller decides what that means."""
    return AdapterManifest.model_validate(json.loads(manifest_path(directory).read_text()))


def is_full_model_dir(directory: Path) -> bool:
    """The directory holds a model of its own (``config.json``), not an adapter of a base."""
    return (directory / MODEL_CONFIG_FILE).is_file()


def is_adapter_dir(directory: Path) -> bool:
    return (directory / ADAPTER_CONFIG_FILE).is_file()


def published_dirs(adapters_path: Path) -> list[Path]:
    """Every directory on the volume with a manifest: ``<name>/v<n>/`` ones (sorted), then
    ``<name>/`` ones copied in by hand (sorted); hidden work in progress is left out."""
    if not adapters_path.is_dir():
        return []
    found = sorted(adapters_path.glob(f"*/*/{MANIFEST_FILE}")) + sorted(
        adapters_path.glob(f"*/{MANIFEST_FILE}")
    )
    return [
        path.parent
        for path in found
        if not any(part.startswith(".") for part in path.relative_to(adapters_path).parts)
    ]


# --- the registry (``adapters`` table) -----------------------------------------------------


def next_version(session: Session, name: str) -> int:
    """The version a new publish of ``name`` takes: one above every row's, deleted ones included."""
    latest = session.scalar(select(func.max(Adapter.version)).where(Adapter.name == name))
    return (latest or 0) + 1


def newest_ready(session: Session, task: str | None = None) -> dict[str, Adapter]:
    """The newest ready version of every name (of ``task``, if given), keyed and ordered by name.
    A name whose newest version is deleted falls back to its newest ready one, if any."""
    query = select(Adapter).where(Adapter.status == READY).order_by(Adapter.version)
    if task is not None:
        query = query.where(Adapter.task == task)
    newest = {row.name: row for row in session.scalars(query)}  # ascending versions: the newest stays
    return {name: newest[name] for name in sorted(newest)}  # Python's order, not the collation's


def newest_ready_of(session: Session, name: str, task: str | None = None) -> Adapter | None:
    """The newest ready version of ``name`` (of ``task``, if given), or None."""
    query = select(Adapter).where(Adapter.name == name, Adapter.status == READY)
    if task is not None:
        query = query.where(Adapter.task == task)
    return session.scalars(query.order_by(Adapter.version.desc()).limit(1)).first()


def registered_names(session: Session) -> set[str]:
    """Every name the table knows, in any status: the table, not the volume, decides these."""
    return set(session.scalars(select(Adapter.name).distinct()))


def manifest_of(row: Adapter) -> AdapterManifest:
    """A row's manifest, its columns filling any field the stored manifest lacks."""
    manifest = dict(row.manifest or {})
    manifest.setdefault("name", row.name)
    manifest.setdefault("version", row.version)
    manifest.setdefault("base_model", row.base_model)
    manifest.setdefault("method", row.method)
    manifest.setdefault("task", row.task)
    return AdapterManifest.model_validate(manifest)


# --- what may be loaded ---------------------------------------------------------------------

ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"  # the only adapter weights anyone loads


def outside_volume(directory: Path, adapters_path: Path) -> str | None:
    """Why ``directory`` is not wholly on the volume (itself or a file in it, symlinks followed),
    or None. A row, a manifest or a symlink can name any path; only the volume's are loaded."""
    volume = adapters_path.resolve()
    resolved = directory.resolve()
    if not resolved.is_relative_to(volume):
        return f"{directory} is outside the adapter volume {volume}"
    for entry in resolved.rglob("*"):
        if entry.is_symlink() and not entry.resolve().is_relative_to(volume):
            return f"{entry} links outside the adapter volume {volume}"
    return None


def unsafe_weights(directory: Path) -> str | None:
    """Why the weights in ``directory`` must not be loaded, or None. Only safetensors: a pickle
    (``.bin``, ``.pt``) runs code when it is loaded."""
    if is_full_model_dir(directory):
        if not any(directory.glob("*.safetensors")):
            return f"a full model needs safetensors weights; none in {directory} (pickles are not loaded)"
        return None
    if not (directory / ADAPTER_WEIGHTS_FILE).is_file():
        return f"no {ADAPTER_WEIGHTS_FILE} in {directory} (pickled weights are not loaded)"
    return None


def expected_identity(directory: Path, adapters_path: Path) -> tuple[str, int | None]:
    """(name, version) a directory on the volume stands for by where it is: ``<name>/v<n>`` or
    ``<name>`` (copied by hand, version from its manifest). What a manifest claims must match."""
    relative = directory.relative_to(adapters_path).parts  # where it is listed, links not followed
    if len(relative) == 2 and relative[1].startswith("v") and relative[1][1:].isdigit():
        return relative[0], int(relative[1][1:])
    return relative[0], None
