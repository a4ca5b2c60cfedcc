"""Hostile data files: every one gets `FILE:LINE: field 'X': reason` (a `DataError`, never a traceback from
deep inside json/arrow/torch) or, with skip_bad_rows, a counted skip; oversized texts are truncated fast.

Each bad-row case is a small file with good rows around one bad row at a known line; the expected line and
field are written here by hand, not computed by the code under test.
"""

import gzip
import json
from pathlib import Path

import pytest

from tokendpo.config import DataConfig
from tokendpo.data import DataError, load_preference_data
from tokendpo.modeling import byte_level_tokenizer

MB = 1_000_000


@pytest.fixture(scope="module")
def tok():
    return byte_level_tokenizer()


def good(i: int) -> str:
    return json.dumps({"prompt": f"Question {i}?", "chosen": f"Good answer {i}.", "rejected": f"Bad answer {i}."})


def conv(i: int, prompt_role: str = "user", chosen=None) -> str:
    return json.dumps({"prompt": [{"role": prompt_role, "content": f"Question {i}?"}],
                       "chosen": chosen if chosen is not None else [{"role": "assistant", "content": f"Yes {i}."}],
                       "rejected": [{"role": "assistant", "content": f"No {i}."}]})


def hh(i: int, chosen_reply: str = " Sure.", marker: str = "\n\nAssistant:") -> str:
    dialog = f"\n\nHuman: Question {i}?{marker}"
    return json.dumps({"chosen": dialog + chosen_reply, "rejected": dialog + f" No {i}."})


def row(**kw) -> str:
    base = {"prompt": "Q?", "chosen": "yes", "rejected": "no"}
    base.update(kw)
    return json.dumps({k: v for k, v in base.items() if v is not ...})  # `...` drops the key


# (name, lines of the file (str or bytes), bad line, field, words in the reason, DataConfig overrides)
BAD_ROWS = [
    ("truncated_last_line", [good(1), good(2), '{"prompt": "Q", "chosen": "go'], 3, "<row>", "truncated", {}),
    ("truncated_middle_line", [good(1), '{"prompt": "Q", "cho', good(3)], 2, "<row>", "invalid JSON", {}),
    ("invalid_utf8", [good(1), b'{"prompt": "caf\xe9?", "chosen": "a", "rejected": "b"}', good(3)], 2, "<row>",
     "invalid UTF-8", {}),
    ("not_an_object", [good(1), "[1, 2, 3]", good(3)], 2, "<row>", "expected a JSON object, got list", {}),
    ("chosen_int", [good(1), good(2), row(chosen=5)], 3, "chosen", "got int", {}),
    ("prompt_dict", [good(1), row(prompt={"text": "Q"}), good(3)], 2, "prompt", "got dict", {}),
    ("rejected_null", [good(1), row(rejected=None), good(3)], 2, "rejected", "got null", {}),
    ("missing_rejected", [good(1), row(rejected=...), good(3)], 2, "rejected", "missing", {}),
    ("missing_prompt", [good(1), row(prompt=...), good(3)], 2, "prompt", "explicit", {}),
    ("empty_prompt", [good(1), row(prompt=""), good(3)], 2, "prompt", "empty", {}),
    ("whitespace_chosen", [good(1), good(2), good(3), row(chosen=" \n\t ")], 4, "chosen", "whitespace", {}),
    ("chosen_equals_rejected", [good(1), row(chosen="same", rejected="same"), good(3)], 2, "rejected", "identical",
     {}),
    ("lone_surrogate", [good(1), '{"prompt": "a\\ud800b", "chosen": "x", "rejected": "y"}', good(3)], 2, "prompt",
     "lone surrogate", {}),
    ("deeply_nested", [good(1), '{"prompt": ' + "[" * 100_000 + "]" * 100_000 + "}", good(3)], 2, "<row>",
     "nested too deeply", {}),
    ("mixed_types", [good(1), row(rejected=[{"role": "assistant", "content": "no"}]), good(3)], 2, "rejected",
     "got list", {}),
    ("unknown_role_prompt", [conv(1), conv(2, prompt_role="robot"), conv(3)], 2, "prompt", "unknown role 'robot'",
     {}),
    ("unknown_role_chosen", [conv(1), conv(2), conv(3, chosen=[{"role": "wizard", "content": "hi"}])], 3, "chosen",
     "unknown role 'wizard'", {}),
    ("message_without_content", [conv(1), conv(2, chosen=[{"role": "assistant"}]), conv(3)], 2, "chosen",
     "missing 'content'", {}),
    ("message_content_list", [conv(1), conv(2, chosen=[{"role": "assistant", "content": ["a"]}]), conv(3)], 2,
     "chosen", "must be a string", {}),
    ("message_not_object", [conv(1), conv(2, chosen=["hello"]), conv(3)], 2, "chosen", "got str", {}),
    ("response_starts_with_user", [conv(1), conv(2, chosen=[{"role": "user", "content": "hm"}]), conv(3)], 2,
     "chosen", "must start with an assistant", {}),
    ("whitespace_message", [conv(1), conv(2, chosen=[{"role": "assistant", "content": "  "}]), conv(3)], 2,
     "chosen", "whitespace", {}),
    ("conv_then_string_row", [conv(1), good(2), conv(3)], 2, "prompt", "conversational", {}),
    ("hh_whitespace_reply", [hh(1), hh(2, chosen_reply=" "), hh(3)], 2, "chosen", "whitespace", {}),
    ("hh_no_marker", [hh(1), hh(2, marker="\n\nBot:"), hh(3)], 2, "chosen", "no shared", {}),
    ("no_room_for_response", [good(1), row(prompt="P" * 200), good(3)], 2, "prompt", "no room",
     {"max_length": 64, "max_prompt_length": 64}),
]


