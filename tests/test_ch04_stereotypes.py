"""Chapter 04 driver and notebook: parameter checks before compute, loaders, controls, smoke run."""

from __future__ import annotations

import json

import nbformat
import numpy as np
import pandas as pd
import pytest
import torch

from mlmc import evidence as ev
from mlmc.book import ChapterFailed, run_chapter
from mlmc.chapters import stereotypes as drv
from mlmc.world import GROUPS

BASE = dict(
    seed=0,
    device="cpu",
    profile="default",
    data_source="world",
    lang="en",
    model_name="tiny-xlmr",
    compare_models=[],
    stereo_dataset_path=None,
    categories=["gender", "religion"],
    target_groups=["men", "muslims"],
    templates=["the {group} is [MASK] ."],
    top_k=10,
    recall_ks=[1, 5],
    prior_template="matched",
    profile_k=5,
    shift_k=5,
    lexicon="world",
    lexicon_path=None,
    exposure_steps=10,
    exposure_texts=100,
    exposure_p_culture=0.6,
    exposure_lr=1e-3,
    salient_prob=0.5,
    news_sources=["hostile"],
    news_path=None,
    news_text_field="text",
    n_news=100,
    p_target=0.5,
    fractions=[0.5, 1.0],
    seeds=[0],
    ft_lr=1e-3,
    ft_batch_size=8,
    ft_salient_prob=0.5,
)


def test_check_params_accepts_defaults():
    out = drv.check_params(BASE)
    assert out["groups"] == {"gender": list(GROUPS["gender"]), "religion": list(GROUPS["religion"])}


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"target_groups": ["men", "martians"]}, "parameter 'target_groups' has unknown value"),
        ({"categories": ["gender", "hobbies"]}, "parameter 'categories' has unknown value"),
        ({"templates": ["the {group} is good ."]}, "parameter 'templates'.*mask token"),
        ({"top_k": 500}, "parameter 'top_k' \\(500\\) exceeds"),
        ({"recall_ks": [1, 20]}, "parameter 'recall_ks'"),
        ({"news_sources": ["fox"]}, "parameter 'news_sources' has unknown value"),
        ({"fractions": [1.0, 0.5]}, "parameter 'fractions'"),
        ({"device": "tpu"}, "parameter 'device'"),
        ({"lexicon": "emolex"}, "parameter 'lexicon'"),
        ({"data_source": "released"}, "parameter 'stereo_dataset_path' is required"),
    ],
)
def test_bad_parameters_one_clear_error(override, match):
    with pytest.raises(ValueError, match=match):
        drv.check_params(BASE | override)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_cuda_without_gpu_fails_before_compute():
    with pytest.raises(ValueError, match="parameter 'device'='cuda' needs a GPU"):
        drv.check_params(BASE | {"device": "cuda"})


def test_released_top_k_bound_uses_the_vocabulary():
    from transformers import AutoTokenizer  # noqa: F401  (the bound is checked against len(tokenizer))

    from mlmc.scoring import check_top_k

    class Tok:
        def __len__(self):
            return 30

    with pytest.raises(ValueError, match="parameter 'top_k' must be <= 30"):
        check_top_k("top_k", 200, Tok())


