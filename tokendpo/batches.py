"""The data order of training: which pairs each optimizer step's micro-batches hold, on each rank.

A pure function of (seed, step, micro-batch, rank), so a resumed run sees exactly the pairs an uninterrupted one
would, and N processes together see exactly what one process sees at the same global batch.
"""

from __future__ import annotations

import math

import torch

from tokendpo import distributed
from tokendpo.config import Config


def micro_batches_per_epoch(n_pairs: int, batch_size: int) -> int:
    return math.ceil(n_pairs / batch_size)


def micro_batch(n_pairs: int, step: int, k: int, cfg: Config, d: distributed.Dist = distributed.Dist()) -> list[int]:
    """This rank's pair indices of the k-th micro-batch of optimizer step `step`.

    A pure function of (seed, step, k, rank), so resume is exact. The global micro-batch (per-device batch ×
    world size pairs) m = step·accum + k falls in epoch m // per_epoch, each epoch shuffled with seed + epoch;
    rank r takes the r-th slice of it — so N processes see exactly the pairs one process would at the same
    global batch size."""
    bs, accum = cfg.train.per_device_train_batch_size, cfg.train.gradient_accumulation_steps
    global_bs = bs * d.world_size
    per_epoch = micro_batches_per_epoch(n_pairs, global_bs)
    m = step * accum + k
    epoch, idx = divmod(m, per_epoch)
    g = torch.Generator().manual_seed(cfg.train.seed + epoch)
    batch = torch.randperm(n_pairs, generator=g)[idx * global_bs:(idx + 1) * global_bs]
    mine = batch[d.rank * bs:(d.rank + 1) * bs]
    return (mine if len(mine) else batch[-1:]).tolist()  # a short last batch: no rank may sit out (collectives)


def total_steps(cfg: Config, n_pairs: int, world_size: int = 1) -> int:
    if cfg.train.max_steps > 0:
        return cfg.train.max_steps
    per_epoch = micro_batches_per_epoch(n_pairs, cfg.train.per_device_train_batch_size * world_size)
    return max(1, math.ceil(cfg.train.num_epochs * per_epoch / cfg.train.gradient_accumulation_steps))


def epoch_of(step: int, cfg: Config, n_pairs: int, d: distributed.Dist) -> float:
    per_epoch = micro_batches_per_epoch(n_pairs, cfg.train.per_device_train_batch_size * d.world_size)
    return step * cfg.train.gradient_accumulation_steps / per_epoch