def write_lines(path: Path, lines: list) -> Path:
    """Lines joined by newlines, no newline after the last one (as a file cut mid-write ends)."""
    path.write_bytes(b"\n".join(x if isinstance(x, bytes) else x.encode("utf-8") for x in lines))
    return path


@pytest.mark.parametrize("name,lines,line,field,words,overrides", BAD_ROWS, ids=[c[0] for c in BAD_ROWS])
@pytest.mark.parametrize("gz", [False, True], ids=["jsonl", "jsonl.gz"])
def test_bad_row_error_or_counted_skip(tmp_path, tok, name, lines, line, field, words, overrides, gz):
    path = write_lines(tmp_path / f"{name}.jsonl", lines)
    if gz:
        path = tmp_path / f"{name}.jsonl.gz"
        path.write_bytes(gzip.compress((tmp_path / f"{name}.jsonl").read_bytes()))
    cfg = DataConfig(dataset=str(path), **overrides)
    with pytest.raises(DataError) as e:
        load_preference_data(cfg, tok)
    msg = str(e.value)
    assert msg.startswith(f"{path}:{line}: field '{field}': ") and words in msg, msg
    assert "\n" not in msg and (e.value.source, e.value.field) == (f"{path}:{line}", field)

    cfg.skip_bad_rows = True
    pairs, _, stats = load_preference_data(cfg, tok)
    assert stats.skipped == 1 and stats.skip_reasons == [msg]
    assert stats.rows == len(lines) and len(pairs) == len(lines) - 1
    assert f"{path}:{line}" not in {p.source for p in pairs}


def test_first_bad_row_is_reported_when_several(tmp_path, tok):
    path = write_lines(tmp_path / "two.jsonl", [good(1), row(chosen=1), row(rejected=2), good(4)])
    with pytest.raises(DataError, match=rf"^{path}:2: field 'chosen'"):
        load_preference_data(DataConfig(dataset=str(path)), tok)
    _, _, stats = load_preference_data(DataConfig(dataset=str(path), skip_bad_rows=True), tok)
    assert stats.skipped == 2 and [r.split(": field")[0] for r in stats.skip_reasons] == [f"{path}:2", f"{path}:3"]


# ------------------------------------------------------------------------------- file-level: never skippable


@pytest.mark.parametrize("skip", [False, True])
def test_empty_files(tmp_path, tok, skip):
    for name, content in (("empty.jsonl", b""), ("blank.jsonl", b"\n  \n\n"), ("empty.json", b"[]"),
                          ("empty.jsonl.gz", gzip.compress(b""))):
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(DataError, match=rf"^{path}:0: field '<file>': empty"):
            load_preference_data(DataConfig(dataset=str(path), skip_bad_rows=skip), tok)


def test_all_rows_bad_with_skip(tmp_path, tok):
    path = write_lines(tmp_path / "junk.jsonl", ["{", row(chosen=3)])
    with pytest.raises(DataError, match=rf"^{path}:0: field '<file>': no usable rows: all 2 .*first: {path}:1: "):
        load_preference_data(DataConfig(dataset=str(path), skip_bad_rows=True), tok)


def test_truncated_gzip(tmp_path, tok):
    data = gzip.compress("\n".join(good(i) for i in range(200)).encode())
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    for skip in (False, True):
        with pytest.raises(DataError, match=rf"^{path}:0: field '<file>': cannot read past line \d+.*truncated"):
            load_preference_data(DataConfig(dataset=str(path), skip_bad_rows=skip), tok)


def test_truncated_json_array(tmp_path, tok):
    path = tmp_path / "arr.json"
    path.write_text("[\n" + ",\n".join(good(i) for i in range(3)) + ',\n{"prompt": "Q", "cho')
    for skip in (False, True):
        with pytest.raises(DataError, match=rf"^{path}:5: field '<row>': invalid JSON.*truncated"):
            load_preference_data(DataConfig(dataset=str(path), skip_bad_rows=skip), tok)


