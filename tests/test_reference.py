"""The thesis's numbers shipped with the package, checked against the thesis's own printed summaries."""

from __future__ import annotations

import pytest

from mlmc import reference


def test_available_and_unknown_name():
    assert "ch4_table4_2" in reference.available()
    with pytest.raises(ValueError, match=r"parameter 'name' must be one of \[.*'ch4_table4_2'"):
        reference.load("table_9_9")


def test_table_4_2_matches_the_printed_means_of_table_4_1():
    df = reference.load("ch4_table4_2")
    assert df.shape == (82, 10) and df["test_treebank"].is_unique
    # Thesis Table 4.1: mean LAS over the 82 treebanks; the rows of Table 4.2 reproduce them within 0.2.
    printed = {
        "nonep_full": 38.49,
        "nonep_sn_static": 41.32,
        "nonep_sn_dyna": 40.0,
        "meta_full": 40.68,
        "meta_sn_static": 40.27,
        "meta_sn_dyna": 40.89,
        "udf8": 38.66,
    }
    for column, mean in printed.items():
        assert df[column].mean() == pytest.approx(mean, abs=0.2), column
    assert df["udf75"].isna().sum() > 0, "UDify reports no zero-shot score for some treebanks"


def test_ch4_rows_are_labelled_by_where_the_thesis_prints_them():
    ref = reference.load("ch4_thesis")
    t41 = ref[ref.table == "T4.1"]
    assert "udf8" not in set(t41.setting)  # 38.66 is Table 4.2's average row, not Table 4.1
    avg = ref[(ref.table == "T4.2") & (ref.setting == "udf8")]
    assert avg.value.tolist() == [38.66] and "Table 4.2" in avg.source.iloc[0]
    pearson = ref[ref.metric == "pearson_r"]
    assert sorted(pearson.value) == [0.08, 0.16, 0.33, 0.58]
    assert set(pearson.table) == {"S4.7.2"} and pearson.source.str.contains("4.7.2").all()
    assert not ref[(ref.table == "T4.6")].metric.eq("pearson_r").any()
