"""The training method: one enum, its rules, and the plain strings it reads and writes."""

from __future__ import annotations

import json
from typing import get_args

import pytest
from pydantic import ValidationError

from services.common.methods import MethodName, TrainingMethod
from services.common.schemas import AdapterManifest
from services.trainer.config import TrainConfig


def test_the_values_are_the_strings_configs_and_the_api_spell() -> None:
    assert (
        [method.value for method in TrainingMethod] == list(get_args(MethodName)) == ["lora", "qlora", "full"]
    )
    assert TrainingMethod("qlora") is TrainingMethod.QLORA
    assert (
        TrainingMethod.LORA == "lora"
        and f"{TrainingMethod.FULL}" == "full"
        and str(TrainingMethod.QLORA) == "qlora"
    )
    assert json.dumps({"method": TrainingMethod.FULL}) == '{"method": "full"}'


@pytest.mark.parametrize(
    ("method", "adapter", "served_as", "quantised", "gpu", "shardable", "tokenizer", "wait"),
    [
        ("lora", True, "adapter", False, False, True, False, True),
        ("qlora", True, "adapter", True, True, False, False, True),
        ("full", False, "full model", False, False, True, True, False),
    ],
)
def test_each_method_carries_its_rules(
    method: str,
    adapter: bool,
    served_as: str,
    quantised: bool,
    gpu: bool,
    shardable: bool,
    tokenizer: bool,
    wait: bool,
) -> None:
    rules = TrainingMethod(method)
    assert rules.is_adapter is adapter and rules.trains_all_weights is not adapter
    assert rules.served_as == served_as
    assert (rules.quantised, rules.needs_gpu, rules.shardable) == (quantised, gpu, shardable)
    assert (rules.carries_tokenizer, rules.wait_for_load) == (tokenizer, wait)


def test_fields_read_and_write_plain_strings_and_hold_the_member() -> None:
    config = TrainConfig.model_validate({"name": "q", "method": "qlora"})
    assert config.method is TrainingMethod.QLORA and config.method.needs_gpu
    assert TrainConfig(name="d").method is TrainingMethod.LORA  # the default is a member too
    assert config.model_dump(mode="json")["method"] == "qlora"
    assert json.loads(config.model_dump_json())["method"] == "qlora"
    manifest = AdapterManifest.model_validate_json(
        '{"name": "a", "base_model": "tiny", "method": "full", "task": "btc-trend"}'
    )
    assert manifest.method is TrainingMethod.FULL and not manifest.method.is_adapter
    assert json.loads(manifest.model_dump_json())["method"] == "full"


def test_the_schema_and_the_error_are_the_string_literals_they_were() -> None:
    schema = TrainConfig.model_json_schema()["properties"]["method"]
    assert schema["enum"] == ["lora", "qlora", "full"] and schema["type"] == "string"
    assert schema["default"] == "lora" and "$ref" not in schema
    with pytest.raises(ValidationError) as caught:
        TrainConfig.model_validate({"name": "x", "method": "dora"})
    error = caught.value.errors()[0]
    assert error["type"] == "literal_error" and error["msg"] == "Input should be 'lora', 'qlora' or 'full'"
