"""Chapter 04 driver: stereotypes in a masked LM and how fine-tuning on news sources shifts them (thesis ch. 6).

Two data paths share one code path:

- ``data_source="world"`` (default): the stereotype set is built from the world's autocomplete records (English
  glosses of the world's groups and attributes); the model speaks a world language, so probes are the world's
  copular templates rendered in that language, candidates are the world's adjectives (multi-piece words scored
  with one mask per piece), and predictions are mapped back to glosses;
- ``data_source="released"``: the released stereotype dataset, the thesis's query templates and a hub model; the
  candidates are the model's whole vocabulary (top-k at one mask) and words are the tokens themselves.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from mlmc import models as mlmc_models
from mlmc import scoring, zoo
from mlmc import stereotypes as st
from mlmc.errors import check_choice, check_device, check_int, check_positive, check_range, check_subset
from mlmc.train import pretrain_mlm
from mlmc.world import GROUPS, World
from mlmc.world import newsfeed as nf

DATA_SOURCES = ("world", "released")
PRIORS = ("matched", "author")


def check_params(p: dict) -> dict:
    """Validate every chapter parameter before any compute; return derived values (groups, templates...)."""
    check_choice("data_source", p["data_source"], DATA_SOURCES)
    check_device("device", p["device"])
    check_int("top_k", p["top_k"], min_value=1)
    check_int("profile_k", p["profile_k"], min_value=1)
    check_int("shift_k", p["shift_k"], min_value=1)
    ks = [check_int("recall_ks", k, min_value=1) for k in p["recall_ks"]]
    if not ks or max(ks) > p["top_k"]:
        raise ValueError(f"parameter 'recall_ks' must be non-empty with every k <= top_k ({p['top_k']}), got {ks}")
    check_choice("prior_template", p["prior_template"], PRIORS)
    check_choice("lexicon", p["lexicon"], st.LEXICON_SOURCES)
    check_subset("seeds", p["seeds"], list(range(10_000)))
    fr = p["fractions"]
    if not fr or any(not isinstance(f, int | float) or not 0 < f <= 1 for f in fr) or sorted(set(fr)) != list(fr):
        raise ValueError(f"parameter 'fractions' must be increasing numbers in (0, 1], got {fr!r}")
    check_positive("ft_lr", p["ft_lr"])
    check_int("ft_batch_size", p["ft_batch_size"], min_value=1)
    check_range("ft_salient_prob", p["ft_salient_prob"], 0.0, 1.0)
    check_int("n_news", p["n_news"], min_value=10)
    check_range("p_target", p["p_target"], 0.0, 1.0)
    if p["data_source"] == "world":
        cats = check_subset("categories", p["categories"], list(GROUPS))
        allowed = [g for c in cats for g in GROUPS[c]]
        check_subset("target_groups", p["target_groups"], allowed)
        check_subset("news_sources", p["news_sources"], list(nf.SOURCE_SLANTS))
        st.check_templates("templates", p["templates"])
        n_cand = len(nf.adjective_vocabulary())
        if p["top_k"] > n_cand:
            raise ValueError(
                f"parameter 'top_k' ({p['top_k']}) exceeds the {n_cand} candidate words of the world's vocabulary"
            )
        groups = {c: list(GROUPS[c]) for c in cats}
    else:
        if not p["stereo_dataset_path"]:
            raise ValueError("parameter 'stereo_dataset_path' is required with data_source='released'")
        known = st.load_social_groups()
        cats = check_subset("categories", p["categories"], list(known))
        allowed = [g.lower() for c in cats for g in known[c]]
        check_subset("target_groups", p["target_groups"], allowed)
        groups = {c: [g.lower() for g in known[c]] for c in cats}
        if p["news_sources"] and not p["news_path"]:
            raise ValueError("parameter 'news_path' is required to fine-tune on news with data_source='released'")
    return {"groups": groups, "categories": cats, "recall_ks": ks}


# --- data -----------------------------------------------------------------------------------------------------------
@dataclass
class Probes:
    """Everything a probing pass needs: per group the probe texts, and the candidate words (None: whole vocabulary)."""

    texts: dict[str, list[str]]  # group -> filled probes (with the "[MASK]" slot)
    priors: dict[str, list[str]]  # group -> the same probes with the group masked
    candidates: list[str] | None  # surface forms scored at the slot; None = top-k over the vocabulary
    to_word: dict[str, str] = field(default_factory=dict)  # surface form -> word of the stereotype set


def world_probes(world: World, lang: str, groups: dict[str, list[str]], templates: Sequence[str]) -> Probes:
    """The world's templates (English glosses with ``{group}`` and ``[MASK]``) rendered word by word in ``lang``."""

    def render(t: str, g: str | None) -> str:
        out = []
        for w in t.split():
            if w == "{group}":
                out.append(st.MASK if g is None else world.word(lang, g))
            elif w == st.MASK or not any(ch.isalpha() for ch in w):
                out.append(w)
            else:
                out.append(world.word(lang, w))
        return " ".join(out)

    gs = [g for c in groups.values() for g in c]
    words = nf.adjective_vocabulary()
    forms = [world.word(lang, a) for a in words]
    return Probes(
        texts={g: [render(t, g) for t in templates] for g in gs},
        priors={g: [render(t, None) for t in templates] for g in gs},
        candidates=forms,
        to_word=dict(zip(forms, words, strict=True)),
    )


