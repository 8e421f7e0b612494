"""Data-parallel training under ``torchrun``: process group, model wrapping, small collectives.

``torchrun --nproc_per_node=N -m lorakit.cli train ...`` sets ``RANK``/``WORLD_SIZE``/
``LOCAL_RANK``; the same command without torchrun is a world of one and never touches
``torch.distributed``. The backend is gloo on CPU and nccl on GPU. Every process holds the
whole dataset and the same plan (see ``batching``); only rank 0 writes files.

DDP replicates the model; with ``fsdp=True`` each decoder block and then the root are sharded
with FSDP2 ``fully_shard`` (frozen and trainable parameters may share a block), and state dicts
are gathered to full tensors for checkpoints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_world() -> World:
    """Join the torchrun process group if there is one (a world of one otherwise)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if size == 1:
        return World(device=device)
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return World(dist.get_rank(), dist.get_world_size(), device)


def close_world(world: World) -> None:
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, world: World, fsdp: bool) -> nn.Module:
    """The model to call in the loop: itself, DDP-wrapped, or sharded in place by FSDP2."""
    if world.size == 1:
        return model
    if not fsdp:
        ids = [world.device.index] if world.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)
    from torch.distributed.fsdp import fully_shard

    for module in model.modules():
        if type(module).__name__.endswith("DecoderLayer"):
            fully_shard(module)
    fully_shard(model)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def sum_all(values: list[float], world: World) -> list[float]:
    """Element-wise sum over processes (identity in a world of one)."""
    if world.size == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=world.device)
    dist.all_reduce(t)
    return t.tolist()


def gather_all(obj, world: World) -> list:
    """``obj`` from every process, in rank order."""
    if world.size == 1:
        return [obj]
    out = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def barrier(world: World) -> None:
    if world.size > 1:
        dist.barrier()


def full_state(model: nn.Module, names: list[str], world: World) -> dict[str, torch.Tensor]:
    """The named parameters as full CPU tensors (gathered from FSDP shards when sharded)."""
    params = dict(unwrap(model).named_parameters())
    out = {}
    for name in names:
        p = params[name].detach()
        if hasattr(p, "full_tensor"):  # a DTensor shard under FSDP2: every rank must call this
            p = p.full_tensor()
        out[name] = p.cpu().clone()
    return out


def _sharded(model: nn.Module) -> bool:
    return any(hasattr(p, "full_tensor") for p in model.parameters())


def load_trainable(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy checkpointed trainable tensors into the model (names as ``unwrap(model)`` has them)."""
    params = dict(unwrap(model).named_parameters())
    unknown = sorted(set(tensors) - set(params))
    missing = sorted(n for n, p in params.items() if p.requires_grad and n not in tensors)
    if unknown or missing:
        raise ValueError(f"checkpoint does not fit the model: unknown {unknown[:3]}, "
                         f"missing {missing[:3]}")
    if _sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(model, tensors, options=StateDictOptions(full_state_dict=True, strict=False))
        return
    with torch.no_grad():
        for name, tensor in tensors.items():
            params[name].copy_(tensor)


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, world: World) -> dict:
    """The optimizer state to checkpoint (FSDP: gathered to full tensors on rank 0)."""
    if not _sharded(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer,
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict, world: World) -> None:
    if not _sharded(model):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
