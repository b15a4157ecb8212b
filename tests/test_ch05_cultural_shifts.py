"""Tests of chapter 05 (cultural value shifts): parameters, world sources, span scoring, static corruption,
fine-tuning, tracing against an exact computation, planted checks and their controls, thesis numbers."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from mlmc import evidence as ev
from mlmc import influence, reference, train, values, zoo
from mlmc.chapters import cultural_shifts as cs
from mlmc.world import World
from mlmc.world.value_sources import SOURCE_TARGETS, SOURCES, multilingual_value_corpus, value_source_corpus

LANGS = ["de", "fa", "ko"]


@pytest.fixture(scope="module")
def world() -> World:
    return World(seed=0)


@pytest.fixture(scope="module")
def tiny(world):
    """A small freshly trained mT5 (seconds) and its tokenizer, on the world's corpus of three languages."""
    texts = list(world.pretraining_corpus(LANGS, n_per_lang=150)["text"])
    tok = zoo.train_tokenizer(texts, arch="mt5", vocab_size=400)
    model = zoo.init_model(zoo.recipe("tiny-mt5", layers=1, heads=2, hidden_size=32, ffn=64), tok)
    train.pretrain_span(model, tok, texts, steps=30, batch_size=16, lr=5e-3, progress=False)
    return model.eval(), tok


def _params(**kw):
    p = dict(
        seed=0, device="cpu", data_source="world", probes_path="", ft_data_path="", targets_path="",
        test_langs=["de", "fa", "ko"], ft_langs=["fa"], target_langs=["de"], items=[],
        sources=["neutral", "religious_a"], multi_sources=[], trace_sources=[], seeds=[0], n_ft=24, p_planted=0.2,
        p_answer_span=0.5, lr=5e-4, epochs=1, batch_size=8, reduction="sum", proj_dim=32, top_k=3,
    )  # fmt: skip
    return p | kw


# --- parameters -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("override", "name"),
    [
        (dict(test_langs=["de", "fa", "xx"]), "test_langs"),
        (dict(ft_langs=["klingon"]), "ft_langs"),
        (dict(sources=["neutral", "reddit"]), "sources"),
        (dict(sources=["religious_a"]), "sources"),
        (dict(items=["Q6", "Q999"]), "items"),
        (dict(device="tpu"), "device"),
        (dict(target_langs=["ru"]), "target_langs"),
        (dict(reduction="max"), "reduction"),
        (dict(top_k=100), "top_k"),
        (dict(data_source="real", probes_path="/nonexistent"), "probes_path"),
    ],
)
def test_bad_parameters_raise_naming_them(world, override, name):
    with pytest.raises(ValueError, match=name):
        cs.check_params(_params(**override), world)


def test_good_parameters_and_probe_languages(world):
    out = cs.check_params(_params(ft_langs=["fa", "ru"]), world)
    assert out["probe_langs"] == ["de", "fa", "ko", "ru"]
    with pytest.raises(ValueError, match="items"):
        cs.make_probes(world, ["de"], None, ["Q6", "Q7"])
    assert set(cs.make_probes(world, ["de"], None, ["Q6", "Q165"]).qid) == {"Q6", "Q165"}


# --- world sources --------------------------------------------------------------------------------------------------
def test_value_source_corpus_is_parallel_and_planted(world):
    ds = value_source_corpus(world, "religious_a", ["de", "fa"], 200, seed=3).to_pandas()
    de, fa = ds[ds.lang == "de"], ds[ds.lang == "fa"]
    assert list(de.sent_id) == list(fa.sent_id) and list(de.planted_qid) == list(fa.planted_qid)
    planted = de[de.planted_qid != ""]
    assert 0.1 < len(planted) / len(de) < 0.3
    assert set(planted.planted_qid) <= set(SOURCE_TARGETS["religious_a"])
    for r in planted.itertuples():
        assert r.direction == SOURCE_TARGETS["religious_a"][r.planted_qid] and r.option in r.text.split()
    neutral = value_source_corpus(world, "neutral", ["de"], 100).to_pandas()
    assert (neutral.planted_qid == "").all() and (neutral.direction == 0).all()
    again = value_source_corpus(world, "religious_a", ["de", "fa"], 200, seed=3).to_pandas()
    assert again.equals(ds)
    with pytest.raises(ValueError, match="source"):
        value_source_corpus(world, "bible", ["de"], 5)


def test_multilingual_corpus_counts_alignment_shuffle(world):
    ds = multilingual_value_corpus(world, "news", ["fa", "ko", "ru"], 40).to_pandas()
    assert ds.groupby("lang").size().to_dict() == {"fa": 40, "ko": 40, "ru": 40}
    ids = {x: set(g.sent_id) for x, g in ds.groupby("lang")}
    assert ids["fa"] == ids["ko"] == ids["ru"]
    assert list(ds.lang) != sorted(ds.lang)  # shuffled, not blocked by language
    assert ds.equals(multilingual_value_corpus(world, "news", ["fa", "ko", "ru"], 40).to_pandas())
    assert set(SOURCES) == set(SOURCE_TARGETS)


