"""Chapter 06 driver: self-alignment of cultural values by in-context learning (thesis ch. 8).

Wires :mod:`mlmc.alignment` (prompts, demonstration selection, answer reading, metrics), :mod:`mlmc.personas`
(persona documents with a latent culture and their Bayes-optimal reader), :mod:`mlmc.zoo` (the ``tiny-icl-llama``
pretraining), :mod:`mlmc.scoring` (option log-probabilities) and :mod:`mlmc.evidence` into the chapter's runs.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mlmc import alignment as al
from mlmc import evidence as ev
from mlmc import personas, scoring, values, zoo
from mlmc.errors import check_choice, check_device, check_int, check_positive, check_range, check_subset

ORACLES = ("bayes", "bayes-country", "prior-only")
ZOO_MODELS = ("tiny-icl-llama",)
DATA_SOURCES = ("world", "probes")
MODEL_LABEL = {
    "bayes": "Bayes oracle",
    "bayes-country": "Bayes, country only (ρ = 0)",
    "prior-only": "no value associations",
    "tiny-icl-llama": "tiny-icl-llama (trained)",
}


def rng_for(*keys: Any) -> np.random.Generator:
    """A generator seeded by ``keys`` (ints and strings), stable across processes (no Python ``hash``)."""
    return np.random.default_rng([k if isinstance(k, int) else zlib.crc32(str(k).encode()) for k in keys])


def check_params(p: dict[str, Any], world_langs: Sequence[str] | None, n_items: int | None = None) -> dict[str, Any]:
    """Validate every parameter before any compute (device included): ``world_langs`` are the world's languages
    (None for real probes), ``n_items`` the probes per language when known (``k`` must leave the test item out)."""
    check_int("seed", p["seed"], min_value=0)
    check_device("device", p["device"])
    check_choice("data_source", p["data_source"], DATA_SOURCES)
    if p["data_source"] == "world":
        langs = check_subset("langs", p["langs"], list(world_langs or []))
        bad = [m for m in p["models"] if m not in (*ORACLES, *ZOO_MODELS)]
        if bad:
            raise ValueError(
                f"parameter 'models' holds {bad}: on data_source='world' use {[*ORACLES, *ZOO_MODELS]} "
                "(hub models need the real probes, data_source='probes')"
            )
    else:
        if not p["probes_dir"]:
            raise ValueError("parameter 'probes_dir' must name the folder of the value-probing TSV files")
        if not p["targets_csv"]:
            raise ValueError("parameter 'targets_csv' must name the per-country WVS aggregate table (human targets)")
        langs = list(p["langs"])
        bad = [m for m in p["models"] if m in (*ORACLES, *ZOO_MODELS)]
        if bad:
            raise ValueError(f"parameter 'models' holds {bad}, which exist only on data_source='world'")
    if not p["models"]:
        raise ValueError("parameter 'models' must name at least one model")
    check_choice("anchor", p["anchor"], langs)
    al.check_strategies(p["strategies"])
    check_int("k", p["k"], min_value=1)
    if n_items is not None:
        al.check_k(p["k"], n_items)
    for s in p["seeds"]:
        check_int("seeds", s, min_value=0)
    if not p["seeds"]:
        raise ValueError("parameter 'seeds' must hold at least one seed")
    check_int("n_samples", p["n_samples"], min_value=1)
    check_positive("temperature", p["temperature"])
    check_range("rho", p["rho"], 0.0, 0.95)
    check_range("home_share", p["home_share"], 0.0, 1.0)
    check_range("anchor_share", p["anchor_share"], 0.0, 1.0 - p["home_share"])
    for name in ("n_docs", "n_heldout", "pretrain_steps", "max_pairs", "batch_size", "max_new_tokens"):
        check_int(name, p[name], min_value=1)
    return {"langs": langs}


# --- items and targets ----------------------------------------------------------------------------------------------
def majority(items: pd.DataFrame) -> pd.DataFrame:
    """Per (lang, qid): the majority answer (``mlmc.values.majority_targets``) as an option *string* (``maj``), its
    index (``maj_idx``, 1|2) and whether it is a near tie (``tie``: p within 0.5 pp of one half)."""
    if items.target_p1.isna().any():
        raise ValueError("every probe needs a human target (target_p1); see the 'full' profile notes")
    idx = np.concatenate(
        [values.majority_targets(g, lang).loc[g.qid].to_numpy() for lang, g in items.groupby("lang", sort=False)]
    )
    items = pd.concat([g for _, g in items.groupby("lang", sort=False)])
    return items.assign(
        maj_idx=idx,
        maj=np.where(idx == 1, items.opt1, items.opt2),
        tie=(items.target_p1 - 0.5).abs() < 0.005,
    ).reset_index(drop=True)


def world_items(world, langs: Sequence[str]) -> pd.DataFrame:
    """The world's value probes in ``langs`` (``mlmc.values.world_probes``, shared with chapter 05): lang, qid,
    category (WVS-7 section), template, opt1, opt2 and target_p1, the planted p(option 1) of the language's culture."""
    return values.world_probes(world, list(langs))


