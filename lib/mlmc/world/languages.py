"""The synthetic languages: typology, family tree, scripts and lexicon (the world behind every chapter).

Each language is made up, but named after a real one whose *rough* typology it copies (word order, head direction,
negation side, morphology type, script), so that the parameter lists of the default and the `full` profile look
alike. Lexical relatedness comes from a family tree: a word form is inherited from the parent node with the node's
retention probability, otherwise it is coined afresh. Forms are spelled in a Latin-like phonology and rendered into
the language's script, so that languages in different scripts share no subwords even where they share cognates,
as Hindi and Urdu do.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

WORD_ORDERS = ("SVO", "SOV", "VSO", "VOS", "OVS", "OSV")
FLAGS = ("adj_after", "det_after", "postposition", "gen_after", "aux_after", "adv_after", "obl_after", "neg_after")
MORPHOLOGY = ("isolating", "fusional", "agglutinative")
SCRIPTS = ("latin", "cyrillic", "arabic", "devanagari", "hangul", "han", "armenian", "tamil")

CONSONANTS = "ptkbdgmnslrvfhjz"
VOWELS = "aeiou"


@dataclass(frozen=True)
class LangSpec:
    """One synthetic language: its typology, script, morphology, resource size and family-tree parent."""

    code: str
    name: str
    order: str
    flags: tuple[int, ...]
    morphology: str
    script: str
    parent: str
    retention: float
    resource: str = "high"  # "high" | "low"
    pretrained: bool = True
    mwt: bool = False  # adposition + article fuse into one surface token (a CoNLL-U multiword token)
    tmod: bool = False  # temporal adverbs are labelled `obl:tmod` (a label unseen in the training languages)
    extra: dict = field(default_factory=dict)

    @property
    def flag(self) -> dict[str, int]:
        return dict(zip(FLAGS, self.flags, strict=True))


def _L(code, name, order, flags, morph, script, parent, ret, **kw) -> LangSpec:  # noqa: N802
    return LangSpec(code, name, order, tuple(int(c) for c in flags), morph, script, parent, ret, **kw)


# flags string: adj_after det_after postposition gen_after aux_after adv_after obl_after neg_after
LANGUAGES: tuple[LangSpec, ...] = (
    _L("en", "English-like", "SVO", "00000110", "isolating", "latin", "west_germanic", 0.6),
    _L("de", "German-like", "SVO", "00010111", "fusional", "latin", "west_germanic", 0.75),
    _L("nl", "Dutch-like", "SVO", "00010111", "isolating", "latin", "low_franconian", 0.85),
    _L("af", "Afrikaans-like", "SVO", "00010111", "isolating", "latin", "low_franconian", 0.85, resource="low"),
    _L("no", "Norwegian-like", "SVO", "01000111", "isolating", "latin", "north_germanic", 0.8),
    _L(
        "fo",
        "Faroese-like",
        "SVO",
        "01010111",
        "fusional",
        "latin",
        "north_germanic",
        0.8,
        resource="low",
        pretrained=False,
    ),
    _L("es", "Spanish-like", "SVO", "10010110", "fusional", "latin", "ibero_romance", 0.8, mwt=True),
    _L("gl", "Galician-like", "SVO", "10010110", "fusional", "latin", "ibero_romance", 0.8, resource="low", mwt=True),
    _L("fr", "French-like", "SVO", "10010110", "fusional", "latin", "romance", 0.65, mwt=True),
    _L("it", "Italian-like", "SVO", "10010110", "fusional", "latin", "romance", 0.75, mwt=True),
    _L("ro", "Romanian-like", "SVO", "11010110", "fusional", "latin", "romance", 0.65),
    _L("ru", "Russian-like", "SVO", "00010010", "fusional", "cyrillic", "slavic", 0.75),
    _L("cs", "Czech-like", "SVO", "00010010", "fusional", "latin", "slavic", 0.75),
    _L("sr", "Serbian-like", "SVO", "00010010", "fusional", "cyrillic", "slavic", 0.75, resource="low"),
    _L(
        "lt",
        "Lithuanian-like",
        "SVO",
        "00000010",
        "fusional",
        "latin",
        "balto_slavic",
        0.6,
        resource="low",
        pretrained=False,
    ),
    _L(
        "hy",
        "Armenian-like",
        "SOV",
        "01101000",
        "agglutinative",
        "armenian",
        "ie",
        0.3,
        resource="low",
        pretrained=False,
    ),
    _L("hi", "Hindi-like", "SOV", "00101000", "fusional", "devanagari", "hindustani", 0.9),
    _L("ur", "Urdu-like", "SOV", "00101000", "fusional", "arabic", "hindustani", 0.9),
    _L("mr", "Marathi-like", "SOV", "00101000", "agglutinative", "devanagari", "indic", 0.7, resource="low"),
    _L("fa", "Persian-like", "SOV", "11010000", "fusional", "arabic", "indo_iranian", 0.55),
    _L("ar", "Arabic-like", "VSO", "10010110", "fusional", "arabic", "semitic", 0.7),
    _L(
        "mt",
        "Maltese-like",
        "SVO",
        "10010110",
        "fusional",
        "latin",
        "semitic",
        0.5,
        resource="low",
        mwt=True,
        pretrained=False,
    ),
    _L("et", "Estonian-like", "SVO", "00100110", "agglutinative", "latin", "uralic", 0.6),
    _L("hu", "Hungarian-like", "SOV", "00100000", "agglutinative", "latin", "uralic", 0.5, resource="low", tmod=True),
    _L(
        "tr",
        "Turkish-like",
        "SOV",
        "00101001",
        "agglutinative",
        "latin",
        "root",
        0.2,
        resource="low",
        pretrained=False,
        tmod=True,
    ),
    _L(
        "ta",
        "Tamil-like",
        "SOV",
        "00101001",
        "agglutinative",
        "tamil",
        "root",
        0.2,
        resource="low",
        pretrained=False,
        tmod=True,
    ),
    _L("ko", "Korean-like", "SOV", "00101000", "agglutinative", "hangul", "root", 0.1),
    _L("zh", "Chinese-like", "SVO", "00000000", "isolating", "han", "root", 0.1),
    _L("id", "Indonesian-like", "SVO", "11010110", "isolating", "latin", "austronesian", 0.7),
    _L("tl", "Tagalog-like", "VSO", "00010110", "isolating", "latin", "austronesian", 0.6, resource="low"),
    _L(
        "yo",
        "Yoruba-like",
        "SVO",
        "11010110",
        "isolating",
        "latin",
        "root",
        0.15,
        resource="low",
        pretrained=False,
        tmod=True,
    ),
)

# Inner nodes of the family tree: node -> (parent, retention from parent).
FAMILY_TREE: dict[str, tuple[str, float]] = {
    "ie": ("root", 0.45),
    "germanic": ("ie", 0.55),
    "west_germanic": ("germanic", 0.7),
    "low_franconian": ("west_germanic", 0.8),
    "north_germanic": ("germanic", 0.7),
    "romance": ("ie", 0.55),
    "ibero_romance": ("romance", 0.8),
    "balto_slavic": ("ie", 0.55),
    "slavic": ("balto_slavic", 0.75),
    "indo_iranian": ("ie", 0.55),
    "indic": ("indo_iranian", 0.7),
    "hindustani": ("indic", 0.9),
    "semitic": ("root", 0.2),
    "uralic": ("root", 0.2),
    "austronesian": ("root", 0.2),
}

LANG_BY_CODE: dict[str, LangSpec] = {spec.code: spec for spec in LANGUAGES}


def typology_vector(spec: LangSpec) -> np.ndarray:
    """14-d typology vector: one-hot word order and 8 head-direction flags coded -1 (before) / +1 (after).

    Its cosine plays the role of URIEL syntax similarity: agreeing flags raise it, disagreeing ones lower it.
    """
    order = np.array([spec.order == o for o in WORD_ORDERS], dtype=float)
    return np.concatenate([order, 2.0 * np.array(spec.flags, dtype=float) - 1.0])


def lineage(code: str) -> list[tuple[str, float]]:
    """Path from the root to a language as (node, retention) pairs, root excluded."""
    spec = LANG_BY_CODE[code]
    path = [(code, spec.retention)]
    node = spec.parent
    while node != "root":
        parent, ret = FAMILY_TREE[node]
        path.append((node, ret))
        node = parent
    return path[::-1]


# --- scripts -----------------------------------------------------------------------------------------------------
_LETTERS = CONSONANTS + VOWELS
_SCRIPT_ALPHABETS = {
    "cyrillic": "пткбдгмнслрвфхйзаеиоу",
    "arabic": "پتکبدگمنسلروفهیزاےیوُ",
    "devanagari": "पतकबदगमनसलरवफहजज़अएइओउ",
    "armenian": "պտկբդգմնսլրվֆհյզաեիոու",
    "tamil": "பதகபடகமநசலரவபஹயஜஅஎஇஒஉ",
}
_HANGUL_L = [0, 6, 15, 7, 3, 0, 6, 2, 9, 5, 5, 7, 16, 18, 11, 12]  # consonant -> choseong index
_HANGUL_V = [0, 5, 20, 8, 13]  # a e i o u -> jungseong index


def syllables(form: str) -> list[str]:
    """Split a CV(C) form into syllables (each starts with a consonant, or is a bare vowel)."""
    out: list[str] = []
    for ch in form:
        if ch in CONSONANTS and (not out or out[-1][-1] in VOWELS):
            out.append(ch)
        elif out:
            out[-1] += ch
        else:
            out.append(ch)
    return out


def render(form: str, script: str) -> str:
    """Spell a Latin-like form in ``script``. Hangul and Han write one character per syllable."""
    if script == "latin":
        return form
    if script in _SCRIPT_ALPHABETS:
        table = dict(zip(_LETTERS, _SCRIPT_ALPHABETS[script], strict=False))
        return "".join(table.get(c, c) for c in form)
    out = []
    for syl in syllables(form):
        cons = CONSONANTS.index(syl[0]) if syl[0] in CONSONANTS else 11
        vow = next((VOWELS.index(c) for c in syl if c in VOWELS), 0)
        coda = 1 if len(syl) > 2 else 0
        if script == "hangul":
            out.append(chr(0xAC00 + (_HANGUL_L[cons] * 21 + _HANGUL_V[vow]) * 28 + coda * 4))
        else:  # han: a fixed block of CJK ideographs, one per (onset, vowel, coda)
            out.append(chr(0x4E00 + 37 * (cons * len(VOWELS) * 2 + vow * 2 + coda)))
    return "".join(out)


def coin(rng: np.random.Generator, n_syll: int) -> str:
    """A fresh CV word form of ``n_syll`` syllables."""
    return "".join(rng.choice(list(CONSONANTS)) + rng.choice(list(VOWELS)) for _ in range(n_syll))
