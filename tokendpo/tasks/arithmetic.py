"""The `arithmetic` task: multi-digit addition, where the gold checker says which response token first goes wrong.

Prompt "48+77=", response "521": the sum 125 written least-significant digit first, one token per digit, then
EOS. Reversed answers (as in Lee et al. 2023, "Teaching arithmetic to small transformers") make each output
digit depend only on the operands' digits at that place and the carry just produced, which a ~0.45M-parameter
model learns on CPU in minutes; written most-significant first, the first digit needs the whole carry chain and
the same model stayed far from competent in the same budget. Operands are in [0, 99].

Compare the response, closed by an end marker, with the reversed answer closed the same way:

    target   t = reversed digits(a + b) + [END]   response   y = digits(response) + [END]
    first_wrong(y) = min{ i : y_i ≠ t_i }          (None when y = t)
    r*(prompt, response) = 1                       if y = t
                         = first_wrong(y) / |t|    otherwise   (share of the answer right before the first error)

An index equal to len(response) means the END itself is wrong: the response stopped before the answer did
(its EOS token is the first wrong token). This is the token-attributable error that credit assignment is scored
on: a DPO policy should put its most negative per-token reward on exactly that token.
"""

from __future__ import annotations

import random
import re

from tokendpo.tasks.base import ModelShape, Recipe, Task

MAX_OPERAND = 99
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


def first_wrong_token(prompt: str, response: str) -> int | None:
    """Index of the first wrong token of `response` (one token per non-space character; index len(response) is
    the end of the response, i.e. its EOS), or None when the response is exactly right."""
    target = list(answer(prompt)) + [None]
    got = list(response.replace(" ", "")) + [None]
    for i, (g, t) in enumerate(zip(got, target)):
        if g != t:
            return i
    return None  # both lists end with None, so a length mismatch is caught inside the loop


class ArithmeticTask(Task):
    """Addition of two integers in [0, 99], answer reversed; r* = share of the answer right before the first
    wrong token."""

    name = "arithmetic"
    shape = ModelShape(hidden_size=96, num_hidden_layers=3, num_attention_heads=4, intermediate_size=384)
    # Why noisy demonstrations: on a clean corpus the SFT model's competence is a knife edge — 400 steps leave
    # carries wrong (gold 0.36), 1200 solve the task (0.996: nothing left to prefer), and 700 gave 0.486 at one
    # thread count and 0.081 at another (same seed). With 30 % of demonstrations carrying one wrong digit, SFT
    # converges to a model that makes such errors at a stable rate, and the errors sit on single tokens.
    sft_error_rate = 0.3
    recipe = Recipe(sft_examples=40000, sft_steps=1200, sft_batch_size=128, sft_lr=3e-3, pair_prompts=2048, k=8,
                    label_temperature=0.05, beta=0.1, rpo_alpha=1.0, dpo_steps=1000, dpo_batch_size=16, dpo_lr=4e-4,
                    max_new_tokens=6)
    heldout_every = 5
    join_tokens = True

    def _random_prompt(self, rng: random.Random) -> str:
        return f"{rng.randint(0, MAX_OPERAND)}+{rng.randint(0, MAX_OPERAND)}="

    def _random_response(self, prompt: str, rng: random.Random) -> str:
        """The SFT corpus's answer: right, except that a share `sft_error_rate` of answers has ONE digit (at a
        uniformly drawn place) replaced by another digit — the imperfect demonstrations DPO then corrects."""
        right = answer(prompt)
        if rng.random() >= self.sft_error_rate:
            return right
        i = rng.randrange(len(right))
        return right[:i] + rng.choice([d for d in "0123456789" if d != right[i]]) + right[i + 1:]

    def is_valid(self, prompt: str, response: str) -> bool:
        return response.replace(" ", "").isdigit()

    def gold_reward(self, prompt: str, response: str) -> float:
        i = first_wrong_token(prompt, response)
        return 1.0 if i is None else i / (len(answer(prompt)) + 1)

    def first_wrong_token(self, prompt: str, response: str) -> int | None:
        return first_wrong_token(prompt, response)

    def lexicon(self) -> list[str]:
        return list("0123456789+=")