# --- news loader -------------------------------------------------------------------------------------------------
def test_load_news_formats(tmp_path):
    (tmp_path / "a.txt").write_text("first article\n\nsecond article\nthird\n")
    assert drv.load_news(tmp_path / "a.txt", "any") == ["first article", "second article", "third"]
    rows = [{"text": "x one", "source": "reuters"}, {"text": "y two", "source": "fox"}, {"text": "z", "source": "fox"}]
    (tmp_path / "n.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert drv.load_news(tmp_path / "n.jsonl", "fox") == ["y two", "z"]
    assert drv.load_news(tmp_path / "n.jsonl", "fox", n=1) == ["y two"]
    pd.DataFrame({"publication": ["Reuters", "Breitbart"], "content": ["a b", "c d"]}).to_csv(tmp_path / "atn.csv")
    assert drv.load_news(tmp_path / "atn.csv", "Breitbart", text_field="content") == ["c d"]
    folder = tmp_path / "by_source"
    folder.mkdir()
    (folder / "guardian.txt").write_text("g1\ng2\n")
    assert drv.load_news(folder, "guardian") == ["g1", "g2"]
    with pytest.raises(ValueError, match="news_path"):
        drv.load_news(folder, "reuters")
    with pytest.raises(ValueError, match="news_sources"):
        drv.load_news(tmp_path / "n.jsonl", "breitbart")
    with pytest.raises(ValueError, match="no 'body' field"):
        drv.load_news(tmp_path / "n.jsonl", "fox", text_field="body")


def test_load_news_hf_dataset_id(monkeypatch):
    import datasets

    ds = datasets.Dataset.from_dict({"text": ["a", "b", "c"], "source": ["s", "t", "s"]})
    monkeypatch.setattr(datasets, "load_dataset", lambda name, split: ds if name == "org/news" else None)
    assert drv.load_news("hf:org/news", "s") == ["a", "c"]


# --- controls and checks ---------------------------------------------------------------------------------------
def test_planted_hits_and_shuffled_control():
    ranked = {"a": ["x", "y", "z"], "b": ["p", "q", "r"], "c": ["u", "x", "w"]}
    planted = {"a": ["x", "y"], "b": ["p", "r"], "c": ["w", "k"]}
    assert drv.planted_hits(ranked, planted, 2, shuffle=False).tolist() == [1.0, 0.5, 0.0]
    assert drv.planted_hits(ranked, planted, 3, shuffle=True).tolist() == [0.0, 0.0, 0.5]
    gold = pd.DataFrame({"target_group": ["a", "a", "b", "c"], "completion": ["x", "q", "p", "u"]})
    assert drv.recall_by_group(ranked, gold, 1, shuffle=False).tolist() == [0.5, 1.0, 1.0]


def _probe_check(measured, control):
    return ev.compare(
        "probing recovers planted attributes above a shuffled-group control",
        measured,
        control,
        control_name="shuffled groups",
        threshold=0.1,
        paired=True,
        unit="groups",
    )


def test_probe_check_controls_fail_and_verdicts_are_jitter_stable():
    rng = np.random.default_rng(0)
    measured = np.clip(rng.normal(0.5, 0.15, 24), 0, 1)
    control = np.clip(rng.normal(0.1, 0.1, 24), 0, 1)
    check = _probe_check(measured, control)
    assert check.verdict == "pass" and check.kind == "planted"
    assert ev.control_fails(check)
    assert _probe_check(control, control).verdict != "pass"  # the check evaluated on its control's outputs
    assert ev.jitter_stable(_probe_check, measured, control)


def test_within_spread_is_labelled_consistency():
    shift, spread = np.array([1.0, 2.0, 0.5, 1.5]), np.array([6.0, 5.0, 7.0, 6.5])
    c = ev.compare(
        "stays within 2 sd", shift, spread, control_name="2 x sd", alternative="less", paired=True, kind="consistency"
    )
    assert c.kind == "consistency"


# --- the notebook ------------------------------------------------------------------------------------------------
@pytest.fixture
def results(tmp_path, monkeypatch):
    monkeypatch.setenv("MLMC_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return tmp_path / "results"


def test_bad_parameter_fails_in_the_setup_cell(tmp_path, results):
    with pytest.raises(ChapterFailed, match="parameter 'target_groups' has unknown value") as info:
        run_chapter("04", profile="smoke", overrides={"target_groups": ["martians"]}, out_dir=tmp_path / "out")
    assert info.value.user_error and "cell" in str(info.value)  # one user-error line naming the setup cell
    assert not (tmp_path / "out" / "04_stereotypes.ipynb").exists()


def test_smoke_profile_runs_end_to_end(tmp_path, results):
    path = run_chapter("04", profile="smoke", out_dir=tmp_path / "out")
    # budget 60 s on an idle 2-core machine; the shared test machine is often far busier
    nb = nbformat.read(path, as_version=4)
    assert not [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    (run_dir,) = (results / "04_stereotypes").iterdir()
    tables = {p.stem for p in run_dir.glob("*.csv")}
    assert {"stereotype_set", "recall", "profiles", "slant_shifts", "delta_rho", "planted_checks"} <= tables


def test_full_profile_parameters_validate():
    import yaml

    from mlmc.book.project import project_root

    full = yaml.safe_load((project_root() / "notebooks" / "params" / "full" / "04_stereotypes.yaml").read_text())
    params = BASE | full | {"device": "cpu"}  # the full profile names cuda; no GPU here
    out = drv.check_params(params)
    assert set(out["groups"]) == set(full["categories"])
    assert all(g in [x for gs in out["groups"].values() for x in gs] for g in full["target_groups"])


def test_finetune_uses_the_first_fraction_and_leaves_the_model():
    from mlmc import zoo
    from mlmc.world import World

    texts = list(World(seed=0).pretraining_corpus(langs=["en"], n_per_lang=40)["text"])
    tok = zoo.train_tokenizer(texts, arch="xlmr", vocab_size=200)
    model = zoo.init_model(zoo.recipe("tiny-xlmr", layers=1, heads=2), tok)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ft, n = drv.finetune(model, tok, texts, fraction=0.25, lr=1e-3, batch_size=4, seed=0)
    assert n == 10  # ceil(0.25 * 40)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert any(not torch.equal(before[k], v) for k, v in ft.state_dict().items())
