"""The shared seaborn theme and the recurring plots."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from mlmc import plotting


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_use_theme_sets_figure_size_and_grid():
    plt.rcdefaults()
    plotting.use_theme()
    assert tuple(plt.rcParams["figure.figsize"]) == (6.4, 4.0)
    assert plt.rcParams["axes.grid"] is True


def test_heatmap_annotates_small_tables_and_centres_palette():
    df = pd.DataFrame(np.arange(9, dtype=float).reshape(3, 3) - 4, index=list("abc"), columns=list("abc"))
    ax = plotting.heatmap(df, center=0, fmt=".1f", title="shares")
    labels = [t.get_text() for t in ax.texts]
    assert labels == [f"{v:.1f}" for v in df.to_numpy().ravel()]
    mesh = ax.collections[0]
    assert mesh.norm.vmin == -mesh.norm.vmax, "a centred heatmap has a symmetric colour range"
    assert ax.get_title() == "shares"
    big = pd.DataFrame(np.zeros((30, 30)))
    assert len(plotting.heatmap(big).texts) == 0


def test_bars_with_reference_draws_one_line_per_reference():
    df = pd.DataFrame({"lang": ["l0", "l1", "l2"], "bias": [0.4, 0.55, 0.7]})
    ax = plotting.bars_with_reference(df, x="lang", y="bias", reference={"chance": 0.5, "threshold": 0.62})
    assert [round(p.get_height(), 2) for p in ax.patches] == [0.4, 0.55, 0.7]
    assert sorted(line.get_ydata()[0] for line in ax.get_lines()) == [0.5, 0.62]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["chance (0.5)", "threshold (0.62)"]
    ax2 = plotting.bars_with_reference(df, x="lang", y="bias", reference=0.5)
    assert [t.get_text() for t in ax2.get_legend().get_texts()] == ["reference (0.5)"]
