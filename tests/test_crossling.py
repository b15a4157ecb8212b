"""Tests of mlmc.crossling (spec ch. 3 §8, analysis) and of the chapter's thesis numbers (spec §4)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch
from datasets import Dataset

from mlmc.crossling import (
    data_share,
    language_shares,
    mean_influence,
    per_epoch_shares,
    reinforcing_rate,
    translation_share,
    wilcoxon_epochs,
    zero_shot_recovery,
)
from mlmc.influence import topk

LANGS = ["de", "en", "es", "fr", "ko"]


def parallel_meta(n_per_lang: int, langs=LANGS) -> pd.DataFrame:
    """Training rows of a parallel task: every content id in every language, rows interleaved."""
    return pd.DataFrame([{"lang": lang, "cid": c} for c in range(n_per_lang) for lang in langs])


def random_case(seed: int, n_per_lang: int = 40, n_test_per_lang: int = 8):
    rng = np.random.default_rng(seed)
    train = parallel_meta(n_per_lang)
    test_lang = np.repeat(LANGS, n_test_per_lang)
    scores = torch.tensor(rng.normal(size=(len(test_lang), len(train))))
    return train, test_lang, scores


def test_shares_rows_sum_to_100_and_count_languages():
    train, test_lang, scores = random_case(0)
    idx = topk(scores, 15)
    shares = language_shares(idx, train["lang"], test_lang)
    assert list(shares.columns) == sorted(LANGS) and list(shares.index) == sorted(LANGS)
    np.testing.assert_allclose(shares.sum(axis=1), 100.0)
    rows = np.flatnonzero(test_lang == "es")
    counts = Counter(train["lang"].iloc[j] for t in rows for j in idx[t].tolist())
    assert shares.loc["es", "ko"] == pytest.approx(100 * counts["ko"] / (15 * len(rows)))
    pd.testing.assert_frame_equal(language_shares(idx, Dataset.from_pandas(train), test_lang), shares)


def test_one_language_training_set_gives_100_on_its_column():
    test_lang = ["de", "de", "en"]
    idx = topk(torch.randn(3, 10), 4)
    shares = language_shares(idx, ["de"] * 10, test_lang, langs=["de", "en"])
    assert shares.loc["de", "de"] == 100.0 and shares.loc["en", "de"] == 100.0 and shares["en"].eq(0).all()


def test_shuffling_training_rows_leaves_shares_unchanged():
    train, test_lang, scores = random_case(1)
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    for sign in (1, -1):
        before = language_shares(topk(scores, 20, sign), train["lang"], test_lang)
        after = language_shares(topk(scores[:, perm], 20, sign), train["lang"].to_numpy()[perm.numpy()], test_lang)
        pd.testing.assert_frame_equal(before, after)


def test_positive_and_negative_sets_are_disjoint_iff_2k_at_most_n():
    scores = torch.randn(30, 40, dtype=torch.float64)
    for k, disjoint in ((20, True), (7, True), (21, False)):
        pos, neg = topk(scores, k, 1), topk(scores, k, -1)
        overlap = [set(p.tolist()) & set(n.tolist()) for p, n in zip(pos, neg, strict=True)]
        assert all(not o for o in overlap) is disjoint
    with pytest.raises(ValueError, match="'k'"):
        topk(scores, 41)


def test_data_share_and_mean_influence():
    train_lang = ["de"] * 6 + ["en"] * 3 + ["es"] * 1
    share = data_share(train_lang, langs=["de", "en", "es", "ko"])
    assert share.tolist() == [60.0, 30.0, 10.0, 0.0]
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(4, 10))
    test_lang = ["en", "de", "en", "ko"]
    table = mean_influence(scores, train_lang, test_lang, langs=["de", "en", "es", "ko"])
    assert table.loc["en", "de"] == pytest.approx(scores[[0, 2]][:, :6].mean())
    assert table.loc["ko", "es"] == pytest.approx(scores[3, 9])
    assert table["ko"].isna().all()  # no ko training rows (a zero-shot model)
    assert list(table.index) == ["de", "en", "ko"]


def test_reinforcing_is_100_or_0_on_constructed_cases():
    train = parallel_meta(10, ["de", "en", "es"])
    row = {(r.lang, r.cid): i for i, r in enumerate(train.itertuples())}
    # test 0 (de): in-language cids {0, 1, 2}; other-language examples are their translations
    reinforce = [row["de", 0], row["de", 1], row["de", 2], row["en", 1], row["es", 2], row["es", 0]]
    # test 1 (de): other-language examples carry other content
    complement = [row["de", 0], row["de", 1], row["de", 2], row["en", 5], row["es", 6], row["en", 9]]
    for idx, expected in ((reinforce, 100.0), (complement, 0.0)):
        out = reinforcing_rate(np.asarray([idx]), train, ["de"])
        assert out.loc["de", "reinforcing"] == expected and out.loc["de", "complementary"] == 100 - expected
        assert out.loc["de", "chance"] == pytest.approx(30.0)  # |R_in| / n_per_lang = 3 / 10
    extra = pd.concat([train, pd.DataFrame({"lang": ["de"] * 10, "cid": range(100, 110)})], ignore_index=True)
    out = reinforcing_rate(np.asarray([reinforce]), extra, ["de"])  # chance: over the other-language rows only
    assert out.loc["de", "chance"] == pytest.approx(30.0) and out.loc["de", "reinforcing"] == 100.0
    both = reinforcing_rate(
        np.asarray([reinforce, complement[:3] + [row["en", 5], row["es", 1], row["en", 7]]]), train, ["de", "de"]
    )
    assert both.loc["de", "reinforcing"] == pytest.approx(100 * 4 / 6)
    assert both.loc["de", "reinforcing_per_test"] == pytest.approx(100 * (1 + 1 / 3) / 2)
    assert both.loc["de", "n_other"] == 6 and both.loc["de", "n_tests"] == 2


def test_reinforcing_with_random_scores_is_at_chance():
    gaps, chances = [], []
    for seed in range(6):
        train, test_lang, scores = random_case(seed, n_per_lang=40, n_test_per_lang=40)
        out = reinforcing_rate(topk(scores, 15), train, test_lang)
        p = out["chance"] / 100
        se = np.sqrt(p * (1 - p) / out["n_other"]) * 100
        gaps.append(((out["reinforcing"] - out["chance"]) / se).to_numpy())
        chances.append(out["chance"].to_numpy())
    gaps = np.concatenate(gaps)
    assert abs(gaps.mean()) < 3 / np.sqrt(len(gaps)) * 1.5 and np.abs(gaps).max() < 4.5
    assert 4 < np.mean(chances) < 12  # about |R_in| / n_per_lang = (15 / 5) / 40 = 7.5%


def test_translation_share_counts_translations_of_the_test_example():
    train = parallel_meta(4, ["de", "en", "es"])
    row = {(r.lang, r.cid): i for i, r in enumerate(train.itertuples())}
    test = pd.DataFrame({"lang": ["de", "de", "en"], "cid": [1, 2, 3]})
    idx = np.asarray(
        [
            [row["en", 1], row["es", 1], row["de", 1], row["en", 0]],  # 2 translations (de1 is the same language)
            [row["en", 0], row["es", 3], row["de", 0], row["en", 2]],  # 1 translation
            [row["de", 3], row["es", 3], row["en", 3], row["en", 1]],  # 2 translations
        ]
    )
    out = translation_share(idx, train, test)
    assert out.loc["de", "translations"] == pytest.approx(100 * 3 / 8)
    assert out.loc["en", "translations"] == pytest.approx(100 * 2 / 4)
    assert out.loc["de", "available"] == 2 and out.loc["de", "chance"] == pytest.approx(100 * 2 / 12)


def test_zero_shot_recovery_on_hand_built_sets():
    full = parallel_meta(5, ["ko", "en", "es"])
    zs = parallel_meta(5, ["en", "es"]).iloc[::-1].reset_index(drop=True)  # other row positions
    f = {(r.lang, r.cid): i for i, r in enumerate(full.itertuples())}
    z = {(r.lang, r.cid): i for i, r in enumerate(zs.itertuples())}
    idx_full = np.asarray(
        [
            [f["ko", 0], f["ko", 1], f["en", 0], f["es", 3]],  # R_in = {0, 1}, O = {en0, es3}
            [f["ko", 2], f["en", 4], f["es", 4], f["en", 1]],  # R_in = {2},    O = {en4, es4, en1}
        ]
    )
    idx_zs = np.asarray(
        [
            [z["en", 0], z["es", 1], z["es", 2], z["en", 4]],  # Z1 hits: en0, es1;  Z2 hits: en0
            [z["en", 2], z["es", 2], z["es", 4], z["en", 1]],  # Z1 hits: en2, es2;  Z2 hits: es4, en1
        ]
    )
    out = zero_shot_recovery(idx_full, idx_zs, full, zs, ["ko", "ko"])
    assert out.loc["ko", "Z1"] == pytest.approx(100 * 4 / 8)
    assert out.loc["ko", "Z2"] == pytest.approx(100 * 3 / 5)
    assert out.loc["ko", "n_tests"] == 2


def test_per_epoch_shares_match_language_shares_per_epoch():
    train, test_lang, _ = random_case(2)
    per_epoch = torch.randn(3, len(test_lang), len(train), generator=torch.Generator().manual_seed(0))
    long = per_epoch_shares(per_epoch, 10, train, test_lang, sign=-1)
    assert set(long["epoch"]) == {1, 2, 3}
    np.testing.assert_allclose(long.groupby(["epoch", "test"])["share"].sum(), 100.0)
    second = long[long["epoch"] == 2].pivot(index="test", columns="train", values="share")
    expected = language_shares(topk(per_epoch[1], 10, -1), train["lang"], test_lang)
    np.testing.assert_allclose(second.loc[expected.index, expected.columns], expected)


def test_wilcoxon_detects_a_shift_between_epochs():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(6, 50))
    per_epoch = np.stack(
        [base, base + 0.3 + rng.normal(scale=0.1, size=base.shape), base + rng.normal(size=base.shape)]
    )
    out = wilcoxon_epochs(per_epoch, ["de"] * 3 + ["en"] * 3)
    assert len(out) == 2 * 3 and set(out["test"]) == {"de", "en"}
    shifted = out[(out["epoch_a"] == 1) & (out["epoch_b"] == 2)]
    assert (shifted["pvalue"] < 0.05).all() and (shifted["n"] == 150).all()
    noise = out[(out["epoch_a"] == 1) & (out["epoch_b"] == 3)]
    assert (noise["pvalue"] > 0.01).all()
    assert list(wilcoxon_epochs(per_epoch)["test"].unique()) == ["all"]


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda: language_shares(np.zeros((2, 1), int), ["de", "xx"], ["de", "de"], langs=["de", "en"]),
            "'train_lang'",
        ),
        (lambda: language_shares(np.zeros((2, 1), int), ["de"], ["de", "fr"], langs=["de"]), "'test_lang'"),
        (lambda: language_shares(np.zeros((2, 1), int), ["de"], ["de", "de"], langs=["de", "en"]), "'langs'"),
        (lambda: language_shares(np.full((2, 1), 3), ["de"], ["de", "de"]), "'idx'"),
        (lambda: language_shares(np.zeros((3, 1), int), ["de"], ["de", "de"]), "'idx'"),
        (lambda: mean_influence(np.zeros((2, 2)), ["de"], ["de", "de"]), "'scores'"),
        (lambda: reinforcing_rate(np.zeros((1, 1), int), pd.DataFrame({"lang": ["de"]}), ["de"]), "'train_meta'"),
        (lambda: per_epoch_shares(torch.zeros(2, 1, 3), 4, ["de"] * 3, ["de"]), "'k'"),
        (lambda: wilcoxon_epochs(np.zeros((1, 2, 3))), "'per_epoch'"),
    ],
)
def test_bad_parameters_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ---------------------------------------------------------------------------------------- thesis numbers (§4)


def test_reference_numbers_match_the_spec_transcription():
    from mlmc.reference import load

    ref = load("ch3_thesis")
    assert set(ref["source"]) == {"Choenni 2025, Table 3.3", "Choenni 2025, Table A.2", "Choenni 2025, Table 3.4"} | {
        "Choenni 2025, §3.8.3"
    }
    mean = ref[ref["quantity"] == "mean_influence"]
    assert len(mean) == 75 and mean.groupby("task").size().eq(25).all()

    def cell(quantity, task, test, train=None, sign=None):
        rows = ref[(ref["quantity"] == quantity) & (ref["task"] == task) & (ref["test_lang"] == test)]
        if train is not None:
            rows = rows[rows["train_lang"] == train]
        if sign is not None:
            rows = rows[rows["sign"] == sign]
        assert len(rows) == 1
        return rows["value"].item()

    # typed again from spec §4, independently of the CSV
    assert cell("mean_influence", "XNLI", "de", "en") == 0.442
    assert cell("mean_influence", "XNLI", "ru", "fr") == 0.660
    assert cell("mean_influence", "PAWS-X", "ko", "ko") == 0.166
    assert cell("mean_influence", "PAWS-X", "fr", "ko") == 0.189
    assert cell("mean_influence", "MARC", "zh", "zh") == 0.542
    assert cell("mean_influence", "MARC", "fr", "es") == 0.618
    assert cell("reinforcing_pct", "XNLI", "de", sign="NEG") == 64
    assert cell("reinforcing_pct", "XNLI", "fr", sign="POS") == 62
    assert cell("reinforcing_pct", "PAWS-X", "ko", sign="POS") == 31
    assert cell("reinforcing_pct", "PAWS-X", "en", sign="NEG") == 50
    assert cell("Z1_pct", "PAWS-X", "es") == 14 and cell("Z2_pct", "PAWS-X", "ko") == 4
    assert cell("zero_shot_accuracy_pct", "PAWS-X", "ko") == 74 and cell("zero_shot_accuracy_pct", "PAWS-X", "es") == 81
    # the spec's reading of Table 3.3: en training data has the highest mean (XNLI, PAWS-X), except for ko
    for task in ("XNLI", "PAWS-X"):
        table = mean[mean["task"] == task].pivot(index="test_lang", columns="train_lang", values="value")
        assert (table.drop(index="ko", errors="ignore").idxmax(axis=1) == "en").all()
    assert (
        mean[(mean["task"] == "PAWS-X") & (mean["test_lang"] == "ko")].set_index("train_lang")["value"].idxmax() == "ko"
    )
