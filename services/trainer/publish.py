"""Publishing: weights and manifest written aside, renamed into place, registered in one step.

Layout (services/common/adapters.py): ``<adapters_path>/<name>/v<version>/`` with
``adapter_config.json`` and ``adapter_model.safetensors`` (LoRA, QLoRA) or a full model directory
(``config.json``, ``model.safetensors``, tokenizer files), plus ``manifest.json`` and
``training_config.json``. Safetensors only: a pickle file in the directory is refused.

The row in ``adapters`` is inserted (and its version reserved by the unique constraint)
before the rename and committed after it, so a reader never sees a row without a directory;
a crash between rename and commit leaves an orphan directory that the next publish of that
version replaces. Afterwards the inference service is told, if one is configured.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError

from services.common.adapters import (
    TRAINING_CONFIG_FILE,
    next_version,
    staging_root,
    version_dir,
    write_manifest,
)
from services.common.db import session_scope
from services.common.db.models import Adapter
from services.common.errors import OperationalError
from services.common.redact import redact_text, redact_url
from services.common.schemas import AdapterManifest

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


@dataclass(frozen=True)
class PublishedAdapter:
    name: str
    version: int
    path: Path
    manifest: AdapterManifest


def weights_sha256(directory: Path) -> str:
    """sha256 over every safetensors file, name and bytes, in name order."""
    digest = hashlib.sha256()
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise OperationalError(f"no safetensors weights were written in {directory}")
    for path in files:
        digest.update(path.name.encode())
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def save_weights(
    model: object, tokenizer: object, directory: Path, full: bool, state_dict: dict[str, Any] | None = None
) -> None:
    """safetensors only. ``state_dict``: the gathered full weights of a sharded (FSDP) model,
    whose own parameters hold only this rank's shards."""
    model.save_pretrained(directory, safe_serialization=True, state_dict=state_dict)  # type: ignore[attr-defined]
    if full:  # a full model is served on its own, so it carries its tokenizer
        tokenizer.save_pretrained(directory)  # type: ignore[attr-defined]
    pickles = [path.name for path in directory.iterdir() if path.suffix in PICKLE_SUFFIXES]
    if pickles:
        raise OperationalError(f"refusing to publish pickle files {pickles}: safetensors only")


def publish(
    database_url: str,
    adapters_path: Path,
    manifest: AdapterManifest,
    write_weights: Callable[[Path], None],
    training_config: dict[str, object],
    attempts: int = 3,
) -> PublishedAdapter:
    """Write, hash, rename into place and register; returns where it went and its manifest."""
    staging_dir = staging_root(adapters_path)
    staging_dir.mkdir(parents=True, exist_ok=True)
    staging = staging_dir / f"{manifest.name}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        write_weights(staging)
        manifest = manifest.model_copy(update={"weights_sha256": weights_sha256(staging)})
        (staging / TRAINING_CONFIG_FILE).write_text(json.dumps(training_config, indent=2, default=str))
        for attempt in range(attempts):
            try:
                return _register_and_rename(database_url, adapters_path, manifest, staging)
            except IntegrityError:  # another publisher took this version first: take the next
                if attempt == attempts - 1:
                    raise
                log.info("version clash publishing %s; retrying", manifest.name)
        raise AssertionError("unreachable")
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _register_and_rename(
    database_url: str, adapters_path: Path, manifest: AdapterManifest, staging: Path
) -> PublishedAdapter:
    with session_scope(database_url) as session:
        manifest = manifest.model_copy(update={"version": next_version(session, manifest.name)})
        final = version_dir(adapters_path, manifest.name, manifest.version)
        write_manifest(staging, manifest)
        session.add(Adapter.from_manifest(manifest, str(final.resolve())))
        session.flush()  # reserves the version (unique name+version) before anything moves
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():  # an orphan from a crash between rename and commit
            log.warning("replacing orphan directory %s (no registry row)", final)
            shutil.rmtree(final)
        os.replace(staging, final)
        try:
            session.commit()
        except BaseException:
            shutil.rmtree(final, ignore_errors=True)
            raise
    log.info("published %s v%d at %s", manifest.name, manifest.version, final)
    return PublishedAdapter(manifest.name, manifest.version, final, manifest)


def notify_inference(inference_url: str, token: str, name: str, timeout: float, wait: bool = True) -> bool:
    """Ask the inference service to serve what was published; a failure is logged, never fatal.

    ``wait=False`` (full models): the service answers 202 while the model's own engine starts.
    """
    if not inference_url:
        return False
    import httpx

    url = f"{inference_url.rstrip('/')}/v1/adapters/{name}/load"
    try:
        response = httpx.post(
            url,
            params={"wait": str(wait).lower()},
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
        )
        response.raise_for_status()
    except httpx.HTTPError as exc:
        log.warning(
            "could not tell inference at %s about %s: %s", redact_url(url), name, redact_text(str(exc))
        )
        return False
    state = "is starting" if response.status_code == 202 else "serves"
    log.info("inference service %s %s", state, name)
    return True
