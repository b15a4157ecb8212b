"""Typology cosines and nearest training language (Ch. 02; spec ch4 §8 test 14)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import mlmc.typology as typology
from mlmc.typology import cosine_similarity_matrix, nearest_language, uriel_vectors

TOY = {
    "svo_pre": np.array([1.0, 0, 0, 1, 1]),
    "sov_post": np.array([0.0, 1, 0, 0, 0]),
    "vso_pre": np.array([0.0, 0, 1, 1, 1]),
    "test": np.array([0.0, 1, 0, 0, 1]),
}


def test_nearest_language_on_toy_vectors():
    sources = ["svo_pre", "sov_post", "vso_pre"]
    lang, cos = nearest_language("test", sources, TOY)
    t = TOY["test"]
    expected = {s: t @ TOY[s] / np.linalg.norm(t) / np.linalg.norm(TOY[s]) for s in sources}
    assert lang == max(expected, key=expected.get) == "sov_post"
    assert cos == pytest.approx(expected["sov_post"])
    assert nearest_language(TOY["svo_pre"], sources, TOY) == ("svo_pre", pytest.approx(1.0))
    tie = {"p": np.array([1.0, 0]), "q": np.array([0.0, 1]), "t": np.array([1.0, 1])}
    assert nearest_language("t", ["q", "p"], tie)[0] == "q"  # ties go to the first source


def test_cosine_similarity_matrix():
    sim = cosine_similarity_matrix(TOY)
    assert list(sim.index) == list(TOY) and np.allclose(sim.values, sim.values.T)
    assert np.allclose(np.diag(sim.values), 1.0)
    a, b = TOY["svo_pre"], TOY["vso_pre"]
    assert sim.loc["svo_pre", "vso_pre"] == pytest.approx(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_bad_input():
    with pytest.raises(ValueError, match="'sources'"):
        nearest_language("test", [], TOY)
    with pytest.raises(ValueError, match="no vector"):
        nearest_language("xx", ["svo_pre"], TOY)
    with pytest.raises(ValueError, match="'feature'"):
        uriel_vectors(["fao"], feature="syntax_wals")


def test_missing_lang2vec_explains_install(monkeypatch):
    monkeypatch.setattr(typology.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match=r"mlmc\[full\]"):
        uriel_vectors(["fao"])


@pytest.mark.skipif(importlib.util.find_spec("lang2vec") is None, reason="lang2vec not installed (extra 'full')")
def test_uriel_transfer_languages_of_the_thesis():
    train = ["ara", "ces", "est", "hin", "ita", "nor", "rus"]
    assert nearest_language("fao", train)[0] == "nor"
    assert nearest_language("hun", train)[0] == "est"
    assert nearest_language("tam", train)[0] == "hin"
    vecs = uriel_vectors(["no", "nor", "fao"])
    assert vecs["no"].shape == (103,) and np.array_equal(vecs["no"], vecs["nor"])
    with pytest.raises(ValueError, match="unknown to URIEL"):
        uriel_vectors(["qqq"])
