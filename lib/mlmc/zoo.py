"""The tiny-model zoo: small HF-architecture models pretrained on the synthetic world, cached on disk (all chapters).

``get("tiny-xlmr" | "tiny-mt5" | "tiny-llama")`` stands in for XLM-R, mT5 and Llama in the CPU default of the book.
A model is built from a small config, its tokenizer is trained with ``tokenizers`` on the world's pretraining
corpus, it is pretrained on CPU (one thread) and saved with ``save_pretrained`` under
``$MLMC_CACHE/zoo/<name>-<key>`` (default cache ``~/.cache/mlmc``), where ``key`` hashes the whole recipe: model
config, tokenizer settings, training hyperparameters, corpus fingerprint and :data:`RECIPE_VERSION`.

An entry is written atomically (temporary directory + rename) and is valid only when its ``done.json`` marker
matches the key and the sizes and checksums of its files, and the model loads; anything else (a killed build, a
truncated weights file) is rebuilt on the next call. Loading always goes through :func:`mlmc.models.load`, the code
path of hub models; for another head use the entry's directory, e.g.
``models.load(zoo.path("tiny-xlmr"), "seq-cls", num_labels=3)``. ``done.json`` also holds the pretraining
report: held-out accuracy next to a unigram baseline and chance, and the build time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from datasets import Dataset
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MT5Config,
    MT5ForConditionalGeneration,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    XLMRobertaConfig,
    XLMRobertaForMaskedLM,
)

from mlmc import models as mlmc_models
from mlmc import train as mlmc_train
from mlmc.errors import check_choice, check_int, check_positive, check_range
from mlmc.utils import atomic_dir, seed_everything, stable_hash

if TYPE_CHECKING:
    from mlmc.world import World

RECIPE_VERSION = 1
ARCHS = ("xlmr", "mt5", "llama")
_KIND = {"xlmr": "mlm", "mt5": "seq2seq", "llama": "causal-lm"}
_OBJECTIVE = {"xlmr": "mlm", "mt5": "span", "llama": "clm"}


@dataclass(frozen=True)
class Recipe:
    """Everything that determines a zoo entry; any field can be overridden in :func:`get` (``steps=20``).

    Defaults were tuned to learn within about a minute of one CPU thread: dropout 0, masking / span-noise rate 0.3
    (twice BERT's and T5's 0.15: more targets per step; with 0.15 the tiny encoder sat on the unigram plateau for
    the whole budget), learning rate 3e-3 with 10 % warm-up and linear decay.
    """

    arch: str
    layers: int
    heads: int
    hidden_size: int = 64
    ffn: int = 128
    max_length: int = 96
    dropout: float = 0.0
    vocab_size: int = 4000
    n_sentinels: int = 20
    steps: int = 1500
    batch_size: int = 32
    lr: float = 3e-3
    warmup_frac: float = 0.1
    weight_decay: float = 0.01
    mask_prob: float = 0.3
    noise_density: float = 0.3
    mean_span: float = 3.0
    langs: tuple[str, ...] | None = None
    n_per_lang: int | None = None
    holdout_frac: float = 0.03
    seed: int = 0

    def validate(self) -> Recipe:
        """Raise ``ValueError`` naming the first bad field; return ``self``."""
        check_choice("arch", self.arch, ARCHS)
        for name in ("layers", "heads", "hidden_size", "ffn", "batch_size", "n_sentinels"):
            check_int(name, getattr(self, name), min_value=1)
        check_int("steps", self.steps, min_value=0)
        check_int("max_length", self.max_length, min_value=8)
        check_int("vocab_size", self.vocab_size, min_value=100)
        check_int("seed", self.seed, min_value=0)
        if self.hidden_size % self.heads:
            raise ValueError(
                f"parameter 'hidden_size' ({self.hidden_size}) must be divisible by 'heads' ({self.heads})"
            )
        for name in ("dropout", "warmup_frac", "mask_prob", "noise_density"):
            check_range(name, getattr(self, name), 0.0, 1.0)
        check_range("holdout_frac", self.holdout_frac, 0.0, 0.5)
        check_positive("lr", self.lr)
        check_positive("weight_decay", self.weight_decay, allow_zero=True)
        check_positive("mean_span", self.mean_span)
        if self.n_per_lang is not None:
            check_int("n_per_lang", self.n_per_lang, min_value=1)
        if self.langs is not None and not self.langs:
            raise ValueError("parameter 'langs' must be None (all pretrained languages) or a non-empty list")
        return self


RECIPES: dict[str, Recipe] = {
    # ch. 02/03 (thesis: XLM-R / mBERT): 4 layers x 8 heads, d 64, FFN 128, masked-LM pretraining.
    "tiny-xlmr": Recipe(arch="xlmr", layers=4, heads=8, steps=1200, batch_size=64),
    # ch. 05 (thesis: mT5): d 64, 2 encoder + 2 decoder layers, span corruption.
    "tiny-mt5": Recipe(arch="mt5", layers=2, heads=4, steps=2000),
    # ch. 06/07 (thesis: Llama-style decoders): d 64, 2 layers, 4 heads, next-token prediction.
    "tiny-llama": Recipe(arch="llama", layers=2, heads=4),
}
NAMES = tuple(RECIPES)


def recipe(name: str, **overrides: Any) -> Recipe:
    """The validated recipe of ``name`` with ``overrides`` applied (unknown field names raise ``ValueError``)."""
    check_choice("name", name, NAMES)
    fields = [f.name for f in dataclasses.fields(Recipe)]
    bad = sorted(set(overrides) - set(fields) - {"arch"})
    if "arch" in overrides or bad:
        raise ValueError(
            f"unknown recipe override(s) {sorted(set(bad) | ({'arch'} & set(overrides)))}; allowed: "
            f"{[f for f in fields if f != 'arch']}"
        )
    if overrides.get("langs") is not None:
        overrides["langs"] = tuple(overrides["langs"])
    return dataclasses.replace(RECIPES[name], **overrides).validate()


# --- tokenizer ------------------------------------------------------------------------------------------------------
_SPECIALS = {
    "xlmr": dict(
        bos_token="<s>",
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        cls_token="<s>",
        sep_token="</s>",
        mask_token="<mask>",
    ),
    "mt5": dict(pad_token="<pad>", eos_token="</s>", unk_token="<unk>"),
    "llama": dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"),
}


def train_tokenizer(
    texts: Sequence[str], *, arch: str, vocab_size: int, n_sentinels: int = 20
) -> PreTrainedTokenizerFast:
    """Train a BPE tokenizer with SentencePiece-style ``▁`` word starts for ``arch`` on ``texts``.

    BPE for all three architectures: on the world's corpus the ``tokenizers`` Unigram trainer fell short of the
    requested vocabulary and split off ``▁`` and ``.`` as pieces of their own. Special tokens follow the original
    models: ``<s> <pad> </s> <unk> <mask>`` (xlmr, ``<s> A </s></s> B </s>``), ``<pad> </s> <unk>`` and sentinels
    ``<extra_id_0..n>`` (mt5, ``A </s>``), ``<s> </s> <unk> <pad>`` (llama, ``<s> A``). The mask and sentinel
    tokens swallow the space before them, so ``"a <mask> b"`` tokenizes like ``"a"``, mask, ``"b"``.
    """
    check_choice("arch", arch, ARCHS)
    check_int("vocab_size", vocab_size, min_value=10)
    names = _SPECIALS[arch]
    specials = list(dict.fromkeys(v for k, v in names.items() if k != "mask_token"))
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.train_from_iterator(texts, trainer)
    extra: dict[str, Any] = {}
    if arch == "xlmr":
        tok.add_special_tokens([AddedToken("<mask>", lstrip=True, special=True)])
        single, pair = "<s> $A </s>", "<s> $A </s> </s> $B </s>"
    elif arch == "mt5":
        sentinels = [f"<extra_id_{k}>" for k in range(n_sentinels)]
        tok.add_special_tokens([AddedToken(s, lstrip=True, special=True) for s in sentinels])
        extra["extra_special_tokens"] = sentinels
        single, pair = "$A </s>", "$A </s> $B </s>"
    else:
        single, pair = "<s> $A", "<s> $A </s> $B"
    used = {t for t in single.split() + pair.split() if t.startswith("<")}
    tok.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=[(t, tok.token_to_id(t)) for t in sorted(used)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=None, **names, **extra)


# --- model ----------------------------------------------------------------------------------------------------------
def init_model(rec: Recipe, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """A randomly initialised HF model of ``rec``'s architecture sized to ``tokenizer`` (seeded by ``rec.seed``)."""
    seed_everything(rec.seed)
    v, d, p = len(tokenizer), rec.hidden_size, rec.dropout
    ids = dict(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    if rec.arch == "xlmr":
        cfg = XLMRobertaConfig(
            vocab_size=v,
            hidden_size=d,
            num_hidden_layers=rec.layers,
            num_attention_heads=rec.heads,
            intermediate_size=rec.ffn,
            max_position_embeddings=rec.max_length + 2,
            type_vocab_size=1,
            hidden_dropout_prob=p,
            attention_probs_dropout_prob=p,
            bos_token_id=tokenizer.bos_token_id,
            **ids,
        )
        return XLMRobertaForMaskedLM(cfg)
    if rec.arch == "mt5":
        cfg = MT5Config(
            vocab_size=v,
            d_model=d,
            d_kv=d // rec.heads,
            d_ff=rec.ffn,
            num_layers=rec.layers,
            num_decoder_layers=rec.layers,
            num_heads=rec.heads,
            dropout_rate=p,
            feed_forward_proj="gated-gelu",
            tie_word_embeddings=False,
            decoder_start_token_id=tokenizer.pad_token_id,
            **ids,
        )
        model = MT5ForConditionalGeneration(cfg)
        # HF draws the untied output layer with std 1 (initial loss ~20 at d 64); mesh-tensorflow T5 uses
        # d^-1/2, which let the tiny model start learning spans hundreds of steps earlier.
        torch.nn.init.normal_(model.lm_head.weight, std=d**-0.5)
        return model
    cfg = LlamaConfig(
        vocab_size=v,
        hidden_size=d,
        intermediate_size=rec.ffn,
        num_hidden_layers=rec.layers,
        num_attention_heads=rec.heads,
        num_key_value_heads=rec.heads,
        max_position_embeddings=rec.max_length,
        attention_dropout=p,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        **ids,
    )
    return LlamaForCausalLM(cfg)


# --- corpus and cache -----------------------------------------------------------------------------------------------
def _source(rec: Recipe, world: World | None, corpus: Dataset | Sequence[str] | None) -> tuple[str, Callable]:
    """The corpus fingerprint, and a function that returns the texts to pretrain on (only called for a build)."""
    if corpus is not None:
        texts = list(corpus["text"]) if isinstance(corpus, Dataset) else list(corpus)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError("parameter 'corpus' must be a non-empty list of strings or a Dataset with a 'text' column")
        return "corpus-" + stable_hash(texts), lambda: texts
    if world is None:
        from mlmc.world import World

        world = World(seed=0)
    langs = world.check_langs(list(rec.langs)) if rec.langs else None
    return "world-" + world.fingerprint(), lambda: list(world.pretraining_corpus(langs, rec.n_per_lang)["text"])


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The zoo's directory: ``cache_dir``, else ``$MLMC_CACHE``, else ``~/.cache/mlmc`` (plus ``/zoo``)."""
    base = cache_dir if cache_dir is not None else os.environ.get("MLMC_CACHE", Path.home() / ".cache" / "mlmc")
    return Path(base).expanduser() / "zoo"


def cache_key(rec: Recipe, corpus_fingerprint: str) -> str:
    """Hash of the recipe, the corpus fingerprint and :data:`RECIPE_VERSION`."""
    return stable_hash({"version": RECIPE_VERSION, "recipe": dataclasses.asdict(rec), "corpus": corpus_fingerprint})


def _file_table(directory: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for f in sorted(directory.iterdir()):
        if f.is_file() and f.name != "done.json":
            out[f.name] = {"size": f.stat().st_size, "sha256": hashlib.sha256(f.read_bytes()).hexdigest()}
    return out


def is_valid(entry: str | Path, key: str | None = None) -> bool:
    """True if ``entry`` has a ``done.json`` (matching ``key`` if given) whose file sizes and checksums match and
    whose model loads; a killed build, a missing marker or a truncated file all give False."""
    entry = Path(entry)
    try:
        done = json.loads((entry / "done.json").read_text())
        if (key is not None and done["key"] != key) or _file_table(entry) != done["files"]:
            return False
        mlmc_models.load(entry, _KIND[done["recipe"]["arch"]])
    except Exception:  # noqa: BLE001 - any failure to read or load means "rebuild"
        return False
    return True


def path(
    name: str,
    world: World | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    corpus: Dataset | Sequence[str] | None = None,
    **overrides: Any,
) -> Path:
    """The cache directory of a zoo model, building it first if it is missing or broken.

    ``world`` defaults to ``World(seed=0)``; ``corpus`` (texts or a Dataset with ``text``) replaces the world's
    pretraining corpus; ``overrides`` change recipe fields (tests use ``steps=20``). Used by every chapter.
    """
    rec = recipe(name, **overrides)
    fingerprint, texts = _source(rec, world, corpus)
    key = cache_key(rec, fingerprint)
    entry = cache_root(cache_dir) / f"{name}-{key}"
    if not is_valid(entry, key):
        _remove_stale_temps(entry)
        _build(name, rec, texts(), fingerprint, key, entry, progress)
    return entry


def _remove_stale_temps(entry: Path, max_age_s: float = 3600.0) -> None:
    """Delete temporary directories of ``entry`` left by builds killed more than ``max_age_s`` ago (younger ones may
    belong to a build still running in another process)."""
    for tmp in entry.parent.glob(f".{entry.name}.tmp-*"):
        if time.time() - tmp.stat().st_mtime > max_age_s:
            shutil.rmtree(tmp, ignore_errors=True)


def get(
    name: str,
    world: World | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    corpus: Dataset | Sequence[str] | None = None,
    **overrides: Any,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """``(model, tokenizer)`` of a pretrained tiny model (built and cached on first use), loaded via
    :func:`mlmc.models.load`. See :func:`path` for the arguments. Used by every chapter's CPU default."""
    entry = path(name, world=world, cache_dir=cache_dir, progress=progress, corpus=corpus, **overrides)
    return mlmc_models.load(entry, _KIND[RECIPES[name].arch])


def report(entry: str | Path) -> dict[str, Any]:
    """The ``done.json`` of an entry: recipe, key, held-out accuracy vs baselines, build time."""
    return json.loads((Path(entry) / "done.json").read_text())


def _split(texts: list[str], frac: float, seed: int) -> tuple[list[str], list[str]]:
    order = np.random.default_rng(seed).permutation(len(texts))
    n_hold = int(round(frac * len(texts)))
    return [texts[i] for i in order[n_hold:]], [texts[i] for i in order[:n_hold]]


def _build(name: str, rec: Recipe, texts: list[str], fingerprint: str, key: str, entry: Path, progress: bool) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        train_texts, held_out = _split(texts, rec.holdout_frac, rec.seed)
        tokenizer = train_tokenizer(train_texts, arch=rec.arch, vocab_size=rec.vocab_size, n_sentinels=rec.n_sentinels)
        model = init_model(rec, tokenizer)
        objective = _OBJECTIVE[rec.arch]
        common = dict(
            steps=rec.steps,
            batch_size=rec.batch_size,
            lr=rec.lr,
            seed=rec.seed,
            warmup_frac=rec.warmup_frac,
            weight_decay=rec.weight_decay,
            max_length=rec.max_length,
            progress=progress,
        )
        obj_kw = {
            "mlm": dict(mask_prob=rec.mask_prob),
            "clm": {},
            "span": dict(noise_density=rec.noise_density, mean_span=rec.mean_span),
        }[objective]
        pretrain = {"mlm": mlmc_train.pretrain_mlm, "clm": mlmc_train.pretrain_clm, "span": mlmc_train.pretrain_span}
        losses = pretrain[objective](model, tokenizer, train_texts, **common, **obj_kw)
        train_seconds = time.perf_counter() - wall
        counts = Counter(i for s in tokenizer(train_texts, add_special_tokens=False)["input_ids"] for i in s)
        if objective == "clm":  # next-token targets include the </s> that ends every text
            counts[tokenizer.eos_token_id] += len(train_texts)
        metrics = {}
        if held_out:
            metrics = mlmc_train.evaluate_lm(
                model,
                tokenizer,
                held_out,
                objective,
                baseline_token=counts.most_common(1)[0][0],
                seed=rec.seed,
                max_length=rec.max_length,
                **obj_kw,
            )
        done = {
            "name": name,
            "key": key,
            "recipe_version": RECIPE_VERSION,
            "recipe": dataclasses.asdict(rec),
            "corpus": fingerprint,
            "objective": objective,
            "n_train_texts": len(train_texts),
            "n_heldout_texts": len(held_out),
            "vocab_size": len(tokenizer),
            "n_params": sum(p.numel() for p in model.parameters()),
            "heldout": metrics | {"chance_acc": 1 / len(tokenizer)},
            "final_train_loss": float(np.mean(losses[-50:])) if losses else None,
            "train_seconds": round(train_seconds, 2),
            "torch": torch.__version__,
        }
        with atomic_dir(entry) as tmp, mlmc_models.quiet_transformers():
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            done |= {
                "build_seconds": round(time.perf_counter() - wall, 2),
                "build_cpu_seconds": round(time.process_time() - cpu, 2),
                "files": _file_table(tmp),
            }
            (tmp / "done.json").write_text(json.dumps(done, indent=1, sort_keys=True))
    finally:
        torch.set_num_threads(threads)


# --- ch. 06: a tiny decoder pretrained for in-context learning on persona documents ---------------------------------
@dataclass(frozen=True)
class ICLRecipe:
    """The ``tiny-icl-llama`` build: a word-level tokenizer over the documents, a Llama decoder, and next-token
    loss on the answer tokens only (the word after each ``A:``), on documents the caller supplies (ch. 06 writes
    persona documents whose answers share a latent culture). Any field can be overridden in :func:`icl_path`."""

    layers: int = 2
    heads: int = 4
    hidden_size: int = 64
    ffn: int = 128
    max_length: int = 160
    steps: int = 3000
    batch_size: int = 32
    lr: float = 3e-3
    warmup_frac: float = 0.05
    weight_decay: float = 0.01
    seed: int = 0

    def validate(self) -> ICLRecipe:
        """Raise ``ValueError`` naming the first bad field; return ``self``."""
        Recipe(
            arch="llama",
            layers=self.layers,
            heads=self.heads,
            hidden_size=self.hidden_size,
            ffn=self.ffn,
            max_length=self.max_length,
            steps=self.steps,
            batch_size=self.batch_size,
            lr=self.lr,
            warmup_frac=self.warmup_frac,
            weight_decay=self.weight_decay,
            seed=self.seed,
        ).validate()
        return self


ICL_RECIPES: dict[str, ICLRecipe] = {"tiny-icl-llama": ICLRecipe()}
ANSWER_MARKER = "A:"


def train_word_tokenizer(texts: Sequence[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer (whitespace split, every word one token) with Llama's special tokens, ``<s> A``."""
    names = _SPECIALS["llama"]
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=list(names.values()), show_progress=False))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A",
        pair="<s> $A </s> $B",
        special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))],
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=None, **names)


