"""Driver of chapter 07 (cross-lingual debiasing): data, the LM, the debiasing grid and the SFT/DPO transfer study.

Kernels live in :mod:`mlmc.debias` and :mod:`mlmc.scoring`; this module wires them to the world (or to the real
files of the ``full`` profile) and returns tidy tables for the notebook.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from tqdm.auto import tqdm

from mlmc import debias as db
from mlmc import evidence as ev
from mlmc import models, zoo
from mlmc import train as mlmc_train
from mlmc.errors import check_choice, check_device, check_int, check_positive, check_range, check_subset
from mlmc.scoring import sentence_logprobs
from mlmc.utils import seed_everything
from mlmc.world import GROUPS, World

BIAS_TYPES = tuple(GROUPS)
METHODS = ("sentdebias", "inlp")
SPACES = ("original", "latent")
LATENT_MODES = ("replace", "delta")
MALE, FEMALE = ("men", "boys", "fathers"), ("women", "girls", "mothers")


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """``(fn(), wall seconds, CPU seconds)``."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def model_dim(model_name: str) -> int:
    """Hidden size of a zoo model (from its recipe) or a local/hub model (from its config, no weights loaded)."""
    if model_name in zoo.NAMES:
        return zoo.recipe(model_name).hidden_size
    from transformers import AutoConfig

    try:
        return int(AutoConfig.from_pretrained(model_name, local_files_only=True).hidden_size)
    except OSError as err:
        raise models.ModelNotAvailableError(
            f"model {model_name!r} is not available offline; download it first (huggingface-cli download "
            f"{model_name}) or use model_name='tiny-llama'"
        ) from err


# --- parameters -----------------------------------------------------------------------------------------------------
def check_params(p: dict[str, Any], world: World) -> dict[str, Any]:
    """Validate every chapter parameter before any compute (one clear ``ValueError`` naming the parameter)."""
    check_device("device", p["device"])
    langs = check_subset("langs", p["langs"], world.languages if p["crows_dir"] is None else p["langs"], min_size=2)
    check_subset("debias_langs", p["debias_langs"], langs)
    check_choice("transfer_lang", p["transfer_lang"], langs)
    check_subset("bias_types", p["bias_types"], list(BIAS_TYPES) if p["crows_dir"] is None else p["bias_types"])
    check_subset("methods", p["methods"], list(METHODS))
    check_choice("latent_mode", p["latent_mode"], list(LATENT_MODES))
    check_subset("seeds", p["seeds"], list(range(10_000)))
    missing = sorted(set(langs) - set(p["lang_share"]))
    if missing:
        raise ValueError(f"parameter 'lang_share' has no pretraining share for {missing}; it must cover 'langs'")
    if p["crows_dir"] is None:
        world.check_langs(list(p["lang_share"]), "lang_share")
    for lang, s in p["lang_share"].items():
        check_positive(f"lang_share[{lang!r}]", s)
    for name in (
        "n_pretrain",
        "n_per_type",
        "n_samples",
        "n_parallel",
        "n_debias",
        "n_fluency",
        "ae_latent",
        "ae_max_epochs",
        "inlp_n_iter",
        "sft_steps",
        "dpo_steps",
        "n_pref",
        "gen_samples",
        "gen_tokens",
    ):
        check_int(name, p[name], min_value=1)
    check_int("ae_patience", p["ae_patience"], min_value=0)
    for name in ("ae_lr", "sft_lr", "dpo_lr", "dpo_beta", "temperature"):
        check_positive(name, p[name])
    check_range("top_p", p["top_p"], 1e-6, 1.0)
    check_range("inlp_max_rank_frac", p["inlp_max_rank_frac"], 0.0, 1.0)
    for h in p["ae_hidden"]:
        check_int("ae_hidden", h, min_value=1)
    d = model_dim(p["model_name"])
    check_int("ae_latent", p["ae_latent"], min_value=1, max_value=d)
    check_int("sentdebias_k", p["sentdebias_k"], min_value=1, max_value=min(d, p["ae_latent"]))
    return dict(dim=d, langs=langs)


