"""Training one job across processes: data-parallel (DDP) or sharded (FSDP), when launched so.

    accelerate launch --multi_gpu --num_processes 8 -m services.pipeline.cli train run job.json
    accelerate launch --config_file deploy/accelerate/fsdp.yaml -m services.pipeline.cli train run job.json
    torchrun --nproc_per_node 8 -m services.pipeline.cli train run job.json          # DDP
    ACCELERATE_USE_FSDP=true torchrun --nproc_per_node 8 -m services.pipeline.cli train run job.json

The launcher starts one process per GPU (or, with ``--cpu`` / ``ACCELERATE_USE_CPU=1``, CPU
processes over gloo) and sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``. accelerate is the
launcher; the wrapping is PyTorch's own, done here, so one code path runs on GPUs over NCCL and
on CPU processes over gloo (where the suite tests it: accelerate's own FSDP refuses CPUs).

- DDP: every rank holds the whole model; gradients are averaged.
- FSDP (``ACCELERATE_USE_FSDP=true``, which accelerate's launch config sets): FSDP2's
  ``fully_shard`` on every decoder layer, then on the root, so each rank holds 1/world of every
  parameter, gradient and optimizer state. Evaluation runs on every rank (a sharded forward
  needs them all), and the full state is gathered to the main rank before it publishes.

Every optimizer step consumes ``optim.batch_size`` examples of the same seeded order a single
process would: each rank takes every world-th example of that global batch. Only the main rank
publishes and notifies. Checkpoints: every rank takes part in gathering the weights that train
and the optimizer state (whole, so they reshard on resume), the main rank writes them with
every rank's RNG state; a relaunch with the same strategy and process count resumes. The
checkpoint directory must be one every rank can read (one machine, or shared storage). Not
covered: DeepSpeed (refused with a clear error) and QLoRA under FSDP (4-bit weights do not
shard).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NoReturn

from services.common.errors import InvalidInput
from services.common.methods import TrainingMethod

log = logging.getLogger(__name__)

Strategy = Literal["single", "ddp", "fsdp"]


def _flag(name: str) -> bool:
    return os.environ.get(name, "false").strip().lower() in {"1", "true", "yes"}


def requested_strategy() -> Strategy:
    """What the launcher asked for, read from the environment it set."""
    if _flag("ACCELERATE_USE_DEEPSPEED"):
        raise InvalidInput(
            "DeepSpeed is not supported by the trainer: launch with "
            "deploy/accelerate/fsdp.yaml (FSDP) or --multi_gpu (DDP) instead"
        )
    if _flag("ACCELERATE_USE_FSDP"):
        return "fsdp"  # even one process: the same sharded path, on one GPU
    return "ddp" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else "single"


def launched_distributed() -> bool:
    return requested_strategy() != "single"


@dataclass
class Parallel:
    """The processes training one job together; one process with strategy ``single``."""

    strategy: Strategy = "single"
    world: int = 1
    rank: int = 0
    local_rank: int = 0
    use_cuda: bool = False

    @classmethod
    def from_environment(cls) -> Parallel:
        """Join the process group the launcher describes, before the model loads: it binds
        this process to its own GPU, so ``.to("cuda")`` lands there."""
        strategy = requested_strategy()
        if strategy == "single":
            return cls()
        import torch
        import torch.distributed as dist

        use_cuda = torch.cuda.is_available() and not _flag("ACCELERATE_USE_CPU")
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if use_cuda:
            torch.cuda.set_device(local_rank)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if use_cuda else "gloo")
        return cls(strategy, dist.get_world_size(), dist.get_rank(), local_rank, use_cuda)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        return self.strategy == "fsdp"

    def check(self, method: TrainingMethod | str, batch_size: int) -> None:
        """Refuse, before any weights load, a job this launch cannot run."""
        if batch_size < self.world:
            raise InvalidInput(
                f"batch_size {batch_size} is smaller than the {self.world} processes sharing each batch",
                param="optim.batch_size",
            )
        if self.sharded and not TrainingMethod(method).shardable:
            raise InvalidInput(
                "QLoRA cannot be sharded with FSDP (4-bit weights do not shard): "
                "use method 'lora', or launch QLoRA data-parallel (--multi_gpu)",
                param="method",
            )

    def wrap(self, model: Any) -> Any:
        """DDP or FSDP around the model, as the launch asked; as is for one process. FSDP
        replaces the parameters with sharded ones, so build the optimizer after this."""
        if self.strategy == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            return DistributedDataParallel(model, device_ids=[self.local_rank] if self.use_cuda else None)
        if self.sharded:
            return _fully_shard(model)
        return model

    def unwrap(self, model: Any) -> Any:
        """The model itself: DDP's wrapper holds it as ``.module``; FSDP2 shards in place."""
        return model.module if self.strategy == "ddp" else model

    def shard(self, indices: list[int]) -> list[int]:
        """This rank's share of one global batch."""
        return indices[self.rank :: self.world]

    def mean(self, value: float) -> float:
        """The mean of a per-rank figure (the loss each rank saw) over every rank."""
        return self._all_reduce(value) / self.world

    def total(self, value: int) -> int:
        return round(self._all_reduce(value))

    def _all_reduce(self, value: float) -> float:
        if self.world == 1:
            return float(value)
        import torch
        import torch.distributed as dist

        tensor = torch.tensor([float(value)], dtype=torch.float64, device=self._device())
        dist.all_reduce(tensor)
        return float(tensor.item())

    def _device(self) -> Any:
        import torch

        return torch.device("cuda", self.local_rank) if self.use_cuda else torch.device("cpu")

    def full_state_dict(self, model: Any) -> dict[str, Any] | None:
        """Under FSDP, every rank's shards gathered into one CPU state dict on the main rank
        (collective: every rank must call it); None when the model already holds its weights."""
        if not self.sharded:
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(model, options=options)

    @property
    def layout(self) -> dict[str, Any]:
        """What a checkpoint must have been written by to be resumed here."""
        return {"strategy": self.strategy, "world": self.world}

    def training_state(self, model: Any, optimizer: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """(the weights that train, the optimizer's state), whole, on the main rank (collective
        under a launcher: FSDP's shards are gathered; the other ranks get empty dicts)."""
        if self.strategy == "single":
            return _trainable_tensors(model), optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_state, optimizer_state = get_state_dict(model, optimizer, options=options)
        trains = {name for name, p in self.unwrap(model).named_parameters() if p.requires_grad}
        return {name: t for name, t in model_state.items() if name in trains}, optimizer_state

    def load_training_state(
        self, model: Any, optimizer: Any, trainable: dict[str, Any], optimizer_state: dict[str, Any]
    ) -> None:
        """The inverse of ``training_state``; under a launcher every rank passes the whole
        state (each read the checkpoint) and keeps its own shard of it."""
        import torch

        if self.strategy == "single":
            parameters = dict(model.named_parameters())
            with torch.no_grad():
                for name, tensor in trainable.items():
                    parameters[name].copy_(tensor.to(parameters[name].device))
            optimizer.load_state_dict(optimizer_state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        options = StateDictOptions(full_state_dict=True, strict=False)  # frozen weights are not saved
        set_state_dict(
            model, optimizer, model_state_dict=trainable, optim_state_dict=optimizer_state, options=options
        )

    def rng_states(self) -> list[dict[str, Any]]:
        """Every rank's random state (dropout draws differ per rank), indexed by rank."""
        import torch

        state = {
            "cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }
        if self.world == 1:
            return [state]
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.world
        dist.all_gather_object(gathered, state)
        return gathered

    def restore_rng(self, states: list[dict[str, Any]]) -> None:
        import torch

        own = states[self.rank]
        torch.set_rng_state(own["cpu"])
        if own["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(own["cuda"])

    def wait(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        """Leave the process group. Under gloo its threads outlive this: see end_finished_rank."""
        import torch.distributed as dist

        if self.strategy != "single" and dist.is_initialized():
            dist.destroy_process_group()


def end_finished_rank() -> NoReturn:
    """End a launched rank that finished its job (published, past the last barrier, out of the
    process group) here, with status 0, without the interpreter's finalisation.

    Why: gloo's threads (two workers and its TCP loop) outlive ``destroy_process_group()`` and
    the interpreter. ProcessGroupGloo's ``shutdown()`` and ``abort()`` leave them running, only its
    destructor joins them, and under FSDP2 that never runs: torch keeps references to the group
    (FSDP2's per-module state and DTensor's module-level caches hold DeviceMeshes, each holding
    its process groups) that neither deleting the model nor clearing those caches releases. So
    they still run while ``exit()`` runs the C++ static destructors after Python's finalisation,
    and a rank that did everything right can die there of SIGABRT, "terminate called without an
    active exception" (the C++ runtime's ``std::terminate``; pytorch/pytorch#179291, #190489):
    its launch fails, rarely and under load. ``os._exit`` ends the process with nothing run
    after it: no finalisation, no static destructors.

    Only for the end of a rank that succeeded: a rank that fails raises instead, and leaves by
    the ordinary path with its message and a non-zero status.
    """
    for thread in threading.enumerate():  # what the interpreter's shutdown would wait for
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    logging.shutdown()  # flushes every handler
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)


def _trainable_tensors(model: Any) -> dict[str, Any]:
    return {name: p.detach().cpu().clone() for name, p in model.named_parameters() if p.requires_grad}


def accelerate_launch_env(config_file: Path) -> dict[str, str]:
    """The ``ACCELERATE_USE_*`` and ``FSDP_*`` variables ``accelerate launch --config_file``
    sets for a launch config, from accelerate's own parser: what the trainer here reads."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = launch_command_parser().parse_args(
        ["--config_file", str(config_file), "-m", "services.pipeline.cli"]
    )
    env = prepare_multi_gpu_env(_validate_launch_command(args)[0])
    return {key: value for key, value in env.items() if key.startswith(("FSDP_", "ACCELERATE_USE_"))}


def _fully_shard(model: Any) -> Any:
    """FSDP2 on each transformer block (the launch config's class names, else the model's
    own ``_no_split_modules``), then on the root; options from accelerate's launch config."""
    from torch.distributed.fsdp import CPUOffloadPolicy, fully_shard

    block_names = _block_class_names(model)
    options: dict[str, Any] = {"reshard_after_forward": _reshard_after_forward()}
    if _flag("FSDP_OFFLOAD_PARAMS"):
        options["offload_policy"] = CPUOffloadPolicy()
    blocks = [module for module in model.modules() if type(module).__name__ in block_names]
    if not blocks:
        raise InvalidInput(f"FSDP: no module of the classes {sorted(block_names)} to shard")
    for block in blocks:
        fully_shard(block, **options)
    fully_shard(model, **options)
    log.info("FSDP: %d blocks of %s sharded, options %s", len(blocks), sorted(block_names), options)
    return model


def _block_class_names(model: Any) -> set[str]:
    configured = os.environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "")
    if configured.strip():
        return {name.strip() for name in configured.split(",") if name.strip()}
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or [])
    return names


def _reshard_after_forward() -> bool:
    """FULL_SHARD frees each block's gathered weights after its forward; SHARD_GRAD_OP keeps
    them until backward (more memory, less communication)."""
    explicit = os.environ.get("FSDP_RESHARD_AFTER_FORWARD")
    if explicit is not None and explicit.strip().lower() in {"true", "false"}:
        return explicit.strip().lower() == "true"
    strategy = os.environ.get("FSDP_SHARDING_STRATEGY", "FULL_SHARD").upper()
    return strategy not in {"SHARD_GRAD_OP", "2"}
