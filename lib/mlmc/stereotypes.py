"""Stereotypes in masked LMs: stereotype sets from autocomplete records, cloze elicitation, recall, emotion profiles
and representational similarity of profiles (chapter 04; the profile and RSA helpers also serve chapter 05).

The method follows Choenni, Shutova & van Rooij (2021) and thesis chapter 6:

- a *stereotype set* is built from search-autocomplete suggestions to queries such as "why are {group} so": the
  completion after the query's last word is kept when it is one attribute word that is neither neutral nor a
  trend-sensitive reference (:func:`parse_autocomplete`, :func:`build_stereotype_set`);
- a masked LM is probed with the same templates and a mask in the attribute slot; candidates are re-ranked by
  *typicality*, log P(attr | group) - log P(attr | masked group) (Kurita et al. 2019; :func:`rerank_by_typicality`);
- recall@k of the stereotype set measures how many human stereotypes the model ranks in its top k (:func:`recall_at_k`);
- an *emotion profile* of a group is the share of the model's top predictions carrying each emotion label of an
  emotion lexicon (:func:`emotion_profile`); profiles of two models are compared by representational similarity
  analysis (:func:`rsm`, :func:`rsa_spearman`, :func:`delta_rho`).
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from mlmc.errors import check_choice, check_subset

EMOTIONS = ("fear", "joy", "sadness", "trust", "surprise", "anticipation", "disgust", "anger", "negative", "positive")
MASK = "[MASK]"
DATASET_COLUMNS = ("input", "target_category", "target_group", "completion", "search_engine")
LEXICON_SOURCES = ("world", "nrc_tsv", "nrclex")
_WORD = re.compile(r"[a-z][a-z'\-]*$")


# --- social groups and templates (thesis App. D) --------------------------------------------------------------------
def _groups_file() -> dict:
    with resources.files("mlmc.reference").joinpath("ch6_social_groups.json").open("r", encoding="utf-8") as fh:
        return json.load(fh)


def load_social_groups() -> dict[str, list[str]]:
    """The thesis's social groups per category (9 categories, 374 groups), spelled as in the released dataset."""
    return {c: list(g) for c, g in _groups_file()["groups"].items()}


def templates_for(category: str) -> list[str]:
    """The 5 autocomplete query templates of a category (``{g}`` marks the group): countries use "is"."""
    check_choice("category", category, sorted(_groups_file()["groups"]))
    return list(_groups_file()["templates"]["country" if category == "country" else "people"])


def check_templates(name: str, templates: Sequence[str], *, group_slot: str = "{group}", mask: str = MASK) -> list[str]:
    """Return ``templates`` if each holds ``group_slot`` and ``mask`` exactly once; else raise naming ``name``."""
    if isinstance(templates, str) or not len(templates):
        raise ValueError(f"parameter {name!r} must be a non-empty list of templates, got {templates!r}")
    for t in templates:
        if not isinstance(t, str) or t.count(mask) != 1 or t.count(group_slot) != 1:
            raise ValueError(
                f"parameter {name!r}: each template needs exactly one {group_slot!r} and one mask token {mask!r}, "
                f"got {t!r}"
            )
    return list(templates)


def query_probe(query: str) -> str:
    """The cloze text of an autocomplete query: ``"why are {g} so"`` -> ``"why are {g} so [MASK] ?"`` (thesis §6.4)."""
    return f"{query.strip()} {MASK} ?"


# --- stereotype-set construction (thesis §6.3) ----------------------------------------------------------------------
def _words(text: str) -> list[str]:
    return text.lower().split()


