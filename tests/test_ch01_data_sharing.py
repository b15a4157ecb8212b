"""Chapter 01 (data sharing, thesis ch. 3): the notebook end to end on the smoke profile, parameter validation before
compute, the drivers of mlmc.chapters.data_sharing against independent computations, and (slow) the planted signal."""

from __future__ import annotations

from dataclasses import replace

import nbformat
import numpy as np
import pandas as pd
import pytest
import torch
from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

from mlmc import crossling, zoo
from mlmc import evidence as ev
from mlmc.book import ChapterFailed, run_chapter
from mlmc.chapters import data_sharing as se
from mlmc.world import World

PAWSX = ("de", "en", "es", "fr", "ko")


@pytest.fixture
def results(tmp_path, monkeypatch):
    monkeypatch.setenv("MLMC_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return tmp_path / "results"


# ---- the notebook ----------------------------------------------------------------------------------------------
def test_smoke_profile_runs_end_to_end(tmp_path, results):
    path = run_chapter("01", profile="smoke", out_dir=tmp_path / "out")
    nb = nbformat.read(path, as_version=4)
    assert not [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    (run_dir,) = (results / "01_data_sharing").iterdir()
    tables = {p.stem for p in run_dir.glob("*.csv")}
    expected = {"accuracy", "c_pos_paraphrase", "c_neg_sentiment", "mean_influence_entailment", "reinforcing",
                "controls", "per_epoch_shares", "zero_shot", "imbalance", "k_selection", "thesis_vs_reproduced",
                "planted_checks", "timing"}  # fmt: skip
    assert expected <= tables, expected - tables
    c_pos = pd.read_csv(run_dir / "c_pos_sentiment.csv").set_index("test")
    assert np.allclose(c_pos.sum(axis=1), 100)
    thesis = pd.read_csv(run_dir / "thesis_vs_reproduced.csv")
    assert thesis["this run"].notna().sum() >= 75  # every Table 3.3 cell has a counterpart


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"tasks": ["paraphrase", "mnli"]}, "parameter 'tasks' has unknown value"),
        (
            {"langs": {"paraphrase": ["de", "xx"], "entailment": ["en"], "sentiment": ["en"]}},
            "parameter 'langs\\[paraphrase\\]'",
        ),
        ({"k": 10_000}, "parameter 'k' must be <= the number of training examples"),
        ({"langs": {"paraphrase": [], "entailment": ["en"], "sentiment": ["en"]}}, "needs at least 1 value"),
    ],
)
def test_bad_parameters_fail_in_the_setup_cell(tmp_path, results, overrides, match):
    with pytest.raises(ChapterFailed, match=match) as info:
        run_chapter("01", profile="smoke", overrides=overrides, out_dir=tmp_path / "out")
    assert info.value.user_error and "cell" in str(info.value)  # one user-error line naming the setup cell
    assert not (tmp_path / "out" / "01_data_sharing.ipynb").exists()
    assert not (results / "01_data_sharing").exists()


