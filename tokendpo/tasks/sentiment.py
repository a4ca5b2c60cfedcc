"""The `sentiment` task: short reviews from a small generative grammar, scored by VADER — made hard to game.

Prompt:    "<intro> the <modifier> <subject> :"            e.g. "thoughts on the quiet hotel :"
Response:  clause (conj clause){0,2} "."                    e.g. "the staff was very friendly but the room was dirty ."
clause:    "the" <aspect> <verb> [<adverb>] <adjective>     aspect ∈ the aspects of the prompt's topic

Gold reward r*(prompt, response) ∈ [−1, 1]:

    r* = −1                                   if the grammar cannot produce the response for this prompt
                                              (wrong topic, a repeated aspect, > 3 clauses, no final ".", junk)
    r* = (1/C) Σ_c VADER_compound(clause_c)   otherwise: the mean over its C clauses, each scored on its own

Why this form. A measured earlier trial used VADER on the whole response; DPO then found one repetitive loop
that ignores the prompt ("the humor looked pretty charming and the humor looked pretty charming …", 2 % distinct
outputs) scoring 0.99, and VADER's compound saturates (three positive words give > 0.95). Here (i) loops,
repeats and off-topic answers are outside the grammar and get the minimum, so nothing ungrammatical is ever
preferred to a grammatical answer; (ii) the mean over clauses does not grow with length or with stacking
positive words — the ceiling is the best single clause (≈ 0.66, "the food was very superb"), and the score
moves smoothly with the choice of adverb and adjective; (iii) the response is scored without the prompt.
"""

from __future__ import annotations

import functools
import random
import re

from tokendpo.tasks.base import ModelShape, Recipe, Task

INTROS = ("my review of", "thoughts on", "a quick note about", "feedback on", "a message about", "my take on",
          "notes on", "a few words on", "an update on", "my verdict on")
MODIFIERS = ("new", "old", "local", "famous", "little", "busy", "quiet", "expensive", "cheap", "big", "small",
             "downtown", "tiny", "modern")
TOPICS = {  # topic -> (subjects, aspects)
    "restaurant": (("restaurant", "cafe", "diner", "bistro", "bakery"),
                   ("food", "service", "staff", "menu", "price", "dessert", "coffee")),
    "movie": (("movie", "film", "sequel", "documentary"),
              ("plot", "acting", "music", "ending", "dialogue", "pacing", "cast")),
    "hotel": (("hotel", "hostel", "resort", "inn"),
              ("room", "bed", "staff", "breakfast", "pool", "view", "location")),
    "gadget": (("phone", "laptop", "tablet", "camera", "headset"),
               ("battery", "screen", "design", "speaker", "software", "charger", "price")),
    "concert": (("concert", "show", "festival", "gig"),
                ("band", "crowd", "sound", "lights", "venue", "singer", "encore")),
    "book": (("book", "novel", "memoir", "thriller"),
             ("writing", "characters", "plot", "ending", "cover", "chapters", "dialogue")),
}
SUBJECT_TOPIC = {s: t for t, (subjects, _) in TOPICS.items() for s in subjects}
VERBS = ("was", "is", "seemed", "felt", "looked")
ADVERBS = ("very", "really", "quite", "so", "truly", "extremely", "rather", "not")
POSITIVE = ("good", "great", "excellent", "wonderful", "amazing", "lovely", "nice", "fantastic", "perfect",
            "pleasant", "superb", "delightful", "brilliant", "charming", "beautiful", "friendly", "clean", "fun")
NEGATIVE = ("bad", "terrible", "awful", "horrible", "poor", "disappointing", "boring", "dull", "ugly", "annoying",
            "rude", "dirty", "weak", "messy", "sad", "broken", "noisy")
NEUTRAL = ("okay", "fine", "average", "ordinary", "plain", "loud", "simple", "different", "mediocre", "bland",
           "cold", "decent", "slow")
ADJECTIVES = POSITIVE + NEGATIVE + NEUTRAL
CONJUNCTIONS = ("and", "but")
MAX_CLAUSES = 3
_WORD = re.compile(r"\w+|[^\w\s]")


@functools.lru_cache(maxsize=1)
def _vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


@functools.lru_cache(maxsize=65536)
def vader_compound(text: str) -> float:
    """VADER's compound score of `text` on its own, in [−1, 1]."""
    return _vader().polarity_scores(text)["compound"]


