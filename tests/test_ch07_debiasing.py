"""Chapter 07 (cross-lingual debiasing): world generators, driver helpers, planted checks, parameters, smoke run."""

from __future__ import annotations

import os
import time
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest

from mlmc import debias as db
from mlmc import evidence as ev
from mlmc.book import ChapterFailed, run_chapter
from mlmc.chapters import debiasing as dx
from mlmc.world import ATTRIBUTES, GROUPS, World

ROOT = Path(__file__).resolve().parents[1]


def _shared_data() -> Path | None:
    env = os.environ.get("MLMC_SHARED_DATA")
    for cand in [Path(env)] if env else [ROOT.parent / "shared" / "data", ROOT.parents[1] / "shared" / "data"]:
        if cand.is_dir():
            return cand
    return None


@pytest.fixture(scope="module")
def world():
    return World(seed=0)


# --- world generators (added for ch. 07) ----------------------------------------------------------------------------
def test_crows_pairs_differ_only_in_the_group_and_unplanted_control_is_unplanted(world):
    truth = world.stereotype_truth(["en"])
    planted = truth.groupby("group")["attribute"].apply(set).to_dict()
    un = world.crows_pairs_unplanted("en", 60, seed=1).to_pandas()
    for r in un.itertuples():
        assert r.attribute not in planted[r.group_more] | planted[r.group_less]
        a, b = r.sent_more.split(), r.sent_less.split()
        assert len(a) == len(b) and sum(x != y for x, y in zip(a, b, strict=True)) == 1
    pl = world.crows_pairs("en", 60, seed=1).to_pandas()
    assert all(r.attribute in planted[r.group_more] for r in pl.itertuples())


def test_parallel_sentences_are_aligned_and_deterministic(world):
    ds = world.parallel_sentences(["en", "fr"], 20, seed=3).to_pandas()
    assert (ds.groupby("cid").lang.nunique() == 2).all()
    en, fr = ds[ds.lang == "en"].set_index("cid").text, ds[ds.lang == "fr"].set_index("cid").text
    assert all(len(en[c].split()) > 0 and len(fr[c].split()) > 0 for c in en.index)
    assert ds.equals(world.parallel_sentences(["en", "fr"], 20, seed=3).to_pandas())
    assert not ds.equals(world.parallel_sentences(["en", "fr"], 20, seed=4).to_pandas())


def test_curated_text_is_balanced_and_preference_pairs_follow_the_plants(world):
    cur = world.curated_statements("en", 3000).to_pandas()
    assert set(cur.attribute) == set(ATTRIBUTES)  # every attribute, toxic ones included (PANDA is not detox data)
    clean = world.curated_statements("en", 300, exclude_toxic=True).to_pandas()
    assert not set(clean.attribute) & set(world.toxic_attributes())
    counts = cur[cur.bias_type == "gender"].group.value_counts(normalize=True)
    assert (counts - 1 / 6).abs().max() < 0.05  # groups of a category equally often
    truth = world.stereotype_truth(["en"]).groupby("group")["attribute"].apply(set).to_dict()
    bias = world.preference_pairs("en", 40, kind="bias").to_pandas()
    forms = {world.word("en", a): a for a in ATTRIBUTES}
    for r in bias.itertuples():
        assert forms[r.rejected.split()[0]] in truth[r.group]
        assert not any(forms.get(r.chosen.split()[0]) in truth[g] for g in GROUPS[r.bias_type])
    tox = world.preference_pairs("fr", 40, kind="toxicity").to_pandas()
    toxic_forms = {world.word("fr", a) for a in world.toxic_attributes()}
    assert all(
        r.rejected.split()[0] in toxic_forms and r.chosen.split()[0] not in toxic_forms for r in tox.itertuples()
    )
    p, c = world.statement_prompt("de", "muslims", "kind")
    assert f"{p} {c}" == world.statement("de", "muslims", "kind")


# --- driver helpers -------------------------------------------------------------------------------------------------
def test_attribute_tuples_use_surface_forms(world):
    text = world.parallel_sentences(["fr"], 300, p_group=1.0).to_pandas().text.tolist()
    for bt in ("gender", "religion"):
        tuples = dx.attribute_tuples(world, "fr", bt)
        assert db.counterfactual_examples(text, tuples), bt  # the forms occur in the world's sentences
    gender = dx.attribute_tuples(world, "en", "gender")
    assert len(gender) == 3 and all(len(t) == 2 for t in gender)
    texts, y = dx.inlp_data(text, dx.attribute_tuples(world, "fr", "gender"), "gender")
    assert set(np.unique(y)) <= {0, 1, 2} and len(texts) == len(y)


