"""The synthetic world: seeded languages with planted ground truth (default profile of every chapter)."""

from .grammar import NP, Clause, Word, copular, sample_clause
from .languages import FLAGS, LANGUAGES, WORD_ORDERS, LangSpec
from .lexicon import ATTRIBUTES, EMOTIONS, GROUPS, VALUE_ITEMS
from .world import SPLITS, World

__all__ = [
    "ATTRIBUTES",
    "EMOTIONS",
    "FLAGS",
    "GROUPS",
    "LANGUAGES",
    "NP",
    "SPLITS",
    "VALUE_ITEMS",
    "WORD_ORDERS",
    "Clause",
    "LangSpec",
    "Word",
    "World",
    "copular",
    "sample_clause",
]
