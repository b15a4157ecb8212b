"""Training loops shared by the chapters: seeded fine-tuning for classification and the zoo's pretraining objectives.

* :func:`finetune_classifier` / :func:`predict`: sequence classification with a linear-decay schedule and one
  ``save_pretrained`` checkpoint per epoch (TracIn in ch. 01 and 03, subnetworks in ch. 02 and 03).
* :func:`pretrain_mlm`, :func:`pretrain_clm`, :func:`pretrain_span`: masked-LM, causal-LM and T5 span-corruption
  pretraining with vectorised masking (no per-example collator), used by :mod:`mlmc.zoo` and by chapters that
  pretrain on their own corpora (ch. 04 uses ``salient_ids`` / ``salient_prob``).
* :func:`evaluate_lm`: held-out token accuracy of those objectives next to a unigram baseline.

Every loop is deterministic: the same seed gives the same weights on the same machine kind.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from datasets import Dataset
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase, get_linear_schedule_with_warmup

from mlmc.errors import check_choice, check_int, check_positive, check_range
from mlmc.models import quiet_transformers
from mlmc.utils import atomic_dir, seed_everything

OBJECTIVES = ("mlm", "clm", "span")


# --- batching -------------------------------------------------------------------------------------------------------
def pad_sequences(seqs: Sequence[Sequence[int]], pad_id: int, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """Pad id lists into ``(input_ids, attention_mask)`` long tensors; ``side`` is ``"right"`` or ``"left"``."""
    check_choice("side", side, ("right", "left"))
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    width = int(lengths.max(initial=1))
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    cols = np.arange(width)
    mask = cols[None, :] < lengths[:, None]
    if side == "left":
        mask = mask[:, ::-1]
    ids[mask] = np.concatenate([np.asarray(s, dtype=np.int64) for s in seqs]) if len(seqs) else []
    return torch.from_numpy(ids), torch.from_numpy(mask.astype(np.int64))


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no weight decay on biases and normalisation weights (the HF Trainer convention)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _optimizer(model, lr: float, weight_decay: float, total: int, warmup_frac: float):
    opt = torch.optim.AdamW(_param_groups(model, weight_decay), lr=lr)
    return opt, get_linear_schedule_with_warmup(opt, int(round(warmup_frac * total)), total)


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


# --- fine-tuning ----------------------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    """Outcome of :func:`finetune_classifier`: one checkpoint per epoch, the per-epoch history and the best epoch."""

    checkpoints: list[Path]
    history: pd.DataFrame
    best_epoch: int

    @property
    def best_checkpoint(self) -> Path:
        """The checkpoint of :attr:`best_epoch` (epochs count from 1)."""
        return self.checkpoints[self.best_epoch - 1]


def _text_columns(ds: Dataset, text_cols: Sequence[str]) -> list[str]:
    missing = [c for c in text_cols[:1] if c not in ds.column_names]
    if missing:
        raise ValueError(f"parameter 'text_cols': column {missing[0]!r} not in dataset columns {ds.column_names}")
    return [c for c in text_cols if c in ds.column_names and any(ds[c])]


def _encode(tokenizer, ds: Dataset, text_cols: Sequence[str], max_length: int) -> list[list[int]]:
    cols = _text_columns(ds, text_cols)
    texts = [[t or "" for t in ds[c]] for c in cols]
    return tokenizer(*texts, truncation=True, max_length=max_length)["input_ids"]


def _batches(n: int, batch_size: int, order: np.ndarray | None = None) -> Iterator[np.ndarray]:
    order = np.arange(n) if order is None else order
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


@torch.no_grad()
def predict(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    ds: Dataset,
    *,
    batch_size: int = 64,
    text_cols: Sequence[str] = ("text_a", "text_b"),
    max_length: int = 128,
) -> np.ndarray:
    """Class probabilities ``[len(ds), num_labels]`` of a sequence classifier (ch. 01, 02, 03)."""
    check_int("batch_size", batch_size, min_value=1)
    enc = _encode(tokenizer, ds, text_cols, max_length)
    was_training = model.training
    model.eval()
    out = []
    for idx in _batches(len(enc), batch_size):
        ids, mask = pad_sequences([enc[i] for i in idx], tokenizer.pad_token_id)
        logits = model(input_ids=ids.to(_device(model)), attention_mask=mask.to(_device(model))).logits
        out.append(torch.softmax(logits.float(), -1).cpu().numpy())
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, model.config.num_labels))


def finetune_classifier(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    train: Dataset,
    dev: Dataset | None = None,
    *,
    lr: float,
    epochs: int,
    batch_size: int,
    seed: int,
    ckpt_dir: str | Path,
    weight_decay: float = 0.01,
    warmup_frac: float = 0.0,
    max_length: int = 128,
    patience: int | None = None,
    text_cols: Sequence[str] = ("text_a", "text_b"),
    label_col: str = "label",
    progress: bool = True,
) -> TrainResult:
    """Fine-tune a sequence classifier with AdamW and a linear-decay schedule; save a checkpoint after every epoch.

    Checkpoints go to ``ckpt_dir/epoch-<k>`` (model and tokenizer, loadable with ``mlmc.models.load``). The history
    has one row per epoch with ``train_loss``, ``dev_acc`` and, when ``dev`` has a ``lang`` column,
    ``dev_acc_<lang>`` per language. ``patience`` stops after that many epochs without a better ``dev_acc``.
    Same seed, same data, same machine kind: identical weights. Used by ch. 01, 02, 03.
    """
    check_positive("lr", lr)
    check_int("epochs", epochs, min_value=1)
    check_int("batch_size", batch_size, min_value=1)
    check_positive("weight_decay", weight_decay, allow_zero=True)
    check_range("warmup_frac", warmup_frac, 0.0, 1.0)
    check_int("max_length", max_length, min_value=2)
    if patience is not None:
        check_int("patience", patience, min_value=1)
        if dev is None:
            raise ValueError("parameter 'patience' needs a 'dev' dataset")
    for name, ds in (("train", train), ("dev", dev)):
        if ds is not None and label_col not in ds.column_names:
            raise ValueError(f"parameter 'label_col': {label_col!r} is not a column of {name} ({ds.column_names})")
    seed_everything(seed)
    ckpt_dir = Path(ckpt_dir)
    enc = _encode(tokenizer, train, text_cols, max_length)
    labels = torch.as_tensor(np.asarray(train[label_col]), dtype=torch.long)
    steps_per_epoch = -(-len(enc) // batch_size)
    opt, sched = _optimizer(model, lr, weight_decay, steps_per_epoch * epochs, warmup_frac)
    rng = np.random.default_rng(seed)
    device = _device(model)
    rows, checkpoints, best, since_best = [], [], -1.0, 0
    bar = tqdm(total=steps_per_epoch * epochs, desc="fine-tune", disable=not progress, leave=False)
    for epoch in range(1, epochs + 1):
        model.train()
        losses = []
        for idx in _batches(len(enc), batch_size, rng.permutation(len(enc))):
            ids, mask = pad_sequences([enc[i] for i in idx], tokenizer.pad_token_id)
            out = model(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels[idx].to(device))
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(out.loss.item())
            bar.update()
        model.eval()
        path = ckpt_dir / f"epoch-{epoch}"
        with atomic_dir(path) as tmp, quiet_transformers():
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        checkpoints.append(path)
        row = {"epoch": epoch, "train_loss": float(np.mean(losses))}
        if dev is not None:
            row.update(_dev_accuracy(model, tokenizer, dev, batch_size, text_cols, label_col, max_length))
        rows.append(row)
        if dev is not None:
            since_best = 0 if row["dev_acc"] > best else since_best + 1
            best = max(best, row["dev_acc"])
            if patience is not None and since_best >= patience:
                break
    bar.close()
    history = pd.DataFrame(rows)
    best_epoch = int(history.loc[history["dev_acc"].idxmax(), "epoch"]) if dev is not None else len(rows)
    return TrainResult(checkpoints=checkpoints, history=history, best_epoch=best_epoch)


def _dev_accuracy(model, tokenizer, dev: Dataset, batch_size, text_cols, label_col, max_length) -> dict[str, float]:
    correct = predict(model, tokenizer, dev, batch_size=batch_size, text_cols=text_cols, max_length=max_length)
    correct = correct.argmax(-1) == np.asarray(dev[label_col])
    out = {"dev_acc": float(correct.mean())}
    if "lang" in dev.column_names:
        langs = np.asarray(dev["lang"])
        out.update({f"dev_acc_{lang}": float(correct[langs == lang].mean()) for lang in dict.fromkeys(langs)})
    return out


# --- pretraining objectives -----------------------------------------------------------------------------------------
def mask_tokens(
    ids: torch.Tensor,
    maskable: torch.Tensor,
    *,
    mask_id: int,
    vocab_size: int,
    mask_prob: float,
    generator: torch.Generator,
    salient: torch.Tensor | None = None,
    salient_prob: float = 0.0,
    replace: tuple[float, float] = (0.8, 0.1),
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking of a whole batch at once: returns ``(inputs, labels)`` with ``-100`` on unselected positions.

    Each ``maskable`` position is selected with ``mask_prob``; ``salient`` positions (a bool tensor) additionally with
    ``salient_prob`` (selected if either draw hits). Of the selected positions a share ``replace[0]`` becomes
    ``mask_id``, ``replace[1]`` a random token, the rest stays. Used by :func:`pretrain_mlm` (ch. 04's salient masking).
    """
    prob = torch.full(ids.shape, mask_prob)
    if salient is not None:
        prob = torch.where(salient, 1 - (1 - mask_prob) * (1 - salient_prob), prob)
    selected = (torch.rand(ids.shape, generator=generator) < prob) & maskable
    labels = torch.where(selected, ids, torch.full_like(ids, -100))
    draw = torch.rand(ids.shape, generator=generator)
    random_ids = torch.randint(vocab_size, ids.shape, generator=generator)
    inputs = torch.where(selected & (draw < replace[0]), torch.full_like(ids, mask_id), ids)
    to_random = selected & (draw >= replace[0]) & (draw < replace[0] + replace[1])
    return torch.where(to_random, random_ids, inputs), labels