def real_items(probes_dir: str, langs: Sequence[str], targets_csv: str) -> pd.DataFrame:
    """The released value-probing probes (``mlmc.values.load_probes``, shared with chapter 05) with human targets:
    ``target_p1`` of each language's WVS country (thesis Table 7.2) from the aggregate table ``targets_csv``
    (``mlmc.values.load_aggregates``). Probes without a target are dropped."""
    probes = values.load_probes(probes_dir, langs=list(langs))
    agg = values.load_aggregates(targets_csv).set_index(["country", "qid"]).p_opt1
    keys = [(values.LANG2COUNTRY.get(lang), q) for lang, q in zip(probes.lang, probes.qid, strict=True)]
    target = [float(agg.get(key, np.nan)) for key in keys]
    return probes.assign(target_p1=target).dropna(subset=["target_p1"]).reset_index(drop=True)


def persona_world(
    world, items: pd.DataFrame, langs: Sequence[str], anchor: str, rho: float, home_share: float, anchor_share: float
):
    """The persona world over ``items`` (countries = ``langs``, in that order), loadings from all world languages."""
    table = world.value_truth(world.languages).pivot(index="qid", columns="lang", values="p_opt1")
    return personas.PersonaWorld(
        items,
        personas.value_loadings(table),
        personas.language_prior(langs, anchor, home_share, anchor_share),
        rho=rho,
    )


# --- the trained tiny LM --------------------------------------------------------------------------------------------
@dataclass
class Pretrained:
    model: Any
    tokenizer: Any
    report: dict
    heldout: pd.DataFrame


def pretrain_icl(
    pw: personas.PersonaWorld,
    n_docs: int,
    n_heldout: int,
    steps: int,
    max_pairs: int,
    seed: int,
    train: bool = True,
    progress: bool = True,
) -> Pretrained:
    """Persona documents (training and held-out, seeded), and the ``tiny-icl-llama`` trained on them (cached zoo
    build). With ``train=False`` only the word-level tokenizer is built (for the Bayes readers)."""
    docs = pw.sample_documents(n_docs, rng_for(seed, "docs"), max_pairs=max_pairs)
    held = pw.sample_documents(n_heldout, rng_for(seed, "heldout"), max_pairs=max_pairs, oracle=True)
    if not train:
        return Pretrained(None, zoo.train_word_tokenizer(list(docs.text) + list(held.text)), {}, held)
    entry = zoo.icl_path("tiny-icl-llama", list(docs.text), list(held.text), progress=progress, steps=steps, seed=seed)
    from mlmc import models

    model, tok = models.load(entry, "causal-lm")
    return Pretrained(model, tok, zoo.report(entry), held)


def icl_curve(pre: Pretrained) -> pd.DataFrame:
    """Per held-out answer: its position (demonstrations before it) and the NLL (nats) of the trained LM, the Bayes
    oracle and the prior-only reader (the language's marginal)."""
    nll = zoo.icl_answer_nll(pre.model, pre.tokenizer, list(pre.heldout.text))
    rows = []
    for d, n in zip(pre.heldout.itertuples(), nll, strict=True):
        for i, (a, p1, pr) in enumerate(zip(d.answers, d.p1, d.prior, strict=True)):
            rows.append(
                dict(
                    lang=d.lang,
                    pos=i,
                    lm=n[i],
                    oracle=-np.log(p1 if a == 1 else 1 - p1),
                    prior=-np.log(pr if a == 1 else 1 - pr),
                )
            )
    return pd.DataFrame(rows)