# ---- validation ------------------------------------------------------------------------------------------------
def plan(**changes) -> se.Plan:
    base = se.Plan(
        model="unused", tasks=("paraphrase", "sentiment"),
        langs={"paraphrase": list(PAWSX), "sentiment": ["de", "en", "es", "fr", "zh"]}, data={}, n_train=10, n_dev=4,
        n_test_pool=6, n_test=2, k=5, lr={"paraphrase": 1e-3, "sentiment": 1e-3}, epochs=2, patience=None,
        batch_size=8, max_length=32, weight_decay=0.01, seeds=(0,), best_epoch={}, trace=se.TraceSpec(),
        focus_task="sentiment", focus_parallel=True, focus_langs=PAWSX, focus_seeds=(0,), zero_shot_langs=("ko",),
        imbalance_langs=("de",), imbalance_p=(50,), k_selection_langs=("en",), k_grid=(2, 4),
    )  # fmt: skip
    return replace(base, **changes)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"tasks": ("paraphrase", "nli")}, "parameter 'tasks'"),
        ({"focus_task": "nli"}, "parameter 'focus_task'"),
        ({"langs": {"paraphrase": ["de", ""], "sentiment": ["en"]}}, "unknown value"),
        ({"langs": {"paraphrase": [], "sentiment": ["en"]}}, "needs at least 1"),
        ({"langs": {"sentiment": ["en"]}}, "parameter 'langs' needs a language list for task 'paraphrase'"),
        ({"k": 51}, "parameter 'k' must be <= the number of training examples \\(50\\)"),
        ({"k": 41}, "parameter 'k' must be <= the number of training examples \\(40\\)"),  # zero-shot: 4 languages
        ({"k_grid": (2, 60)}, "parameter 'k_grid'"),
        ({"zero_shot_langs": ("zh",)}, "parameter 'zero_shot_langs'"),
        ({"n_test": 7}, "parameter 'n_test_per_lang' must be <= 6"),
        ({"n_train": 0}, "parameter 'n_train_per_lang' must be >= 1"),
        ({"n_dev": 0}, "parameter 'n_dev_per_lang' must be >= 1"),
        ({"lr": {"paraphrase": 1e-3}}, "parameter 'lr' needs a learning rate for task 'sentiment'"),
        ({"lr": {"paraphrase": 1e-3, "sentiment": -1.0}}, "parameter 'lr\\[sentiment\\]' must be > 0"),
        ({"best_epoch": {"paraphrase": 3}}, "parameter 'best_epoch\\[paraphrase\\]' must be <= 2"),
        ({"seeds": ()}, "parameter 'seeds'"),
        ({"data": {"mnli": "x"}}, "parameter 'data' has unknown task"),
        ({"trace": se.TraceSpec(params="embeddings")}, "parameter 'grad_params'"),
        ({"device": "tpu"}, "parameter 'device'"),
        ({"n_train_task": {"nli": 100}}, "parameter 'n_train_task'"),
        ({"n_train_task": {"paraphrase": 0}}, "parameter 'n_train_task\\[paraphrase\\]' must be >= 1"),
        (
            {"n_train_task": {"paraphrase": 1}, "k": 6},
            "parameter 'k' must be <= the number of training examples \\(5\\)",
        ),
    ],
)
def test_plan_validation_names_the_parameter(changes, match):
    with pytest.raises(ValueError, match=match):
        plan(**changes).validate(World(0))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu_fails_before_any_other_check():
    with pytest.raises(ValueError, match="parameter 'device'='cuda' needs a GPU"):
        plan(device="cuda", tasks=("nli",)).validate(World(0))


def test_per_task_training_size_overrides_the_default():
    p = plan(n_train_task={"paraphrase": 30}).validate(World(0))
    assert p.n_train_for("paraphrase") == 30 and p.n_train_for("sentiment") == 10
    jobs = {j.name: j for j in p.main_jobs() + p.focus_jobs()}
    assert jobs["main/paraphrase/s0"].n_train == 30 and jobs["main/sentiment/s0"].n_train == 10
    assert jobs["focus/s0"].n_train == 10


def test_real_data_languages_are_checked_against_the_dataset():
    p = plan(data={"paraphrase": "/nowhere"}, langs={"paraphrase": ["de", "ru"], "sentiment": ["en"]})
    with pytest.raises(ValueError, match="parameter 'langs\\[paraphrase\\]' has unknown value\\(s\\) \\['ru'\\]"):
        p.validate(World(0))
    assert plan().validate(World(0)) is not None


# ---- training-set variants -------------------------------------------------------------------------------------
def job(**changes) -> se.Job:
    data = se.DataSpec("sentiment", PAWSX, seed=3, parallel=True)
    base = se.Job("j", data, se.TrainSpec("unused", 1e-3, 1), se.TraceSpec(), n_train=6, n_dev=2, n_test_pool=4,
                  n_test_per_lang=2)  # fmt: skip
    return replace(base, **changes)


