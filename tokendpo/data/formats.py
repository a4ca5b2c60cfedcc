"""Validating rows, detecting their format and rendering them to (prompt, chosen, rejected) texts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tokendpo.data.rows import DataError

ROLES = ("system", "user", "assistant", "tool")
HH_ASSISTANT = "\n\nAssistant:"


@dataclass
class Texts:
    """One row after validation: the prompt text and the two response texts, ready to tokenise."""

    prompt: str
    chosen: str
    rejected: str
    chosen_eos: bool  # append EOS (False when the rendered response already ends with it)
    rejected_eos: bool
    source: str


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _check_text(value: Any, src: str, name: str, where: str = "") -> str:
    if not isinstance(value, str):
        raise DataError(src, name, f"{where}expected a string, got {_kind(value)}")
    if not value.strip():
        raise DataError(src, name, f"{where}empty (whitespace-only)" if value else f"{where}empty string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:  # JSON "\ud800" escapes decode to lone surrogates no tokenizer accepts
        raise DataError(src, name, f"{where}invalid unicode: lone surrogate {value[e.start]!r} at character "
                                   f"{e.start}") from None
    return value


def _check_messages(value: Any, src: str, name: str) -> list[dict]:
    if not value:
        raise DataError(src, name, "empty list of messages")
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise DataError(src, name, f"messages[{i}]: expected a {{role, content}} object, got {_kind(m)}")
        for key in ("role", "content"):
            if key not in m or m[key] is None:
                raise DataError(src, name, f"messages[{i}]: missing '{key}'")
        if m["role"] not in ROLES:
            raise DataError(src, name, f"messages[{i}]: unknown role {m['role']!r} (expected one of "
                                       f"{', '.join(ROLES)})")
        if not isinstance(m["content"], str):
            raise DataError(src, name, f"messages[{i}]: 'content' must be a string, got {_kind(m['content'])}")
        _check_text(m["content"], src, name, where=f"messages[{i}] ({m['role']}) content: ")
    return value


def _same(a: dict, b: dict) -> bool:
    return a["role"] == b["role"] and a["content"] == b["content"]


def _row_format(row: dict, fields: tuple[str, str, str], src: str) -> str:
    """explicit | conversational | implicit, after checking the three fields' types."""
    pf, cf, rf = fields
    if cf not in row or rf not in row:
        missing = cf if cf not in row else rf
        raise DataError(src, missing, f"missing (row has: {', '.join(map(str, row)) or 'nothing'})")
    prompt, chosen, rejected = row.get(pf), row[cf], row[rf]  # a row is data: a missing prompt is allowed
    for name, value in ((pf, prompt), (cf, chosen), (rf, rejected)):
        if not isinstance(value, (str, list)) and not (name == pf and value is None):
            raise DataError(src, name, f"expected a string or a list of {{role, content}} messages, got "
                                       f"{_kind(value)}")
    if type(chosen) is not type(rejected):
        raise DataError(src, rf, f"expected a {_kind(chosen)} like '{cf}', got {_kind(rejected)}")
    if isinstance(chosen, list) or isinstance(prompt, list):
        if isinstance(prompt, str):
            raise DataError(src, pf, f"a string, but '{cf}' is a list of messages: give the prompt as messages too")
        return "conversational"
    return "implicit" if prompt is None else "explicit"


def _render(tokenizer, prompt_msgs: list[dict], responses: list[list[dict]], src: str, pf: str,
            names: tuple[str, str]) -> tuple[str, list[str]]:
    """Prompt text (with the generation prompt) and each response's text as the template continues it."""
    try:
        prompt = tokenizer.apply_chat_template(prompt_msgs, tokenize=False, add_generation_prompt=True)
    except Exception as e:  # jinja errors (e.g. "roles must alternate") belong to the row
        raise DataError(src, pf, f"chat template failed: {type(e).__name__}: {e}") from None
    texts = []
    for name, resp in zip(names, responses):
        try:
            full = tokenizer.apply_chat_template(prompt_msgs + resp, tokenize=False)
        except Exception as e:
            raise DataError(src, name, f"chat template failed: {type(e).__name__}: {e}") from None
        if not full.startswith(prompt):
            raise DataError(src, name, "the chat template renders prompt + response so that it does not start "
                                       "with the rendered prompt; no exact prompt/response boundary exists")
        texts.append(full[len(prompt):])
    return prompt, texts


def _conversational(row: dict, fields, src: str, tokenizer) -> tuple[str, str, str]:
    pf, cf, rf = fields
    prompt, chosen, rejected = row.get(pf), row[cf], row[rf]
    if isinstance(chosen, str):
        chosen = [{"role": "assistant", "content": _check_text(chosen, src, cf)}]
        rejected = [{"role": "assistant", "content": _check_text(rejected, src, rf)}]
    chosen, rejected = _check_messages(chosen, src, cf), _check_messages(rejected, src, rf)
    if prompt is None:  # TRL-style full conversations: the prompt is the shared message prefix
        n = 0
        while n < min(len(chosen), len(rejected)) and _same(chosen[n], rejected[n]):
            n += 1
        while n > 0 and (n == len(chosen) or chosen[n]["role"] != "assistant"):
            n -= 1  # back off so both responses start at an assistant turn
        if n == 0:
            raise DataError(src, cf, f"no prompt column '{pf}' and '{cf}'/'{rf}' share no prompt turns "
                                     "before an assistant reply")
        prompt, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
    else:
        prompt = _check_messages(prompt, src, pf)
        k = len(prompt)

        def strip_prompt(resp: list[dict]) -> list[dict]:  # a full conversation that repeats the prompt turns
            return resp[k:] if len(resp) > k and all(_same(a, b) for a, b in zip(resp, prompt)) else resp

        chosen, rejected = strip_prompt(chosen), strip_prompt(rejected)
    for name, resp in ((cf, chosen), (rf, rejected)):
        if not resp:
            raise DataError(src, name, "no response turns after the prompt")
        if resp[0]["role"] != "assistant":
            raise DataError(src, name, f"the response must start with an assistant message, got role "
                                       f"{resp[0]['role']!r}")
    if len(chosen) == len(rejected) and all(_same(a, b) for a, b in zip(chosen, rejected)):
        raise DataError(src, rf, f"identical to '{cf}' (such a pair has zero DPO gradient)")
    prompt_text, (c, r) = _render(tokenizer, prompt, [chosen, rejected], src, pf, (cf, rf))
    return prompt_text, c, r