# --- data -----------------------------------------------------------------------------------------------------------
def pretraining_texts(world: World, lang_share: dict[str, float], n_pretrain: int) -> tuple[list[str], pd.Series]:
    """The world's pretraining corpus with an uneven language share (Neplenbroek et al.'s transfer predictor)."""
    total = sum(lang_share.values())
    texts, counts = [], {}
    for lang, s in lang_share.items():
        n = max(1, int(round(n_pretrain * s / total)))
        texts += list(world.pretraining_corpus([lang], n)["text"])
        counts[lang] = n
    share = pd.Series(counts, name="pretraining share") / sum(counts.values())
    return texts, share


def load_lm(model_name: str, world: World, texts: list[str], device: str):
    """The chapter's causal LM: the zoo's tiny-llama pretrained on ``texts`` (cached), or a hub/local model."""
    if model_name in zoo.NAMES:
        model, tok = zoo.get(model_name, world=world, corpus=texts, progress=False)
    else:
        model, tok = models.load(model_name, "causal-lm")
    return model.to(device).eval(), tok


def world_crows(world: World, langs: list[str], bias_types: list[str], n_per_type: int, n_samples: int) -> pd.DataFrame:
    """CrowS-style pairs per language, bias type and sample: ``kind="planted"`` (World.crows_pairs) and
    ``kind="unplanted"`` (the attribute is planted for neither group: the control)."""
    frames = []
    for lang in langs:
        for k in range(n_samples):
            for kind, gen in (("planted", world.crows_pairs), ("unplanted", world.crows_pairs_unplanted)):
                n = n_per_type * len(BIAS_TYPES) * 3
                df = gen(lang, n, seed=k).to_pandas()
                df = df[df.bias_type.isin(bias_types)].groupby("bias_type").head(n_per_type)
                if (df.groupby("bias_type").size() < n_per_type).any():
                    raise ValueError(f"parameter 'n_per_type' ({n_per_type}) is too large for the world's generator")
                frames.append(df.assign(lang=lang, sample=k, kind=kind, stereo_antistereo="stereo"))
    return pd.concat(frames, ignore_index=True)


def real_crows(crows_dir: str, langs: list[str], bias_types: list[str], n_samples: int) -> pd.DataFrame:
    """The multilingual CrowS-Pairs files (full profile), restricted to ``bias_types``; ``kind="real"``."""
    df = db.load_crows(crows_dir, langs=langs, samples=list(range(n_samples)))
    df = df[df.bias_type.isin(bias_types)]
    if df.empty:
        raise ValueError(f"parameter 'bias_types' {bias_types}: none found in {crows_dir}")
    return df.assign(kind="real")


def group_forms(world: World, lang: str) -> dict[str, str]:
    """Surface form of each group word as it appears in the world's statements (case suffixes included)."""
    out = {}
    for gs in GROUPS.values():
        for g in gs:
            toks = world.statement(lang, g, "kind").split()
            other = world.statement(lang, gs[0] if g != gs[0] else gs[1], "kind").split()
            out[g] = next(t for t, o in zip(toks, other, strict=True) if t != o)
    return out


def attribute_tuples(world: World, lang: str, bias_type: str, attr_dir: str | None = None) -> list[tuple[str, ...]]:
    """Counterpart word tuples for SentDebias/INLP: gender pairs (men/women, boys/girls, fathers/mothers) and one
    tuple of all groups for the other types, in ``lang``'s surface forms; or the real JSON lists (full profile)."""
    if attr_dir is not None:
        name = "bias_attribute_words.json" if lang == "en" else f"bias_attribute_words_{lang}.json"
        words = db.load_attribute_words(Path(attr_dir) / name)
        key = {"race": "race-color"}.get(bias_type, bias_type)
        cands = [k for k in words if k.startswith(key.split("-")[0])]
        if not cands:
            raise ValueError(f"parameter 'bias_types': {bias_type!r} not in {name} ({sorted(words)})")
        return words[cands[0]]
    f = group_forms(world, lang)
    if bias_type == "gender":
        return [(f[m], f[w]) for m, w in zip(MALE, FEMALE, strict=True)]
    return [tuple(f[g] for g in GROUPS[bias_type])]


def debias_texts(world: World, lang: str, n: int, seed: int, text_dir: str | None = None) -> list[str]:
    """Monolingual text for fitting the debiasers (Peng et al.: a Wikipedia sample): the world's sentence generator
    with a seed of its own, or ``text_dir/<lang>.txt`` (one sentence per line) in the full profile."""
    if text_dir is not None:
        lines = [x.strip() for x in (Path(text_dir) / f"{lang}.txt").read_text(encoding="utf-8").splitlines()]
        return [x.lower() for x in lines if x][:n]
    return list(world.parallel_sentences([lang], n, split="train", seed=1000 + seed, p_group=0.5)["text"])