def parse_autocomplete(template: str, group: str, suggestion: str) -> str | None:
    """The completion of one autocomplete suggestion, or ``None`` when the suggestion does not match the query.

    The query is ``template`` with ``{g}`` replaced by ``group``. A suggestion is kept only if it contains every
    query word as a whole word, the group string, and the query's last word followed by a space; the completion is
    the text after the first `` <last word> `` (the released code's rule, with whole-word matching).
    """
    query = template.replace("{g}", group).lower().strip()
    text = " ".join(_words(suggestion))
    words = set(text.split())
    qwords = query.split()
    if any(w not in words for w in qwords) or f" {group.lower()} " not in f" {text} ":
        return None
    marker = f" {qwords[-1]} "
    # search after the group so that an earlier "so" in the query does not cut the completion
    start = f" {text} ".find(f" {group.lower()} ")
    at = f" {text} ".find(marker, start)
    if at < 0:
        return None
    completion = f" {text} "[at + len(marker) :].strip()
    return completion or None


def completion_filter(
    completion: str, attributes: Iterable[str], *, neutral: Iterable[str] = (), trend: Iterable[str] = ()
) -> str:
    """Why a completion is dropped from the single-word stereotype set, or ``"kept"``.

    Reasons, in the order of the thesis's manual cleaning: ``"multi-word"``, ``"trend"`` (a trend-sensitive
    reference), ``"neutral"`` (e.g. *called*), ``"not an attribute"`` (not an attribute word of the vocabulary).
    """
    if len(completion.split()) != 1:
        return "multi-word"
    if completion in set(trend):
        return "trend"
    if completion in set(neutral):
        return "neutral"
    if completion not in set(attributes) or not _WORD.match(completion):
        return "not an attribute"
    return "kept"


def build_stereotype_set(
    records: pd.DataFrame, attributes: Iterable[str], *, neutral: Iterable[str] = (), trend: Iterable[str] = ()
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stereotype set (released-dataset columns) from raw autocomplete records, and the fate of every record.

    ``records`` has columns ``template, target_category, target_group, suggestion, search_engine``. Completions
    are extracted with :func:`parse_autocomplete` and filtered with :func:`completion_filter`; a (input, group,
    completion) triple returned by several engines becomes one row labelled ``"multiple"``, as in the released data.
    Returns ``(dataset, log)``; ``log`` adds ``input``, ``completion`` and ``reason`` to each record.
    """
    missing = {"template", "target_category", "target_group", "suggestion", "search_engine"} - set(records.columns)
    if missing:
        raise ValueError(f"parameter 'records' lacks column(s) {sorted(missing)}")
    attributes = set(attributes)
    log = records.copy()
    log["input"] = [t.replace("{g}", g).lower() for t, g in zip(log.template, log.target_group, strict=True)]
    log["completion"] = [
        parse_autocomplete(t, g, s) for t, g, s in zip(log.template, log.target_group, log.suggestion, strict=True)
    ]
    log["reason"] = [
        completion_filter(c, attributes, neutral=neutral, trend=trend) if isinstance(c, str) else "no match"
        for c in log.completion
    ]
    kept = log[log.reason == "kept"]
    keys = ["input", "target_category", "target_group", "completion"]
    engines = kept.groupby(keys, sort=False)["search_engine"].agg(lambda e: sorted(set(e)))
    data = engines.reset_index()
    data["search_engine"] = [e[0] if len(e) == 1 else "multiple" for e in data.search_engine]
    return data[list(DATASET_COLUMNS)].reset_index(drop=True), log


def load_stereo_dataset(path: str | Path, *, categories: Sequence[str] | None = None) -> pd.DataFrame:
    """The released stereotype dataset (tab-separated ``stereo_dataset.csv`` / ``single_word_stereo_dataset.csv``).

    Values carry trailing newlines in the released file; they are stripped, and input, group and completion are
    lowercased. ``categories`` keeps only those categories (unknown names raise ``ValueError``).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"parameter 'stereo_dataset_path': no file at {str(path)!r}")
    df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    missing = set(DATASET_COLUMNS) - set(df.columns)
    if missing:
        raise ValueError(f"parameter 'stereo_dataset_path': {path.name} lacks column(s) {sorted(missing)}")
    df = df[list(DATASET_COLUMNS)].apply(lambda col: col.str.strip())
    for col in ("input", "target_group", "completion"):
        df[col] = df[col].str.lower()
    if categories is not None:
        check_subset("categories", categories, sorted(df.target_category.unique()))
        df = df[df.target_category.isin(categories)]
    return df.reset_index(drop=True)


