"""Chapter 05 driver: cultural values in a seq2seq LM and their revision during fine-tuning (thesis ch. 7).

Probes a tiny mT5 (or a hub mT5) with two-option value probes (:mod:`mlmc.values`), fine-tunes copies of it with
span corruption on one data source in one language (or on several languages at once), probes again, measures how
predictions shift, and traces shifts back to fine-tuning examples with projected TracIn (:mod:`mlmc.influence`).
Corruption is static: every training example is fixed before training, so the traced examples are exactly the
examples the model saw.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from datasets import Dataset
from torch import nn
from tqdm.auto import tqdm

from mlmc import evidence as ev
from mlmc import influence, models, train, values, zoo
from mlmc.errors import check_choice, check_device, check_int, check_positive, check_range, check_subset
from mlmc.utils import seed_everything
from mlmc.world import VALUE_ITEMS, World
from mlmc.world.value_sources import SOURCE_TARGETS, SOURCES, multilingual_value_corpus, value_source_corpus

REDUCTIONS = ("sum", "mean", "first")
MULTI = "multi"  # the ft_lang label of multilingual fine-tuning


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """``(fn(), wall seconds, CPU seconds)``."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


# --- parameters -----------------------------------------------------------------------------------------------------
def check_params(p: dict[str, Any], world: World | None) -> dict[str, Any]:
    """Validate every chapter parameter (one ``ValueError`` naming it) before any compute; returns derived values."""
    check_int("seed", p["seed"], 0)
    check_device("device", p["device"])
    check_choice("data_source", p["data_source"], ("world", "real"))
    langs_ok = world.languages if world is not None else sorted(values.LANG2COUNTRY)
    if p["data_source"] == "real":
        if not p["probes_path"] or not Path(p["probes_path"]).exists():
            raise ValueError(f"parameter 'probes_path' must name the probe archive or folder, got {p['probes_path']!r}")
        if not p["ft_data_path"] or not Path(p["ft_data_path"]).is_dir():
            raise ValueError(
                f"parameter 'ft_data_path' must be a folder of <source>/<lang>.txt files, got {p['ft_data_path']!r}"
            )
        langs_ok = sorted(set(langs_ok) | set(p["ft_langs"]))
    check_subset("test_langs", p["test_langs"], langs_ok, min_size=3)
    check_subset("ft_langs", p["ft_langs"], langs_ok if world is None else world.languages, min_size=1)
    check_subset("target_langs", p["target_langs"], p["test_langs"], min_size=1)
    if world is not None:
        check_subset("items", p["items"], [q for q, *_ in VALUE_ITEMS], min_size=0)
    check_subset("sources", p["sources"], SOURCES, min_size=1)
    if "neutral" not in p["sources"]:
        raise ValueError("parameter 'sources' must include 'neutral' (the control of every planted check)")
    check_subset("multi_sources", p["multi_sources"], p["sources"], min_size=0)
    check_subset("trace_sources", p["trace_sources"], p["sources"], min_size=0)
    seeds = check_subset("seeds", p["seeds"], list(range(10_000)), min_size=1)
    check_int("n_ft", p["n_ft"], 8)
    check_range("p_planted", p["p_planted"], 0.0, 1.0)
    check_range("p_answer_span", p["p_answer_span"], 0.0, 1.0)
    check_positive("lr", p["lr"])
    check_int("epochs", p["epochs"], 1)
    check_int("batch_size", p["batch_size"], 1)
    check_choice("reduction", p["reduction"], REDUCTIONS)
    check_int("proj_dim", p["proj_dim"], 8)
    check_int("top_k", p["top_k"], 1, p["n_ft"] * max(len(p["ft_langs"]), 1))
    if p["top_k"] > p["n_ft"]:
        raise ValueError(f"parameter 'top_k' ({p['top_k']}) must be <= n_ft ({p['n_ft']}), the training examples")
    if p["targets_path"] and not Path(p["targets_path"]).is_file():
        raise ValueError(f"parameter 'targets_path' must be a CSV of per-country aggregates, got {p['targets_path']!r}")
    return dict(seeds=seeds, probe_langs=list(dict.fromkeys([*p["test_langs"], *p["ft_langs"]])))