def _answer_labels(ids: list[int], marker: int) -> list[int]:
    """Targets for ``<s> doc``: the token after each answer marker; -100 elsewhere."""
    labels = [-100] * len(ids)
    for i in range(1, len(ids)):
        if ids[i - 1] == marker:
            labels[i] = ids[i]
    return labels


def icl_answer_nll(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], batch_size: int = 64
) -> list[np.ndarray]:
    """Per document, the model's negative log-likelihood (nats) of each answer token, in document order."""
    marker = tokenizer.convert_tokens_to_ids(ANSWER_MARKER)
    seqs = [[tokenizer.bos_token_id, *s] for s in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
    out = []
    device = next(model.parameters()).device
    with torch.no_grad():
        for lo in range(0, len(seqs), batch_size):
            chunk = seqs[lo : lo + batch_size]
            ids, attn = mlmc_train.pad_sequences(chunk, tokenizer.pad_token_id)
            logp = torch.log_softmax(
                model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits.float(), -1
            ).cpu()
            for b, s in enumerate(chunk):
                pos = [i for i in range(1, len(s)) if s[i - 1] == marker]
                out.append(np.array([-float(logp[b, i - 1, s[i]]) for i in pos]))
    return out


def icl_path(
    name: str,
    docs: Sequence[str],
    heldout: Sequence[str] = (),
    cache_dir: str | Path | None = None,
    progress: bool = True,
    **overrides: Any,
) -> Path:
    """The cache directory of an in-context-learning zoo model trained on ``docs`` (built if missing or broken;
    same atomic entry and ``done.json`` checks as :func:`path`). ``done.json`` records the training loss curve
    (every 50 steps) and, with ``heldout`` documents, the held-out answer NLL. Used by ch. 06."""
    check_choice("name", name, tuple(ICL_RECIPES))
    fields = [f.name for f in dataclasses.fields(ICLRecipe)]
    bad = sorted(set(overrides) - set(fields))
    if bad:
        raise ValueError(f"unknown recipe override(s) {bad}; allowed: {fields}")
    rec = dataclasses.replace(ICL_RECIPES[name], **overrides).validate()
    docs, heldout = list(docs), list(heldout)
    if not docs or not all(isinstance(t, str) for t in docs):
        raise ValueError("parameter 'docs' must be a non-empty list of strings")
    key = stable_hash(
        {
            "version": RECIPE_VERSION,
            "icl": dataclasses.asdict(rec),
            "docs": stable_hash(docs),
            "heldout": stable_hash(heldout),
        }
    )
    entry = cache_root(cache_dir) / f"{name}-{key}"
    if not is_valid(entry, key):
        _remove_stale_temps(entry)
        _build_icl(name, rec, docs, heldout, key, entry, progress)
    return entry


def _build_icl(
    name: str, rec: ICLRecipe, docs: list[str], heldout: list[str], key: str, entry: Path, progress: bool
) -> None:
    from tqdm.auto import tqdm

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        tokenizer = train_word_tokenizer(docs + heldout)
        base = Recipe(
            arch="llama",
            layers=rec.layers,
            heads=rec.heads,
            hidden_size=rec.hidden_size,
            ffn=rec.ffn,
            max_length=rec.max_length,
            seed=rec.seed,
        )
        model = init_model(base, tokenizer)
        marker = tokenizer.convert_tokens_to_ids(ANSWER_MARKER)
        seqs = [
            [tokenizer.bos_token_id, *s][: rec.max_length]
            for s in tokenizer(docs, add_special_tokens=False)["input_ids"]
        ]
        labels = [_answer_labels(s, marker) for s in seqs]
        seed_everything(rec.seed)
        rng = np.random.default_rng(rec.seed)
        opt, sched = mlmc_train._optimizer(model, rec.lr, rec.weight_decay, max(rec.steps, 1), rec.warmup_frac)
        model.train()
        order, pos, losses = rng.permutation(len(seqs)), 0, []
        for _ in tqdm(range(rec.steps), desc="pretrain tiny-icl-llama", disable=not progress, leave=False):
            if pos + rec.batch_size > len(order):
                order, pos = rng.permutation(len(seqs)), 0
            idx = order[pos : pos + rec.batch_size]
            pos += rec.batch_size
            ids, attn = mlmc_train.pad_sequences([seqs[i] for i in idx], tokenizer.pad_token_id)
            lab, _ = mlmc_train.pad_sequences([labels[i] for i in idx], -100)
            loss = model(input_ids=ids, attention_mask=attn, labels=lab).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
        model.eval()
        train_seconds = time.perf_counter() - wall
        nll = icl_answer_nll(model, tokenizer, heldout) if heldout else []
        done = {
            "name": name,
            "key": key,
            "recipe_version": RECIPE_VERSION,
            "recipe": {"arch": "llama", **dataclasses.asdict(rec)},
            "objective": "answer tokens after 'A:'",
            "n_train_texts": len(docs),
            "n_heldout_texts": len(heldout),
            "vocab_size": len(tokenizer),
            "n_params": sum(p.numel() for p in model.parameters()),
            "loss_curve": [float(np.mean(losses[i : i + 50])) for i in range(0, len(losses), 50)],
            "heldout_answer_nll": float(np.mean(np.concatenate(nll))) if nll else None,
            "train_seconds": round(train_seconds, 2),
            "torch": torch.__version__,
        }
        with atomic_dir(entry) as tmp, mlmc_models.quiet_transformers():
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            done |= {
                "build_seconds": round(time.perf_counter() - wall, 2),
                "build_cpu_seconds": round(time.process_time() - cpu, 2),
                "files": _file_table(tmp),
            }
            (tmp / "done.json").write_text(json.dumps(done, indent=1, sort_keys=True))
    finally:
        torch.set_num_threads(threads)


def get_icl(
    name: str,
    docs: Sequence[str],
    heldout: Sequence[str] = (),
    cache_dir: str | Path | None = None,
    progress: bool = True,
    **overrides: Any,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """``(model, tokenizer)`` of :func:`icl_path`, loaded via :func:`mlmc.models.load` (ch. 06)."""
    entry = icl_path(name, docs, heldout, cache_dir=cache_dir, progress=progress, **overrides)
    return mlmc_models.load(entry, "causal-lm")
