"""One seaborn theme and the book's recurring plots: annotated heatmaps and bars with reference lines (all chapters).

Every chapter calls ``use_theme()`` once in its setup cell, so all figures share fonts, palette and size.
"""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes

_ANNOTATE_MAX_CELLS = 400


def use_theme() -> None:
    """Set the book's seaborn theme: white grid, colour-blind palette, figures of 6.4 x 4 inches."""
    sns.set_theme(
        context="notebook",
        style="whitegrid",
        palette="colorblind",
        rc={"figure.figsize": (6.4, 4.0), "figure.dpi": 100, "savefig.dpi": 150, "axes.titleweight": "bold"},
    )


def heatmap(
    df: pd.DataFrame,
    ax: Axes | None = None,
    center: float | None = None,
    fmt: str = ".2f",
    annot: bool | None = None,
    cmap: str | None = None,
    title: str | None = None,
    **kwargs,
) -> Axes:
    """Heatmap of a square or rectangular table (e.g. language x language influence shares, similarities).

    With ``center`` a diverging palette is centred on it, else a sequential one. Cells are annotated with ``fmt``
    when ``annot`` is True, or by default when the table has at most 400 cells. Extra ``kwargs`` go to seaborn.
    """
    if ax is None:
        _, ax = plt.subplots()
    if annot is None:
        annot = df.size <= _ANNOTATE_MAX_CELLS
    cmap = cmap or ("vlag" if center is not None else "mako_r")
    sns.heatmap(df, ax=ax, center=center, annot=annot, fmt=fmt, cmap=cmap, square=df.shape[0] == df.shape[1], **kwargs)
    ax.set_title(title or "")
    return ax


def bars_with_reference(
    df: pd.DataFrame,
    x: str,
    y: str,
    hue: str | None = None,
    reference: float | Mapping[str, float] | None = None,
    ax: Axes | None = None,
    title: str | None = None,
) -> Axes:
    """Bar plot of tidy ``df`` with horizontal reference lines (chance level, a significance threshold, a thesis
    number). ``reference`` is one value, labelled "reference", or a mapping from labels to values."""
    if ax is None:
        _, ax = plt.subplots()
    sns.barplot(data=df, x=x, y=y, hue=hue, ax=ax, errorbar=None)
    refs = {"reference": reference} if isinstance(reference, int | float) else dict(reference or {})
    for (label, value), style in zip(refs.items(), ["--", ":", "-.", (0, (5, 5))] * len(refs), strict=False):
        ax.axhline(value, color="0.3", linestyle=style, linewidth=1.2, label=f"{label} ({value:g})")
    if refs or hue:
        ax.legend(frameon=False, fontsize="small")
    ax.set_title(title or "")
    return ax