# --- elicitation and recall (thesis §6.4) ---------------------------------------------------------------------------
def rerank_by_typicality(post_lp: np.ndarray, prior_lp: np.ndarray, cand_ids: Sequence[int]) -> list[tuple[int, float]]:
    """Candidates re-ranked by typicality log P_post - log P_prior (Eqs. 6.1-6.3), best first.

    ``post_lp`` / ``prior_lp`` are log-probabilities indexed by candidate id; the sort is stable, so ties keep
    the original (post) order, and no candidate is added or removed.
    """
    post, prior = np.asarray(post_lp, dtype=np.float64), np.asarray(prior_lp, dtype=np.float64)
    ids = list(cand_ids)
    scores = np.array([post[i] - prior[i] for i in ids])
    order = np.argsort(-scores, kind="stable")
    return [(ids[j], float(scores[j])) for j in order]


def recall_at_k(
    ranked: Mapping[str, Sequence[str]],
    gold: pd.DataFrame,
    ks: Sequence[int],
    *,
    key: str = "input",
    by: str | None = "target_category",
) -> pd.DataFrame:
    """recall@k of a stereotype set: the share of gold rows whose completion is in ``ranked[row[key]][:k]``.

    Duplicate gold rows count separately (as in the released code); rows whose ``key`` was not probed are left
    out. Returns one row per (group of ``by``, k) with ``recall`` and ``n`` (gold rows behind it).
    """
    rows = gold[gold[key].isin(list(ranked))]
    out = []
    groups = [("all", rows)] if by is None else list(rows.groupby(by, sort=True))
    for name, part in groups:
        for k in ks:
            hits = [c in ranked[q][:k] for q, c in zip(part[key], part.completion, strict=True)]
            out.append({by or "subset": name, "k": int(k), "recall": float(np.mean(hits)), "n": len(hits)})
    return pd.DataFrame(out)


def attribute_shift(pre: Sequence[str], post: Sequence[str]) -> dict[str, list[str]]:
    """Attributes removed (in ``pre`` only), added (in ``post`` only) and persisted (in both), in list order."""
    pre_u, post_u = list(dict.fromkeys(pre)), list(dict.fromkeys(post))
    return {
        "removed": [w for w in pre_u if w not in set(post_u)],
        "added": [w for w in post_u if w not in set(pre_u)],
        "persisted": [w for w in pre_u if w in set(post_u)],
    }


