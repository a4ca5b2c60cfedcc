"""The encode/collate layer (`tokendpo.data.encode`) gives exactly the ids the plain tokenizer calls give.

Oracles are the tokenizer's own calls, made here one text at a time: `tokenizer(text)` for a prompt,
`tokenizer(text, add_special_tokens=False)` + EOS for a response, `apply_chat_template` for a chat prompt. They are
compared on fresh random texts (more than one tokenizer batch) for each tokenizer kind the project encodes with:
the byte-level preset, a built-in task's word-level tokenizer and a BPE with merges and a ChatML template.
Collated batches are checked position by position against lists built here.
"""

from __future__ import annotations

import random

import pytest
import torch

from search.decode import encode_prompt
from tests.tokendpo.test_data import merges_tokenizer
from tokendpo.data import (TokenizedPair, collate_pairs, collate_rows, encode_prompts, encode_responses, encode_rows,
                           encode_texts)
from tokendpo.data.encode import BATCH
from tokendpo.modeling import byte_level_tokenizer
from tokendpo.sft import encode_examples
from tokendpo.tasks import get_task

KINDS = ("byte_level", "task", "chatml_bpe")


@pytest.fixture(scope="module", params=KINDS)
def kind(request):
    if request.param == "byte_level":
        tok = byte_level_tokenizer()
        words = ["é", "ü", "日本", "\n", "  ", "a", "zebra", "!?", "<s>", "x1"]
    elif request.param == "task":
        task = get_task("sentiment")
        tok = task.tokenizer()
        words = task.lexicon()[:60] + ["unknownword", "7"]
    else:
        tok = merges_tokenizer()
        words = ["Hello", "there", "capital", "France", "\n\n", "Human:", "Assistant:", "super", "?", "é"]
    return request.param, tok, words


def random_texts(words: list[str], n: int, seed: int, empty: bool = True) -> list[str]:
    rng = random.Random(seed)
    out = [" ".join(rng.choice(words) for _ in range(rng.randint(0 if empty else 1, 12))) for _ in range(n)]
    return out


def test_prompts_equal_plain_tokenizer_calls(kind):
    name, tok, words = kind
    texts = random_texts(words, BATCH + 17, seed=random.randrange(10**6))  # spans two tokenizer batches
    assert encode_prompts(tok, texts) == [list(tok(t)["input_ids"]) for t in texts]


def test_responses_equal_plain_tokenizer_calls(kind):
    name, tok, words = kind
    texts = random_texts(words, 40, seed=random.randrange(10**6))
    plain = [list(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    assert encode_responses(tok, texts, add_eos=False) == plain
    assert encode_responses(tok, texts, add_eos=True) == [p + [tok.eos_token_id] for p in plain]
    assert encode_texts(tok, texts) == plain


def test_rows_and_sft_examples_pair_prompt_with_response(kind):
    name, tok, words = kind
    seed = random.randrange(10**6)
    prompts, responses = random_texts(words, 30, seed), random_texts(words, 30, seed + 1)
    want = [(list(tok(p)["input_ids"]), list(tok(y, add_special_tokens=False)["input_ids"]) + [tok.eos_token_id])
            for p, y in zip(prompts, responses)]
    assert encode_rows(tok, prompts, responses, add_eos=True) == want
    assert encode_examples(tok, list(zip(prompts, responses))) == want  # SFT's former inline calls
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        encode_rows(tok, prompts[:2], responses[:1])


def test_chat_template_prompts_equal_apply_chat_template(kind):
    name, tok, words = kind
    texts = random_texts(words, 25, seed=random.randrange(10**6))
    want = []
    for t in texts:
        ids = tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True, tokenize=True)
        want.append(list(ids["input_ids"] if hasattr(ids, "keys") else ids))
    assert encode_prompts(tok, texts, chat_template=True) == want
    assert [encode_prompt(tok, t, True) for t in texts] == want  # search.decode's per-prompt entry


def test_nonempty_gives_an_empty_prompt_a_start_token(kind):
    name, tok, words = kind
    texts = random_texts(words, 20, seed=random.randrange(10**6), empty=False) + [""]
    out = encode_prompts(tok, texts, nonempty=True)
    assert out[:-1] == [list(tok(t)["input_ids"]) for t in texts[:-1]]
    assert out[-1] == (list(tok("")["input_ids"]) or [tok.bos_token_id])


def test_bounded_encoding_keeps_the_needed_ids_of_a_huge_text():
    tok = byte_level_tokenizer()
    rng = random.Random(random.randrange(10**6))
    huge = "".join(rng.choice("ab cdé\n") for _ in range(20_000))
    need = rng.randint(5, 50)
    full = tok(huge, add_special_tokens=False)["input_ids"]
    assert encode_texts(tok, [huge], need)[0][:need] == full[:need]
    assert encode_texts(tok, [huge], need, keep_end=True)[0][-need:] == full[-need:]


def test_collate_rows_position_by_position():
    g = torch.Generator().manual_seed(random.randrange(10**6))
    rows = []
    for _ in range(7):
        n_p, n_r = torch.randint(0, 6, (2,), generator=g).tolist()
        rows.append((torch.randint(4, 200, (n_p,), generator=g).tolist(),
                     torch.randint(4, 200, (n_r + 1,), generator=g).tolist()))
    pad = 0
    out = collate_rows(rows, pad)
    width = max(len(p) + len(r) for p, r in rows)
    for i, (p, r) in enumerate(rows):
        seq = p + r
        assert out["input_ids"][i].tolist() == seq + [pad] * (width - len(seq))
        assert out["attention_mask"][i].tolist() == [1] * len(seq) + [0] * (width - len(seq))
        assert out["labels"][i].tolist() == [-100] * len(p) + r + [-100] * (width - len(seq))
    with pytest.raises(ValueError, match="empty batch"):
        collate_rows([], pad)
    with pytest.raises(ValueError, match="pad_token_id is None"):
        collate_rows(rows, None)


def test_collate_pairs_is_collate_rows_of_chosen_then_rejected():
    rng = random.Random(random.randrange(10**6))
    ids = lambda k: [rng.randrange(4, 100) for _ in range(k)]  # noqa: E731
    pairs = [TokenizedPair(ids(rng.randint(1, 5)), ids(rng.randint(1, 6)), ids(rng.randint(1, 6)), "")
             for _ in range(5)]
    got = collate_pairs(pairs, 3)
    want = collate_rows([(p.prompt_ids, p.chosen_ids) for p in pairs] + [(p.prompt_ids, p.rejected_ids)
                                                                         for p in pairs], 3)
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k])