# --- scoring --------------------------------------------------------------------------------------------------------
def _loop_p1(model, tok, probes):
    s0, s1 = tok.convert_tokens_to_ids(["<extra_id_0>", "<extra_id_1>"])
    lps = []
    with torch.no_grad():
        for r in probes.itertuples():
            enc = torch.tensor([tok(r.template.replace(values.MASK, "<extra_id_0>"))["input_ids"]])
            row = []
            for option in (r.opt1, r.opt2):
                pieces = tok(option, add_special_tokens=False)["input_ids"]
                logp = torch.log_softmax(model(input_ids=enc, labels=torch.tensor([[s0, *pieces, s1]])).logits[0], -1)
                row.append(sum(logp[1 + i, p].item() for i, p in enumerate(pieces)))
            lps.append(row)
    return values.option_probs(np.array(lps))[:, 0]


def test_batched_option_scoring_equals_teacher_forced_loop(world, tiny):
    model, tok = tiny
    probes = values.world_probes(world, LANGS)
    got = cs.profile(model, tok, probes)
    assert np.abs(got.to_numpy() - _loop_p1(model, tok, probes)).max() <= 1e-5
    # batch size and order do not matter; swapping the options gives 1 - p
    small = values.probe_profile(model, tok, probes, batch_size=3)
    assert np.abs(small.to_numpy() - got.to_numpy()).max() <= 1e-6
    rev = probes.iloc[::-1]
    assert np.allclose(cs.profile(model, tok, rev).to_numpy()[::-1], got.to_numpy(), atol=1e-6)
    swapped = probes.rename(columns={"opt1": "opt2", "opt2": "opt1"})
    assert np.allclose(cs.profile(model, tok, swapped).to_numpy(), 1 - got.to_numpy(), atol=1e-6)


# --- static corruption and fine-tuning ------------------------------------------------------------------------------
def test_span_examples_static_and_reassemble(world, tiny):
    _, tok = tiny
    ds = value_source_corpus(world, "religious_a", ["de"], 60)
    ex = cs.span_examples(tok, ds, seed=1, p_answer_span=0.5)
    assert ex == cs.span_examples(tok, ds, seed=1, p_answer_span=0.5)
    sentinel = {tok.convert_tokens_to_ids(f"<extra_id_{k}>"): k for k in range(20)}
    answer_spans = 0
    for e in ex:
        ids = tok(e["text"], add_special_tokens=False)["input_ids"]
        # put the spans back: walk the input, replace sentinel k by the k-th span of the target
        spans, cur = {}, None
        for t in e["labels"][:-1]:
            if t in sentinel:
                cur = sentinel[t]
                spans[cur] = []
            else:
                spans[cur].append(t)
        rebuilt = [p for t in e["input_ids"][:-1] for p in (spans[sentinel[t]] if t in sentinel else [t])]
        assert rebuilt == ids
        if e["option"]:
            opt = tok(e["option"], add_special_tokens=False)["input_ids"]
            answer_spans += e["labels"][1:-2] == opt
    planted = sum(bool(e["option"]) for e in ex)
    assert planted > 0 and 0 < answer_spans <= planted


def test_finetune_is_deterministic_and_moves_weights(world, tiny):
    model, tok = tiny
    ex = cs.span_examples(tok, value_source_corpus(world, "neutral", ["de"], 16), seed=0)
    a, la = cs.finetune(model, ex, lr=1e-3, epochs=1, batch_size=8, seed=0)
    b, lb = cs.finetune(model, ex, lr=1e-3, epochs=1, batch_size=8, seed=0)
    assert la == lb
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert any(not torch.equal(p, q) for p, q in zip(a.parameters(), model.parameters(), strict=True))


def test_load_parallel_text(tmp_path):
    (tmp_path / "religious_a").mkdir()
    (tmp_path / "religious_a" / "fa.txt").write_text("v1\tfa one\nv2\tfa two\nv3\tfa three\n", encoding="utf-8")
    (tmp_path / "religious_a" / "ko.txt").write_text("v2\tko two\nv1\tko one\n", encoding="utf-8")
    ds = cs.load_parallel_text(tmp_path, "religious_a", ["fa", "ko"], 5).to_pandas()
    assert list(ds.sent_id) == ["religious_a-v1", "religious_a-v2"] * 2
    assert list(ds[ds.lang == "ko"].text) == ["ko one", "ko two"]
    with pytest.raises(ValueError, match="ft_data_path"):
        cs.load_parallel_text(tmp_path, "neutral", ["fa"], 5)


