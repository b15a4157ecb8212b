"""The synthetic world: determinism, well-formed trees, and planted truth recoverable by counting."""

from __future__ import annotations

from collections import Counter

import conllu
import numpy as np
import pytest
from scipy.stats import spearmanr

from mlmc.world import LANGUAGES, World


@pytest.fixture(scope="module")
def world() -> World:
    return World(seed=0)


def test_same_seed_same_world_other_seed_differs():
    a, b, c = World(seed=3), World(seed=3), World(seed=4)
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    assert a.paraphrase(["en", "ko"], 20)[:] == b.paraphrase(["en", "ko"], 20)[:]
    assert a.treebank("de", 10) == b.treebank("de", 10)
    assert a.pretraining_corpus(["en"], 50)["text"] == b.pretraining_corpus(["en"], 50)["text"]
    assert a.pretraining_corpus(["en"], 50)["text"] != c.pretraining_corpus(["en"], 50)["text"]


def test_splits_and_task_seeds_give_different_data(world):
    train = world.sentiment(["en"], 50, split="train")["text_a"]
    assert train != world.sentiment(["en"], 50, split="test")["text_a"]
    assert train != world.sentiment(["en"], 50, split="train", seed=1)["text_a"]


@pytest.mark.parametrize("task", ["paraphrase", "entailment"])
def test_parallel_tasks_share_content_ids_and_labels(world, task):
    ds = getattr(world, task)(["en", "de", "ko"], 30).to_pandas()
    by_cid = ds.groupby("cid")
    assert (by_cid["label"].nunique() == 1).all()
    assert (by_cid["lang"].nunique() == 3).all()
    # translations differ in surface form across languages with different lexicons
    en, ko = ds[ds.lang == "en"].text_a.to_numpy(), ds[ds.lang == "ko"].text_a.to_numpy()
    assert (en != ko).all()


def test_non_parallel_sentiment_has_independent_contents(world):
    ds = world.sentiment(["en", "de"], 40).to_pandas()
    assert ds.cid.nunique() == 80
    assert 0.3 < ds.label.mean() < 0.7


def test_sentiment_label_is_polarity_xor_negation(world):
    """Count the planted polarity word and the negator in one-clause reviews: the label follows."""
    words = world.sentiment_words("en")
    pol = dict(zip(words.form, words.polarity, strict=True))
    neg = world.word("en", "not")
    ds = world.sentiment(["en"], 300, p_neg=0.3)
    checked = 0
    for text, label in zip(ds["text_a"], ds["label"], strict=True):
        toks = text.split()
        polar = [pol[t] for t in toks if t in pol]
        assert len(polar) == 1
        if toks.count(".") == 1:  # no context clause
            assert label == int((polar[0] > 0) != (neg in toks))
            checked += 1
    assert checked > 100


def test_entailment_labels_are_balanced_and_binarised(world):
    ds = world.entailment(["en"], 300).to_pandas()
    assert set(ds.label3) == {0, 1, 2}
    assert (ds.label == (ds.label3 == 0)).all()


def test_treebanks_are_valid_trees(world):
    for spec in LANGUAGES:
        sents = conllu.parse(world.treebank(spec.code, 25))
        assert len(sents) == 25
        for s in sents:
            words = [t for t in s if isinstance(t["id"], int)]
            heads = {t["id"]: t["head"] for t in words}
            assert sum(h == 0 for h in heads.values()) == 1
            for i in heads:  # acyclic: every word reaches the root
                seen, j = set(), i
                while j != 0:
                    assert j not in seen and j in heads
                    seen.add(j)
                    j = heads[j]
            for d, h in heads.items():  # projective: nothing between a head and its dependent escapes the arc
                if h == 0:
                    continue
                lo, hi = sorted((d, h))
                for k in range(lo + 1, hi):
                    j = k
                    while j not in (0, lo, hi) and j != h:
                        j = heads[j]
                    assert j != 0, f"non-projective arc {d}->{h} in {spec.code}"


def _positions(world, lang, rel_dep, rel_head, n=150):
    before = after = 0
    for s in conllu.parse(world.treebank(lang, n)):
        words = {t["id"]: t for t in s if isinstance(t["id"], int)}
        for t in words.values():
            if t["deprel"] == rel_dep and words.get(t["head"], {}).get("deprel", "root") == rel_head:
                before += t["id"] < t["head"]
                after += t["id"] > t["head"]
    return before, after


def test_word_order_and_adposition_side_follow_typology(world):
    b, a = _positions(world, "ko", "obj", "root")  # SOV: object before the verb
    assert b > 0 and a == 0
    b, a = _positions(world, "en", "obj", "root")  # SVO
    assert a > 0 and b == 0
    b, a = _positions(world, "ko", "case", "obl")  # postpositions
    assert a > 0 and b == 0
    b, a = _positions(world, "fr", "case", "obl")  # prepositions
    assert b > 0 and a == 0


