"""One abstract grammar, many word orders: sentence meanings, their sampling and their realisation as trees.

A meaning (`Clause`) is language-free; `realize` turns it into the words of one language together with a UD-style
dependency tree, so parallel sentences and treebanks come from the same code (chapters 01, 02, 04-07).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from .languages import LANG_BY_CODE, LangSpec
from .lexicon import (
    ADPOSITIONS,
    ADVERBS,
    ANIMALS,
    NAMES,
    NEUTRAL_ADJ,
    PERSONS,
    PLACES,
    TEMPORAL,
    THINGS,
    VERBS,
)


@dataclass(frozen=True)
class NP:
    """A noun phrase: head noun concept plus optional determiner, adjective and genitive noun phrase."""

    noun: str
    det: str | None = "the"
    adj: str | None = None
    gen: NP | None = None


@dataclass(frozen=True)
class Clause:
    """A language-free clause meaning. ``kind`` is 'transitive' (verb, optional object) or 'copular' (pred)."""

    subj: NP
    kind: str = "transitive"
    verb: str | None = None
    obj: NP | None = None
    pred: str | None = None
    obl: tuple[str, NP] | None = None
    adv: str | None = None
    aux: bool = False
    neg: bool = False
    front: bool = False  # the adverbial (adv, else obl) comes first in the sentence
    syn: frozenset[str] = field(default_factory=frozenset)  # concepts realised with their synonym form

    def concepts(self) -> list[str]:
        """Every content concept of the clause (used for synonym toggling and lexical checks)."""
        out: list[str] = []

        def np_(p: NP | None) -> None:
            if p is not None:
                out.extend(c for c in (p.noun, p.adj) if c)
                np_(p.gen)

        np_(self.subj)
        np_(self.obj)
        if self.obl:
            np_(self.obl[1])
        out.extend(c for c in (self.verb, self.pred, self.adv) if c)
        return out


@dataclass
class Word:
    """One realised word: surface form, concept, UPOS, head (1-based, 0 = root), relation."""

    form: str
    lemma: str
    upos: str
    head: int = 0
    deprel: str = "root"


@dataclass
class _Node:
    word: Word
    deps: list[tuple[float, _Node]] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------------
# sampling meanings
def _pick(rng: np.random.Generator, items) -> str:
    return str(items[int(rng.integers(len(items)))])


def sample_np(rng: np.random.Generator, nouns, p_adj: float = 0.3, p_gen: float = 0.1, adjs=NEUTRAL_ADJ) -> NP:
    """A random noun phrase over ``nouns``."""
    det = _pick(rng, ("the", "the", "a", "this", "every"))
    adj = _pick(rng, adjs) if rng.random() < p_adj else None
    gen = NP(_pick(rng, PERSONS), det="the") if rng.random() < p_gen else None
    return NP(_pick(rng, nouns), det=det, adj=adj, gen=gen)


def sample_clause(
    rng: np.random.Generator,
    p_obj: float = 0.85,
    p_obl: float = 0.3,
    p_adv: float = 0.3,
    p_aux: float = 0.2,
    p_neg: float = 0.0,
    p_adj: float = 0.3,
) -> Clause:
    """A random transitive clause: agentive subject, verb, optional object, oblique, adverb, auxiliary."""
    subj = NP(_pick(rng, NAMES), det=None) if rng.random() < 0.15 else sample_np(rng, PERSONS + ANIMALS, p_adj=p_adj)
    obj = sample_np(rng, THINGS + ANIMALS + PERSONS, p_adj=p_adj) if rng.random() < p_obj else None
    obl = (
        (_pick(rng, ADPOSITIONS), sample_np(rng, PLACES + THINGS, p_adj=0.0, p_gen=0.0))
        if rng.random() < p_obl
        else None
    )
    adv = _pick(rng, ADVERBS) if rng.random() < p_adv else None
    return Clause(
        subj=subj,
        verb=_pick(rng, VERBS),
        obj=obj,
        obl=obl,
        adv=adv,
        aux=bool(rng.random() < p_aux),
        neg=bool(rng.random() < p_neg),
    )


def copular(subj: NP, pred: str, neg: bool = False) -> Clause:
    """'SUBJ is (not) PRED': the frame of evaluations, stereotype statements and value statements."""
    return Clause(subj=subj, kind="copular", pred=pred, neg=neg)


def swap_roles(c: Clause) -> Clause:
    """Exchange subject and object (the PAWS-style hard negative)."""
    if c.obj is None:
        raise ValueError("cannot swap roles of a clause without an object")
    return replace(c, subj=c.obj, obj=c.subj)


# ---------------------------------------------------------------------------------------------------------------
# realisation
_ORDER_POS = {  # position of S and O relative to the verb at 0
    "SVO": (-1, 1),
    "SOV": (-2, -1),
    "VSO": (1, 2),
    "VOS": (2, 1),
    "OVS": (1, -1),
    "OSV": (-1, -2),
}


class Realizer:
    """Turns meanings into words of one language (word order, morphology, script, multiword tokens)."""

    def __init__(self, lang: str, lexicon: dict[str, tuple[str, str]], suffixes: dict[str, str]):
        self.spec: LangSpec = LANG_BY_CODE[lang]
        self.lex = lexicon
        self.suffixes = suffixes

    def _form(self, concept: str, syn: frozenset[str]) -> str:
        main, alt = self.lex[concept]
        return alt if concept in syn else main

    def _word(self, concept: str, upos: str, syn: frozenset[str], role: str | None = None) -> Word:
        form = self._form(concept, syn)
        if role and upos in {"NOUN", "PROPN"}:
            form += self.suffixes.get(role, "")
        return Word(form, concept, upos)

    def _np(self, p: NP, role: str, syn: frozenset[str]) -> _Node:
        f = self.spec.flag
        upos = "PROPN" if p.noun in NAMES else "NOUN"
        node = _Node(self._word(p.noun, upos, syn, role))
        if p.det:
            node.deps.append(
                (3.0 if f["det_after"] else -3.0, _Node(Word(self._form(p.det, syn), p.det, "DET", deprel="det")))
            )
        if p.adj:
            adj = self._word(p.adj, "ADJ", syn)
            adj.deprel = "amod"
            node.deps.append((1.0 if f["adj_after"] else -1.0, _Node(adj)))
        if p.gen is not None:
            gen = self._np(p.gen, "nmod", syn)
            gen.word.deprel = "nmod" if f["gen_after"] else "nmod:poss"
            node.deps.append((2.0 if f["gen_after"] else -2.0, gen))
        return node

    def _clause(self, c: Clause) -> _Node:
        f, syn = self.spec.flag, c.syn
        s_pos, o_pos = _ORDER_POS[self.spec.order]
        if c.kind == "copular":
            head = _Node(self._word(c.pred, "ADJ", syn))
            cop = Word(self._form("is", syn), "is", "AUX", deprel="cop")
            head.deps.append((0.6 if f["aux_after"] else -0.6, _Node(cop)))
        else:
            head = _Node(self._word(c.verb, "VERB", syn))
            if c.obj is not None:
                obj = self._np(c.obj, "obj", syn)
                obj.word.deprel = "obj"
                head.deps.append((float(o_pos), obj))
            if c.aux:
                head.deps.append(
                    (0.6 if f["aux_after"] else -0.6, _Node(Word(self._form("will", syn), "will", "AUX", deprel="aux")))
                )
        subj = self._np(c.subj, "nsubj", syn)
        subj.word.deprel = "nsubj"
        head.deps.append((float(s_pos), subj))
        if c.neg:
            head.deps.append(
                (0.4 if f["neg_after"] else -0.4, _Node(Word(self._form("not", syn), "not", "PART", deprel="advmod")))
            )
        fronted = "adv" if c.adv else "obl"
        if c.obl is not None:
            adp, np_ = c.obl
            obl = self._np(np_, "obl", syn)
            obl.word.deprel = "obl"
            obl.deps.append(
                (4.0 if f["postposition"] else -4.0, _Node(Word(self._form(adp, syn), adp, "ADP", deprel="case")))
            )
            pos = -10.0 if (c.front and fronted == "obl") else (4.0 if f["obl_after"] else -4.0)
            head.deps.append((pos, obl))
        if c.adv is not None:
            adv = self._word(c.adv, "ADV", syn)
            adv.deprel = "obl:tmod" if (self.spec.tmod and c.adv in TEMPORAL) else "advmod"
            pos = -10.0 if (c.front and fronted == "adv") else (5.0 if f["adv_after"] else -5.0)
            head.deps.append((pos, _Node(adv)))
        return head

    def realize(self, c: Clause) -> list[Word]:
        """Words of the sentence in order, with 1-based heads and UD relations; final punctuation included."""
        root = self._clause(c)
        words: list[Word] = []

        def walk(node: _Node) -> int:
            left = sorted((d for d in node.deps if d[0] < 0), key=lambda d: d[0])
            right = sorted((d for d in node.deps if d[0] > 0), key=lambda d: d[0])
            child_idx = [walk(n) for _, n in left]
            words.append(node.word)
            me = len(words)
            child_idx += [walk(n) for _, n in right]
            for ci in child_idx:
                words[ci - 1].head = me
            return me

        root_idx = walk(root)
        words[root_idx - 1].head, words[root_idx - 1].deprel = 0, "root"
        words.append(Word(".", ".", "PUNCT", head=root_idx, deprel="punct"))
        return words

    def surface(self, words: list[Word]) -> list[tuple[str, list[int]]]:
        """Surface tokens as (token, word indices): in `mwt` languages an adposition fuses with a following article."""
        toks: list[tuple[str, list[int]]] = []
        i = 0
        while i < len(words):
            w = words[i]
            if (
                self.spec.mwt
                and w.upos == "ADP"
                and i + 1 < len(words)
                and words[i + 1].upos == "DET"
                and words[i + 1].lemma == "the"
            ):
                toks.append((w.form + words[i + 1].form, [i + 1, i + 2]))
                i += 2
            else:
                toks.append((w.form, [i + 1]))
                i += 1
        return toks

    def text(self, c: Clause) -> str:
        """The sentence as whitespace-separated surface tokens."""
        return " ".join(t for t, _ in self.surface(self.realize(c)))

    def conllu(self, c: Clause, sent_id: str) -> str:
        """One CoNLL-U sentence block (with multiword-token lines where tokens fuse)."""
        words = self.realize(c)
        toks = self.surface(words)
        lines = [f"# sent_id = {sent_id}", f"# text = {' '.join(t for t, _ in toks)}"]
        for tok, idx in toks:
            if len(idx) > 1:
                lines.append(f"{idx[0]}-{idx[-1]}\t{tok}\t_\t_\t_\t_\t_\t_\t_\t_")
            for i in idx:
                w = words[i - 1]
                lines.append(f"{i}\t{w.form}\t{w.lemma}\t{w.upos}\t_\t_\t{w.head}\t{w.deprel}\t_\t_")
        return "\n".join(lines) + "\n"
