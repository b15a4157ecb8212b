"""Chapter 03 driver: language subnetworks, their specialisation under TracIn, and sparse fine-tuning (thesis ch. 5).

Thin functions composed from the kernels, so that the notebook reads as the experiment (Choenni, Shutova &
Garrette 2024, "Examining modularity in multilingual LMs via language-specialized subnetworks"):

- data: :func:`load_data` reads a task from the synthetic world or from PAWS-X / XNLI / MARC through
  :mod:`mlmc.data.classification` (the chapter-01 loaders); both give the same columns.
- models: every run starts from the same pretrained encoder (a zoo name such as ``tiny-xlmr`` or a hub id); full
  fine-tuning with :func:`mlmc.train.finetune_classifier`, sparse fine-tuning with :func:`sparse_finetune`, which
  calls :func:`mlmc.sft.sft_step` on one language's batch at a time under that language's head mask.
- subnetworks: :func:`find_masks` prunes heads (:func:`mlmc.subnetworks.iterative_head_pruning`) from a model
  fine-tuned on the language alone (``"monolingual"``) or from the multilingual model (``"multilingual"``).
- specialisation: :class:`Tracer` runs :func:`mlmc.influence.tracin` with a head mask applied through
  :class:`mlmc.heads.HeadGate` (train and test gradients under the same mask: the subnetwork is the model), on a
  random projection of the gradients; :func:`shares` turns the scores into language shares C± per test item.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from datasets import Dataset
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoConfig, get_linear_schedule_with_warmup

from mlmc import crossling, influence, zoo
from mlmc import evidence as ev
from mlmc import models as mlmc_models
from mlmc import train as mlmc_train
from mlmc.data import classification
from mlmc.errors import check_choice, check_device, check_int, check_positive, check_subset
from mlmc.heads import HeadGate
from mlmc.sft import sft_step
from mlmc.subnetworks import compose, iterative_head_pruning, mask_cosine, random_mask, shuffle_mask
from mlmc.utils import atomic_dir, seed_everything

TASKS = ("sentiment", "entailment", "paraphrase")
REAL_TASK = {"paraphrase": "pawsx", "entailment": "xnli", "sentiment": "marc"}
THESIS_TASK = {"paraphrase": "PAWS-X", "entailment": "XNLI", "sentiment": "MARC"}
MASK_SOURCES = ("monolingual", "multilingual")
SFT_MODES = ("strict", "grad")
COMPOSE_OPS = ("and", "or")


# ------------------------------------------------------------------------------------------------- parameters
def encoder_shape(model_name: str) -> tuple[int, int]:
    """``(layers, heads)`` of a zoo model or hub/local XLM-R-style encoder, read from its recipe or config only."""
    if model_name in zoo.NAMES:
        rec = zoo.recipe(model_name)
        return rec.layers, rec.heads
    try:
        with mlmc_models.quiet_transformers():
            cfg = AutoConfig.from_pretrained(model_name, local_files_only=mlmc_models._is_offline())
    except OSError as err:
        raise ValueError(
            f"parameter 'model_name' must be a zoo name {list(zoo.NAMES)} or a hub id / local directory whose "
            f"config can be read, got {model_name!r} ({type(err).__name__})"
        ) from None
    return int(cfg.num_hidden_layers), int(cfg.num_attention_heads)


def _open_unit(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
        raise ValueError(f"parameter {name!r} must be a number in the open interval (0, 1), got {value!r}")
    return float(value)


def check_params(p: Mapping[str, Any], world: Any = None) -> dict[str, Any]:
    """Validate every chapter parameter before any compute; return derived sizes (layers, heads, k per round).

    Each error names the parameter and what it allows: unknown task or language, a sparsity outside (0, 1), a mask
    pair or an other-language mask for a language that is not trained, a device that is not available.
    """
    check_device("device", p["device"])
    check_choice("task", p["task"], TASKS)
    allowed = world.languages if p["data_source"] is None else classification.LANGUAGES[REAL_TASK[p["task"]]]
    langs = check_subset("langs", p["langs"], list(allowed), min_size=2)
    seeds = check_subset("seeds", p["seeds"], list(range(10_000)), min_size=1)
    for name in (
        "n_train_per_lang",
        "n_dev_per_lang",
        "n_test_pool_per_lang",
        "n_test_per_lang",
        "epochs",
        "mono_epochs",
        "batch_size",
        "n_imp_batches",
        "n_random_masks",
        "top_m",
        "trace_batch_size",
    ):
        check_int(name, p[name], 1)
    check_int("max_length", p["max_length"], 8)
    check_int("proj_dim", p["proj_dim"], 0)
    check_int("trace_every", p["trace_every"], 1, p["epochs"])
    check_int("n_trace_per_lang", p["n_trace_per_lang"], 1, p["n_train_per_lang"])
    check_int("n_test_per_lang", p["n_test_per_lang"], 1, p["n_test_pool_per_lang"])
    n_trace = p["n_trace_per_lang"] * len(langs)
    check_int("top_m", p["top_m"], 1, n_trace // 2)
    for name in ("lr", "sft_lr"):
        check_positive(name, p[name])
    check_positive("weight_decay", p["weight_decay"], allow_zero=True)
    check_choice("mask_source", p["mask_source"], MASK_SOURCES)
    check_choice("sft_mask_mode", p["sft_mask_mode"], SFT_MODES)
    step = _open_unit("prune_step", p["prune_step"])
    _open_unit("prune_threshold", p["prune_threshold"])
    if p["random_sparsity"] is not None:
        _open_unit("random_sparsity", p["random_sparsity"])
    for test_lang, others in (p["other_masks"] or {}).items():
        check_choice("other_masks (test language)", test_lang, langs)
        check_subset(f"other_masks[{test_lang}]", others, [x for x in langs if x != test_lang])
    for pair in p["compose_pairs"]:
        if isinstance(pair, str) or len(pair) != 2:
            raise ValueError(f"parameter 'compose_pairs' must be a list of [lang_a, lang_b] pairs, got {pair!r}")
        check_subset("compose_pairs", pair, langs)
    if not isinstance(p["grad_params"], list | str) or not p["grad_params"]:
        raise ValueError("parameter 'grad_params' must be 'all', 'no_word_embeddings' or a list of name globs")
    n_layers, n_heads = encoder_shape(p["model_name"])
    return {
        "langs": langs,
        "seeds": seeds,
        "n_layers": n_layers,
        "n_heads": n_heads,
        "n_trace": n_trace,
        "prune_k": max(1, int(step * n_layers * n_heads)),
    }


# ------------------------------------------------------------------------------------------------------- data
@dataclass
class TaskData:
    """The splits of one task: ``train`` (rows grouped by language), ``dev`` (pruning stop rule), ``pool`` (test
    pool) and ``trace`` (the first ``n_trace_per_lang`` training rows of each language: the candidates TracIn ranks)."""

    train: Dataset
    dev: Dataset
    pool: Dataset
    trace: Dataset

    def of(self, split: str, lang: str) -> Dataset:
        """Rows of one language of a split."""
        ds = getattr(self, split)
        return ds.select(np.flatnonzero(np.asarray(ds["lang"]) == lang))


def load_data(
    task: str,
    langs: Sequence[str],
    n_train: int,
    n_dev: int,
    n_pool: int,
    n_trace: int,
    seed: int,
    world: Any = None,
    source: str | None = None,
) -> TaskData:
    """Training, dev and test-pool rows per language, from the world (``source=None``) or a real dataset."""

    def get(split: str, n: int) -> Dataset:
        if source is not None:
            return classification.load_task(REAL_TASK[task], list(langs), n, split, seed, source)
        return getattr(world, task)(list(langs), n, split, seed=seed).select_columns(list(classification.COLUMNS))

    train = get("train", n_train)
    lang_col = np.asarray(train["lang"])
    trace_rows = [i for x in langs for i in np.flatnonzero(lang_col == x)[:n_trace]]
    return TaskData(train, get("dev", n_dev), get("test", n_pool), train.select(trace_rows))


def encode(tokenizer: Any, ds: Dataset, max_length: int) -> dict[str, list]:
    """``{"input_ids", "label"}`` of a split: ``text_a`` (and ``text_b`` when the task has second texts)."""
    cols = ["text_a"] + (["text_b"] if any(ds["text_b"]) else [])
    ids = tokenizer(*[list(ds[c]) for c in cols], truncation=True, max_length=max_length)["input_ids"]
    return {"input_ids": ids, "label": [int(y) for y in ds["label"]]}


def batches(
    tokenizer: Any,
    ds: Dataset,
    batch_size: int,
    max_length: int,
    device: str,
    limit: int | None = None,
    order: np.ndarray | None = None,
) -> list[dict[str, torch.Tensor]]:
    """Padded batches ``{input_ids, attention_mask, labels}`` of ``ds`` (in ``order``; at most ``limit``)."""
    enc = encode(tokenizer, ds, max_length)
    order = np.arange(len(ds)) if order is None else order
    out = []
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        ids, mask = mlmc_train.pad_sequences([enc["input_ids"][i] for i in idx], tokenizer.pad_token_id)
        labels = torch.as_tensor([enc["label"][i] for i in idx])
        out.append({"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)})
        if limit is not None and len(out) >= limit:
            break
    return out


def cls_loss(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy of a sequence classifier on one padded batch (the loss of pruning and SFT)."""
    return model(**batch).loss