def _gaps(n_items: int, n_spans: int, rng: np.random.Generator) -> np.ndarray:
    """Split ``n_items`` kept tokens into ``n_spans + 1`` gaps around the spans: the outer two may be empty,
    the inner ones are not, so spans never touch and may sit anywhere, including at either end."""
    rest = n_items - (n_spans - 1)
    parts = np.diff(np.concatenate([[0], np.sort(rng.integers(0, rest + 1, n_spans)), [rest]]))
    parts[1:-1] += 1
    return parts


def _lengths(n_items: int, n_parts: int, rng: np.random.Generator) -> np.ndarray:
    """Split ``n_items`` into ``n_parts`` positive lengths uniformly at random."""
    cuts = np.sort(rng.choice(np.arange(1, n_items), n_parts - 1, replace=False))
    return np.diff(np.concatenate([[0], cuts, [n_items]]))


def span_corrupt(
    ids: Sequence[int],
    rng: np.random.Generator,
    *,
    sentinel_ids: Sequence[int],
    eos_id: int,
    noise_density: float = 0.15,
    mean_span: float = 3.0,
) -> tuple[list[int], list[int]]:
    """T5 span corruption of one token sequence: ``(inputs, targets)``, both ending in ``eos_id``.

    About ``noise_density`` of the tokens, in spans of mean length ``mean_span``, are replaced by sentinels
    ``sentinel_ids[0], [1], ...`` in the input; the target lists each sentinel followed by its span and ends with the
    next sentinel, e.g. ``<x0> a b <x1> c <x2> </s>``. Unlike T5, which corrupts long packed sequences, the spans of
    a short sentence are placed anywhere (T5's layout would always put the last span at the sentence end). Used by
    the tiny mT5 (ch. 05) through :func:`pretrain_span`.
    """
    ids = list(ids)
    n = len(ids)
    if n < 2:
        return ids + [eos_id], [sentinel_ids[0], eos_id]
    n_noise = int(np.clip(round(n * noise_density), 1, n - 1))
    n_spans = int(np.clip(round(n_noise / mean_span), 1, min(n_noise, n - n_noise + 1, len(sentinel_ids) - 1)))
    noise, keep = _lengths(n_noise, n_spans, rng), _gaps(n - n_noise, n_spans, rng)
    inputs, targets, pos = [], [], 0
    for k in range(n_spans):
        inputs += ids[pos : pos + keep[k]] + [sentinel_ids[k]]
        pos += keep[k]
        targets += [sentinel_ids[k]] + ids[pos : pos + noise[k]]
        pos += noise[k]
    return inputs + ids[pos:] + [eos_id], targets + [sentinel_ids[n_spans], eos_id]


