"""The `sentiment` task: short reviews from a small generative grammar, judged as a whole by a gold that rewards
covering several aspects warmly and coherently, and penalises repetition, verbosity and off-topic text gradually.

Prompt:    "<intro> the <modifier> <subject> :"            e.g. "thoughts on the quiet hotel :"
Response:  clause (conj clause)* "."                         e.g. "the staff was very friendly but the room was dirty ."
clause:    "the" <aspect> <verb> [<adverb>] <adjective>     aspect ∈ the aspects of the prompt's topic

Gold reward. The response is cut into segments at "and", "but", "," and "."; a segment is a clause when the
grammar above produces it for the prompt's topic. With s_c = VADER compound of clause c on its own (∈ [−1, 1])
and A = 3 aspects wanted,

    base    = (1/A) Σ s_c   over the first clause of each of the first A distinct aspects (coverage: one superb
                            clause earns a third of three)
    penalty = 0.30 per clause repeating an aspect already covered                  (repetition)
            + 0.15 per clause on a further, (A+1)-th, aspect                       (verbosity)
            + 0.20 + 0.05 · words per segment that is not an on-topic clause        (off-topic text, junk, echo)
            + 0.10 per empty segment ("and and", ". .")
            + 0.10 per incoherent link: "and" between clauses of opposite sign, "but" between clauses of the same
                   sign (both s_c ≠ 0)
            + 0.10 when the response does not end with "."
            + 0.50 when it holds no clause at all
    r*      = max(−1, base − penalty)

Every penalty grows with the amount of bad text, so degenerate answers decline gradually instead of falling off
a cliff at −1; no segment ever adds to the score except a new aspect's first clause, and the mean over A slots
does not grow with stacked positive words (VADER's compound saturates: a clause is judged on its own). The
response is scored without the prompt, so echoing it is off-topic text.

True ceiling: (1/A)·(sum of the A largest best-clause scores over the topic's aspects), the A best clauses
joined by "and" and closed by "." (`ceiling(prompt)`, by enumeration). No aspect word is in VADER's lexicon, so
it is the best single clause, 0.7906 ("the food was truly superb": "truly" carries valence itself), for every
prompt; nothing longer or shorter reaches it.

History: a first version scored VADER on the whole text (DPO found a repetitive loop at 0.99); a second one gave
−1 to anything outside the grammar and the mean over clauses, so the best single clause was the ceiling and
greedy decoding of the final policies sat on it with few, templated outputs.
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
SEPARATORS = CONJUNCTIONS + (",", ".")
TARGET_ASPECTS = 3  # A: aspects a full review covers
MAX_CLAUSES = TARGET_ASPECTS  # kept for callers of the grammar: clauses a review of the corpus has at most (+1)
PENALTY = {"repeat": 0.30, "verbose": 0.15, "junk": 0.20, "junk_word": 0.05, "empty": 0.10, "incoherent": 0.10,
           "no_end": 0.10, "no_clause": 0.50}
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


def _is_clause(seg: list[str], aspects) -> bool:
    return len(seg) in (4, 5) and seg[0] == "the" and seg[1] in aspects and seg[2] in VERBS \
        and seg[-1] in ADJECTIVES and (len(seg) == 4 or seg[3] in ADVERBS)


def judge(prompt: str, response: str) -> dict:
    """The gold's itemised verdict: {"reward", "base", "penalty", "counts": {...}, "clauses": [...]} (see the
    module docstring for the formula)."""
    aspects = TOPICS[topic_of(prompt)][1]
    words = _WORD.findall(response)
    counts = dict.fromkeys(PENALTY, 0)
    counts["no_end"] = int(not words or words[-1] != ".")
    if words and words[-1] == ".":
        words = words[:-1]
    segments: list[tuple[str | None, list[str]]] = [(None, [])]  # (separator before it, words)
    for w in words:
        if w in SEPARATORS:
            segments.append((w, []))
        else:
            segments[-1][1].append(w)
    if not words:
        segments = []
    base, covered, clauses = 0.0, [], []
    prev: tuple[str | None, float] | None = None  # (link into the previous clause, its score)
    for link, seg in segments:
        if not seg:
            counts["empty"] += 1
            prev = None
            continue
        if not _is_clause(seg, aspects):
            counts["junk"] += 1
            counts["junk_word"] += len(seg)
            prev = None
            continue
        s = vader_compound(" ".join(seg))
        clauses.append(seg)
        if prev is not None and link in CONJUNCTIONS and s != 0 and prev[1] != 0:
            same = (s > 0) == (prev[1] > 0)
            counts["incoherent"] += (link == "and") != same
        prev = (link, s)
        if seg[1] in covered:
            counts["repeat"] += 1
        elif len(covered) >= TARGET_ASPECTS:
            counts["verbose"] += 1
            covered.append(seg[1])
        else:
            covered.append(seg[1])
            base += s / TARGET_ASPECTS
    counts["no_clause"] = int(not clauses)
    penalty = sum(PENALTY[k] * v for k, v in counts.items())
    return {"reward": max(-1.0, base - penalty), "base": base, "penalty": penalty, "counts": counts,
            "clauses": clauses}


def parse_response(prompt: str, response: str) -> list[list[str]] | None:
    """The clauses of `response` (each ["the", aspect, verb, (adverb,) adjective]) if it is a clean review the
    corpus grammar can produce for `prompt` (on-topic clauses on distinct aspects, ≤ A + 1 of them, joined by
    one conjunction each, closed by "."), else None."""
    v = judge(prompt, response)
    c = v["counts"]
    if v["clauses"] and not (c["repeat"] or c["junk"] or c["empty"] or c["no_end"]) \
            and len(v["clauses"]) <= TARGET_ASPECTS + 1:
        return v["clauses"]
    return None


@functools.lru_cache(maxsize=64)
def _best_clause(aspect: str) -> float:
    return max(vader_compound(f"the {aspect} {verb} {adv + ' ' if adv else ''}{adj}")
               for verb in VERBS for adv in ("",) + ADVERBS for adj in ADJECTIVES)


class SentimentTask(Task):
    """Reviews of restaurants, movies, hotels, gadgets, concerts and books; r* = whole-review judge (see module)."""

    name = "sentiment"
    shape = ModelShape(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256)
    # Earlier measurements on this grammar (seed 42, DPO 200 steps): plain DPO at lr 4e-4 drifted off the grammar
    # (KL 4.7 nats), at lr 1e-3 it collapsed (KL 37); at lr 2e-4 it gained without collapse (KL 1.6, distinct
    # 0.95). lr 4e-4 + an NLL term on the chosen response (RPO, alpha 1) gained as much with far less drift (KL
    # 0.17), which is why the default run (a user's first look) uses RPO; theory-facing figures use plain DPO.
    recipes = {"plain": Recipe(sft_steps=500, sft_batch_size=64, sft_lr=5e-3, dpo_lr=2e-4, rpo_alpha=0.0,
                               dpo_steps=200, max_new_tokens=24),
               "rpo": Recipe(sft_steps=500, sft_batch_size=64, sft_lr=5e-3, dpo_lr=4e-4, rpo_alpha=1.0,
                             dpo_steps=200, max_new_tokens=24)}
    default_recipe = "rpo"
    heldout_every = 5

    def _random_prompt(self, rng: random.Random) -> str:
        topic = rng.choice(sorted(TOPICS))
        subject = rng.choice(TOPICS[topic][0])
        return f"{rng.choice(INTROS)} the {rng.choice(MODIFIERS)} {subject} :"

    def _random_response(self, prompt: str, rng: random.Random) -> str:
        """A review of mixed quality: a polarity for the whole review, then 1–4 clauses on distinct aspects that
        mostly follow it, joined by a random conjunction (so some links are incoherent, some reviews verbose)."""
        aspects = TOPICS[topic_of(prompt)][1]
        n = rng.choices((1, 2, 3, 4), weights=(3, 4, 3, 1))[0]
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
        return judge(prompt, response)["reward"]

    def ceiling(self, prompt: str) -> float:
        best = sorted((_best_clause(a) for a in TOPICS[topic_of(prompt)][1]), reverse=True)
        return sum(best[:TARGET_ASPECTS]) / TARGET_ASPECTS

    def lexicon(self) -> list[str]:
        words = {w for intro in INTROS for w in intro.split()}
        words |= set(MODIFIERS) | set(SUBJECT_TOPIC) | {a for _, asp in TOPICS.values() for a in asp}
        words |= set(VERBS) | set(ADVERBS) | set(ADJECTIVES) | set(CONJUNCTIONS) | {"the", ":", ".", ","}
        return sorted(words)
