"""Preference data: reading, format detection, validation, tokenisation with an exact boundary, collation.

Formats (detected per dataset from its first valid row; every later row must be in the same format):

  explicit        `prompt`, `chosen`, `rejected` are strings. The prompt is used as is, or wrapped as one user
                  message and rendered with the chat template when `chat_template=True`.
  conversational  lists of {role, content} messages. The prompt is rendered with
                  `apply_chat_template(prompt, add_generation_prompt=True)`; a response is the text the template
                  adds after that when rendering prompt + response. Responses may be plain strings (one assistant
                  message), lists of messages, or full conversations that repeat the prompt turns (TRL style):
                  with a prompt column the repeated turns are stripped; without one the prompt is the longest
                  shared message prefix, backed off so that each response starts with an assistant message.
  implicit        no prompt column; `chosen`/`rejected` are full texts sharing a prefix (HH-RLHF): the prompt
                  ends at the last "\\n\\nAssistant:" inside their common prefix, the responses are the rest.
                  Used as written (`chat_template=True` is an error here).

Exact boundary. Prompt and responses are tokenised SEPARATELY and their ids concatenated; the concatenated
string is never tokenised and split. So `prompt_ids` are exactly the ids a generator sees for the prompt, and
decode(prompt_ids + chosen_ids[:-1]) == prompt text + chosen text whenever the tokenizer's decoder is
concatenative (byte-level BPE is). For chat templates, prompt ids + response ids equal the ids of the full
rendered conversation whenever the tokenizer would split there anyway: always for the byte-level preset; for
BPE when the boundary sits after a special token (split off before BPE) or at a newline (GPT-2-style
pre-tokenisers split there) — ChatML and the preset template end their generation prompt so
(tested with a trained BPE + ChatML). Known limit: SentencePiece tokenizers that prepend "▁" to every encoded
text (legacy Llama-2) give a response an extra leading space token; TRL's separate tokenisation shares this.

Special tokens. BOS appears once, at the start of the prompt: when the tokenizer adds BOS (or the template
text starts with it) the prompt gets exactly one; responses are tokenised without special tokens. EOS is
appended to every response, unless the rendered response already ends in the EOS token's text (ChatML-style
templates whose end-of-turn marker is EOS), in which case it is kept once and trailing whitespace is dropped.

Truncation. A prompt longer than `max_prompt_length` tokens is left-truncated (BOS kept at the
front) and counted. Each response is then right-truncated so that prompt + response <= `max_length` and
counted; a truncated response loses its EOS (it did not end there). A row is an error only when no response
token fits. Only a bounded slice of each text is tokenised (the last/first ~8 chars per needed token, widened
when that yields too few tokens), so a 1 MB response costs about as much as a short one.

Errors. A malformed row is a `DataError` reading `FILE:LINE: field 'X': reason` (1-based line for JSON Lines
and JSON-array files; 0-based row index for parquet, saved and hub datasets, written `NAME[split]:INDEX` for
hub ids). Whole-row problems (broken JSON, invalid UTF-8, not an object) use field '<row>'; whole-file problems
(empty file, corrupt gzip, nothing usable) use line 0 and field '<file>' and are never skippable. Whitespace-
only counts as empty. chosen == rejected is an error (such a pair carries no preference signal: its DPO
gradient is exactly zero). With `skip_bad_rows` a bad row is skipped and counted, its message kept in
`DataStats.skip_reasons`. Duplicate rows are counted and warned about, not removed.

Encoding outside the preference data (SFT, evaluation, the tasks, decoding) goes through `tokendpo.data.encode`
with the same convention: prompt with the tokenizer's special tokens, response without, EOS appended.

Reading. JSON / JSON Lines files (optionally .gz) are parsed here, line by line, with the `json` module: that
gives exact line numbers and keeps types as written (the `datasets` json loader reports neither and coerces
mixed-type columns through Arrow). Parquet files, `save_to_disk` dirs and hub ids load through
`datasets`; a plain local dir is resolved into per-split files with `datasets`' own split patterns
(train.jsonl, data/test-*.parquet, ...), each file then read as above.
"""

from tokendpo.data.encode import collate_rows, encode_prompts, encode_responses, encode_rows, encode_texts
from tokendpo.data.formats import ROLES
from tokendpo.data.pairs import (DataStats, TokenizedPair, collate_packed, collate_pairs, load_preference_data, split_eval,
                                 tokenize_pair)
from tokendpo.data.rows import DataError

__all__ = ["DataError", "DataStats", "ROLES", "TokenizedPair", "collate_packed", "collate_pairs", "collate_rows",
           "encode_prompts", "encode_responses", "encode_rows", "encode_texts", "load_preference_data", "split_eval",
           "tokenize_pair"]