def _implicit(row: dict, fields, src: str) -> tuple[str, str, str]:
    _, cf, rf = fields
    chosen, rejected = _check_text(row[cf], src, cf), _check_text(row[rf], src, rf)
    lo, hi = 0, min(len(chosen), len(rejected))
    while lo < hi:  # common-prefix length by bisection: ~20 C-speed slice compares even for 1 MB texts
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if chosen[:mid] == rejected[:mid] else (lo, mid - 1)
    cut = chosen.rfind(HH_ASSISTANT, 0, lo)  # last marker lying wholly inside the shared prefix
    if cut < 0:
        raise DataError(src, cf, f"no shared {HH_ASSISTANT!r} with '{rf}': cannot find where the implicit "
                                 "prompt ends")
    end = cut + len(HH_ASSISTANT)
    prompt, c, r = chosen[:end], chosen[end:], rejected[end:]
    for name, resp in ((cf, c), (rf, r)):
        if not resp.strip():
            raise DataError(src, name, "empty (whitespace-only) response after the shared prompt")
    if c == r:
        raise DataError(src, rf, f"identical to '{cf}' (such a pair has zero DPO gradient)")
    return prompt, c, r


def _explicit(row: dict, fields, src: str, tokenizer, chat_template: bool) -> tuple[str, str, str]:
    pf, cf, rf = fields
    prompt = _check_text(row[pf], src, pf)
    chosen, rejected = _check_text(row[cf], src, cf), _check_text(row[rf], src, rf)
    if chosen == rejected:
        raise DataError(src, rf, f"identical to '{cf}' (such a pair has zero DPO gradient)")
    if chat_template:
        as_msgs = [[{"role": "assistant", "content": chosen}], [{"role": "assistant", "content": rejected}]]
        prompt, (chosen, rejected) = _render(tokenizer, [{"role": "user", "content": prompt}], as_msgs, src, pf,
                                             (cf, rf))
    return prompt, chosen, rejected


class Extractor:
    """Turns rows into `Texts`, fixing the dataset's format at its first valid row."""

    def __init__(self, fields: tuple[str, str, str], tokenizer, chat_template: bool):
        self.fields, self.tokenizer, self.chat_template = fields, tokenizer, chat_template
        self.format, self.format_source, self.layout = "", "", ()
        self.eos_text = tokenizer.eos_token

    def __call__(self, row: Any, src: str) -> Texts:
        if isinstance(row, DataError):
            raise row
        fmt = _row_format(row, self.fields, src)
        if self.format and fmt != self.format:
            raise self._mismatch(row, fmt, src)
        templated = fmt == "conversational" or (fmt == "explicit" and self.chat_template)
        if templated and not getattr(self.tokenizer, "chat_template", None):
            need = "conversational rows need" if fmt == "conversational" else "--chat_template needs"
            raise ValueError(f"{src}: {need} a tokenizer with a chat template, and this one has none")
        if fmt == "implicit" and self.chat_template:
            raise ValueError(f"{src}: --chat_template applies to explicit prompt/chosen/rejected strings; "
                             "implicit-prompt (HH-style) full texts are used as written")
        if fmt == "conversational":
            prompt, chosen, rejected = _conversational(row, self.fields, src, self.tokenizer)
        elif fmt == "implicit":
            prompt, chosen, rejected = _implicit(row, self.fields, src)
        else:
            prompt, chosen, rejected = _explicit(row, self.fields, src, self.tokenizer, self.chat_template)
        if not self.format:
            self.format, self.format_source, self.layout = fmt, src, self._layout(row)
        chosen, chosen_eos = self._eos(chosen)
        rejected, rejected_eos = self._eos(rejected)
        return Texts(prompt, chosen, rejected, chosen_eos, rejected_eos, src)

    def _eos(self, text: str) -> tuple[str, bool]:
        """A rendered turn that already ends in the EOS text keeps it (once); otherwise EOS gets appended."""
        stripped = text.rstrip()
        if self.eos_text and stripped.endswith(self.eos_text) and stripped != self.eos_text:
            return stripped, False
        return text, True

    def _layout(self, row: dict) -> tuple[str, ...]:
        return tuple("absent" if row.get(f) is None else _kind(row[f]) for f in self.fields)

    def _mismatch(self, row: dict, fmt: str, src: str) -> DataError:
        """Name the first field whose type differs from the row that fixed the dataset's format."""
        want = {"absent": "no value", "str": "a string", "list": "a list of messages"}
        name, first = next((f, k) for f, k, now in zip(self.fields, self.layout, self._layout(row)) if k != now)
        return DataError(src, name, f"expected {want[first]}, got {_kind(row.get(name))}: the dataset is "
                                    f"{self.format} (detected at {self.format_source})")