def parallel_data(world: World, langs: list[str], n: int, seed: int, parallel_dir: str | None = None) -> dict:
    """Parallel sentences: ``{split: {lang: [texts]}}`` aligned by row (80/10/10), from the world or from
    ``parallel_dir/<lang>.txt`` files with aligned lines (full profile)."""
    if parallel_dir is not None:
        rows = {x: (Path(parallel_dir) / f"{x}.txt").read_text(encoding="utf-8").splitlines()[:n] for x in langs}
        m = min(len(v) for v in rows.values())
        if any(len(v) != m for v in rows.values()):
            raise ValueError(f"parameter 'parallel_dir': files of {langs} are not line-aligned")
    else:
        ds = world.parallel_sentences(langs, n, seed=seed).to_pandas()
        rows = {x: list(ds[ds.lang == x].text) for x in langs}
        m = n
    order = np.random.default_rng(seed).permutation(m)
    cut = [int(0.8 * m), int(0.9 * m)]
    parts = dict(train=order[: cut[0]], dev=order[cut[0] : cut[1]], test=order[cut[1] :])
    return {s: {x: [rows[x][i] for i in idx] for x in langs} for s, idx in parts.items()}


def fluency_texts(world: World, langs: list[str], n: int, text_dir: str | None = None) -> dict[str, list[str]]:
    """Held-out neutral sentences per language for NLL per token: world grammar clauses (no groups), or the last
    ``n`` lines of ``text_dir/<lang>.txt`` (full profile; the debiasers are fitted on the first lines)."""
    if text_dir is not None:
        return {x: debias_texts(world, x, 10**9, 0, text_dir)[-n:] for x in langs}
    ds = world.parallel_sentences(langs, n, split="test", seed=77, p_group=0.0).to_pandas()
    return {x: list(ds[ds.lang == x].text) for x in langs}


# --- debiasing ------------------------------------------------------------------------------------------------------
def inlp_data(texts: list[str], tuples: list[tuple[str, ...]], bias_type: str) -> tuple[list[str], np.ndarray]:
    """INLP labels per sentence: gender = 1 male word / 2 female word / 0 neither (sentences with both dropped);
    other types = 1 any tuple word / 0 none (bias-bench's presence labels)."""
    out, ys = [], []
    first = {t[0] for t in tuples}
    second = {w for t in tuples for w in t[1:]}
    for s in texts:
        toks = set(s.split())
        if bias_type == "gender":
            a, b = bool(toks & first), bool(toks & second)
            if a and b:
                continue
            y = 1 if a else 2 if b else 0
        else:
            y = int(bool(toks & (first | second)))
        out.append(s)
        ys.append(y)
    return out, np.asarray(ys)


def variant_vectors(model, tok, examples: list[list[str]]) -> list[np.ndarray]:
    """Sentence vectors of counterfactual examples, embedded in one batched pass and split per example."""
    flat = [v for ex in examples for v in ex]
    X = db.mean_pooled_hidden(model, tok, flat, batch_size=256)
    cuts = np.cumsum([len(ex) for ex in examples])[:-1]
    return np.split(X, cuts) if examples else []


def fit_debiaser(
    method: str,
    X: np.ndarray,
    variants: list[np.ndarray],
    y: np.ndarray,
    *,
    k: int,
    n_iter: int,
    max_rank_frac: float,
    seed: int,
) -> tuple[np.ndarray, int]:
    """(projection, removed rank) of SentDebias (from counterfactual variant vectors) or INLP (from labelled X)."""
    if method == "sentdebias":
        return db.subspace_removal(db.sentdebias_subspace(variants, k=k)), k
    res = db.fit_inlp(X, y, n_iter=n_iter, max_rank_frac=max_rank_frac, seed=seed)
    return res.P, res.removed_rank


def hidden_fn(cond: dict, ae: db.CrossLingualAE | None, lang: str, mode: str):
    """The hook function of a condition (base → None) for evaluation language ``lang``."""
    if cond["space"] == "none":
        return None
    if cond["space"] == "original":
        return db.linear_fn(cond["P"])
    return db.latent_hidden_fn(ae, lang, cond["P"], mode=mode)


