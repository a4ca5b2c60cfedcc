"""Sentiment gold (whole-review judge) on hand-computed cases, its gradual penalties, its true ceiling, and
gaming attempts.

VADER's compound for a sum of valences s is s / sqrt(s² + 15) (alpha = 15). Lexicon values used below:
superb 3.1, bad −2.5, good 1.9, truly 1.9 (a word with its own valence, not a booster); "very" adds 0.293 to a
positive word; "not" multiplies by −0.74. A full review covers A = 3 aspects: one clause earns a third.
"""

import itertools
import math
import random

import pytest

from tokendpo.tasks import get_task
from tokendpo.tasks.sentiment import ADJECTIVES, ADVERBS, TOPICS, VERBS, topic_of

PROMPT = "thoughts on the quiet diner :"  # topic: restaurant
A = 3
BEST = "the food was truly superb and the service was truly superb and the staff was truly superb ."
SHORT = "the food was superb ."


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
    (SHORT, compound(3.1) / A),
    ("the food was very superb .", compound(3.1 + 0.293) / A),
    ("the food was not good .", compound(1.9 * -0.74) / A),
    ("the food was superb but the service was bad .", (compound(3.1) + compound(-2.5)) / A),   # coherent "but"
    ("the food was superb and the service was bad .", (compound(3.1) + compound(-2.5)) / A - 0.10),  # "and": not
    ("the food was superb and the service was good .", (compound(3.1) + compound(1.9)) / A),
    ("the food was superb but the service was good .", (compound(3.1) + compound(1.9)) / A - 0.10),
    (BEST, compound(5.0)),                                                        # 0.7906: the ceiling
    ("the food was superb and the food was good .", compound(3.1) / A - 0.30),    # repeated aspect
    ("the food was superb and the service was superb and the staff was superb and the menu was superb .",
     compound(3.1) - 0.15),                                                       # a 4th aspect: verbosity
    ("the food was superb", compound(3.1) / A - 0.10),                            # no final "."
    ("the food was superb and the battery was superb .", compound(3.1) / A - (0.20 + 4 * 0.05)),  # off-topic
    ("the menu seemed plain .", 0.0),                                             # a word VADER does not know
    ("", -0.6),                                                                   # nothing: no ".", no clause
])
def test_gold_reward_hand_computed(task, response, expected):
    assert task.gold_reward(PROMPT, response) == pytest.approx(expected, abs=1e-4)


def test_penalties_are_gradual(task):
    """k repeated clauses lower the score by 0.30 each, k junk words by 0.05 each (after 0.20 for the first
    junk segment): no cliff to −1."""
    rep = [task.gold_reward(PROMPT, " and ".join([BEST[:-2]] + ["the food was good"] * k) + " .") for k in range(5)]
    assert all(a - b == pytest.approx(0.30, abs=1e-9) for a, b in zip(rep, rep[1:]))
    junk = [task.gold_reward(PROMPT, BEST[:-2] + (" and " + " ".join(["great"] * k) if k else "") + " .")
            for k in range(1, 8)]
    assert all(a - b == pytest.approx(0.05, abs=1e-9) for a, b in zip(junk, junk[1:]))
    assert min(rep[:3] + junk[:3]) > 0.0


def test_ceiling_is_the_true_maximum(task):
    """The best clause found by enumerating the grammar with VADER itself (not the task's code), and no random
    response from a much wider space scoring above task.ceiling."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    vader = SentimentIntensityAnalyzer()
    best = max(vader.polarity_scores(f"the food {v} {adv + ' ' if adv else ''}{adj}")["compound"]
               for v, adv, adj in itertools.product(VERBS, ("",) + ADVERBS, ADJECTIVES))
    for p in (PROMPT, "my take on the new hotel :", "notes on the tiny gig :"):
        assert task.ceiling(p) == pytest.approx(best, abs=1e-9)
    assert task.gold_reward(PROMPT, BEST) == pytest.approx(best, abs=1e-9)
    rng = random.Random(0)
    vocab = task.lexicon()
    aspects = TOPICS["restaurant"][1]
    for _ in range(3000):
        parts = []
        for i in range(rng.randint(1, 6)):
            if i:
                parts.append(rng.choice(("and", "but", ",", ".")))
            if rng.random() < 0.8:
                adv = rng.choice(("",) + ADVERBS)
                parts.append(f"the {rng.choice(aspects)} {rng.choice(VERBS)} {adv} {rng.choice(ADJECTIVES)}")
            else:
                parts.append(" ".join(rng.choice(vocab) for _ in range(rng.randint(1, 6))))
        y = " ".join(parts) + rng.choice((" .", ""))
        assert task.gold_reward(PROMPT, y) <= task.ceiling(PROMPT) + 1e-12, y


def test_gaming_scores_below_a_short_correct_answer(task):
    rng = random.Random(1)
    vocab = task.lexicon()
    short = task.gold_reward(PROMPT, SHORT)
    attempts = [" ".join(rng.choice(vocab) for _ in range(rng.randint(5, 24))) for _ in range(200)]  # token soup
    attempts += [" ".join(rng.choice(("superb", "truly", "great", "amazing", "perfect")) for _ in range(12))]
    attempts += [" and ".join(["the food was truly superb"] * k) + " ." for k in (2, 3, 5)]        # loops
    attempts += [("the food was truly superb . " * 4).strip(), "superb . " * 10]
    attempts += [PROMPT, PROMPT + " " + SHORT, PROMPT + " " + BEST]                                # prompt echo
    attempts += [SHORT[:-2] + " and the battery was truly superb and the plot was truly amazing .",  # padding
                 SHORT[:-2] + " and great great great great .", SHORT + " " + "the food was truly superb ."]
    for y in attempts:
        assert task.gold_reward(PROMPT, y) < short, y


def test_padding_never_helps(task):
    """Appending any further clause to the best review (a 4th aspect, a repeat, off-topic or junk text) lowers
    its score."""
    best = task.gold_reward(PROMPT, BEST)
    for extra in ("the menu was truly superb", "the food was truly superb", "the battery was truly superb",
                  "truly superb", "and", "the the the"):
        for link in ("and", ",", "."):
            assert task.gold_reward(PROMPT, f"{BEST[:-2]} {link} {extra} .") < best, (link, extra)


def test_every_topic_has_enough_aspects(task):
    assert all(len(aspects) >= A + 1 for _, aspects in TOPICS.values())
