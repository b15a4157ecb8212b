"""Tests of the value-probe kernel `mlmc.values` (chapters 05 and 06): probes, loaders, targets, shift metrics."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlmc import values as V
from mlmc.world import VALUE_ITEMS, World

HEADER = "\t0\t1\t2\t3\n"


def _real_probes_zip() -> Path:
    root = Path(os.environ.get("MLMC_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    for base in (root, Path(__file__).resolve().parents[1].parent / "shared" / "data"):
        if (base / "value_probing" / "probes.zip").is_file():
            return base / "value_probing" / "probes.zip"
    pytest.skip(f"real value probes not found under {root} (set MLMC_SHARED_DATA)")


@pytest.fixture(scope="module")
def world() -> World:
    return World(seed=0)


def test_world_probes_columns_and_targets(world):
    probes = V.world_probes(world, ["de", "fa"])
    assert tuple(probes.columns) == V.PROBE_COLUMNS
    assert len(probes) == 2 * len(VALUE_ITEMS)
    assert not probes.duplicated(["lang", "qid"]).any()
    assert (probes.template.str.count(r"\[MASK\]") == 1).all()
    truth = world.value_truth(["de", "fa"]).set_index(["lang", "qid"])["p_opt1"]
    got = probes.set_index(["lang", "qid"])["target_p1"]
    assert np.allclose(got.loc[truth.index], truth)
    # answer words are the language's own forms of the option concepts
    row = probes[(probes.lang == "fa") & (probes.qid == "Q6")].iloc[0]
    assert row.opt1 == world.word("fa", "important") and row.opt2 == world.word("fa", "unimportant")
    assert set(probes.category) <= set(V.CATEGORIES.values())


def test_world_probes_bad_language(world):
    with pytest.raises(ValueError, match="langs"):
        V.world_probes(world, ["de", "xx"])


def test_category_and_qid():
    assert V.normalise_qid("110a") == "Q110a" and V.normalise_qid(6) == "Q6" and V.normalise_qid("q12") == "Q12"
    assert V.sort_qids(["Q10", "Q110b", "Q2", "Q110a"]) == ["Q2", "Q10", "Q110a", "Q110b"]
    assert V.category_of("Q165") == "religious values" and V.category_of("Q1") == "social values"
    assert V.category_of("Q235") == "political culture" and V.category_of("Q152d") == "postmaterialist index"
    with pytest.raises(ValueError, match="qid"):
        V.category_of("Q999")
    with pytest.raises(ValueError, match="qid"):
        V.normalise_qid("family")


def _write_probe_dir(tmp_path: Path) -> Path:
    d = tmp_path / "probes" / "wvs"
    d.mkdir(parents=True)
    (d / "de.csv").write_text(
        HEADER + "0\t1\tFamilie ist [MASK] in meinem Leben\twichtig\tunwichtig\n"
        "1\t165\tIch [MASK] an Gott\tglaube\tglaube nicht\n"
        "2\t106a\tkein Platzhalter hier\tja\tnein\n",
        encoding="utf-8",
    )
    (d / "fa.csv").write_text(HEADER + "0\t1\tخانواده در زندگی من [MASK] است\tمهم\tبی اهمیت\n", encoding="utf-8")
    return tmp_path


def test_load_probes_written_files(tmp_path):
    root = _write_probe_dir(tmp_path)
    with pytest.warns(UserWarning, match="skipped"):
        df = V.load_probes(root)
    assert tuple(df.columns) == V.PROBE_COLUMNS
    assert df.target_p1.isna().all()
    assert list(df[df.lang == "de"].qid) == ["Q1", "Q165"]
    assert df[df.qid == "Q165"].iloc[0].opt2 == "glaube nicht"
    assert df.attrs["skipped"] == ["de:Q106a"]
    # the same files inside a zip, one language selected
    zpath = tmp_path / "probes.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        for f in (root / "probes" / "wvs").glob("*.csv"):
            z.write(f, f"probes/wvs/{f.name}")
        z.writestr("__MACOSX/probes/wvs/._de.csv", "junk")
    dz = V.load_probes(zpath, langs=["fa"])
    assert list(dz.lang) == ["fa"] and dz.iloc[0].template.endswith("[MASK] است")
    with pytest.raises(ValueError, match="langs"):
        V.load_probes(zpath, langs=["xx"])
    with pytest.raises(FileNotFoundError):
        V.load_probes(tmp_path / "nope")


@pytest.mark.shared_data
def test_load_probes_real_files():
    path = _real_probes_zip()
    with pytest.warns(UserWarning):
        df = V.load_probes(path)
    assert df.lang.nunique() == 13 and set(df.lang) == set(V.LANG2COUNTRY) - {"en"}
    assert (df.groupby("lang").size() >= 265).all()
    assert (df.template.str.count(r"\[MASK\]") == 1).all()
    de = df[df.lang == "de"].set_index("qid")
    assert de.loc["Q1", "opt1"] == "wichtig" and de.loc["Q1", "opt2"] == "unwichtig"
    # the thesis's 11 categories (economic values and postmaterialist index excluded) hold most probes
    kept = de[~de.category.isin([V.CATEGORIES[k] for k in V.EXCLUDED])]
    assert 230 <= len(kept) <= 250
    hof = V.load_probes(path, kind="hofstede", langs=["ko"])
    assert len(hof) > 10 and set(hof.category) == {"hofstede"}


def test_binarize_and_aggregates(tmp_path):
    assert V.binarize({1: 10, 2: 20, 3: 30, 4: 40}, [1, 2], [3, 4]) == pytest.approx(0.3)
    ten = {k: 1.0 for k in range(1, 11)}
    assert V.binarize(ten | {1: 5.0}, range(1, 6), range(6, 11)) == pytest.approx(9 / 14)
    assert V.binarize({1: 1, 2: 1, 3: 50, 4: 2, 5: 0, -1: 99}, [1, 2], [4, 5], drop_codes=[3]) == pytest.approx(0.5)
    # polarity: the same shares read with the sides swapped
    assert V.binarize({1: 10, 4: 30}, [4], [1]) == pytest.approx(0.75)
    pd.DataFrame(dict(country_iso3=["DEU", "DEU"], qid=["1", "Q6"], p_opt1=[0.9, 0.2])).to_csv(tmp_path / "a.csv")
    agg = V.load_aggregates(tmp_path / "a.csv")
    assert list(agg.columns) == ["country", "qid", "p_opt1"] and list(agg.qid) == ["Q1", "Q6"]
    assert V.majority_targets(agg, "DEU").to_dict() == {"Q1": 1, "Q6": 2}
    long = pd.DataFrame(
        dict(
            country="PAK",
            qid="Q1",
            code=[1, 2, 3, 4],
            share=[10, 20, 30, 40],
            opt1_codes="1;2",
            opt2_codes="3;4",
        )
    )
    long.to_csv(tmp_path / "b.csv", index=False)
    assert V.load_aggregates(tmp_path / "b.csv").p_opt1.iloc[0] == pytest.approx(0.3)
    pd.DataFrame(dict(country="X", qid=["Q1"], p_opt1=[1.5])).to_csv(tmp_path / "c.csv")
    with pytest.raises(ValueError, match="p_opt1"):
        V.load_aggregates(tmp_path / "c.csv")


def test_majority_targets_world(world):
    probes = V.world_probes(world, ["de", "ko"])
    maj = V.majority_targets(probes, "ko")
    ko = probes[probes.lang == "ko"].set_index("qid").target_p1
    assert set(maj.unique()) <= {1, 2} and len(maj) == len(VALUE_ITEMS)
    assert ((maj == 1) == (ko.loc[maj.index] > 0.5)).all()
    assert V.majority_targets(world.value_truth(["ko"]), "ko").equals(maj)
    with pytest.raises(ValueError, match="country_or_lang"):
        V.majority_targets(probes, "fa")


def test_metrics():
    a = np.array([1, 2, 1, 1, 2])
    b = np.array([1, 1, 1, 2, 2])
    assert V.pct_unchanged(a, a) == 100.0
    assert V.agreement(a, b) == V.agreement(b, a) == 60.0
    assert V.pct_unchanged(a, b, mask=[1, 1, 0, 0, 0]) == 50.0
    assert V.unique_shift_fraction({"fa": {1, 2, 3}, "ko": {3, 4}, "ru": {3}}) == pytest.approx(3 / 4)
    assert np.isnan(V.unique_shift_fraction({"fa": set()}))
    rng = np.random.default_rng(0)
    pre, gt = rng.random(30), rng.random(30)
    assert V.alignment_delta(pre, gt, gt) == pytest.approx(1 - V.spearman_alignment(pre, gt))
    assert list(V.predictions([0.2, 0.5, 0.51])) == [2, 2, 1]
    assert np.allclose(V.option_probs(np.log([[0.2, 0.6], [1.0, 1.0]])), [[0.25, 0.75], [0.5, 0.5]])


def test_rsa_properties():
    rng = np.random.default_rng(1)
    prof = pd.DataFrame(rng.random((6, 20)), index=list("abcdef"))
    other = pd.DataFrame(rng.random((6, 20)), index=list("abcdef"))
    s, t = V.similarity_matrix(prof), V.similarity_matrix(other)
    assert np.allclose(np.diag(s), 1.0)
    for m in ("rowwise", "upper_triangle"):
        assert V.rsa(s, s, m) == pytest.approx(1.0)
        assert V.rsa(s, t, m) == pytest.approx(V.rsa(1 - s, 1 - t, m))
    # the upper-triangle method ignores the diagonal
    s2 = s.to_numpy().copy()
    np.fill_diagonal(s2, -5.0)
    assert V.rsa(s2, t, "upper_triangle") == pytest.approx(V.rsa(s, t, "upper_triangle"))
    assert V.rsa(s2, t, "rowwise") == pytest.approx(V.rsa(s, t, "rowwise"))
    with pytest.raises(ValueError, match="method"):
        V.rsa(s, t, "full")


def test_profile_pca_and_targets(world):
    truth = world.value_truth(["de", "fa", "ko", "ur"])
    mat = V.target_profiles(truth)
    assert mat.shape == (4, len(VALUE_ITEMS)) and list(mat.columns[:2]) == ["Q1", "Q6"]
    xy = V.profile_pca(mat)
    assert xy.shape == (4, 2) and np.allclose(xy.mean(0), 0, atol=1e-9)