# --- model and probes -----------------------------------------------------------------------------------------------
def load_model(name: str, world: World | None, device: str) -> tuple[nn.Module, Any]:
    """The zoo's ``tiny-mt5`` (built on first use) or a hub/local seq2seq model, in eval mode on ``device``."""
    if name in zoo.NAMES:
        model, tok = zoo.get(name, world=world, progress=False)
    else:
        model, tok = models.load(name, "seq2seq")
    return model.to(device).eval(), tok


def make_probes(
    world: World | None, langs: Sequence[str], probes_path: str | None, items: Sequence[str] = ()
) -> pd.DataFrame:
    """World probes (with planted targets) or the real probe files, for ``langs`` (and only ``items`` if given;
    unknown item ids raise naming the parameter ``items``)."""
    probes = values.world_probes(world, langs) if world is not None else values.load_probes(probes_path, langs=langs)
    if items:
        values.check_qids("items", items, probes)
        probes = probes[probes.qid.isin(items)].reset_index(drop=True)
    return probes


def profile(model: nn.Module, tok: Any, probes: pd.DataFrame, reduction: str = "sum") -> pd.Series:
    """P(option 1) per probe row (batched two-option span scoring)."""
    return values.probe_profile(model, tok, probes, kind="seq2seq", reduction=reduction)


# --- fine-tuning data -----------------------------------------------------------------------------------------------
def load_parallel_text(root: str | Path, source: str, langs: Sequence[str], n: int) -> Dataset:
    """Real multi-parallel fine-tuning text: ``<root>/<source>/<lang>.txt`` with one sentence per line, or
    ``id<TAB>text`` lines (PBC verse ids); line ``i`` (or id) aligns across languages. The first ``n`` sentences
    shared by every language, in the order of the first language. Columns as the world's sources."""
    files = {x: Path(root) / source / f"{x}.txt" for x in langs}
    missing = [str(f) for f in files.values() if not f.is_file()]
    if missing:
        raise ValueError(f"parameter 'ft_data_path': missing file(s) {missing[:3]}")
    table = {}
    for x, f in files.items():
        lines = [ln.rstrip("\n") for ln in f.read_text(encoding="utf-8").splitlines() if ln.strip()]
        pairs = [ln.split("\t", 1) if "\t" in ln else (str(i), ln) for i, ln in enumerate(lines)]
        table[x] = dict(pairs)
    ids = [i for i in table[langs[0]] if all(i in table[x] for x in langs)][:n]
    rows = [
        dict(sent_id=f"{source}-{i}", lang=x, source=source, text=table[x][i], planted_qid="", direction=0, option="")
        for x in langs
        for i in ids
    ]
    return Dataset.from_list(rows)


def span_examples(
    tok: Any, corpus: Dataset, seed: int, *, noise_density: float = 0.15, p_answer_span: float = 0.5
) -> list[dict[str, Any]]:
    """Static span-corruption examples, one per corpus row: ``input_ids``, ``labels`` plus the row's metadata.

    Planted statements have their option word corrupted as one span with probability ``p_answer_span`` (the
    probe's cloze form), otherwise random spans (T5 defaults: noise 0.15, mean span 3) drawn once from ``seed``.
    """
    s_ids = [tok.convert_tokens_to_ids(f"<extra_id_{k}>") for k in range(20)]
    s_ids = [s for s in s_ids if s is not None and s != tok.unk_token_id]
    out = []
    for i, row in enumerate(corpus):
        rng = np.random.default_rng([seed, i, 7])
        ids = tok(row["text"], add_special_tokens=False)["input_ids"]
        opt = tok(row["option"], add_special_tokens=False)["input_ids"] if row["option"] else []
        start = next((j for j in range(len(ids) - len(opt) + 1) if opt and ids[j : j + len(opt)] == opt), None)
        if start is not None and rng.random() < p_answer_span:
            inp = ids[:start] + [s_ids[0]] + ids[start + len(opt) :] + [tok.eos_token_id]
            lab = [s_ids[0], *opt, s_ids[1], tok.eos_token_id]
        else:
            inp, lab = train.span_corrupt(
                ids, rng, sentinel_ids=s_ids, eos_id=tok.eos_token_id, noise_density=noise_density
            )
        out.append(dict(row) | dict(index=i, input_ids=inp, labels=lab))
    return out


