"""PAWS-X, XNLI and MARC for the ``full`` profile of chapter 01, as the world's task tables (thesis ch. 3).

Each loader returns a ``datasets.Dataset`` with the columns of ``World.paraphrase / .entailment / .sentiment``:
``uid, lang, cid, text_a, text_b, label``, rows grouped by language in the order of ``langs``. ``cid`` is shared by
the translations of one example in the parallel tasks (PAWS-X: the ``id``; XNLI: ``pairID`` or the row number of
the machine-translated train files), so that "is this a translation of that?" works as on the world's data. Labels
are binary as in the thesis: PAWS-X 1 = paraphrase (rows with another label are dropped); XNLI 1 = entailment,
0 = neutral or contradiction; MARC 1 = 4-5 stars, 0 = 1-2 stars, 3 stars dropped.

``source`` is a Hugging Face dataset id (loaded with ``datasets.load_dataset``; per-language configs), a local
directory in the layout of the original release, or a path template with ``{lang}`` and ``{split}`` placeholders:

- PAWS-X (``x-final/``): ``<lang>/translated_train.tsv`` (``<lang>/train.tsv`` for English), ``<lang>/dev_2k.tsv``,
  ``<lang>/test_2k.tsv``; tab-separated with a header ``id sentence1 sentence2 label``.
- XNLI: ``xnli.dev.tsv`` / ``xnli.test.tsv`` (or ``.jsonl``) of XNLI-1.0 (all languages, columns ``language``,
  ``gold_label``, ``sentence1``, ``sentence2``, ``pairID``) and ``multinli.train.<lang>.tsv`` of XNLI-MT-1.0
  (``premise hypo label``); files with ``premise hypothesis label`` columns are read too.
- MARC: ``dataset_<lang>_<split>.json`` (JSON lines with ``review_id, stars, review_title, review_body, language``).
  ``amazon_reviews_multi`` is no longer on the hub; a mirror with ``text`` and ``label`` = stars - 1 (e.g.
  ``mteb/amazon_reviews_multi``) works as a hub id.

Directories are searched recursively, so the root of an unpacked archive is enough. Used by chapter 01.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
from datasets import Dataset

from mlmc.errors import check_choice, check_int, check_subset

TASKS = ("pawsx", "xnli", "marc")
SPLITS = ("train", "dev", "test")
LANGUAGES = {
    "pawsx": ("de", "en", "es", "fr", "ja", "ko", "zh"),
    "xnli": ("ar", "bg", "de", "el", "en", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur", "vi", "zh"),
    "marc": ("de", "en", "es", "fr", "ja", "zh"),
}
HUB_IDS = {
    "pawsx": "google-research-datasets/paws-x",
    "xnli": "facebook/xnli",
    "marc": "mteb/amazon_reviews_multi",
}
PARALLEL = {"pawsx": True, "xnli": True, "marc": False}
COLUMNS = ("uid", "lang", "cid", "text_a", "text_b", "label")
_HUB_SPLIT = {"train": "train", "dev": "validation", "test": "test"}
_NLI_LABELS = {"entailment": 0, "neutral": 1, "contradiction": 2, "contradictory": 2}


class DataNotAvailableError(RuntimeError):
    """A dataset is neither in the local cache nor downloadable (offline, no connection, or withdrawn)."""


# --- reading one language -------------------------------------------------------------------------------------------
def _read_table(path: Path) -> pd.DataFrame:
    """A TSV file (no quoting, as the PAWS-X and XNLI releases need) or a JSON-lines file, values as strings. The
    index is the data row number in the file, so rows that are dropped later keep the alignment of parallel files."""
    with path.open(encoding="utf-8") as fh:
        lines = [line.rstrip("\r\n") for line in fh]
    if path.suffix in (".json", ".jsonl"):
        rows = {i: json.loads(line) for i, line in enumerate(lines) if line.strip()}
        return pd.DataFrame.from_dict(rows, orient="index").astype(str)
    header = lines[0].split("\t") if lines else []
    rows = {i: fields for i, line in enumerate(lines[1:]) if len(fields := line.split("\t")) == len(header)}
    return pd.DataFrame.from_dict(rows, orient="index", columns=header).astype(str)


def _find(root: Path, names: list[str], parent: str | None = None) -> Path:
    for name in names:
        hits = sorted(p for p in root.rglob(name) if p.is_file() and (parent is None or p.parent.name == parent))
        if hits:
            return hits[0]
    where = f"{parent}/" if parent else ""
    raise FileNotFoundError(f"parameter 'source': none of {[where + n for n in names]} found under {root}")


def _local_file(task: str, lang: str, split: str, source: str) -> Path:
    if "{lang}" in source or "{split}" in source:
        path = Path(source.format(lang=lang, split=split)).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"parameter 'source': no file {path} for lang={lang!r}, split={split!r}")
        return path
    root = Path(source).expanduser()
    if task == "pawsx":
        names = {"train": ["translated_train.tsv", "train.tsv"], "dev": ["dev_2k.tsv"], "test": ["test_2k.tsv"]}
        return _find(root, names[split], parent=lang)
    if task == "xnli":
        if split == "train":
            return _find(root, [f"multinli.train.{lang}.tsv"])
        return _find(root, [f"xnli.{split}.tsv", f"xnli.{split}.jsonl"])
    return _find(root, [f"dataset_{lang}_{split}.json", f"dataset_{lang}_{split}.jsonl"])


def _first(df: pd.DataFrame, names: tuple[str, ...], what: str) -> pd.Series:
    for n in names:
        if n in df.columns:
            return df[n]
    raise ValueError(f"{what}: none of the columns {list(names)} found (columns: {list(df.columns)})")


def _nli_label(values: pd.Series) -> pd.Series:
    """3-way XNLI labels (names or the hub's 0 entailment / 1 neutral / 2 contradiction) as ints, -1 if unknown."""
    names = values.astype(str).str.strip().str.lower()
    return names.map(lambda v: _NLI_LABELS.get(v, int(v) if v in ("0", "1", "2") else -1))


def _normalise(task: str, df: pd.DataFrame, lang: str, what: str) -> pd.DataFrame:
    """Raw rows of one language -> ``cid, text_a, text_b, label`` (binary), dropping unusable rows."""
    if "language" in df.columns:
        df = df[df["language"] == lang]
    if task == "pawsx":
        label = pd.to_numeric(_first(df, ("label",), what), errors="coerce")
        out = pd.DataFrame({"cid": _first(df, ("id",), what).astype(str), "label": label})
        out["text_a"], out["text_b"] = _first(df, ("sentence1",), what), _first(df, ("sentence2",), what)
        out = out[out["label"].isin([0, 1])]
    elif task == "xnli":
        label3 = _nli_label(_first(df, ("label", "gold_label"), what))
        ids = df["pairID"].astype(str) if "pairID" in df.columns else pd.Series(df.index.astype(str), df.index)
        out = pd.DataFrame({"cid": ids, "label": (label3 == 0).astype(int)})
        out["text_a"] = _first(df, ("premise", "sentence1"), what)
        out["text_b"] = _first(df, ("hypothesis", "hypo", "sentence2"), what)
        out = out[label3 >= 0]
    else:
        if "stars" in df.columns:
            stars = pd.to_numeric(df["stars"], errors="coerce")
        else:  # hub mirrors: label = stars - 1
            stars = pd.to_numeric(_first(df, ("label",), what), errors="coerce") + 1
        if "review_body" in df.columns:
            body = df["review_body"].astype(str).str.strip()
            title = df["review_title"].astype(str).str.strip() if "review_title" in df.columns else body.str[:0]
            text = (title + ". " + body).where(title.str.len() > 0, body)
        else:
            text = _first(df, ("text",), what).astype(str)
        ids = _first(df, ("review_id", "id"), what) if {"review_id", "id"} & set(df.columns) else df.index
        out = pd.DataFrame({"cid": pd.Series(ids).astype(str).values, "label": (stars >= 4).astype(int).values})
        out["text_a"], out["text_b"] = text.values, ""
        out = out[stars.isin([1, 2, 4, 5]).values]
    out = out[(out["text_a"].astype(str).str.len() > 0)]
    out = out.drop_duplicates("cid", keep="first")
    out["label"] = out["label"].astype(int)
    return out[["cid", "text_a", "text_b", "label"]].reset_index(drop=True)


def _hub_rows(task: str, lang: str, split: str, source: str) -> pd.DataFrame:
    import datasets

    try:
        ds = datasets.load_dataset(source, lang, split=_HUB_SPLIT[split])
    except Exception as err:  # noqa: BLE001 - offline, unknown id, withdrawn dataset: one actionable message
        reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        raise DataNotAvailableError(
            f"dataset {source!r} (config {lang!r}, split {_HUB_SPLIT[split]!r}) for task {task!r} is not available "
            f"({reason}). Download it on a machine with internet access and copy the Hugging Face cache here (point "
            f"HF_HOME at it), or pass the path of the original files as 'source' (see mlmc.data.classification)."
        ) from None
    return ds.to_pandas()  # per-language hub configs of XNLI are aligned by row: the row number is the cid


def _rows(task: str, lang: str, split: str, source: str) -> pd.DataFrame:
    local = "{lang}" in source or "{split}" in source or Path(source).expanduser().exists()
    if local:
        path = _local_file(task, lang, split, source)
        df, what = _read_table(path), str(path)
    else:
        df, what = _hub_rows(task, lang, split, source), f"{source} [{lang}/{split}]"
    out = _normalise(task, df, lang, what)
    if out.empty:
        raise ValueError(f"{what}: no usable {task} rows for language {lang!r}")
    return out


# --- sampling -------------------------------------------------------------------------------------------------------
def load_task(
    task: str,
    langs: list[str],
    n_per_lang: int | None,
    split: str = "train",
    seed: int = 0,
    source: str | None = None,
) -> Dataset:
    """``n_per_lang`` examples per language of a real task (all usable rows when ``None``), sampled with ``seed``.

    Parallel tasks (PAWS-X, XNLI) sample the same ``cid`` in every language from the ids present in all of them,
    as the world's parallel generators do; MARC samples each language on its own. Rows come in sampling order, so a
    larger ``n_per_lang`` with the same seed extends a smaller one (as the world's generators do): the extra rows
    are new examples, e.g. for the data-imbalance runs of chapter 01. ``source`` defaults to
    :data:`HUB_IDS` ``[task]``. Raises ``ValueError`` for unknown tasks, languages or splits and when a language has
    fewer usable rows than ``n_per_lang``; ``DataNotAvailableError`` when a hub dataset cannot be loaded.
    """
    check_choice("task", task, TASKS)
    langs = check_subset("langs", langs, LANGUAGES[task])
    check_choice("split", split, SPLITS)
    if n_per_lang is not None:
        check_int("n_per_lang", n_per_lang, 1)
    check_int("seed", seed, 0)
    source = str(source) if source is not None else HUB_IDS[task]
    frames = {lang: _rows(task, lang, split, source) for lang in langs}
    if PARALLEL[task]:
        common = set.intersection(*(set(f["cid"]) for f in frames.values()))
        order = [c for c in frames[langs[0]]["cid"] if c in common]
        n = len(order) if n_per_lang is None else n_per_lang
        if n > len(order):
            raise ValueError(
                f"parameter 'n_per_lang' must be <= {len(order)} (examples of split {split!r} present in all of "
                f"{langs}), got {n_per_lang}"
            )
        chosen = [order[i] for i in np.random.default_rng(seed).permutation(len(order))[:n]]
        picks = {lang: f.set_index("cid", drop=False).loc[chosen] for lang, f in frames.items()}
    else:
        picks = {}
        for lang, f in frames.items():
            n = len(f) if n_per_lang is None else n_per_lang
            if n > len(f):
                raise ValueError(f"parameter 'n_per_lang' must be <= {len(f)} (usable {lang!r} rows), got {n_per_lang}")
            own = np.random.default_rng([seed, zlib.crc32(lang.encode())])  # independent of the other languages
            picks[lang] = f.iloc[own.permutation(len(f))[:n]]
    rows = []
    for lang in langs:
        for r in picks[lang].itertuples(index=False):
            cid = f"{task}-{split}-{r.cid}"
            rows.append(dict(uid=f"{lang}:{cid}", lang=lang, cid=cid, text_a=str(r.text_a), text_b=str(r.text_b),
                             label=int(r.label)))  # fmt: skip
    return Dataset.from_list(rows)


def load_pawsx(langs: list[str], n_per_lang: int | None, split: str = "train", seed: int = 0,
               source: str | None = None) -> Dataset:  # fmt: skip
    """PAWS-X sentence pairs (label 1 = paraphrase), parallel across languages; see :func:`load_task`."""
    return load_task("pawsx", langs, n_per_lang, split, seed, source)


def load_xnli(langs: list[str], n_per_lang: int | None, split: str = "train", seed: int = 0,
              source: str | None = None) -> Dataset:  # fmt: skip
    """XNLI premise/hypothesis pairs (label 1 = entailment), parallel across languages; see :func:`load_task`."""
    return load_task("xnli", langs, n_per_lang, split, seed, source)


def load_marc(langs: list[str], n_per_lang: int | None, split: str = "train", seed: int = 0,
              source: str | None = None) -> Dataset:  # fmt: skip
    """MARC reviews (label 1 = 4-5 stars, 0 = 1-2 stars), title and body in ``text_a``; see :func:`load_task`."""
    return load_task("marc", langs, n_per_lang, split, seed, source)