def test_training_set_variants_keep_examples_identical():
    base = se._training_set(job()).to_pandas()
    assert len(base) == 30 and base.groupby("lang").size().eq(6).all()
    assert base.groupby("cid")["lang"].nunique().eq(5).all()  # parallel: every content in every language
    zs = se._training_set(job(drop_lang="ko")).to_pandas()
    assert "ko" not in set(zs["lang"]) and zs.merge(base, on=list(base.columns)).shape[0] == 24
    imb = se._training_set(job(extra=("de", 3))).to_pandas()
    assert imb.iloc[:30].equals(base)
    extra = imb.iloc[30:]
    assert list(extra["lang"]) == ["de"] * 3 and not set(extra["cid"]) & set(base["cid"])  # new, untranslated
    drop = tuple(base["uid"].iloc[[0, 7, 29]])
    rm = se._training_set(job(remove_uids=drop)).to_pandas()
    assert len(rm) == 27 and not set(drop) & set(rm["uid"])


# ---- analysis helpers ------------------------------------------------------------------------------------------
def fake_run(name: str, n_test: int = 4, seed: int = 0, test_uids: list[str] | None = None) -> se.RunResult:
    """A traced run with random scores over a small parallel training set of two languages."""
    rng = np.random.default_rng(seed)
    train = pd.DataFrame({"uid": [f"{lg}:c{i}" for lg in "ab" for i in range(6)], "lang": list("a" * 6 + "b" * 6),
                          "cid": [f"c{i}" for _ in "ab" for i in range(6)], "label": [0, 1] * 6})  # fmt: skip
    uids = test_uids or [f"a:t{i}" for i in range(n_test)]
    test = pd.DataFrame({"uid": uids, "lang": [u[0] for u in uids], "cid": [u[2:] for u in uids],
                         "label": [1] * len(uids), "text_a": uids, "text_b": "", "p_label": 0.8})  # fmt: skip
    text = pd.DataFrame({"text_a": train["uid"], "text_b": ""})
    per_epoch = rng.normal(size=(2, len(uids), len(train)))
    return se.RunResult(name, pd.DataFrame(), 2, train, test, per_epoch, None, text, {"a": 0.9, "b": 0.8})


def test_removal_sets_are_unions_of_the_top_k():
    run = fake_run("r")
    total = run.per_epoch.sum(0)
    for kind, order in (("positive", -total), ("negative", total)):
        expected = {run.train_meta["uid"][i] for row in np.argsort(order, axis=1, kind="stable")[:, :3] for i in row}
        assert set(se.removal_sets(run, ["a"], 3, kind)) == expected
    assert se.removal_sets(run, ["b"], 3, "positive") == ()  # no tests in language b
    rand = se.removal_sets(run, ["a"], 3, "random", seed=1)
    assert 3 <= len(rand) <= 12 and rand == se.removal_sets(run, ["a"], 3, "random", seed=1)


def test_confidence_change_is_relative_to_the_base_run():
    base = fake_run("base")
    new = fake_run("new")
    new.test_meta["p_label"] = [0.4, 0.8, 1.0, 0.2]
    d = se.confidence_change(base, new)
    assert np.allclose(d["delta_conf"], [-50, 0, 25, -75])


def test_zero_shot_table_aligns_the_tests_of_both_runs():
    full = fake_run("full", n_test=4)
    zs = fake_run("zs", seed=5, test_uids=["a:t3", "a:t1"])  # a subset of the full run's tests, another order
    zs.train_meta = full.train_meta[full.train_meta["lang"] == "b"].reset_index(drop=True)
    zs.per_epoch = zs.per_epoch[:, :, :6]
    table = se.zero_shot_table(full, {"a": zs}, 2)
    top_f = se.top_indices(full, 2)[[3, 1]]
    direct = crossling.zero_shot_recovery(top_f, se.top_indices(zs, 2), full.train_meta, zs.train_meta, zs.test_meta)
    assert table.loc["a", "Z1"] == direct.loc["a", "Z1"] and table.loc["a", "tests"] == 2
    assert table.loc["a", "acc full"] == 90.0


def test_qualitative_lists_top_and_bottom_examples():
    run = fake_run("q")
    table = se.qualitative(run, 1, n=2)
    scores = run.total[1]
    assert list(table["score"]) == pytest.approx([*sorted(scores)[::-1][:2], *sorted(scores)[:2]])
    assert list(table["id"].iloc[:2]) == list(run.train_meta["uid"].iloc[np.argsort(-scores, kind="stable")[:2]])


