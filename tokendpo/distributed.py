"""Several processes on torch.distributed: DDP or FSDP2 (`fully_shard`), gloo on CPU, nccl on GPU.

Launched with `torchrun --nproc_per_node N -m tokendpo.train ...`. Each rank takes its slice of every global
micro-batch (global batch = per_device_train_batch_size × world size), gradients are averaged by DDP/FSDP, logged
metrics are averaged across ranks, and rank 0 writes files.

- FSDP2 shards every decoder layer (the classes the model's `_no_split_modules` names), then the root (embeddings,
  final norm, LM head): each rank stores ~1/world of every parameter, and a forward or backward all-gathers one
  layer at a time.
- DDP all-reduces gradients once per optimizer step: under gradient accumulation the micro-batches before the
  last run inside `no_sync()` (`grad_sync`), so gradients accumulate locally and the last backward averages the
  sum — the same gradient as syncing every micro-batch, for 1/accum of the traffic.
- The process group is torn down (`shutdown`) when training ends, normally or not, if `init` created it.

Checkpoints hold full (unsharded) model weights and a parameter-name-keyed full optimizer state
(torch.distributed.checkpoint.state_dict), so a run can resume on a different number of processes — or on one.
"""

from __future__ import annotations

import contextlib
import os
import sys
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
    owns_group: bool = False  # init() created the process group, so shutdown() destroys it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init(device_name: str) -> tuple[Dist, torch.device]:
    """Join the process group torchrun describes (WORLD_SIZE > 1); one process otherwise. A group the caller
    already initialised is used as is and left to the caller to destroy."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), pick_device(device_name)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_name in ("auto", "cuda")
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("nccl" if use_cuda else "gloo")
    device = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    return Dist(rank, world, local, owns_group=created), device


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules FSDP2 shards one by one: every instance of a class named in a `_no_split_modules` of `model` or
    of a transformers model inside it (Llama: `LlamaDecoderLayer`), outermost instances only, in module order.
    Empty for a model that names none."""
    names = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or ())
    layers: list[torch.nn.Module] = []
    inside: set[int] = set()  # ids of modules within a layer already taken (modules() is pre-order)
    for m in model.modules():
        if type(m).__name__ in names and id(m) not in inside:
            layers.append(m)
            inside.update(id(x) for x in m.modules())
    return layers


def wrap(model: torch.nn.Module, d: Dist, mode: str) -> torch.nn.Module:
    """DDP (a replica per rank) or FSDP2 (each decoder layer, then the root, sharded across ranks).

    FSDP2: `fully_shard(layer)` makes each decoder layer its own all-gather / reduce-scatter unit; the root call
    then shards what is left (embeddings, final norm, LM head) as one more unit. The parameters become DTensors
    holding 1/world of dim 0 on each rank (padded to a multiple of world)."""
    if not d.enabled:
        return model
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        layers = decoder_layers(model)
        for layer in layers:
            fully_shard(layer)
        fully_shard(model)
        if d.is_main:
            print(f"fsdp: sharded {len(layers)} decoder layers", file=sys.stderr, flush=True)
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model)


def grad_sync(model: torch.nn.Module, sync: bool):
    """Context for one micro-batch's forward and backward: under DDP with `sync=False`, `no_sync()` — the gradients
    accumulate in .grad locally and the next synced backward all-reduces their sum. Pass `sync=True` on the last
    micro-batch of each optimizer step. FSDP2 and one process: nothing to do (FSDP2 reduce-scatters every
    micro-batch so that only sharded gradients are ever kept)."""
    if sync or not isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return model.no_sync()


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
    """Destroy the process group `init` created (a caller's own group is left alone). Called at the end of
    training and on the way out of an error, so a library caller can train again in the same process."""
    if d.enabled and d.owns_group and dist.is_initialized():
        dist.destroy_process_group()
