"""Arithmetic gold checker on hand-computed cases, the carry-forgetting corpus, and gaming attempts.

48 + 77 = 125, written least-significant digit first: target tokens 5 2 1 END (|t| = 4)."""

import random

import pytest

from tokendpo.tasks import get_task
from tokendpo.tasks.arithmetic import ANSWER_DIGITS, answer, carries, first_wrong_token

P = "48+77="


@pytest.fixture(scope="module")
def task():
    return get_task("arithmetic")


@pytest.mark.parametrize("response, first_wrong, gold", [
    ("521", None, 1.0),
    ("511", 1, 1 / 4),     # tens digit wrong (the carry forgotten): one right token before it
    ("125", 0, 0.0),       # the sum written the usual way round is wrong from the start
    ("52", 2, 2 / 4),      # stops early (the final carry forgotten): the EOS at index 2 is the first wrong token
    ("5210", 3, 3 / 4),    # runs on: the extra 0 at index 3 should have been EOS
    ("", 0, 0.0),          # immediate EOS
    ("5 2 1", None, 1.0),  # spaces are not tokens
])
def test_first_wrong_token_and_gold(task, response, first_wrong, gold):
    assert first_wrong_token(P, response) == first_wrong
    assert task.gold_reward(P, response) == pytest.approx(gold)


def test_carries():
    assert answer("99+1=") == "001"
    assert carries("99+1=") == [False, True, True]
    assert carries("48+71=") == [False, False, True]  # 8+1=9, 4+7=11 carries into the hundreds
    assert carries("5+4=") == [False] and answer("0+0=") == "0"
    assert first_wrong_token("99+1=", "00") == 2


def test_corpus_forgets_carries_at_the_stated_rate(task):
    """Each demonstration is the answer with every carry kept or forgotten (digit one lower, mod 10; a forgotten
    final carry drops the hundreds "1") and at most one further corrupted place (END included); the share of
    forgotten carries ≈ carry_forget_rate."""
    corpus = task.corpus(4000, seed=3)
    forgotten = carry_places = 0
    for p, r in corpus:
        right, c = answer(p), carries(p)
        assert r.isdigit() and 1 <= len(r) <= ANSWER_DIGITS + 1
        odd = 0
        for i in range(len(right)):
            if not c[i]:
                odd += i >= len(r) or r[i] != right[i]
                continue
            carry_places += 1
            if i == 2:  # the final carry: present, or dropped (the answer ends after two digits)
                forgotten += len(r) == 2
                odd += len(r) >= 3 and r[2] != "1"
            else:
                forgotten += r[i] == str((int(right[i]) - 1) % 10)
                odd += r[i] not in (right[i], str((int(right[i]) - 1) % 10))
        assert odd <= 1, (p, r)
    rate = forgotten / carry_places
    # binomial sd = sqrt(0.24 / carry_places) < 0.012 here; a corrupted place can mimic or hide a forgotten
    # carry (noise 0.2, over ≤ 4 places), so allow 0.05
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
            assert task.gold_reward(p, y) <= 1.0 - 1 / (len(right) + 1), (p, y)


def test_bad_prompt_is_a_clear_error():
    with pytest.raises(ValueError, match="not of the form 'A\\+B='"):
        first_wrong_token("3*4=", "12")
