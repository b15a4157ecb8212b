"""Biaffine dependency parser on any Hugging Face encoder, MST decoding and CoNLL-18 attachment scores (Ch. 02 /
thesis Ch. 4).

The parser follows UDify with the parsing task only: a scalar mix over the encoder's layer outputs, the first word
piece of each word, a learned ROOT sentinel, a biaffine arc scorer, a bilinear label scorer applied at the gold head
in training and at the predicted head at evaluation, and loss = arc NLL + label NLL, each averaged over words.
Evaluation decodes single-root trees with Chu-Liu/Edmonds and scores them like the CoNLL 2018 script: syntactic
words, punctuation included, deprel subtypes stripped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PreTrainedTokenizerFast

from mlmc.data.conllu_io import Sentence
from mlmc.errors import check_choice, check_int, check_range
from mlmc.metalearn import gate_scope

DECODERS = ("greedy", "mst", "none")


class ScalarMix(nn.Module):
    """``eta * sum_i softmax(lambda)_i * layer_i`` with lambda = 0 and eta = 1 at init (UDify's layer attention).

    ``layer_dropout`` drops each layer's weight (to -1e20 before the softmax) with that probability in training.
    """

    def __init__(self, n_layers: int, layer_dropout: float = 0.0) -> None:
        super().__init__()
        check_int("n_layers", n_layers, min_value=1)
        check_range("layer_dropout", layer_dropout, 0.0, 1.0)
        self.weights = nn.Parameter(torch.zeros(n_layers))
        self.gamma = nn.Parameter(torch.ones(()))
        self.layer_dropout = layer_dropout

    def forward(self, layers: Sequence[Tensor]) -> Tensor:
        if len(layers) != self.weights.numel():
            raise ValueError(f"ScalarMix expects {self.weights.numel()} layers, got {len(layers)}")
        w = self.weights
        if self.training and self.layer_dropout > 0:
            drop = torch.rand_like(w) < self.layer_dropout
            w = w.masked_fill(drop, -1e20)
        probs = torch.softmax(w, dim=0)
        return self.gamma * sum(p * h for p, h in zip(probs, layers, strict=True))


@dataclass
class ParserOutput:
    """``arc_logp[b, i, j]``: log-probability that token ``j`` heads token ``i`` (index 0 = ROOT; rows 1.. are words).

    ``heads``/``labels`` (``[B, N]``, 0 on padding) and ``label_logits`` (at the predicted heads) are ``None`` when
    the forward pass did not decode; ``loss`` is ``None`` when the batch has no gold trees.
    """

    loss: Tensor | None
    arc_logp: Tensor
    label_logits: Tensor | None
    heads: Tensor | None
    labels: Tensor | None


class BiaffineParser(nn.Module):
    """UDify-style biaffine parser on top of any HF encoder that returns ``hidden_states`` (Ch. 02).

    Defaults are UDify's: arc FFN 768, label FFN 256 (ELU), layer-mix dropout 0.1, input dropout 0.5, decoder
    dropout 0.5. ``wordpiece_dropout`` replaces that share of non-special input pieces by ``mask_token_id`` in
    training (UDify uses 0.2). Parameters under ``encoder.`` form the encoder LR group, all others (scalar mix,
    sentinel, scorers) the decoder group (see :meth:`param_groups`).
    """

    def __init__(
        self,
        encoder: nn.Module,
        n_labels: int,
        arc_dim: int = 768,
        label_dim: int = 256,
        *,
        layer_dropout: float = 0.1,
        input_dropout: float = 0.5,
        dropout: float = 0.5,
        wordpiece_dropout: float = 0.0,
        mask_token_id: int | None = None,
    ) -> None:
        super().__init__()
        check_int("n_labels", n_labels, min_value=1)
        check_int("arc_dim", arc_dim, min_value=1)
        check_int("label_dim", label_dim, min_value=1)
        for name, value in [("input_dropout", input_dropout), ("dropout", dropout)]:
            check_range(name, value, 0.0, 1.0)
        check_range("wordpiece_dropout", wordpiece_dropout, 0.0, 1.0)
        if wordpiece_dropout > 0 and mask_token_id is None:
            raise ValueError("parameter 'mask_token_id' is required when 'wordpiece_dropout' > 0")
        dim = encoder.config.hidden_size
        self.encoder = encoder
        self.n_labels = n_labels
        self.mix = ScalarMix(encoder.config.num_hidden_layers, layer_dropout)
        self.root = nn.Parameter(torch.randn(dim))
        self.arc_head = nn.Sequential(nn.Linear(dim, arc_dim), nn.ELU())
        self.arc_dep = nn.Sequential(nn.Linear(dim, arc_dim), nn.ELU())
        self.arc_weight = nn.Parameter(nn.init.xavier_uniform_(torch.empty(arc_dim + 1, arc_dim + 1)))
        self.label_head = nn.Sequential(nn.Linear(dim, label_dim), nn.ELU())
        self.label_dep = nn.Sequential(nn.Linear(dim, label_dim), nn.ELU())
        self.label_bilinear = nn.Bilinear(label_dim, label_dim, n_labels)
        self.input_dropout = nn.Dropout(input_dropout)
        self.dropout = nn.Dropout(dropout)
        self.wordpiece_dropout = wordpiece_dropout
        self.mask_token_id = mask_token_id

    def param_groups(self, encoder_lr: float, decoder_lr: float, weight_decay: float = 0.01) -> list[dict[str, Any]]:
        """Two optimiser groups: encoder vs decoder (scalar mix, sentinel, scorers), as in the thesis's stage 2."""
        enc = [p for n, p in self.named_parameters() if n.startswith("encoder.")]
        dec = [p for n, p in self.named_parameters() if not n.startswith("encoder.")]
        return [
            {"params": enc, "lr": encoder_lr, "weight_decay": weight_decay},
            {"params": dec, "lr": decoder_lr, "weight_decay": weight_decay},
        ]

    def _word_vectors(self, batch: Mapping[str, Any]) -> Tensor:
        ids = batch["input_ids"]
        if self.training and self.wordpiece_dropout > 0:
            droppable = batch["attention_mask"].bool() & ~batch["special_tokens_mask"].bool()
            drop = droppable & (torch.rand(ids.shape, device=ids.device) < self.wordpiece_dropout)
            ids = ids.masked_fill(drop, self.mask_token_id)
        out = self.encoder(input_ids=ids, attention_mask=batch["attention_mask"], output_hidden_states=True)
        mixed = self.mix(out.hidden_states[1:])
        index = batch["word_index"].unsqueeze(-1).expand(-1, -1, mixed.shape[-1])
        words = mixed.gather(1, index)
        root = self.root.expand(words.shape[0], 1, -1)
        return self.input_dropout(torch.cat([root, words], dim=1))

    def _labels_at(self, lab_head: Tensor, lab_dep: Tensor, heads: Tensor) -> Tensor:
        index = heads.unsqueeze(-1).expand(-1, -1, lab_head.shape[-1])
        return self.label_bilinear(lab_head.gather(1, index).contiguous(), lab_dep[:, 1:].contiguous())

    def forward(self, batch: Mapping[str, Any], decode: str | None = None) -> ParserOutput:
        """Score a batch from :func:`collate_sentences`; ``decode`` defaults to "none" in training, "mst" in eval."""
        decode = ("none" if self.training else "mst") if decode is None else check_choice("decode", decode, DECODERS)
        x = self._word_vectors(batch)
        word_mask = batch["word_mask"]
        n_tok = x.shape[1]
        valid = torch.cat([torch.ones_like(word_mask[:, :1]), word_mask], dim=1)
        arc_h = self.dropout(self.arc_head(x))
        arc_d = self.dropout(self.arc_dep(x))
        ones = torch.ones_like(arc_h[..., :1])
        scores = torch.cat([arc_d, ones], -1) @ self.arc_weight @ torch.cat([arc_h, ones], -1).transpose(1, 2)
        eye = torch.eye(n_tok, dtype=torch.bool, device=x.device)
        scores = scores.masked_fill(~valid[:, None, :] | eye, float("-inf"))
        arc_logp = torch.log_softmax(scores, dim=-1)
        lab_h = self.dropout(self.label_head(x))
        lab_d = self.dropout(self.label_dep(x))

        loss = None
        if "heads" in batch:
            gold_heads, gold_labels = batch["heads"], batch["labels"]
            arc_nll = -arc_logp[:, 1:].gather(-1, gold_heads.unsqueeze(-1)).squeeze(-1)
            label_logits_gold = self._labels_at(lab_h, lab_d, gold_heads)
            loss = arc_nll[word_mask].mean() + F.cross_entropy(label_logits_gold[word_mask], gold_labels[word_mask])
        if decode == "none":
            return ParserOutput(loss, arc_logp, None, None, None)
        if decode == "greedy":
            heads = arc_logp[:, 1:].argmax(-1).masked_fill(~word_mask, 0)
        else:
            heads = torch.zeros_like(word_mask, dtype=torch.long)
            logp = arc_logp.detach().double().cpu().numpy()
            for b, n in enumerate(word_mask.sum(1).tolist()):
                heads[b, :n] = torch.from_numpy(chu_liu_edmonds(logp[b, : n + 1, : n + 1]))
        label_logits = self._labels_at(lab_h, lab_d, heads)
        labels = label_logits.argmax(-1).masked_fill(~word_mask, 0)
        return ParserOutput(loss, arc_logp, label_logits, heads, labels)


def _piece_cap(lengths: Sequence[int], budget: int) -> int:
    """The largest number of pieces per word that fits ``budget`` pieces (at least 1)."""
    cap = max(lengths, default=1)
    while cap > 1 and sum(min(n, cap) for n in lengths) > budget:
        cap -= 1
    return cap


def _special_frame(tokenizer: PreTrainedTokenizerFast) -> tuple[list[int], list[int]]:
    """The special-token ids the tokenizer puts before and after the pieces of one sentence (e.g. <s> ... </s>)."""
    enc = tokenizer([["a"]], is_split_into_words=True, return_special_tokens_mask=True)
    ids, special = enc["input_ids"][0], enc["special_tokens_mask"][0]
    first = special.index(0)
    last = len(special) - special[::-1].index(0)
    return ids[:first], ids[last:]


def max_pieces(tokenizer: PreTrainedTokenizerFast, max_length: int | None = None) -> int | None:
    """Input length limit in pieces: ``max_length``, else the tokenizer's ``model_max_length`` (None if unset)."""
    limit = max_length if max_length is not None else getattr(tokenizer, "model_max_length", None)
    return None if limit is None or limit > 1_000_000 else int(limit)


def collate_sentences(
    sentences: Sequence[Sentence],
    tokenizer: PreTrainedTokenizerFast,
    labels: Sequence[str],
    max_length: int | None = None,
) -> dict[str, Any]:
    """Turn word-level sentences into a subword batch for :class:`BiaffineParser` (Ch. 02).

    ``word_index[b, w]`` is the position of word ``w``'s first piece; a word with no piece points to the previous
    word's first piece. Sentences longer than ``max_length`` pieces (default: the tokenizer's ``model_max_length``,
    set to the encoder's positions by the chapter's loader) are shortened *per word*: every word keeps its first
    ``m`` pieces, with the largest ``m`` that fits, so each word keeps its first piece (the one the parser reads);
    only a sentence with more words than positions loses pieces of its last words, which then point to the last
    kept piece. ``labels`` is the label vocabulary (:func:`mlmc.data.label_vocab`); the batch keeps the gold
    ``sentences`` and ``label_names`` so that :func:`evaluate` can score and return predictions.
    """
    if not sentences:
        raise ValueError("parameter 'sentences' must hold at least one sentence")
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("parameter 'tokenizer' must be a fast tokenizer (it needs word_ids())")
    label2id = {lab: i for i, lab in enumerate(labels)}
    unknown = sorted({d for s in sentences for d in s.deprels} - set(label2id))
    if unknown:
        raise ValueError(f"parameter 'labels' lacks deprel(s) {unknown}; build it with label_vocab over all treebanks")
    pre, post = _special_frame(tokenizer)
    limit = max_pieces(tokenizer, max_length)
    budget = None if limit is None else limit - len(pre) - len(post)
    if budget is not None and budget < 1:
        raise ValueError(f"parameter 'max_length' must leave room for one piece besides special tokens, got {limit}")
    enc = tokenizer([list(s.words) for s in sentences], is_split_into_words=True, add_special_tokens=False)
    rows, firsts = [], []
    for b, sent in enumerate(sentences):
        pieces: list[list[int]] = [[] for _ in range(len(sent))]
        for pos, w in enumerate(enc.word_ids(b)):
            if w is not None:
                pieces[w].append(enc["input_ids"][b][pos])
        if budget is not None and sum(map(len, pieces)) > budget:
            cap = _piece_cap([len(p) for p in pieces], budget)
            pieces = [p[:cap] for p in pieces]
            used = 0
            for w, p in enumerate(pieces):  # more words than positions: the last words lose their pieces
                pieces[w] = p[: max(0, budget - used)]
                used += len(pieces[w])
        ids, first, last = list(pre), [], 0
        for p in pieces:
            if p:
                last = len(ids)
            first.append(last)
            ids += p
        rows.append(ids + post)
        firsts.append(first)
    width = max(map(len, rows))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention = torch.zeros(len(rows), width, dtype=torch.long)
    special = torch.ones(len(rows), width, dtype=torch.long)
    n_words = max(len(s) for s in sentences)
    word_index = torch.zeros(len(sentences), n_words, dtype=torch.long)
    word_mask = torch.zeros(len(sentences), n_words, dtype=torch.bool)
    heads = torch.zeros(len(sentences), n_words, dtype=torch.long)
    label_ids = torch.zeros(len(sentences), n_words, dtype=torch.long)
    for b, (sent, ids, first) in enumerate(zip(sentences, rows, firsts, strict=True)):
        input_ids[b, : len(ids)] = torch.tensor(ids)
        attention[b, : len(ids)] = 1
        special[b, len(pre) : len(ids) - len(post)] = 0
        n = len(sent)
        word_index[b, :n] = torch.tensor(first, dtype=torch.long)
        word_mask[b, :n] = True
        heads[b, :n] = torch.tensor(sent.heads)
        label_ids[b, :n] = torch.tensor([label2id[d] for d in sent.deprels])
    return {
        "input_ids": input_ids,
        "attention_mask": attention,
        "special_tokens_mask": special,
        "word_index": word_index,
        "word_mask": word_mask,
        "heads": heads,
        "labels": label_ids,
        "sentences": list(sentences),
        "label_names": list(labels),
    }


def _find_cycle(heads: np.ndarray) -> list[int] | None:
    state = np.zeros(len(heads), dtype=np.int8)  # 0 new, 1 on the current path, 2 done
    for start in range(1, len(heads)):
        path, v = [], start
        while v != -1 and state[v] == 0:
            state[v] = 1
            path.append(v)
            v = int(heads[v])
        if v != -1 and state[v] == 1:
            return path[path.index(v) :]
        state[path] = 2
    return None


def _max_arborescence(s: np.ndarray) -> np.ndarray:
    """Chu-Liu/Edmonds on ``s[dep, head]`` (node 0 = root, no head); recursive cycle contraction."""
    heads = s.argmax(axis=1)
    heads[0] = -1
    cycle = _find_cycle(heads)
    if cycle is None:
        return heads
    cyc = np.asarray(cycle)
    rest = np.flatnonzero(~np.isin(np.arange(len(s)), cyc))  # node 0 first
    m = len(rest)
    sub = np.full((m + 1, m + 1), -np.inf)
    sub[:m, :m] = s[np.ix_(rest, rest)]
    gain = s[np.ix_(cyc, rest)] - s[cyc, heads[cyc]][:, None]  # entering v in the cycle from u outside
    enter = gain.argmax(axis=0)
    sub[m, :m] = gain[enter, np.arange(m)]
    out = s[np.ix_(rest, cyc)]  # w outside headed by v in the cycle
    leave = out.argmax(axis=1)
    sub[:m, m] = out[np.arange(m), leave]
    sub[0, :] = -np.inf
    np.fill_diagonal(sub, -np.inf)
    sub_heads = _max_arborescence(sub)
    result = heads.copy()
    for i in range(1, m):
        h = sub_heads[i]
        result[rest[i]] = cyc[leave[i]] if h == m else rest[h]
    u = sub_heads[m]
    result[cyc[enter[u]]] = rest[u]
    return result


def chu_liu_edmonds(scores: np.ndarray) -> np.ndarray:
    """Maximum spanning tree with exactly one root child (Ch. 02 evaluation decoding).

    ``scores[i, j]`` is the score of token ``j`` heading token ``i`` for an ``(n+1) x (n+1)`` matrix whose index 0 is
    ROOT; row 0 and the diagonal are ignored and ``-inf`` marks a forbidden arc. Returns the ``n`` heads of words
    ``1..n`` (0 = root). The single-root constraint is exact: every root arc is lowered by a constant larger than any
    difference between two trees' scores, so the best tree has as few root children as possible (one) and, among
    those, the highest original score.
    """
    s = np.array(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] != s.shape[1] or s.shape[0] < 2:
        raise ValueError(f"parameter 'scores' must be a square (n+1)x(n+1) matrix with n >= 1, got shape {s.shape}")
    np.fill_diagonal(s, -np.inf)
    s[0, :] = -np.inf
    words = s[1:]
    if np.isnan(words).any() or np.isposinf(words).any():
        raise ValueError("parameter 'scores' must not contain NaN or +inf")
    if not np.isfinite(words).any(axis=1).all():
        raise ValueError("parameter 'scores' needs at least one finite head score for every word")
    finite = words[np.isfinite(words)]
    s[1:, 0] -= 1.0 + len(words) * (finite.max() - finite.min())
    return _max_arborescence(s)[1:]


def _pairs(sent: Sentence | Sequence[tuple[int, str]]) -> list[tuple[int, str]]:
    if isinstance(sent, Sentence):
        return list(zip(sent.heads, sent.deprels, strict=True))
    return [(int(h), str(d)) for h, d in sent]


def attachment_scores(
    gold: Sequence[Sentence | Sequence[tuple[int, str]]],
    pred: Sequence[Sentence | Sequence[tuple[int, str]]],
    strip_subtypes: bool = True,
) -> dict[str, float]:
    """UAS and LAS (fractions in [0, 1]) over all syntactic words, punctuation included (CoNLL 2018 definition).

    Sentences are :class:`Sentence` objects or lists of ``(head, deprel)`` per word, over the same words in gold and
    prediction. With ``strip_subtypes`` (the official script's behaviour) ``nsubj:pass`` and ``nsubj`` are equal.
    """
    if len(gold) != len(pred):
        raise ValueError(
            f"parameters 'gold' and 'pred' must have the same number of sentences: {len(gold)} vs {len(pred)}"
        )
    n = uas = las = 0
    for k, (g_sent, p_sent) in enumerate(zip(gold, pred, strict=True)):
        g_pairs, p_pairs = _pairs(g_sent), _pairs(p_sent)
        if len(g_pairs) != len(p_pairs):
            raise ValueError(f"sentence {k}: gold has {len(g_pairs)} words, prediction {len(p_pairs)}")
        for (gh, gd), (ph, pd) in zip(g_pairs, p_pairs, strict=True):
            if strip_subtypes:
                gd, pd = gd.split(":")[0], pd.split(":")[0]
            n += 1
            uas += gh == ph
            las += gh == ph and gd == pd
    if n == 0:
        raise ValueError("parameters 'gold' and 'pred' contain no words")
    return {"UAS": uas / n, "LAS": las / n, "n_words": n}


def evaluate(
    parser: BiaffineParser,
    batches: Iterable[Mapping[str, Any]],
    gate: Any = None,
    mask: Any = None,
    params: Mapping[str, Tensor] | None = None,
    strip_subtypes: bool = True,
) -> dict[str, Any]:
    """MST-decode every batch in eval mode and score it (Ch. 02 LAS tables).

    ``mask`` is applied through ``gate`` (see :func:`mlmc.metalearn.gate_scope`); ``params`` (e.g. the adapted
    weights from :func:`mlmc.metalearn.inner_adapt`) replace the parser's parameters of the same names. Returns
    ``UAS``, ``LAS`` (fractions), ``loss`` (word-weighted mean), ``n_words`` and ``predictions`` (sentences with
    predicted heads and deprels, in batch order).
    """
    was_training = parser.training
    parser.eval()
    gold: list[Sentence] = []
    predictions: list[Sentence] = []
    loss_sum = 0.0
    try:
        with torch.no_grad(), gate_scope(gate, mask):
            for batch in batches:
                if params is None:
                    out = parser(batch, decode="mst")
                else:
                    out = torch.func.functional_call(parser, dict(params), (batch,), {"decode": "mst"})
                names = batch["label_names"]
                for b, sent in enumerate(batch["sentences"]):
                    n = len(sent)
                    heads = out.heads[b, :n].tolist()
                    deprels = [names[i] for i in out.labels[b, :n].tolist()]
                    predictions.append(Sentence(list(sent.words), heads, deprels, list(sent.upos), dict(sent.metadata)))
                    gold.append(sent)
                loss_sum += float(out.loss) * int(batch["word_mask"].sum())
    finally:
        parser.train(was_training)
    scores = attachment_scores(gold, predictions, strip_subtypes=strip_subtypes)
    return {**scores, "loss": loss_sum / scores["n_words"], "predictions": predictions}
