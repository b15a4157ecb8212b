"""Chapter 06: persona world and Bayes reader, the tiny-icl-llama build, the driver and the notebook (spec ch. 8 §8)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest

from mlmc import alignment as al
from mlmc import evidence as ev
from mlmc import personas, scoring, zoo
from mlmc.book import ChapterFailed, run_chapter
from mlmc.chapters import self_alignment as sa
from mlmc.world import VALUE_ITEMS, World

LANGS = ["en", "de", "tr"]


@pytest.fixture(scope="module")
def setup():
    world = World(seed=0)
    items = sa.majority(sa.world_items(world, LANGS))
    pw = sa.persona_world(world, items, LANGS, "en", rho=0.8, home_share=0.4, anchor_share=0.4)
    pre = sa.pretrain_icl(pw, 200, 20, 5, 6, seed=0, train=False)
    return world, items, pw, pre


def test_world_items_and_majority_strings(setup):
    _, items, _, _ = setup
    assert set(items.columns) >= {"lang", "qid", "category", "template", "opt1", "opt2", "target_p1", "maj"}
    assert items.category.str.contains("values").any()  # WVS-7 sections, shared with chapter 05
    assert len(items) == len(LANGS) * len(VALUE_ITEMS)
    assert (items.template.str.count(r"\[MASK\]") == 1).all()
    want = np.where(items.target_p1 >= 0.5, items.opt1, items.opt2)
    assert (items.maj == want).all()
    with pytest.raises(ValueError, match="human target"):
        sa.majority(items.assign(target_p1=np.nan))


def test_copula_marginals_are_the_planted_shares(setup):
    _, items, pw, _ = setup
    p = (pw._p1 * pw._w_eta).sum(-1)  # quadrature over eta, per item x country
    wide = items.pivot(index="qid", columns="lang", values="target_p1").loc[pw.qids, pw.countries]
    assert np.abs(p - wide.to_numpy()).max() < 2e-3
    docs = pw.sample_documents(3000, np.random.default_rng(0), langs=["tr"], max_pairs=len(pw.qids))
    hits = {}
    for d in docs.itertuples():
        for q, a in zip(d.qids, d.answers, strict=True):
            hits.setdefault(q, []).append(a == 1)
    emp = pd.Series({q: np.mean(v) for q, v in hits.items()})
    assert np.abs(emp - pw.marginal("tr").loc[emp.index]).max() < 0.04


def test_predictive_without_demos_is_the_prior_mixture(setup):
    _, _, pw, _ = setup
    marg = pw.marginal("de")
    for q in pw.qids[:5]:
        assert pw.predictive("de", [], q) == pytest.approx(marg[q], abs=1e-12)
    prior = personas.language_prior(["en", "de", "tr"], "en", 0.4, 0.4)
    assert np.allclose(prior.sum(axis=1), 1)
    assert prior.loc["de", "de"] == pytest.approx(0.5 / 1.1) and prior.loc["de", "tr"] == pytest.approx(0.1 / 1.1)
    assert prior.loc["en", "en"] == pytest.approx(0.9 / 1.1)


def test_single_country_without_associations_ignores_demos(setup):
    _, items, pw, _ = setup
    one = items[items.lang == "tr"]
    flat = personas.PersonaWorld(one, pw.loadings, personas.language_prior(["tr"], "tr"), rho=0.0)
    demos = [(q, 1) for q in flat.qids[1:6]]
    assert flat.predictive("tr", demos, flat.qids[0]) == pytest.approx(flat.predictive("tr", [], flat.qids[0]))
    assert pw.predictive("tr", demos, pw.qids[0]) != pytest.approx(pw.predictive("tr", [], pw.qids[0]))


def test_bayes_lm_logits_reproduce_the_predictive(setup):
    _, items, pw, pre = setup
    lm = personas.BayesPersonaLM(pw, pre.tokenizer)
    prompts = sa.prompts_for(items[items.lang == "de"], ["zero_shot", "chrf"], 3, [0])
    for r in prompts.head(6).itertuples():
        lp = scoring.completion_logprobs(lm, pre.tokenizer, [r.text_a, r.text_a], [r.opt1, r.opt2])
        demos = [(q, int(items[(items.lang == "de") & (items.qid == q)].maj_idx.iloc[0])) for q in r.demos]
        p = pw.predictive("de", demos, r.qid)
        assert np.exp(lp) == pytest.approx([p, 1 - p], abs=1e-6)


def test_generations_parse_and_match_the_scores(setup):
    _, items, pw, pre = setup
    lm = personas.BayesPersonaLM(pw, pre.tokenizer)
    prompts = sa.prompts_for(items[items.lang == "tr"], ["zero_shot"], 3, [0])
    scored = sa.score_prompts(lm, pre.tokenizer, prompts, 1.0, 32)
    gen = sa.generated_deltas(lm, pre.tokenizer, prompts, 100, 1.0, 3, seed=0)
    assert gen.invalid.max() == 0 and (gen.example.str.split().str.len() == 1).all()
    assert np.abs(gen.d_gen.to_numpy() - scored.d_exp.to_numpy()).mean() < 5


def test_oracle_self_alignment_beats_the_reader_without_associations(setup):
    _, items, pw, pre = setup
    prompts = sa.prompts_for(items, ["zero_shot", "chrf"], 5, [0, 1])
    out = []
    for name, model, tok, _ in sa.readers(["bayes", "prior-only"], pw, pre, "cpu"):
        out.append(sa.sample_deltas(sa.score_prompts(model, tok, prompts, 0.3, 64), 10).assign(model=name))
    pairs = sa.paired(pd.concat(out, ignore_index=True))
    t = al.outcome_table(pairs, ["model"])
    assert t.loc["bayes", "+"] >= 60
    assert sa.improvement(pairs, "bayes").mean() > sa.improvement(pairs, "prior-only").mean() + 10
    # the reader without associations scores zero-shot and self-alignment prompts identically
    x = pairs[pairs.model == "prior-only"]
    assert np.allclose(x.e_zs, x.e_sa)


def test_prompts_never_leak_and_k_is_checked(setup):
    _, items, _, _ = setup
    prompts = sa.prompts_for(items, ["random", "random_cat", "chrf_cat", "chrf", "chrf_shuffled"], 5, [0, 1])
    assert not any(r.qid in r.demos for r in prompts.itertuples())
    assert (prompts[prompts.condition.isin(["random", "chrf"])].n_demos == 5).all()
    with pytest.raises(ValueError, match="larger than the demonstration pool"):
        sa.prompts_for(items, ["random"], len(VALUE_ITEMS), [0])


def _params(**over):
    p = dict(
        seed=0,
        device="cpu",
        data_source="world",
        probes_dir=None,
        langs=["en", "de"],
        anchor="en",
        models=["bayes"],
        strategies=["chrf"],
        k=5,
        seeds=[0],
        n_samples=10,
        temperature=0.3,
        rho=0.8,
        home_share=0.4,
        anchor_share=0.4,
        n_docs=10,
        n_heldout=5,
        pretrain_steps=1,
        max_pairs=3,
        batch_size=8,
        max_new_tokens=2,
    )
    return p | over


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"strategies": ["best"]}, "parameter 'strategies' must be one of"),
        ({"langs": ["en", "klingon"]}, "parameter 'langs' has unknown value"),
        ({"k": 18}, "parameter 'k' .* larger than the demonstration pool"),
        ({"models": ["gpt2"]}, "parameter 'models' holds"),
        ({"anchor": "fr"}, "parameter 'anchor' must be one of"),
        ({"device": "tpu"}, "device"),
        ({"data_source": "probes"}, "parameter 'probes_dir'"),
    ],
)
def test_check_params_rejects_bad_values(over, match):
    with pytest.raises(ValueError, match=match):
        sa.check_params(_params(**over), World(seed=0).languages, n_items=len(VALUE_ITEMS))


def test_planted_checks_are_jitter_stable_and_controls_fail():
    rng = np.random.default_rng(0)
    oracle, lm, control = rng.normal(25, 20, 80), rng.normal(8, 20, 80), rng.normal(3, 20, 80)
    gain, zero = rng.normal(0.05, 0.3, 300), rng.normal(-0.01, 0.3, 100)
    checks = sa.planted_checks(oracle, lm, control, gain, zero, asserted=True)
    assert [c.verdict for c in checks][0] == "pass"
    assert all(ev.control_fails(c) for c in checks)
    assert ev.jitter_stable(
        lambda a, b, c, d, e: sa.planted_checks(a, b, c, d, e, True), oracle, lm, control, gain, zero
    )
    # a measured sample equal to the control does not pass
    same = sa.planted_checks(control, control, control, zero, zero, asserted=True)
    assert not any(c.verdict == "pass" for c in same)


def test_icl_zoo_build_is_cached_and_answer_only(tmp_path, setup):
    _, _, pw, _ = setup
    docs = list(pw.sample_documents(40, np.random.default_rng(0), max_pairs=3).text)
    entry = zoo.icl_path("tiny-icl-llama", docs, docs[:5], cache_dir=tmp_path, progress=False, steps=2)
    assert zoo.is_valid(entry)
    stamp = (entry / "done.json").stat().st_mtime
    again = zoo.icl_path("tiny-icl-llama", docs, docs[:5], cache_dir=tmp_path, progress=False, steps=2)
    assert again == entry and (entry / "done.json").stat().st_mtime == stamp
    rep = zoo.report(entry)
    assert rep["heldout_answer_nll"] > 0 and rep["objective"].startswith("answer tokens")
    tok = zoo.train_word_tokenizer(docs)
    ids = [tok.bos_token_id, *tok(docs[0], add_special_tokens=False)["input_ids"]]
    labels = zoo._answer_labels(ids, tok.convert_tokens_to_ids("A:"))
    n_answers = docs[0].count("\nA: ")
    assert sum(x != -100 for x in labels) == n_answers
    with pytest.raises(ValueError, match="unknown recipe override"):
        zoo.icl_path("tiny-icl-llama", docs, cache_dir=tmp_path, stepz=2)


def test_real_items_attach_country_targets(tmp_path):
    probes = tmp_path / "probes" / "wvs"
    probes.mkdir(parents=True)
    rows = [
        "\t0\t1\t2\t3",
        "0\t1\tFamily is [MASK] to me.\tsehr wichtig\tunwichtig",
        "1\t165\tGott ist [MASK].\twichtig\tunwichtig",
        "2\t199\tPolitik ist [MASK].\tinteressant\tlangweilig",
    ]
    (probes / "de.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (tmp_path / "agg.csv").write_text("country,qid,p_opt1\nDEU,Q1,0.9\nDEU,Q165,0.3\nUSA,Q199,0.6\n")
    items = sa.majority(sa.real_items(str(tmp_path), ["de"], str(tmp_path / "agg.csv")))
    assert list(items.qid) == ["Q1", "Q165"]  # Q199 has no German target
    assert list(items.maj) == ["sehr wichtig", "unwichtig"]


@pytest.mark.shared_data
def test_real_probe_loader_on_shared_data(shared_data, tmp_path):
    path = shared_data / "value_probing" / "probes.zip"
    if not path.exists():
        pytest.skip("shared value_probing data absent")
    (tmp_path / "agg.csv").write_text("country,qid,p_opt1\nDEU,Q1,0.9\nROU,Q1,0.2\n")
    items = sa.majority(sa.real_items(str(path), ["de", "ro"], str(tmp_path / "agg.csv")))
    assert len(items) == 2 and set(items.lang) == {"de", "ro"}
    assert (items.template.str.count(r"\[MASK\]") == 1).all()


@pytest.fixture
def results(tmp_path, monkeypatch):
    monkeypatch.setenv("MLMC_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return tmp_path / "results"


def _outputs(nb) -> str:
    return "\n".join(
        o.get("text", "") + o.get("data", {}).get("text/plain", "") for c in nb.cells for o in c.get("outputs", [])
    )


def test_smoke_profile_runs_end_to_end(tmp_path, results):
    path = run_chapter("06", profile="smoke", out_dir=tmp_path / "out")
    nb = nbformat.read(path, as_version=4)
    assert not [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    text = _outputs(nb)
    for expected in ["self-alignment prompt", "majority answer", "same direction?", "δ from generations"]:
        assert expected in text, expected
    (run_dir,) = (results / "06_self_alignment").iterdir()
    tables = {p.stem for p in Path(run_dir).glob("*.csv")}
    assert {"items", "deltas", "pairs", "table_8_1", "thesis_vs_reproduced", "icl_curve"} <= tables


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"strategies": ["chrf", "best"]}, "parameter 'strategies' must be one of"),
        ({"k": 30}, "larger than the demonstration pool"),
        ({"langs": ["en", "xx"]}, "parameter 'langs' has unknown value"),
    ],
)
def test_bad_parameters_fail_in_the_setup_cell(tmp_path, results, overrides, match):
    with pytest.raises(ChapterFailed, match=match) as info:
        run_chapter("06", profile="smoke", overrides=overrides, out_dir=tmp_path / "out")
    assert info.value.user_error and "cell" in str(info.value)  # one user-error line naming the setup cell
    assert not (tmp_path / "out" / "06_self_alignment.ipynb").exists()
