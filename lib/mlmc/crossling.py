"""Cross-language analysis of TracIn top-k sets (chapter 01; reused by chapters 03 and 05).

Inputs are positions into the training set: ``idx[t]`` holds the k training examples most positively (P_k) or
negatively (N_k) influential for test example t, as returned by :func:`mlmc.influence.topk`. Languages are given
per row, either as a sequence of labels or as a table (``pandas.DataFrame`` or ``datasets.Dataset``, e.g. the task
split itself) with a ``lang`` column; ``*_meta`` tables also carry the content id ``cid`` shared by translations.
Shares are percentages. Formulas: spec ch. 3, §2.5-2.10.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.stats import wilcoxon

from mlmc.errors import check_choice, check_int
from mlmc.influence import topk


def _table(values: Any) -> Any:
    """A ``datasets.Dataset`` as a DataFrame; anything else unchanged."""
    return values.to_pandas() if hasattr(values, "to_pandas") and hasattr(values, "column_names") else values


def _labels(values: Any, name: str) -> np.ndarray:
    values = _table(values)
    if isinstance(values, pd.DataFrame):
        if "lang" not in values.columns:
            raise ValueError(f"parameter {name!r} needs a 'lang' column, got {list(values.columns)}")
        values = values["lang"]
    arr = np.asarray(list(values), dtype=object)
    if arr.ndim != 1 or len(arr) == 0:
        raise ValueError(f"parameter {name!r} must be a non-empty sequence of language labels")
    return arr


def _cids(meta: Any, name: str) -> np.ndarray:
    meta = _table(meta)
    if not isinstance(meta, pd.DataFrame) or "cid" not in meta.columns:
        raise ValueError(f"parameter {name!r} must be a table with columns 'lang' and 'cid'")
    return meta["cid"].to_numpy()


def _langs(
    train_lang: np.ndarray,
    test_lang: np.ndarray,
    langs: Sequence[str] | None,
    allow_empty: bool = False,
    names: tuple[str, str] = ("train_lang", "test_lang"),
) -> list[str]:
    """Language order: ``langs`` or the sorted union. Every label must be in ``langs``; unless ``allow_empty``,
    every listed language must have training or test examples."""
    seen = set(train_lang) | set(test_lang)
    if langs is None:
        return sorted(seen)
    langs = list(langs)
    for name, labels in zip(names, (train_lang, test_lang), strict=True):
        unknown = sorted(set(labels) - set(langs))
        if unknown:
            raise ValueError(f"parameter {name!r} has language(s) {unknown} not in 'langs' {langs}")
    empty = [lang for lang in langs if lang not in seen]
    if empty and not allow_empty:
        raise ValueError(f"parameter 'langs': language(s) {empty} have no training and no test examples")
    return langs


def _index(idx: Any, n_test: int, n_train: int, name: str = "idx") -> np.ndarray:
    arr = np.asarray(idx.cpu() if isinstance(idx, torch.Tensor) else idx)
    if arr.ndim != 2 or arr.shape[0] != n_test or arr.shape[1] == 0:
        raise ValueError(f"parameter {name!r} must have shape [n_test={n_test}, k>0], got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0 or arr.max() >= n_train:
        raise ValueError(f"parameter {name!r} must hold training-row positions in [0, {n_train})")
    return arr


def _test_rows(test_lang: np.ndarray, langs: list[str]) -> list[str]:
    return [lang for lang in langs if (test_lang == lang).any()]


def language_shares(idx: Any, train_lang: Any, test_lang: Any, langs: Sequence[str] | None = None) -> pd.DataFrame:
    """C±[a, b] (Fig. 3.2): % of the top-k training examples of test language a that are in language b.

    Rows (test languages with test examples) sum to 100; columns are all of ``langs``.
    """
    train_l, test_l = _labels(train_lang, "train_lang"), _labels(test_lang, "test_lang")
    order = _langs(train_l, test_l, langs)
    top_lang = train_l[_index(idx, len(test_l), len(train_l))]
    rows = _test_rows(test_l, order)
    table = [[100.0 * (top_lang[test_l == a] == b).mean() for b in order] for a in rows]
    return pd.DataFrame(table, index=pd.Index(rows, name="test"), columns=pd.Index(order, name="train"))


def item_shares(idx: Any, train_lang: Any, langs: Sequence[str] | None = None) -> np.ndarray:
    """Per test example, % of its top-k training examples in each language, ``[n_test, n_langs]`` (rows sum to
    100; columns in the order of ``langs``). The per-item form of :func:`language_shares`, e.g. for bootstrap
    intervals over test items (chapter 03)."""
    train_l = _labels(train_lang, "train_lang")
    order = _langs(train_l, np.asarray([], dtype=object), langs, allow_empty=True)
    arr = np.asarray(idx.cpu() if isinstance(idx, torch.Tensor) else idx)
    top_lang = train_l[_index(arr, len(arr), len(train_l))]
    return np.stack([100.0 * (top_lang == b).mean(axis=1) for b in order], axis=1)


def data_share(train_lang: Any, langs: Sequence[str] | None = None) -> pd.Series:
    """% of the training set in each language: the reference line of C± (20% each for 5 balanced languages;
    0 for a listed language without training rows, e.g. the held-out one of a zero-shot run)."""
    train_l = _labels(train_lang, "train_lang")
    order = _langs(train_l, np.asarray([], dtype=object), langs, allow_empty=True)
    return pd.Series([100.0 * (train_l == lang).mean() for lang in order], index=pd.Index(order, name="train"))


def mean_influence(scores: Any, train_lang: Any, test_lang: Any, langs: Sequence[str] | None = None) -> pd.DataFrame:
    """Ī[a, b] (Tab. 3.3): mean score over test examples of language a and all training examples of language b
    (NaN where b has no training examples, e.g. the held-out language of a zero-shot run)."""
    train_l, test_l = _labels(train_lang, "train_lang"), _labels(test_lang, "test_lang")
    order = _langs(train_l, test_l, langs)
    s = np.asarray(scores.cpu() if isinstance(scores, torch.Tensor) else scores, dtype=float)
    if s.shape != (len(test_l), len(train_l)):
        raise ValueError(f"parameter 'scores' must have shape [{len(test_l)}, {len(train_l)}], got {s.shape}")
    rows = _test_rows(test_l, order)
    table = [[s[test_l == a][:, train_l == b].mean() if (train_l == b).any() else np.nan for b in order] for a in rows]
    return pd.DataFrame(table, index=pd.Index(rows, name="test"), columns=pd.Index(order, name="train"))


def reinforcing_rate(
    idx: Any, train_meta: pd.DataFrame, test_meta: Any, langs: Sequence[str] | None = None
) -> pd.DataFrame:
    """Reinforcing vs complementary other-language examples (Tab. 3.4; parallel data).

    For test t of language a: R_in(t) = content ids of the in-language top-k examples, O(t) = the other-language
    top-k examples. Per test language: ``reinforcing`` = 100·Σ_t |{z ∈ O(t): cid(z) ∈ R_in(t)}| / Σ_t |O(t)|
    (pooled), ``complementary`` = 100 − reinforcing, ``reinforcing_per_test`` = mean of the per-t ratios, and
    ``chance``: the expected pooled rate if O(t) were drawn at random from the other-language training rows,
    Σ_t |O(t)|·c(t) / Σ_t |O(t)| with c(t) the share of other-language rows whose cid is in R_in(t)
    (= |R_in(t)| / n_per_lang for balanced parallel data).
    """
    train_l, test_l = _labels(train_meta, "train_meta"), _labels(test_meta, "test_meta")
    cid = _cids(train_meta, "train_meta")
    order = _langs(train_l, test_l, langs, names=("train_meta", "test_meta"))
    top = _index(idx, len(test_l), len(train_l))
    rows = []
    for a in _test_rows(test_l, order):
        other_cids = cid[train_l != a]
        hits = n_other = chance = 0.0
        ratios = []
        for t in np.flatnonzero(test_l == a):
            in_lang = train_l[top[t]] == a
            r_in = np.unique(cid[top[t][in_lang]])
            o = top[t][~in_lang]
            h = np.isin(cid[o], r_in).sum()
            hits, n_other = hits + h, n_other + len(o)
            chance += len(o) * (np.isin(other_cids, r_in).mean() if len(other_cids) else 0.0)
            if len(o):
                ratios.append(h / len(o))
        rate = 100.0 * hits / n_other if n_other else np.nan
        rows.append(
            {
                "test": a,
                "reinforcing": rate,
                "complementary": 100.0 - rate,
                "reinforcing_per_test": 100.0 * np.mean(ratios) if ratios else np.nan,
                "chance": 100.0 * chance / n_other if n_other else np.nan,
                "n_other": int(n_other),
                "n_tests": int((test_l == a).sum()),
            }
        )
    return pd.DataFrame(rows).set_index("test")


def translation_share(
    idx: Any, train_meta: pd.DataFrame, test_meta: pd.DataFrame, langs: Sequence[str] | None = None
) -> pd.DataFrame:
    """% of the top-k training examples that are translations of the test example itself (same ``cid``, other
    language), per test language; ``available`` is the mean number of such translations in the training set and
    ``chance`` the share expected from a random top-k (their count over the training-set size). Needs test rows
    whose content also occurs, translated, in the training set (a translation probe)."""
    train_l, test_l = _labels(train_meta, "train_meta"), _labels(test_meta, "test_meta")
    cid, test_cid = _cids(train_meta, "train_meta"), _cids(test_meta, "test_meta")
    order = _langs(train_l, test_l, langs, names=("train_meta", "test_meta"))
    top = _index(idx, len(test_l), len(train_l))
    is_translation = (cid[top] == test_cid[:, None]) & (train_l[top] != test_l[:, None])
    n_available = np.array([((cid == c) & (train_l != a)).sum() for c, a in zip(test_cid, test_l, strict=True)])
    rows = []
    for a in _test_rows(test_l, order):
        mask = test_l == a
        rows.append(
            {
                "test": a,
                "translations": 100.0 * is_translation[mask].mean(),
                "available": n_available[mask].mean(),
                "chance": 100.0 * n_available[mask].mean() / len(train_l),
                "n_tests": int(mask.sum()),
            }
        )
    return pd.DataFrame(rows).set_index("test")


def zero_shot_recovery(
    idx_full: Any, idx_zs: Any, train_full: pd.DataFrame, train_zs: pd.DataFrame, test_meta: Any
) -> pd.DataFrame:
    """Z1, Z2 (§3.8.3): how much of the full model's top-k a zero-shot model (trained without the test language)
    finds again, per test language. Examples are matched across the two training sets by (lang, cid).

    Z1 = 100·Σ_t |{z ∈ P^z(t): cid(z) ∈ R^f_in(t)}| / (k·|T|): translations of the full model's in-language
    examples; Z2 = 100·Σ_t |O^f(t) ∩ P^z(t)| / Σ_t |O^f(t)|: the full model's other-language examples found again.
    """
    lang_f, lang_z = _labels(train_full, "train_full"), _labels(train_zs, "train_zs")
    cid_f, cid_z = _cids(train_full, "train_full"), _cids(train_zs, "train_zs")
    test_l = _labels(test_meta, "test_meta")
    top_f = _index(idx_full, len(test_l), len(lang_f), "idx_full")
    top_z = _index(idx_zs, len(test_l), len(lang_z), "idx_zs")
    rows = []
    for a in sorted(set(test_l)):
        z1 = z2 = n_other = 0
        tests = np.flatnonzero(test_l == a)
        for t in tests:
            in_lang = lang_f[top_f[t]] == a
            r_in = set(cid_f[top_f[t][in_lang]])
            other_f = set(zip(lang_f[top_f[t][~in_lang]], cid_f[top_f[t][~in_lang]], strict=True))
            found_z = set(zip(lang_z[top_z[t]], cid_z[top_z[t]], strict=True))
            z1 += sum(c in r_in for c in cid_z[top_z[t]])
            z2 += len(other_f & found_z)
            n_other += len(other_f)
        rows.append(
            {
                "test": a,
                "Z1": 100.0 * z1 / (top_z.shape[1] * len(tests)),
                "Z2": 100.0 * z2 / n_other if n_other else np.nan,
                "n_tests": len(tests),
            }
        )
    return pd.DataFrame(rows).set_index("test")


def per_epoch_shares(
    per_epoch: Any, k: int, train_lang: Any, test_lang: Any, langs: Sequence[str] | None = None, sign: int = 1
) -> pd.DataFrame:
    """C± per checkpoint (Fig. 3.3, A.7-A.8): rank with I_e instead of I. Long table with columns ``epoch``
    (1-based), ``test``, ``train``, ``share``."""
    check_choice("sign", sign, (1, -1))
    scores = torch.as_tensor(per_epoch)
    if scores.ndim != 3:
        raise ValueError(f"parameter 'per_epoch' must have shape [E, n_test, n_train], got {tuple(scores.shape)}")
    check_int("k", k, 1)
    frames = []
    for e in range(scores.shape[0]):
        shares = language_shares(topk(scores[e], k, sign), train_lang, test_lang, langs)
        frames.append(shares.stack().rename("share").reset_index().assign(epoch=e + 1))
    return pd.concat(frames, ignore_index=True)[["epoch", "test", "train", "share"]]


def wilcoxon_epochs(per_epoch: Any, test_lang: Any | None = None) -> pd.DataFrame:
    """Wilcoxon signed-rank test between the scores of every pair of checkpoints (§2.9), paired over (t, z), per
    test language (one group ``"all"`` without ``test_lang``). Columns: ``test``, ``epoch_a``, ``epoch_b``
    (1-based), ``statistic``, ``pvalue``, ``n``."""
    scores = np.asarray(per_epoch.cpu() if isinstance(per_epoch, torch.Tensor) else per_epoch, dtype=float)
    if scores.ndim != 3 or scores.shape[0] < 2:
        raise ValueError(f"parameter 'per_epoch' must have shape [E>=2, n_test, n_train], got {scores.shape}")
    if test_lang is None:
        groups = {"all": np.ones(scores.shape[1], dtype=bool)}
    else:
        test_l = _labels(test_lang, "test_lang")
        if len(test_l) != scores.shape[1]:
            raise ValueError(f"parameter 'test_lang' needs {scores.shape[1]} labels, got {len(test_l)}")
        groups = {a: test_l == a for a in sorted(set(test_l))}
    rows = []
    for a, mask in groups.items():
        for e1, e2 in itertools.combinations(range(scores.shape[0]), 2):
            x, y = scores[e1][mask].ravel(), scores[e2][mask].ravel()
            res = wilcoxon(x, y)
            rows.append(
                {"test": a, "epoch_a": e1 + 1, "epoch_b": e2 + 1}
                | {"statistic": float(res.statistic), "pvalue": float(res.pvalue), "n": len(x)}
            )
    return pd.DataFrame(rows)
