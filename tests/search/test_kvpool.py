"""The KV slot pool: a prefix gathered from one-token slots gives the same next-token log-probs as encoding it
whole; slots are recycled, slot 0 stays the zero padding slot, growth keeps contents, the cap is a clear error."""

import pytest
import torch

from search.kvpool import PAD_SLOT, KVPool, SearchMemoryError, path_index
from search.scorer import ForwardCounter


def full_next_logps(model, prefix: list[int]) -> torch.Tensor:
    """Oracle: log-softmax of the last position of one unpadded, uncached forward."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prefix])).logits[0, -1].double()
    return torch.log_softmax(logits, -1)


def test_gathered_paths_match_full_forwards(scorer, policy, reference, make_prompts):
    """Prompts of different lengths go into the pool once; random continuations (two sharing a prefix, so a
    slot is attended by several rows) are stepped token by token, each step one batched pool forward."""
    prompts = make_prompts(3, seed=41)
    g = torch.Generator().manual_seed(42)
    vocab = policy.config.vocab_size
    pool = KVPool(capacity=4)  # tiny on purpose: forces growth mid-run
    counter = ForwardCounter(3)
    state = scorer.prefill(prompts, counter)
    slots = [pool.alloc(len(p)) for p in prompts]
    pool.write_prefill(0, state.policy_cache, state.attention_mask, slots)
    pool.write_prefill(1, state.reference_cache, state.attention_mask, slots)
    rows = [0, 1, 2, 2]  # two rows continue prompt 2 from its shared slots
    prefixes = [list(prompts[r]) for r in rows]
    paths = [list(slots[r]) for r in rows]
    for _ in range(4):
        toks = torch.randint(4, vocab, (len(rows),), generator=g)
        new = pool.alloc(len(rows))
        index, mask = path_index(paths, [[x] for x in new])
        lp, lr = scorer.pool_step(pool, index, mask, toks, counter, torch.tensor(rows))
        for i, t in enumerate(toks.tolist()):
            prefixes[i].append(t)
            paths[i].append(new[i])
            torch.testing.assert_close(lp[i].double(), full_next_logps(policy, prefixes[i]), atol=1e-5, rtol=0)
            torch.testing.assert_close(lr[i].double(), full_next_logps(reference, prefixes[i]), atol=1e-5, rtol=0)
    assert pool.capacity > 4
    assert pool.stores[0][:, PAD_SLOT].abs().max() == 0 and pool.stores[1][:, PAD_SLOT].abs().max() == 0


def _filled_pool(capacity: int) -> KVPool:
    from transformers import DynamicCache

    pool = KVPool(models=1, capacity=capacity)
    cache = DynamicCache()
    g = torch.Generator().manual_seed(3)
    for layer in range(2):
        k = torch.randn(1, 3, 2, 5, generator=g)
        cache.update(k, -k, layer)
    slots = [pool.alloc(2)]
    pool.write_prefill(0, cache, torch.ones(1, 2, dtype=torch.long), slots)
    return pool, cache, slots[0]


def test_alloc_free_recycles_and_growth_keeps_contents():
    pool, cache, slots = _filled_pool(capacity=3)
    assert PAD_SLOT not in slots and pool.live == 2
    more = pool.alloc(5)  # grows past the capacity
    assert PAD_SLOT not in more and len(set(slots + more)) == 7 and pool.live == 7
    for layer in range(2):  # the prefilled slots survived the copy
        torch.testing.assert_close(pool.stores[0][layer, slots, 0], cache.layers[layer].keys[0].transpose(0, 1))
        torch.testing.assert_close(pool.stores[0][layer, slots, 1], cache.layers[layer].values[0].transpose(0, 1))
    pool.free(more)
    assert pool.live == 2 and pool.peak_live == 7
    again = pool.alloc(5)
    assert sorted(again) == sorted(more) and pool.capacity == max(3 * 2, 8)  # reused, no further growth


def test_growth_past_the_limit_is_a_clear_error():
    pool, _, _ = _filled_pool(capacity=3)
    pool.limit_bytes = pool.nbytes() + pool.slot_bytes()  # room for one more slot, not for doubling
    with pytest.raises(SearchMemoryError, match="--batch_size"):
        pool.alloc(4)
