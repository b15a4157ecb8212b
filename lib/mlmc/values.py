"""WVS-style value probes, cultural profiles, target profiles and shift metrics (chapters 05 and 06).

A *probe* is a cloze sentence with one blank (:data:`MASK`) and two answer options, one row per (language, item);
its columns are the same for the synthetic world (:func:`world_probes`, with the planted answer rate ``target_p1``)
and for the real probe files of Arora et al. (2023) (:func:`load_probes`, ``target_p1`` NaN). A *cultural profile*
of a model in a language is P(option 1) per item (:func:`probe_profile`); a *target profile* is the same vector
for a population: planted in the world, or a survey aggregate (:func:`load_aggregates`, not shipped with the book).
Shift metrics (agreement, % unchanged, unique shifts, alignment with targets, RSA) follow thesis ch. 7.
"""

from __future__ import annotations

import io
import re
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.decomposition import PCA

from mlmc.errors import check_choice, check_subset

if TYPE_CHECKING:
    from mlmc.world import World

MASK = "[MASK]"
PROBE_COLUMNS = ("lang", "qid", "category", "template", "opt1", "opt2", "target_p1")

# WVS-7 questionnaire sections (number -> name) with their question-number ranges.
CATEGORIES: dict[int, str] = {
    1: "social values",
    2: "happiness",
    3: "social capital",
    4: "economic values",
    5: "corruption",
    6: "migration",
    7: "security",
    8: "postmaterialist index",
    9: "science & technology",
    10: "religious values",
    11: "ethical values",
    12: "political interest",
    13: "political culture",
}
_RANGES = ((1, 45), (46, 56), (57, 105), (106, 111), (112, 120), (121, 130), (131, 151), (152, 157), (158, 163))
_RANGES += ((164, 175), (176, 198), (199, 234), (235, 259))
EXCLUDED = (4, 8)  # no probes in the thesis (Table 7.1)
# Probe language -> WVS country (ISO3), thesis Table 7.2.
LANG2COUNTRY: dict[str, str] = {
    "en": "USA",
    "ro": "ROU",
    "el": "GRC",
    "ur": "PAK",
    "fa": "IRN",
    "tl": "PHL",
    "id": "IDN",
    "de": "DEU",
    "ms": "MYS",
    "bn": "BGD",
    "sr": "SRB",
    "tr": "TUR",
    "vi": "VNM",
    "ko": "KOR",
}
_QID = re.compile(r"^[Qq]?(\d+)([a-z]?)$")


def normalise_qid(qid: str | int) -> str:
    """``"Q12"`` for ``12``, ``"12"`` or ``"q12"``; sub-items keep their letter (``"110a"`` -> ``"Q110a"``)."""
    m = _QID.match(str(qid).strip())
    if not m:
        raise ValueError(f"parameter 'qid': {qid!r} is not a WVS question id such as 'Q6' or '110a'")
    return f"Q{int(m.group(1))}{m.group(2)}"


def category_of(qid: str | int) -> str:
    """The WVS-7 section name of a question id (e.g. ``"Q165"`` -> ``"religious values"``)."""
    num = int(_QID.match(normalise_qid(qid)).group(1))
    for k, (lo, hi) in enumerate(_RANGES, 1):
        if lo <= num <= hi:
            return CATEGORIES[k]
    raise ValueError(f"parameter 'qid': {qid!r} lies outside the WVS-7 value sections (Q1-Q259)")


def _frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=list(PROBE_COLUMNS))
    df["target_p1"] = df["target_p1"].astype(float)
    return df.sort_values(["lang", "qid"], key=_sort_key).reset_index(drop=True)


def _sort_key(col: pd.Series) -> pd.Series:
    if col.name != "qid":
        return col
    return col.map(lambda q: (int(_QID.match(q).group(1)), _QID.match(q).group(2)))


def sort_qids(qids) -> list[str]:
    """Question ids in questionnaire order (``Q2`` before ``Q10``, ``Q110a`` before ``Q110b``)."""
    return sorted(qids, key=lambda q: (int(_QID.match(q).group(1)), _QID.match(q).group(2)))


# --- probes ---------------------------------------------------------------------------------------------------------
def world_probes(world: World, langs: Sequence[str]) -> pd.DataFrame:
    """The world's value probes: one row per (lang, qid) with the cloze template (blank = :data:`MASK`), the two
    answer words in that language and the planted P(option 1) of :meth:`World.value_truth` as ``target_p1``.

    The template is the value statement of the world's pretraining corpus ("SUBJECT is OPTION .") with the option
    replaced by the blank. Used by ch. 05 and 06.
    """
    langs = world.check_langs(langs)
    truth = world.value_truth(langs)
    rows = [
        dict(
            lang=r.lang,
            qid=r.qid,
            category=category_of(r.qid),
            template=world.cloze(r.lang, r.subject, MASK, det=None),
            opt1=world.word(r.lang, r.opt1),
            opt2=world.word(r.lang, r.opt2),
            target_p1=r.p_opt1,
        )
        for r in truth.itertuples()
    ]
    return _frame(rows)