def topic_of(prompt: str) -> str:
    """The topic of a grammar prompt ("<intro> the <modifier> <subject> :"); ValueError for any other text."""
    words = prompt.split()
    if len(words) < 4 or words[-1] != ":" or words[-3] not in MODIFIERS or words[-4] != "the" \
            or " ".join(words[:-4]) not in INTROS or words[-2] not in SUBJECT_TOPIC:
        raise ValueError(f"sentiment: prompt {prompt!r} is not one the task's grammar produces "
                         f"('<intro> the <modifier> <subject> :')")
    return SUBJECT_TOPIC[words[-2]]


def parse_response(prompt: str, response: str) -> list[list[str]] | None:
    """The clauses of `response` (each ["the", aspect, verb, (adverb,) adjective]) if the grammar can produce it
    for `prompt`, else None."""
    aspects = TOPICS[topic_of(prompt)][1]
    words = _WORD.findall(response)
    if len(words) < 2 or words[-1] != ".":
        return None
    clauses: list[list[str]] = [[]]
    for w in words[:-1]:
        if w in CONJUNCTIONS:
            clauses.append([])
        else:
            clauses[-1].append(w)
    if len(clauses) > MAX_CLAUSES:
        return None
    seen: set[str] = set()
    for c in clauses:
        if len(c) not in (4, 5) or c[0] != "the" or c[1] not in aspects or c[1] in seen or c[2] not in VERBS \
                or c[-1] not in ADJECTIVES or (len(c) == 5 and c[3] not in ADVERBS):
            return None
        seen.add(c[1])
    return clauses


class SentimentTask(Task):
    """Reviews of restaurants, movies, hotels, gadgets, concerts and books; r* = per-clause VADER (see module)."""

    name = "sentiment"
    shape = ModelShape(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256)
    # Measured (seed 42, same SFT model and pairs, DPO 200 steps): plain DPO at lr 4e-4 drifted off the grammar
    # (valid 77% -> 70%, KL 4.7 nats, gold -0.195 -> -0.151); at lr 1e-3 (seed 0) it collapsed (valid 50%, KL 37,
    # 3-gram repetition 0.21). lr 2e-4: gold -> -0.002, KL 1.6, distinct 0.95. lr 4e-4 + an NLL term on the chosen
    # response (RPO, alpha 1): gold -> -0.006, KL 0.17, distinct 1.0, valid 88% — same gain, far less drift.
    recipe = Recipe(sft_steps=500, sft_batch_size=64, sft_lr=5e-3, dpo_lr=4e-4, rpo_alpha=1.0, dpo_steps=200,
                    max_new_tokens=24)
    heldout_every = 5

    def _random_prompt(self, rng: random.Random) -> str:
        topic = rng.choice(sorted(TOPICS))
        subject = rng.choice(TOPICS[topic][0])
        return f"{rng.choice(INTROS)} the {rng.choice(MODIFIERS)} {subject} :"

    def _random_response(self, prompt: str, rng: random.Random) -> str:
        """A review of mixed quality: a polarity for the whole review, then clauses that mostly follow it."""
        aspects = TOPICS[topic_of(prompt)][1]
        n = rng.choices((1, 2, 3), weights=(3, 4, 3))[0]
        polarity = rng.choice(("positive", "negative", "mixed"))
        pools = {"positive": (POSITIVE, NEUTRAL), "negative": (NEGATIVE, NEUTRAL)}
        parts = []
        for i, aspect in enumerate(rng.sample(aspects, n)):
            if polarity == "mixed":
                adj = rng.choice(ADJECTIVES)
            else:
                main, other = pools[polarity]
                adj = rng.choice(main if rng.random() < 0.8 else other)
            r = rng.random()
            adverb = "" if r < 0.5 else ("not " if r < 0.58 else rng.choice(ADVERBS[:-1]) + " ")
            if i:
                parts.append(rng.choice(CONJUNCTIONS))
            parts.append(f"the {aspect} {rng.choice(VERBS)} {adverb}{adj}")
        return " ".join(parts) + " ."

    def is_valid(self, prompt: str, response: str) -> bool:
        return parse_response(prompt, response) is not None

    def gold_reward(self, prompt: str, response: str) -> float:
        clauses = parse_response(prompt, response)
        if clauses is None:
            return -1.0
        return sum(vader_compound(" ".join(c)) for c in clauses) / len(clauses)

    def lexicon(self) -> list[str]:
        words = {w for intro in INTROS for w in intro.split()}
        words |= set(MODIFIERS) | set(SUBJECT_TOPIC) | {a for _, asp in TOPICS.values() for a in asp}
        words |= set(VERBS) | set(ADVERBS) | set(ADJECTIVES) | set(CONJUNCTIONS) | {"the", ":", "."}
        return sorted(words)