def test_unsupported_and_missing_files(tmp_path, tok):
    path = tmp_path / "data.txt"
    path.write_text("hello")
    with pytest.raises(DataError, match=rf"^{path}:0: field '<file>': unsupported file type"):
        load_preference_data(DataConfig(dataset=str(path)), tok)
    with pytest.raises(ValueError, match="no such file"):
        load_preference_data(DataConfig(dataset=str(tmp_path / "missing.jsonl")), tok)


# ------------------------------------------------------------------------------ oversized texts: truncated fast


class RecordingTokenizer:
    """Delegates to a tokenizer and records the longest text it was asked to tokenise."""

    def __init__(self, inner):
        self.inner, self.longest = inner, 0

    def __call__(self, text, **kw):
        self.longest = max([self.longest] + [len(t) for t in ([text] if isinstance(text, str) else text)])
        return self.inner(text, **kw)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_one_megabyte_texts_are_truncated_fast(tmp_path, tok):
    big = "All work and no play makes Jack a dull boy. " * (MB // 44 + 1)
    dialog = "\n\nHuman: hi\n\nAssistant:"
    lines = [good(1),
             row(prompt="Q1?", chosen=big, rejected="short"),  # 1 MB response
             row(prompt=big + "END?", chosen="a", rejected="b"),  # 1 MB prompt, longer than max_length
             good(4)]
    path = write_lines(tmp_path / "big.jsonl", lines)
    L, P = 256, 128
    rec = RecordingTokenizer(tok)
    pairs, _, stats = load_preference_data(DataConfig(dataset=str(path), max_length=L, max_prompt_length=P), rec)
    # fast by construction, asserted without a clock: only a bounded slice of each text reaches the tokenizer
    assert len(big) > MB and rec.longest < 20 * L
    assert stats.prompts_truncated == 1 and stats.responses_truncated == 1 and stats.skipped == 0
    resp, prompt = pairs[1], pairs[2]
    assert len(resp.prompt_ids) + len(resp.chosen_ids) == L and tok.eos_token_id not in resp.chosen_ids
    assert tok.decode(resp.chosen_ids) == big.encode()[: L - len(resp.prompt_ids)].decode("utf-8", "replace")
    assert len(prompt.prompt_ids) == P and tok.decode(prompt.prompt_ids[1:]).endswith("a dull boy. END?")
    assert prompt.chosen_ids[-1] == tok.eos_token_id

    # the same megabyte as an implicit-prompt (HH-style) pair and as a conversational reply
    hh_path = tmp_path / "big_hh.jsonl"
    hh_path.write_text(json.dumps({"chosen": dialog + " " + big, "rejected": dialog + " " + big + "!"}) + "\n")
    conv_path = tmp_path / "big_conv.jsonl"
    conv_path.write_text(json.dumps({"prompt": [{"role": "user", "content": big}],
                                     "chosen": [{"role": "assistant", "content": big}],
                                     "rejected": [{"role": "assistant", "content": "no"}]}) + "\n")
    rec = RecordingTokenizer(tok)
    hh_pairs, _, hh_stats = load_preference_data(DataConfig(dataset=str(hh_path), max_length=L, max_prompt_length=P),
                                                 rec)
    conv_pairs, _, conv_stats = load_preference_data(DataConfig(dataset=str(conv_path), max_length=L,
                                                                max_prompt_length=P), rec)
    assert rec.longest < 20 * L
    assert tok.decode(hh_pairs[0].prompt_ids[1:]) == dialog
    # both responses are cut inside the shared megabyte: identical ids, kept but counted
    assert hh_stats.identical_after_truncation == 1 and hh_stats.responses_truncated == 2
    assert conv_stats.prompts_truncated == 1 and conv_stats.responses_truncated == 1
    assert tok.decode(conv_pairs[0].prompt_ids[1:]).endswith("a dull boy. \n<|assistant|>\n")


def test_long_prompt_is_truncated_not_an_error(tmp_path, tok):
    path = write_lines(tmp_path / "long.jsonl", [good(1), row(prompt="x" * 300 + "?")])
    pairs, _, stats = load_preference_data(DataConfig(dataset=str(path), max_length=100, max_prompt_length=60), tok)
    assert stats.prompts_truncated == 1 and len(pairs[1].prompt_ids) == 60
    assert pairs[1].chosen_ids[-1] == tok.eos_token_id


def test_duplicate_rows_are_counted_not_errors(tmp_path, tok):
    path = write_lines(tmp_path / "dups.jsonl", [good(1), good(2), good(1), good(1), good(2)])
    pairs, _, stats = load_preference_data(DataConfig(dataset=str(path)), tok)
    assert len(pairs) == 5 and stats.duplicates == 3 and stats.skipped == 0