def _read_probe_table(text: str, lang: str, kind: str) -> list[dict]:
    """Rows of one real probe file: tab-separated ``index, qid, template, opt1, opt2`` with a header line (Hofstede
    items have no WVS section: their category is ``"hofstede"``)."""
    table = pd.read_csv(io.StringIO(text), sep="\t", header=0, dtype=str, keep_default_na=False, quoting=3)
    if table.shape[1] < 5:
        raise ValueError(f"probe file for {lang!r}: expected 5 tab-separated columns, got {table.shape[1]}")
    rows = []
    for rec in table.iloc[:, -4:].itertuples(index=False):
        qid, template, o1, o2 = (str(x).strip() for x in rec)
        q = normalise_qid(qid)
        if template.count(MASK) != 1:  # a few translations lost the blank: not a probe
            rows.append(dict(lang=lang, qid=q, bad=True))
            continue
        cat = category_of(q) if kind == "wvs" else kind
        rows.append(dict(lang=lang, qid=q, category=cat, template=template, opt1=o1, opt2=o2))
    return rows


def _probe_sources(path: Path, kind: str) -> dict[str, str]:
    """``lang -> file text`` from a zip (``probes/<kind>/<lang>.csv``), a directory of ``<lang>.csv|tsv`` or one
    file named after its language."""
    if path.is_file() and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if not n.startswith("__MACOSX") and f"/{kind}/" in f"/{n}"]
            files = [n for n in names if re.search(r"/?([a-z]{2,3})\.(csv|tsv)$", n)]
            return {Path(n).stem: z.read(n).decode("utf-8") for n in files}
    if path.is_dir():
        sub = path / "probes" / kind if (path / "probes" / kind).is_dir() else path / kind
        base = sub if sub.is_dir() else path
        return {f.stem: f.read_text(encoding="utf-8") for f in sorted(base.glob("*.[ct]sv"))}
    if path.is_file():
        return {path.stem: path.read_text(encoding="utf-8")}
    raise FileNotFoundError(f"parameter 'path': no probe file or folder at {str(path)!r}")


def load_probes(path: str | Path, langs: Sequence[str] | None = None, kind: str = "wvs") -> pd.DataFrame:
    """Real value probes (copenlu/value-probing format) in the columns of :func:`world_probes` (``target_p1`` NaN).

    ``path``: the ``probes.zip`` archive, a folder holding ``<lang>.csv`` files (or ``probes/<kind>/``), or one such
    file. ``kind``: ``"wvs"`` or ``"hofstede"`` inside an archive. ``langs``: keep these languages (each must be
    present). Question ids become ``"Q<n>"``; ``category`` is the WVS-7 section. Used by ch. 05 and 06.
    """
    check_choice("kind", kind, ("wvs", "hofstede"))
    sources = _probe_sources(Path(path), kind)
    if not sources:
        raise ValueError(f"parameter 'path': no <lang>.csv probe files found in {str(path)!r}")
    if langs is not None:
        langs = check_subset("langs", langs, sorted(sources))
        sources = {k: sources[k] for k in langs}
    rows = [r for lang, text in sources.items() for r in _read_probe_table(text, lang, kind)]
    bad = [f"{r['lang']}:{r['qid']}" for r in rows if r.get("bad")]
    if bad:
        warnings.warn(
            f"load_probes: {len(bad)} template(s) without exactly one {MASK} skipped: {bad[:6]}", stacklevel=2
        )
    df = _frame([r | {"target_p1": np.nan} for r in rows if not r.get("bad")])
    df.attrs["skipped"] = bad
    dup = df.duplicated(["lang", "qid"])
    if dup.any():
        raise ValueError(f"probe files repeat question id(s) {sorted(set(df.qid[dup]))[:5]}")
    return df


def check_qids(name: str, qids: Sequence[str], probes: pd.DataFrame) -> list[str]:
    """Validate item ids against the probes' ``qid`` column (one error naming ``name`` and the allowed ids)."""
    allowed = sort_qids(set(probes["qid"]))
    return check_subset(name, qids, allowed, min_size=0)


