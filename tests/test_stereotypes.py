"""Tests of mlmc.stereotypes and of the cloze scoring added for chapter 04 (spec ch6 §8)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import BertConfig, BertForMaskedLM, PreTrainedTokenizerFast

from mlmc import scoring
from mlmc import stereotypes as st
from mlmc.world import ATTRIBUTES, GROUPS, World
from mlmc.world import newsfeed as nf

ROOT = Path(__file__).resolve().parents[1]


def _shared_data() -> Path | None:
    for p in [os.environ.get("MLMC_SHARED_DATA"), ROOT.parent / "shared" / "data", ROOT.parents[1] / "shared" / "data"]:
        if p and (Path(p) / "stereotypes_in_lms").is_dir():
            return Path(p)
    return None


# --- a tiny WordPiece masked LM ---------------------------------------------------------------------------------
VOCAB = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "why",
    "are",
    "so",
    "?",
    "what",
    "makes",
    "police",
    "off",
    "##icers",
    "real",
    "-",
    "estate",
    "develop",
    "##ers",
    "strict",
    "kind",
    "rude",
    "lazy",
    "calm",
    "is",
]


@pytest.fixture(scope="module")
def wp():
    tk = Tokenizer(models.WordPiece({w: i for i, w in enumerate(VOCAB)}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertForMaskedLM(cfg).eval(), tok


# 1. recall@k --------------------------------------------------------------------------------------------------
def test_recall_at_k_hand_example():
    ranked = {"q1": ["a", "b", "c", "d"], "q2": ["x", "y"]}
    gold = pd.DataFrame(
        {
            "input": ["q1", "q1", "q2", "q2", "q3"],
            "target_category": ["c1", "c1", "c2", "c2", "c1"],
            "completion": ["b", "e", "y", "y", "a"],
        }
    )
    r = st.recall_at_k(ranked, gold, [1, 2, 4], by=None).set_index("k").recall
    assert r.tolist() == [0.0, 0.75, 0.75]
    by = st.recall_at_k(ranked, gold, [2], by="target_category").set_index("target_category")
    assert by.loc["c1", "recall"] == 0.5 and by.loc["c2", "recall"] == 1.0
    assert by.n.sum() == 4  # the unprobed input q3 gets no row


# 2. typicality re-ranking --------------------------------------------------------------------------------------
def test_rerank_by_typicality():
    post, prior = np.log([0.5, 0.3, 0.2]), np.log([0.6, 0.1, 0.3])
    out = st.rerank_by_typicality(post, prior, [0, 1, 2])
    assert [i for i, _ in out] == [1, 0, 2]
    tie = st.rerank_by_typicality(np.zeros(3), np.zeros(3), [2, 0, 1])
    assert [i for i, _ in tie] == [2, 0, 1]  # ties keep the original rank
    assert sorted(i for i, _ in out) == [0, 1, 2]


# 3. emotion profile --------------------------------------------------------------------------------------------
def test_emotion_profile_hand_lexicon():
    lex = {
        "angry": frozenset({"anger", "negative"}),
        "vocal": frozenset(),
        "kind": frozenset({"joy", "trust", "positive"}),
    }
    scores, coverage, covered = st.emotion_profile(["angry", "vocal", "kind", "xyz"], lex)
    assert coverage == pytest.approx(0.75) and covered == ["angry", "vocal", "kind"]
    s = dict(zip(st.EMOTIONS, scores, strict=True))
    for e in ("anger", "negative", "joy", "trust", "positive"):
        assert s[e] == pytest.approx(100 / 3)
    assert s["fear"] == s["sadness"] == s["surprise"] == s["anticipation"] == s["disgust"] == 0
    empty = st.emotion_profile([], lex)
    assert empty[1] == 0.0 and not empty[0].any()


def test_lexicons(tmp_path):
    world = st.load_lexicon("world")
    assert world["tall"] == frozenset() and "anger" in world["rude"]
    p = tmp_path / "emolex.txt"
    p.write_text("angry\tanger\t1\nangry\tjoy\t0\nvocal\tanger\t0\nvocal\tjoy\t0\n")
    nrc = st.load_lexicon("nrc_tsv", p)
    assert nrc == {"angry": frozenset({"anger"}), "vocal": frozenset()}
    (tmp_path / "bad.txt").write_text("angry anger 1\n")
    with pytest.raises(ValueError, match="lexicon_path"):
        st.load_lexicon("nrc_tsv", tmp_path / "bad.txt")
    with pytest.raises(ValueError, match="'lexicon'"):
        st.load_lexicon("emolex")


# 4. templates --------------------------------------------------------------------------------------------------
def test_templates_and_groups():
    groups = st.load_social_groups()
    assert sum(map(len, groups.values())) == 374 and len(groups) == 9
    assert len(groups["age"]) == 11 and "real-estate developers" in groups["profession"]
    for cat in groups:
        ts = st.templates_for(cat)
        assert len(ts) == 5 and all("{g}" in t for t in ts)
    assert "why are all people in {g} so" in st.templates_for("country")
    assert any(" is " in t for t in st.templates_for("country"))
    probe = st.query_probe(st.templates_for("race")[1].replace("{g}", "black people"))
    assert probe == "what makes black people so [MASK] ?"
    assert probe.count(st.MASK) == 1 and probe.endswith(" ?")
    with pytest.raises(ValueError, match="'category'"):
        st.templates_for("hobby")
    with pytest.raises(ValueError, match="mask token"):
        st.check_templates("templates", ["the {group} is good ."])
    assert st.check_templates("templates", ["the {group} is [MASK] ."]) == ["the {group} is [MASK] ."]


# 5. multi-token groups: the attribute mask is the last one ---------------------------------------------------
def test_mask_position_with_multi_piece_groups(wp):
    model, tok = wp
    for g in ["police officers", "real-estate developers"]:
        assert len(tok(g, add_special_tokens=False)["input_ids"]) > 2
        text = st.query_probe(f"why are {g} so").replace(st.MASK, tok.mask_token)
        ids = tok(text)["input_ids"]
        pos = scoring._mask_position(ids, tok.mask_token_id, "last")
        assert ids[pos] == tok.mask_token_id and ids[pos + 1] == tok.convert_tokens_to_ids("?")
        prior = f"why are {tok.mask_token} {tok.mask_token} so {tok.mask_token} ?"
        lp_prior = scoring.mask_logprobs(model, tok, [prior])
        ids_p = tok(prior)["input_ids"]
        assert ids_p.count(tok.mask_token_id) == 3
        assert lp_prior.shape == (1, len(VOCAB))


# cloze scoring: batched == one at a time ----------------------------------------------------------------------
def test_cloze_candidates_batched_equals_single(wp):
    model, tok = wp
    texts = [
        f"why are police off ##icers so {tok.mask_token} ?",
        f"why are {tok.mask_token} so {tok.mask_token} ?",
        f"what makes police so {tok.mask_token} ?",
    ]
    cands = ["strict", "kind", "developers", "estate"]  # "developers" has two pieces
    assert len(tok("developers", add_special_tokens=False)["input_ids"]) == 2
    batched = scoring.cloze_candidate_logprobs(model, tok, texts, cands, batch_size=8)
    single = np.vstack([scoring.cloze_candidate_logprobs(model, tok, [t], cands, batch_size=1) for t in texts])
    assert np.abs(batched - single).max() <= 1e-5
    # a one-piece candidate at the last mask equals the full-vocabulary log-softmax there
    lp = scoring.mask_logprobs(model, tok, texts)
    sid = tok.convert_tokens_to_ids("strict")
    assert np.allclose(batched[:, 0], lp[:, sid], atol=1e-5)
    # two-piece candidate by hand: both masks present, piece i scored at mask i
    ids = tok(texts[2])["input_ids"]
    pos = ids.index(tok.mask_token_id)
    two = ids[:pos] + [tok.mask_token_id] * 2 + ids[pos + 1 :]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([two])).logits[0].log_softmax(-1)
    pieces = tok("developers", add_special_tokens=False)["input_ids"]
    assert batched[2, 2] == pytest.approx(float(logits[pos, pieces[0]] + logits[pos + 1, pieces[1]]), abs=1e-5)


def test_mask_topk_and_top_k_bound(wp):
    model, tok = wp
    texts = [f"why are police so {tok.mask_token} ?", f"what makes police so {tok.mask_token} ?"]
    top = scoring.mask_topk(model, tok, texts, 5)
    lp = scoring.mask_logprobs(model, tok, texts)
    for row, t in zip(lp, top, strict=True):
        assert [i for i, _, _ in t] == list(np.argsort(-row, kind="stable")[:5])
    single = [scoring.mask_topk(model, tok, [t], 5, batch_size=1)[0] for t in texts]
    assert [[i for i, _, _ in x] for x in single] == [[i for i, _, _ in x] for x in top]
    with pytest.raises(ValueError, match="'top_k'"):
        scoring.mask_topk(model, tok, texts, len(VOCAB) + 1)
    ranked = scoring.candidate_topk(np.array([[0.1, 0.3, 0.3]]), ["a", "b", "c"], 2)
    assert [w for w, _ in ranked[0]] == ["b", "c"]
    with pytest.raises(ValueError, match="'top_k'"):
        scoring.candidate_topk(np.zeros((1, 3)), ["a", "b", "c"], 4)


# 6. BPE prior lookup: the prior uses the same token id as the posterior -------------------------------------------
def test_bpe_prior_uses_same_id():
    from mlmc.chapters import stereotypes as drv

    vocab = {
        "<s>": 0,
        "<pad>": 1,
        "</s>": 2,
        "<unk>": 3,
        "<mask>": 4,
        "why": 5,
        "Ġare": 6,
        "Ġso": 7,
        "Ġstrict": 8,
        "Ġ?": 9,
        "Ġcops": 10,
        "Ġkind": 11,
    }
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        cls_token="<s>",
        sep_token="</s>",
    )
    assert tok.convert_tokens_to_ids("strict") == tok.unk_token_id  # the released code's lookup would hit <unk>

    class Fixed(torch.nn.Module):
        """Logits that depend on whether the group is masked: post favours Ġstrict, prior favours Ġkind."""

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.config = type("C", (), {"vocab_size": len(vocab)})()

        def forward(self, input_ids, attention_mask=None):
            logits = torch.zeros(*input_ids.shape, len(vocab))
            masked_group = (input_ids == 4).sum(1) > 1
            logits[..., 8] = torch.where(masked_group, 1.0, 3.0)[:, None]
            logits[..., 11] = 2.0
            return type("O", (), {"logits": logits})()

    probes = drv.Probes(
        texts={"q": ["why Ġare Ġcops Ġso [MASK] Ġ?"]}, priors={"q": ["why Ġare [MASK] Ġso [MASK] Ġ?"]}, candidates=None
    )
    out = drv.probe(Fixed(), tok, probes, top_k=2, profile_k=1)
    assert out["raw"]["q"][:2] == ["ġstrict", "ġkind"] or out["raw"]["q"][0].endswith("strict")
    # typicality: strict = 3 - 1 = 2 (relative), kind = 2 - 2 = 0 -> strict stays first
    assert out["reranked"]["q"][0].endswith("strict")


# 7. RSA ----------------------------------------------------------------------------------------------------------
def test_rsa_properties():
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 60, size=(6, 10))
    rho, n_nan = st.rsa_spearman(a, a)
    assert rho == pytest.approx(1.0) and n_nan == 0
    assert st.rsa_spearman(a, a * 3.0)[0] == pytest.approx(1.0)
    b = rng.uniform(0, 60, size=(6, 10))
    perm = rng.permutation(6)
    assert st.rsa_spearman(a[perm], b[perm])[0] == pytest.approx(st.rsa_spearman(a, b)[0])
    c = b.copy()
    c[2] = 0.0  # an all-zero profile: its similarity row is constant -> NaN, skipped
    rho_c, n_nan_c = st.rsa_spearman(a, c)
    assert n_nan_c >= 1 and np.isfinite(rho_c)
    pre = pd.DataFrame(a, index=list("abcdef"))
    d = st.delta_rho(pre, pre, {"x": list("abc"), "y": list("def")})
    assert np.allclose(d.to_numpy(), 0.0)
    assert (st.delta_rho(pre, pd.DataFrame(b, index=list("abcdef")), {"x": list("abcdef")}) < 0).all()


# 9. autocomplete parsing and stereotype-set construction --------------------------------------------------------
def test_parse_autocomplete():
    assert st.parse_autocomplete("why are {g} so", "asian parents", "why are asian parents so strict") == "strict"
    assert st.parse_autocomplete("why are {g} so", "asian parents", "why are parents so strict") is None
    assert st.parse_autocomplete("why are {g} so", "russians", "why is russians so strict") is None
    got = st.parse_autocomplete("why are {g} so", "russians", "why are russians so good at chess")
    assert got == "good at chess"
    assert st.completion_filter(got, ["strict"]) == "multi-word"
    assert st.completion_filter("christians", ["strict"]) == "not an attribute"  # whole words, not substrings
    assert st.completion_filter("called", ["called"], neutral=["called"]) == "neutral"


def test_build_stereotype_set_labels_multiple_engines():
    rec = pd.DataFrame(
        {
            "template": ["why are {g} so"] * 4,
            "target_category": ["profession"] * 4,
            "target_group": ["nurses"] * 4,
            "suggestion": [
                "why are nurses so kind",
                "why are nurses so kind",
                "why are nurses so good at math",
                "why are nurses so rude",
            ],
            "search_engine": ["google", "yahoo", "google", "duckduckgo"],
        }
    )
    data, log = st.build_stereotype_set(rec, ["kind", "rude"])
    assert list(data.columns) == list(st.DATASET_COLUMNS)
    assert data.set_index("completion").search_engine.to_dict() == {"kind": "multiple", "rude": "duckduckgo"}
    assert log.reason.tolist() == ["kept", "kept", "multi-word", "kept"]


def test_world_autocomplete_recovers_planted():
    w = World(seed=0)
    truth = w.stereotype_truth(["en"])
    rec = nf.autocomplete_records(truth, seed=0)
    data, log = st.build_stereotype_set(
        rec, nf.adjective_vocabulary(), neutral=nf.NEUTRAL_COMPLETIONS, trend=nf.TREND_COMPLETIONS
    )
    assert set(log.reason) >= {"kept", "multi-word", "neutral", "trend", "not an attribute", "no match"}
    planted = truth.groupby("group").attribute.apply(set)
    share = np.mean([c in planted[g] for g, c in zip(data.target_group, data.completion, strict=True)])
    assert share > 0.5  # mostly planted, some noise
    assert set(data.target_group) == {g for gs in GROUPS.values() for g in gs}


def test_news_corpus_plants_slant():
    w = World(seed=0)
    targets = ["men", "nurses"]
    texts = nf.news_corpus(w, "en", "hostile", targets, n=400, seed=0)
    assert len(texts) == 400 and texts == nf.news_corpus(w, "en", "hostile", targets, n=400, seed=0)
    pool = {w.word("en", a) for a in nf.slant_pool("hostile")}
    tgt = {w.word("en", g) for g in targets}
    about_t = [t.split() for t in texts if set(t.split()) & tgt]
    assert about_t and all(set(s) & pool for s in about_t)
    assert set(nf.slant_pool("neutral")) == {a for a, lab in ATTRIBUTES.items() if not lab}
    with pytest.raises(ValueError, match="'targets'"):
        nf.news_corpus(w, "en", "hostile", ["martians"])


def test_fraction_subset():
    texts = [str(i) for i in range(10)]
    assert st.fraction_subset(texts, 0.25) == texts[: math.ceil(2.5)]
    assert len(st.fraction_subset(texts, 1.0)) == 10
    with pytest.raises(ValueError, match="'fractions'"):
        st.fraction_subset(texts, 0.0)


def test_attribute_shift():
    out = st.attribute_shift(["a", "b", "c", "a"], ["c", "d"])
    assert out == {"removed": ["a", "b"], "added": ["d"], "persisted": ["c"]}


# loader: the released dataset format ---------------------------------------------------------------------------
def _write_released(path: Path) -> None:
    rows = [
        ("why are academics so\n", "profession", "academics\n", "Liberal\n", "duckduckgo"),
        ("why is russia so\n", "country", "Russia\n", "cold\n", "multiple"),
    ]
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("input\ttarget_category\ttarget_group\tcompletion\tsearch_engine\n")
        for r in rows:
            fh.write("\t".join(f'"{x}"' for x in r) + "\n")


def test_load_stereo_dataset_written(tmp_path):
    p = tmp_path / "single_word_stereo_dataset.csv"
    _write_released(p)
    df = st.load_stereo_dataset(p)
    assert df.input.tolist() == ["why are academics so", "why is russia so"]
    assert df.completion.tolist() == ["liberal", "cold"] and df.target_group.tolist() == ["academics", "russia"]
    assert len(st.load_stereo_dataset(p, categories=["country"])) == 1
    with pytest.raises(ValueError, match="'categories'"):
        st.load_stereo_dataset(p, categories=["hobby"])
    with pytest.raises(ValueError, match="stereo_dataset_path"):
        st.load_stereo_dataset(tmp_path / "missing.csv")


@pytest.mark.shared_data
def test_load_stereo_dataset_released():
    root = _shared_data()
    if root is None:
        pytest.skip("shared stereotype data absent")
    full = st.load_stereo_dataset(root / "stereotypes_in_lms" / "stereo_dataset.csv")
    single = st.load_stereo_dataset(root / "stereotypes_in_lms" / "single_word_stereo_dataset.csv")
    assert len(full) == 2099 and full.target_group.nunique() == 274
    assert len(single) == 1886 and single.input.nunique() == 410
    assert (
        full.search_engine.value_counts()[["multiple", "google", "yahoo", "duckduckgo"]] == [998, 560, 342, 199]
    ).all()
    assert "sexuality" not in set(full.target_category)
    groups = {g.lower() for gs in st.load_social_groups().values() for g in gs}
    # one spelling differs between the code's group list and the data: "millenials" vs "millennials"
    assert set(full.target_group) - groups == {"millennials"}
    counts = full.target_category.value_counts()
    assert counts["profession"] == 713 and counts["religion"] == 36
    # every single-word completion is one word and re-parses from its query
    assert all(len(c.split()) == 1 for c in single.completion)
    emo = json.loads(next((root / "stereotypes_in_lms" / "aggregate_emotion_scores").glob("*.json")).read_text())
    assert isinstance(emo, dict) and emo
