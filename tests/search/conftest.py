"""Fixtures for search/: two different tiny Llamas (policy seed 0, reference seed 1), an EOS-prone policy, and a
hand-built "table" language model whose next-token distribution is a lookup over the prefix."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from search.scorer import PairScorer
from tokendpo.modeling import build_preset, load_model, load_tokenizer


@pytest.fixture(scope="session")
def ref_model_dir(tmp_path_factory):
    return build_preset("tiny-llama", tmp_path_factory.mktemp("tiny-llama-ref"), seed=1)


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir):
    return load_tokenizer(str(tiny_model_dir))


@pytest.fixture(scope="session")
def policy(tiny_model_dir):
    return load_model(str(tiny_model_dir)).eval()


@pytest.fixture(scope="session")
def reference(ref_model_dir):
    return load_model(str(ref_model_dir)).eval()


@pytest.fixture(scope="session")
def eos_policy(tiny_model_dir, tokenizer):
    """The policy with its EOS logit row scaled up: responses of varied lengths, many ending early."""
    model = load_model(str(tiny_model_dir)).eval()
    with torch.no_grad():
        model.lm_head.weight[tokenizer.eos_token_id] *= 4.0
    return model


@pytest.fixture
def scorer(policy, reference, tokenizer):
    return PairScorer(policy, reference, beta=0.3, pad_token_id=tokenizer.pad_token_id)


def random_prompts(tokenizer, n: int, seed: int, max_chars: int = 12) -> list[list[int]]:
    """Fresh random lowercase prompts of random lengths (0 chars included), tokenised with BOS."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, max_chars + 1, (n,), generator=g).tolist()
    texts = ["".join(chr(97 + c) for c in torch.randint(0, 26, (k,), generator=g).tolist()) for k in lengths]
    return [tokenizer(t)["input_ids"] for t in texts]


@pytest.fixture
def make_prompts(tokenizer):
    return lambda n, seed, max_chars=12: random_prompts(tokenizer, n, seed, max_chars)


def full_sequence_logps(model, prompt: list[int], response: list[int]) -> torch.Tensor:
    """Independent oracle: log model(response_t | prompt, response_<t) from one unpadded, uncached forward."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    logps = torch.log_softmax(logits[:-1], dim=-1).gather(-1, ids[0, 1:, None]).squeeze(-1)
    return logps[len(prompt) - 1:]


@pytest.fixture
def rescore():
    return full_sequence_logps


class TableLM(torch.nn.Module):
    """A causal LM over a handful of tokens whose next-token logits are `table[prefix]` (else `default`).

    It keeps its "KV cache" in a real DynamicCache: the keys are the token ids themselves, so the scorer's
    cache plumbing (fork, row selection, left-padded stacking, row splitting) decides what prefix it sees.
    """

    def __init__(self, table: dict[tuple[int, ...], list[float]], vocab: int, default: list[float] | None = None):
        super().__init__()
        self.table = {k: torch.tensor(v, dtype=torch.float32) for k, v in table.items()}
        self.default = torch.zeros(vocab) if default is None else torch.tensor(default, dtype=torch.float32)
        self.vocab = vocab
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the module a device

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, use_cache=False,
                logits_to_keep=0, **_):
        B, T = input_ids.shape
        ids = input_ids
        if cache is not None:
            keys, _ = cache.update(input_ids[:, None, :, None].float(), input_ids[:, None, :, None].float(), 0)
            ids = keys[:, 0, :, 0].long()  # (B, past + T)
        mask = torch.ones_like(ids) if attention_mask is None else attention_mask
        past = ids.shape[1] - T
        logits = torch.zeros(B, T, self.vocab)
        for b in range(B):
            real = [int(t) for t, m in zip(ids[b], mask[b]) if m]
            n_pad = int((mask[b] == 0).sum())
            for t in range(T):
                prefix = tuple(real[: past + t + 1 - n_pad])
                logits[b, t] = self.table.get(prefix, self.default)
        if logits_to_keep == 1:
            logits = logits[:, -1:]
        return SimpleNamespace(logits=logits, cache=cache)


@pytest.fixture
def table_lm():
    return TableLM
