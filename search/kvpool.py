"""A pool of one-token KV slots shared by every node of every search tree: node-local caches for MCTS.

Each model (policy, reference) gets one preallocated store

    store[m] : (L, C, 2, H_kv, D)        L layers, C slots, keys and values of one token each

and a slot index s means "this token's K/V in every layer of every model" (one allocator for both models, so
a node needs one integer). A prefix is then a list of slots — the tree's prompt slots (written once per tree
at the prefill), the committed tokens' slots (shared by every node below them) and the slots of the nodes on
the path. Slot 0 is never handed out: it stays zero and pads rows on the left, hidden by the attention mask.

Evaluating R prefixes at once builds an (R, T + q) `index` — the T past slots of each row, left-padded with
slot 0, then q freshly allocated slots for the new tokens — and a `DynamicCache` whose layers are
`PoolLayer`s. Inside the forward each layer's `update(k_new, v_new)` writes the new tokens' K/V into their
slots and gathers the whole rows back with one `index_select` (a block table of one-token blocks):

    keys, values = store[m][l][index]  →  (R, H_kv, T + q, D)    (views of one (R, T + q, 2, H_kv, D) gather)

so nothing is concatenated and the gathered tensors live for one layer only. Memory therefore grows with the
number of live slots, not with nodes × prefix length; `free` returns a dropped subtree's slots. The store
grows by doubling when it runs out (a copy); `limit_bytes` turns that growth into a clear error instead of the
kernel's OOM killer.

The layer type subclasses transformers' `DynamicLayer` and only overrides `update` and `get_seq_length`,
which is all a decoder layer and the mask builder ask of a cache (transformers ≥ 4.56, where caches are lists
of layers).
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

PAD_SLOT = 0


class SearchMemoryError(MemoryError, ValueError):
    """A search would not fit in the memory available; the message says what to change. A ValueError too, so
    CLIs that turn bad input into `error: ...` and exit 2 report it the same way."""


class PoolLayer(DynamicLayer):
    """One layer's view of a pool store for one forward: writes the new tokens' slots, gathers the rows."""

    def __init__(self, store: torch.Tensor, index: torch.Tensor, past: int):
        super().__init__()
        self.store = store  # (C, 2, H, D): this layer's slice of the model's store
        self.index = index  # (R, T + q) slots; the last q columns are the new tokens'
        self.past = past  # T
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        rows, heads, q, dim = key_states.shape  # (R, H, q, D)
        new = self.index[:, self.past:].reshape(-1)  # (R·q,)
        self.store[new, 0] = key_states.transpose(1, 2).reshape(-1, heads, dim).to(self.store.dtype)
        self.store[new, 1] = value_states.transpose(1, 2).reshape(-1, heads, dim).to(self.store.dtype)
        width = self.index.shape[1]
        g = self.store.index_select(0, self.index.reshape(-1)).view(rows, width, 2, heads, dim)
        return g[:, :, 0].transpose(1, 2), g[:, :, 1].transpose(1, 2)  # (R, H, T + q, D) each

    def get_seq_length(self, *args, **kwargs) -> int:
        return self.past


class KVPool:
    """Slots for `models` models' one-token K/V; stores are laid out from the first `write_prefill`."""

    def __init__(self, models: int = 2, capacity: int = 256, limit_bytes: int | None = None):
        self.stores: list[torch.Tensor | None] = [None] * models
        self.capacity = max(2, capacity)
        self.limit_bytes = limit_bytes
        self._free = list(range(self.capacity - 1, PAD_SLOT, -1))  # a stack; slot 0 is the padding slot
        self.peak_live = 0

    # ---- allocation ----------------------------------------------------------------------------------------
    @property
    def live(self) -> int:
        """Slots handed out and not freed."""
        return self.capacity - 1 - len(self._free)

    def slot_bytes(self) -> int:
        """Bytes of one slot over all stores (K and V of one token in every layer of every model)."""
        return sum(s[:, 0].numel() * s.element_size() for s in self.stores if s is not None)

    def nbytes(self) -> int:
        return sum(s.numel() * s.element_size() for s in self.stores if s is not None)

    def alloc(self, n: int) -> list[int]:
        if n > len(self._free):
            self._grow(self.live + 1 + n)
        out = [self._free.pop() for _ in range(n)]
        self.peak_live = max(self.peak_live, self.live)
        return out

    def free(self, slots: list[int]) -> None:
        self._free.extend(slots)

    def _grow(self, need: int) -> None:
        new_cap = max(need, 2 * self.capacity)
        if self.limit_bytes is not None and any(s is not None for s in self.stores):
            extra = (new_cap - self.capacity) * self.slot_bytes()
            if self.nbytes() + extra > self.limit_bytes:
                raise SearchMemoryError(
                    f"the search's KV pool needs {(self.nbytes() + extra) / 2**30:.2f} GiB (> the "
                    f"{self.limit_bytes / 2**30:.2f} GiB allowed); decode fewer prompts at once (--batch_size)"
                )
        for m, s in enumerate(self.stores):
            if s is not None:
                grown = s.new_empty((s.shape[0], new_cap) + tuple(s.shape[2:]))
                grown[:, : self.capacity] = s
                self.stores[m] = grown
        self._free = list(range(new_cap - 1, self.capacity - 1, -1)) + self._free
        self.capacity = new_cap

    # ---- writing and reading -------------------------------------------------------------------------------
    def _layout(self, m: int, cache) -> torch.Tensor:
        if self.stores[m] is None:
            k = cache.layers[0].keys  # (B, H, T, D)
            for layer in cache.layers:
                if type(layer) is not DynamicLayer:
                    raise ValueError(
                        f"the KV pool needs full-attention DynamicLayer caches; this model's cache has a "
                        f"{type(layer).__name__} layer (sliding-window / linear attention is not supported)")
            store = k.new_empty((len(cache.layers), self.capacity, 2, k.shape[1], k.shape[3]))
            store[:, PAD_SLOT] = 0  # padding keys/values must be finite: masked weights are 0, 0·NaN is not
            self.stores[m] = store
        return self.stores[m]

    def write_prefill(self, m: int, cache, attention_mask: torch.Tensor, slots: list[list[int]]) -> None:
        """Copy the real positions of a left-padded prefill `cache` (B rows) of model m into `slots[b]`."""
        store = self._layout(m, cache)
        mask = attention_mask.bool()  # (B, T)
        flat = torch.tensor([s for row in slots for s in row], dtype=torch.long, device=store.device)
        for layer, lc in enumerate(cache.layers):
            k = lc.keys.transpose(1, 2)[mask]  # (Σ real, H, D) in row-major (row, position) order
            v = lc.values.transpose(1, 2)[mask]
            store[layer, flat, 0] = k.to(store.dtype)
            store[layer, flat, 1] = v.to(store.dtype)

    def cache(self, m: int, index: torch.Tensor, past: int) -> DynamicCache:
        """A cache for one forward of model m over `index` (R, past + q): attends to the rows' slots."""
        store = self.stores[m]
        cache = DynamicCache()
        cache.layers = [PoolLayer(store[layer], index, past) for layer in range(store.shape[0])]
        if hasattr(cache, "layer_class_to_replicate"):
            cache.layer_class_to_replicate = None
        return cache


def path_index(rows: list[list[int]], new: list[list[int]], device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(index (R, T + q), attention mask (R, T + q)) for rows of past slots, left-padded, then the new slots."""
    width = max(len(r) for r in rows)
    index = [[PAD_SLOT] * (width - len(r)) + r + n for r, n in zip(rows, new)]
    mask = [[0] * (width - len(r)) + [1] * (len(r) + len(n)) for r, n in zip(rows, new)]
    return (torch.tensor(index, dtype=torch.long, device=device),
            torch.tensor(mask, dtype=torch.long, device=device))