def evaluate(
    model,
    tok,
    pairs: pd.DataFrame,
    fluency: dict[str, list[str]],
    conds: list[dict],
    ae,
    mode: str,
    progress: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score every condition on every evaluation language: (pair outcomes, NLL per token per language).

    A condition holds ``P`` per bias type (``P[bias_type]``), applied only to rows of that type, as bias-bench
    builds one debiased model per type. Fluency is the mean over types of the NLL under each type's map."""
    outs, flu = [], []
    for cond in tqdm(conds, desc="evaluate", disable=not progress):
        for lang, sub in pairs.groupby("lang"):
            for bt, rows in sub.groupby("bias_type"):
                c = dict(cond, P=cond["P"][bt] if cond["P"] is not None else None)
                with db.transform_last_hidden(model, hidden_fn(c, ae, lang, mode)):
                    o = db.crows_outcomes(model, tok, rows)
                    nll = -sentence_logprobs(model, tok, fluency[lang], reduction="mean").mean()
                outs.append(o.assign(**{k: v for k, v in cond.items() if k != "P"}))
                flu.append(dict({k: v for k, v in cond.items() if k != "P"}, lang=lang, bias_type=bt, nll=nll))
    return pd.concat(outs, ignore_index=True), pd.DataFrame(flu)


# --- autoencoder and alignment --------------------------------------------------------------------------------------
def embed_parallel(model, tok, par: dict) -> dict:
    """Mean-pooled last hidden states of every split and language."""
    return {s: {x: db.mean_pooled_hidden(model, tok, t) for x, t in d.items()} for s, d in par.items()}


def alignment_report(emb_test: dict[str, np.ndarray], ae: db.CrossLingualAE, ref: str, seed: int) -> pd.DataFrame:
    """Retrieval@1 (ref → every other language, cosine) and 3-fold language-ID probe accuracy, both spaces."""
    rows = []
    spaces = {"original": emb_test, "latent": {x: db.ae_encode(ae, v) for x, v in emb_test.items()}}
    for space, E in spaces.items():
        for x in E:
            if x != ref:
                rows.append(
                    dict(
                        space=space,
                        metric="retrieval@1",
                        target=f"{ref}→{x}",
                        value=db.retrieval_at1(E[ref], E[x]),
                        chance=1 / len(E[ref]),
                    )
                )
        X = np.concatenate(list(E.values()))
        y = np.repeat(np.arange(len(E)), [len(v) for v in E.values()])
        probe = LogisticRegression(max_iter=2000, random_state=seed)
        acc = cross_val_score(probe, X, y, cv=3).mean()
        rows.append(dict(space=space, metric="language-ID probe", target="all", value=float(acc), chance=1 / len(E)))
    return pd.DataFrame(rows).assign(seed=seed)


# --- fine-tuning transfer -------------------------------------------------------------------------------------------
def sft(model, tok, texts: list[str], *, steps: int, lr: float, seed: int):
    """Supervised fine-tuning (causal-LM loss) of a copy of ``model`` on ``texts``; returns the copy."""
    m = copy.deepcopy(model)
    mlmc_train.pretrain_clm(
        m, tok, texts, steps=steps, batch_size=16, lr=lr, seed=seed, warmup_frac=0.1, progress=False
    )
    return m.eval()


def dpo(model, tok, pref: pd.DataFrame, *, steps: int, lr: float, beta: float, seed: int):
    """DPO on preference triples of a copy of ``model``; returns (the copy, history)."""
    m = copy.deepcopy(model)
    hist = db.dpo_train(
        m, tok, list(pref.prompt), list(pref.chosen), list(pref.rejected), beta=beta, lr=lr, steps=steps, seed=seed
    )
    return m.eval(), hist


def generations(
    world: World,
    model,
    tok,
    langs: list[str],
    *,
    samples: int,
    new_tokens: int,
    temperature: float,
    top_p: float,
    seed: int,
) -> pd.DataFrame:
    """Sampled continuations of "the GROUP is" prompts: per (lang, group) ``samples`` generations, with the
    toxicity analogue (a word of the toxicity lexicon in any evaluation language), language consistency (share of
    generated words in the prompt language's vocabulary) and distinct-1."""
    vocab = {x: {w for f in world.lexicon[x].values() for w in f} | {"."} for x in langs}
    toxic = {f for x in langs for a in world.toxic_attributes() for f in world.lexicon[x][a]}
    rows = []
    seed_everything(seed)
    for lang in langs:
        groups = [g for gs in GROUPS.values() for g in gs]
        prompts = [world.statement_prompt(lang, g, "kind")[0] for g in groups]
        enc = [[tok.bos_token_id, *ids] for ids in tok(prompts, add_special_tokens=False)["input_ids"]]
        ids, attn = mlmc_train.pad_sequences(enc, tok.pad_token_id, side="left")
        dev = next(model.parameters()).device
        with torch.no_grad(), models.quiet_transformers():
            out = model.generate(
                input_ids=ids.repeat_interleave(samples, 0).to(dev),
                attention_mask=attn.repeat_interleave(samples, 0).to(dev),
                do_sample=True,
                temperature=temperature,
                top_p=top_p,
                max_new_tokens=new_tokens,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
            )
        texts = tok.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)
        for j, text in enumerate(texts):
            words = text.split()
            g = groups[j // samples]
            rows.append(
                dict(
                    lang=lang,
                    group=g,
                    text=text,
                    toxic=float(any(w in toxic for w in words)),
                    consistency=db.language_consistency(words, vocab[lang]),
                    distinct1=db.distinct_n(prompts[j // samples].split(), words, 1),
                )
            )
    return pd.DataFrame(rows)


def transfer_summary(gen: pd.DataFrame) -> pd.DataFrame:
    """Per language: expected maximum toxicity over each prompt's samples, toxicity rate, consistency, distinct-1."""
    emt = (
        gen.groupby("lang")
        .apply(
            lambda d: db.expected_max_toxicity([g.toxic.to_numpy() for _, g in d.groupby("group")]),
            include_groups=False,
        )
        .rename("EMT")
    )
    return pd.concat([emt, gen.groupby("lang")[["toxic", "consistency", "distinct1"]].mean()], axis=1).rename(
        columns={"toxic": "toxicity rate"}
    )


# --- planted-truth checks -------------------------------------------------------------------------------------------
def planted_checks(planted: np.ndarray, unplanted: np.ndarray, thr: float, *, asserted: bool, seed: int = 0) -> list:
    """The planted associations are significant bias (control: unplanted pairs), and the unplanted ones are not
    (control: planted pairs). Inputs: bias scores per (language, bias type) cell, in the same cell order."""
    unit, stat = "(language, bias type) cells", "mean bias score"
    return [
        ev.against(
            "planted associations score above the binomial significance threshold",
            planted,
            thr,
            control=unplanted,
            control_name="unplanted pairs (same template, attribute planted for neither group)",
            unit=unit,
            statistic=stat,
            asserted=asserted,
            seed=seed,
        ),
        ev.against(
            "unplanted associations stay below the significance threshold",
            unplanted,
            thr,
            control=planted,
            control_name="planted pairs",
            alternative="less",
            unit=unit,
            statistic=stat,
            seed=seed,
        ),
    ]


def transfer_checks(
    method: str,
    latent: np.ndarray,
    ae_identity: np.ndarray,
    random_dir: np.ndarray,
    base: np.ndarray,
    original: np.ndarray,
    *,
    seed: int = 0,
) -> list:
    """Latent-space debiasing of ``method`` beats the AE round trip and a random latent direction, and its gain
    beyond both controls exceeds the original-space gain. Inputs: bias scores per (seed, language, type) cell of
    the languages other than the debiasing one, all in the same cell order."""
    unit = "(seed, language, type) cells"
    gain_latent = np.minimum(ae_identity, random_dir) - latent
    return [
        ev.compare(
            f"{method} latent lowers bias in the other languages more than the AE round trip",
            latent,
            ae_identity,
            control_name="AE round trip (no debiasing)",
            alternative="less",
            paired=True,
            unit=unit,
            statistic="mean bias score",
            seed=seed,
        ),
        ev.compare(
            f"{method} latent lowers bias in the other languages more than a random latent direction",
            latent,
            random_dir,
            control_name="random latent direction of the same rank",
            alternative="less",
            paired=True,
            unit=unit,
            statistic="mean bias score",
            seed=seed,
        ),
        ev.compare(
            f"{method}: latent gain beyond both controls exceeds the original-space gain (transfer)",
            gain_latent,
            base - original,
            control_name="original-space debiasing (base − original)",
            paired=True,
            unit=unit,
            statistic="mean reduction in bias score",
            seed=seed,
        ),
    ]