def test_parallel_and_text_loaders_on_written_files(tmp_path, world):
    for x, lines in {"en": ["a b", "c d", "e f"] * 4, "fr": ["A B", "C D", "E F"] * 4}.items():
        (tmp_path / f"{x}.txt").write_text("\n".join(lines) + "\n")
    par = dx.parallel_data(world, ["en", "fr"], 12, seed=0, parallel_dir=str(tmp_path))
    assert sum(len(v["en"]) for v in par.values()) == 12
    for split in par.values():
        assert [s.lower() for s in split["fr"]] == split["en"]  # alignment kept through the split
    assert dx.debias_texts(world, "fr", 2, 0, text_dir=str(tmp_path)) == ["a b", "c d"]
    (tmp_path / "de.txt").write_text("x\n")
    (tmp_path / "nl.txt").write_text("x\ny\n")
    with pytest.raises(ValueError, match="not line-aligned"):
        dx.parallel_data(world, ["de", "nl"], 5, seed=0, parallel_dir=str(tmp_path))


def test_real_crows_and_attribute_words_on_written_files(tmp_path, world):
    df = pd.DataFrame(
        {
            "sent_more": ["He is x.", "She is y."],
            "sent_less": ["She is x.", "He is y."],
            "stereo_antistereo": ["stereo", "antistereo"],
            "bias_type": ["gender", "religion"],
        }
    )
    df.to_csv(tmp_path / "crows_pairs_anonymized_en_s0.csv")
    (tmp_path / "bias_attribute_words.json").write_text('{"gender": [["he", "she"]], "race": [["a", "b", "c"]]}')
    got = dx.real_crows(str(tmp_path), ["en"], ["gender"], 1)
    assert len(got) == 1 and got.kind.iloc[0] == "real"
    assert dx.attribute_tuples(world, "en", "race-color", str(tmp_path)) == [("a", "b", "c")]
    with pytest.raises(ValueError, match="parameter 'bias_types'"):
        dx.real_crows(str(tmp_path), ["en"], ["age"], 1)


@pytest.mark.shared_data
def test_real_crows_loader_on_shared_data(world):
    shared = _shared_data()
    if shared is None:
        pytest.skip("real-data samples (../shared/data) not found")
    folder = shared / "crows_multilingual"
    df = dx.real_crows(str(folder), ["en", "fr", "de", "nl"], ["gender", "race-color", "religion"], 3)
    assert (df.groupby(["lang", "sample", "bias_type"]).size() == 40).all()
    for lang in ("en", "fr", "de", "nl"):
        for bt in ("gender", "race-color", "religion"):
            assert dx.attribute_tuples(world, lang, bt, str(folder))
    assert db.significance_threshold(int(df.groupby(["lang", "sample", "bias_type"]).size().iloc[0])) == 12.5


# --- planted checks: controls fail, verdicts are jitter-stable ------------------------------------------------------
@pytest.fixture
def cell_scores():
    rng = np.random.default_rng(0)
    planted = 30 + 8 * rng.standard_normal(12)
    unplanted = np.abs(4 * rng.standard_normal(12))
    return planted, unplanted


def test_planted_checks_pass_on_planted_and_controls_fail(cell_scores):
    planted, unplanted = cell_scores
    checks = dx.planted_checks(planted, unplanted, 12.5, asserted=True)
    assert [c.verdict for c in checks] == ["pass", "pass"]
    assert all(ev.control_fails(c) for c in checks)
    swapped = dx.planted_checks(unplanted, planted, 12.5, asserted=True)  # the control's outputs in its place
    assert not swapped[0].passed and not swapped[1].passed
    ev.assert_checks(checks)


