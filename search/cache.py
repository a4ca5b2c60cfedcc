"""Row operations on transformers' `DynamicCache`: fork, select rows, stack left-padded rows, split into rows.

A `DynamicLayer` holds keys/values of shape (R, H, T, D) and grows them with `torch.cat` (a new tensor each
step, the old one untouched). So a *fork* — new cache and layer objects pointing at the same tensors — costs
O(layers), and a parent's cache stays valid after a child extends its fork: tree nodes share their prefix's
tensors instead of copying them. Selecting rows (beam reordering) goes through the cache's own
`batch_select_indices`; stacking rows of different lengths left-pads them with zeros, which the attention
mask hides.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from transformers.cache_utils import Cache, DynamicLayer


def _layers(cache: Cache) -> list[DynamicLayer]:
    for layer in cache.layers:
        if type(layer) is not DynamicLayer:
            raise ValueError(
                f"search needs full-attention DynamicLayer caches to pad and stack rows; this model's cache has a "
                f"{type(layer).__name__} layer (sliding-window / linear attention is not supported)"
            )
    return cache.layers


def fork(cache: Cache) -> Cache:
    """A new cache object sharing this one's tensors; extending the fork leaves `cache` unchanged."""
    new = copy.copy(cache)
    new.layers = [copy.copy(layer) for layer in _layers(cache)]
    return new


def select_rows(cache: Cache, index: torch.Tensor) -> Cache:
    """Rows `index` (R',) of `cache`, in that order (repeats allowed): beam reordering and sample fan-out."""
    new = fork(cache)
    new.batch_select_indices(index.to(cache.layers[0].keys.device))
    return new


def _with_tensors(template: Cache, kv: list[tuple[torch.Tensor, torch.Tensor]]) -> Cache:
    new = fork(template)
    for layer, (k, v) in zip(new.layers, kv):
        layer.keys, layer.values = k, v
    return new


def seq_length(cache: Cache) -> int:
    return _layers(cache)[0].keys.shape[-2]


def stack_rows(caches: list[Cache], pads: list[int]) -> Cache:
    """Concatenate single- or multi-row caches along rows, left-padding cache i by pads[i] zero positions.

    Every result row has length max_i(T_i + pads_i); callers choose pads so that all rows end aligned.
    """
    layers = [_layers(c) for c in caches]
    kv = []
    for i in range(len(layers[0])):
        ks = [F.pad(ls[i].keys, (0, 0, p, 0)) if p else ls[i].keys for ls, p in zip(layers, pads)]
        vs = [F.pad(ls[i].values, (0, 0, p, 0)) if p else ls[i].values for ls, p in zip(layers, pads)]
        kv.append((torch.cat(ks, dim=0), torch.cat(vs, dim=0)))  # (R, H, T, D)
    return _with_tensors(caches[0], kv)


def row(cache: Cache, i: int, start: int) -> Cache:
    """Row i of `cache` without its first `start` (padding) positions: views, no copy."""
    kv = [(layer.keys[i:i + 1, :, start:], layer.values[i:i + 1, :, start:]) for layer in _layers(cache)]
    return _with_tensors(cache, kv)