def readers(names: Sequence[str], pw: personas.PersonaWorld | None, pre: Pretrained | None, device: str):
    """Yield ``(name, model, tokenizer, chat)`` for each model, one at a time (a hub LLM is loaded only when its
    turn comes, so the full profile holds one 7B model in memory). The Bayes readers use the tiny LM's word-level
    tokenizer; ``chat`` is whether the tokenizer has a chat template."""
    from mlmc import models

    for name in names:
        if name == "bayes":
            model, tok = personas.BayesPersonaLM(pw, pre.tokenizer), pre.tokenizer
        elif name == "bayes-country":
            country_only = personas.PersonaWorld(pw.probes, pw.loadings, pw.prior, rho=0.0)
            model, tok = personas.BayesPersonaLM(country_only, pre.tokenizer), pre.tokenizer
        elif name == "prior-only":
            model, tok = personas.BayesPersonaLM(pw, pre.tokenizer, associations=False), pre.tokenizer
        elif name in ZOO_MODELS:
            model, tok = pre.model, pre.tokenizer
        else:
            model, tok = models.load(name, "causal-lm", device=device)
            if tok.pad_token_id is None:
                tok.pad_token = tok.eos_token
        yield name, model, tok, bool(getattr(tok, "chat_template", None))


# --- self-alignment runs --------------------------------------------------------------------------------------------
def prompts_for(
    items: pd.DataFrame, conditions: Sequence[str], k: int, seeds: Sequence[int], instruction: str = al.INSTRUCTION
) -> pd.DataFrame:
    """Every prompt of the run: one row per (lang, seed, qid, condition) with the demonstrations and the prompt text
    for both orders of the test options (``text_a``: opt1 first; ``text_b``: opt2 first)."""
    rows = []
    for lang, pool in items.groupby("lang", sort=False):
        pool = pool.reset_index(drop=True)
        al.check_k(k, len(pool))
        chrf = pd.DataFrame(al.chrf_matrix([al.blank(t) for t in pool.template]), index=pool.qid, columns=pool.qid)
        answers = dict(zip(pool.qid, pool.maj, strict=True))
        records = {r.qid: r for r in pool.itertuples()}
        for seed in seeds:
            for test in records.values():
                for cond in conditions:
                    rng = rng_for(seed, lang, test.qid, cond)
                    demo_qids: list[str] = []
                    if cond != "zero_shot":
                        demo_qids = al.select_demos(
                            pool, test.qid, "chrf" if cond == "chrf_shuffled" else cond, k, rng, chrf
                        )
                    if cond == "chrf_shuffled":
                        demo_qids = [str(q) for q in rng.permutation(demo_qids)]
                    demos = [records[q] for q in demo_qids]
                    texts = [
                        al.build_prompt(
                            test,
                            demos,
                            answers,
                            rng_for(seed, lang, test.qid, cond, "order"),
                            instruction,
                            test_first=first,
                        ).text
                        for first in (test.opt1, test.opt2)
                    ]
                    rows.append(
                        dict(
                            lang=lang,
                            seed=seed,
                            qid=test.qid,
                            category=test.category,
                            condition=cond,
                            n_demos=len(demo_qids),
                            demos=tuple(demo_qids),
                            maj=test.maj,
                            opt1=test.opt1,
                            opt2=test.opt2,
                            text_a=texts[0],
                            text_b=texts[1],
                        )
                    )
    return pd.DataFrame(rows)


def score_prompts(
    model, tokenizer, prompts: pd.DataFrame, temperature: float, batch_size: int, chat: bool = False
) -> pd.DataFrame:
    """p(majority) per prompt row: option log-probabilities (batched, ``mlmc.scoring``) in both test-option orders,
    softmax at ``temperature``, averaged over the two orders."""
    fmt = (lambda s: al.to_model_text(s, tokenizer)) if chat else (lambda s: s)
    ctx, comp = [], []
    for r in prompts.itertuples():
        for text in (r.text_a, r.text_b):
            ctx += [fmt(text), fmt(text)]
            comp += [r.opt1, r.opt2]
    lp = np.asarray(scoring.completion_logprobs(model, tokenizer, ctx, comp, batch_size=batch_size)).reshape(-1, 2, 2)
    p1 = al.option_probs(lp, temperature)[..., 0].mean(axis=1)
    p_maj = np.where(prompts.maj.to_numpy() == prompts.opt1.to_numpy(), p1, 1.0 - p1)
    return prompts.assign(p_maj=p_maj, d_exp=100.0 * (1.0 - p_maj))


def sample_deltas(scored: pd.DataFrame, n_samples: int) -> pd.DataFrame:
    """delta from ``n_samples`` draws per prompt (``sample_from_scores``; seeded per row)."""
    d = [
        al.misalignment(al.sample_answers([r.p_maj], n_samples, rng_for(r.seed, r.lang, r.qid, r.condition, "draw")))[0]
        for r in scored.itertuples()
    ]
    return scored.assign(delta=np.asarray(d, dtype=float))


