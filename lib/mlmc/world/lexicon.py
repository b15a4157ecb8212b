"""Concepts of the synthetic world and their word forms per language (all chapters).

A concept is an English gloss with a part of speech and, for some, a meaning the tasks use (sentiment polarity,
emotion labels, social-group category). Every concept gets a main form and a synonym form in each language, derived
along the family tree of :mod:`mlmc.world.languages`.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from .languages import LANG_BY_CODE, LANGUAGES, VOWELS, coin, lineage, render

EMOTIONS = ("anger", "anticipation", "disgust", "fear", "joy", "negative", "positive", "sadness", "surprise", "trust")

PERSONS = (
    "man",
    "woman",
    "child",
    "teacher",
    "doctor",
    "farmer",
    "student",
    "king",
    "friend",
    "neighbour",
    "baker",
    "singer",
)
ANIMALS = ("dog", "cat", "horse", "bird", "fish", "cow", "goat", "wolf")
THINGS = (
    "book",
    "house",
    "car",
    "tree",
    "bread",
    "water",
    "stone",
    "river",
    "table",
    "letter",
    "song",
    "garden",
    "boat",
    "apple",
    "phone",
    "film",
    "shirt",
    "chair",
    "lamp",
    "bag",
)
PLACES = ("market", "school", "forest", "village", "city", "kitchen")
VERBS = (
    "see",
    "take",
    "eat",
    "find",
    "build",
    "love",
    "carry",
    "write",
    "read",
    "open",
    "buy",
    "watch",
    "help",
    "follow",
    "visit",
    "sell",
)
NEUTRAL_ADJ = ("big", "small", "old", "new", "red", "green", "long", "round", "heavy", "white")
POSITIVE_ADJ = ("good", "great", "wonderful", "excellent", "lovely", "pleasant", "perfect", "nice")
NEGATIVE_ADJ = ("bad", "terrible", "awful", "poor", "horrible", "ugly", "boring", "broken")
ADVERBS = ("today", "often", "slowly", "quickly", "again", "yesterday")
TEMPORAL = frozenset({"today", "yesterday"})
DETERMINERS = ("the", "a", "this", "every")
ADPOSITIONS = ("in", "on", "with", "near", "from", "under")
FUNCTION = ("is", "will", "not", ".")
NAMES = ("maria", "tomas", "anna", "david", "sara", "jonas", "lena", "marko")

# Social groups (chapters 04 and 07): four categories of six; the planted associations are random, not real ones.
GROUPS = {
    "gender": ("men", "women", "boys", "girls", "fathers", "mothers"),
    "religion": ("christians", "muslims", "jews", "hindus", "buddhists", "atheists"),
    "profession": ("lawyers", "nurses", "engineers", "cleaners", "bankers", "artists"),
    "nation": ("velarians", "ostrans", "kemites", "dorvish", "alnese", "tirans"),
}
# Attribute adjectives with hand-assigned emotion labels (a small EmoLex-style annotation made for this world).
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "kind": ("joy", "positive", "trust"),
    "honest": ("positive", "trust"),
    "smart": ("positive",),
    "brave": ("positive", "trust"),
    "friendly": ("joy", "positive", "trust"),
    "calm": ("positive", "trust"),
    "generous": ("joy", "positive", "trust"),
    "cheerful": ("joy", "positive", "surprise"),
    "loyal": ("positive", "trust"),
    "hopeful": ("anticipation", "joy", "positive"),
    "rude": ("anger", "disgust", "negative"),
    "lazy": ("negative",),
    "greedy": ("anger", "disgust", "negative"),
    "violent": ("anger", "fear", "negative"),
    "dangerous": ("fear", "negative"),
    "dirty": ("disgust", "negative"),
    "arrogant": ("anger", "negative"),
    "cruel": ("anger", "disgust", "fear", "negative", "sadness"),
    "weird": ("disgust", "negative", "surprise"),
    "lonely": ("negative", "sadness"),
    "poor": ("negative", "sadness"),
    "weak": ("fear", "negative", "sadness"),
    "strict": ("fear", "negative"),
    "emotional": ("sadness", "surprise"),
    "strong": ("positive", "trust"),
    "rich": ("joy", "positive", "trust"),
    "tall": (),
    "quiet": (),
    "busy": (),
    "young": ("anticipation", "joy", "positive"),
    "loud": ("negative",),
    "religious": ("trust",),
}
# Value items (chapters 05 and 06): real WVS-7 question ids with a short gloss and two answer words.
VALUE_ITEMS: tuple[tuple[str, str, str, str, str], ...] = (
    ("Q1", "family", "family", "important", "unimportant"),
    ("Q6", "religion", "religion", "important", "unimportant"),
    ("Q28", "gender", "working mothers", "good", "harmful"),
    ("Q29", "gender", "male leaders", "better", "worse"),
    ("Q46", "wellbeing", "life", "happy", "unhappy"),
    ("Q49", "wellbeing", "life", "satisfying", "unsatisfying"),
    ("Q61", "trust", "strangers", "trustworthy", "untrustworthy"),
    ("Q69", "trust", "police", "trustworthy", "untrustworthy"),
    ("Q112", "corruption", "corruption", "rare", "common"),
    ("Q122", "migration", "immigrants", "helpful", "harmful"),
    ("Q131", "security", "neighbourhood", "secure", "insecure"),
    ("Q158", "science", "science", "helpful", "harmful"),
    ("Q165", "religion", "god", "real", "unreal"),
    ("Q182", "ethics", "homosexuality", "justifiable", "unjustifiable"),
    ("Q184", "ethics", "abortion", "justifiable", "unjustifiable"),
    ("Q199", "politics", "politics", "interesting", "uninteresting"),
    ("Q235", "politics", "strong leaders", "good", "bad"),
    ("Q250", "politics", "democracy", "important", "unimportant"),
)
NEUTRAL_FILLER = ("some", "people", "say", "that")


@dataclass(frozen=True)
class Concept:
    """A concept: gloss, part of speech, and the attributes that tasks read."""

    gloss: str
    pos: str
    polarity: int = 0
    category: str = ""


def concept_inventory() -> dict[str, Concept]:
    """Every concept of the world keyed by gloss (multi-word glosses are joined with '_')."""
    inv: dict[str, Concept] = {}

    def add(g: str, pos: str, **kw) -> None:
        inv.setdefault(g.replace(" ", "_"), Concept(g.replace(" ", "_"), pos, **kw))

    for g in PERSONS:
        add(g, "NOUN", category="person")
    for g in ANIMALS:
        add(g, "NOUN", category="animal")
    for g in THINGS:
        add(g, "NOUN", category="thing")
    for g in PLACES:
        add(g, "NOUN", category="place")
    for g in VERBS:
        add(g, "VERB")
    for g in NEUTRAL_ADJ:
        add(g, "ADJ")
    for g in POSITIVE_ADJ:
        add(g, "ADJ", polarity=1)
    for g in NEGATIVE_ADJ:
        add(g, "ADJ", polarity=-1)
    for g in ADVERBS:
        add(g, "ADV")
    for g in DETERMINERS:
        add(g, "DET")
    for g in ADPOSITIONS:
        add(g, "ADP")
    add("is", "AUX", category="copula")
    add("will", "AUX")
    add("not", "PART")
    for cat, groups in GROUPS.items():
        for g in groups:
            add(g, "NOUN", category=f"group:{cat}")
    for g in ATTRIBUTES:
        add(g, "ADJ", category="attribute")
    for _, _, subject, opt1, opt2 in VALUE_ITEMS:
        add(subject, "NOUN", category="value_subject")
        add(opt1, "ADJ", category="value_option")
        add(opt2, "ADJ", category="value_option")
    for g in NEUTRAL_FILLER:
        add(g, "X")
    return inv


def _rng(seed: int, *keys: str) -> np.random.Generator:
    return np.random.default_rng([seed, *(zlib.crc32(k.encode()) for k in keys)])


def _drift(form: str, rng: np.random.Generator, p: float) -> str:
    """With probability ``p`` change one vowel: cognates that share some subwords but not all."""
    if rng.random() >= p:
        return form
    idx = [i for i, c in enumerate(form) if c in VOWELS]
    if not idx:
        return form
    i = int(rng.choice(idx))
    return form[:i] + str(rng.choice([v for v in VOWELS if v != form[i]])) + form[i + 1 :]


def _n_syll(pos: str, rng: np.random.Generator) -> int:
    if pos in {"DET", "ADP", "AUX", "PART", "X"}:
        return 1
    return int(rng.choice([1, 2, 2, 3]))


def _unique(form: str, script: str, used: set[str], seed: int, *keys: str) -> str:
    """``form`` if no other concept of the language has it yet, else a fresh longer form (no homographs)."""
    rng = _rng(seed, *keys, "unique")
    while not form or form in used:
        form = render(coin(rng, int(rng.integers(2, 4))), script)
    used.add(form)
    return form


def build_lexicon(seed: int, drift: float = 0.15) -> dict[str, dict[str, tuple[str, str]]]:
    """Forms per language: ``lex[lang][concept] = (main, synonym)`` rendered in the language's script.

    A form passes from each family-tree node to its child with the child's retention probability (with a small
    vowel drift), and is coined afresh otherwise; the synonym form is coined independently per language. Forms are
    unique within a language, so counting a word in a text counts its concept.
    """
    inv = concept_inventory()
    lex: dict[str, dict[str, tuple[str, str]]] = {spec.code: {} for spec in LANGUAGES}
    used: dict[str, set[str]] = {spec.code: {render(n, spec.script) for n in NAMES} for spec in LANGUAGES}
    for key, concept in inv.items():
        if key == ".":
            continue
        cache: dict[str, str] = {"root": coin(_rng(seed, key, "root"), _n_syll(concept.pos, _rng(seed, key)))}
        for spec in LANGUAGES:
            parent = "root"
            for node, retention in lineage(spec.code):
                if node not in cache:
                    rng = _rng(seed, key, node)
                    if rng.random() < retention:
                        cache[node] = _drift(cache[parent], rng, drift)
                    else:
                        cache[node] = coin(rng, _n_syll(concept.pos, rng))
                parent = node
            lex[spec.code][key] = (
                _unique(render(cache[spec.code], spec.script), spec.script, used[spec.code], seed, key, spec.code),
                _unique("", spec.script, used[spec.code], seed, key, spec.code, "synonym"),
            )
        # proper names are shared by every language (as code-switched names are), written in its script
    for spec in LANGUAGES:
        for name in NAMES:
            lex[spec.code][name] = (render(name, spec.script), render(name, spec.script))
        lex[spec.code]["."] = (".", ".")
    return lex


def case_suffixes(seed: int, lang: str) -> dict[str, str]:
    """Per-role noun endings: none for isolating, one letter for fusional, a syllable for agglutinative languages."""
    spec = LANG_BY_CODE[lang]
    if spec.morphology == "isolating":
        return {}
    rng = _rng(seed, lang, "case")
    roles = ("nsubj", "obj", "nmod", "obl")
    if spec.morphology == "fusional":
        letters = rng.permutation(list(VOWELS))[: len(roles)]
        return {r: render(str(c), spec.script) for r, c in zip(roles, letters, strict=True)}
    return {r: render(coin(rng, 1), spec.script) for r in roles}
