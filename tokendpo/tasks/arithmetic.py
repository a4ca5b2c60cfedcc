"""The `arithmetic` task: two-digit addition whose demonstrations often forget a carry; the gold checker says
which response token first goes wrong.

Prompt "48+77=", response "521": the sum 125 written least-significant digit first, one token per digit, then
EOS. Operands are in [0, 99], so an answer has 1–3 digits and a first error can sit at positions 0..L with
L = 3 (position len(answer) is the EOS). Reversed answers (as in Lee et al. 2023, "Teaching arithmetic to small
transformers") make each output digit depend only on the operands' digits at that place and the carry into it,
which a ~0.45M-parameter model learns on CPU in minutes; written most-significant first, the first digit needs
the whole carry chain and the same model stayed far from competent in the same budget (and so did a three-digit,
zero-padded variant of this task in 1200 SFT steps: loss flat at 1.53 nats/token).

Gold reward. Compare the response, closed by an end marker, with the reversed answer closed the same way:

    target   t = reversed digits(a + b) + [END]      response   y = tokens(response) + [END]
    first_wrong(y) = min{ i : y_i ≠ t_i }          (None when y = t)
    r*(prompt, response) = 1                       if y = t
                         = first_wrong(y) / |t|    otherwise   (share of the answer right before the first error)

An index equal to len(response) means the END itself is wrong: the response stopped before the answer did
(its EOS token is the first wrong token); a response that runs on past the answer is wrong where its EOS belonged.
Every character but spaces is a token, so "5+2" or "five" are wrong from their first non-digit. True ceiling:
1.0 for every prompt, reached by the exact answer and nothing else; any other response scores at most
(|t|−1)/|t|.

Why the demonstrations forget carries. On clean (or uniformly corrupted) demonstrations the SFT model's mode is
the right answer, so greedy decoding already sat at the ceiling on 89 % of prompts and search had no room. Here
each carry into a place is dropped with probability `carry_forget_rate` = 0.6 (the digit is written as
(a_i + b_i) mod 10; a dropped final carry drops the leading "1", so the answer stops early), so the SFT model's
most likely digit after a carry is the wrong one: greedy is right only when no carry occurs, while
temperature-1 samples are right often enough for best-of-N and for preference pairs to find. It also makes
token-level credit non-trivial: after a carry the reference puts ≈ 0.4 on the right digit and ≈ 0.6 on the wrong
one, so the reference's own likelihood cannot tell which token went wrong, while the DPO token reward can. A
further `noise_rate` of demonstrations has one uniformly drawn answer place corrupted (a digit replaced, or an
extra digit where EOS belongs), so the SFT model errs at every position, including the units digit and the end.
"""

from __future__ import annotations

import random
import re
from dataclasses import replace

from tokendpo.tasks.base import ModelShape, Recipe, Task

MAX_OPERAND = 99
ANSWER_DIGITS = 3  # L: the most answer digit tokens (the EOS makes L + 1 answer positions)
_PROMPT = re.compile(r"^(\d+)\+(\d+)=$")


def parse_prompt(prompt: str) -> tuple[int, int]:
    m = _PROMPT.match(prompt.replace(" ", ""))
    if m is None:
        raise ValueError(f"arithmetic: prompt {prompt!r} is not of the form 'A+B='")
    return int(m.group(1)), int(m.group(2))


def answer(prompt: str) -> str:
    """The expected response: the sum's digits, least significant first ("48+77=" -> "521")."""
    a, b = parse_prompt(prompt)
    return str(a + b)[::-1]


def carries(prompt: str) -> list[bool]:
    """carries[i]: whether a carry comes into place i of the answer (least significant first; place 0 never),
    one entry per answer digit."""
    a, b = parse_prompt(prompt)
    out, c = [], 0
    for i in range(len(answer(prompt))):
        out.append(bool(c))
        c = (a // 10 ** i % 10 + b // 10 ** i % 10 + c) // 10
    return out


def first_wrong_token(prompt: str, response: str) -> int | None:
    """Index of the first wrong token of `response` (one token per non-space character; index len(response) is
    the end of the response, i.e. its EOS), or None when the response is exactly right."""
    target = list(answer(prompt)) + [None]
    got = list(response.replace(" ", "")) + [None]
    for i, (g, t) in enumerate(zip(got, target)):
        if g != t:
            return i
    return None  # both lists end with None, so a length mismatch is caught inside the loop


_BASE = Recipe(sft_examples=40000, sft_steps=1200, sft_batch_size=128, sft_lr=3e-3, pair_prompts=2048, k=8,
               label_temperature=0.05, beta=0.1, rpo_alpha=0.0, dpo_steps=600, dpo_batch_size=16, dpo_lr=2e-4,
               max_new_tokens=6)


class ArithmeticTask(Task):
    """Addition of two integers in [0, 99], answer reversed; r* = share of the answer right before the first wrong
    token (ceiling 1.0)."""

    name = "arithmetic"
    shape = ModelShape(hidden_size=96, num_hidden_layers=3, num_attention_heads=4, intermediate_size=384)
    carry_forget_rate = 0.6  # a demonstration drops each carry with this probability (see the module docstring)
    noise_rate = 0.2         # ... and, this often, has one uniformly drawn answer place (END included) corrupted
    # Both recipes share SFT and pairs; plain DPO (rpo_alpha 0) is the default and the theory-facing policy.
    recipes = {"plain": _BASE, "rpo": replace(_BASE, rpo_alpha=1.0, dpo_lr=4e-4)}
    default_recipe = "plain"
    heldout_every = 5
    join_tokens = True

    def _random_prompt(self, rng: random.Random) -> str:
        return f"{rng.randint(0, MAX_OPERAND)}+{rng.randint(0, MAX_OPERAND)}="

    def _random_response(self, prompt: str, rng: random.Random) -> str:
        """A demonstration: each carry forgotten with probability `carry_forget_rate`, then with probability
        `noise_rate` one of the L + 1 answer places corrupted (another digit, or an extra digit at the end)."""
        a, b = parse_prompt(prompt)
        digits = []
        for i, carry_in in enumerate(carries(prompt)):
            keep = carry_in and rng.random() >= self.carry_forget_rate
            d = (a // 10 ** i % 10 + b // 10 ** i % 10 + keep) % 10
            if i == 2 and not keep:  # the hundreds place holds only the final carry: forgetting it drops the "1"
                break
            digits.append(str(d))
        if rng.random() < self.noise_rate:
            i = rng.randrange(len(digits) + 1)
            if i == len(digits):
                digits.append(rng.choice("0123456789"))
            else:
                digits[i] = rng.choice([d for d in "0123456789" if d != digits[i]])
        return "".join(digits)

    def is_valid(self, prompt: str, response: str) -> bool:
        return response.replace(" ", "").isdigit()

    def gold_reward(self, prompt: str, response: str) -> float:
        i = first_wrong_token(prompt, response)
        return 1.0 if i is None else i / (len(answer(prompt)) + 1)

    def ceiling(self, prompt: str) -> float:
        parse_prompt(prompt)
        return 1.0

    def first_wrong_token(self, prompt: str, response: str) -> int | None:
        return first_wrong_token(prompt, response)

    def answer_positions(self) -> int:
        """L + 1: the places a first error can sit in (L digits, then the EOS)."""
        return ANSWER_DIGITS + 1

    def lexicon(self) -> list[str]:
        return list("0123456789+=")