# ----------------------------------------------------------------------------------------------------- models
def model_source(model_name: str, world: Any = None) -> str:
    """A local directory for a zoo name (built and cached on first use), else the hub id / path itself."""
    return str(zoo.path(model_name, world=world, progress=False)) if model_name in zoo.NAMES else model_name


def load_classifier(source: str, seed: int, device: str) -> tuple[nn.Module, Any]:
    """The pretrained encoder with a fresh two-class head (tanh MLP on ``<s>``), seeded."""
    return mlmc_models.load(source, "seq-cls", num_labels=2, seed=seed, device=device)


def gate_of(model: nn.Module) -> HeadGate:
    """The model's head gate (attached on first use)."""
    return HeadGate.attached(model) or HeadGate(model)


def correct(
    model: nn.Module, tokenizer: Any, ds: Dataset, mask: torch.Tensor | None, max_length: int, batch_size: int = 64
) -> np.ndarray:
    """Whether each row of ``ds`` is classified correctly with heads gated by ``mask`` (``None``: full model)."""
    with gate_of(model).using(mask):
        probs = mlmc_train.predict(model, tokenizer, ds, batch_size=batch_size, max_length=max_length)
    return probs.argmax(-1) == np.asarray(ds["label"])


def finetune(
    source: str,
    tokenizer: Any,
    train: Dataset,
    dev: Dataset | None,
    ckpt_dir: Path,
    *,
    lr: float,
    epochs: int,
    batch_size: int,
    seed: int,
    weight_decay: float,
    max_length: int,
    device: str,
    progress: bool = False,
) -> mlmc_train.TrainResult:
    """Full fine-tuning from the pretrained encoder, one checkpoint per epoch (S1)."""
    model, _ = load_classifier(source, seed, device)
    return mlmc_train.finetune_classifier(
        model,
        tokenizer,
        train,
        dev,
        lr=lr,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        ckpt_dir=ckpt_dir,
        weight_decay=weight_decay,
        max_length=max_length,
        progress=progress,
    )