def test_multiword_tokens_in_fusing_languages(world):
    text = world.treebank("fr", 200)
    assert any(line.split("\t")[0].count("-") == 1 for line in text.splitlines() if line and line[0].isdigit())
    assert "obl:tmod" in world.treebank("hu", 300) and "obl:tmod" not in world.treebank("ru", 300)


def test_lexical_overlap_follows_the_family_tree(world):
    lex = world.lexical_overlap()
    assert lex.loc["es", "gl"] > lex.loc["es", "fr"] > lex.loc["es", "ko"]
    assert lex.loc["en", "de"] > lex.loc["en", "es"]
    assert lex.loc["hi", "ur"] == 0.0  # cognates in different scripts share no surface forms
    assert np.allclose(np.diag(lex), 1.0)


def test_typology_similarity_and_nearest(world):
    sim = world.typology_similarity()
    assert np.allclose(sim, sim.T) and np.allclose(np.diag(sim), 1.0)
    assert sim.loc["hi", "ko"] > sim.loc["hi", "en"]
    assert world.nearest("gl", ["ar", "cs", "et", "hi", "it", "no", "ru"]) == "it"
    assert world.nearest("mr", ["ar", "cs", "et", "hi", "it", "no", "ru"]) == "hi"


def test_planted_stereotypes_recoverable_by_counting(world):
    """In each language's corpus, the statements most often made about a group use its planted attributes."""
    corpus = world.pretraining_corpus(["en", "ko"], 4000).to_pandas()
    truth = world.stereotype_truth(["en", "ko"])
    attributes = sorted(truth.attribute.unique())
    for lang in ("en", "ko"):
        counts = Counter(corpus[corpus.lang == lang].text)
        hits = n = 0
        for g, planted in truth[truth.lang == lang].groupby("group")["attribute"]:
            freq = Counter({a: counts[world.statement(lang, g, a)] for a in attributes})
            hits += len({a for a, _ in freq.most_common(3)} & set(planted))
            n += 3
        assert hits / n > 0.7, lang


def test_planted_values_recoverable_by_counting(world):
    corpus = world.pretraining_corpus(["de"], 6000).to_pandas()
    truth = world.value_truth(["de"])
    est, ref = [], []
    for r in truth.itertuples():
        s1 = world.statement("de", r.subject, r.opt1, det=None)
        s2 = world.statement("de", r.subject, r.opt2, det=None)
        n1, n2 = (corpus.text == s1).sum(), (corpus.text == s2).sum()
        if n1 + n2 >= 5:
            est.append(n1 / (n1 + n2))
            ref.append(r.p_opt1)
    assert len(est) >= 10
    assert spearmanr(est, ref).statistic > 0.7


def test_value_answers_cluster_by_culture_zone(world):
    t = world.value_truth().pivot(index="lang", columns="qid", values="p_opt1")
    d = lambda a, b: float(np.abs(t.loc[a] - t.loc[b]).mean())  # noqa: E731
    assert d("es", "it") < d("es", "ko")
    assert d("hi", "mr") < d("hi", "en")


def test_crows_pairs_are_minimal_and_planted(world):
    ds = world.crows_pairs("en", 40).to_pandas()
    truth = world.stereotype_truth(["en"])
    for r in ds.itertuples():
        a, b = r.sent_more.split(), r.sent_less.split()
        assert len(a) == len(b) and sum(x != y for x, y in zip(a, b, strict=True)) == 1
        assert ((truth.group == r.group_more) & (truth.attribute == r.attribute)).any()


def test_cloze_masks_the_predicate(world):
    probe = world.cloze("ko", "family", "<mask>", det=None)
    assert probe.count("<mask>") == 1
    assert probe.replace("<mask>", world.word("ko", "important")) == world.statement(
        "ko", "family", "important", det=None
    )


@pytest.mark.parametrize(
    "call, param",
    [
        (lambda w: w.paraphrase(["en", "xx"], 5), "langs"),
        (lambda w: w.sentiment(["en"], -1), "n_per_lang"),
        (lambda w: w.sentiment(["en"], 5, split="validation"), "split"),
        (lambda w: w.treebank("qq", 5), "lang"),
        (lambda w: w.sentiment([], 5), "langs"),
        (lambda w: w.paraphrase(["en"], 5, p_hard=2.0), "p_hard"),
    ],
)
def test_bad_parameters_name_the_parameter(world, call, param):
    with pytest.raises(ValueError, match=f"'{param}'"):
        call(world)