# --- tracing: oracle = exact per-example gradients ------------------------------------------------------------------
def _exact_grads(model, packed):
    wrapped = cs.SpanLoss(model)
    out = []
    for x in packed:
        model.zero_grad()
        wrapped(x[None]).backward()
        out.append(torch.cat([p.grad.flatten() for p in model.parameters()]).clone())
    return torch.stack(out)


def test_tracin_equals_exact_gradient_products(world, tiny):
    model, tok = tiny
    model = copy.deepcopy(model)
    ex = cs.span_examples(tok, value_source_corpus(world, "religious_a", ["fa"], 12), seed=0)
    probes = values.world_probes(world, ["fa"]).iloc[:5]
    targets = cs.probe_targets(tok, probes, np.ones(len(probes), dtype=int))
    train_set = [(cs.pack(e["input_ids"], e["labels"]), 0) for e in ex]
    got = influence.tracin(cs.SpanLoss(model), train_set, [(t, 0) for t in targets], normalize="none",
                           loss_fn=cs._loss_output, method="loop", progress=False).total  # fmt: skip
    g_train = _exact_grads(model, [x for x, _ in train_set])
    g_test = _exact_grads(model, targets)
    want = g_test @ g_train.T
    assert torch.allclose(got.float(), want, rtol=1e-4, atol=1e-6)


def test_projected_tracin_tracks_exact_cosines(world):
    """The chapter's setting (zoo model, proj_dim 256) against exact gradient cosines."""
    model, tok = cs.load_model("tiny-mt5", world, "cpu")
    ex = cs.span_examples(tok, value_source_corpus(world, "religious_a", ["fa"], 40), seed=0)
    targets = cs.probe_targets(tok, values.world_probes(world, ["fa"]).iloc[:8], np.ones(8, dtype=int))
    g_train = _exact_grads(model, [cs.pack(e["input_ids"], e["labels"]) for e in ex])
    g_test = _exact_grads(model, targets)
    cos = (g_test @ g_train.T / g_test.norm(dim=1)[:, None] / g_train.norm(dim=1)[None]).numpy()
    proj = cs.trace(model, ex, targets, proj_dim=256, seed=0, device="cpu")
    assert np.corrcoef(proj.ravel(), cos.ravel())[0, 1] > 0.9
    shuffled = np.random.default_rng(0).permutation(proj.ravel())
    assert abs(np.corrcoef(shuffled, cos.ravel())[0, 1]) < 0.3


def test_duplicate_example_is_its_own_top_proponent(world, tiny):
    model, tok = tiny
    ex = cs.span_examples(tok, value_source_corpus(world, "religious_a", ["fa"], 20), seed=0)
    targets = [cs.pack(ex[i]["input_ids"], ex[i]["labels"]) for i in (3, 11)]
    scores = cs.trace(model, ex, targets, proj_dim=512, seed=0, device="cpu")
    assert list(scores.argmax(axis=1)) == [3, 11]


# --- metrics on hand-made shifts ------------------------------------------------------------------------------------
def _toy_shifts():
    rows = []
    for ft in ["fa", "ko"]:
        for lang in ["de", "fa"]:
            for q, changed in [("Q6", ft == "fa"), ("Q1", True), ("Q165", False)]:
                rows.append(dict(setting="mono", source="religious_a", ft_lang=ft, seed=0, lang=lang, qid=q,
                                 changed=changed, category=values.category_of(q)))  # fmt: skip
    return pd.DataFrame(rows)


def test_unchanged_and_unique_shift_tables():
    sh = _toy_shifts()
    t = cs.unchanged_table(sh, ["de", "fa"])
    assert t.loc[("religious_a", "fa"), "de"] == pytest.approx(100 / 3)
    assert t.loc[("religious_a", "ko"), "fa"] == pytest.approx(200 / 3)
    # Q1 flips under both FT languages, Q6 only under fa: half the flipped items are unique
    assert cs.unique_shift_fractions(sh, ["de", "fa"], ["fa", "ko"])["religious_a"] == pytest.approx(0.5)


