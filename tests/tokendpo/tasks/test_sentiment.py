"""Sentiment gold reward on hand-computed cases.

VADER's compound for a sum of valences s is s / sqrt(s² + 15) (alpha = 15). Lexicon values used below:
superb 3.1, bad −2.5, good 1.9; the booster "very" adds 0.293 to a positive word; "not" multiplies by −0.74.
"""

import math

import pytest

from tokendpo.tasks import get_task
from tokendpo.tasks.sentiment import TOPICS, topic_of

PROMPT = "thoughts on the quiet diner :"  # topic: restaurant


def compound(s: float) -> float:
    return s / math.sqrt(s * s + 15)


@pytest.fixture(scope="module")
def task():
    return get_task("sentiment")


def test_topic_of_prompt():
    assert topic_of(PROMPT) == "restaurant"
    assert topic_of("my verdict on the modern headset :") == "gadget"
    with pytest.raises(ValueError, match="not one the task's grammar produces"):
        topic_of("tell me a joke")


@pytest.mark.parametrize("response, expected", [
    ("the food was superb .", compound(3.1)),                                   # 0.6249
    ("the food was very superb .", compound(3.1 + 0.293)),                      # 0.6590
    ("the food was not good .", compound(1.9 * -0.74)),                         # −0.3412
    ("the food was superb but the service was bad .", (compound(3.1) + compound(-2.5)) / 2),  # each clause alone
    ("the menu seemed plain .", 0.0),                                           # a word VADER does not know
])
def test_gold_reward_hand_computed(task, response, expected):
    assert task.gold_reward(PROMPT, response) == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("response", [
    "",                                                                           # nothing
    "the food was superb",                                                        # no final "."
    "the battery was superb .",                                                   # aspect of another topic
    "the food was superb and the food was superb .",                              # repeated aspect
    "the food looked pretty charming and the food looked pretty charming and the food looked pretty charming .",
    "the food was good and the service was good and the staff was good and the menu was good .",  # 4 clauses
    "the food was superb . the",                                                  # junk after the end
    "superb superb superb .",                                                     # stacking positive words
    "the food was very very superb .",                                            # two adverbs
])
def test_responses_the_grammar_cannot_produce_get_the_minimum(task, response):
    assert task.gold_reward(PROMPT, response) == -1.0
    assert not task.is_valid(PROMPT, response)


def test_reward_does_not_grow_with_length(task):
    """Mean over clauses: three superb clauses score like one (VADER on the whole text would give 0.92)."""
    one = task.gold_reward(PROMPT, "the food was superb .")
    three = task.gold_reward(PROMPT, "the food was superb and the service was superb and the staff was superb .")
    assert three == pytest.approx(one, abs=1e-9)
    assert max(task.gold_reward(PROMPT, f"the food was very {a} .") for a in ("superb", "great", "gorgeous")) < 0.7


def test_every_topic_has_enough_aspects_for_three_clauses():
    assert all(len(aspects) >= 3 for _, aspects in TOPICS.values())