def test_check_verdicts_are_jitter_stable(cell_scores):
    planted, unplanted = cell_scores
    assert ev.jitter_stable(lambda a, b: dx.planted_checks(a, b, 12.5, asserted=True), planted, unplanted)
    rng = np.random.default_rng(1)
    ae, rnd = 13 + rng.standard_normal(27), 13 + rng.standard_normal(27)
    lat, base, org = ae - 2 + 0.5 * rng.standard_normal(27), 25 + rng.standard_normal(27), 24 + rng.standard_normal(27)
    fn = lambda *a: dx.transfer_checks("SentDebias", *a)  # noqa: E731
    assert ev.jitter_stable(fn, lat, ae, rnd, base, org)
    checks = fn(lat, ae, rnd, base, org)
    assert checks[0].verdict == "pass" and checks[1].verdict == "pass"
    assert all(ev.control_fails(c) for c in checks)
    assert not fn(ae, ae, rnd, base, org)[0].passed  # the round trip itself does not beat the round trip


# --- parameters and the notebook ------------------------------------------------------------------------------------
@pytest.fixture
def results(tmp_path, monkeypatch):
    monkeypatch.setenv("MLMC_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return tmp_path / "results"


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"bias_types": ["gender", "age"]}, "parameter 'bias_types' has unknown value"),
        ({"langs": ["en", "klingon"]}, "parameter 'langs' has unknown value"),
        ({"sentdebias_k": 65}, "parameter 'sentdebias_k' must be <= "),
    ],
)
def test_bad_parameters_fail_in_the_setup_cell(tmp_path, results, overrides, match):
    start = time.perf_counter()
    with pytest.raises(ChapterFailed, match=match) as info:
        run_chapter("07", profile="smoke", overrides=overrides, out_dir=tmp_path / "out")
    assert info.value.user_error and "cell" in str(info.value)  # one user-error line naming the setup cell
    assert time.perf_counter() - start < 60
    assert not (tmp_path / "out" / "07_debiasing.ipynb").exists()


def test_bad_device_fails_before_the_kernel_starts(tmp_path, results):
    with pytest.raises(ValueError, match="parameter 'device' must be 'cpu', 'cuda'"):
        run_chapter("07", profile="smoke", overrides={"device": "tpu"}, out_dir=tmp_path / "out")
    assert not (tmp_path / "out" / "07_debiasing.ipynb").exists()


def test_check_params_names_the_parameter(world):
    nb = nbformat.read(ROOT / "notebooks" / "07_debiasing.ipynb", as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    params: dict = {}
    exec(cell.source, {}, params)  # noqa: S102 - the notebook's own defaults
    dx.check_params(params, world)
    for bad, match in [
        ({"ae_latent": 65}, "parameter 'ae_latent'"),
        ({"debias_langs": ["de", "ja"]}, "parameter 'debias_langs'"),
        ({"lang_share": {"en": 1.0}}, "parameter 'lang_share'"),
        ({"latent_mode": "both"}, "parameter 'latent_mode'"),
        ({"methods": ["sentdebias", "lea"]}, "parameter 'methods'"),
    ]:
        with pytest.raises(ValueError, match=match):
            dx.check_params({**params, **bad}, world)


def test_smoke_profile_runs_end_to_end(tmp_path, results):
    path = run_chapter("07", profile="smoke", out_dir=tmp_path / "out")
    nb = nbformat.read(path, as_version=4)
    assert not [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    (run_dir,) = (results / "07_debiasing").iterdir()
    tables = {p.stem for p in run_dir.glob("*.csv")}
    assert {
        "base_bias",
        "alignment",
        "table2",
        "grid_bias",
        "finetune",
        "papers_vs_reproduced",
        "planted_checks",
    } <= tables
    t2 = pd.read_csv(run_dir / "table2.csv").set_index("condition")
    assert {"AE round trip", "random latent direction (SentDebias rank)", "SentDebias latent"} <= set(t2.index)
    assert "NLL/token" in t2.columns


def test_transfer_summary_uses_expected_max_toxicity():
    g = pd.DataFrame(
        dict(
            lang=["en"] * 4 + ["fr"] * 2,
            group=["a", "a", "b", "b", "a", "a"],
            toxic=[0, 1, 0.2, 0.1, 0, 0],
            consistency=[1, 0.5, 1, 1, 1, 1],
            distinct1=1.0,
        )
    )
    s = dx.transfer_summary(g)
    assert s.loc["en", "EMT"] == pytest.approx(0.6) and s.loc["fr", "EMT"] == 0
    assert s.loc["en", "toxicity rate"] == pytest.approx(0.325) and s.loc["en", "consistency"] == pytest.approx(0.875)