# --- planted checks: controls fail, verdicts are jitter-stable -------------------------------------------------------
def _synthetic_shift_table(effect: float, seed: int = 0) -> pd.DataFrame:
    """A shift table as :func:`cs.shifts` returns, with targeted items moved by ``effect`` in the FT language."""
    rng = np.random.default_rng(seed)
    rows = []
    for source in ["neutral", "religious_a"]:
        for ft in ["fa", "ko"]:
            for sd in range(3):
                for lang in ["de", "fa", "ko"]:
                    for q in ["Q1", "Q6", "Q165", "Q182", "Q46", "Q61"]:
                        direction = SOURCE_TARGETS[source].get(q, 0)
                        dp = rng.normal(0, 0.02) + (effect if direction and lang == ft else 0.0)
                        dp = -dp if direction == 2 else dp
                        p_pre = 0.5 + (0.15 if q in ("Q1", "Q46") else -0.15)
                        p1 = float(np.clip(p_pre + dp, 0, 1))
                        rows.append(dict(setting="mono", source=source, ft_lang=ft, seed=sd, lang=lang, qid=q,
                                         p1=p1, p_pre=p_pre, dp=p1 - p_pre, direction=direction,
                                         changed=(p1 > 0.5) != (p_pre > 0.5)))  # fmt: skip
    sh = pd.DataFrame(rows)
    sh["signed_dp"] = np.where(sh.direction == 2, -sh.dp, sh.dp)
    return sh


def test_planted_checks_pass_on_planted_and_fail_on_control():
    sh = _synthetic_shift_table(effect=0.25)
    prec = np.array([0.5, 0.4, 0.6, 0.3, 0.5, 0.4, 0.5, 0.6])
    shuffled = np.array([0.0, 0.1, 0.0, 0.0, 0.1, 0.0, 0.0, 0.1])
    checks = cs.planted_checks(sh, prec, 0.05, shuffled, asserted=True)
    verdicts = {c.claim: c.verdict for c in checks}
    assert verdicts["planted data moves targeted items towards the planted option in the FT language"] == "pass"
    assert any("TracIn" in k and v == "pass" for k, v in verdicts.items())
    for c in checks:
        if c.asserted:
            assert ev.control_fails(c), c.claim
    untargeted = next(c for c in checks if c.claim.startswith("untargeted"))
    assert untargeted.kind == "consistency"
    # no planted effect: the FT-language check must not pass
    flat = cs.planted_checks(_synthetic_shift_table(effect=0.0), prec, 0.05, shuffled, asserted=True)
    assert next(c for c in flat if "FT language" in c.claim and "moves" in c.claim).verdict != "pass"


def test_planted_check_verdicts_are_jitter_stable():
    sh = _synthetic_shift_table(effect=0.25)
    prec = np.array([0.5, 0.4, 0.6, 0.3, 0.5, 0.4])
    shuffled = np.array([0.0, 0.1, 0.0, 0.0, 0.1, 0.0])

    def fn(signed_dp, p1, precision, control):
        s = sh.assign(signed_dp=signed_dp, p1=p1, dp=sh.dp + (p1 - sh.p1))
        return cs.planted_checks(s, precision, 0.05, control, asserted=True)

    assert ev.jitter_stable(fn, sh.signed_dp.to_numpy(), sh.p1.to_numpy(), prec, shuffled)


# --- end to end on the zoo model (one source, one language) ---------------------------------------------------------
def test_planted_source_moves_targeted_items_in_ft_language(world):
    model, tok = cs.load_model("tiny-mt5", world, "cpu")
    probes = values.world_probes(world, ["fa", "de"])
    pre = cs.profile(model, tok, probes)
    p = dict(n_ft=160, seed=0, p_planted=0.2)
    out = {}
    for source in ["neutral", "religious_a"]:
        ex = cs.span_examples(tok, cs.corpus_for(world, p, source, ["fa"], 0, False), 0)
        ft, _ = cs.finetune(model, ex, lr=5e-4, epochs=5, batch_size=8, seed=0)
        out[source] = cs.profile(ft, tok, probes) - pre
    targeted = probes.qid.isin(SOURCE_TARGETS["religious_a"]) & (probes.lang == "fa")
    sign = np.where(probes.qid.map(SOURCE_TARGETS["religious_a"]).fillna(1) == 2, -1, 1)
    moved = (out["religious_a"] * sign)[targeted].mean()
    control = (out["neutral"] * sign)[targeted].mean()
    assert moved >= 0.3 and moved > control + 0.2
    unchanged = values.pct_unchanged(values.predictions(pre), values.predictions(pre + out["neutral"]))
    assert unchanged >= 85


# --- thesis numbers -------------------------------------------------------------------------------------------------
def test_thesis_reference_table():
    ref = reference.load("ch7_thesis")
    t73 = ref[(ref.table == "T7.3") & (ref.lang != "avg")].groupby("row").value.mean()
    printed = ref[(ref.table == "T7.3") & (ref.lang == "avg")].set_index("row").value
    assert (t73.round(0) == printed.loc[t73.index]).all()
    assert t73.to_dict() == pytest.approx({"S vs B": 82.15, "S vs L": 80.15, "B vs L": 83.38}, abs=0.01)
    t75 = ref[ref.table == "T7.5"]
    assert len(t75) == 8 * 13 and t75.value.between(-1, 1).all()
    assert (t75[t75.lang == "tl"].value > 0).all()
    assert len(ref[ref.table == "T7.4"]) == 2 * 13