def paired(deltas: pd.DataFrame) -> pd.DataFrame:
    """Self-alignment rows joined with their zero-shot row: d_zs, d_sa (sampled), e_zs, e_sa (expected), outcome
    (on the sampled deltas, over items with d_zs > 0) and error reduction (Eq. 8.1)."""
    keys = ["model", "lang", "seed", "qid"]
    zs = deltas[deltas.condition == "zero_shot"].set_index(keys)[["delta", "d_exp"]]
    sa = deltas[deltas.condition != "zero_shot"].join(zs.rename(columns={"delta": "d_zs", "d_exp": "e_zs"}), on=keys)
    sa = sa.rename(columns={"delta": "d_sa", "d_exp": "e_sa"})
    return sa.assign(outcome=al.outcome(sa.d_zs, sa.d_sa), reduction=al.error_reduction(sa.d_zs, sa.d_sa))


def generated_deltas(
    model,
    tokenizer,
    prompts: pd.DataFrame,
    n: int,
    temperature: float,
    max_new_tokens: int,
    seed: int,
    chat: bool = False,
) -> pd.DataFrame:
    """Answers read from sampled generations: ``n`` continuations per prompt (test options in a random order per
    prompt), parsed to an option; delta counts unparseable answers as wrong; invalid = their share."""
    fmt = (lambda s: al.to_model_text(s, tokenizer)) if chat else (lambda s: s)
    use_a = [bool(rng_for(seed, r.lang, r.qid, r.condition, "gen").random() < 0.5) for r in prompts.itertuples()]
    texts = [fmt(r.text_a if a else r.text_b) for r, a in zip(prompts.itertuples(), use_a, strict=True)]
    outs = al.generate(model, tokenizer, texts, n=n, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
    rows = []
    for r, gens in zip(prompts.itertuples(), outs, strict=True):
        parsed = [al.parse_option(g, [r.opt1, r.opt2]) for g in gens]
        maj = 0 if r.maj == r.opt1 else 1
        rows.append(
            dict(
                d_gen=float(al.misalignment(np.array([[p == maj for p in parsed]]))[0]),
                invalid=float(np.mean([p is None for p in parsed])),
                example=gens[0],
            )
        )
    return prompts.reset_index(drop=True).join(pd.DataFrame(rows))


def timed(fn):
    """``(fn(), wall seconds, CPU seconds)``."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


# --- planted checks -------------------------------------------------------------------------------------------------
def improvement(pairs: pd.DataFrame, model: str, condition: str = "chrf") -> np.ndarray:
    """d_zs - d_sa (sampled) over the initially misaligned (lang, seed, item) rows of ``model`` under ``condition``."""
    x = pairs[(pairs.model == model) & (pairs.condition == condition) & (pairs.d_zs > 0)]
    return (x.d_zs - x.d_sa).to_numpy(dtype=float)


def planted_checks(
    oracle_gain: np.ndarray,
    lm_gain: np.ndarray | None,
    control_gain: np.ndarray,
    curve_gain: np.ndarray | None,
    curve_zero: np.ndarray | None,
    asserted: bool,
) -> list:
    """The chapter's planted-truth checks (thresholds fixed here, before the run):

    1. the Bayes oracle's delta drops with chrF++ demonstrations, vs the reader without value associations
       (``asserted`` as given);
    2. the same for the trained tiny LM (reported, never asserted: whether it learns in context is the question);
    3. the tiny LM's held-out answer NLL after >= 2 in-document answers is below the prior-only reference
       (control: the first answer of each document, where no context can help; reported).
    """
    checks = [
        ev.compare(
            "Bayes oracle: chrF++ demonstrations lower δ on misaligned items (points)",
            oracle_gain,
            control_gain,
            control_name="reader without value associations",
            unit="misaligned item-runs",
            statistic="mean δ_zs − δ_sa",
            asserted=asserted,
        ),
    ]
    if lm_gain is not None:
        checks.append(
            ev.compare(
                "tiny-icl-llama: chrF++ demonstrations lower δ on misaligned items (points)",
                lm_gain,
                control_gain,
                control_name="reader without value associations",
                unit="misaligned item-runs",
                statistic="mean δ_zs − δ_sa",
            )
        )
    if curve_gain is not None:
        checks.append(
            ev.against(
                "tiny-icl-llama learned ICL: held-out answer NLL below the prior-only reader after ≥ 2 answers (nats)",
                curve_gain,
                0.0,
                control=curve_zero,
                control_name="first answer of each document (no context)",
                unit="held-out answers",
                statistic="mean NLL_prior − NLL_LM",
            )
        )
    return checks
