"""`World`: the seeded synthetic world every default-profile chapter runs on.

Everything is a pure function of the seed and the sizes; generators return `datasets.Dataset` (or CoNLL-U text),
the same types as the real-data loaders, and every planted fact is exposed as a table.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import pandas as pd
from datasets import Dataset

from ..errors import check_choice, check_int, check_range, check_subset
from ..utils import stable_hash
from . import culture, tasks
from .grammar import NP, Clause, Realizer, copular, sample_clause
from .languages import LANG_BY_CODE, LANGUAGES, LangSpec, typology_vector
from .lexicon import ATTRIBUTES, GROUPS, build_lexicon, case_suffixes, concept_inventory
from .lexicon import _rng as rng_for

SPLITS = ("train", "dev", "test")
WORLD_VERSION = 2


class World:
    """A seeded family of synthetic languages with planted ground truth.

    Parameters
    ----------
    seed : world seed; every lexicon, typology-driven text and planted association derives from it.
    n_high, n_low : pretraining sentences per high- and low-resource language.
    p_culture : share of culture statements (stereotypes, values) in each pretraining corpus.
    """

    def __init__(self, seed: int = 0, n_high: int = 3000, n_low: int = 600, p_culture: float = 0.25):
        self.seed = check_int("seed", seed, 0)
        self.n_high = check_int("n_high", n_high, 1)
        self.n_low = check_int("n_low", n_low, 1)
        self.p_culture = check_range("p_culture", p_culture, 0.0, 1.0)
        self.languages: list[str] = [s.code for s in LANGUAGES]
        self.pretrained_languages: list[str] = [s.code for s in LANGUAGES if s.pretrained]

    # --- identity ---------------------------------------------------------------------------------------------
    def config(self) -> dict:
        """The parameters that define this world (part of every cache key built on it)."""
        return dict(
            version=WORLD_VERSION, seed=self.seed, n_high=self.n_high, n_low=self.n_low, p_culture=self.p_culture
        )

    def fingerprint(self) -> str:
        """A short hash of the world's configuration and generator version."""
        return stable_hash(self.config())

    def __repr__(self) -> str:
        return f"World(seed={self.seed}, languages={len(self.languages)}, fingerprint={self.fingerprint()})"

    # --- languages --------------------------------------------------------------------------------------------
    def check_langs(self, langs, name: str = "langs") -> list[str]:
        """Validate a list of language codes against this world, naming the parameter on error."""
        return check_subset(name, langs, self.languages)

    def spec(self, lang: str) -> LangSpec:
        """The typology, script and family of one language."""
        check_choice("lang", lang, self.languages)
        return LANG_BY_CODE[lang]

    def typology(self, lang: str) -> np.ndarray:
        """14-d typology vector of a language (word order one-hot + head-direction flags)."""
        return typology_vector(self.spec(lang))

    def typology_table(self, langs=None) -> pd.DataFrame:
        """One row per language: name, family parent, word order, flags, morphology, script, resource."""
        langs = self.languages if langs is None else self.check_langs(langs)
        rows = []
        for code in langs:
            s = LANG_BY_CODE[code]
            rows.append(
                dict(
                    lang=code,
                    name=s.name,
                    family=s.parent,
                    order=s.order,
                    **s.flag,
                    morphology=s.morphology,
                    script=s.script,
                    resource=s.resource,
                    pretrained=s.pretrained,
                )
            )
        return pd.DataFrame(rows).set_index("lang")

    def typology_similarity(self, langs=None) -> pd.DataFrame:
        """Cosine similarity of typology vectors (the world's stand-in for URIEL syntax similarity)."""
        langs = self.languages if langs is None else self.check_langs(langs)
        v = np.stack([self.typology(x) for x in langs])
        v = v / np.linalg.norm(v, axis=1, keepdims=True)
        return pd.DataFrame(v @ v.T, index=langs, columns=langs)

    @cached_property
    def lexicon(self) -> dict[str, dict[str, tuple[str, str]]]:
        """``lexicon[lang][concept] = (main form, synonym form)``."""
        return build_lexicon(self.seed)

    def lexical_overlap(self, langs=None) -> pd.DataFrame:
        """Share of content concepts whose main form is identical in two languages (cognates, same script)."""
        langs = self.languages if langs is None else self.check_langs(langs)
        content = [k for k, c in concept_inventory().items() if c.pos in {"NOUN", "VERB", "ADJ", "ADV"}]
        forms = np.array([[self.lexicon[x][k][0] for k in content] for x in langs])
        share = (forms[:, None, :] == forms[None, :, :]).mean(-1)
        return pd.DataFrame(share, index=langs, columns=langs)

    def similarity(self, langs=None, w_typology: float = 0.5) -> pd.DataFrame:
        """Planted language similarity: a weighted mean of typology cosine and lexical overlap."""
        return w_typology * self.typology_similarity(langs) + (1 - w_typology) * self.lexical_overlap(langs)

    def nearest(self, lang: str, candidates) -> str:
        """The typologically closest of ``candidates`` to ``lang`` (ties broken by lexical overlap)."""
        cands = self.check_langs(candidates, "candidates")
        sim = self.typology_similarity([lang, *[c for c in cands if c != lang]])
        lex = self.lexical_overlap([lang, *[c for c in cands if c != lang]])
        score = {c: (round(float(sim.loc[lang, c]), 9), float(lex.loc[lang, c])) for c in cands if c != lang}
        return max(score, key=lambda c: score[c])

    # --- rendering --------------------------------------------------------------------------------------------
    def realizer(self, lang: str) -> Realizer:
        """The realiser of one language (cached)."""
        if not hasattr(self, "_realizers"):
            self._realizers: dict[str, Realizer] = {}
        if lang not in self._realizers:
            check_choice("lang", lang, self.languages)
            self._realizers[lang] = Realizer(lang, self.lexicon[lang], case_suffixes(self.seed, lang))
        return self._realizers[lang]

    def render(self, lang: str, clauses: Clause | list[Clause]) -> str:
        """Surface text of one or more clauses in ``lang``."""
        if isinstance(clauses, Clause):
            clauses = [clauses]
        r = self.realizer(lang)
        return " ".join(r.text(c) for c in clauses)

    def word(self, lang: str, concept: str) -> str:
        """The main surface form of a concept (e.g. a probe's answer word) in ``lang``."""
        check_choice("concept", concept, sorted(self.lexicon[lang]))
        return self.lexicon[lang][concept][0]

    def statement(self, lang: str, subject: str, pred: str, neg: bool = False, det: str | None = "the") -> str:
        """'the SUBJECT is PRED .' in ``lang`` (stereotype and value statements)."""
        return self.render(lang, copular(NP(subject, det=det), pred, neg=neg))

    def cloze(self, lang: str, subject: str, mask_token: str, det: str | None = "the") -> str:
        """A probe "the SUBJECT is <mask> ." in ``lang``: the statement with its predicate replaced by a mask."""
        words = self.realizer(lang).realize(copular(NP(subject, det=det), "good"))
        toks = self.realizer(lang).surface(words)
        pred_idx = next(i for i, w in enumerate(words, 1) if w.head == 0)
        return " ".join(mask_token if idx == [pred_idx] else t for t, idx in toks)

    # --- corpora and tasks ------------------------------------------------------------------------------------
    def _check_sizes(self, langs, n_per_lang: int, split: str, names=("langs", "n_per_lang")) -> list[str]:
        langs = self.check_langs(langs, names[0])
        check_int(names[1], n_per_lang, 1)
        check_choice("split", split, SPLITS)
        return langs

    def corpus_size(self, lang: str) -> int:
        """Default pretraining sentences for a language (0 when it is left out of pretraining)."""
        s = self.spec(lang)
        if not s.pretrained:
            return 0
        return self.n_high if s.resource == "high" else self.n_low

    def pretraining_corpus(self, langs=None, n_per_lang: int | None = None) -> Dataset:
        """Monolingual text per language: grammar sentences, reviews, and planted culture statements.

        By default the pretrained languages at their resource size; columns ``text`` and ``lang``.
        """
        langs = self.pretrained_languages if langs is None else self.check_langs(langs)
        if n_per_lang is not None:
            check_int("n_per_lang", n_per_lang, 1)
        truth = self.stereotype_truth(langs)
        values = self.value_truth(langs)
        p_planted = culture.bias_strength(self.seed, langs)
        attrs = list(ATTRIBUTES)
        rows = []
        for lang in langs:
            n = n_per_lang if n_per_lang is not None else self.corpus_size(lang)
            rng = rng_for(self.seed, "corpus", lang)
            planted = truth[truth.lang == lang].groupby("group")["attribute"].apply(list).to_dict()
            vals = values[values.lang == lang].to_dict("records")
            groups = [g for gs in GROUPS.values() for g in gs]
            for _ in range(n):
                u = rng.random()
                if u < self.p_culture / 2:  # a statement about a social group
                    g = groups[int(rng.integers(len(groups)))]
                    pool = planted[g] if rng.random() < p_planted[lang] else attrs
                    text = self.statement(lang, g, pool[int(rng.integers(len(pool)))])
                elif u < self.p_culture:  # an answer to a value question
                    v = vals[int(rng.integers(len(vals)))]
                    opt = v["opt1"] if rng.random() < v["p_opt1"] else v["opt2"]
                    text = self.statement(lang, v["subject"], opt, det=None)
                elif u < self.p_culture + 0.1:
                    text = self.render(lang, tasks.review(rng)[0])
                else:
                    text = self.render(lang, sample_clause(rng, p_neg=0.15))
                rows.append(dict(text=text, lang=lang))
        return Dataset.from_list(rows)

    def _pairs(self, name: str, langs, n_per_lang: int, split: str, seed: int, parallel: bool, make) -> Dataset:
        langs = self._check_sizes(langs, n_per_lang, split)
        rows = []
        shared = (
            [make(rng_for(self.seed, name, split, str(seed), str(i))) for i in range(n_per_lang)] if parallel else None
        )
        for lang in langs:
            for i in range(n_per_lang):
                item = shared[i] if parallel else make(rng_for(self.seed, name, split, str(seed), lang, str(i)))
                cid = f"{name}-{split}-{i}" if parallel else f"{name}-{split}-{lang}-{i}"
                rows.append(dict(uid=f"{lang}:{cid}", lang=lang, cid=cid, **item(lang)))
        return Dataset.from_list(rows)

    def sentiment(
        self, langs, n_per_lang: int, split: str = "train", seed: int = 0, parallel: bool = False, p_neg: float = 0.25
    ) -> Dataset:
        """MARC-like reviews (non-parallel by default); label 1 = positive. Columns uid, lang, cid, text_a, text_b,
        label."""
        check_range("p_neg", p_neg, 0.0, 1.0)

        def make(rng):
            clauses, label = tasks.review(rng, p_neg=p_neg)
            return lambda lang: dict(text_a=self.render(lang, clauses), text_b="", label=label)

        return self._pairs("sentiment", langs, n_per_lang, split, seed, parallel, make)

    def paraphrase(
        self, langs, n_per_lang: int, split: str = "train", seed: int = 0, parallel: bool = True, p_hard: float = 0.5
    ) -> Dataset:
        """PAWS-X-like sentence pairs; label 1 = paraphrase. Adds a ``kind`` column (reworded/swapped/changed)."""
        check_range("p_hard", p_hard, 0.0, 1.0)

        def make(rng):
            a, b, label, kind = tasks.paraphrase(rng, p_hard=p_hard)
            return lambda lang: dict(text_a=self.render(lang, a), text_b=self.render(lang, b), label=label, kind=kind)

        return self._pairs("paraphrase", langs, n_per_lang, split, seed, parallel, make)

    def entailment(self, langs, n_per_lang: int, split: str = "train", seed: int = 0, parallel: bool = True) -> Dataset:
        """XNLI-like premise/hypothesis pairs; ``label`` = 1 for entailment (binarised as in the thesis),
        ``label3`` = 0 entailment / 1 neutral / 2 contradiction."""

        def make(rng):
            p, h, label3 = tasks.entailment(rng)
            return lambda lang: dict(
                text_a=self.render(lang, p), text_b=self.render(lang, h), label=int(label3 == 0), label3=label3
            )

        return self._pairs("entailment", langs, n_per_lang, split, seed, parallel, make)

    def treebank(self, lang: str, n: int, split: str = "train", seed: int = 0) -> str:
        """A dependency treebank of ``n`` sentences in CoNLL-U (with multiword tokens where the language fuses)."""
        check_choice("lang", lang, self.languages)
        self._check_sizes([lang], n, split, names=("lang", "n"))
        r = self.realizer(lang)
        blocks = [
            r.conllu(
                tasks.treebank_clause(rng_for(self.seed, "treebank", lang, split, str(seed), str(i))),
                f"{lang}-{split}-{i}",
            )
            for i in range(n)
        ]
        return "\n".join(blocks) + "\n"

    # --- planted culture --------------------------------------------------------------------------------------
    def stereotype_truth(self, langs=None) -> pd.DataFrame:
        """Planted group -> attribute associations per language (lang, category, group, attribute, rank)."""
        langs = self.languages if langs is None else self.check_langs(langs)
        return culture.stereotype_truth(self.seed, langs)

    def bias_strength(self, langs=None) -> pd.Series:
        """Per-language probability that a group statement in the corpus uses a planted attribute."""
        langs = self.languages if langs is None else self.check_langs(langs)
        return culture.bias_strength(self.seed, langs)

    def value_truth(self, langs=None) -> pd.DataFrame:
        """Planted probability of answer option 1 per language and value item."""
        langs = self.languages if langs is None else self.check_langs(langs)
        return culture.value_truth(self.seed, langs)

    def crows_pairs(self, lang: str, n: int, seed: int = 0) -> Dataset:
        """CrowS-style minimal pairs: the same attribute said of a group it is planted for (``sent_more``) and of
        another group of the same category (``sent_less``). Columns: sent_more, sent_less, bias_type, group_more,
        group_less, attribute."""
        check_choice("lang", lang, self.languages)
        check_int("n", n, 1)
        truth = self.stereotype_truth([lang])
        planted = truth.groupby("group")["attribute"].apply(set).to_dict()
        rows = []
        for i in range(n):
            rng = rng_for(self.seed, "crows", lang, str(seed), str(i))
            cat = list(GROUPS)[int(rng.integers(len(GROUPS)))]
            g_more, g_less = (str(x) for x in rng.choice(GROUPS[cat], size=2, replace=False))
            options = sorted(planted[g_more] - planted[g_less]) or sorted(planted[g_more])
            attr = options[int(rng.integers(len(options)))]
            rows.append(
                dict(
                    sent_more=self.statement(lang, g_more, attr),
                    sent_less=self.statement(lang, g_less, attr),
                    bias_type=cat,
                    group_more=g_more,
                    group_less=g_less,
                    attribute=attr,
                )
            )
        return Dataset.from_list(rows)

    def sentiment_words(self, lang: str) -> pd.DataFrame:
        """Sentiment adjectives of a language with their planted polarity (for lexical checks)."""
        inv = concept_inventory()
        return pd.DataFrame(
            [dict(concept=k, form=self.word(lang, k), polarity=c.polarity) for k, c in inv.items() if c.polarity != 0]
        )

    # --- chapter 07 (cross-lingual debiasing): added generators; the ones above are unchanged -------------------
    def toxic_attributes(self) -> list[str]:
        """The world's toxicity analogue: group attributes labelled with anger or disgust (insults), ch. 07."""
        return [a for a, emo in ATTRIBUTES.items() if {"anger", "disgust"} & set(emo)]

    def crows_pairs_unplanted(self, lang: str, n: int, seed: int = 0) -> Dataset:
        """Control minimal pairs in the format of :meth:`crows_pairs`, but the attribute is planted for *neither*
        group, so an LM that learned only the planted associations should prefer each side half of the time."""
        check_choice("lang", lang, self.languages)
        check_int("n", n, 1)
        truth = self.stereotype_truth([lang])
        planted = truth.groupby("group")["attribute"].apply(set).to_dict()
        rows = []
        for i in range(n):
            rng = rng_for(self.seed, "crows-unplanted", lang, str(seed), str(i))
            cat = list(GROUPS)[int(rng.integers(len(GROUPS)))]
            g_more, g_less = (str(x) for x in rng.choice(GROUPS[cat], size=2, replace=False))
            options = sorted(set(ATTRIBUTES) - planted[g_more] - planted[g_less])
            attr = options[int(rng.integers(len(options)))]
            rows.append(
                dict(
                    sent_more=self.statement(lang, g_more, attr),
                    sent_less=self.statement(lang, g_less, attr),
                    bias_type=cat,
                    group_more=g_more,
                    group_less=g_less,
                    attribute=attr,
                )
            )
        return Dataset.from_list(rows)

    def parallel_sentences(
        self, langs, n_per_lang: int, split: str = "train", seed: int = 0, p_group: float = 0.4
    ) -> Dataset:
        """The same meanings rendered in every language of ``langs`` (ch. 07's autoencoder data): grammar clauses
        and, with probability ``p_group``, a group statement with a uniformly drawn attribute (no planted bias).
        Columns uid, lang, cid, text; rows with the same ``cid`` are translations of each other."""
        check_range("p_group", p_group, 0.0, 1.0)
        groups = [g for gs in GROUPS.values() for g in gs]

        def make(rng):
            if rng.random() < p_group:
                g, a = groups[int(rng.integers(len(groups)))], list(ATTRIBUTES)[int(rng.integers(len(ATTRIBUTES)))]
                return lambda lang: dict(text=self.statement(lang, g, a))
            clause = sample_clause(rng, p_neg=0.1)
            return lambda lang: dict(text=self.render(lang, clause))

        return self._pairs("parallel", langs, n_per_lang, split, seed, True, make)

    def curated_statements(
        self, lang: str, n: int, seed: int = 0, bias_types=None, exclude_toxic: bool = False
    ) -> Dataset:
        """Curated non-biased text for SFT (ch. 07, the PANDA analogue): group statements in which every group of a
        category is paired with every attribute equally often (group and attribute drawn independently); with
        ``exclude_toxic`` only attributes outside the toxicity lexicon. Columns text, lang, bias_type, group,
        attribute."""
        check_choice("lang", lang, self.languages)
        check_int("n", n, 1)
        cats = list(GROUPS) if bias_types is None else check_subset("bias_types", bias_types, list(GROUPS))
        clean = [a for a in ATTRIBUTES if not (exclude_toxic and a in self.toxic_attributes())]
        rows = []
        for i in range(n):
            rng = rng_for(self.seed, "curated", lang, str(seed), str(i))
            cat = cats[int(rng.integers(len(cats)))]
            g, a = GROUPS[cat][int(rng.integers(len(GROUPS[cat])))], clean[int(rng.integers(len(clean)))]
            rows.append(dict(text=self.statement(lang, g, a), lang=lang, bias_type=cat, group=g, attribute=a))
        return Dataset.from_list(rows)

    def statement_prompt(self, lang: str, subject: str, pred: str) -> tuple[str, str]:
        """Split :meth:`statement` into (prompt, completion) just before the predicate word, e.g.
        ("the muslims is", "kind .") in an English-like order (ch. 07's DPO pairs and generation prompts)."""
        words = self.statement(lang, subject, pred).split(" ")
        form = self.word(lang, pred)
        cut = max(i for i, w in enumerate(words) if w.startswith(form))
        return " ".join(words[:cut]), " ".join(words[cut:])

    def preference_pairs(self, lang: str, n: int, seed: int = 0, kind: str = "bias", bias_types=None) -> Dataset:
        """DPO preference triples about groups (ch. 07). ``kind="bias"`` (BiasDPO analogue): chosen = an attribute
        planted for no group of the category, rejected = one planted for this group; ``kind="toxicity"`` (DetoxDPO
        analogue): chosen = a non-toxic attribute, rejected = one from :meth:`toxic_attributes`.
        Columns prompt, chosen, rejected, lang, kind, bias_type, group."""
        check_choice("lang", lang, self.languages)
        check_int("n", n, 1)
        check_choice("kind", kind, ["bias", "toxicity"])
        cats = list(GROUPS) if bias_types is None else check_subset("bias_types", bias_types, list(GROUPS))
        truth = self.stereotype_truth([lang])
        planted = truth.groupby("group")["attribute"].apply(list).to_dict()
        toxic = self.toxic_attributes()
        rows = []
        for i in range(n):
            rng = rng_for(self.seed, "preference", kind, lang, str(seed), str(i))
            cat = cats[int(rng.integers(len(cats)))]
            g = GROUPS[cat][int(rng.integers(len(GROUPS[cat])))]
            if kind == "bias":
                in_cat = {a for h in GROUPS[cat] for a in planted[h]}
                good, bad = sorted(set(ATTRIBUTES) - in_cat - set(toxic)), sorted(planted[g])
            else:
                good, bad = sorted(set(ATTRIBUTES) - set(toxic)), sorted(toxic)
            prompt, chosen = self.statement_prompt(lang, g, good[int(rng.integers(len(good)))])
            rejected = self.statement_prompt(lang, g, bad[int(rng.integers(len(bad)))])[1]
            rows.append(
                dict(prompt=prompt, chosen=chosen, rejected=rejected, lang=lang, kind=kind, bias_type=cat, group=g)
            )
        return Dataset.from_list(rows)