def finetune(
    model: nn.Module, examples: list[dict], *, lr: float, epochs: int, batch_size: int, seed: int
) -> tuple[nn.Module, list[float]]:
    """A fine-tuned copy of ``model``: AdamW on the static examples, shuffled per epoch (seeded), no dropout."""
    seed_everything(seed)
    ft = copy.deepcopy(model).train()
    device = next(ft.parameters()).device
    opt = torch.optim.AdamW(ft.parameters(), lr=lr, weight_decay=0.0)
    rng, losses = np.random.default_rng(seed), []
    pad = ft.config.pad_token_id
    for _ in range(epochs):
        order = rng.permutation(len(examples))
        for lo in range(0, len(order), batch_size):
            batch = [examples[i] for i in order[lo : lo + batch_size]]
            ids, attn = train.pad_sequences([b["input_ids"] for b in batch], pad)
            labels, _ = train.pad_sequences([b["labels"] for b in batch], -100)
            loss = ft(input_ids=ids.to(device), attention_mask=attn.to(device), labels=labels.to(device)).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
    return ft.eval(), losses


# --- the fine-tuning grid -------------------------------------------------------------------------------------------
@dataclass
class Grid:
    """Profiles of the pretrained and every fine-tuned model, long format (setting, source, ft_lang, seed, lang,
    qid, p1), plus the fine-tuned models and training examples kept for tracing."""

    profiles: pd.DataFrame
    kept: dict[tuple[str, str, int], tuple[nn.Module, list[dict]]] = field(default_factory=dict)
    losses: dict[tuple[str, str, int], float] = field(default_factory=dict)


def corpus_for(world: World | None, p: dict, source: str, langs: Sequence[str], seed: int, multi: bool) -> Dataset:
    """The fine-tuning corpus of one run: the world's source (same sentences for every seed) or real text."""
    if world is None:
        n = p["n_ft"] // len(langs) if multi else p["n_ft"]
        ds = load_parallel_text(p["ft_data_path"], source, langs, n)
        return ds.shuffle(seed=seed) if multi else ds
    if multi:
        n = p["n_ft"] // len(langs)
        return multilingual_value_corpus(world, source, langs, n, seed=p["seed"], p_planted=p["p_planted"])
    return value_source_corpus(world, source, langs, p["n_ft"], seed=p["seed"], p_planted=p["p_planted"])