def test_run_jobs_runs_identical_jobs_once(monkeypatch):
    calls = []

    def fake(j, progress=False):
        calls.append(j.name)
        return fake_run(j.name)

    monkeypatch.setattr(se, "run_job", fake)
    out = se.run_jobs([job(name="a"), job(name="b"), job(name="c", n_train=7)], workers=1, progress=False)
    assert calls == ["a", "c"] and out["a"] is out["b"] and list(out) == ["a", "b", "c"]
    with pytest.raises(ValueError, match="unique"):
        se.run_jobs([job(name="a"), job(name="a")])


# ---- one real (tiny) run ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    """A randomly initialised 1-layer XLM-R classifier with a tokenizer trained on world text, saved to disk."""
    world = World(0)
    texts = list(world.sentiment(list(PAWSX), 40, seed=9, parallel=True)["text_a"])
    tok = zoo.train_tokenizer(texts, arch="xlmr", vocab_size=300)
    torch.manual_seed(0)
    ids = dict(pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    sizes = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    cfg = XLMRobertaConfig(
        vocab_size=len(tok), max_position_embeddings=66, type_vocab_size=1, num_labels=2, **sizes, **ids
    )
    path = tmp_path_factory.mktemp("tiny") / "model"
    XLMRobertaForSequenceClassification(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def test_run_job_traces_correct_tests_against_the_training_set(tiny_model):
    j = replace(job(), train=se.TrainSpec(tiny_model, 5e-3, 2, batch_size=8, max_length=64),
                trace=se.TraceSpec(untrained_control=True), n_test_pool=6)  # fmt: skip
    r = se.run_job(j)
    n_tests = len(r.test_meta)
    assert r.per_epoch.shape == (r.best_epoch, n_tests, 30) and r.untrained.shape == (n_tests, 30)
    assert (r.test_meta["p_label"] > 0.5).all() and r.test_meta.groupby("lang").size().le(2).all()
    assert np.abs(r.per_epoch).max() <= 1 + 1e-5  # cosines
    again = se.run_job(j)
    assert np.array_equal(again.per_epoch, r.per_epoch)  # seeded: same job, same scores
    shares = se.shares(r, 5)
    assert np.allclose(shares.sum(axis=1), 100)
    no_trace = se.run_job(replace(j, trace=None, test_uids=tuple(r.test_meta["uid"]), eval_epoch=1))
    assert no_trace.per_epoch is None and list(no_trace.test_meta["uid"]) == list(r.test_meta["uid"])


# ---- planted signal (slow) -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_planted_signal_on_the_default_focus_run():
    """Spec §8 'Signal', on the focus run of the default profile (parallel reviews, de en es fr ko, seed 0) and its
    zero-shot run without es; thresholds calibrated on seeds 0 and 1 (see the chapter)."""
    model = se.resolve_model("tiny-xlmr", 0)
    data = se.DataSpec("sentiment", PAWSX, seed=0, parallel=True)
    base = se.Job("focus", data, se.TrainSpec(model, 1e-3, 6, max_length=64), se.TraceSpec(untrained_control=True),
                  n_train=400, n_dev=40, n_test_pool=30, n_test_per_lang=10)  # fmt: skip
    focus = se.run_job(base)
    assert focus.history["dev_acc"].max() >= 0.85
    c_pos = se.shares(focus, 20)
    diag = pd.Series({a: c_pos.loc[a, a] for a in c_pos.index})
    assert (diag > 22).all() and diag.idxmax() == "ko"
    assert c_pos.loc["es"].drop("es").idxmax() == "fr" and c_pos.loc["fr"].drop("fr").idxmax() == "es"
    r = se.reinforcing(focus, 20)
    assert r["reinforcing"].mean() >= 5 * r["chance"].mean()
    untrained = se.shares(focus, 20, scores=focus.untrained)
    assert untrained.loc["ko", "ko"] >= 90  # the control: isolation is visible before fine-tuning
    # zero-shot: es, which shares words with fr, transfers (the isolate ko does not at this scale: see the chapter)
    tests = tuple(focus.test_meta.loc[focus.test_meta["lang"] == "es", "uid"])
    zs = se.run_job(replace(base, name="zs", drop_lang="es", test_langs=("es",), test_uids=tests,
                            trace=se.TraceSpec()))  # fmt: skip
    assert zs.pool_acc["es"] > 0.6 and len(zs.test_meta) > 0
    assert (se.shares(zs, 20).loc["es", "es"], se.shares(zs, 20, -1).loc["es", "es"]) == (0, 0)


@pytest.mark.slow
def test_worker_processes_give_the_same_scores(tiny_model):
    j = replace(job(), train=se.TrainSpec(tiny_model, 5e-3, 1, batch_size=8, max_length=64))
    jobs = [replace(j, name="a"), replace(j, name="b", data=replace(j.data, seed=4))]
    serial = se.run_jobs(jobs, workers=1, progress=False)
    parallel = se.run_jobs(jobs, workers=2, progress=False)
    for name in ("a", "b"):
        assert np.array_equal(serial[name].per_epoch, parallel[name].per_epoch)
        assert serial[name].test_meta["uid"].tolist() == parallel[name].test_meta["uid"].tolist()


# ---- worker processes ------------------------------------------------------------------------------------------
def _pool_workers() -> list:
    import psutil

    kids = psutil.Process().children(recursive=True)
    return [p for p in kids if p.is_running() and p.status() != psutil.STATUS_ZOMBIE
            and "resource_tracker" not in " ".join(p.cmdline())]  # fmt: skip


def test_a_failing_job_leaves_no_worker_processes(tmp_path):
    bad = replace(job(), train=se.TrainSpec(str(tmp_path / "no-such-model"), 1e-3, 1))
    with pytest.raises(Exception, match="no-such-model"):
        se.run_jobs([replace(bad, name="a"), replace(bad, name="b", data=replace(bad.data, seed=4))], workers=2,
                    progress=False)  # fmt: skip
    assert not _pool_workers(), [p.cmdline() for p in _pool_workers()]
    from mlmc import jobs

    assert jobs._POOLS == {}  # the pool was stopped; a later call starts a fresh one


# ---- planted checks (mlmc.evidence) ----------------------------------------------------------------------------
def planted_inputs(seed: int = 0, n: int = 60) -> dict[str, np.ndarray]:
    """Check inputs on the grid of top-20 shares (multiples of 5 points, so ties are everywhere), with the planted
    structure of the world: fine-tuning shares, the untrained model is self-reliant; P_k removal hurts."""
    rng = np.random.default_rng(seed)
    grid = lambda mu, sd, size=n: np.clip(np.round(rng.normal(mu, sd, size) / 5) * 5, -100, 100)  # noqa: E731
    return {
        "in_language_ft": grid(45, 10), "in_language_untr": grid(95, 5),
        "isolate_gap_ft": grid(20, 10, 12), "isolate_gap_untr": grid(10, 5, 12),
        "closest_lead_ft": grid(5, 10, 48), "closest_lead_untr": grid(0, 3, 48),
        "neg_isolate_share_ft": grid(10, 8, 48), "neg_isolate_share_untr": grid(2, 3, 48),
        "neg_isolate_lead_ft": grid(-2, 8, 48), "neg_isolate_lead_untr": grid(-1, 2, 48),
        "reinforcing_ft": grid(30, 15), "reinforcing_untr": grid(25, 15),
        "offdiag_ft": grid(12, 6, 20), "offdiag_untr": grid(4, 4, 20),
        "offdiag_sim": np.round(rng.uniform(0, 1, 20), 1),
        "zs_es_correct": (rng.uniform(size=30) < 0.8).astype(float), "zs_es_majority": np.r_[np.ones(18), np.zeros(12)],
        "zs_ko_correct": (rng.uniform(size=30) < 0.6).astype(float), "zs_ko_majority": np.r_[np.ones(18), np.zeros(12)],
        "imbalance_rise": grid(15, 10, 20), "imbalance_rise_random": grid(10, 10, 20),
        "ksel_positive": rng.normal(-20, 5, 10), "ksel_random": rng.normal(-2, 5, 10),
    }  # fmt: skip


def test_checks_label_what_the_untrained_model_also_shows_as_consistency():
    x = planted_inputs()
    checks = {c.claim.split(":")[0].split(" (")[0]: c for c in se.sharing_checks(x, 20.0, "ko")}
    assert checks["fine-tuning creates sharing"].kind == "planted" and checks["fine-tuning creates sharing"].passed
    assert checks["in-language share of the positive top-k above the data share"].kind == "consistency"
    assert checks["translations of the in-language proponents rank high"].kind == "consistency"
    assert checks["removing P_k and retraining lowers the gold-label confidence more than removing k random examples"
                  ].passed  # fmt: skip
    assert {c.claim for c in checks.values() if c.asserted} == {
        c.claim for c in checks.values() if c.claim.startswith(("fine-tuning creates", "removing P_k"))
    }
    # without the untrained model there is no control: nothing is evidence but the majority and random controls
    no_ctrl = {k: v for k, v in x.items() if not k.endswith("_untr")}
    kinds = {c.claim.split(":")[0]: c.kind for c in se.sharing_checks(no_ctrl, 20.0, "ko")}
    assert kinds["in-language share of the positive top-k above the data share (20%)"] == "consistency"


def test_asserted_checks_fail_on_their_controls_outputs():
    """Meta-test: each asserted check, fed its control's outputs as the measured sample, does not pass."""
    x = planted_inputs()
    swapped = dict(x, in_language_ft=x["in_language_untr"], ksel_positive=x["ksel_random"])
    for c in se.sharing_checks(swapped, 20.0, "ko"):
        if c.asserted:
            assert not c.passed, c.claim
    for c in se.sharing_checks(x, 20.0, "ko"):
        if c.asserted:
            assert ev.control_fails(c), c.claim


def test_check_verdicts_do_not_flip_under_jitter():
    x = planted_inputs()
    keys = list(x)
    assert ev.jitter_stable(lambda *a: se.sharing_checks(dict(zip(keys, a, strict=True)), 20.0, "ko"), *x.values())


def test_check_inputs_from_runs_match_the_tables(tmp_path):
    """Per-item shares pooled over runs average to the C+ tables; the untrained control enters with its own scores."""
    runs = []
    for s in (0, 1):
        r = fake_run(f"f{s}", n_test=4, seed=s, test_uids=["a:t0", "a:t1", "b:t2", "b:t3"])
        r.untrained = np.random.default_rng(9 + s).normal(size=r.per_epoch.shape[1:])
        runs.append(r)
    sim = pd.DataFrame([[1.0, 0.3], [0.3, 1.0]], index=["a", "b"], columns=["a", "b"])
    x = se.check_inputs(runs, 3, sim, "b")
    table = se.average_shares(runs, 3)
    assert x["in_language_ft"].mean() == pytest.approx(np.mean([table.loc[a, a] for a in table.index]))
    untr = se.average_shares(runs, 3, untrained=True)
    assert x["in_language_untr"].mean() == pytest.approx(np.mean([untr.loc[a, a] for a in untr.index]))
    assert x["isolate_gap_ft"].size == 4 and x["offdiag_ft"].size == 2


def test_committed_chapter_asserts_only_checks_whose_control_fails():
    """Meta-test on the committed default-profile chapter: the evidence records it embeds."""
    from pathlib import Path

    nb = nbformat.read(Path(__file__).resolve().parents[1] / "book" / "chapters" / "01_data_sharing.ipynb", 4)
    records = [r for c in nb.cells for o in c.get("outputs", []) for r in
               o.get("data", {}).get(ev.MIME, {}).get("checks", [])]  # fmt: skip
    assert records, "the chapter shows its checks with ev.show"
    for r in records:
        assert (r["kind"] == "consistency") == (r["control_verdict"] == "pass"), r["claim"]
        if r["asserted"]:
            assert r["verdict"] == "pass" and r["control_verdict"] != "pass", r["claim"]


def test_a_state_dict_passed_as_a_checkpoint_is_named_not_dumped():
    from mlmc import influence

    state = {f"layer{i}.weight": torch.zeros(50, 50) for i in range(3)}
    with pytest.raises(ValueError, match="parameter 'checkpoints': a dict is neither") as info:
        influence.tracin([state], [([1, 2], 0)], [([1, 2], 0)])
    assert len(str(info.value)) < 200 and "tensor" not in str(info.value)
