"""Preference data: formats, exact prompt/response boundary, BOS/EOS, truncation, labels, eval split, sources.

Oracles are independent of tokendpo.data: HH-RLHF lines are found by reading the gzip file with `json`, the
byte-level tokenizer maps each UTF-8 byte to one token (so token counts are byte counts), and batches are
checked position by position against lists built here.
"""

import gzip
import json
import logging
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from tokendpo.config import DataConfig
from tokendpo.data import DataError, TokenizedPair, collate_pairs, load_preference_data, split_eval, tokenize_pair
from tokendpo.modeling import byte_level_tokenizer

ASSISTANT = "\n\nAssistant:"


@pytest.fixture(scope="module")
def tok():
    return byte_level_tokenizer()


@pytest.fixture(scope="module")
def hh_rows(hh_file):
    with gzip.open(hh_file, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def hh_bad_lines(hh_rows):
    """1-based lines whose chosen final reply is whitespace-only (found without tokendpo)."""
    replies = [r["chosen"][r["chosen"].rfind(ASSISTANT) + len(ASSISTANT):] for r in hh_rows]
    return [i for i, reply in enumerate(replies, 1) if not reply.strip()]


@pytest.fixture(scope="module")
def hh_full(hh_file, tok):
    """The whole HH file, untruncated (max_length far above any dialog)."""
    cfg = DataConfig(dataset=str(hh_file), skip_bad_rows=True, max_length=10**6, max_prompt_length=10**6 - 1)
    return load_preference_data(cfg, tok)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable stand-in map (what tokenizers' ByteLevel uses), written out as the oracle."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def _line(pair: TokenizedPair) -> int:
    return int(pair.source.rsplit(":", 1)[1])


def _nbytes(text: str) -> int:
    return len(text.encode("utf-8"))


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def merges_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE with real merges, BOS added by the post-processor, EOS = ChatML's <|im_end|>, and a
    ChatML template that also writes the BOS text itself (as Llama-style templates do)."""
    texts = ["Hello there, how are you today? I am fine, thank you very much. " * 3,
             "\n\nHuman: What is the capital of France?\n\nAssistant: The capital of France is Paris.",
             " supercalifragilisticexpialidocious" * 10] * 20
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<s>", "<|im_end|>", "<|im_start|>"]
    core.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="<|im_end|>", pad_token="<pad>")
    fast.chat_template = ("{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                          "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    return fast


# ------------------------------------------------------------------------------------------------- HH-RLHF


def test_hh_bad_rows_skipped_and_counted(hh_file, hh_full, hh_bad_lines):
    _, _, stats = hh_full
    assert len(hh_bad_lines) == 4
    assert stats.rows == 2312 and stats.skipped == 4 and stats.train_pairs == 2308
    assert len(stats.skip_reasons) == 4
    for line, reason in zip(hh_bad_lines, stats.skip_reasons, strict=True):
        assert reason.startswith(f"{hh_file}:{line}: field 'chosen': "), reason
        assert "whitespace" in reason


def test_hh_without_skip_raises_at_first_bad_line(hh_file, tok, hh_bad_lines):
    cfg = DataConfig(dataset=str(hh_file), max_length=256, max_prompt_length=128)
    with pytest.raises(DataError) as e:
        load_preference_data(cfg, tok)
    assert str(e.value).startswith(f"{hh_file}:{hh_bad_lines[0]}: field 'chosen': ")


def test_hh_prompt_boundary_is_exact(hh_full, hh_rows, tok):
    pairs, evals, _ = hh_full
    assert evals is None
    assert sorted(set(range(1, 2313)) - {_line(p) for p in pairs}) == [87, 517, 926, 1104]
    last_turn_only = 0
    for p in pairs:
        row = hh_rows[_line(p) - 1]
        assert p.prompt_ids[0] == tok.bos_token_id and tok.bos_token_id not in p.prompt_ids[1:]
        for ids, text in ((p.chosen_ids, row["chosen"]), (p.rejected_ids, row["rejected"])):
            assert ids[-1] == tok.eos_token_id and tok.bos_token_id not in ids
            assert tok.decode(p.prompt_ids[1:] + ids[:-1]) == text  # concatenation round-trips exactly
        prompt = tok.decode(p.prompt_ids[1:])
        assert prompt.endswith(ASSISTANT)
        assert p.prompt_ids[1:] == tok(prompt, add_special_tokens=False)["input_ids"]  # the prompt alone
        # Most HH pairs differ only in the final reply: then the prompt is everything up to its marker.
        cut = row["chosen"].rfind(ASSISTANT) + len(ASSISTANT)
        if row["rejected"].startswith(row["chosen"][:cut]) and ASSISTANT not in row["rejected"][cut:]:
            assert prompt == row["chosen"][:cut]
            last_turn_only += 1
    assert last_turn_only > 2000


def test_hh_truncation_counts(hh_file, hh_full, tok):
    L, P = 128, 48
    cfg = DataConfig(dataset=str(hh_file), skip_bad_rows=True, max_length=L, max_prompt_length=P)
    pairs, _, stats = load_preference_data(cfg, tok)
    full = {_line(p): p for p in hh_full[0]}
    want_prompts = want_responses = 0
    for p in pairs:
        f = full[_line(p)]
        assert p.prompt_ids[0] == tok.bos_token_id and len(p.prompt_ids) <= P
        if len(f.prompt_ids) > P:  # left-truncated: BOS + the prompt's last P-1 tokens
            want_prompts += 1
            assert p.prompt_ids == [tok.bos_token_id] + f.prompt_ids[-(P - 1):]
        else:
            assert p.prompt_ids == f.prompt_ids
        room = L - len(p.prompt_ids)
        for got, untrunc in ((p.chosen_ids, f.chosen_ids), (p.rejected_ids, f.rejected_ids)):
            assert got == untrunc[:room]  # right-truncated; EOS survives only when it fits
            want_responses += len(untrunc) > room
            assert (got[-1] == tok.eos_token_id) == (len(untrunc) <= room)
    assert stats.prompts_truncated == want_prompts > 0
    assert stats.responses_truncated == want_responses > 0
    # byte-level: a prompt is BOS + one token per UTF-8 byte
    assert want_prompts == sum(1 + _nbytes(tok.decode(full[_line(p)].prompt_ids[1:])) > P for p in pairs)


def test_eval_fraction_split_is_seeded(tmp_path, tok):
    rows = [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(50)]
    cfg = DataConfig(dataset=str(write_jsonl(tmp_path / "d.jsonl", rows)), eval_fraction=0.2)
    tr1, ev1, st = load_preference_data(cfg, tok, seed=1)
    tr1b, ev1b, _ = load_preference_data(cfg, tok, seed=1)
    _, ev2, _ = load_preference_data(cfg, tok, seed=2)
    assert (st.train_pairs, st.eval_pairs) == (40, 10) and len(ev1) == 10 and len(tr1) == 40
    assert [p.source for p in ev1] == [p.source for p in ev1b] and tr1 == tr1b
    assert [p.source for p in ev1] != [p.source for p in ev2]
    assert sorted(_line(p) for p in tr1 + ev1) == list(range(1, 51))
    assert [_line(p) for p in ev1] == sorted(_line(p) for p in ev1)  # file order kept
    tr, ev = split_eval(tr1 + ev1, 0.001, seed=0)
    assert len(ev) == 1 and len(tr) == 49


def test_eval_dataset_and_fraction_conflict(tmp_path, tok):
    f = str(write_jsonl(tmp_path / "d.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}]))
    with pytest.raises(ValueError, match="not both"):
        load_preference_data(DataConfig(dataset=f, eval_dataset=f, eval_fraction=0.1), tok)


# ---------------------------------------------------------------------------------- formats and tokenising


def test_explicit_pair_ids(tok):
    bos, eos = tok.bos_token_id, tok.eos_token_id
    byte = {b: tok.convert_tokens_to_ids(ch) for b, ch in bytes_to_unicode().items()}  # GPT-2's byte stand-ins
    p = tokenize_pair("Hi?", " yes", " no", tok, max_length=64, max_prompt_length=32)
    assert p.prompt_ids == [bos, byte[ord("H")], byte[ord("i")], byte[ord("?")]]
    assert p.chosen_ids == [byte[32], byte[ord("y")], byte[ord("e")], byte[ord("s")], eos]
    assert p.rejected_ids == [byte[32], byte[ord("n")], byte[ord("o")], eos]


def test_no_bos_tokenizer(tok):
    nobos = byte_level_tokenizer(add_bos=False)
    p = tokenize_pair("Hi", "a", "b", nobos, max_length=64, max_prompt_length=32)
    assert p.prompt_ids == nobos("Hi", add_special_tokens=False)["input_ids"] and nobos.bos_token_id not in p.prompt_ids
    assert p.chosen_ids[-1] == nobos.eos_token_id


def test_conversational_matches_full_template(tok):
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}]
    chosen = [{"role": "assistant", "content": "Paris."}]
    rejected = [{"role": "assistant", "content": "Lyon, I think."}]
    p = tokenize_pair(prompt, chosen, rejected, tok, max_length=256, max_prompt_length=128)
    gen = tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    assert p.prompt_ids == tok(gen)["input_ids"]
    for ids, resp in ((p.chosen_ids, chosen), (p.rejected_ids, rejected)):
        full = tok.apply_chat_template(prompt + resp, tokenize=False)
        assert p.prompt_ids + ids[:-1] == tok(full)["input_ids"] and ids[-1] == tok.eos_token_id
    # the same pair given as plain-string responses, or as TRL-style full conversations with or without prompt
    assert tokenize_pair(prompt, "Paris.", "Lyon, I think.", tok, max_length=256, max_prompt_length=128) == p
    assert tokenize_pair(None, prompt + chosen, prompt + rejected, tok, max_length=256, max_prompt_length=128) == p
    assert tokenize_pair(prompt, prompt + chosen, prompt + rejected, tok, max_length=256, max_prompt_length=128) == p


def test_trl_full_conversations_multi_turn(tok):
    """The shared prefix ends before the first differing assistant turn; later turns belong to the responses."""
    u1, u2 = {"role": "user", "content": "hi"}, {"role": "user", "content": "more?"}
    a1, a1x, a2 = ({"role": "assistant", "content": c} for c in ("hello", "go away", "sure"))
    p = tokenize_pair(None, [u1, a1, u2, a2], [u1, a1x, u2, a2], tok, max_length=256, max_prompt_length=128)
    assert p.prompt_ids == tok(tok.apply_chat_template([u1], tokenize=False, add_generation_prompt=True))["input_ids"]
    assert tok.decode(p.chosen_ids[:-1]) == "hello\n<|user|>\nmore?\n<|assistant|>\nsure\n"


def test_chat_template_flag_wraps_string_prompts(tok):
    p = tokenize_pair("Hi", "Hello!", "Go away.", tok, max_length=128, max_prompt_length=64, chat_template=True)
    assert tok.decode(p.prompt_ids[1:]) == "<|user|>\nHi\n<|assistant|>\n"
    assert tok.decode(p.chosen_ids[:-1]) == "Hello!\n"


def test_merges_tokenizer_single_bos_single_eos_exact_boundary():
    mt = merges_tokenizer()
    bos, eos = mt.bos_token_id, mt.eos_token_id
    prompt = [{"role": "user", "content": "What is the capital of France?"}]
    chosen = [{"role": "assistant", "content": "The capital of France is Paris."}]
    rejected = [{"role": "assistant", "content": "I am fine, thank you."}]
    p = tokenize_pair(prompt, chosen, rejected, mt, max_length=512, max_prompt_length=256)
    assert p.prompt_ids[0] == bos and p.prompt_ids.count(bos) == 1  # template writes <s>, tokenizer adds <s>
    assert p.chosen_ids.count(eos) == 1 and p.chosen_ids[-1] == eos  # <|im_end|> from the template, not twice
    full = mt.apply_chat_template(prompt + chosen, tokenize=False).rstrip()
    assert p.prompt_ids + p.chosen_ids == mt(full, add_special_tokens=False)["input_ids"]
    # explicit strings: the prompt is tokenised alone, and prompt + response decodes to the original text
    text_p, text_c = "\n\nHuman: What is the capital of France?\n\nAssistant:", " The capital of France is Paris."
    q = tokenize_pair(text_p, text_c, " Lyon.", mt, max_length=512, max_prompt_length=256)
    assert q.prompt_ids == mt(text_p)["input_ids"]
    assert q.chosen_ids[:-1] == mt(text_c, add_special_tokens=False)["input_ids"]
    assert mt.decode(q.prompt_ids[1:] + q.chosen_ids[:-1]) == text_p + text_c


def test_truncation_with_long_tokens_matches_full_tokenisation():
    """Tokens of ~35 chars: the bounded text slice yields too few ids and must be widened, not trusted."""
    mt = merges_tokenizer()
    word = " supercalifragilisticexpialidocious"
    assert len(mt(word, add_special_tokens=False)["input_ids"]) == 1
    long = word * 3000 + " end."
    full_c = mt(long, add_special_tokens=False)["input_ids"]
    full_p = mt("Q " + long, add_special_tokens=False)["input_ids"]
    p = tokenize_pair("Q " + long, long, " no.", mt, max_length=96, max_prompt_length=40)
    assert p.prompt_ids == [mt.bos_token_id] + full_p[-39:]
    assert p.chosen_ids == full_c[:96 - 40] and mt.eos_token_id not in p.chosen_ids


def test_long_prompt_left_truncated_and_no_room_is_an_error(tok):
    long = "x" * 50 + "END"
    p = tokenize_pair(long, "a", "b", tok, max_length=12, max_prompt_length=8)
    assert p.prompt_ids[0] == tok.bos_token_id and tok.decode(p.prompt_ids[1:]) == "xxxxEND"
    assert len(p.prompt_ids) + len(p.chosen_ids) <= 12
    with pytest.raises(DataError, match=r"^row7: field 'prompt': .*no room for a response"):
        tokenize_pair(long, "a", "b", tok, max_length=8, max_prompt_length=8, source="row7")


def test_mixed_formats_and_column_mapping(tmp_path, tok):
    rows = [{"q": "Hi", "good": "yes", "bad": "no"}, {"q": "Yo", "good": "sure", "bad": "nah"},
            {"good": "x", "bad": "y"}]
    f = write_jsonl(tmp_path / "m.jsonl", rows)
    cfg = DataConfig(dataset=str(f), prompt_field="q", chosen_field="good", rejected_field="bad")
    with pytest.raises(DataError) as e:
        load_preference_data(cfg, tok)
    assert str(e.value).startswith(f"{f}:3: field 'q': ") and "explicit" in str(e.value)
    cfg.skip_bad_rows = True
    pairs, _, stats = load_preference_data(cfg, tok)
    assert [p.source for p in pairs] == [f"{f}:1", f"{f}:2"] and stats.format == "explicit" and stats.skipped == 1


def test_duplicates_counted_and_warned(tmp_path, tok, caplog):
    row = {"prompt": "Hi", "chosen": "yes", "rejected": "no"}
    f = write_jsonl(tmp_path / "dup.jsonl", [row, {**row, "chosen": "ok"}, row, row])
    with caplog.at_level(logging.WARNING, logger="tokendpo.data"):
        pairs, _, stats = load_preference_data(DataConfig(dataset=str(f)), tok)
    assert len(pairs) == 4 and stats.duplicates == 2
    assert f"{f}:3 repeats {f}:1" in caplog.text


# ------------------------------------------------------------------------------------------------ collation


def test_collate_layout_and_labels(tok):
    pairs = [tokenize_pair("Hi", "yes!", "no", tok, max_length=64, max_prompt_length=32),
             tokenize_pair("A longer prompt", "ok", "a longer answer", tok, max_length=64, max_prompt_length=32)]
    pad = 0
    b = collate_pairs(pairs, pad_token_id=pad)
    seqs = [(p.prompt_ids, p.chosen_ids) for p in pairs] + [(p.prompt_ids, p.rejected_ids) for p in pairs]
    T = max(len(a) + len(r) for a, r in seqs)
    assert {k: tuple(v.shape) for k, v in b.items()} == {k: (4, T) for k in ("input_ids", "attention_mask", "labels")}
    assert all(v.dtype == torch.long for v in b.values())
    for i, (prompt, resp) in enumerate(seqs):
        n = len(prompt) + len(resp)
        assert b["input_ids"][i].tolist() == prompt + resp + [pad] * (T - n)
        assert b["attention_mask"][i].tolist() == [1] * n + [0] * (T - n)
        assert b["labels"][i].tolist() == [-100] * len(prompt) + resp + [-100] * (T - n)
    with pytest.raises(ValueError, match="pad_token_id"):
        collate_pairs(pairs, None)


# -------------------------------------------------------------------------------------------------- sources


def test_json_array_file_reports_element_lines(tmp_path, tok):
    f = tmp_path / "arr.json"
    f.write_text('[\n  {"prompt": "a", "chosen": "b", "rejected": "c"},\n\n  {"prompt": "d",\n   "chosen": 5,'
                 ' "rejected": "f"}\n]\n')
    with pytest.raises(DataError) as e:
        load_preference_data(DataConfig(dataset=str(f)), tok)
    assert str(e.value).startswith(f"{f}:4: field 'chosen': expected")


def test_dir_splits_and_eval_dataset(tmp_path, tok):
    d = tmp_path / "ds"
    d.mkdir()
    write_jsonl(d / "train.jsonl", [{"prompt": f"p{i}", "chosen": "a", "rejected": "b"} for i in range(5)])
    with gzip.open(d / "test.jsonl.gz", "wt") as f:
        f.write(json.dumps({"prompt": "t", "chosen": "a", "rejected": "b"}) + "\n")
    train, evals, stats = load_preference_data(DataConfig(dataset=str(d), eval_dataset=str(d)), tok)
    assert [p.source for p in train] == [f"{d / 'train.jsonl'}:{i}" for i in range(1, 6)]
    assert [p.source for p in evals] == [f"{d / 'test.jsonl.gz'}:1"] and stats.eval_pairs == 1
    with pytest.raises(ValueError, match="split 'validation'"):
        load_preference_data(DataConfig(dataset=str(d), dataset_split="validation"), tok)


def test_parquet_and_saved_dataset_use_row_index(tmp_path, tok):
    import datasets

    rows = [{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "d", "chosen": "e", "rejected": "e"}]
    ds = datasets.Dataset.from_list(rows)
    ds.to_parquet(str(tmp_path / "d.parquet"))
    ds.save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(DataError) as e:
        load_preference_data(DataConfig(dataset=str(tmp_path / "d.parquet")), tok)
    assert str(e.value).startswith(f"{tmp_path / 'd.parquet'}:1: field 'rejected': identical")
    pairs, _, stats = load_preference_data(DataConfig(dataset=str(tmp_path / "saved"), skip_bad_rows=True), tok)
    assert [p.source for p in pairs] == [f"{tmp_path / 'saved'}[train]:0"] and stats.skipped == 1


def test_unknown_hub_id_is_a_clear_error(tok):
    with pytest.raises(ValueError, match="no-such-org/no-such-dataset"):
        load_preference_data(DataConfig(dataset="no-such-org/no-such-dataset"), tok)
