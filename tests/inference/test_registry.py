"""Which adapters the registry offers (database first, volume second), on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

from services.common.db import session_scope
from services.common.db.models import Adapter
from services.common.schemas import AdapterManifest
from services.inference.registry import discover

BASE = "tiny-llama"


def _write(
    adapters: Path, name: str, version: int, *, rank: int = 8, method: str = "lora", base: str = BASE
) -> Path:
    path = adapters / name / f"v{version}"
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"r": rank, "target_modules": ["q_proj"]}))
    (path / "adapter_model.safetensors").write_bytes(b"weights")  # read by vLLM only, never here
    manifest = AdapterManifest(
        name=name, version=version, base_model=f"/models/{base}", method=method, task="btc-trend"
    )  # type: ignore[arg-type]
    (path / "manifest.json").write_text(manifest.model_dump_json())
    return path


def _register(url: str, path: Path, status: str = "ready") -> None:
    manifest = AdapterManifest.model_validate_json((path / "manifest.json").read_text())
    with session_scope(url) as session:
        # A registry row as a test double for the volume's hash: the value itself is never read.
        session.add(
            Adapter.from_manifest(manifest.model_copy(update={"weights_sha256": "x"}), str(path), status)
        )


def test_newest_ready_version_wins_and_rows_decide_over_directories(db_url: str, tmp_path: Path) -> None:
    adapters = tmp_path / "adapters"
    _register(db_url, _write(adapters, "a", 1))
    _register(db_url, _write(adapters, "a", 2))
    _register(db_url, _write(adapters, "a", 3), status="deleted")
    _write(adapters, "b", 1)  # no row: served from the volume
    _register(db_url, _write(adapters, "c", 1), status="deleted")  # a deleted name stays deleted
    (adapters / ".staging" / "half").mkdir(parents=True)

    found = discover(db_url, adapters, BASE, max_rank=16)

    assert sorted(found) == ["a", "b"]
    assert (found["a"].version, found["a"].source) == (2, "database")
    assert (found["b"].version, found["b"].source) == (1, "volume")
    assert all(record.unservable is None for record in found.values())


def test_full_models_are_checked_for_what_their_own_engine_loads(db_url: str, tmp_path: Path) -> None:
    adapters = tmp_path / "adapters"
    complete = _write(adapters, "whole", 1, method="full", base="Llama-2-7b-hf")  # its own base
    no_tokenizer = _write(adapters, "mute", 1, method="full")
    for path in (complete, no_tokenizer):
        (path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
        (path / "model.safetensors").write_bytes(b"weights")  # read by vLLM only, never here
    (complete / "tokenizer.json").write_text("{}")
    _register(db_url, complete)
    _register(db_url, no_tokenizer)

    found = discover(db_url, adapters, BASE, max_rank=16)

    assert found["whole"].is_full and found["whole"].unservable is None
    assert "tokenizer" in found["mute"].unservable


def test_unservable_adapters_say_why(db_url: str, tmp_path: Path) -> None:
    adapters = tmp_path / "adapters"
    _register(db_url, _write(adapters, "wide", 1, rank=64))
    _register(db_url, _write(adapters, "full", 1, method="full"))
    _register(db_url, _write(adapters, "other", 1, base="Llama-2-7b-hf"))
    no_weights = _write(adapters, "empty", 1)
    (no_weights / "adapter_config.json").unlink()

    found = discover(db_url, adapters, BASE, max_rank=16)

    assert "rank 64" in found["wide"].unservable
    assert "needs config.json" in found["full"].unservable
    assert "Llama-2-7b-hf" in found["other"].unservable
    assert "adapter_config.json" in found["empty"].unservable


def test_a_broken_manifest_is_skipped_not_fatal(db_url: str, tmp_path: Path) -> None:
    adapters = tmp_path / "adapters"
    _write(adapters, "good", 1)
    broken = adapters / "bad" / "v1"
    broken.mkdir(parents=True)
    (broken / "manifest.json").write_text("{not json")

    assert list(discover(db_url, adapters, BASE, max_rank=16)) == ["good"]


def test_only_safetensors_on_the_volume_are_served(db_url: str, tmp_path: Path) -> None:
    """Issue 14 item 3: pickles, links out of the volume, rows pointing elsewhere, and manifests
    claiming another adapter were all served."""
    adapters, elsewhere = tmp_path / "adapters", tmp_path / "elsewhere"
    pickled = _write(adapters, "pickled", 1)
    (pickled / "adapter_model.safetensors").unlink()
    (pickled / "adapter_model.bin").write_bytes(b"a pickle")
    outside = _write(elsewhere, "outside", 1)
    _register(db_url, outside)  # a row whose path leaves the volume
    (adapters / "linked").mkdir()
    (adapters / "linked" / "v1").symlink_to(_write(elsewhere, "linked", 1))  # a link out, no row
    linked_file = _write(adapters, "linkedfile", 1)
    (linked_file / "adapter_model.safetensors").unlink()
    (linked_file / "adapter_model.safetensors").symlink_to(
        elsewhere / "linked" / "v1" / "adapter_model.safetensors"
    )
    _register(db_url, _write(adapters, "victim", 1))
    impostor = _write(adapters, "impostor", 1)  # its manifest claims to be victim v9
    claim = AdapterManifest(
        name="victim", version=9, base_model=f"/models/{BASE}", method="lora", task="btc-trend"
    )  # type: ignore[arg-type]
    (impostor / "manifest.json").write_text(claim.model_dump_json())

    found = discover(db_url, adapters, BASE, max_rank=16)

    assert "pickled weights are not loaded" in found["pickled"].unservable
    assert "outside the adapter volume" in found["outside"].unservable
    assert "outside the adapter volume" in found["linked"].unservable
    assert "links outside the adapter volume" in found["linkedfile"].unservable
    assert (found["victim"].version, found["victim"].unservable) == (1, None)
    assert found["victim"].path == str((adapters / "victim" / "v1").resolve())
    assert "impostor" not in found  # skipped: where it lies and what it claims differ


def test_the_padding_hint_names_the_rank_that_would_do(db_url: str, tmp_path: Path) -> None:
    from services.inference.registry import padding_hint

    adapters = tmp_path / "adapters"
    _write(adapters, "small", 1, rank=4)
    _write(adapters, "eight", 1, rank=8)
    found = discover(db_url, adapters, BASE, max_rank=16)
    hint = padding_hint(found.values(), 16)
    assert hint is not None and "HSIG_MAX_LORA_RANK=8" in hint and "rank <= 8" in hint
    assert padding_hint(found.values(), 8) is None  # already as small as vLLM allows for rank 8

    _write(adapters, "twelve", 1, rank=12)  # vLLM has no rank 12: 16 is the next it takes
    found = discover(db_url, adapters, BASE, max_rank=64)
    assert "HSIG_MAX_LORA_RANK=16" in (padding_hint(found.values(), 64) or "")
    assert padding_hint(found.values(), 16) is None
    assert padding_hint([], 16) is None  # nothing served yet: no basis for a hint