# --- targets (planted or survey aggregates) -------------------------------------------------------------------------
def binarize(
    dist: Mapping[int, float], opt1_codes: Sequence[int], opt2_codes: Sequence[int], drop_codes: Sequence[int] = ()
) -> float:
    """P(option-1 side) from answer shares per code: middle classes merged into their end, ``drop_codes`` and negative
    (missing) codes ignored, the two sides renormalised (spec ch. 7 §2.4)."""
    keep = {int(c): float(v) for c, v in dist.items() if int(c) >= 0 and int(c) not in set(drop_codes)}
    a = sum(v for c, v in keep.items() if c in set(opt1_codes))
    b = sum(v for c, v in keep.items() if c in set(opt2_codes))
    if a + b <= 0:
        return float("nan")
    return a / (a + b)


def load_aggregates(path: str | Path) -> pd.DataFrame:
    """Per-country target profiles from a CSV: columns ``country`` (or ``country_iso3``), ``qid`` and either
    ``p_opt1`` or per-code shares ``code, share`` with ``opt1_codes``/``opt2_codes`` (``;``-separated, optional
    ``drop_codes``), binarised with :func:`binarize`. Returns columns country, qid, p_opt1. No such table ships with
    the book (WVS data may not be redistributed)."""
    df = pd.read_csv(path, dtype={"qid": str})
    if "country_iso3" in df.columns and "country" not in df.columns:
        df = df.rename(columns={"country_iso3": "country"})
    missing = {"country", "qid"} - set(df.columns)
    if missing:
        raise ValueError(f"aggregate table {str(path)!r} lacks column(s) {sorted(missing)}")
    df["qid"] = df["qid"].map(normalise_qid)
    if "p_opt1" in df.columns:
        out = df[["country", "qid", "p_opt1"]].astype({"p_opt1": float})
    else:
        need = {"code", "share", "opt1_codes", "opt2_codes"} - set(df.columns)
        if need:
            raise ValueError(f"aggregate table {str(path)!r} needs 'p_opt1' or the columns {sorted(need)}")

        def codes(s) -> list[int]:
            return [int(c) for c in str(s).split(";") if str(c).strip() not in ("", "nan")]

        rows = []
        for (country, qid), g in df.groupby(["country", "qid"], sort=False):
            first = g.iloc[0]
            drop = codes(first["drop_codes"]) if "drop_codes" in g.columns else []
            p = binarize(
                dict(zip(g["code"], g["share"], strict=True)), codes(first.opt1_codes), codes(first.opt2_codes), drop
            )
            rows.append(dict(country=country, qid=qid, p_opt1=p))
        out = pd.DataFrame(rows)
    if not out["p_opt1"].dropna().between(0, 1).all():
        raise ValueError(f"aggregate table {str(path)!r}: p_opt1 must lie in [0, 1]")
    return out.reset_index(drop=True)


def target_profiles(table: pd.DataFrame, key: str | None = None) -> pd.DataFrame:
    """Target profiles as a (lang or country) x qid matrix of P(option 1), from probes (``target_p1``), a world
    ``value_truth`` (``p_opt1``) or :func:`load_aggregates` output."""
    key = key or ("lang" if "lang" in table.columns else "country")
    value = "target_p1" if "target_p1" in table.columns else "p_opt1"
    if key not in table.columns or value not in table.columns:
        raise ValueError("parameter 'table' needs a 'lang' or 'country' column and 'target_p1' or 'p_opt1'")
    mat = table.pivot(index=key, columns="qid", values=value)
    return mat[sort_qids(mat.columns)]


def majority_targets(probes_or_truth: pd.DataFrame, country_or_lang: str) -> pd.Series:
    """``qid -> 1 or 2``: the option a majority of the population picks (P(option 1) > 0.5 gives 1).

    ``probes_or_truth``: probes with ``target_p1``, a world ``value_truth`` or an aggregate table; ``country_or_lang``
    is matched against its ``lang`` or ``country`` column. Items without a target are left out. Used by ch. 06.
    """
    mat = target_profiles(probes_or_truth)
    check_choice("country_or_lang", country_or_lang, list(mat.index))
    p = mat.loc[country_or_lang].dropna()
    return pd.Series(np.where(p.to_numpy() > 0.5, 1, 2), index=p.index, name="majority").rename_axis("qid")


# --- model profiles -------------------------------------------------------------------------------------------------
def option_probs(logprobs: np.ndarray) -> np.ndarray:
    """Softmax over the options of ``[n, k]`` log-probabilities."""
    lp = np.asarray(logprobs, dtype=float)
    lp = lp - lp.max(-1, keepdims=True)
    e = np.exp(lp)
    return e / e.sum(-1, keepdims=True)