def load_checkpoints(paths: Sequence[Path], device: str) -> list[nn.Module]:
    """Checkpoint models in eval mode on ``device``, each with a head gate attached (gating off)."""
    models = [influence.load_checkpoint(p).to(device) for p in paths]
    for m in models:
        gate_of(m)
    return models


def language_batches(
    langs: Sequence[str], n_batches: Mapping[str, int], rng: np.random.Generator
) -> list[tuple[str, int]]:
    """Order of ``(language, batch number)`` for one SFT epoch: each language's batches in turn, round by round,
    languages in a fresh random order every round, so languages are sampled equally often (S6)."""
    order = []
    for r in range(max(n_batches.values())):
        todo = [x for x in langs if r < n_batches[x]]
        order += [(todo[i], r) for i in rng.permutation(len(todo))]
    return order


def sparse_finetune(
    source: str,
    tokenizer: Any,
    train: Dataset,
    masks: Mapping[str, torch.Tensor],
    ckpt_dir: Path,
    *,
    lr: float,
    epochs: int,
    batch_size: int,
    seed: int,
    weight_decay: float,
    max_length: int,
    device: str,
    mode: str = "strict",
    progress: bool = False,
) -> list[Path]:
    """Sparse fine-tuning (S6): every step takes one batch of one language, forwards it under that language's
    head mask and updates only the parameters of its heads (plus the shared ones). ``mode="strict"``: masked
    entries and their AdamW moments stay bit-identical (:class:`mlmc.sft.MaskedOptimizer`); ``"grad"``: the
    thesis's gradient masking only, where momentum and weight decay still move them. Returns one checkpoint
    directory per epoch."""
    check_choice("mode", mode, SFT_MODES)
    seed_everything(seed)
    model, _ = load_classifier(source, seed, device)
    langs = list(masks)
    lang_col = np.asarray(train["lang"])
    rows = {x: train.select(np.flatnonzero(lang_col == x)) for x in langs}
    n_batches = {x: -(-len(rows[x]) // batch_size) for x in langs}
    opt = torch.optim.AdamW(mlmc_train._param_groups(model, weight_decay), lr=lr)
    sched = get_linear_schedule_with_warmup(opt, 0, sum(n_batches.values()) * epochs)
    rng = np.random.default_rng(seed)
    gate = gate_of(model)
    paths = []
    bar = tqdm(total=sum(n_batches.values()) * epochs, desc="sparse fine-tune", disable=not progress, leave=False)
    for epoch in range(1, epochs + 1):
        model.train()
        per_lang = {
            x: batches(tokenizer, rows[x], batch_size, max_length, device, order=rng.permutation(len(rows[x])))
            for x in langs
        }
        for lang, b in language_batches(langs, n_batches, rng):
            sft_step(
                model, {lang: per_lang[lang][b]}, {lang: masks[lang]}, opt, cls_loss, gate=gate, exact=mode == "strict"
            )
            sched.step()
            bar.update()
        model.eval()
        path = ckpt_dir / f"epoch-{epoch}"
        with atomic_dir(path) as tmp, mlmc_models.quiet_transformers():
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        paths.append(path)
    bar.close()
    gate.remove()
    return paths


# ------------------------------------------------------------------------------------------------ subnetworks
@dataclass
class MaskSearch:
    """Head masks per language (1 = on), the pruning history (one row per evaluated mask) and dev accuracy."""

    masks: dict[str, torch.Tensor]
    history: pd.DataFrame


def find_masks(
    source: str,
    tokenizer: Any,
    data: TaskData,
    langs: Sequence[str],
    *,
    mask_source: str,
    multilingual: nn.Module | None,
    ckpt_dir: Path,
    mono_epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    weight_decay: float,
    max_length: int,
    device: str,
    prune_step: float,
    prune_threshold: float,
    n_imp_batches: int,
    progress: bool = False,
) -> MaskSearch:
    """Iterative head pruning per language (S2; Michel et al. 2019): importance on the language's training
    batches, the stop rule on its dev accuracy. ``mask_source="monolingual"`` fine-tunes the pretrained encoder on
    the language alone first; ``"multilingual"`` prunes the given multilingual model."""
    check_choice("mask_source", mask_source, MASK_SOURCES)
    masks, hist = {}, []
    for lang in tqdm(langs, desc=f"masks ({mask_source})", disable=not progress, leave=False):
        train, dev = data.of("train", lang), data.of("dev", lang)
        if mask_source == "monolingual":
            res = finetune(
                source,
                tokenizer,
                train,
                None,
                ckpt_dir / f"mono-{lang}",
                lr=lr,
                epochs=mono_epochs,
                batch_size=batch_size,
                seed=seed,
                weight_decay=weight_decay,
                max_length=max_length,
                device=device,
            )
            model = influence.load_checkpoint(res.checkpoints[-1]).to(device)
        else:
            if multilingual is None:
                raise ValueError("mask_source='multilingual' needs the multilingual model")
            model = multilingual
        imp = batches(tokenizer, train, batch_size, max_length, device, limit=n_imp_batches)

        def score(m: nn.Module, gates: torch.Tensor, dev: Dataset = dev) -> float:
            probs = mlmc_train.predict(m, tokenizer, dev, max_length=max_length)
            return float((probs.argmax(-1) == np.asarray(dev["label"])).mean())

        out = iterative_head_pruning(
            model, imp, score, cls_loss, step_frac=prune_step, threshold=prune_threshold, progress=False
        )
        masks[lang] = out.mask
        hist.append(out.history.assign(lang=lang))
    return MaskSearch(masks, pd.concat(hist, ignore_index=True))


def random_masks(mask: torch.Tensor, n: int, seed: int, sparsity: float | None = None) -> list[torch.Tensor]:
    """``n`` random masks of the same sparsity as ``mask`` (its entries permuted), or with ``round(sparsity·L·H)``
    heads off."""
    n_layers, n_heads = mask.shape
    if sparsity is None:
        return [shuffle_mask(mask, seed * 1000 + r) for r in range(n)]
    n_off = max(1, round(sparsity * n_layers * n_heads))
    return [random_mask(n_layers, n_heads, n_off, seed * 1000 + r) for r in range(n)]


def masks_table(masks: Mapping[str, torch.Tensor], **labels: Any) -> pd.DataFrame:
    """Long table (lang, layer, head, on) of masks, with extra constant columns."""
    rows = [
        {"lang": x, "layer": li, "head": h, "on": int(m[li, h]), **labels}
        for x, m in masks.items()
        for li in range(m.shape[0])
        for h in range(m.shape[1])
    ]
    return pd.DataFrame(rows)


def pair_table(masks: Mapping[str, torch.Tensor], similarity: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per unordered language pair: mask cosine, shared heads on and off, and the planted similarity."""
    langs = list(masks)
    rows = []
    for i, a in enumerate(langs):
        for b in langs[i + 1 :]:
            ma, mb = masks[a], masks[b]
            row = {
                "pair": f"{a}-{b}",
                "a": a,
                "b": b,
                "mask cosine": mask_cosine(ma, mb),
                "shared on": int((ma * mb).sum()),
                "shared off": int(((1 - ma) * (1 - mb)).sum()),
            }
            if similarity is not None:
                row["planted similarity"] = float(similarity.loc[a, b])
            rows.append(row)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------------- TracIn
@dataclass
class Tracer:
    """TracIn of traced test items against the training candidates under a head mask (S4).

    The mask gates the checkpoints for train and test gradients alike. ``proj_dim > 0`` projects every gradient to
    that many coordinates (:class:`mlmc.influence.GaussianProjector`, seeded once, the same for every checkpoint,
    mask and split), so only ``[n_test, proj_dim]`` test sketches are held and training gradients are streamed."""

    train: dict[str, list]
    params: str | list[str]
    proj_dim: int
    seed: int
    batch_size: int
    device: str
    calls: int = 0
    seconds: float = 0.0
    _projector: influence.GaussianProjector | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.proj_dim:
            self._projector = influence.GaussianProjector(self.proj_dim, seed=self.seed)

    def __call__(self, models: Sequence[nn.Module], test: dict[str, list], mask: torch.Tensor | None) -> np.ndarray:
        """Per-checkpoint cosine scores ``[E, n_test, n_train]`` with heads gated by ``mask``."""
        t0 = time.perf_counter()
        gates = [gate_of(m) for m in models]
        for g in gates:
            g.set(mask)
        try:
            inf = influence.tracin(
                list(models),
                self.train,
                test,
                params=self.params,
                normalize="cosine",
                projector=self._projector,
                batch_size=self.batch_size,
                progress=False,
                device=self.device,
            )
        finally:
            for g in gates:
                g.set(None)
        self.calls += 1
        self.seconds += time.perf_counter() - t0
        return inf.per_epoch.numpy()


def subset(table: Mapping[str, list], rows: Sequence[int]) -> dict[str, list]:
    """Rows of an encoded table."""
    return {k: [v[i] for i in rows] for k, v in table.items()}


def shares(scores: np.ndarray, train_lang: Sequence[str], langs: Sequence[str], m: int, sign: int = 1) -> np.ndarray:
    """Per test item, % of its top-m (``sign=1``, C+) or bottom-m (``sign=-1``, C-) training candidates in each
    language, ``[n_test, n_langs]`` (rows sum to 100); ``scores`` is ``[n_test, n_train]``."""
    idx = influence.topk(torch.as_tensor(scores), m, sign).numpy()
    return crossling.item_shares(idx, train_lang, langs)


def share_table(item: np.ndarray, test_lang: Sequence[str], langs: Sequence[str]) -> pd.DataFrame:
    """C±[test, train] = mean over the test items of each language of :func:`shares`."""
    tl = np.asarray(test_lang)
    rows = [x for x in langs if (tl == x).any()]
    return pd.DataFrame(
        [item[tl == x].mean(0) for x in rows],
        index=pd.Index(rows, name="test"),
        columns=pd.Index(list(langs), name="train"),
    )


def bootstrap_ci(x: np.ndarray, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean and percentile 95% interval of a sample (bootstrap over its items)."""
    x = np.asarray(x, dtype=float)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), (n_boot, len(x)))].mean(1)
    return float(x.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def layer_correlations(masks: Mapping[str, torch.Tensor], c_plus: pd.DataFrame) -> pd.DataFrame:
    """Per layer: Pearson r between the cosine of the two languages' mask rows and C+[a, b] over ordered pairs
    a != b (E6); pairs with an all-off row for either language are left out (cosine undefined)."""
    langs = list(masks)
    n_layers = next(iter(masks.values())).shape[0]
    rows = []
    for layer in range(n_layers):
        xs, ys = [], []
        for a in langs:
            for b in langs:
                cos = mask_cosine(masks[a], masks[b], layer) if a != b else math.nan
                if a != b and not math.isnan(cos):
                    xs.append(cos)
                    ys.append(float(c_plus.loc[a, b]))
        ok = len(xs) >= 3 and np.std(xs) > 0 and np.std(ys) > 0
        rows.append({"layer": layer, "pairs": len(xs), "r": float(np.corrcoef(xs, ys)[0, 1]) if ok else math.nan})
    return pd.DataFrame(rows)


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """``(result, wall seconds, CPU seconds)`` of ``fn()``."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


# ------------------------------------------------------------------------------------------------ one seed
SYSTEMS = ("FT", "FT + own mask", "SFT + own mask", "random SFT + its mask")


@dataclass
class SeedRun:
    """Everything one training seed produces: checkpoint directories of full fine-tuning (``ft``), sparse
    fine-tuning with the language masks (``sft``) and with random masks of the same sparsity (``rsft``), the masks
    of both sources, the random SFT masks, accuracy per language, system and epoch, and seconds per stage."""

    seed: int
    ft: list[Path]
    ft_history: pd.DataFrame
    search: dict[str, MaskSearch]
    masks: dict[str, torch.Tensor]
    random_sft_masks: dict[str, torch.Tensor]
    sft: list[Path]
    rsft: list[Path]
    accuracy: pd.DataFrame
    timing: list[dict[str, float]] = field(default_factory=list)


def _accuracy_rows(
    paths: Sequence[Path],
    masks: Mapping[str, torch.Tensor | None],
    system: str,
    tokenizer: Any,
    data: TaskData,
    max_length: int,
    device: str,
) -> list[dict[str, Any]]:
    rows = []
    for epoch, path in enumerate(paths, 1):
        model = influence.load_checkpoint(path).to(device)
        for lang, mask in masks.items():
            ok = correct(model, tokenizer, data.of("pool", lang), mask, max_length)
            rows.append({"system": system, "epoch": epoch, "lang": lang, "acc": 100.0 * ok.mean(), "n": len(ok)})
        gate_of(model).remove()
    return rows


def run_seed(
    p: Mapping[str, Any],
    data: TaskData,
    source: str,
    tokenizer: Any,
    seed: int,
    ckpt_root: Path,
    progress: bool = False,
) -> SeedRun:
    """Full fine-tuning, mask search from both sources, SFT with the ``mask_source`` masks and with random masks
    of the same sparsity, and the accuracy of every system per language and epoch on the test pool (one seed)."""
    langs, dev, root = list(p["langs"]), p["device"], ckpt_root / f"seed-{seed}"
    common = dict(
        batch_size=p["batch_size"], seed=seed, weight_decay=p["weight_decay"], max_length=p["max_length"], device=dev
    )
    timing = []

    def stage(name: str, fn: Callable[[], Any]) -> Any:
        out, wall, cpu = timed(fn)
        timing.append({"stage": f"{name} (seed {seed})", "wall_s": wall, "cpu_s": cpu})
        return out

    ft = stage(
        "full fine-tuning",
        lambda: finetune(
            source, tokenizer, data.train, data.dev, root / "ft", lr=p["lr"], epochs=p["epochs"], **common
        ),
    )
    multilingual = influence.load_checkpoint(ft.checkpoints[-1]).to(dev)
    prune = dict(
        prune_step=p["prune_step"],
        prune_threshold=p["prune_threshold"],
        n_imp_batches=p["n_imp_batches"],
        mono_epochs=p["mono_epochs"],
        lr=p["lr"],
        **common,
    )
    search = {}
    for src in MASK_SOURCES:
        search[src] = stage(
            f"masks, {src}",
            lambda src=src: find_masks(
                source, tokenizer, data, langs, mask_source=src, multilingual=multilingual, ckpt_dir=root, **prune
            ),
        )
    masks = search[p["mask_source"]].masks
    rand = {x: random_masks(masks[x], 1, seed + 7919 * (i + 1), p["random_sparsity"])[0] for i, x in enumerate(langs)}
    sft_kw = dict(lr=p["sft_lr"], epochs=p["epochs"], mode=p["sft_mask_mode"], **common)
    sft = stage(
        "SFT, language masks", lambda: sparse_finetune(source, tokenizer, data.train, masks, root / "sft", **sft_kw)
    )
    rsft = stage(
        "SFT, random masks", lambda: sparse_finetune(source, tokenizer, data.train, rand, root / "rsft", **sft_kw)
    )

    def evaluate() -> pd.DataFrame:
        ev_kw = dict(tokenizer=tokenizer, data=data, max_length=p["max_length"], device=dev)
        rows = _accuracy_rows(ft.checkpoints, dict.fromkeys(langs), "FT", **ev_kw)
        rows += _accuracy_rows(ft.checkpoints, masks, "FT + own mask", **ev_kw)
        rows += _accuracy_rows(sft, masks, "SFT + own mask", **ev_kw)
        rows += _accuracy_rows(rsft, rand, "random SFT + its mask", **ev_kw)
        return pd.DataFrame(rows).assign(seed=seed)

    acc = stage("accuracy", evaluate)
    return SeedRun(seed, ft.checkpoints, ft.history.assign(seed=seed), search, masks, rand, sft, rsft, acc, timing)


# --------------------------------------------------------------------------------------------- tracing seed 0
def traced_epochs(n_epochs: int, every: int) -> list[int]:
    """Epochs (1-based) whose checkpoints TracIn uses: every ``every``-th one, counted back from the last."""
    return list(range(n_epochs, 0, -every))[::-1]


def pick_tests(run: SeedRun, data: TaskData, tokenizer: Any, n: int, max_length: int, device: str) -> Dataset:
    """The first ``n`` test-pool items of each language that every compared (model, mask) classifies correctly
    (S4): the last checkpoint of FT without and with the language's mask, and of SFT with it."""
    ft = influence.load_checkpoint(run.ft[-1]).to(device)
    sft = influence.load_checkpoint(run.sft[-1]).to(device)
    keep = []
    pool_lang = np.asarray(data.pool["lang"])
    for lang, mask in run.masks.items():
        rows = np.flatnonzero(pool_lang == lang)
        part = data.pool.select(rows)
        ok = correct(ft, tokenizer, part, None, max_length) & correct(ft, tokenizer, part, mask, max_length)
        ok &= correct(sft, tokenizer, part, mask, max_length)
        keep += rows[ok][:n].tolist()
    return data.pool.select(keep)


def trace_conditions(
    run: SeedRun,
    tracer: Tracer,
    tests: Dataset,
    test_tab: dict[str, list],
    p: Mapping[str, Any],
    progress: bool = False,
) -> dict[tuple[str, str, str], tuple[list[int], np.ndarray]]:
    """TracIn scores ``(test rows, [E, n_rows, n_train])`` of every condition, keyed ``(model, condition, tests)``:
    FT without mask (all tests); per test language ℓ: FT under ℓ's mask, under ``n_random_masks`` random masks of
    the same sparsity and under the masks of other languages (``other_masks``; ``None`` = all others); SFT under ℓ's
    mask; random-mask SFT under its mask; and SFT under the intersection and union of each ``compose_pairs`` pair."""
    langs, dev = list(p["langs"]), p["device"]
    test_lang = np.asarray(tests["lang"])
    rows = {x: np.flatnonzero(test_lang == x).tolist() for x in langs}
    ft, sft, rsft = (
        load_checkpoints([paths[e - 1] for e in traced_epochs(len(paths), p["trace_every"])], dev)
        for paths in (run.ft, run.sft, run.rsft)
    )
    others = p["other_masks"] if p["other_masks"] is not None else {x: [o for o in langs if o != x] for x in langs}
    jobs: list[tuple[tuple[str, str, str], list[nn.Module], list[int], torch.Tensor | None]] = [
        (("FT", "full", "all"), ft, list(range(len(tests))), None)
    ]
    for i, x in enumerate(langs):
        if not rows[x]:
            continue
        jobs.append((("FT", "own", x), ft, rows[x], run.masks[x]))
        draws = random_masks(run.masks[x], p["n_random_masks"], p["seed"] + 104729 * (i + 1), p["random_sparsity"])
        jobs += [(("FT", f"random {r + 1}", x), ft, rows[x], m) for r, m in enumerate(draws)]
        jobs += [(("FT", f"mask of {o}", x), ft, rows[x], run.masks[o]) for o in others.get(x, [])]
        jobs.append((("SFT", "own", x), sft, rows[x], run.masks[x]))
        jobs.append((("random SFT", "its mask", x), rsft, rows[x], run.random_sft_masks[x]))
    for a, b in p["compose_pairs"]:
        both = rows[a] + rows[b]
        if not both:
            continue
        for op in COMPOSE_OPS:
            mask = compose(run.masks[a], run.masks[b], op)
            jobs.append((("SFT", f"{a} {'∩' if op == 'and' else '∪'} {b}", f"{a}+{b}"), sft, both, mask))
    out = {}
    for key, models, idx, mask in tqdm(jobs, desc="TracIn conditions", disable=not progress):
        out[key] = (idx, tracer(models, subset(test_tab, idx), mask))
    return out


def share_items(
    traced: Mapping[tuple[str, str, str], tuple[list[int], np.ndarray]],
    tests: Dataset,
    train_lang: Sequence[str],
    langs: Sequence[str],
    m: int,
    epochs: Sequence[int] | None = None,
) -> pd.DataFrame:
    """Tidy C± per traced test item: one row per (model, condition, tests, uid, test language, sign, epoch) with
    the share of each training language among its top-m (+) or bottom-m (−) candidates. ``epoch`` 0 ranks by the
    TracIn sum over checkpoints; ``epoch`` e >= 1 by the single checkpoint of epoch e (S5, per-checkpoint variant;
    ``epochs`` numbers the traced checkpoints, default 1..E)."""
    uid, test_lang = np.asarray(tests["uid"]), np.asarray(tests["lang"])
    frames = []
    for (model, cond, group), (idx, per_epoch) in traced.items():
        numbers = list(epochs) if epochs is not None else list(range(1, per_epoch.shape[0] + 1))
        for k in range(per_epoch.shape[0] + 1):
            scores = per_epoch.sum(0) if k == 0 else per_epoch[k - 1]
            epoch = 0 if k == 0 else numbers[k - 1]
            for sign, name in ((1, "+"), (-1, "-")):
                item = shares(scores, train_lang, langs, m, sign)
                df = pd.DataFrame(item, columns=list(langs))
                df.insert(0, "epoch", epoch)
                df.insert(0, "sign", name)
                df.insert(0, "test", test_lang[idx])
                df.insert(0, "uid", uid[idx])
                df.insert(0, "tests", group)
                df.insert(0, "condition", cond)
                df.insert(0, "model", model)
                frames.append(df)
    out = pd.concat(frames, ignore_index=True)
    out["in_language"] = [row[t] for t, row in zip(out["test"], out[list(langs)].to_dict("records"), strict=True)]
    return out


# ---------------------------------------------------------------------------------------------------- checks
def overlap_check(
    similarity: Sequence[float], overlap: Sequence[float], source: str, asserted: bool = False
) -> ev.Check:
    """Planted check: subnetworks of languages the world makes similar overlap more (Spearman over pairs; the
    control is the same values with the pairing shuffled)."""
    return ev.correlation(
        f"subnetworks of similar languages overlap more ({source} masks: mask cosine vs planted similarity)",
        similarity,
        overlap,
        method="spearman",
        unit="language pairs",
        asserted=asserted,
    )


def specialisation_check(
    own: Sequence[float], control: Sequence[float], control_name: str, asserted: bool = False
) -> ev.Check:
    """Check: the in-language share of the top-m proponents is larger under a language's own subnetwork than under
    control masks of the same sparsity (random draws, or other languages' masks); unit = test item × mask."""
    return ev.compare(
        f"in-language influence (C+ diagonal) is higher under the language's own subnetwork than under {control_name}",
        own,
        control,
        control_name=control_name,
        unit="test items",
        statistic="mean in-language % of top-m",
        asserted=asserted,
    )


def sft_accuracy_check(sft: Sequence[float], random_sft: Sequence[float], asserted: bool = False) -> ev.Check:
    """Check: SFT with the language subnetworks is more accurate than SFT with random masks of the same sparsity
    (paired over seed × language)."""
    return ev.compare(
        "sparse fine-tuning with language subnetworks is more accurate than with random masks of the same sparsity",
        sft,
        random_sft,
        control_name="random-mask SFT",
        paired=True,
        unit="seed × language",
        statistic="mean accuracy %",
        asserted=asserted,
    )


# Claims asserted by the default profile (set after piloting: only checks that held in every piloted configuration).
ASSERTED: frozenset[str] = frozenset()
