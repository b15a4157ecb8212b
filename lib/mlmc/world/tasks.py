"""Meaning generators for the fine-tuning tasks: reviews, paraphrase pairs and entailment pairs (chapters 01, 03).

Each generator returns language-free meanings with a label; `World` renders them per language. A parallel task
renders the *same* meanings (same content id ``cid``) in every language, as XNLI and PAWS-X do; a non-parallel one
draws independent meanings per language, as MARC does.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .grammar import NP, Clause, copular, sample_clause, sample_np, swap_roles
from .lexicon import (
    ADPOSITIONS,
    ADVERBS,
    NEGATIVE_ADJ,
    NEUTRAL_ADJ,
    PERSONS,
    PLACES,
    POSITIVE_ADJ,
    THINGS,
)

REVIEWED = ("book", "film", "phone", "shirt", "chair", "lamp", "bag", "car", "song", "bread", "table", "house")


def review(rng: np.random.Generator, p_neg: float = 0.25, p_context: float = 0.5) -> tuple[list[Clause], int]:
    """A review: optional neutral context clause + 'the X is (not) ADJ'; label = positive polarity XOR negation."""
    positive = bool(rng.random() < 0.5)
    adj = str(rng.choice(POSITIVE_ADJ if positive else NEGATIVE_ADJ))
    neg = bool(rng.random() < p_neg)
    subj = NP(
        str(rng.choice(REVIEWED)),
        det=str(rng.choice(["the", "this"])),
        adj=str(rng.choice(NEUTRAL_ADJ)) if rng.random() < 0.3 else None,
    )
    clauses = [copular(subj, adj, neg=neg)]
    if rng.random() < p_context:
        clauses.insert(0, sample_clause(rng, p_neg=0.1))
    return clauses, int(positive != neg)


def _toggle_synonyms(rng: np.random.Generator, c: Clause, n: int) -> Clause:
    concepts = sorted(set(c.concepts()))
    chosen = rng.choice(concepts, size=min(n, len(concepts)), replace=False) if concepts else []
    return replace(c, syn=frozenset(c.syn ^ {str(x) for x in chosen}))


def paraphrase(rng: np.random.Generator, p_hard: float = 0.5) -> tuple[Clause, Clause, int, str]:
    """A PAWS-like pair: same meaning reworded (1), roles swapped (hard 0) or one noun changed (easy 0)."""
    a = sample_clause(rng, p_obj=1.0, p_adv=0.5, p_obl=0.4)
    b = _toggle_synonyms(rng, a, int(rng.integers(1, 3)))
    if (a.adv or a.obl) and rng.random() < 0.5:
        b = replace(b, front=not b.front)
    if rng.random() < 0.5:
        return a, b, 1, "reworded"
    if rng.random() < p_hard and a.subj.noun != a.obj.noun:
        return a, swap_roles(b), 0, "swapped"
    pool = [n for n in THINGS + PERSONS if n != a.obj.noun]
    return a, replace(b, obj=replace(b.obj, noun=str(rng.choice(pool)))), 0, "changed"


LABELS3 = ("entailment", "neutral", "contradiction")


def entailment(rng: np.random.Generator) -> tuple[Clause, Clause, int]:
    """An XNLI-like pair and its 3-way label (0 entailment, 1 neutral, 2 contradiction).

    Entailment drops modifiers of the premise; contradiction negates it; neutral adds a modifier the premise does
    not mention.
    """
    p = sample_clause(rng, p_obj=1.0, p_adj=0.5, p_obl=0.5, p_adv=0.5, p_neg=0.2)
    label = int(rng.integers(3))
    h = _toggle_synonyms(rng, p, int(rng.integers(0, 2)))
    if label in (0, 2):  # drop a random subset of modifiers
        if h.adv and rng.random() < 0.5:
            h = replace(h, adv=None)
        if h.obl and rng.random() < 0.5:
            h = replace(h, obl=None)
        if h.subj.adj and rng.random() < 0.5:
            h = replace(h, subj=replace(h.subj, adj=None))
        if h.obj.adj and rng.random() < 0.5:
            h = replace(h, obj=replace(h.obj, adj=None))
        if label == 2:
            h = replace(h, neg=not h.neg)
        return p, h, label
    options = []
    if p.adv is None:
        options.append(replace(h, adv=str(rng.choice(ADVERBS))))
    if p.obl is None:
        options.append(replace(h, obl=(str(rng.choice(ADPOSITIONS)), sample_np(rng, PLACES, p_adj=0, p_gen=0))))
    if p.obj.adj is None:
        options.append(replace(h, obj=replace(h.obj, adj=str(rng.choice(NEUTRAL_ADJ)))))
    if not options:  # the premise says everything: a different object makes the hypothesis unsupported
        options.append(replace(h, obj=replace(h.obj, noun=str(rng.choice([t for t in THINGS if t != p.obj.noun])))))
    return p, options[int(rng.integers(len(options)))], label


def treebank_clause(rng: np.random.Generator) -> Clause:
    """A sentence for the treebanks: mostly transitive clauses, some copular ones, some negated."""
    if rng.random() < 0.2:
        return copular(
            sample_np(rng, THINGS + PERSONS, p_adj=0.3),
            str(rng.choice(NEUTRAL_ADJ + POSITIVE_ADJ)),
            neg=bool(rng.random() < 0.15),
        )
    return sample_clause(rng, p_neg=0.15)