def probe_profile(
    model,
    tokenizer,
    probes: pd.DataFrame,
    *,
    kind: str = "seq2seq",
    reduction: str = "sum",
    batch_size: int = 64,
) -> pd.Series:
    """P(option 1) per probe row (index of ``probes``): two-option cloze scores of a seq2seq LM (T5 sentinel,
    :func:`mlmc.scoring.span_candidate_logprobs`) or a masked LM (:func:`mlmc.scoring.masked_candidate_logprobs`),
    softmaxed over the two options (spec ch. 7 §2.3)."""
    from mlmc import scoring

    check_choice("kind", kind, ("seq2seq", "mlm"))
    fn = scoring.span_candidate_logprobs if kind == "seq2seq" else scoring.masked_candidate_logprobs
    cands = [[a, b] for a, b in zip(probes["opt1"], probes["opt2"], strict=True)]
    lp = fn(model, tokenizer, list(probes["template"]), cands, blank=MASK, reduction=reduction, batch_size=batch_size)
    return pd.Series(option_probs(lp)[:, 0], index=probes.index, name="p1")


# --- shift metrics --------------------------------------------------------------------------------------------------
def predictions(p1: np.ndarray | pd.Series) -> np.ndarray:
    """Predicted option (1 or 2) from P(option 1): 1 where p > 0.5."""
    return np.where(np.asarray(p1, dtype=float) > 0.5, 1, 2)


def agreement(pred_a: np.ndarray, pred_b: np.ndarray) -> float:
    """Percentage of items on which two models predict the same option (Table 7.3)."""
    a, b = np.asarray(pred_a), np.asarray(pred_b)
    if a.shape != b.shape or a.size == 0:
        raise ValueError("parameters 'pred_a' and 'pred_b' must be non-empty and of equal shape")
    return float(100.0 * np.mean(a == b))


def pct_unchanged(pre: np.ndarray, post: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Percentage of items whose prediction did not change with fine-tuning (Fig 7.2), optionally within ``mask``."""
    pre, post = np.asarray(pre), np.asarray(post)
    if mask is not None:
        pre, post = pre[np.asarray(mask, bool)], post[np.asarray(mask, bool)]
    return agreement(pre, post)


def unique_shift_fraction(shifts: Mapping[str, set]) -> float:
    """Of all items that flipped under any fine-tuning language, the share that flipped under exactly one
    (``shifts``: FT language -> set of flipped items). NaN when nothing flipped."""
    union = set().union(*shifts.values()) if shifts else set()
    if not union:
        return float("nan")
    once = [q for q in union if sum(q in s for s in shifts.values()) == 1]
    return len(once) / len(union)


def spearman_alignment(profile: np.ndarray, target: np.ndarray) -> float:
    """Spearman rho between a model profile and a target profile (items aligned)."""
    return float(stats.spearmanr(np.asarray(profile, float), np.asarray(target, float)).statistic)


def alignment_delta(pre: np.ndarray, post: np.ndarray, target: np.ndarray) -> float:
    """rho(post, target) - rho(pre, target): the change in alignment with a target after fine-tuning (Table 7.5)."""
    return spearman_alignment(post, target) - spearman_alignment(pre, target)


def similarity_matrix(profiles: pd.DataFrame) -> pd.DataFrame:
    """Cosine similarity between the rows (languages or countries) of a profile matrix."""
    x = profiles.to_numpy(float)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    return pd.DataFrame(x @ x.T, index=profiles.index, columns=profiles.index)


def rsa(sim_a: np.ndarray | pd.DataFrame, sim_b: np.ndarray | pd.DataFrame, method: str = "rowwise") -> float:
    """Representational similarity between two similarity matrices over the same entities (Abnar et al. 2019).

    ``"rowwise"`` (the author code): the mean over rows of the Spearman rho between the rows with the diagonal left
    out; ``"upper_triangle"``: Spearman rho between the strict upper triangles.
    """
    check_choice("method", method, ("rowwise", "upper_triangle"))
    a, b = np.asarray(sim_a, float), np.asarray(sim_b, float)
    if a.shape != b.shape or a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] < 3:
        raise ValueError("parameters 'sim_a' and 'sim_b' must be square matrices of the same size (>= 3)")
    n = a.shape[0]
    if method == "upper_triangle":
        iu = np.triu_indices(n, 1)
        return float(stats.spearmanr(a[iu], b[iu]).statistic)
    off = ~np.eye(n, dtype=bool)
    rhos = [stats.spearmanr(a[i, off[i]], b[i, off[i]]).statistic for i in range(n)]
    return float(np.nanmean(rhos))


def profile_pca(profiles: pd.DataFrame, fit_on: pd.DataFrame | None = None, seed: int = 0) -> pd.DataFrame:
    """2-d PCA coordinates (columns pc1, pc2) of profile rows, the PCA fitted on ``fit_on`` (default: the rows)."""
    pca = PCA(n_components=2, random_state=seed).fit((profiles if fit_on is None else fit_on).to_numpy(float))
    xy = pca.transform(profiles.to_numpy(float))
    return pd.DataFrame(xy, index=profiles.index, columns=["pc1", "pc2"])
