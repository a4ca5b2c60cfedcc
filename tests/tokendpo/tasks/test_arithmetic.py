"""Arithmetic gold checker on hand-computed cases: 48 + 77 = 125, written least-significant digit first:
target tokens 5 2 1 END (|t| = 4)."""

import pytest

from tokendpo.tasks import get_task
from tokendpo.tasks.arithmetic import answer, first_wrong_token

P = "48+77="


@pytest.mark.parametrize("response, first_wrong, gold", [
    ("521", None, 1.0),
    ("531", 1, 1 / 4),    # second digit (tens) wrong: one right token before it
    ("125", 0, 0.0),      # the sum written the usual way round is wrong from the start
    ("52", 2, 2 / 4),     # stops early: the EOS at index 2 is the first wrong token
    ("5210", 3, 3 / 4),   # runs on: the extra 0 at index 3 should have been EOS
    ("", 0, 0.0),         # immediate EOS
    ("5 2 1", None, 1.0),  # spaces are not tokens
])
def test_first_wrong_token_and_gold(response, first_wrong, gold):
    task = get_task("arithmetic")
    assert first_wrong_token(P, response) == first_wrong
    assert task.gold_reward(P, response) == pytest.approx(gold)


def test_carry_into_a_new_digit():
    assert answer("99+1=") == "001"
    assert first_wrong_token("99+1=", "001") is None
    assert first_wrong_token("99+1=", "00") == 2
    assert get_task("arithmetic").gold_reward("99+1=", "0011") == pytest.approx(3 / 4)
    assert answer("0+0=") == "0" and answer("5+4=") == "9"


def test_corpus_answers_are_right_or_have_one_wrong_digit():
    task = get_task("arithmetic")
    corpus = task.corpus(4000, seed=3)
    wrong = 0
    for p, r in corpus:
        right = answer(p)
        assert len(r) == len(right) and r.isdigit()
        diff = sum(x != y for x, y in zip(r, right))
        assert diff <= 1, (p, r)
        wrong += diff
    # binomial(4000, 0.3): sd 29, so ±145 is 5 sd
    assert abs(wrong - task.sft_error_rate * len(corpus)) < 145


def test_bad_prompt_is_a_clear_error():
    with pytest.raises(ValueError, match="not of the form 'A\\+B='"):
        first_wrong_token("3*4=", "12")
