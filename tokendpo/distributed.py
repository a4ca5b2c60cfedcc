"""Several processes on torch.distributed: DDP or FSDP2 (`fully_shard`), gloo on CPU, nccl on GPU.

Launched with `torchrun --nproc_per_node N -m tokendpo.train ...`. Each rank takes its slice of every global
micro-batch (global batch = per_device_train_batch_size × world size), gradients are averaged by DDP/FSDP, logged
metrics are averaged across ranks, and rank 0 writes files. Checkpoints hold full (unsharded) model weights and a
parameter-name-keyed full optimizer state (torch.distributed.checkpoint.state_dict), so a run can resume on a
different number of processes — or on one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_optimizer_state_dict)

from tokendpo.device import pick_device


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init(device_name: str) -> tuple[Dist, torch.device]:
    """Join the process group torchrun describes (WORLD_SIZE > 1); one process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), pick_device(device_name)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_name in ("auto", "cuda")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    device = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    return Dist(rank, world, local), device


def wrap(model: torch.nn.Module, d: Dist, mode: str) -> torch.nn.Module:
    """DDP (a replica per rank) or FSDP2 (each decoder layer, then the root, sharded across ranks)."""
    if not d.enabled:
        return model
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        layers = getattr(getattr(model, "model", None), "layers", None)
        for layer in layers or []:
            fully_shard(layer)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def mean_across_ranks(values: dict[str, float], d: Dist) -> dict[str, float]:
    if not d.enabled:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return {k: float(v) / d.world_size for k, v in zip(keys, t.tolist())}


def any_across_ranks(flag: bool, d: Dist) -> bool:
    if not d.enabled:
        return flag
    t = torch.tensor([1 if flag else 0])
    dist.all_reduce(t)
    return bool(t.item())


_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Unsharded weights (on CPU; collective under FSDP, so every rank calls it)."""
    return get_model_state_dict(unwrap(model), options=_FULL)


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Parameter-name-keyed, unsharded optimizer state: loadable at any world size."""
    return get_optimizer_state_dict(unwrap(model), optimizer, options=_FULL)


def load_full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    set_optimizer_state_dict(unwrap(model), optimizer, optim_state_dict=state,
                             options=StateDictOptions(full_state_dict=True))


def grad_norm_value(norm: torch.Tensor) -> float:
    """clip_grad_norm_ returns a DTensor under FSDP2: take the full value."""
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def shutdown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()
