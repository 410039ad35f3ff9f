"""Real LoRA adapters for the tests and benchmarks: peft on the tiny model, random weights, published
the way the trainer publishes (``<adapters>/<name>/v<version>/`` + manifest + a row)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from services.common.db import session_scope
from services.common.db.models import Adapter
from services.common.schemas import AdapterManifest, LoraSettings

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def wait_for(condition, seconds: float = 20.0) -> bool:  # type: ignore[no-untyped-def]
    """Poll ``condition`` every 0.25 s until it holds (True) or ``seconds`` pass (False)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.25)
    return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
    """Write weights + manifest under ``<adapters>/<name>/v<version>``; register a row when given a URL."""
    path = adapters_path / name / f"v{version}"
    make_lora(model_dir, path, seed, rank)
    manifest = AdapterManifest(
        name=name,
        version=version,
        base_model=str(model_dir),
        method="lora",
        task=task,  # type: ignore[arg-type]
        lora=LoraSettings(r=rank, alpha=2 * rank, dropout=0.0, target_modules=TARGETS),
        weights_sha256=f"seed-{seed}",
    )
    return _register(path, manifest, database_url)


def _register(path: Path, manifest: AdapterManifest, database_url: str | None) -> Path:
    """The manifest beside the weights and, given a URL, the registry row, as the trainer writes them."""
    (path / "manifest.json").write_text(manifest.model_dump_json(indent=2))
    if database_url:
        with session_scope(database_url) as session:
            session.add(Adapter.from_manifest(manifest, str(path.resolve())))
    return path


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
    """A full fine-tune under ``<adapters>/<name>/v<version>`` with its manifest (and a row, given a URL)."""
    path = adapters_path / name / f"v{version}"
    make_full_model(model_dir, path, seed)
    manifest = AdapterManifest(
        name=name,
        version=version,
        base_model=str(model_dir),
        method="full",
        task=task,  # type: ignore[arg-type]
        weights_sha256=f"full-seed-{seed}",
    )
    return _register(path, manifest, database_url)