def released_probes(gold: pd.DataFrame, prior_template: str) -> Probes:
    """Thesis probes: each distinct query of the dataset as ``"<query> [MASK] ?"``; prior with the group masked
    (``"matched"``) or the author's single prior sentence ``"why are [MASK] so [MASK]"`` (``"author"``)."""
    texts, priors = {}, {}
    for q, g in gold[["input", "target_group"]].drop_duplicates().itertuples(index=False):
        texts[q] = [st.query_probe(q)]
        priors[q] = [
            st.query_probe(q.replace(g, st.MASK, 1))
            if prior_template == "matched"
            else f"why are {st.MASK} so {st.MASK}"
        ]
    return Probes(texts=texts, priors=priors, candidates=None)


def released_profile_probes(groups: dict[str, list[str]]) -> Probes:
    """Thesis §6.5: every group of ``groups`` in the 5 templates of its category, prior with the group masked."""
    texts, priors = {}, {}
    for cat, gs in groups.items():
        for g in gs:
            ts = st.templates_for(cat)
            texts[g] = [st.query_probe(t.replace("{g}", g)) for t in ts]
            priors[g] = [st.query_probe(t.replace("{g}", st.MASK)) for t in ts]
    return Probes(texts=texts, priors=priors, candidates=None)


def world_stereotype_set(world: World, lang: str, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Autocomplete records of ``lang``'s culture and the stereotype set built from them (with the cleaning log)."""
    records = nf.autocomplete_records(world.stereotype_truth([lang]), seed=seed)
    return st.build_stereotype_set(
        records,
        nf.adjective_vocabulary(),
        neutral=nf.NEUTRAL_COMPLETIONS,
        trend=nf.TREND_COMPLETIONS,
    )


def load_news(path: str | Path | None, source: str, *, text_field: str = "text", n: int | None = None) -> list[str]:
    """Texts of one news source for fine-tuning: a plain-text file (one document per line), a JSONL or CSV file (field
    ``text_field``; a ``source`` / ``publication`` field, if present, selects ``source``), a folder holding
    ``<source>.txt`` / ``<source>.jsonl``, or an HF datasets id ``hf:<id>`` (split ``train``, filtered likewise).
    The first ``n`` texts are kept (file order, as in the thesis's article selection)."""
    if path is None:
        raise ValueError("parameter 'news_path' is required to load a news source")
    spath = str(path)
    if spath.startswith("hf:"):
        import datasets

        ds = datasets.load_dataset(spath[3:], split="train")
        rows = ds.to_pandas()
    else:
        p = Path(spath)
        if p.is_dir():
            hits = [p / f"{source}.{ext}" for ext in ("txt", "jsonl", "csv") if (p / f"{source}.{ext}").is_file()]
            if not hits:
                raise ValueError(f"parameter 'news_path': no {source}.txt or {source}.jsonl in {spath!r}")
            p = hits[0]
        if not p.is_file():
            raise ValueError(f"parameter 'news_path': no file or folder at {spath!r}")
        if p.suffix == ".jsonl":
            rows = pd.read_json(p, lines=True)
        elif p.suffix == ".csv":  # All-The-News layout: one article per row, columns publication and content
            rows = pd.read_csv(p)
        else:
            lines = [x.strip() for x in p.read_text(encoding="utf-8").splitlines()]
            rows = pd.DataFrame({text_field: [x for x in lines if x]})
    if text_field not in rows.columns:
        raise ValueError(f"parameter 'news_path': the data has no {text_field!r} field (columns {list(rows.columns)})")
    for col in ("source", "publication"):
        if col in rows.columns:
            rows = rows[rows[col].astype(str) == source]
            if rows.empty:
                raise ValueError(f"parameter 'news_sources': no rows with {col} == {source!r} in {spath!r}")
            break
    texts = [str(t) for t in rows[text_field] if str(t).strip()]
    return texts[:n] if n is not None else texts


# --- models ---------------------------------------------------------------------------------------------------------
def load_model(name: str, world: World | None, device: str):
    """A zoo model (``tiny-xlmr``, pretrained on the world) or a hub id / local path, as a masked LM."""
    if name in zoo.NAMES:
        model, tok = zoo.get(name, world=world)
    else:
        model, tok = mlmc_models.load(name, "mlm")
    return model.to(device).eval(), tok


def finetune(
    model,
    tok,
    texts: Sequence[str],
    *,
    fraction: float,
    lr: float,
    batch_size: int,
    seed: int,
    salient_ids: Sequence[int] | None = None,
    salient_prob: float = 0.0,
    max_length: int = 64,
):
    """A fine-tuned copy of ``model``: one epoch of masked-LM training on the first ⌈fraction·N⌉ texts."""
    sub = st.fraction_subset(texts, fraction)
    ft = copy.deepcopy(model)
    pretrain_mlm(
        ft,
        tok,
        sub,
        steps=math.ceil(len(sub) / batch_size),
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        salient_ids=salient_ids,
        salient_prob=salient_prob,
        warmup_frac=0.0,
        weight_decay=0.0,
        max_length=max_length,
        progress=False,
    )
    return ft.eval(), len(sub)


# --- probing --------------------------------------------------------------------------------------------------------
def _scores(model, tok, texts: list[str], cands: list[str], batch_size: int) -> np.ndarray:
    filled = [t.replace(st.MASK, tok.mask_token) for t in texts]
    return scoring.cloze_candidate_logprobs(model, tok, filled, cands, which="last", batch_size=batch_size)


def probe(model, tok, probes: Probes, *, top_k: int, profile_k: int, batch_size: int = 64) -> dict:
    """Raw and typicality-re-ranked words per key (group or query), best first, and per key the union over its
    probes of each probe's ``profile_k`` most probable words (the words of an emotion profile).

    Scores of a key's probes are averaged (the world has several templates per group, the thesis one query per
    input). The re-ranking candidates are the union of each probe's raw top ``top_k``, so re-ranking only reorders
    them (thesis §6.4); the prior is the same probe with the group masked.
    """
    keys = list(probes.texts)
    texts = [t for k in keys for t in probes.texts[k]]
    prior_texts = list(dict.fromkeys(t for k in keys for t in probes.priors[k]))
    if probes.candidates is not None:
        post = _scores(model, tok, texts, probes.candidates, batch_size)
        prior = _scores(model, tok, prior_texts, probes.candidates, batch_size)
        words = [probes.to_word.get(c, c) for c in probes.candidates]
    else:
        fill = [t.replace(st.MASK, tok.mask_token) for t in texts]
        post = scoring.mask_logprobs(model, tok, fill, batch_size=batch_size)
        fill = [t.replace(st.MASK, tok.mask_token) for t in prior_texts]
        prior = scoring.mask_logprobs(model, tok, fill, batch_size=batch_size)
        words = [tok.decode([i]).strip().lower() for i in range(post.shape[1])]
    order = np.argsort(-post, axis=1, kind="stable")
    prior_row = {t: i for i, t in enumerate(prior_texts)}
    raw, reranked, profile_words = {}, {}, {}
    row = 0
    for k in keys:
        n = len(probes.texts[k])
        post_m = post[row : row + n].mean(0)
        prior_m = prior[[prior_row[t] for t in probes.priors[k]]].mean(0)
        ids = list(dict.fromkeys(int(i) for r in order[row : row + n] for i in r[:top_k]))
        by_post = sorted(ids, key=lambda i: (-post_m[i], ids.index(i)))
        raw[k] = _dedupe([words[i] for i in by_post])[:top_k]
        reranked[k] = _dedupe([words[i] for i, _ in st.rerank_by_typicality(post_m, prior_m, ids)])[:top_k]
        profile_words[k] = _dedupe([words[i] for r in order[row : row + n] for i in r[:profile_k]])
        row += n
    return {"raw": raw, "reranked": reranked, "profile_words": profile_words}


def _dedupe(words: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(words))


# --- stereotype exposure: continued pretraining of the zoo model on one world language (cached) --------------------
ADAPT_VERSION = 1


def attribute_piece_ids(world: World, lang: str, tok) -> list[int]:
    """Token ids of the pieces of every attribute word of ``lang`` (masked with ``salient_prob`` in training)."""
    forms = [world.word(lang, a) for a in nf.adjective_vocabulary()]
    return sorted({i for ids in tok(forms, add_special_tokens=False)["input_ids"] for i in ids})


def exposure_corpus(world: World, lang: str, n: int, p_culture: float) -> list[str]:
    """World text of ``lang`` in which a share ``p_culture`` are culture statements (half of them about groups,
    with the planted attributes at the language's bias strength): the world's own pretraining generator."""
    return list(World(world.seed, p_culture=p_culture).pretraining_corpus([lang], n_per_lang=n)["text"])


def expose(
    model_name: str,
    world: World,
    lang: str,
    *,
    n: int,
    p_culture: float,
    steps: int,
    lr: float,
    salient_prob: float,
    seed: int,
    device: str,
    progress: bool = False,
):
    """The chapter's pretrained model: ``model_name`` from the zoo, further trained for ``steps`` masked-LM steps on
    :func:`exposure_corpus` with salient masking of attribute pieces; cached under ``$MLMC_CACHE/ch04/``.

    Returns ``(model, tokenizer, info)``; ``info`` holds the cache key, whether it was built now, and CPU seconds.
    """
    from mlmc.utils import atomic_dir, stable_hash

    base = zoo.path(model_name, world=world)
    recipe = dict(
        version=ADAPT_VERSION,
        base=base.name,
        world=world.config(),
        lang=lang,
        n=n,
        p_culture=p_culture,
        steps=steps,
        lr=lr,
        salient_prob=salient_prob,
        seed=seed,
    )
    entry = zoo.cache_root() / "ch04" / f"{model_name}-{lang}-{stable_hash(recipe)}"
    built, cpu = False, 0.0
    if not (entry / "recipe.json").is_file():
        model, tok = mlmc_models.load(base, "mlm")
        texts = exposure_corpus(world, lang, n, p_culture)
        t0 = time.process_time()
        pretrain_mlm(
            model,
            tok,
            texts,
            steps=steps,
            batch_size=32,
            lr=lr,
            seed=seed,
            salient_ids=attribute_piece_ids(world, lang, tok),
            salient_prob=salient_prob,
            progress=progress,
        )
        cpu, built = time.process_time() - t0, True
        import json

        with atomic_dir(entry) as tmp, mlmc_models.quiet_transformers():
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            (tmp / "recipe.json").write_text(json.dumps(recipe | {"train_cpu_s": round(cpu, 1)}, indent=1))
    model, tok = mlmc_models.load(entry, "mlm")
    return model.to(device).eval(), tok, {"entry": entry.name, "built": built, "cpu_s": cpu}


# --- profiles and the fine-tuning grid ------------------------------------------------------------------------------
RANKINGS = ("raw", "typicality")


def profile_words(out: dict, key: str, ranking: str, k: int) -> list[str]:
    """Words behind a profile: the union of each probe's raw top ``k`` (thesis) or the ``k`` most typical words."""
    return out["profile_words"][key] if ranking == "raw" else out["reranked"][key][:k]


def profiles(out: dict, lexicon: dict, ranking: str, k: int) -> tuple[pd.DataFrame, pd.Series]:
    """Emotion profiles (keys x :data:`mlmc.stereotypes.EMOTIONS`, 0-100) and lexicon coverage per key."""
    rows, cov = {}, {}
    for key in out["raw"]:
        scores, coverage, _ = st.emotion_profile(profile_words(out, key, ranking, k), lexicon)
        rows[key], cov[key] = scores, coverage
    return pd.DataFrame(rows, index=list(st.EMOTIONS)).T, pd.Series(cov, name="coverage")


def slant_pools(sources: Sequence[str], lexicon: dict, data_source: str) -> dict[str, set[str]]:
    """The words whose share a source should raise: its planted slant in the world; for real news (no planted
    slant) the lexicon's anger/disgust/fear words for every source, i.e. a hostility share."""
    if data_source == "world":
        return {s: set(nf.slant_pool(s)) for s in sources}
    hostile = {w for w, labels in lexicon.items() if labels & {"anger", "disgust", "fear"}}
    return {s: hostile for s in sources}


def slant_share(words: Sequence[str], pool: set[str], lexicon: dict) -> float:
    """% of the lexicon-covered words that belong to ``pool`` (a news source's slant, :func:`slant_pools`)."""
    covered = [w for w in dict.fromkeys(words) if w in lexicon]
    return 100.0 * float(np.mean([w in pool for w in covered])) if covered else 0.0


@dataclass
class GridResult:
    """Everything measured on the fine-tuned models."""

    shifts: pd.DataFrame  # source, fraction, seed, group, category, target, ranking, slant_pre, slant_post, delta
    delta_rho: pd.DataFrame  # source, fraction, seed, ranking, category, delta_rho
    recall: pd.DataFrame  # source, fraction, seed, k, recall (re-ranked, all categories)
    outputs: dict  # (source, fraction, seed) -> probe output
    n_texts: dict  # (source, fraction) -> number of fine-tuning texts
    cpu_s: float


def run_grid(
    model,
    tok,
    probes: Probes,
    recall_probes: Probes,
    pre_out: dict,
    news: dict[str, list[str]],
    *,
    groups: dict,
    targets: list[str],
    pools: dict[str, set[str]],
    gold: pd.DataFrame,
    gold_key: str,
    fractions: Sequence[float],
    seeds: Sequence[int],
    lexicon: dict,
    top_k: int,
    profile_k: int,
    recall_ks: Sequence[int],
    lr: float,
    batch_size: int,
    salient_ids: Sequence[int] | None,
    salient_prob: float,
    progress: bool = True,
) -> GridResult:
    """Fine-tune a copy of ``model`` on every (news source, fraction, seed), probe it, and measure the shifts."""
    t0 = time.process_time()
    cat_of = {g: c for c, gs in groups.items() for g in gs}
    pre_prof = {r: profiles(pre_out, lexicon, r, profile_k)[0] for r in RANKINGS}
    shifts, drho, rec, outputs, n_texts = [], [], [], {}, {}
    jobs = [(s, f, sd) for s in news for f in fractions for sd in seeds]
    for source, frac, seed in tqdm(jobs, desc="fine-tuning", disable=not progress):
        ft, n = finetune(
            model,
            tok,
            news[source],
            fraction=frac,
            lr=lr,
            batch_size=batch_size,
            seed=seed,
            salient_ids=salient_ids,
            salient_prob=salient_prob,
        )
        out = probe(ft, tok, probes, top_k=top_k, profile_k=profile_k)
        rout = out if recall_probes is probes else probe(ft, tok, recall_probes, top_k=top_k, profile_k=profile_k)
        outputs[(source, frac, seed)], n_texts[(source, frac)] = out, n
        for r in RANKINGS:
            for key in out["raw"]:
                pre_s = slant_share(profile_words(pre_out, key, r, profile_k), pools[source], lexicon)
                post_s = slant_share(profile_words(out, key, r, profile_k), pools[source], lexicon)
                shifts.append(
                    dict(
                        source=source,
                        fraction=frac,
                        seed=seed,
                        group=key,
                        category=cat_of.get(key, ""),
                        target=key in targets,
                        ranking=r,
                        slant_pre=pre_s,
                        slant_post=post_s,
                        delta=post_s - pre_s,
                    )
                )
            post_prof = profiles(out, lexicon, r, profile_k)[0]
            for cat, d in st.delta_rho(pre_prof[r], post_prof, groups).items():
                drho.append(dict(source=source, fraction=frac, seed=seed, ranking=r, category=cat, delta_rho=d))
        rk = st.recall_at_k(rout["reranked"], gold, recall_ks, key=gold_key, by=None)
        rec += [
            dict(source=source, fraction=frac, seed=seed, k=k, recall=v) for k, v in zip(rk.k, rk.recall, strict=True)
        ]
    return GridResult(
        pd.DataFrame(shifts), pd.DataFrame(drho), pd.DataFrame(rec), outputs, n_texts, time.process_time() - t0
    )


def planted_hits(ranked: dict[str, list[str]], planted: dict[str, list[str]], k: int, shuffle: bool) -> np.ndarray:
    """Per group, the share of its planted attributes among its top ``k``; with ``shuffle`` each group is scored
    against the planted attributes of the next group in the list (a derangement: the shuffled-group control)."""
    gs = [g for g in ranked if g in planted]
    other = gs[1:] + gs[:1] if shuffle else gs
    return np.array(
        [len(set(ranked[g][:k]) & set(planted[o])) / len(planted[o]) for g, o in zip(gs, other, strict=True)]
    )


def recall_by_group(ranked: dict[str, list[str]], gold: pd.DataFrame, k: int, shuffle: bool) -> np.ndarray:
    """Per group, recall@k of its stereotype-set rows; with ``shuffle`` each group's rows are looked up in the
    ranking of the next group (shuffled-group control)."""
    gs = [g for g in ranked if g in set(gold.target_group)]
    other = dict(zip(gs, gs[1:] + gs[:1] if shuffle else gs, strict=True))
    return np.array([np.mean([c in ranked[other[g]][:k] for c in gold[gold.target_group == g].completion]) for g in gs])
