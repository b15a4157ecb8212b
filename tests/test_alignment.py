"""Tests of mlmc.alignment: prompts, demonstration selection, answer parsing, metrics (spec ch. 8 §8)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlmc import alignment as al


def pool_of(n: int, n_cat: int = 3) -> pd.DataFrame:
    subjects = ["press", "banks", "courts", "police", "army", "church", "family", "work", "leisure", "friends"]
    return pd.DataFrame(
        dict(
            lang="en",
            qid=[f"Q{i + 1}" for i in range(n)],
            category=[f"c{i % n_cat}" for i in range(n)],
            template=[f"I have [MASK] confidence in the {subjects[i % len(subjects)]} {i}." for i in range(n)],
            opt1="complete",
            opt2="no",
        )
    )


# --- prompts --------------------------------------------------------------------------------------------------------
def test_blank_keeps_glued_affix_and_needs_one_mask():
    assert al.blank("Das ist [MASK]es Gut.") == "Das ist _es Gut."
    with pytest.raises(ValueError, match="exactly one"):
        al.blank("no mask here")
    with pytest.raises(ValueError, match="exactly one"):
        al.blank("[MASK] and [MASK]")


def test_prompt_demo_answers_are_majority_strings_and_test_is_last():
    pool = pool_of(6)
    answers = {q: ("no" if i % 2 else "complete") for i, q in enumerate(pool.qid)}
    for s in range(50):
        p = al.build_prompt(pool.iloc[0], list(pool.iloc[1:4].itertuples()), answers, np.random.default_rng(s))
        lines = p.text.split("\n")
        assert lines[0] == al.INSTRUCTION
        assert lines[-1] == "A:" and lines[-2].startswith("Q: I have _ confidence in the press 0.")
        got = [line[3:] for line in lines[2:-2:2]]
        assert got == [answers[q] for q in pool.qid[1:4]]
        assert all(line.count("_") == 1 for line in lines if line.startswith("Q:"))


def test_option_order_is_balanced():
    pool = pool_of(3)
    first = [
        al.build_prompt(pool.iloc[0], list(pool.iloc[1:2].itertuples()), {"Q2": "no"}, np.random.default_rng(s)).shown[
            0
        ]
        for s in range(1000)
    ]
    share = np.mean([f == "complete" for f in first])
    assert 0.45 <= share <= 0.55


def test_prompt_rejects_leak_and_foreign_answer():
    pool = pool_of(4)
    with pytest.raises(ValueError, match="among its own"):
        al.build_prompt(
            pool.iloc[0], list(pool.iloc[0:2].itertuples()), {"Q1": "no", "Q2": "no"}, np.random.default_rng(0)
        )
    with pytest.raises(ValueError, match="not one of its options"):
        al.build_prompt(pool.iloc[0], list(pool.iloc[1:2].itertuples()), {"Q2": "maybe"}, np.random.default_rng(0))


def test_test_first_fixes_the_shown_order():
    pool = pool_of(3)
    for first in ("complete", "no"):
        p = al.build_prompt(
            pool.iloc[0], list(pool.iloc[1:2].itertuples()), {"Q2": "no"}, np.random.default_rng(1), test_first=first
        )
        assert p.shown[0] == first


class _ChatTok:
    chat_template = "x"

    def apply_chat_template(self, msgs, tokenize, add_generation_prompt):
        assert add_generation_prompt and not tokenize
        return "<user>" + msgs[0]["content"] + "<assistant>"


def test_to_model_text_applies_a_template_only_when_there_is_one():
    assert al.to_model_text("hi", _ChatTok()) == "<user>hi<assistant>"
    assert al.to_model_text("hi", object()) == "hi"


# --- demonstration selection ----------------------------------------------------------------------------------------
def test_chrf_ranks_same_family_template_first():
    texts = ["I have _ confidence in the government.", "I have _ confidence in the banks.", "Religion is _ to me."]
    m = al.chrf_matrix(texts)
    assert m[0, 1] > m[0, 2] and np.isneginf(m[0, 0])


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(min_value=3, max_value=25),
    n_cat=st.integers(min_value=1, max_value=5),
    k=st.integers(min_value=1, max_value=8),
    test=st.integers(min_value=0, max_value=24),
    seed=st.integers(min_value=0, max_value=10_000),
    strategy=st.sampled_from([*al.STRATEGIES, "chrf_shuffled"]),
)
def test_demos_never_include_the_test_item(n, n_cat, k, test, seed, strategy):
    pool = pool_of(n, n_cat)
    k = min(k, n - 1)
    qid = pool.qid.iloc[test % n]
    chrf = pd.DataFrame(al.chrf_matrix(list(pool.template)), index=pool.qid, columns=pool.qid)
    demos = al.select_demos(pool, qid, strategy, k, np.random.default_rng(seed), chrf)
    assert qid not in demos
    assert len(set(demos)) == len(demos)
    cat = pool.set_index("qid").category
    same = int((cat == cat[qid]).sum()) - 1
    if strategy in ("random_cat", "chrf_cat"):
        assert all(cat[d] == cat[qid] for d in demos)
        assert len(demos) == min(k, same)
    else:
        assert len(demos) == k
    again = al.select_demos(pool, qid, strategy, k, np.random.default_rng(seed), chrf)
    assert demos == again


def test_bad_strategy_and_k_fail_with_one_clear_error():
    pool = pool_of(5)
    with pytest.raises(ValueError, match="'strategy' must be one of"):
        al.select_demos(pool, "Q1", "best", 2, np.random.default_rng(0))
    with pytest.raises(ValueError, match="larger than the demonstration pool"):
        al.select_demos(pool, "Q1", "random", 5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="must be a list"):
        al.check_strategies("chrf")
    with pytest.raises(ValueError, match="needs the chrF"):
        al.select_demos(pool, "Q1", "chrf", 2, np.random.default_rng(0))


def test_chrf_order_is_most_similar_first():
    pool = pool_of(6)
    chrf = pd.DataFrame(al.chrf_matrix(list(pool.template)), index=pool.qid, columns=pool.qid)
    demos = al.select_demos(pool, "Q1", "chrf", 4, np.random.default_rng(0), chrf)
    scores = chrf.loc["Q1", demos].to_numpy()
    assert np.all(np.diff(scores) <= 0)


# --- answers --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text,options,want",
    [
        ("Disagree.", ["agree", "disagree"], 1),
        ("I agree, mostly", ["agree", "disagree"], 0),
        ("Not at all important", ["not", "not at all"], 1),
        ("NO!", ["complete", "no"], 1),
        ("none of these", ["complete", "no"], None),
        ("", ["a", "b"], None),
        ("agree then disagree", ["disagree", "agree"], 1),
    ],
)
def test_parse_option(text, options, want):
    assert al.parse_option(text, options) == want


def test_option_probs_and_sampling():
    p = al.option_probs(np.log([[0.2, 0.8]]), temperature=1.0)
    assert np.allclose(p, [[0.2, 0.8]])
    sharp = al.option_probs(np.log([[0.2, 0.8]]), temperature=0.5)
    assert sharp[0, 1] > 0.8
    draws = al.sample_answers(np.array([0.0, 1.0, 0.5]), 2000, np.random.default_rng(0))
    assert draws.shape == (3, 2000) and not draws[0].any() and draws[1].all() and abs(draws[2].mean() - 0.5) < 0.05
    with pytest.raises(ValueError, match="temperature"):
        al.option_probs([[0.0, 0.0]], temperature=0)


# --- metrics --------------------------------------------------------------------------------------------------------
def test_metrics_on_hand_made_numbers():
    zs = np.array([True] * 3 + [False] * 7)
    sa = np.array([True] * 9 + [False])
    d_zs, d_sa = al.misalignment(zs[None]), al.misalignment(sa[None])
    assert d_zs[0] == pytest.approx(70) and d_sa[0] == pytest.approx(10)
    assert al.error_reduction(d_zs, d_sa)[0] == pytest.approx(60 / 70)
    assert al.outcome(d_zs, d_sa)[0] == "+"
    assert np.isnan(al.error_reduction(np.array([0.0]), np.array([0.0])))[0]
    assert al.outcome([20.0], [40.0])[0] == "-" and np.isnan(al.error_reduction([20.0], [40.0]))[0]
    assert al.outcome([20.0], [20.0 + 1e-12])[0] == "/"


def test_outcome_table_sums_to_100_and_rebuilds_thesis_counts():
    n_m = 117
    counts = np.round(np.array([73, 9, 18]) / 100 * n_m).astype(int)
    assert counts.tolist() == [85, 11, 21]
    d_zs = np.full(n_m + 5, 50.0)
    d_zs[-5:] = 0.0  # aligned items are not in M
    d_sa = np.concatenate([np.full(85, 10.0), np.full(11, 50.0), np.full(21, 90.0), np.zeros(5)])
    t = al.outcome_table(pd.DataFrame(dict(g="x", d_zs=d_zs, d_sa=d_sa)), ["g"])
    assert t.loc["x", "n_misaligned"] == n_m
    assert t.loc["x", ["+", "/", "-"]].sum() == pytest.approx(100)
    assert t.loc["x", "+"] == pytest.approx(100 * 85 / 117)
