"""Arithmetic gold checker on hand-computed cases, the carry-forgetting corpus, and gaming attempts.

482 + 057 = 539, padded to four digits 0539 and written least-significant digit first: target tokens
9 3 5 0 END (L + 1 = 5 answer positions)."""

import random

import pytest

from tokendpo.tasks import get_task
from tokendpo.tasks.arithmetic import ANSWER_DIGITS, answer, carries, first_wrong_token

P = "482+057="


@pytest.fixture(scope="module")
def task():
    return get_task("arithmetic")


@pytest.mark.parametrize("response, first_wrong, gold", [
    ("9350", None, 1.0),
    ("9450", 1, 1 / 5),    # tens digit wrong: one right token before it
    ("0539", 0, 0.0),      # the sum written the usual way round is wrong from the start
    ("935", 3, 3 / 5),     # stops early: the EOS at index 3 is the first wrong token
    ("93500", 4, 4 / 5),   # runs on: the extra 0 at index 4 should have been EOS
    ("", 0, 0.0),          # immediate EOS
    ("9 3 5 0", None, 1.0),  # spaces are not tokens
])
def test_first_wrong_token_and_gold(task, response, first_wrong, gold):
    assert first_wrong_token(P, response) == first_wrong
    assert task.gold_reward(P, response) == pytest.approx(gold)


def test_carries_and_padding():
    assert answer("999+001=") == "0001"
    assert carries("999+001=") == [False, True, True, True]
    assert carries("482+057=") == [False, False, True, False]  # 2+7=9, 8+5=13 carries into the hundreds
    assert answer("000+000=") == "0000"
    assert first_wrong_token("999+001=", "000") == 3


def test_corpus_forgets_carries_at_the_stated_rate(task):
    """Each demonstration differs from the answer only where a carry was forgotten (digit one lower, mod 10) and
    at most one further corrupted place (END included); forgotten carries ≈ carry_forget_rate."""
    corpus = task.corpus(4000, seed=3)
    forgotten = carry_places = 0
    for p, r in corpus:
        right, c = answer(p), carries(p)
        assert r.isdigit() and len(r) in (ANSWER_DIGITS, ANSWER_DIGITS + 1)
        odd = 0
        for i in range(ANSWER_DIGITS):
            forgot = c[i] and r[i] == str((int(right[i]) - 1) % 10)
            carry_places += c[i]
            forgotten += forgot
            odd += r[i] != right[i] and not forgot
        odd += len(r) > ANSWER_DIGITS
        assert odd <= 1, (p, r)
    rate = forgotten / carry_places
    # binomial sd ≈ sqrt(0.24 / carry_places) < 0.012 here; a corrupted place can mimic a forgotten carry
    # (≈ noise/5 · 1/9 per place), so allow 0.05
    assert abs(rate - task.carry_forget_rate) < 0.05, rate


def test_ceiling_is_reached_only_by_the_answer(task):
    rng = random.Random(0)
    for p in task.prompts("heldout", 50, seed=1):
        assert task.ceiling(p) == 1.0 and task.gold_reward(p, answer(p)) == 1.0
        for _ in range(40):
            y = "".join(rng.choice("0123456789") for _ in range(rng.randint(0, 7)))
            assert (task.gold_reward(p, y) == 1.0) == (y == answer(p))


def test_gaming_scores_below_the_answer(task):
    """Token soup, repetition loops, prompt echo and padding with extra digits or text all score below the
    short correct answer (and below its value minus one position)."""
    rng = random.Random(1)
    for p in task.prompts("heldout", 30, seed=2):
        right = answer(p)
        attempts = [
            "".join(rng.choice("0123456789+=") for _ in range(12)),   # token soup
            right[0] * 20,                                          # repetition loop
            (right + " ") * 4,                                      # the answer, looped
            p, p + right,                                           # prompt echo
            right + "0", right + " and so on", right + "=" + right,  # padding
        ]
        for y in attempts:
            assert task.gold_reward(p, y) <= 1.0 - 1 / (ANSWER_DIGITS + 1), (p, y)


def test_bad_prompt_is_a_clear_error():
    with pytest.raises(ValueError, match="not of the form 'A\\+B='"):
        first_wrong_token("3*4=", "12")
