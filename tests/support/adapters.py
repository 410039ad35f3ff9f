"""Real adapters and full fine-tunes for the tests and benchmarks: peft (or seeded noise) on the
tiny model, published through the trainer's own ``publish`` (staging, hash, rename, registry row),
or, without a database URL, written straight onto the volume as a directory copied in by hand."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from services.common.schemas import AdapterManifest, LoraSettings

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def make_lora(model_dir: Path, out: Path, seed: int, rank: int = 8) -> Path:
    """A LoRA adapter with random A and B (``init_lora_weights=False``), so it really changes scores."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    config = LoraConfig(
        r=rank, lora_alpha=2 * rank, target_modules=TARGETS, init_lora_weights=False, lora_dropout=0.0
    )
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(out, safe_serialization=True)
    return out


def publish_lora(
    model_dir: Path,
    adapters_path: Path,
    name: str,
    seed: int,
    database_url: str | None,
    version: int = 1,
    task: str = "btc-trend",
    rank: int = 8,
) -> Path:
    """A LoRA adapter as ``<adapters>/<name>/v<version>``: published by the trainer when given a URL."""
    manifest = AdapterManifest(
        name=name,
        version=version,
        base_model=str(model_dir),
        method="lora",
        task=task,  # type: ignore[arg-type]
        lora=LoraSettings(r=rank, alpha=2 * rank, dropout=0.0, target_modules=TARGETS),
    )
    return _publish(adapters_path, manifest, lambda out: make_lora(model_dir, out, seed, rank), database_url)


def make_full_model(model_dir: Path, out: Path, seed: int, scale: float = 0.05) -> Path:
    """A full fine-tune in the layout the trainer publishes: every weight of the tiny model moved
    by seeded noise (so its scores differ from the base), saved with its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * scale)
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
    return out


def publish_full(
    model_dir: Path,
    adapters_path: Path,
    name: str,
    seed: int,
    database_url: str | None,
    version: int = 1,
    task: str = "btc-trend",
) -> Path:
    """A full fine-tune as ``<adapters>/<name>/v<version>``: published by the trainer when given a URL."""
    manifest = AdapterManifest(
        name=name,
        version=version,
        base_model=str(model_dir),
        method="full",
        task=task,  # type: ignore[arg-type]
    )
    return _publish(adapters_path, manifest, lambda out: make_full_model(model_dir, out, seed), database_url)


def _publish(
    adapters_path: Path, manifest: AdapterManifest, write: Callable[[Path], object], database_url: str | None
) -> Path:
    """Through ``services.trainer.publish.publish`` given a URL (its version is the registry's
    next, which must be the one asked for); else weights and manifest straight onto the volume."""
    from services.common.adapters import version_dir, write_manifest
    from services.trainer.publish import publish, weights_sha256

    if database_url:
        published = publish(
            database_url, adapters_path, manifest, write, {"made_by": "tests.support.adapters"}
        )
        assert published.version == manifest.version, (published.version, manifest.version)
        return published.path
    path = version_dir(adapters_path, manifest.name, manifest.version)
    write(path)
    write_manifest(path, manifest.model_copy(update={"weights_sha256": weights_sha256(path)}))
    return path