def run_grid(
    model: nn.Module, tok: Any, probes: pd.DataFrame, world: World | None, p: dict, *, progress: bool = False
) -> Grid:
    """Fine-tune on every (source, FT language, seed) and multilingually on ``multi_sources``; probe each model.

    Keeps the model and examples of every run that ``trace_sources`` asks to trace (seed ``seeds[0]``).
    """
    base = profile(model, tok, probes, p["reduction"])
    rows = [probes[["lang", "qid"]].assign(setting="pretrained", source="none", ft_lang="none", seed=-1, p1=base)]
    jobs = [("mono", s, x, sd) for s in p["sources"] for x in p["ft_langs"] for sd in p["seeds"]]
    jobs += [("multi", s, MULTI, sd) for s in p["multi_sources"] for sd in p["seeds"]]
    grid = Grid(pd.DataFrame())
    for setting, source, ft_lang, sd in tqdm(jobs, desc="fine-tuning runs", disable=not progress):
        langs = p["ft_langs"] if setting == "multi" else [ft_lang]
        examples = span_examples(
            tok, corpus_for(world, p, source, langs, sd, setting == "multi"), sd, p_answer_span=p["p_answer_span"]
        )
        ft, losses = finetune(model, examples, lr=p["lr"], epochs=p["epochs"], batch_size=p["batch_size"], seed=sd)
        rows.append(
            probes[["lang", "qid"]].assign(
                setting=setting, source=source, ft_lang=ft_lang, seed=sd, p1=profile(ft, tok, probes, p["reduction"])
            )
        )
        grid.losses[(source, ft_lang, sd)] = float(np.mean(losses[-max(1, len(examples) // p["batch_size"]) :]))
        if source in p["trace_sources"] and sd == p["seeds"][0]:
            grid.kept[(source, ft_lang, sd)] = (ft, examples)
    grid.profiles = pd.concat(rows, ignore_index=True)
    grid.profiles["pred"] = values.predictions(grid.profiles.p1)
    return grid


def shifts(profiles: pd.DataFrame, probes: pd.DataFrame, planted: bool = True) -> pd.DataFrame:
    """One row per fine-tuned (setting, source, ft_lang, seed, lang, qid): p_pre, p_post, dp, changed, category,
    planted direction (0 when the source does not target the item, always 0 for real data) and signed dp towards
    the planted option."""
    pre = profiles[profiles.setting == "pretrained"].set_index(["lang", "qid"])[["p1", "pred"]]
    post = profiles[profiles.setting != "pretrained"].copy()
    keys = pd.MultiIndex.from_frame(post[["lang", "qid"]])
    post["p_pre"], post["pred_pre"] = pre.p1.reindex(keys).to_numpy(), pre.pred.reindex(keys).to_numpy()
    post["dp"] = post.p1 - post.p_pre
    post["changed"] = post.pred != post.pred_pre
    cats = probes.drop_duplicates("qid").set_index("qid").category
    post["category"] = post.qid.map(cats)
    post["direction"] = [
        SOURCE_TARGETS.get(s, {}).get(q, 0) if planted else 0 for s, q in zip(post.source, post.qid, strict=True)
    ]
    post["signed_dp"] = np.where(post.direction == 2, -post.dp, post.dp)
    return post.reset_index(drop=True)


# --- shift tables ---------------------------------------------------------------------------------------------------
def unchanged_table(sh: pd.DataFrame, langs: Sequence[str]) -> pd.DataFrame:
    """% unchanged per (source, ft_lang) x test language, averaged over seeds (Fig 7.2)."""
    s = sh[sh.lang.isin(langs)]
    t = 100 * (1 - s.groupby(["source", "ft_lang", "lang"]).changed.mean())
    return t.unstack("lang")[list(langs)]


def unique_shift_fractions(sh: pd.DataFrame, langs: Sequence[str], ft_langs: Sequence[str]) -> pd.Series:
    """Per source: mean over test languages (and seeds) of the share of flipped items unique to one FT language."""
    out = {}
    mono = sh[(sh.setting == "mono") & sh.lang.isin(langs)]
    for source, g in mono.groupby("source"):
        fr = []
        for (_, _), h in g.groupby(["lang", "seed"]):
            sets = {x: set(h[(h.ft_lang == x) & h.changed].qid) for x in ft_langs}
            fr.append(values.unique_shift_fraction(sets))
        out[source] = float(np.nanmean(fr)) if not np.all(np.isnan(fr)) else np.nan
    return pd.Series(out, name="unique shift fraction")


def category_source_corr(sh: pd.DataFrame, langs: Sequence[str], sources: Sequence[str]) -> pd.DataFrame:
    """Pearson r between sources of the per-test-language % unchanged within each category (Fig 7.3); rows =
    categories, columns = source pairs; NaN where a vector is constant."""
    mono = sh[(sh.setting == "mono") & sh.lang.isin(langs)]
    vec = 100 * (1 - mono.groupby(["category", "source", "lang"]).changed.mean())
    out = {}
    for i, a in enumerate(sources):
        for b in sources[i + 1 :]:
            col = {}
            for cat in sorted(mono.category.unique()):
                va, vb = vec.loc[(cat, a)].reindex(langs), vec.loc[(cat, b)].reindex(langs)
                ok = va.std() > 0 and vb.std() > 0
                col[cat] = float(np.corrcoef(va, vb)[0, 1]) if ok else np.nan
            out[f"{a} vs {b}"] = col
    return pd.DataFrame(out)


def profile_matrix(profiles: pd.DataFrame, langs: Sequence[str], **sel) -> pd.DataFrame:
    """lang x qid matrix of P(option 1) for one model (``sel`` picks setting/source/ft_lang), averaged over seeds."""
    m = profiles
    for k, v in sel.items():
        m = m[m[k] == v]
    mat = m[m.lang.isin(langs)].groupby(["lang", "qid"]).p1.mean().unstack("qid")
    return mat.loc[list(langs), values.sort_qids(mat.columns)]


def alignment_table(
    profiles: pd.DataFrame, targets: pd.DataFrame, test_langs: Sequence[str], target_names: Sequence[str]
) -> pd.DataFrame:
    """Δρ = ρ(fine-tuned, target) − ρ(pretrained, target) per (source, target) x test language, averaged over the
    monolingual FT languages and seeds (Table 7.5). ``targets``: target name x qid."""
    pre = profile_matrix(profiles, test_langs, setting="pretrained")
    mono = profiles[profiles.setting == "mono"]
    rows = []
    for (source, ft_lang, sd), g in mono.groupby(["source", "ft_lang", "seed"]):
        post = profile_matrix(g, test_langs)
        for c in target_names:
            tgt = targets.loc[c]
            for t in test_langs:
                q = tgt.dropna().index.intersection(pre.columns)
                d = values.alignment_delta(pre.loc[t, q], post.loc[t, q], tgt[q])
                rows.append(dict(source=source, target=c, ft_lang=ft_lang, seed=sd, lang=t, delta_rho=d))
    long = pd.DataFrame(rows)
    return long.groupby(["source", "target", "lang"]).delta_rho.mean().unstack("lang")[list(test_langs)]


def rsa_table(profiles: pd.DataFrame, target_sim: pd.DataFrame, test_langs: Sequence[str]) -> pd.DataFrame:
    """RSA (row-wise Spearman) between each model's test-language similarity matrix and the targets' (Fig 7.5):
    one row per (setting, source, ft_lang, seed)."""
    rows = []
    for (setting, source, ft_lang, sd), g in profiles.groupby(["setting", "source", "ft_lang", "seed"]):
        sim = values.similarity_matrix(profile_matrix(g, test_langs))
        rows.append(
            dict(
                setting=setting,
                source=source,
                ft_lang=ft_lang,
                seed=sd,
                rsa=values.rsa(sim, target_sim.loc[list(test_langs), list(test_langs)]),
            )
        )
    return pd.DataFrame(rows)


# --- tracing --------------------------------------------------------------------------------------------------------
class SpanLoss(nn.Module):
    """Wraps a seq2seq LM for :func:`mlmc.influence.tracin`: the input is one packed 1-D example
    ``[n_enc, encoder ids..., label ids...]`` and the output is its teacher-forced loss (mean over label tokens)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.m = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[0]
        n = int(x[0])
        return self.m(input_ids=x[1 : 1 + n][None], labels=x[1 + n :][None]).loss


def pack(input_ids: Sequence[int], labels: Sequence[int]) -> torch.Tensor:
    """One example in the layout :class:`SpanLoss` reads."""
    return torch.tensor([len(input_ids), *input_ids, *labels])


def _loss_output(out: torch.Tensor, _y: torch.Tensor) -> torch.Tensor:
    return out


def probe_targets(tok: Any, probes: pd.DataFrame, option: np.ndarray) -> list[torch.Tensor]:
    """Packed probe examples: template with ``<extra_id_0>`` and the given option (1 or 2) as the span."""
    s0, s1 = tok.convert_tokens_to_ids(["<extra_id_0>", "<extra_id_1>"])
    out = []
    for (_, r), o in zip(probes.iterrows(), option, strict=True):
        enc = tok(r.template.replace(values.MASK, "<extra_id_0>"))["input_ids"]
        pieces = tok(r.opt1 if o == 1 else r.opt2, add_special_tokens=False)["input_ids"]
        out.append(pack(enc, [s0, *pieces, s1, tok.eos_token_id]))
    return out


def trace(
    model: nn.Module, examples: list[dict], targets: list[torch.Tensor], *, proj_dim: int, seed: int, device: str
) -> np.ndarray:
    """Projected TracIn scores ``[n_targets, n_train]`` of the final fine-tuned model (one checkpoint; cosine)."""
    train_set = [(pack(e["input_ids"], e["labels"]), 0) for e in examples]
    test_set = [(t, 0) for t in targets]
    scores = influence.tracin(
        SpanLoss(model),
        train_set,
        test_set,
        normalize="cosine",
        projector=influence.GaussianProjector(proj_dim, seed=seed),
        loss_fn=_loss_output,
        method="loop",
        progress=False,
        device=device,
    )
    return scores.total.numpy()


@dataclass
class Trace:
    """Top-k training examples per traced shift of one fine-tuned model."""

    source: str
    ft_lang: str
    targets: pd.DataFrame  # lang, qid, option, shifted, targeted
    top: np.ndarray  # [n_targets, k] indices into examples
    examples: pd.DataFrame  # index, sent_id, lang, planted_qid, direction


def trace_run(model, examples, tok, probes, post_pred, *, proj_dim, top_k, seed, device, sign=1) -> Trace:
    """Trace every probe of ``probes`` with its post-fine-tuning answer ``post_pred`` as the label."""
    scores = trace(model, examples, probe_targets(tok, probes, post_pred), proj_dim=proj_dim, seed=seed, device=device)
    top = influence.topk(torch.as_tensor(scores), top_k, sign=sign).numpy()
    ex = pd.DataFrame([{k: e[k] for k in ("index", "sent_id", "lang", "planted_qid", "direction")} for e in examples])
    return Trace("", "", probes[["lang", "qid"]].assign(option=post_pred).reset_index(drop=True), top, ex)


def planted_precision(tr: Trace, items: Sequence[str]) -> tuple[np.ndarray, float]:
    """Per traced target of a targeted item: share of its top-k that are planted statements of that same item and
    direction; and the base rate (the share of such statements among all training examples, averaged)."""
    prec, base = [], []
    for row, top in zip(tr.targets.itertuples(), tr.top, strict=True):
        if row.qid not in items:
            continue
        hit = (tr.examples.planted_qid == row.qid).to_numpy()
        prec.append(hit[top].mean())
        base.append(hit.mean())
    return np.asarray(prec), float(np.mean(base)) if base else float("nan")


def language_share(tr: Trace, langs: Sequence[str], rows: np.ndarray | None = None) -> pd.DataFrame:
    """% of each FT language among the top-k, averaged over the traced targets of each test language (Fig 7.6)."""
    out = {}
    lang_of = tr.examples.lang.to_numpy()
    for t, g in tr.targets.groupby("lang"):
        idx = g.index.to_numpy() if rows is None else np.intersect1d(g.index.to_numpy(), rows)
        if len(idx) == 0:
            continue
        shares = [[(lang_of[tr.top[i]] == x).mean() * 100 for x in langs] for i in idx]
        out[t] = dict(zip(langs, np.mean(shares, axis=0), strict=True))
    return pd.DataFrame(out).T


def parallel_overlap(a: Trace, b: Trace, rows: np.ndarray) -> float:
    """Mean share of top-k examples of one shift that are translations (same sent_id) in two mono traces."""
    sa, sb = a.examples.sent_id.to_numpy(), b.examples.sent_id.to_numpy()
    return float(np.mean([len(set(sa[a.top[i]]) & set(sb[b.top[i]])) / a.top.shape[1] for i in rows]))


def test_lang_consistency(tr: Trace, rows: np.ndarray) -> float:
    """Mean |top-k ∩ top-k| / k between test languages for the same item (both traced shifts)."""
    out = []
    sel = tr.targets.loc[rows]
    for _, g in sel.groupby("qid"):
        idx = g.index.to_numpy()
        for i in range(len(idx)):
            for j in range(i + 1, len(idx)):
                out.append(len(set(tr.top[idx[i]]) & set(tr.top[idx[j]])) / tr.top.shape[1])
    return float(np.mean(out)) if out else float("nan")


def stamp(fig, text: str) -> None:
    """Write ``text`` (e.g. "targets: synthetic") in the lower right corner of a figure."""
    fig.text(0.995, 0.005, text, ha="right", va="bottom", fontsize=7, color="0.35", style="italic")


# --- planted checks -------------------------------------------------------------------------------------------------
def planted_checks(
    sh: pd.DataFrame, precision: np.ndarray, base_rate: float, shuffled: np.ndarray, asserted: bool, seed: int = 0
) -> list[ev.Check]:
    """The chapter's planted-truth checks (thresholds fixed here, before any run)."""
    mono = sh[sh.setting == "mono"]
    planted_src = sorted(set(mono.source) - {"neutral"})
    neutral = mono[mono.source == "neutral"].sort_values(["ft_lang", "seed", "lang", "qid"])
    cells = ["ft_lang", "seed", "lang"]
    unch_neutral = 100 * (1 - neutral.groupby(cells).changed.mean())
    checks = []
    if planted_src:
        plant = mono[mono.source == planted_src[0]]
        unch_plant = 100 * (1 - plant[plant.lang == plant.ft_lang].groupby(cells).changed.mean())
        checks.append(
            ev.against(
                "neutral fine-tuning leaves >= 90% of predictions unchanged",
                unch_neutral.to_numpy(),
                90.0,
                control=unch_plant.to_numpy(),
                control_name=f"{planted_src[0]} fine-tuning, FT language",
                unit="(FT language, seed, test language)",
                statistic="% unchanged",
                asserted=asserted,
                seed=seed,
            )
        )
    tgt = mono[mono.direction != 0]
    key = ["ft_lang", "seed", "lang", "qid"]
    neut = neutral.set_index(key).signed_dp
    for same, claim, thr in [
        (True, "planted data moves targeted items towards the planted option in the FT language", 0.05),
        (False, "planted data moves targeted items towards the planted option in the other languages", 0.0),
    ]:
        part = tgt[(tgt.lang == tgt.ft_lang) == same]
        ctrl = neut.reindex(pd.MultiIndex.from_frame(part[key])).to_numpy()
        ctrl = np.where(part.direction.to_numpy() == 2, -ctrl, ctrl) if len(part) else ctrl
        if len(part) < 2:
            continue
        checks.append(
            ev.compare(
                claim,
                part.signed_dp.to_numpy(),
                ctrl,
                control_name="the same items after neutral fine-tuning",
                threshold=thr,
                paired=True,
                unit="(item, FT language, seed, test language)",
                statistic="mean ΔP(planted option)",
                asserted=asserted and same,
                seed=seed,
            )
        )
    untargeted = mono[(mono.direction == 0) & (mono.source != "neutral")]
    spread = float(neutral.groupby(["ft_lang", "lang", "qid"]).p1.std().mean()) if neutral.seed.nunique() > 1 else 0
    if len(untargeted) and spread > 0:
        ctrl = neut.reindex(pd.MultiIndex.from_frame(untargeted[key])).abs().to_numpy()
        checks.append(
            ev.compare(
                "untargeted items move no more than after neutral fine-tuning, within the seed-to-seed spread",
                untargeted.dp.abs().to_numpy(),
                ctrl,
                control_name="the same items after neutral fine-tuning",
                threshold=spread,
                alternative="less",
                paired=True,
                unit="(item, FT language, seed, test language)",
                statistic=f"mean |ΔP| (spread {spread:.3f})",
                kind="consistency",
                seed=seed,
            )
        )
    if len(precision):
        checks.append(
            ev.against(
                "TracIn top-k of a planted shift holds planted statements of that item above their base rate",
                precision,
                base_rate,
                control=shuffled,
                control_name="the same targets with training scores shuffled",
                unit="traced shifts",
                statistic="precision@k",
                asserted=asserted,
                seed=seed,
            )
        )
    return checks


def pretrained_alignment_check(pre: np.ndarray, target: np.ndarray, asserted: bool, seed: int = 0) -> ev.Check:
    """The pretrained profile correlates with the planted per-language answer rates (the model learned them)."""
    return ev.correlation(
        "the pretrained model's P(option 1) follows the planted answer rate of each language",
        pre,
        target,
        method="spearman",
        unit="(language, item)",
        asserted=asserted,
        seed=seed,
    )
