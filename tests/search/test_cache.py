"""Row operations on DynamicCache: forks share tensors but not growth; rows restack with left padding."""

import pytest
import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicSlidingWindowLayer

from search import cache as kv


def filled(rows: int, length: int, layers: int = 2, seed: int = 0) -> DynamicCache:
    g = torch.Generator().manual_seed(seed)
    c = DynamicCache()
    for layer in range(layers):
        k = torch.randn(rows, 3, length, 5, generator=g)
        c.update(k, k + 1, layer)
    return c


def test_fork_leaves_parent_unchanged():
    parent = filled(2, 4)
    before = parent.layers[0].keys.clone()
    child = kv.fork(parent)
    child.update(torch.randn(2, 3, 1, 5), torch.randn(2, 3, 1, 5), 0)
    assert kv.seq_length(parent) == 4 and child.layers[0].keys.shape[-2] == 5
    torch.testing.assert_close(parent.layers[0].keys, before, atol=0, rtol=0)
    assert child.layers[1].keys is parent.layers[1].keys  # untouched layers still share storage


def test_select_stack_row():
    a, b = filled(3, 4, seed=1), filled(1, 2, seed=2)
    sel = kv.select_rows(a, torch.tensor([2, 0, 2]))
    torch.testing.assert_close(sel.layers[1].values[0], a.layers[1].values[2], atol=0, rtol=0)
    stacked = kv.stack_rows([sel, b], [0, 2])  # b is 2 shorter: 2 zero positions on its left
    assert stacked.layers[0].keys.shape == (4, 3, 4, 5)
    assert stacked.layers[0].keys[3, :, :2].abs().max() == 0
    torch.testing.assert_close(kv.row(stacked, 3, 2).layers[0].keys, b.layers[0].keys, atol=0, rtol=0)
    torch.testing.assert_close(kv.row(stacked, 1, 0).layers[1].values, a.layers[1].values[0:1], atol=0, rtol=0)


def test_sliding_window_layers_refused():
    c = Cache(layers=[DynamicSlidingWindowLayer(sliding_window=4)])
    with pytest.raises(ValueError, match="sliding-window"):
        kv.fork(c)
