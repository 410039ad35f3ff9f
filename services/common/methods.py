"""The training methods, each carrying the rules that follow from it.

One place answers "what does this method imply": the trainer asks how to load and wrap the
base model and how to publish the result, the inference service asks how to serve it. The
values are the plain strings configs, manifests, JSON and the ``adapters`` table hold
(``"lora"``, ``"qlora"``, ``"full"``); a member compares equal to its string.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AfterValidator, GetPydanticSchema

ServedAs = Literal["adapter", "full model"]
MethodName = Literal["lora", "qlora", "full"]  # the values, as configs and the API spell them


class TrainingMethod(StrEnum):
    LORA = "lora"  # low-rank adapters on a frozen base
    QLORA = "qlora"  # the same adapters on a base loaded in 4 bits (bitsandbytes nf4)
    FULL = "full"  # every weight trains: the result is a model of its own

    @property
    def is_adapter(self) -> bool:
        """The published weights are a PEFT adapter of the base (``adapter_config.json``), the
        LoRA settings apply, and the base model's engine serves it as an adapter."""
        return self is not TrainingMethod.FULL

    @property
    def served_as(self) -> ServedAs:
        """How the inference service serves it: by the base's engine, or by an engine of its own."""
        return "adapter" if self.is_adapter else "full model"

    @property
    def quantised(self) -> bool:
        """The frozen base is loaded in 4 bits (nf4) on this rank's GPU and prepared for k-bit training."""
        return self is TrainingMethod.QLORA

    @property
    def needs_gpu(self) -> bool:
        """bitsandbytes' 4-bit weights need CUDA (and the bitsandbytes package)."""
        return self.quantised

    @property
    def shardable(self) -> bool:
        """FSDP can shard the model: 4-bit weights do not shard (data-parallel still works)."""
        return not self.quantised

    @property
    def trains_all_weights(self) -> bool:
        """Every parameter of the base requires grad (no adapter wraps it)."""
        return not self.is_adapter

    @property
    def carries_tokenizer(self) -> bool:
        """The published directory holds its tokenizer: a full model is loaded on its own."""
        return not self.is_adapter

    @property
    def wait_for_load(self) -> bool:
        """Publishing waits for the inference service to load it: an adapter loads in seconds,
        a full model's own engine takes minutes to start, so that is asked for, not awaited."""
        return self.is_adapter


# A pydantic field of this type holds a TrainingMethod and reads and writes the plain strings. It
# validates as the string literal it always was (same JSON schema, same error for a bad value),
# then becomes the member: ``config.method.is_adapter`` works on anything validated.
Method = Annotated[
    TrainingMethod,
    GetPydanticSchema(lambda _type, handler: handler(MethodName)),
    AfterValidator(TrainingMethod),
]