@dataclass(frozen=True)
class _Tok:
    """The token ids an objective needs, read once from the tokenizer."""

    pad: int
    bos: int | None
    eos: int | None
    mask: int | None
    special: tuple[int, ...]
    sentinels: tuple[int, ...]
    vocab: int

    @classmethod
    def of(cls, tokenizer: PreTrainedTokenizerBase) -> _Tok:
        sentinels = tuple(tokenizer.convert_tokens_to_ids(t) for t in _sentinel_tokens(tokenizer))
        return cls(
            pad=tokenizer.pad_token_id,
            bos=tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id,
            eos=tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id,
            mask=tokenizer.mask_token_id,
            special=tuple(tokenizer.all_special_ids),
            sentinels=sentinels,
            vocab=len(tokenizer),
        )


def _sentinel_tokens(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    vocab = tokenizer.get_vocab()
    out, k = [], 0
    while f"<extra_id_{k}>" in vocab:
        out.append(f"<extra_id_{k}>")
        k += 1
    return out


def _make_batch(objective: str, seqs: list[list[int]], tok: _Tok, gen: torch.Generator, rng, eval_mode: bool, **kw):
    """Model inputs with ``labels`` for one batch of token id lists (no special tokens) under ``objective``."""
    if objective == "mlm":
        ids, attn = pad_sequences([[tok.bos, *s, tok.eos] for s in seqs], tok.pad)
        maskable = ~torch.isin(ids, torch.tensor(tok.special))
        salient = torch.isin(ids, kw["salient_ids"]) if kw.get("salient_ids") is not None else None
        replace = (1.0, 0.0) if eval_mode else (0.8, 0.1)
        inputs, labels = mask_tokens(
            ids,
            maskable,
            mask_id=tok.mask,
            vocab_size=tok.vocab,
            mask_prob=kw["mask_prob"],
            generator=gen,
            salient=salient,
            salient_prob=kw.get("salient_prob", 0.0),
            replace=replace,
        )
        return {"input_ids": inputs, "attention_mask": attn, "labels": labels}
    if objective == "clm":
        ids, attn = pad_sequences([[tok.bos, *s, tok.eos] for s in seqs], tok.pad)
        return {"input_ids": ids, "attention_mask": attn, "labels": ids.masked_fill(attn == 0, -100)}
    pairs = [
        span_corrupt(
            s,
            rng,
            sentinel_ids=tok.sentinels,
            eos_id=tok.eos,
            noise_density=kw["noise_density"],
            mean_span=kw["mean_span"],
        )
        for s in seqs
    ]
    ids, attn = pad_sequences([p[0] for p in pairs], tok.pad)
    labels, _ = pad_sequences([p[1] for p in pairs], -100)
    return {"input_ids": ids, "attention_mask": attn, "labels": labels}


def _loss(model: PreTrainedModel, batch: dict[str, torch.Tensor], objective: str) -> torch.Tensor:
    """The model's training loss; for masked LMs with an ``lm_head`` (the RoBERTa family, XLM-R) the vocabulary
    head runs on the masked positions only.

    Same value as ``model(**batch).loss`` (checked in the tests) at a fraction of the cost when the vocabulary
    projection dominates, as it does for the tiny models.
    """
    head = getattr(model, "lm_head", None)
    if objective != "mlm" or head is None:
        return model(**batch).loss
    labels = batch["labels"]
    hidden = model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    selected = labels != -100
    return torch.nn.functional.cross_entropy(head(hidden[selected]), labels[selected])


def _tokenize(tokenizer, texts: Sequence[str], max_length: int) -> list[list[int]]:
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [s[: max_length - 2] for s in ids if s]


def _pretrain(
    objective: str,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    warmup_frac: float,
    weight_decay: float,
    max_length: int,
    progress: bool,
    callback: Callable[[int, float], None] | None,
    **kw,
) -> list[float]:
    check_int("steps", steps, min_value=0)
    check_int("batch_size", batch_size, min_value=1)
    check_positive("lr", lr)
    check_range("warmup_frac", warmup_frac, 0.0, 1.0)
    check_int("max_length", max_length, min_value=3)
    seqs = _tokenize(tokenizer, texts, max_length)
    if not seqs:
        raise ValueError("parameter 'texts' holds no non-empty text")
    tok = _Tok.of(tokenizer)
    seed_everything(seed)
    gen, rng = torch.Generator().manual_seed(seed), np.random.default_rng(seed)
    opt, sched = _optimizer(model, lr, weight_decay, max(steps, 1), warmup_frac)
    device = _device(model)
    model.train()
    order, pos, losses = rng.permutation(len(seqs)), 0, []
    for step in tqdm(range(steps), desc=f"pretrain {objective}", disable=not progress, leave=False):
        if pos + batch_size > len(order):
            order, pos = rng.permutation(len(seqs)), 0
        batch = _make_batch(objective, [seqs[i] for i in order[pos : pos + batch_size]], tok, gen, rng, False, **kw)
        pos += batch_size
        loss = _loss(model, {k: v.to(device) for k, v in batch.items()}, objective)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if callback is not None:
            callback(step, losses[-1])
    model.eval()
    return losses


def pretrain_mlm(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    steps: int,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    mask_prob: float = 0.15,
    salient_ids: Sequence[int] | None = None,
    salient_prob: float = 0.0,
    warmup_frac: float = 0.05,
    weight_decay: float = 0.01,
    max_length: int = 64,
    progress: bool = True,
    callback: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Masked-LM pretraining (80/10/10 BERT masking) for ``steps`` batches; returns the loss per step.

    ``salient_ids`` are token ids masked with the extra probability ``salient_prob`` (ch. 04: without it a tiny MLM
    stalls at the unigram attribute distribution). ``callback(step, loss)`` runs after each step.
    Used by :mod:`mlmc.zoo` (tiny-xlmr) and ch. 04.
    """
    check_range("mask_prob", mask_prob, 0.0, 1.0)
    check_range("salient_prob", salient_prob, 0.0, 1.0)
    if tokenizer.mask_token_id is None:
        raise ValueError("parameter 'tokenizer' has no mask token; masked-LM pretraining needs one")
    salient = torch.as_tensor(list(salient_ids), dtype=torch.long) if salient_ids is not None else None
    return _pretrain(
        "mlm",
        model,
        tokenizer,
        texts,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        warmup_frac=warmup_frac,
        weight_decay=weight_decay,
        max_length=max_length,
        progress=progress,
        callback=callback,
        mask_prob=mask_prob,
        salient_ids=salient,
        salient_prob=salient_prob,
    )


def pretrain_clm(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    steps: int,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    warmup_frac: float = 0.05,
    weight_decay: float = 0.01,
    max_length: int = 64,
    progress: bool = True,
    callback: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Causal-LM pretraining on ``<s> text </s>`` sequences; returns the loss per step. Used by the zoo (tiny-llama)."""
    return _pretrain(
        "clm",
        model,
        tokenizer,
        texts,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        warmup_frac=warmup_frac,
        weight_decay=weight_decay,
        max_length=max_length,
        progress=progress,
        callback=callback,
    )


def pretrain_span(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    steps: int,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    noise_density: float = 0.15,
    mean_span: float = 3.0,
    warmup_frac: float = 0.05,
    weight_decay: float = 0.01,
    max_length: int = 64,
    progress: bool = True,
    callback: Callable[[int, float], None] | None = None,
) -> list[float]:
    """T5 span-corruption pretraining (see :func:`span_corrupt`); returns the loss per step. Used by the zoo (mt5)."""
    check_range("noise_density", noise_density, 0.0, 1.0)
    check_positive("mean_span", mean_span)
    if not _sentinel_tokens(tokenizer):
        raise ValueError("parameter 'tokenizer' has no <extra_id_0> sentinel; span corruption needs them")
    return _pretrain(
        "span",
        model,
        tokenizer,
        texts,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        warmup_frac=warmup_frac,
        weight_decay=weight_decay,
        max_length=max_length,
        progress=progress,
        callback=callback,
        noise_density=noise_density,
        mean_span=mean_span,
    )


@torch.no_grad()
def evaluate_lm(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    objective: str,
    *,
    baseline_token: int,
    seed: int = 0,
    batch_size: int = 64,
    max_length: int = 64,
    mask_prob: float = 0.15,
    noise_density: float = 0.15,
    mean_span: float = 3.0,
) -> dict[str, float]:
    """Held-out token accuracy and loss of a pretraining ``objective`` (``"mlm"``, ``"clm"``, ``"span"``).

    ``mlm``: masked positions, all replaced by the mask token; ``clm``: every next token including ``</s>``;
    ``span``: the span tokens of the target (not its sentinels or ``</s>``). ``baseline_acc`` is the accuracy of
    always predicting ``baseline_token`` (e.g. the most frequent training token) on the same positions.
    Used by :mod:`mlmc.zoo` to report how much each tiny model learned.
    """
    check_choice("objective", objective, OBJECTIVES)
    tok = _Tok.of(tokenizer)
    seqs = _tokenize(tokenizer, texts, max_length)
    gen, rng = torch.Generator().manual_seed(seed), np.random.default_rng(seed)
    device = _device(model)
    model.eval()
    hits = base = total = 0
    nll = 0.0
    for idx in _batches(len(seqs), batch_size):
        batch = _make_batch(
            objective,
            [seqs[i] for i in idx],
            tok,
            gen,
            rng,
            True,
            mask_prob=mask_prob,
            noise_density=noise_density,
            mean_span=mean_span,
        )
        logits = model(**{k: v.to(device) for k, v in batch.items() if k != "labels"} | _decoder_inputs(model, batch))
        logits = logits.logits.float().cpu()
        labels = batch["labels"]
        if objective == "clm":
            logits, labels = logits[:, :-1], labels[:, 1:]
        scored = labels != -100
        if objective == "span":
            scored &= ~torch.isin(labels, torch.tensor([*tok.sentinels, tok.eos]))
        logp = torch.log_softmax(logits[scored], -1)
        target = labels[scored]
        nll -= logp.gather(1, target[:, None]).sum().item()
        hits += (logp.argmax(-1) == target).sum().item()
        base += (target == baseline_token).sum().item()
        total += int(scored.sum())
    total = max(total, 1)
    return {"accuracy": hits / total, "baseline_acc": base / total, "loss": nll / total, "n_tokens": total}


def _decoder_inputs(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Teacher-forcing decoder inputs for encoder-decoder models (the labels shifted right)."""
    if not model.config.is_encoder_decoder:
        return {}
    dec = model.prepare_decoder_input_ids_from_labels(labels=batch["labels"])
    return {"decoder_input_ids": dec.to(_device(model))}
