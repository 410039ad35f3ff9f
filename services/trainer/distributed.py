"""Data-parallel training across processes through accelerate, when launched that way.

    accelerate launch --num_processes 8 -m services.cli train run job.json

starts one process per GPU (or, with ``--cpu``, per CPU process over gloo); each sees
``WORLD_SIZE`` > 1 and wraps the model in DistributedDataParallel through
``accelerate.Accelerator``. Every optimizer step still consumes ``optim.batch_size`` examples
of the same seeded order a single process would: each rank takes every world-th example of
that global batch, and DDP averages the gradients. Only the main process evaluates, publishes
and notifies; the others wait for it.

A plain ``hsig train run`` (no launcher) never imports accelerate and trains as before. Not
covered: FSDP and DeepSpeed (``deploy/accelerate/``), whose sharded parameters would need a
gathered state dict before evaluation and publishing; mid-run checkpoints under several
processes (a killed distributed job restarts from step 0).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


def launched_distributed() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@dataclass
class Parallel:
    """The processes training one job together; a single process when ``accelerator`` is None."""

    accelerator: Any | None = None

    @classmethod
    def from_environment(cls) -> Parallel:
        if not launched_distributed():
            return cls()
        from accelerate import Accelerator

        # Created before the model loads: it binds this process to its own device.
        return cls(Accelerator())

    @property
    def world(self) -> int:
        return int(self.accelerator.num_processes) if self.accelerator else 1

    @property
    def rank(self) -> int:
        return int(self.accelerator.process_index) if self.accelerator else 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device_name(self, default: str) -> str:
        """``cuda`` means this rank's GPU once the accelerator bound it; CPU stays ``cpu``."""
        return str(self.accelerator.device) if self.accelerator else default

    def prepare(self, model: Any, optimizer: Any) -> tuple[Any, Any]:
        if self.accelerator is None:
            return model, optimizer
        return self.accelerator.prepare(model, optimizer)

    def shard(self, indices: list[int]) -> list[int]:
        """This rank's share of one global batch."""
        return indices[self.rank :: self.world]

    def backward(self, loss: Any) -> None:
        if self.accelerator is None:
            loss.backward()
        else:
            self.accelerator.backward(loss)

    def clip(self, model: Any, parameters: list[Any], max_norm: float) -> None:
        import torch

        if self.accelerator is None:
            torch.nn.utils.clip_grad_norm_(parameters, max_norm)
        else:
            self.accelerator.clip_grad_norm_(model.parameters(), max_norm)

    def mean(self, value: float) -> float:
        """The mean of a per-rank figure (the loss each rank saw) over every rank."""
        if self.accelerator is None:
            return value
        import torch

        tensor = torch.tensor([value], device=self.accelerator.device)
        return float(self.accelerator.reduce(tensor, reduction="mean").item())

    def total(self, value: int) -> int:
        if self.accelerator is None:
            return value
        import torch

        tensor = torch.tensor([value], device=self.accelerator.device)
        return int(self.accelerator.reduce(tensor, reduction="sum").item())

    def wait(self) -> None:
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()
