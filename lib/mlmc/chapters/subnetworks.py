"""Chapter 02 driver (`02_subnetworks`): treebanks, stage 1/2, mask search, few-shot transfer, ablations (thesis ch. 4).

Thin functions composed from the kernels (:mod:`mlmc.parsing`, :mod:`mlmc.subnetworks`, :mod:`mlmc.sft`,
:mod:`mlmc.metalearn`, :mod:`mlmc.gradconflict`), so that the notebook reads as the experiment: load treebanks,
train on the source language, find each training language's head mask, train on all training languages under
their masks (FULL, SN_static, SN_dyna; non-episodic or first-order MAML), then fine-tune on 20 sentences of each
test language under the mask of its typologically nearest training language.

Data come from one loader, :func:`load_parsing_data`, for the synthetic world (``source="world"``) and for UD v2.9
treebanks on disk (``source="ud"``, the ``full`` profile); both return the same :class:`ParsingData`.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from mlmc import models as mlmc_models
from mlmc import reference, zoo
from mlmc.data.conllu_io import Sentence, label_vocab, read_conllu, sample_few_shot
from mlmc.errors import check_choice, check_device, check_int, check_positive, check_range, check_subset
from mlmc.gradconflict import GradientConflictTracker
from mlmc.heads import HeadGate, check_head_mask, head_shape, param_masks_from_head_mask
from mlmc.metalearn import fomaml_outer_step, inner_adapt, model_loss
from mlmc.parsing import BiaffineParser, collate_sentences, evaluate
from mlmc.sft import LangMask, MaskedOptimizer, sft_step, union_param_masks
from mlmc.subnetworks import (
    DynamicMask,
    check_param_masks,
    compose,
    head_importance,
    iterative_head_pruning,
    magnitude_prune,
    masked_weights,
)

SOURCES = ("world", "ud")
TRANSFER_MAPS = ("typology", "thesis")
MASK_INITS = ("stage1", "pretrained")
# Table 4.2 names whose UD directory does not follow "<Language words> <treebank>" -> "UD_<Language_words>-<treebank>".
_UD_EXCEPTIONS = {
    "South Levantine Arabic": "UD_South_Levantine_Arabic-MADAR",
    "Western Armenian": "UD_Western_Armenian-ArmTDP",
    "Skolt Sami-Giellagas": "UD_Skolt_Sami-Giellagas",
}


# ------------------------------------------------------------------------------------------------------ data
@dataclass
class ParsingData:
    """Treebanks of one experiment, as sentences of syntactic words (same type for world and UD data).

    ``train``: source + training languages; ``dev``: training languages (mask search); ``test``: training and test
    languages; ``support``: few-shot pool per test language (empty: sample from ``test`` and score the rest);
    ``transfer``: test language -> training language whose mask it uses; ``similarity``: typology cosine, rows =
    test + training languages, columns = training languages; ``pretrained``: whether the encoder saw the language
    (``None`` if unknown).
    """

    source_lang: str
    train_langs: list[str]
    test_langs: list[str]
    train: dict[str, list[Sentence]]
    dev: dict[str, list[Sentence]]
    test: dict[str, list[Sentence]]
    support: dict[str, list[Sentence]]
    labels: list[str]
    transfer: dict[str, str]
    similarity: pd.DataFrame
    pretrained: dict[str, bool | None] = field(default_factory=dict)

    def sizes(self) -> pd.DataFrame:
        """Sentences per language and split."""
        langs = [self.source_lang, *self.train_langs, *self.test_langs]
        splits = {"train": self.train, "dev": self.dev, "few-shot pool": self.support, "test": self.test}
        return pd.DataFrame({s: [len(d.get(x, [])) for x in langs] for s, d in splits.items()}, index=langs)


def ud_dir_name(thesis_name: str) -> str:
    """UD directory of a Table 4.2 test-treebank name, e.g. ``"Faroese OFT"`` -> ``"UD_Faroese-OFT"``."""
    if thesis_name in _UD_EXCEPTIONS:
        return _UD_EXCEPTIONS[thesis_name]
    *lang, tb = thesis_name.split()
    if not lang:
        raise ValueError(f"parameter 'thesis_name' must read '<Language> <Treebank>', got {thesis_name!r}")
    return f"UD_{'_'.join(lang)}-{tb}"


THESIS_TRAIN_CODES = {"English": "en", "Arabic": "ar", "Czech": "cs", "Estonian": "et", "Hindi": "hi",
                      "Italian": "it", "Norwegian": "no", "Russian": "ru"}  # fmt: skip


def lang_code(lang: str) -> str:
    """Short code of a training language: a world code as is, ``UD_Arabic-PADT`` or ``Arabic`` -> ``ar``."""
    name = _ud_language(lang) if lang.startswith("UD_") else lang
    return THESIS_TRAIN_CODES.get(name, lang)


def _ud_language(dir_name: str) -> str:
    """``UD_Norwegian-Nynorsk`` -> ``Norwegian`` (the names Table 4.2 uses for transfer sources)."""
    return dir_name.removeprefix("UD_").split("-")[0].replace("_", " ")


def thesis_transfer_map(test_dirs: Sequence[str], train_dirs: Sequence[str]) -> dict[str, str]:
    """Transfer language of each UD test treebank as printed in thesis Table 4.2 (``transfer_map="thesis"``)."""
    table = reference.load("ch4_table4_2")
    by_dir = {ud_dir_name(n): s for n, s in zip(table.test_treebank, table.transfer_source, strict=True)}
    by_language = {_ud_language(d): d for d in train_dirs}
    check_subset("test_langs", list(test_dirs), sorted(by_dir))
    missing = sorted({by_dir[d] for d in test_dirs} - set(by_language))
    if missing:
        raise ValueError(f"parameter 'train_langs' lacks the Table 4.2 transfer language(s) {missing}")
    return {d: by_language[by_dir[d]] for d in test_dirs}


def _ud_split(root: Path, tb: str, split: str) -> list[Sentence]:
    files = sorted((root / tb).glob(f"*-ud-{split}*.conllu"))
    return [s for f in files for s in read_conllu(f)]


def _ud_iso(root: Path, tb: str) -> str:
    files = sorted((root / tb).glob("*-ud-*.conllu"))
    if not files:
        raise ValueError(f"parameter 'ud_root': no CoNLL-U files in {root / tb}")
    return files[0].name.split("_")[0]


def _cap(sents: list[Sentence], n: int | None, seed: int) -> list[Sentence]:
    if n is None or n >= len(sents):
        return sents
    keep = np.sort(np.random.default_rng(seed).permutation(len(sents))[:n])
    return [sents[i] for i in keep]


def load_parsing_data(
    source: str,
    source_lang: str,
    train_langs: Sequence[str],
    test_langs: Sequence[str],
    *,
    n_source: int | None,
    n_train: int | None,
    n_dev: int | None,
    n_test: int | None,
    n_support: int | None,
    seed: int = 0,
    world: Any = None,
    ud_root: str | Path | None = None,
    transfer_map: str = "typology",
) -> ParsingData:
    """Load every treebank of the experiment, the label vocabulary (over all of them) and the transfer map.

    ``source="world"``: ``world.treebank`` per language and split, typology from the world's planted vectors,
    transfer language = ``world.nearest`` (URIEL and lang2vec are never read). ``source="ud"``:
    ``ud_root/<UD_dir>/*-ud-{train,dev,test}*.conllu`` (language ids are UD directory names), sizes capped by
    seeded samples (``None`` = all), typology = URIEL ``syntax_knn`` cosine via :mod:`mlmc.typology`, transfer =
    nearest by URIEL or ``"thesis"`` (Table 4.2). Typology cosines are rounded to 6 decimals.
    """
    check_choice("source", source, SOURCES)
    check_choice("transfer_map", transfer_map, TRANSFER_MAPS)
    train_langs, test_langs = list(train_langs), list(test_langs)
    if source == "world":
        if world is None:
            raise ValueError("parameter 'world' is required when source='world'")
        if transfer_map != "typology":
            raise ValueError("parameter 'transfer_map' must be 'typology' for the synthetic world ('thesis' needs UD)")
        for name, n in [("n_source", n_source), ("n_train", n_train), ("n_dev", n_dev), ("n_test", n_test)]:
            check_int(name, n, min_value=1)
        check_int("n_support", n_support, min_value=1)

        def tb(lang: str, n: int, split: str) -> list[Sentence]:
            return read_conllu(world.treebank(lang, n, split, seed=seed))

        train = {source_lang: tb(source_lang, n_source, "train")} | {x: tb(x, n_train, "train") for x in train_langs}
        dev = {x: tb(x, n_dev, "dev") for x in train_langs}
        test = {x: tb(x, n_test, "test") for x in [*train_langs, *test_langs]}
        support = {x: tb(x, n_support, "dev") for x in test_langs}
        sim = world.typology_similarity([*test_langs, *train_langs]).loc[[*test_langs, *train_langs], train_langs]
        transfer = {x: world.nearest(x, train_langs) for x in test_langs}
        pretrained = {x: bool(world.spec(x).pretrained) for x in [source_lang, *train_langs, *test_langs]}
    else:
        from mlmc.typology import cosine_similarity_matrix, nearest_language, uriel_vectors

        if ud_root is None or not Path(ud_root).is_dir():
            raise ValueError(f"parameter 'ud_root' must be the folder of the UD v2.9 treebanks, got {ud_root!r}")
        root = Path(ud_root)
        every = [source_lang, *train_langs, *test_langs]
        absent = [x for x in every if not (root / x).is_dir()]
        if absent:
            raise ValueError(f"parameter 'ud_root' has no treebank folder(s) {absent} (names like 'UD_Arabic-PADT')")
        train = {x: _cap(_ud_split(root, x, "train"), n_source if x == source_lang else n_train, seed) for x in every}
        train = {x: train[x] for x in [source_lang, *train_langs]}
        dev = {x: _cap(_ud_split(root, x, "dev"), n_dev, seed) for x in train_langs}
        test = {x: _cap(_ud_split(root, x, "test"), n_test, seed) for x in [*train_langs, *test_langs]}
        support = {x: _cap(_ud_split(root, x, "dev"), n_support, seed) for x in test_langs}
        iso = {x: _ud_iso(root, x) for x in every}
        vectors = uriel_vectors(sorted(set(iso.values())))
        vec = {x: vectors[iso[x]] for x in every}
        sim = cosine_similarity_matrix({x: vec[x] for x in [*test_langs, *train_langs]})[train_langs]
        if transfer_map == "thesis":
            transfer = thesis_transfer_map(test_langs, train_langs)
        else:
            transfer = {x: nearest_language(x, train_langs, vec)[0] for x in test_langs}
        pretrained = dict.fromkeys(every)
    labels = label_vocab([*train.values(), *dev.values(), *test.values(), *support.values()])
    sim = sim.round(6)  # typology cosines rounded: ties stay ties on every CPU
    return ParsingData(
        source_lang, train_langs, test_langs, train, dev, test, support, labels, transfer, sim, pretrained
    )


# ------------------------------------------------------------------------------------------------ parameters
def _lrs(name: str, value: Any) -> list[float]:
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise ValueError(f"parameter {name!r} must be [encoder_lr, decoder_lr], got {value!r}")
    return [check_positive(name, v) for v in value]


def check_params(p: Mapping[str, Any], world: Any = None) -> dict[str, Any]:
    """Validate every chapter-02 parameter before any compute; return derived values (``n_layers``, ``n_heads``,
    ``dyn_off``, ``max_off``). Raises ``ValueError`` naming the parameter (unknown language, more heads off than the
    encoder has, negative iterations, ...)."""
    check_int("seed", p["seed"], min_value=0)
    check_device("device", p["device"])
    check_choice("data_source", p["data_source"], SOURCES)
    check_choice("transfer_map", p["transfer_map"], TRANSFER_MAPS)
    check_choice("mask_init", p["mask_init"], MASK_INITS)
    langs = {"source_lang": [p["source_lang"]], "train_langs": p["train_langs"], "test_langs": p["test_langs"]}
    for name, values in langs.items():
        if p["data_source"] == "world":
            if world is None:
                raise ValueError("parameter 'world' is required to check the languages of the synthetic world")
            world.check_langs(values, name)
        else:
            check_subset(name, values, list(values))
            bad = [v for v in values if not str(v).startswith("UD_")]
            if bad:
                raise ValueError(f"parameter {name!r} must name UD treebank folders like 'UD_Arabic-PADT', got {bad}")
    if len(p["train_langs"]) < 2:
        raise ValueError("parameter 'train_langs' needs at least 2 languages (stage 2 compares languages)")
    overlap = sorted(set(p["train_langs"]) & ({p["source_lang"]} | set(p["test_langs"])))
    if overlap:
        raise ValueError(f"parameter 'train_langs' must not repeat the source or test languages, got {overlap}")
    if p["data_source"] == "world" and p["transfer_map"] != "typology":
        raise ValueError("parameter 'transfer_map' must be 'typology' for data_source='world' ('thesis' needs UD)")
    if p["data_source"] == "ud" and p["ud_root"] is None:
        raise ValueError("parameter 'ud_root' must be set for data_source='ud' (the unpacked UD v2.9 folder)")
    for name in ("n_source", "n_train", "n_dev", "n_test", "n_support"):
        if p[name] is not None or p["data_source"] == "world":
            check_int(name, p[name], min_value=1)
    for name in ("arc_dim", "label_dim", "batch_size", "stage2_batch", "meta_batch", "mask_seeds", "imp_batches",
                 "stage2_iters", "meta_episodes", "inner_k", "fewshot_n", "fewshot_seeds", "conflict_window",
                 "magnitude_max_rounds", "meta_conflict_window"):  # fmt: skip
        check_int(name, p[name], min_value=1)
    for name in ("stage1_steps", "mask_search_steps", "fewshot_steps", "selprot_langs"):
        check_int(name, p[name], min_value=0)
    check_int("selprot_langs", p["selprot_langs"], max_value=len(p["train_langs"]))
    check_int("conflict_window", p["conflict_window"], max_value=p["stage2_iters"])
    check_int("meta_conflict_window", p["meta_conflict_window"], max_value=p["meta_episodes"])
    if p["data_source"] == "world":
        check_int("fewshot_n", p["fewshot_n"], max_value=p["n_support"])
    for name in ("dropout", "wordpiece_dropout", "prune_threshold", "weight_decay", "dyn_off_frac"):
        check_range(name, p[name], 0.0, 1.0)
    for name in ("prune_frac", "magnitude_frac"):
        check_range(name, p[name], 0.0, 1.0)
        check_positive(name, p[name])
    for name in ("stage1_lrs", "nonep_lrs", "fewshot_lrs", "meta_outer_lrs", "unstructured_lrs"):
        _lrs(name, p[name])
    check_subset("meta_inner_lrs", list(p["meta_inner_lrs"]), ["full", "sn_static", "sn_dyna"], min_size=3)
    for method, lrs in p["meta_inner_lrs"].items():
        _lrs(f"meta_inner_lrs[{method!r}]", lrs)
    if p["max_off_frac"] is not None:
        check_range("max_off_frac", p["max_off_frac"], 0.0, 1.0)
    for frac in p["sparsity_sweep"]:
        check_range("sparsity_sweep", frac, 0.0, 1.0)
    n_layers, n_heads = encoder_head_shape(p["encoder"])
    total = n_layers * n_heads
    for n in p["ablation_random_off"]:
        check_int("ablation_random_off", n, min_value=0, max_value=total)
    check_int("ablation_bad_off", p["ablation_bad_off"], min_value=0, max_value=total)
    check_int("ablation_dr_off", p["ablation_dr_off"], min_value=0, max_value=total)
    max_off = None if p["max_off_frac"] is None else int(p["max_off_frac"] * total)
    return {"n_layers": n_layers, "n_heads": n_heads, "dyn_off": int(p["dyn_off_frac"] * total), "max_off": max_off}


# ----------------------------------------------------------------------------------------------------- model
def encoder_head_shape(encoder: str) -> tuple[int, int]:
    """``(layers, heads)`` of an encoder by name without loading its weights (zoo recipe or HF config)."""
    if encoder in zoo.NAMES:
        rec = zoo.recipe(encoder)
        return rec.layers, rec.heads
    from huggingface_hub import try_to_load_from_cache
    from transformers import AutoConfig

    path = Path(encoder).expanduser()
    if not path.is_dir() and (encoder.startswith((".", "/", "~")) or encoder.count("/") > 1):
        raise ValueError(f"parameter 'encoder' must be a zoo name {list(zoo.NAMES)}, a hub id or a model folder, "
                         f"got {encoder!r}")  # fmt: skip
    cached = None if path.is_dir() else try_to_load_from_cache(encoder, "config.json")
    source = str(path) if path.is_dir() else (str(Path(cached).parent) if isinstance(cached, str) else encoder)
    try:
        cfg = AutoConfig.from_pretrained(source)
    except OSError as err:
        raise ValueError(f"parameter 'encoder': cannot read the config of {encoder!r} ({err})") from None
    return cfg.num_hidden_layers, cfg.num_attention_heads


def positions(model: nn.Module) -> int:
    """Input positions an encoder can embed (XLM-R-style position ids start after the padding index)."""
    cfg = model.config
    offset = cfg.pad_token_id + 1 if cfg.model_type in ("roberta", "xlm-roberta", "camembert") else 0
    return int(cfg.max_position_embeddings - offset)


def load_encoder(encoder: str, world: Any = None, progress: bool = False) -> tuple[nn.Module, Any]:
    """The bare encoder and its fast tokenizer: a zoo model (built on ``world`` if missing) or a hub id. The
    tokenizer's ``model_max_length`` is set to the encoder's positions, so that longer sentences are shortened per
    word (:func:`mlmc.parsing.collate_sentences`) instead of overflowing the position embeddings."""
    name = zoo.path(encoder, world=world, progress=progress) if encoder in zoo.NAMES else encoder
    model, tokenizer = mlmc_models.load(name, "encoder")
    tokenizer.model_max_length = min(positions(model), tokenizer.model_max_length or positions(model))
    return model, tokenizer


def make_parser(
    encoder: nn.Module,
    n_labels: int,
    arc_dim: int,
    label_dim: int,
    dropout: float,
    seed: int,
    wordpiece_dropout: float = 0.0,
    mask_token_id: int | None = None,
) -> BiaffineParser:
    """A fresh :class:`BiaffineParser` on a copy of ``encoder`` with a :class:`HeadGate` attached, in train mode
    (``dropout`` is UDify's input and decoder dropout; ``wordpiece_dropout`` its piece -> mask-token dropout)."""
    torch.manual_seed(seed)
    parser = BiaffineParser(
        copy.deepcopy(encoder), n_labels, arc_dim, label_dim, input_dropout=dropout, dropout=dropout,
        wordpiece_dropout=wordpiece_dropout, mask_token_id=mask_token_id,
    )  # fmt: skip
    HeadGate(parser)
    return parser.train()


def gate_of(model: nn.Module) -> HeadGate:
    """The model's attached head gate (attached on first use)."""
    return HeadGate.attached(model) or HeadGate(model)


class Batches:
    """Seeded random batches per language, collated for the parser (one generator per language)."""

    def __init__(self, treebanks: Mapping[str, Sequence[Sentence]], tokenizer: Any, labels: Sequence[str],
                 batch_size: int, seed: int, device: str = "cpu") -> None:  # fmt: skip
        check_int("batch_size", batch_size, min_value=1)
        self.treebanks, self.tokenizer, self.labels = treebanks, tokenizer, list(labels)
        self.batch_size, self.device = batch_size, device
        self.rng = {lang: np.random.default_rng([seed, *lang.encode()]) for lang in treebanks}

    def __call__(self, lang: str) -> dict[str, Any]:
        sents = self.treebanks[lang]
        idx = self.rng[lang].choice(len(sents), size=min(self.batch_size, len(sents)), replace=False)
        return collate(self.tokenizer, [sents[i] for i in idx], self.labels, self.device)


def collate(tokenizer: Any, sents: Sequence[Sentence], labels: Sequence[str], device: str = "cpu") -> dict[str, Any]:
    """:func:`mlmc.parsing.collate_sentences` with the tensors moved to ``device``."""
    batch = collate_sentences(sents, tokenizer, labels)
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def eval_batches(
    tokenizer: Any, sents: Sequence[Sentence], labels: Sequence[str], size: int = 64, device: str = "cpu"
) -> list[dict[str, Any]]:
    """Consecutive evaluation batches of ``size`` sentences."""
    return [collate(tokenizer, sents[i : i + size], labels, device) for i in range(0, len(sents), size)]


def _optimizer(model: BiaffineParser, lrs: Sequence[float], weight_decay: float, extra: Sequence[torch.Tensor] = ()):
    groups = model.param_groups(lrs[0], lrs[1], weight_decay)
    if extra:
        groups.append({"params": list(extra), "lr": lrs[1], "weight_decay": 0.0})
    return torch.optim.AdamW(groups, betas=(0.9, 0.99))


def _scheduler(opt: torch.optim.Optimizer, steps: int, warmup_frac: float):
    return get_cosine_schedule_with_warmup(opt, int(warmup_frac * steps), max(1, steps))


def finetune(
    model: BiaffineParser,
    sampler: Batches,
    lang: str,
    steps: int,
    lrs: Sequence[float],
    *,
    weight_decay: float = 0.01,
    warmup_frac: float = 0.1,
    mask: torch.Tensor | None = None,
    progress: bool = False,
    desc: str = "fine-tune",
) -> list[float]:
    """Plain fine-tuning on one language (stage 1, and the mask search's per-language fine-tuning); AdamW with the
    encoder/decoder learning rates ``lrs``, cosine schedule with warm-up. Returns the losses."""
    check_int("steps", steps, min_value=0)
    opt = _optimizer(model, lrs, weight_decay)
    sched = _scheduler(opt, steps, warmup_frac)
    gate = gate_of(model)
    model.train()
    losses = []
    with gate.using(mask):
        for _ in tqdm(range(steps), desc=desc, disable=not progress):
            loss = model_loss(model, sampler(lang))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
    return losses


# ----------------------------------------------------------------------------------------------- evaluation
@contextmanager
def under_mask(model: nn.Module, mask: LangMask) -> Iterator[None]:
    """Run a block with ``mask`` applied: head gates for an ``[L, H]`` tensor, zeroed weights for a dict of masks."""
    if mask is None:
        yield
    elif isinstance(mask, torch.Tensor):
        with gate_of(model).using(mask.detach()):
            yield
    else:
        with masked_weights(model, mask):
            yield


def evaluate_langs(
    model: BiaffineParser,
    data: ParsingData,
    tokenizer: Any,
    langs: Sequence[str],
    masks: Mapping[str, LangMask] | None = None,
    device: str = "cpu",
) -> pd.DataFrame:
    """LAS/UAS (in %) on each language's test set, each under its own mask (training-language tables 4.4/4.5)."""
    rows = []
    for lang in langs:
        with under_mask(model, (masks or {}).get(lang)):
            res = evaluate(model, eval_batches(tokenizer, data.test[lang], data.labels, device=device))
        rows.append({"lang": lang, "LAS": 100 * res["LAS"], "UAS": 100 * res["UAS"], "n_words": res["n_words"]})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------- mask search
@dataclass
class MaskSearch:
    """Static head masks: ``masks`` (union over seeds), ``per_seed`` masks, pruning ``history``, unpruned head
    ``importance`` (mean over seeds, normalised) and the seed-0 fine-tuned models (reused by magnitude pruning)."""

    masks: dict[str, torch.Tensor]
    per_seed: dict[str, list[torch.Tensor]]
    history: pd.DataFrame
    importance: dict[str, torch.Tensor]
    finetuned: dict[str, BiaffineParser]


def find_head_masks(
    init: BiaffineParser,
    data: ParsingData,
    tokenizer: Any,
    *,
    seeds: int,
    steps: int,
    batch_size: int,
    lrs: Sequence[float],
    prune_frac: float = 0.1,
    threshold: float = 0.95,
    max_off_frac: float | None = None,
    n_imp_batches: int = 3,
    weight_decay: float = 0.01,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
) -> MaskSearch:
    """Per training language and seed: fine-tune a copy of ``init`` for ``steps``, prune heads iteratively (Michel
    et al. 2019: importance under the current mask, ``prune_frac`` of all heads per round, stop below ``threshold``
    × unpruned dev LAS and keep the previous mask; at most ``max_off_frac`` of the heads off), then take the union of
    the enabled heads over seeds (thesis §4.3.1)."""
    check_int("seeds", seeds, min_value=1)
    check_int("n_imp_batches", n_imp_batches, min_value=1)
    n_layers, n_heads = head_shape(init)
    max_off = (
        None if max_off_frac is None else int(check_range("max_off_frac", max_off_frac, 0.0, 1.0) * n_layers * n_heads)
    )
    masks, per_seed, importance, finetuned, hist = {}, {}, {}, {}, []
    jobs = [(lang, s) for lang in data.train_langs for s in range(seeds)]
    for lang, s in tqdm(jobs, desc="mask search", disable=not progress):
        model = copy.deepcopy(init)
        sampler = Batches(data.train, tokenizer, data.labels, batch_size, seed=seed * 1009 + 17 * s + 1, device=device)
        torch.manual_seed(seed * 1009 + s)
        finetune(model, sampler, lang, steps, lrs, weight_decay=weight_decay)
        imp_batches = [sampler(lang) for _ in range(n_imp_batches)]
        dev = eval_batches(tokenizer, data.dev[lang], data.labels, device=device)
        imp = head_importance(model, imp_batches, model_loss)
        importance[lang] = importance.get(lang, 0) + imp / seeds
        result = iterative_head_pruning(
            model, imp_batches, lambda m, _g, dev=dev: evaluate(m, dev)["LAS"], model_loss,
            step_frac=prune_frac, threshold=threshold, max_off=max_off, progress=False,
        )  # fmt: skip
        per_seed.setdefault(lang, []).append(result.mask)
        masks[lang] = result.mask if s == 0 else compose(masks[lang], result.mask, "or")
        hist.append(result.history.assign(lang=lang, seed=s))
        if s == 0:
            finetuned[lang] = model
    return MaskSearch(masks, per_seed, pd.concat(hist, ignore_index=True), importance, finetuned)


def find_magnitude_masks(
    finetuned: Mapping[str, BiaffineParser],
    data: ParsingData,
    tokenizer: Any,
    *,
    frac: float = 0.1,
    threshold: float = 0.95,
    max_rounds: int = 10,
    device: str = "cpu",
) -> tuple[dict[str, dict[str, torch.Tensor]], pd.DataFrame]:
    """Unstructured masks (thesis §4.6): global magnitude pruning of ``frac`` of the remaining Q/K/V/O weights per
    round on each language's fine-tuned model, until dev LAS < ``threshold`` × unpruned; the previous mask is kept."""
    check_int("max_rounds", max_rounds, min_value=1)
    masks, rows = {}, []
    for lang, model in finetuned.items():
        dev = eval_batches(tokenizer, data.dev[lang], data.labels, device=device)
        base = evaluate(model, dev)["LAS"]
        kept = {n: torch.ones_like(m) for n, m in magnitude_prune(model, frac).items()}
        state = None
        for r in range(1, max_rounds + 1):
            state = magnitude_prune(model, frac, state)
            with masked_weights(model, state):
                score = evaluate(model, dev)["LAS"]
            off = sum(int((~m).sum()) for m in state.values()) / sum(m.numel() for m in state.values())
            rows.append({"lang": lang, "round": r, "pct_off": 100 * off, "ratio": score / base})
            if score < threshold * base:
                break
            kept = state
        masks[lang] = kept
    return masks, pd.DataFrame(rows)


def pct_off(mask: LangMask) -> float:
    """Share (%) of heads, or of attention weights for an unstructured mask, switched off."""
    if mask is None:
        return 0.0
    if isinstance(mask, torch.Tensor):
        return 100 * float((mask == 0).float().mean())
    return 100 * sum(int((~m).sum()) for m in mask.values()) / sum(m.numel() for m in mask.values())


# ----------------------------------------------------------------------------------------------- stage 2
@dataclass
class Stage2Result:
    """A stage-2 model with the masks it used per language (binary; dynamic masks at their final state), the
    per-iteration losses, the gradient-conflict windows and the wall/CPU seconds it took."""

    model: BiaffineParser
    masks: dict[str, LangMask]
    losses: pd.DataFrame
    conflicts: pd.DataFrame
    seconds: float
    cpu_seconds: float


class _ExactOuterOptimizer:
    """Adapter for :func:`fomaml_outer_step`: ``step()`` is a :class:`MaskedOptimizer` step over the union masks."""

    def __init__(self, optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
        self.masked, self.union = MaskedOptimizer(optimizer, model), {}

    def zero_grad(self) -> None:
        self.masked.zero_grad()

    def step(self) -> None:
        self.masked.step(self.union)


def check_masks(model: nn.Module, masks: Mapping[str, LangMask], langs: Sequence[str]) -> None:
    """Every language has a mask entry of the right kind and shape (before any training)."""
    check_subset("masks", list(masks), list(langs), min_size=0)
    shape = head_shape(model)
    for lang, mask in masks.items():
        if isinstance(mask, torch.Tensor):
            check_head_mask(f"masks[{lang!r}]", mask, shape)
        elif isinstance(mask, Mapping):
            check_param_masks(f"masks[{lang!r}]", model, mask)
        elif mask is not None:
            raise ValueError(f"parameter 'masks[{lang!r}]' must be None, an [L, H] tensor or a dict of bool tensors")


def run_stage2(
    init: BiaffineParser,
    data: ParsingData,
    tokenizer: Any,
    masks: Mapping[str, LangMask] | None,
    *,
    iters: int,
    batch_size: int,
    lrs: Sequence[float],
    dynamic: bool = False,
    dyn_off: int = 0,
    episodic: bool = False,
    inner_k: int = 1,
    inner_lrs: Sequence[float] = (1e-3, 1e-3),
    weight_decay: float = 0.01,
    warmup_frac: float = 0.1,
    window: int = 10,
    exact: bool = True,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
    desc: str = "stage 2",
) -> Stage2Result:
    """Stage 2 on the training languages from a copy of ``init`` (thesis §4.2).

    Non-episodic (``episodic=False``): per iteration one batch per language, each forwarded under its own mask,
    losses averaged, one AdamW step (:func:`mlmc.sft.sft_step`; ``exact`` keeps entries masked for every language
    bit-identical). Episodic: first-order MAML (:func:`mlmc.metalearn.fomaml_outer_step`), ``inner_k`` SGD steps on
    a support batch per language, query batch of the same size. ``masks`` maps languages to ``None`` (FULL), head
    masks or unstructured weight masks; with ``dynamic`` each head mask initialises a :class:`DynamicMask` with
    ``dyn_off`` heads off, trained with the straight-through estimator. Gradient conflicts are tracked per window.
    """
    langs = data.train_langs
    check_int("iters", iters, min_value=1)
    check_int("inner_k", inner_k, min_value=1)
    check_int("window", window, min_value=1)
    masks = dict(masks or {})
    check_masks(init, masks, langs)
    if dynamic:
        n_heads = math.prod(head_shape(init))
        check_int("dyn_off", dyn_off, min_value=0, max_value=n_heads)
        if any(not isinstance(masks.get(x), torch.Tensor) for x in langs):
            raise ValueError("parameter 'masks' must give every language a head mask to initialise dynamic masks")
    wall, cpu = time.perf_counter(), time.process_time()
    torch.manual_seed(seed)
    model = copy.deepcopy(init).train()
    gate = gate_of(model)
    dyn = {x: DynamicMask(masks[x], dyn_off, seed=seed * 101 + i) for i, x in enumerate(langs)} if dynamic else {}
    opt = _optimizer(model, lrs, weight_decay, [d.scores for d in dyn.values()])
    sched = _scheduler(opt, iters, warmup_frac)
    tracker = GradientConflictTracker(window)
    sampler = Batches({x: data.train[x] for x in langs}, tokenizer, data.labels, batch_size, seed + 7919, device)
    outer = _ExactOuterOptimizer(opt, model) if exact else opt
    losses = []
    for it in tqdm(range(iters), desc=desc, disable=not progress):
        current = {x: dyn[x]() if dynamic else masks.get(x) for x in langs}
        if not episodic:
            step = sft_step(model, {x: sampler(x) for x in langs}, current, opt, model_loss, gate=gate, exact=exact,
                            on_grad=tracker.add)  # fmt: skip
            loss = float(np.mean(list(step.values())))
        else:
            tasks = {x: (sampler(x), sampler(x)) for x in langs}
            heads = {x: (dyn[x] if dynamic else masks[x]) for x in langs if isinstance(masks.get(x), torch.Tensor)}
            pmasks = {x: param_masks_from_head_mask(model, current[x].detach()) for x in heads}
            if exact:
                outer.union = union_param_masks([pmasks.get(x) for x in langs])
            inner = {"encoder.": inner_lrs[0], "": inner_lrs[1]}
            loss = fomaml_outer_step(model, tasks, heads, inner_k, inner, outer, gate=gate,
                                     param_masks_by_lang=pmasks, tracker=tracker)  # fmt: skip
        sched.step()
        losses.append({"iteration": it, "loss": loss})
    final = {x: (dyn[x].binary() if dynamic else masks.get(x)) for x in langs}
    return Stage2Result(
        model.eval(), final, pd.DataFrame(losses), tracker.history(),
        time.perf_counter() - wall, time.process_time() - cpu,
    )  # fmt: skip


# ------------------------------------------------------------------------------------------------- few-shot
def few_shot(
    model: BiaffineParser,
    data: ParsingData,
    tokenizer: Any,
    masks: Mapping[str, LangMask] | None,
    *,
    n: int,
    steps: int,
    lrs: Sequence[float],
    opt: str = "adam",
    seeds: int = 1,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
    desc: str = "few-shot",
) -> pd.DataFrame:
    """Few-shot transfer (thesis §4.2.3): per test language and seed, ``steps`` optimiser steps (fresh Adam for
    NONEP, SGD for META) on ``n`` sentences of its few-shot pool under the mask of its transfer language, then LAS on
    its test set under the same mask. The model itself is not changed. Also counts, for the label analysis of Table
    4.3, test words whose gold label never occurs in the training treebanks (``unseen``) and how many of them get
    exactly that label."""
    check_int("n", n, min_value=1)
    check_int("steps", steps, min_value=0)
    check_int("seeds", seeds, min_value=1)
    seen = {d for x in [data.source_lang, *data.train_langs] for s in data.train[x] for d in s.deprels}
    rows = []
    jobs = [(lang, s) for lang in data.test_langs for s in range(seeds)]
    for lang, s in tqdm(jobs, desc=desc, disable=not progress):
        source = data.transfer[lang]
        mask = (masks or {}).get(source)
        if isinstance(mask, Mapping):
            raise ValueError("few-shot transfer supports head masks only (unstructured masks: evaluate_langs)")
        pool = data.support.get(lang) or data.test[lang]
        support, rest = sample_few_shot(pool, n, seed=seed * 1013 + s)
        test = data.test[lang] if data.support.get(lang) else rest
        torch.manual_seed(seed * 1013 + s)
        model.train()
        phi = inner_adapt(model, collate(tokenizer, support, data.labels, device), steps,
                          {"encoder.": lrs[0], "": lrs[1]}, gate=gate_of(model), mask=mask, opt=opt)  # fmt: skip
        res = evaluate(model, eval_batches(tokenizer, test, data.labels, device=device), gate_of(model), mask, phi)
        pairs = [(g, p) for gs, ps in zip(test, res["predictions"], strict=True)
                 for g, p in zip(gs.deprels, ps.deprels, strict=True) if g not in seen]  # fmt: skip
        rows.append({"lang": lang, "transfer": source, "seed": s, "LAS": 100 * res["LAS"], "UAS": 100 * res["UAS"],
                     "n_words": res["n_words"], "unseen_total": len(pairs),
                     "unseen_correct": sum(g == p for g, p in pairs)})  # fmt: skip
    model.eval()
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------- summaries
def best_share(table: pd.DataFrame, systems: Sequence[str]) -> pd.Series:
    """Share (%) of rows on which each system has the highest value (ties count for every tied system)."""
    values = table[list(systems)]
    best = values.eq(values.max(axis=1), axis=0)
    return 100 * best.mean()


def conflict_summary(conflicts: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Last-window % conflicts and mean cosine per system (Table 4.6)."""
    rows = []
    for name, hist in conflicts.items():
        last = hist.iloc[-1]
        rows.append({"system": name, "pct_conflict": last.pct_conflict, "mean_cos": last.mean_cos,
                     "n_windows": len(hist)})  # fmt: skip
    return pd.DataFrame(rows)


def selection_protection_masks(masks: Mapping[str, torch.Tensor], lang: str, kind: str) -> dict[str, LangMask]:
    """Table 4.5: ``"selection"`` masks only ``lang`` (the others train the full model); ``"protection"`` masks every
    language but ``lang``, so ``lang`` updates all heads but the others cannot touch heads its mask switched off."""
    check_choice("kind", kind, ["selection", "protection"])
    check_choice("lang", lang, list(masks))
    if kind == "selection":
        return {x: (m if x == lang else None) for x, m in masks.items()}
    return {x: (None if x == lang else m) for x, m in masks.items()}


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """``(fn(), wall seconds, CPU seconds)``."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


# ------------------------------------------------------------------------------------------- planted checks
def stop_reasons(history: pd.DataFrame) -> pd.Series:
    """How each head-pruning search (language x seed) ended: ``"stop rule"`` when its last round fell below the
    threshold (the previous mask is kept), ``"cap"`` when it ended on an accepted round (``max_off_frac``, no head
    left, or the round limit)."""
    last = history.sort_values("round").groupby(["lang", "seed"]).tail(1)
    return last.set_index(["lang", "seed"])["accepted"].map({True: "cap", False: "stop rule"})


# Checks asserted by the chapter (a regression fails its notebook test); thresholds are 0, fixed in advance.
ASSERTED = ("pretrained",)


def subnet_checks(x: Mapping[str, np.ndarray], seed: int = 0, asserted: bool = True) -> list:
    """The chapter's planted-truth checks (:mod:`mlmc.evidence`) from per-unit samples ``x``:

    ``transfer_is_nearest``/``transfer_random`` (per test language: 1 if its transfer language is the world's
    nearest, for the chapter's map and a random map), ``fs_cosine``/``fs_las`` (per test language: typology cosine
    to its transfer language, few-shot LAS of NONEP FULL averaged over seeds), ``las_pretrained``/``las_unseen``
    (few-shot LAS per language and seed), ``pair_typology``/``pair_jaccard``/``pair_importance`` (per pair of
    training languages), ``train_static``/``train_full``/``train_random`` (training-language LAS per language),
    ``fs_static``/``fs_full`` (few-shot LAS per language and seed), ``gain_static`` (per test language, with
    ``fs_cosine``), ``conflict_full``/``conflict_static`` (% conflicts per window). Missing keys skip a check."""
    from mlmc import evidence as ev

    checks = []

    def add(key: str, fn, claim: str, *samples, **kw) -> None:
        need = 3 if fn is ev.correlation else 2
        if any(np.size(a) < need for a in samples if not isinstance(a, float)):
            return  # too few units for an interval (e.g. the smoke profile): the check is not run
        checks.append(dataclasses.replace(fn(claim, *samples, **kw), asserted=asserted and key in ASSERTED))

    if "transfer_is_nearest" in x:
        add("nearest", ev.compare,
            "transfer language = the world's typologically nearest training language (same rule on both sides)",
            x["transfer_is_nearest"], x["transfer_random"], control_name="random transfer map", unit="test languages",
            statistic="share of test languages", kind="consistency", seed=seed)  # fmt: skip
    add("fs_typology", ev.correlation,
        "few-shot LAS rises with the typology cosine to the transfer language (NONEP FULL)", x["fs_cosine"],
        x["fs_las"], unit="test languages", seed=seed)  # fmt: skip
    if x["las_pretrained"].size and x["las_unseen"].size:
        add("pretrained", ev.compare,
            "test languages seen in pretraining parse better after few-shot training (NONEP FULL)",
            x["las_pretrained"], x["las_unseen"], control_name="languages not in pretraining",
            unit="test languages x few-shot seeds", statistic="mean LAS", seed=seed)  # fmt: skip
    add("mask_overlap", ev.correlation,
        "typologically close training languages share more switched-off heads", x["pair_typology"],
        x["pair_jaccard"], unit="training-language pairs", seed=seed)  # fmt: skip
    add("importance", ev.correlation,
        "typologically close training languages have more similar head importance", x["pair_typology"],
        x["pair_importance"], unit="training-language pairs", seed=seed)  # fmt: skip
    add("train_static", ev.compare,
        "SN_static beats FULL on the training languages (thesis Table 4.4)", x["train_static"], x["train_full"],
        control_name="FULL", paired=True, unit="training languages", statistic="mean LAS", seed=seed)  # fmt: skip
    if "train_random" in x:
        add("random_masks", ev.compare,
            "pruned masks beat random masks of the same sparsity (thesis Fig. 4.4)", x["train_static"],
            x["train_random"], control_name="random masks (Shuffle, R-n)", paired=True, unit="training languages",
            statistic="mean LAS", seed=seed)  # fmt: skip
    add("fs_static", ev.compare,
        "few-shot transfer: SN_static beats FULL (thesis Table 4.1)", x["fs_static"], x["fs_full"],
        control_name="FULL", paired=True, unit="test languages x few-shot seeds", statistic="mean LAS",
        seed=seed)  # fmt: skip
    add("gain_typology", ev.correlation,
        "the SN_static gain over FULL grows with the typology cosine (thesis Fig. 4.3a)", x["fs_cosine"],
        x["gain_static"], unit="test languages", seed=seed)  # fmt: skip
    if "conflict_full" in x:
        add("conflicts", ev.compare,
            "SN_static has fewer gradient conflicts than FULL (thesis Table 4.6)", x["conflict_static"],
            x["conflict_full"], control_name="FULL", alternative="less", paired=True, unit="windows",
            statistic="% language pairs in conflict", seed=seed)  # fmt: skip
    return checks


__all__ = [
    "MASK_INITS",
    "SOURCES",
    "TRANSFER_MAPS",
    "Batches",
    "MaskSearch",
    "ParsingData",
    "Stage2Result",
    "best_share",
    "check_masks",
    "check_params",
    "collate",
    "conflict_summary",
    "encoder_head_shape",
    "eval_batches",
    "evaluate_langs",
    "few_shot",
    "find_head_masks",
    "find_magnitude_masks",
    "finetune",
    "lang_code",
    "gate_of",
    "load_encoder",
    "load_parsing_data",
    "make_parser",
    "pct_off",
    "positions",
    "run_stage2",
    "selection_protection_masks",
    "stop_reasons",
    "subnet_checks",
    "thesis_transfer_map",
    "timed",
    "ud_dir_name",
    "under_mask",
]