# --- emotion lexicons and profiles (thesis §6.5) --------------------------------------------------------------------
def load_lexicon(source: str = "world", path: str | Path | None = None) -> dict[str, frozenset[str]]:
    """An emotion lexicon: word -> set of its labels among :data:`EMOTIONS` (words with no label map to ∅).

    - ``"world"``: the project's own small lexicon of the synthetic world's attribute words (labels written for
      this project, CC0; not NRC EmoLex);
    - ``"nrc_tsv"``: a file in NRC EmoLex's word-level layout ``word<TAB>emotion<TAB>0|1`` (the official file is
      free for research only; pass its path);
    - ``"nrclex"``: the word list bundled with the PyPI package ``NRCLex`` if installed (MIT code, research-only
      NRC-derived data; it omits words without labels, so coverage denominators differ).
    """
    check_choice("lexicon", source, LEXICON_SOURCES)
    if source == "world":
        from mlmc.world import ATTRIBUTES

        return {w: frozenset(labels) for w, labels in ATTRIBUTES.items()}
    if source == "nrc_tsv":
        if path is None or not Path(path).is_file():
            raise ValueError(f"parameter 'lexicon_path' must name an NRC word-level TSV file, got {path!r}")
        lex: dict[str, set[str]] = {}
        with open(path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                parts = line.rstrip("\n").split("\t")
                if not line.strip():
                    continue
                if len(parts) != 3 or parts[2] not in ("0", "1"):
                    raise ValueError(f"parameter 'lexicon_path': line {n} is not 'word<TAB>emotion<TAB>0|1'")
                labels = lex.setdefault(parts[0].lower(), set())
                if parts[2] == "1" and parts[1] in EMOTIONS:
                    labels.add(parts[1])
        return {w: frozenset(v) for w, v in lex.items()}
    try:
        data = resources.files("nrclex").joinpath("data", "nrc_en.json").read_text(encoding="utf-8")
    except ModuleNotFoundError as err:
        raise ValueError("parameter 'lexicon'='nrclex' needs the NRCLex package: pip install nrclex") from err
    return {w.lower(): frozenset(x for x in labels if x in EMOTIONS) for w, labels in json.loads(data).items()}


def emotion_profile(words: Iterable[str], lexicon: Mapping[str, frozenset[str]]) -> tuple[np.ndarray, float, list[str]]:
    """Scores 0-100 per emotion (order :data:`EMOTIONS`), lexicon coverage, and the covered words.

    ``s_e = 100 * |{w covered : e in labels(w)}| / |covered|`` over the unique words; covered words without any label
    count in the denominator. No covered word gives all-zero scores and coverage 0 (no division by zero).
    """
    unique = list(dict.fromkeys(w.strip().lower() for w in words))
    covered = [w for w in unique if w in lexicon]
    scores = np.zeros(len(EMOTIONS))
    for w in covered:
        scores += np.array([e in lexicon[w] for e in EMOTIONS], dtype=float)
    if covered:
        scores *= 100.0 / len(covered)
    return scores, (len(covered) / len(unique) if unique else 0.0), covered


# --- representational similarity (thesis §6.5-6.6) ------------------------------------------------------------------
def rsm(profiles: np.ndarray) -> np.ndarray:
    """Similarity matrix of profile rows: ``S = 1 - (cosine distance + 1e-11)``, divided by its maximum."""
    v = np.asarray(profiles, dtype=np.float64)
    norm = np.linalg.norm(v, axis=1, keepdims=True)
    unit = np.divide(v, norm, out=np.zeros_like(v), where=norm > 0)
    s = 1.0 - ((1.0 - unit @ unit.T) + 1e-11)
    return s / s.max()


def rsa_spearman(a: np.ndarray, b: np.ndarray) -> tuple[float, int]:
    """ρ between two models' profiles of the same groups: the mean over groups of the Spearman correlation of
    their rows of :func:`rsm` (full rows, diagonal included). Constant rows give NaN; returns (ρ, number of NaNs)."""
    sa, sb = rsm(a), rsm(b)
    if sa.shape != sb.shape:
        raise ValueError(f"rsa_spearman: profile tables differ in shape ({sa.shape} vs {sb.shape})")
    rhos = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for ra, rb in zip(sa, sb, strict=True):
            rhos.append(spearmanr(ra, rb).statistic if np.ptp(ra) > 0 and np.ptp(rb) > 0 else np.nan)
    rhos = np.asarray(rhos, dtype=float)
    n_nan = int(np.isnan(rhos).sum())
    return (float(np.nanmean(rhos)) if n_nan < len(rhos) else float("nan")), n_nan


def delta_rho(pre: pd.DataFrame, post: pd.DataFrame, categories: Mapping[str, Sequence[str]]) -> pd.Series:
    """Δρ_c = ρ_c(pre, post) - 1 per category (0: profiles unchanged); rows of both tables are groups."""
    out = {}
    for cat, groups in categories.items():
        gs = [g for g in groups if g in pre.index and g in post.index]
        if len(gs) >= 2:
            out[cat] = rsa_spearman(pre.loc[gs].to_numpy(), post.loc[gs].to_numpy())[0] - 1.0
    return pd.Series(out, name="delta_rho", dtype=float)


def fraction_subset(texts: Sequence[str], fraction: float) -> list[str]:
    """The first ⌈fraction·N⌉ texts (thesis §6.6: fine-tuning on 10/25/50/100% of a source's articles)."""
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction <= 1:
        raise ValueError(f"parameter 'fractions' must hold numbers in (0, 1], got {fraction!r}")
    return list(texts[: math.ceil(fraction * len(texts))])
