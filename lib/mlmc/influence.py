"""Per-example gradients and TracIn influence over fine-tuning checkpoints (chapters 01, 03 and 05).

The influence of a training example ``z`` on a test example ``t`` at checkpoint ``e`` is a (normalised) inner
product of their loss gradients ``g_e(z)`` and ``g_e(t)``; TracIn sums it over checkpoints (Pruthi et al., 2020).
Chapter 01 uses the thesis's variant, a plain sum of cosines (Choenni 2025, eq. 2.4 with the dot product replaced
by a cosine); ``normalize="none"`` with ``lr_weights`` is captum's ``TracInCP``.

Data format (``train``, ``test``, ``data`` arguments): either

- a table (``datasets.Dataset``, ``pandas.DataFrame`` or a mapping of columns) with an ``input_ids`` column and a
  ``label`` (or ``labels``) column, e.g. a tokenized task split; an ``attention_mask`` column, if present, drops
  the masked (padding) positions, or
- a sequence of ``(inputs, label)`` pairs, ``inputs`` being a 1-D list or tensor (token ids for HF models; any
  tensor the model accepts after ``unsqueeze(0)``, e.g. float features for a small ``nn.Module``).

A model is called as ``model(inputs.unsqueeze(0))``; its output is a logits tensor, an object with ``.logits``
(HF) or a tuple whose first item holds the logits. The default loss is cross-entropy with the example's label.

How gradients are computed: in eval mode (dropout off). By default (``method="auto"``), where it applies, from
forward hooks and ONE batched backward pass per bucket (``method="hooks"``): a Linear layer's per-example
gradient is the sum over positions of the outer product of its output gradient and its input, so it is kept as
these two factors, from which it is materialised, projected (Kronecker, without forming it) or dotted exactly
("ghost" dot products); biases and LayerNorm use closed forms, other small modules ``torch.func.vjp`` of the
module alone, and parameters that cannot be split by example (T5's relative attention bias) the vmap path.
Otherwise (custom ``loss_fn``, unsupported modules), with ``torch.func.vmap(grad(...))`` over buckets of
examples of equal length, which needs no attention mask (HF's own mask logic cannot be vmapped). For XLM-R,
RoBERTa and BERT, buckets span lengths up to a multiple of ``pad_multiple`` and are padded with a 4-D additive key
mask, which is exact and gives fewer, larger vmap calls. A per-example autograd loop is the fallback. The gradient
of the input word-embedding matrix is kept sparse (the gradient at the embedding output, per position), so large
vocabularies cost neither memory nor time; dot products with it are exact.
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vjp, vmap
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModelForSequenceClassification

from mlmc.errors import check_choice, check_int, check_positive
from mlmc.models import load, quiet_transformers

NORMALIZE = ("cosine", "train_only", "none")
METHODS = ("auto", "hooks", "vmap", "loop")
PARAM_PRESETS = ("all", "no_word_embeddings")
PROJECTIONS = ("kronecker", "dense")
DEVICES = ("cpu", "cuda")
DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

Checkpoint = str | Path | nn.Module
LossFn = Callable[[Any, Tensor], Tensor]


# ----------------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Examples:
    """Examples in the internal form: one 1-D input tensor per example (no padding) and a label tensor."""

    inputs: list[Tensor]
    labels: Tensor

    def __len__(self) -> int:
        return len(self.inputs)


def _columns(data: Any) -> bool:
    return isinstance(data, Mapping) or hasattr(data, "column_names") or hasattr(data, "columns")


def _column_names(data: Any) -> list[str]:
    if isinstance(data, Mapping):
        return list(data.keys())
    if hasattr(data, "column_names"):
        return list(data.column_names)
    return list(data.columns)


def as_examples(data: Any, name: str = "data") -> Examples:
    """Convert a tokenized table or a sequence of ``(inputs, label)`` pairs into :class:`Examples` (see module doc)."""
    if isinstance(data, Examples):
        return data
    if _columns(data):
        cols = _column_names(data)
        label_col = "label" if "label" in cols else "labels" if "labels" in cols else None
        if "input_ids" not in cols or label_col is None:
            raise ValueError(f"parameter {name!r} needs columns 'input_ids' and 'label' (or 'labels'), got {cols}")
        ids, labels = list(data["input_ids"]), list(data[label_col])
        masks = list(data["attention_mask"]) if "attention_mask" in cols else [None] * len(ids)
        inputs = []
        for x, m in zip(ids, masks, strict=True):
            x = torch.as_tensor(x)
            inputs.append(x if m is None else x[torch.as_tensor(m).bool()])
    else:
        try:
            pairs = list(data)
        except TypeError:
            raise ValueError(f"parameter {name!r} must be a table or a list of (inputs, label) pairs") from None
        if any(not isinstance(p, tuple | list) or len(p) != 2 for p in pairs):
            raise ValueError(f"parameter {name!r} must be a list of (inputs, label) pairs")
        inputs = [torch.as_tensor(x) for x, _ in pairs]
        labels = [y for _, y in pairs]
    if not inputs:
        raise ValueError(f"parameter {name!r} is empty: it needs at least one example")
    bad = [i for i, x in enumerate(inputs) if x.ndim != 1 or x.numel() == 0]
    if bad:
        raise ValueError(f"parameter {name!r}: example(s) {bad[:5]} are not non-empty 1-D inputs")
    label_t = torch.as_tensor(np.asarray([int(y) for y in labels]), dtype=torch.long)
    return Examples(inputs, label_t)


def _buckets(ex: Examples, batch_size: int, multiple: int | None) -> list[Tensor]:
    """Index batches of examples of equal length, or of equal length rounded up to ``multiple`` (then padded);
    deterministic: by length, then by index."""
    groups: dict[int, list[int]] = {}
    for i, x in enumerate(ex.inputs):
        n = len(x)
        groups.setdefault(n if multiple is None else -(-n // multiple) * multiple, []).append(i)
    out = []
    for length in sorted(groups):
        idx = groups[length]
        out += [torch.tensor(idx[s : s + batch_size]) for s in range(0, len(idx), batch_size)]
    return out


# ----------------------------------------------------------------------------------------------- parameters


def select_params(model: nn.Module, spec: str | Sequence[str] = "all") -> dict[str, nn.Parameter]:
    """Parameters whose gradients enter the influence scores, by name in ``named_parameters`` order.

    ``spec``: ``"all"``; ``"no_word_embeddings"`` (all but the input word-embedding matrix, whose per-example
    gradient is sparse and rewards shared subwords directly, spec §2.2); or a list of glob patterns on parameter
    names (e.g. ``["classifier.*", "*.layer.1.*"]``), each of which must match at least one name.
    """
    named = dict(model.named_parameters())
    if isinstance(spec, str):
        check_choice("params", spec, PARAM_PRESETS)
        if spec == "all":
            return named
        if not hasattr(model, "get_input_embeddings"):
            raise ValueError("parameter 'params'='no_word_embeddings' needs a model with get_input_embeddings()")
        emb = model.get_input_embeddings().weight
        return {k: v for k, v in named.items() if v is not emb}
    patterns = list(spec)
    if not patterns or not all(isinstance(p, str) for p in patterns):
        raise ValueError(f"parameter 'params' must be one of {list(PARAM_PRESETS)} or a non-empty list of globs")
    for p in patterns:
        if not any(fnmatch.fnmatchcase(k, p) for k in named):
            raise ValueError(f"parameter 'params': pattern {p!r} matches no parameter name, e.g. {list(named)[:4]}")
    return {k: v for k, v in named.items() if any(fnmatch.fnmatchcase(k, p) for p in patterns)}


# ----------------------------------------------------------------------------------------------- projection


class GaussianProjector:
    """Gaussian random projection of per-example gradients to ``dim`` coordinates (chapters 01, 05; spec §2.2
    mode ``projected``). ``E[<Pg1, Pg2>] = <g1, g2>``, so projected TracIn dot products are unbiased.

    ``structure="kronecker"`` (default; feasible for XLM-R base): every selected parameter gets its own
    independent projection to R^dim and these are summed, i.e. the column blocks of one projection of the
    concatenated gradient. A matrix parameter W in R^{m x n} (Linear weights, the word embeddings; higher-order
    tensors as first axis x the rest) is projected as ``P1 dW P2^T`` with P1 in R^{a x m}, P2 in R^{b x n},
    entries N(0, 1/a) and N(0, 1/b), ``a * b = dim`` (a: the largest divisor of dim <= sqrt(dim)); this is the
    Kronecker matrix ``P1 (x) P2`` of the spec's factorised projection ``G1 grad_y x^T G2^T``. The sparse
    word-embedding gradient is projected without being made dense, and a Linear weight's gradient is projected from
    its factors (the layer's inputs and output gradients) without being formed. The vector parameters (biases,
    LayerNorm) are concatenated in parameter order, zero-padded to an r x c matrix (r = ceil(sqrt(total))) and
    projected the same way. Only O(dim * (m + n)) random numbers per matrix, drawn once and cached, so the
    projector's memory stays far below the model's. Its variance is larger than a dense projection's at the same
    ``dim`` (a rank-1 gradient is estimated with the relative error of an ``a``-, not a ``dim``-dimensional
    projection): use ``"dense"`` where ``p * dim`` random numbers fit, ``"kronecker"`` with a larger ``dim`` beyond.

    ``structure="dense"``: one matrix G in R^{p x dim}, entries N(0, 1/dim), over the flattened gradient, drawn in
    row blocks of ``chunk`` coordinates (memory O(chunk * dim)); blocks beyond ``cache_entries`` are drawn again on
    every call (p * dim random numbers per batch): small models only.

    Matrices are drawn on the CPU in float64 from seeds derived from ``(seed, parameter, block)``, then moved to
    the gradients' device and dtype, so the projection depends only on ``(dim, seed, structure, chunk)`` and the
    parameter selection: the same for train and test gradients, every checkpoint, batch size and device. Called on
    a plain ``[n, p]`` tensor, the projector treats it as one flat (dense) block.
    """

    def __init__(
        self, dim: int, seed: int = 0, chunk: int = 8192, cache_entries: int = 2**26, structure: str = "kronecker"
    ) -> None:
        self.dim = check_int("dim", dim, 1)
        self.seed = check_int("seed", seed, 0)
        self.chunk = check_int("chunk", chunk, 1)
        self.cache_entries = check_int("cache_entries", cache_entries, 0)
        self.structure = check_choice("structure", structure, PROJECTIONS)
        self.factors = next((a, dim // a) for a in range(int(dim**0.5), 0, -1) if dim % a == 0)
        self._cache: dict[tuple, Tensor] = {}

    def _gaussian(self, key: tuple[int, ...], rows: int, cols: int, scale: int, like: Tensor, cache: bool) -> Tensor:
        """A ``[rows, cols]`` matrix with entries N(0, 1/scale), seeded by ``(seed, *key)``, on ``like``'s device."""
        ck = (key, rows, cols, like.dtype, like.device)
        if ck in self._cache:
            return self._cache[ck]
        state = np.random.SeedSequence([self.seed, *key]).generate_state(2, dtype=np.uint32)
        gen = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        block = (torch.randn(rows, cols, generator=gen, dtype=torch.float64) / scale**0.5).to(like.device, like.dtype)
        if cache:
            self._cache[ck] = block
        return block

    def _flat(self, g: Tensor, prefix: tuple[int, ...], cache_all: bool) -> Tensor:
        out = torch.zeros(g.shape[0], self.dim, dtype=g.dtype, device=g.device)
        for b, start in enumerate(range(0, g.shape[1], self.chunk)):
            part = g[:, start : start + self.chunk]
            keep = cache_all or (b + 1) * self.chunk * self.dim <= self.cache_entries
            out += part @ self._gaussian((*prefix, b), part.shape[1], self.dim, self.dim, part, keep)
        return out

    def _factors(self, k: int, m: int, n: int, like: Tensor) -> tuple[Tensor, Tensor]:
        a, b = self.factors
        return self._gaussian((1, k, 0), a, m, a, like, True), self._gaussian((1, k, 1), b, n, b, like, True)

    def __call__(self, g: Tensor) -> Tensor:
        """Project rows of ``g`` ([n, p]) to [n, dim] with the dense matrix G."""
        return self._flat(g, (), False)

    def project(self, g: _Grads | _Capture, shapes: Sequence[tuple[int, ...]]) -> Tensor:
        """Project one batch of per-example gradients (parameter ``shapes`` in :func:`select_params` order):
        materialised (:class:`_Grads`) or as layer factors (:class:`_Capture`, Linear weights projected from their
        input and output-gradient factors, LoGra-style, without forming the per-example gradient)."""
        if self.structure == "dense":
            return self(g.to_dense())
        n, parts = len(g), g.parts(shapes)
        out = torch.zeros(n, self.dim, dtype=g.dtype, device=g.device)
        vectors = [data for kind, _, data in parts if kind == "vector"]
        if vectors:  # all vector parameters as one zero-padded r x c matrix, one Kronecker projection
            flat = torch.cat(vectors, dim=1)
            r = int(np.ceil(flat.shape[1] ** 0.5))
            c = -(-flat.shape[1] // r)
            flat = nn.functional.pad(flat, (0, r * c - flat.shape[1])).reshape(n, r, c)
            a, b = self.factors
            p1, p2 = self._gaussian((3, 0), a, r, a, flat, True), self._gaussian((3, 1), b, c, b, flat, True)
            out += (p1 @ flat @ p2.T).reshape(n, -1)
        for kind, k, data in parts:
            if kind == "matrix":
                p1, p2 = self._factors(k, shapes[k][0], data.shape[1] // shapes[k][0], data)
                out += (p1 @ data.reshape(n, p1.shape[1], p2.shape[1]) @ p2.T).reshape(n, -1)
            elif kind == "factors":  # P1 (sum_l g_l a_l^T) P2^T = sum_l (P1 g_l)(P2 a_l)^T
                for grad_out, inp in data:
                    p1, p2 = self._factors(k, grad_out.shape[2], inp.shape[2], inp)
                    out += torch.bmm((grad_out @ p1.T).transpose(1, 2), inp @ p2.T).reshape(n, -1)
            elif kind == "sparse":  # P1 dE P2^T = sum over positions of P1[:, id] (P2 h)^T; ids -1 drop out
                ids, h, vocab = data
                p1, p2 = self._factors(k, vocab, h.shape[2], h)
                cols = p1.T[ids.clamp_min(0)] * (ids >= 0).unsqueeze(2).to(h.dtype)
                out += torch.bmm(cols.transpose(1, 2), h @ p2.T).reshape(n, -1)
        return out


# ------------------------------------------------------------------------------------- per-example gradients


def _cross_entropy(output: Any, labels: Tensor) -> Tensor:
    logits = getattr(output, "logits", output)
    if isinstance(logits, tuple):
        logits = logits[0]
    return nn.functional.cross_entropy(logits, labels)


@contextlib.contextmanager
def _grad_mode(model: nn.Module, vectorised: bool) -> Iterator[None]:
    """Eval mode (dropout off) and, for vmap on an HF model, eager attention: SDPA has no vmap batching rule on
    CPU (torch falls back to a per-example loop), eager attention is the same computation and batches."""
    was_training = model.training
    attn = getattr(getattr(model, "config", None), "_attn_implementation", None)
    switch = vectorised and attn == "sdpa" and hasattr(model, "set_attn_implementation")
    model.eval()
    if switch:
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.train(was_training)
        if switch:
            model.set_attn_implementation(attn)


@dataclass
class _Grads:
    """Per-example gradients of a batch: ``dense`` blocks ``[B, p_k]`` in parameter order, and, when the input
    word embeddings are selected, their gradient kept sparse: the gradient ``h [B, L, d]`` at the embedding
    output and the token ``ids [B, L]`` (-1 = ignore). Row ``v`` of the dense embedding gradient is the sum of
    ``h`` over the positions holding token ``v``, so dot products only need pairs of positions with equal ids."""

    dense: list[Tensor]
    ids: Tensor | None = None
    h: Tensor | None = None
    emb_slot: int = 0
    vocab: int = 0
    _vocab_map: tuple[Tensor, Tensor] | None = field(default=None, init=False, repr=False)

    def __len__(self) -> int:
        return len(self.dense[0]) if self.dense else len(self.h)

    @staticmethod
    def cat(parts: list[_Grads]) -> _Grads:
        """Stack batches (ids and ``h`` padded to the longest sequence)."""
        first = parts[0]
        dense = [torch.cat(col) for col in zip(*(p.dense for p in parts), strict=True)]
        if first.h is None:
            return _Grads(dense)
        length = max(p.ids.shape[1] for p in parts)
        ids = torch.cat([nn.functional.pad(p.ids, (0, length - p.ids.shape[1]), value=-1) for p in parts])
        h = torch.cat([nn.functional.pad(p.h, (0, 0, 0, length - p.h.shape[1])) for p in parts])
        return _Grads(dense, ids, h, first.emb_slot, first.vocab)

    def sq_norms(self) -> Tensor:
        sq = torch.zeros(len(self), dtype=self.dtype, device=self.device)
        for b in self.dense:
            sq += torch.linalg.vector_norm(b, dim=1).square()
        if self.h is not None:
            same = (self.ids[:, :, None] == self.ids[:, None, :]) & (self.ids >= 0)[:, :, None]
            sq += ((self.h @ self.h.transpose(1, 2)) * same).sum((1, 2))
        return sq

    def dots(self, other: _Grads) -> Tensor:
        """``[len(self), len(other)]`` inner products of the full flattened gradients. The embedding part only
        needs the rows of tokens that occur in ``self``: ``other`` is compacted onto ``self``'s vocabulary."""
        out = torch.zeros(len(self), len(other), dtype=self.dtype, device=self.device)
        for a, b in zip(self.dense, other.dense, strict=True):
            out.addmm_(a, b.T)
        if self.h is not None:  # other's positions as a sparse [len(other), rows * d] matrix times mine^T
            lookup, mine = self._compact()
            rows = other._rows(lookup)
            keep = rows >= 0
            d = self.h.shape[2]
            example = torch.arange(len(other), device=rows.device)[:, None].expand_as(rows)[keep]
            cols = (rows[keep] * d)[:, None] + torch.arange(d, device=rows.device)
            index = torch.stack([example[:, None].expand_as(cols).reshape(-1), cols.reshape(-1)])
            size = (len(other), mine.shape[1])
            theirs = torch.sparse_coo_tensor(index, other.h[keep].reshape(-1), size, check_invariants=False)
            out += torch.sparse.mm(theirs, mine.T).T
        return out

    def to_dense(self) -> Tensor:
        """The full flattened gradients ``[B, p]`` in :func:`select_params` order."""
        if self.h is None:
            return torch.cat(self.dense, dim=1)
        width = sum(b.shape[1] for b in self.dense) + self.vocab * self.h.shape[2]
        return self.write_rows(torch.empty(len(self), width, dtype=self.dtype, device=self.device))

    def write_rows(self, out: Tensor) -> Tensor:
        """Write :meth:`to_dense` into ``out`` (``[B, p]``, e.g. a view of rows of a larger result) and return it:
        one pass over the output, the word-embedding rows scattered in place."""
        blocks: list[Tensor | None] = list(self.dense)
        if self.h is not None:
            blocks.insert(self.emb_slot, None)
        start = 0
        for b in blocks:
            if b is not None:
                out[:, start : start + b.shape[1]] = b
                start += b.shape[1]
                continue
            d = self.h.shape[2]
            _scatter_into(out[:, start : start + self.vocab * d].unflatten(1, (self.vocab, d)), self.h, self.ids)
            start += self.vocab * d
        return out

    def _rows(self, lookup: Tensor) -> Tensor:
        return lookup[self.ids.clamp_min(0)].masked_fill(self.ids < 0, -1)

    def _compact(self) -> tuple[Tensor, Tensor]:
        """Map token id -> row of this set's own vocabulary (-1: absent), and the embedding gradients on those
        rows, ``[n, rows * d]`` (cached: the test set is compared with every training batch)."""
        if self._vocab_map is None:
            present = self.ids[self.ids >= 0].unique()
            lookup = torch.full((self.vocab,), -1, dtype=torch.long, device=self.ids.device)
            lookup[present] = torch.arange(len(present), device=self.ids.device)
            self._vocab_map = (lookup, _scatter_rows(self.h, self._rows(lookup), len(present)))
        return self._vocab_map

    def parts(self, shapes: Sequence[tuple[int, ...]]) -> list[tuple[str, int, Any]]:
        """``(kind, slot, data)`` per selected parameter for the projector: ``"vector"`` / ``"matrix"`` blocks
        ``[B, p_k]``, and the word embeddings as ``"sparse"`` ``(ids, h, vocab)``."""
        slots = [k for k in range(len(shapes)) if self.h is None or k != self.emb_slot]
        out = [("vector" if len(shapes[k]) < 2 else "matrix", k, b) for k, b in zip(slots, self.dense, strict=True)]
        if self.h is not None:
            out.insert(self.emb_slot, ("sparse", self.emb_slot, (self.ids, self.h, self.vocab)))
        return out

    @property
    def dtype(self) -> torch.dtype:
        return (self.dense[0] if self.dense else self.h).dtype

    @property
    def device(self) -> torch.device:
        return (self.dense[0] if self.dense else self.h).device


def _scatter_rows(h: Tensor, rows: Tensor, n_rows: int) -> Tensor:
    """Sum ``h[b, l]`` ([B, L, d]) into row ``rows[b, l]`` of a zero ``[B, n_rows, d]`` tensor (rows < 0 are
    dropped); returned flattened to ``[B, n_rows * d]``."""
    out = torch.empty(h.shape[0], n_rows, h.shape[2], dtype=h.dtype, device=h.device)
    return _scatter_into(out, h, rows).reshape(h.shape[0], -1)


def _scatter_into(out: Tensor, h: Tensor, rows: Tensor) -> Tensor:
    """Zero ``out`` ([B, n_rows, d], may be a view) and sum ``h[b, l]`` into its row ``rows[b, l]`` (rows < 0
    dropped)."""
    n, length, _ = h.shape
    out.zero_()
    keep = rows >= 0
    example = torch.arange(n, device=h.device)[:, None].expand(n, length)
    out.index_put_((example[keep], rows[keep]), h[keep], accumulate=True)
    return out


# Bidirectional HF encoders for which right padding with a 4-D additive key mask is exact: positions of real
# tokens do not change and no real token attends to a pad. HF passes a 4-D mask through as is, without the
# data-dependent mask logic that vmap cannot trace.
_PADDABLE = ("xlm-roberta", "roberta", "bert")


def _sparse_embedding(model: nn.Module, selected: dict[str, nn.Parameter]) -> nn.Embedding | None:
    """The input embedding module if its weight is selected and used only as a lookup (not tied to an output)."""
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if not isinstance(emb, nn.Embedding) or not any(p is emb.weight for p in selected.values()):
        return None
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        return None  # shared by encoder and decoder (T5): two lookups per forward pass, with different ids
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return None if out is not None and getattr(out, "weight", None) is emb.weight else emb


class _GradComputer:
    """Per-example gradients of one model for one parameter selection, batch by batch, as :class:`_Grads`."""

    def __init__(
        self, model: nn.Module, params: str | Sequence[str], loss_fn: LossFn | None, method: str, pad_multiple: int
    ) -> None:
        self.model = model
        selected = select_params(model, params)
        self.emb = _sparse_embedding(model, selected)
        names = list(selected)
        self.shapes = [tuple(v.shape) for v in selected.values()]
        self.emb_slot = next(
            (i for i, k in enumerate(names) if self.emb is not None and selected[k] is self.emb.weight), 0
        )
        dense = {k: v for k, v in selected.items() if self.emb is None or v is not self.emb.weight}
        self.sel = {k: v.detach() for k, v in dense.items()}
        rest = {k: v.detach() for k, v in model.named_parameters() if k not in self.sel}
        self.rest = rest | dict(model.named_buffers())
        self.loss_fn = loss_fn or _cross_entropy
        self.method = method
        cfg = getattr(model, "config", None)
        paddable = getattr(cfg, "model_type", None) in _PADDABLE and not getattr(cfg, "is_decoder", True)
        self.pad_id = cfg.pad_token_id if paddable and pad_multiple > 1 and method != "loop" else None
        self.multiple = pad_multiple if self.pad_id is not None else None
        self.dtype = next(iter(selected.values())).dtype
        self.device = next(iter(selected.values())).device

    def _loss(self, sel: dict[str, Tensor], delta: Tensor | None, x: Tensor, y: Tensor, mask: Tensor | None) -> Tensor:
        kwargs = {} if mask is None else {"attention_mask": mask.unsqueeze(0)}
        hook = None if delta is None else self.emb.register_forward_hook(lambda _m, _i, out: out + delta.unsqueeze(0))
        try:
            out = functional_call(self.model, (sel, self.rest), (x.unsqueeze(0),), kwargs)
        finally:
            if hook is not None:
                hook.remove()
        return self.loss_fn(out, y.unsqueeze(0))

    def _grads(self, g_sel: dict[str, Tensor], g_delta: Tensor | None, ids: Tensor) -> _Grads:
        dense = [_up(g_sel[k].reshape(len(ids), -1)) for k in self.sel]
        if self.emb is None:
            return _Grads(dense)
        if self.emb.padding_idx is not None:  # the lookup gives no gradient to the padding row
            ids = ids.masked_fill(ids == self.emb.padding_idx, -1)
        return _Grads(dense, ids, _up(g_delta), self.emb_slot, self.emb.num_embeddings)

    def _vmap(self, xs: list[Tensor], y: Tensor) -> _Grads:
        length = max(len(x) for x in xs)
        dev = self.device
        keep = torch.arange(length, device=dev)[None, :] < torch.tensor([len(x) for x in xs], device=dev)[:, None]
        mask = None
        if not keep.all():  # only padded buckets (self.pad_id set) hold unequal lengths
            mask = torch.zeros(len(xs), 1, 1, length, dtype=self.dtype, device=dev)
            mask.masked_fill_(~keep[:, None, None, :], torch.finfo(self.dtype).min)
            xs = [nn.functional.pad(x, (0, length - len(x)), value=self.pad_id) for x in xs]
        x = torch.stack(xs)
        delta = None
        if self.emb is not None:
            delta = torch.zeros(len(xs), length, self.emb.embedding_dim, dtype=self.dtype, device=dev)
        fn = grad(self._loss, argnums=(0, 1) if self.emb is not None else 0)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*There is a performance drop.*")
            out = vmap(fn, in_dims=(None, None if self.emb is None else 0, 0, 0, None if mask is None else 0))(
                self.sel, delta, x, y, mask
            )
        g_sel, g_delta = out if self.emb is not None else (out, None)
        return self._grads(g_sel, g_delta, x.masked_fill(~keep, -1))

    def _loop(self, xs: list[Tensor], y: Tensor) -> _Grads:
        rows, deltas = [], []
        for xi, yi in zip(xs, y, strict=True):
            sel = {k: v.clone().requires_grad_() for k, v in self.sel.items()}
            wrt = list(sel.values())
            delta = None
            if self.emb is not None:
                delta = torch.zeros(
                    len(xi), self.emb.embedding_dim, dtype=self.dtype, device=xi.device, requires_grad=True
                )
                wrt.append(delta)
            gs = torch.autograd.grad(self._loss(sel, delta, xi, yi, None), wrt, allow_unused=True)
            gs = [torch.zeros_like(p) if g is None else g for p, g in zip(wrt, gs, strict=True)]
            if self.emb is not None:
                deltas.append(gs.pop())
            rows.append(gs)
        g_sel = {k: torch.stack(col) for k, col in zip(self.sel, zip(*rows, strict=True), strict=True)}
        ids = nn.utils.rnn.pad_sequence(xs, batch_first=True, padding_value=-1)
        g_delta = nn.utils.rnn.pad_sequence(deltas, batch_first=True) if deltas else None
        return self._grads(g_sel, g_delta, ids)

    def __call__(self, xs: list[Tensor], y: Tensor) -> _Grads:
        xs, y = [x.to(self.device) for x in xs], y.to(self.device)
        if self.method == "loop":
            return self._loop(xs, y)
        if self.method == "vmap":
            return self._vmap(xs, y)
        try:
            return self._vmap(xs, y)
        except (RuntimeError, NotImplementedError) as err:
            warnings.warn(f"vmap per-example gradients failed ({err}); using the autograd loop", stacklevel=3)
            self.method, self.pad_id, self.multiple = "loop", None, None
            return self._loop(xs, y)


class _Unsupported(Exception):
    """The hook (factorised) path does not apply to this model, loss or parameter selection."""


# HF families whose right-padded batches with a 2-D attention mask give every real token the computation of its
# unpadded sequence (positions, attention, pooling), checked in tests/test_influence.py against unpadded gradients.
_HOOK_PADDABLE = (*_PADDABLE, "t5", "mt5", "llama")
# Lookups computed once per batch (not per example): their gradients cannot be split by example from hooks.
_SHARED_LOOKUPS = ("relative_attention_bias",)


@dataclass
class _Capture:
    """Per-example gradients of one batch from one batched backward pass, per selected parameter (in
    :func:`select_params` order) as ``("dense", [B, p_k])``; a Linear weight as ``("factors", [(g, a), ...])``,
    the output gradients ``g [B, L, out]`` and inputs ``a [B, L, in]`` of each call of the layer (the gradient is
    ``sum_l g_l a_l^T``); or an embedding as ``("sparse", (ids [B, L], h [B, L, d], vocab))``. ``emb_slot``: the
    slot kept sparse when materialised as :class:`_Grads` (the input word embeddings), or None."""

    slots: list[tuple[str, Any]]
    emb_slot: int | None
    n: int

    def __len__(self) -> int:
        return self.n

    @property
    def dtype(self) -> torch.dtype:
        return self._first().dtype

    @property
    def device(self) -> torch.device:
        return self._first().device

    def _first(self) -> Tensor:
        kind, data = self.slots[0]
        return data if kind == "dense" else data[0][1] if kind == "factors" else data[1]

    def parts(self, shapes: Sequence[tuple[int, ...]]) -> list[tuple[str, int, Any]]:
        """``(kind, slot, data)`` per parameter for :meth:`GaussianProjector.project`."""
        out = []
        for k, (kind, data) in enumerate(self.slots):
            out.append(("vector" if len(shapes[k]) < 2 else "matrix", k, data) if kind == "dense" else (kind, k, data))
        return out

    def _width(self, k: int) -> int:
        kind, data = self.slots[k]
        if kind == "dense":
            return data.shape[1]
        if kind == "factors":
            return data[0][0].shape[2] * data[0][1].shape[2]
        return data[2] * data[1].shape[2]

    def _fill(self, k: int, block: Tensor) -> None:
        """Write slot ``k``'s materialised gradient into ``block`` ([B, p_k], may be a strided view): a Linear
        weight as a batched outer product written in place, an embedding scattered to its rows."""
        kind, data = self.slots[k]
        if kind == "dense":
            block.copy_(data)
        elif kind == "factors":
            (g0, a0), *more = data
            view = block.unflatten(1, (g0.shape[2], a0.shape[2]))
            torch.bmm(g0.transpose(1, 2), a0, out=view)
            for g, a in more:
                view.baddbmm_(g.transpose(1, 2), a)
        else:
            _scatter_into(block.unflatten(1, (data[2], data[1].shape[2])), data[1], data[0])

    def rows(self, lo: int, hi: int) -> _Capture:
        """Examples ``lo:hi`` of the batch (views)."""
        slots = []
        for kind, data in self.slots:
            if kind == "dense":
                slots.append((kind, data[lo:hi]))
            elif kind == "factors":
                slots.append((kind, [(g[lo:hi], a[lo:hi]) for g, a in data]))
            else:
                slots.append((kind, (data[0][lo:hi], data[1][lo:hi], data[2])))
        return _Capture(slots, self.emb_slot, hi - lo)

    def dense_width(self) -> int:
        """Columns of the materialised gradient outside the sparse word-embedding slot."""
        return sum(self._width(k) for k in range(len(self.slots)) if k != self.emb_slot)

    def grads(self, buffer: Tensor | None = None) -> _Grads:
        """The materialised gradients, one block per parameter (column slices of ``buffer``, ``[B, dense_width]``,
        if given); the word embeddings stay sparse."""
        dense, start = [], 0
        for k in range(len(self.slots)):
            if k == self.emb_slot:
                continue
            width = self._width(k)
            if buffer is None:
                dense.append(torch.empty(self.n, width, dtype=self.dtype, device=self.device))
            else:
                dense.append(buffer[:, start : start + width])
            start += width
            self._fill(k, dense[-1])
        if self.emb_slot is None:
            return _Grads(dense)
        ids, h, vocab = self.slots[self.emb_slot][1]
        return _Grads(dense, ids, h, self.emb_slot, vocab)

    def write_rows(self, out: Tensor) -> Tensor:
        """Write the full flattened gradients into ``out`` ([B, p], e.g. rows of a larger result) and return it."""
        start = 0
        for k in range(len(self.slots)):
            width = self._width(k)
            self._fill(k, out[:, start : start + width])
            start += width
        return out

    def to_dense(self) -> Tensor:
        return self.grads().to_dense()

    def sq_norms(self) -> Tensor:
        """Squared gradient norms from the factors: ``sum_{l,m} (g_l . g_m)(a_l . a_m)`` per Linear weight."""
        sq = torch.zeros(self.n, dtype=self.dtype, device=self.device)
        for kind, data in self.slots:
            if kind == "dense":
                sq += data.square().sum(1)
            elif kind == "factors":
                for g1, a1 in data:
                    for g2, a2 in data:
                        sq += (torch.bmm(g1, g2.transpose(1, 2)) * torch.bmm(a1, a2.transpose(1, 2))).sum((1, 2))
            else:
                ids, h, _ = data
                same = (ids[:, :, None] == ids[:, None, :]) & (ids >= 0)[:, :, None]
                sq += (torch.bmm(h, h.transpose(1, 2)) * same).sum((1, 2))
        return sq

    def dots(self, other: _Capture) -> Tensor:
        """``[len(self), len(other)]`` exact inner products from the factors, never forming a gradient ("ghost"
        dot products): ``<G_i, G_j> = sum_{l,m} (g_il . g_jm)(a_il . a_jm)`` per Linear weight, pairs of positions
        with equal ids for embeddings. Costs ``L_i L_j (in + out)`` per pair and layer instead of ``in * out``: the
        choice for large layers and short sequences (XLM-R base without projection)."""
        out = torch.zeros(self.n, other.n, dtype=self.dtype, device=self.device)
        for (kind, mine), (_, theirs) in zip(self.slots, other.slots, strict=True):
            if kind == "dense":
                out.addmm_(mine, theirs.T)
            elif kind == "factors":
                for g1, a1 in mine:
                    for g2, a2 in theirs:
                        out += (_pair_products(g1, g2) * _pair_products(a1, a2)).sum((2, 3))
            else:
                (i1, h1, _), (i2, h2, _) = mine, theirs
                same = (i1[:, None, :, None] == i2[None, :, None, :]) & (i1 >= 0)[:, None, :, None]
                out += (_pair_products(h1, h2) * same).sum((2, 3))
        return out


def _pair_products(x: Tensor, y: Tensor) -> Tensor:
    """``[n_x, n_y, L_x, L_y]`` dot products of every position of ``x`` ([n_x, L_x, k]) with every one of ``y``."""
    (nx, lx, k), (ny, ly, _) = x.shape, y.shape
    return (x.reshape(nx * lx, k) @ y.reshape(ny * ly, k).T).reshape(nx, lx, ny, ly).transpose(1, 2)


class _GhostSet:
    """Test gradients kept as :class:`_Capture` factors (one per bucket), for exact TracIn without forming them."""

    def __init__(self, parts: list[_Capture]) -> None:
        self.parts = parts

    def sq_norms(self) -> Tensor:
        return torch.cat([p.sq_norms() for p in self.parts])

    def dots(self, other: _Capture | _Grads) -> Tensor:
        if not isinstance(other, _Capture):
            raise RuntimeError("ghost TracIn needs factorised training gradients; pass method='vmap'")
        return torch.cat([p.dots(other) for p in self.parts])


def _by_example(t: Tensor, n: int, keep: Tensor | None) -> Tensor:
    """``t`` as ``[n, positions, features]``; positions past an example's length (``keep`` False) set to 0."""
    if t.shape[0] != n:
        raise _Unsupported(f"a layer saw a batch of {t.shape[0]} rows for {n} examples")
    if keep is not None and t.ndim == 3 and t.shape[1] == keep.shape[1]:
        return t.masked_fill(~keep[:, :, None], 0)
    return t.reshape(n, -1, t.shape[-1])


class _HookComputer:
    """Per-example gradients of a whole batch from ONE batched forward and backward pass (method ``"hooks"``).

    Forward hooks record the input of every module that owns a selected parameter; ``torch.autograd.grad`` of the
    summed per-example losses gives the gradient at each such module's output (no parameter gradient is formed).
    Examples do not interact in eval mode, so row ``i`` of these is example ``i``'s own: a Linear weight's
    per-example gradient is ``sum_l g_l a_l^T`` (kept as factors), its bias ``sum_l g_l``, an embedding's rows are
    the sums of ``g`` over the positions of each id (kept sparse), and any other module without submodules
    (LayerNorm, RMSNorm) gets its parameters' per-example gradients from ``torch.func.vjp`` of that module alone,
    vmapped over the examples. Padded positions are zeroed in every captured tensor, so they contribute nothing.
    Parameters this cannot split by example (tied weights, T5's relative attention bias, modules with
    submodules) come from :class:`_GradComputer` (vmap) over those parameters only.
    """

    method = "hooks"

    def __init__(self, model: nn.Module, params: str | Sequence[str], loss_fn: LossFn | None, pad_multiple: int):
        if loss_fn is not None:
            raise _Unsupported("a custom loss_fn (the batched pass sums the per-example cross-entropy)")
        self.model, self.params, self.pad_multiple = model, params, pad_multiple
        selected = select_params(model, params)
        self.shapes = [tuple(v.shape) for v in selected.values()]
        owners: dict[int, list[tuple[str, nn.Module, str]]] = {}
        for mname, mod in model.named_modules(remove_duplicate=False):
            for attr, p in mod.named_parameters(recurse=False):
                if all(m is not mod for _, m, _ in owners.get(id(p), [])):
                    owners.setdefault(id(p), []).append((mname, mod, attr))
        self.plan: list[tuple[str, tuple[nn.Module, ...], str]] = []
        rest = []
        for name, p in selected.items():
            own = owners.get(id(p), [])
            mods, attr = tuple(m for _, m, _ in own), own[0][2] if own else ""
            if not own or any(mname.rsplit(".", 1)[-1] in _SHARED_LOOKUPS for mname, _, _ in own):
                kind = "rest"
            elif all(isinstance(m, nn.Linear) for m in mods):  # several: tied layers, their calls add up
                kind = "factors" if attr == "weight" else "bias"
            elif all(isinstance(m, nn.Embedding) and m.max_norm is None and m.padding_idx == mods[0].padding_idx
                     for m in mods):  # fmt: skip  # several: tied lookups (T5's encoder and decoder)
                kind = "sparse"
            else:
                kind = "module" if len(mods) == 1 and next(mods[0].children(), None) is None else "rest"
            self.plan.append((kind, mods, attr))
            if kind == "rest":
                rest.append(name)
        self.rest = _GradComputer(model, rest, None, "auto", pad_multiple) if rest else None
        emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        self.emb_slot = next(
            (k for k, (kind, mods, _) in enumerate(self.plan) if kind == "sparse" and any(m is emb for m in mods)), None
        )
        cfg = getattr(model, "config", None)
        paddable = getattr(cfg, "model_type", None) in _HOOK_PADDABLE and pad_multiple > 1
        if self.rest is not None:  # share the fallback's buckets
            paddable = paddable and self.rest.pad_id is not None
        self.pad_id = getattr(cfg, "pad_token_id", None) if paddable else None
        self.multiple = pad_multiple if self.pad_id is not None else None
        self.modules = list({id(m): m for kind, mods, _ in self.plan if kind != "rest" for m in mods}.values())
        self.dtype = next(iter(selected.values())).dtype
        self.device = next(iter(selected.values())).device
        self.fallback: _GradComputer | None = None

    def __call__(self, xs: list[Tensor], y: Tensor) -> _Capture | _Grads:
        if self.fallback is not None:
            return self.fallback(xs, y)
        try:
            with torch.enable_grad():  # callers may run under no_grad
                return self._capture([x.to(self.device) for x in xs], y.to(self.device))
        except (_Unsupported, RuntimeError, NotImplementedError) as err:
            warnings.warn(f"batched per-example gradients failed ({err}); using torch.func", stacklevel=3)
            self.fallback = _GradComputer(self.model, self.params, None, "auto", self.pad_multiple)
            return self.fallback(xs, y)

    def _capture(self, xs: list[Tensor], y: Tensor) -> _Capture:
        n, length = len(xs), max(len(x) for x in xs)
        lengths = torch.tensor([len(x) for x in xs], device=self.device)
        keep = torch.arange(length, device=self.device)[None, :] < lengths[:, None]
        kwargs = {}
        if keep.all():
            x, keep = torch.stack(xs), None
        elif self.pad_id is not None:
            x = torch.stack([nn.functional.pad(t, (0, length - len(t)), value=self.pad_id) for t in xs])
            kwargs["attention_mask"] = keep.long()
        else:
            raise _Unsupported("examples of unequal length for a model without verified padding")
        calls: dict[int, list[tuple[Tensor, Tensor]]] = {id(m): [] for m in self.modules}

        def record(mod: nn.Module, args: tuple, out: Any) -> Any:
            if not args or not isinstance(args[0], Tensor) or not isinstance(out, Tensor):
                raise _Unsupported(f"{type(mod).__name__} is not called with and returning one tensor")
            if isinstance(mod, nn.Embedding) and args[0].shape[0] == 1 and n > 1:  # e.g. BERT's position ids
                out = out.expand(n, *out.shape[1:])
                calls[id(mod)].append((args[0].detach().expand(n, *args[0].shape[1:]), out))
                return out
            calls[id(mod)].append((args[0].detach(), out))
            return None

        handles = [m.register_forward_hook(record) for m in self.modules]
        try:
            out = self.model(x, **kwargs)
        finally:
            for h in handles:
                h.remove()
        logits = getattr(out, "logits", out)
        logits = logits[0] if isinstance(logits, tuple) else logits
        if logits.ndim != 2 or logits.shape[0] != n:
            raise _Unsupported(f"logits of shape {tuple(logits.shape)} for {n} examples")
        loss = nn.functional.cross_entropy(logits, y, reduction="sum")
        outs = [o for m in self.modules for _, o in calls[id(m)]]
        if not all(o.requires_grad for o in outs):
            raise _Unsupported("a selected layer's output does not require grad (frozen parameters)")
        grads = iter(torch.autograd.grad(loss, outs, allow_unused=True))
        seen = {
            id(m): [(a, o, next(grads)) for a, o in calls[id(m)]] for m in self.modules
        }  # (input, output, grad at output) per call
        slots: list[tuple[str, Any]] = []
        module_grads: dict[int, dict[str, Tensor]] = {}
        rest = iter(self.rest(xs, y).dense) if self.rest is not None else None
        for k, (kind, mods, attr) in enumerate(self.plan):
            if kind == "rest":
                slots.append(("dense", next(rest)))
                continue
            recs = [(a, o, torch.zeros_like(o) if g is None else g) for m in mods for a, o, g in seen[id(m)]]
            mod = mods[0]
            if not recs:  # never called: a zero gradient
                slots.append(
                    ("dense", torch.zeros(n, int(np.prod(self.shapes[k])), dtype=loss.dtype, device=self.device))
                )
            elif kind == "factors":
                pairs = [(_by_example(g, n, keep), _by_example(a, n, keep)) for a, _, g in recs]
                slots.append(("factors", [(_up(g), _up(a)) for g, a in pairs]))
            elif kind == "bias":
                block = sum(_by_example(g, n, keep).sum(1) for _, _, g in recs)
                slots.append(("dense", _up(block)))
            elif kind == "sparse":
                slots.append(("sparse", self._sparse(mod, recs, n, keep)))
            else:
                if id(mod) not in module_grads:
                    module_grads[id(mod)] = _module_grads(mod, recs, n, keep)
                slots.append(("dense", _up(module_grads[id(mod)][attr])))
        return _Capture(slots, self.emb_slot, n)

    @staticmethod
    def _sparse(mod: nn.Embedding, recs: list, n: int, keep: Tensor | None) -> tuple[Tensor, Tensor, int]:
        ids, hs = [], []
        for a, _, g in recs:
            i = a.reshape(n, -1)
            if keep is not None and a.shape == keep.shape:
                i = i.masked_fill(~keep, -1)
            if mod.padding_idx is not None:  # the lookup gives no gradient to the padding row
                i = i.masked_fill(i == mod.padding_idx, -1)
            ids.append(i)
            hs.append(g.reshape(n, i.shape[1], -1))
        return torch.cat(ids, dim=1), _up(torch.cat(hs, dim=1)), mod.num_embeddings


def _module_grads(mod: nn.Module, recs: list, n: int, keep: Tensor | None) -> dict[str, Tensor]:
    """Per-example gradients ``[n, p]`` of a small module's own parameters (LayerNorm, RMSNorm), by vmapping the
    vector-Jacobian product of the module alone over the examples' recorded inputs and output gradients."""
    params = {k: v.detach() for k, v in mod.named_parameters(recurse=False)}

    def one(a: Tensor, g: Tensor) -> dict[str, Tensor]:
        _, pull = vjp(lambda p: functional_call(mod, p, (a.unsqueeze(0),)), params)
        return pull(g.unsqueeze(0))[0]

    total: dict[str, Tensor] = {}
    for a, _, g in recs:
        if a.shape[0] != n:
            raise _Unsupported(f"{type(mod).__name__} saw a batch of {a.shape[0]} rows for {n} examples")
        if keep is not None and a.ndim == 3 and a.shape[1] == keep.shape[1]:  # padded positions: zero cotangent
            pad = ~keep[:, :, None]  # and the input of position 0 (a zero input can make a norm divide by 0)
            a, g = torch.where(pad, a[:, :1], a), g.masked_fill(pad, 0)
        if isinstance(mod, nn.LayerNorm) and mod.weight is not None and a.ndim == 3:  # closed form, same result
            xhat = nn.functional.layer_norm(a, mod.normalized_shape, None, None, mod.eps)
            got = {"weight": (g * xhat).sum(1)} | ({} if mod.bias is None else {"bias": g.sum(1)})
        else:
            with torch.enable_grad():
                got = vmap(one)(a.detach(), g)
        for k, v in got.items():
            total[k] = total[k] + v.reshape(n, -1) if k in total else v.reshape(n, -1)
    return total


_Computer = _HookComputer | _GradComputer
_BUFFER_ENTRIES = 2**23  # the buffer streamed training gradients are materialised in (row chunks)
_GHOST_ENTRIES = 2**28  # n_test x p beyond which tracin keeps test gradients as factors (ghost dot products)


def _iter_grads(
    computer: _Computer,
    ex: Examples,
    batch_size: int,
    projector: GaussianProjector | None,
    bar: tqdm,
    raw: bool = False,
    stream: bool = False,
) -> Iterator[tuple[Tensor, _Grads | _Capture]]:
    """Yield ``(indices, gradients)`` per length bucket; a projector maps the gradients to ``[B, dim]``.
    ``raw``: hook-path batches come as :class:`_Capture` (not materialised). ``stream``: the caller is done with
    each yield before the next, so hook-path batches may come in row chunks sharing one buffer."""
    buffer = torch.empty(0)
    with _grad_mode(computer.model, computer.method in ("auto", "vmap")):
        for idx in _buckets(ex, batch_size, computer.multiple):
            g = computer([ex.inputs[i] for i in idx.tolist()], ex.labels[idx])
            if projector is not None:
                yield idx, _Grads([projector.project(g, computer.shapes)])
            elif not isinstance(g, _Capture) or raw:
                yield idx, g
            elif not stream:
                yield idx, g.grads()
            else:  # row chunks materialised in one reused buffer: fresh pages are slow to touch
                width = g.dense_width()
                rows = min(len(idx), max(1, _BUFFER_ENTRIES // max(width, 1)))
                if buffer.numel() < rows * width or buffer.dtype != g.dtype or buffer.device != g.device:
                    buffer = torch.empty(rows * width, dtype=g.dtype, device=g.device)
                for lo in range(0, len(idx), rows):
                    part = g.rows(lo, min(lo + rows, len(idx)))
                    yield idx[lo : lo + rows], part.grads(buffer[: part.n * width].view(part.n, width))
            bar.update(len(idx))


def _computer(
    model: nn.Module, params: str | Sequence[str], loss_fn: LossFn | None, method: str, pad_multiple: int
) -> _Computer:
    """The per-example gradient computer of ``method``; ``"auto"``: hooks where they apply, else vmap/loop."""
    if method in ("auto", "hooks"):
        try:
            return _HookComputer(model, params, loss_fn, pad_multiple)
        except _Unsupported as err:
            if method == "hooks":
                raise ValueError(f"parameter 'method'='hooks' does not apply: {err}; use 'auto' or 'vmap'") from None
    return _GradComputer(model, params, loss_fn, method, pad_multiple)


def _collect(
    computer: _Computer, ex: Examples, batch_size: int, projector: GaussianProjector | None, bar: tqdm
) -> tuple[_Grads, Tensor]:
    """Gradients of all of ``ex`` in bucket order, and that order (input indices)."""
    parts = list(_iter_grads(computer, ex, batch_size, projector, bar))
    return _Grads.cat([g for _, g in parts]), torch.cat([idx for idx, _ in parts])


def _check_device(device: str | torch.device) -> torch.device:
    """``device`` as a :class:`torch.device`: ``"cpu"``, ``"cuda"`` or ``"cuda:<n>"`` of an available GPU."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        dev = None
    if dev is None or dev.type not in DEVICES:
        raise ValueError(f"parameter 'device' must be 'cpu', 'cuda' or 'cuda:<n>', got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"parameter 'device'={device!r} needs a GPU, but torch.cuda.is_available() is False; use 'cpu'"
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"parameter 'device'={device!r}: only {torch.cuda.device_count()} GPU(s) are visible")
    return dev


@contextlib.contextmanager
def _on_device(model: nn.Module, device: torch.device, dtype: torch.dtype | None = None) -> Iterator[nn.Module]:
    """The model moved to ``device``, and back to where it was afterwards (the caller's model is left as found);
    for another ``dtype``, a cast copy on ``device`` (casting back would lose the caller's precision)."""
    home = next(model.parameters())
    if dtype is not None and dtype != home.dtype:
        yield copy.deepcopy(model).to(device, dtype)
        return
    model.to(device)
    try:
        yield model
    finally:
        model.to(home.device)


def _up(t: Tensor | None) -> Tensor | None:
    """Half-precision gradients in float32 for projection and scoring (the passes themselves stay in half)."""
    return t.float() if t is not None and t.dtype in (torch.float16, torch.bfloat16) else t


def _check_common(
    normalize: str, batch_size: int, method: str, pad_multiple: int, device: str | torch.device, dtype: str | None
) -> tuple[torch.device, torch.dtype | None]:
    check_choice("normalize", normalize, NORMALIZE)
    check_int("batch_size", batch_size, 1)
    check_choice("method", method, METHODS)
    check_int("pad_multiple", pad_multiple, 0)
    if dtype is not None:
        check_choice("dtype", dtype, tuple(DTYPES))
    return _check_device(device), None if dtype is None else DTYPES[dtype]


def per_example_grads(
    model: nn.Module,
    data: Any,
    params: str | Sequence[str] = "all",
    *,
    projector: GaussianProjector | None = None,
    batch_size: int = 256,
    loss_fn: LossFn | None = None,
    method: str = "auto",
    pad_multiple: int = 8,
    progress: bool = False,
    device: str | torch.device = "cpu",
    dtype: str | None = None,
) -> Tensor:
    """Flattened loss gradients ``[n, p]`` (or ``[n, projector.dim]``) of every example, in input order.

    ``params``: see :func:`select_params` (columns follow its order). ``method``: ``"hooks"`` (one batched
    forward and backward pass per bucket, Linear gradients from their factors; the default loss only),
    ``"vmap"``, ``"loop"`` or ``"auto"`` (hooks where they apply, else vmap, falling back to the loop if the
    model cannot be vmapped). ``pad_multiple``: buckets hold lengths rounded up to this multiple, right-padded
    and masked (exact, fewer and larger buckets), for XLM-R, RoBERTa and BERT, and with hooks also T5 and Llama;
    0 or 1 keeps exact-length buckets, as for every other model. ``device``: where gradients are computed (the
    model is moved there and back); the result is on the CPU. ``dtype``: ``"bfloat16"`` / ``"float16"`` (for
    GPUs), ``"float32"`` or ``"float64"`` runs the passes on a cast copy of the model; half-precision gradients
    are projected and scored in float32. Used by chapters 01, 03, 05.
    """
    ex = as_examples(data, "data")
    dev, dt = _check_common("none", batch_size, method, pad_multiple, device, dtype)
    out = torch.empty(0)
    bar = tqdm(total=len(ex), desc="per-example grads", disable=not progress)
    with _on_device(model, dev, dt) as on_dev, bar:
        computer = _computer(on_dev, params, loss_fn, method, pad_multiple)
        width = projector.dim if projector is not None else sum(int(np.prod(s)) for s in computer.shapes)
        for idx, g in _iter_grads(computer, ex, batch_size, projector, bar, raw=True):
            if not out.numel():
                out = torch.empty(len(ex), width, dtype=g.dtype)
            lo, hi = int(idx[0]), int(idx[-1]) + 1
            if hi - lo == len(idx) and bool((idx.diff() == 1).all()):  # consecutive rows: write in place
                if g.device.type == "cpu":
                    g.write_rows(out[lo:hi])
                else:
                    out[lo:hi].copy_(g.to_dense())
            else:
                out[idx] = g.to_dense().cpu()
    return out


# ------------------------------------------------------------------------------------------------ TracIn


def _normalise(dots: Tensor, test_norm: Tensor, train_norm: Tensor, normalize: str) -> Tensor:
    if normalize == "none":
        return dots
    tiny = torch.finfo(dots.dtype).tiny
    dots = dots / train_norm.clamp_min(tiny)[None, :]
    return dots / test_norm.clamp_min(tiny)[:, None] if normalize == "cosine" else dots


def pairwise_scores(test_grads: Tensor, train_grads: Tensor, normalize: str = "cosine") -> Tensor:
    """Scores ``[n_test, n_train]`` of one checkpoint: dot products (``"none"``), cosines (``"cosine"``), or dots
    divided by ``||g(z)||`` (``"train_only"``). A zero gradient scores 0 under every normalisation."""
    check_choice("normalize", normalize, NORMALIZE)
    return _normalise(test_grads @ train_grads.T, test_grads.norm(dim=1), train_grads.norm(dim=1), normalize)


@dataclass
class Influence:
    """TracIn scores. ``per_epoch[e, t, z]``: weighted score of training example z on test example t at checkpoint
    e; ``total`` sums over checkpoints. ``train_norms[e, z]``, ``test_norms[e, t]``: gradient norms (after any
    projection), e.g. to flag outliers with large gradients."""

    per_epoch: Tensor
    train_norms: Tensor
    test_norms: Tensor
    lr_weights: Tensor
    normalize: str

    @property
    def total(self) -> Tensor:
        """Scores summed over checkpoints, ``[n_test, n_train]``."""
        return self.per_epoch.sum(dim=0)


def load_checkpoint(path: str | Path) -> nn.Module:
    """Load a sequence classifier saved with ``save_pretrained``. Checkpoints of ``mlmc.train.finetune_classifier``
    (model and tokenizer) go through ``mlmc.models.load(path, "seq-cls")``; bare model directories straight
    through ``transformers.AutoModelForSequenceClassification``."""
    path = Path(path)
    if (path / "tokenizer_config.json").is_file():
        return load(path, "seq-cls", num_labels=AutoConfig.from_pretrained(path).num_labels)[0]
    with quiet_transformers():
        return AutoModelForSequenceClassification.from_pretrained(path).eval()


def _checkpoint_list(checkpoints: Checkpoint | Sequence[Checkpoint]) -> list[Checkpoint]:
    items = [checkpoints] if isinstance(checkpoints, str | Path | nn.Module) else list(checkpoints)
    if not items:
        raise ValueError("parameter 'checkpoints' is empty: pass at least one model or checkpoint directory")
    for c in items:
        if not isinstance(c, nn.Module) and not (isinstance(c, str | Path) and Path(c).is_dir()):
            what = repr(str(c)) if isinstance(c, str | Path) else f"a {type(c).__name__}"  # never dump a state dict
            raise ValueError(f"parameter 'checkpoints': {what} is neither an nn.Module nor an existing directory")
    return items


def _weights(lr_weights: Sequence[float] | None, n: int) -> list[float]:
    if lr_weights is None:
        return [1.0] * n
    w = [float(check_positive("lr_weights", v)) for v in lr_weights]
    if len(w) != n:
        raise ValueError(f"parameter 'lr_weights' needs one weight per checkpoint ({n}), got {len(w)}")
    return w


def _models(
    items: list[Checkpoint],
    load_fn: Callable[[Path], nn.Module] | None,
    device: torch.device,
    dtype: torch.dtype | None,
) -> Iterator[nn.Module]:
    """The checkpoints one at a time on ``device`` (in ``dtype``, if given); models passed in are left as found."""
    for c in items:
        if isinstance(c, nn.Module):
            with _on_device(c, device, dtype) as model:
                yield model
        else:
            yield (load_fn or load_checkpoint)(Path(c)).to(device, dtype)


def tracin(
    checkpoints: Checkpoint | Sequence[Checkpoint],
    train: Any,
    test: Any,
    *,
    params: str | Sequence[str] = "all",
    normalize: str = "cosine",
    lr_weights: Sequence[float] | None = None,
    projector: GaussianProjector | None = None,
    batch_size: int = 256,
    loss_fn: LossFn | None = None,
    method: str = "auto",
    pad_multiple: int = 8,
    load_fn: Callable[[Path], nn.Module] | None = None,
    progress: bool = True,
    device: str | torch.device = "cpu",
    dtype: str | None = None,
) -> Influence:
    """TracIn influence of every training example on every test example, per checkpoint (chapters 01, 03, 05).

    ``checkpoints``: models or ``save_pretrained`` directories (e.g. ``finetune_classifier(...).checkpoints``),
    loaded one at a time with ``load_fn`` (default :func:`load_checkpoint`). ``normalize``: ``"cosine"`` (thesis),
    ``"train_only"`` (divide by ``||g(z)||``) or ``"none"`` (dot). ``lr_weights``: one positive weight per
    checkpoint (TracInCP's learning rates); default 1. Test gradients are held in memory, training gradients are
    streamed in length buckets of ``batch_size``; ``projector`` maps both to ``projector.dim`` first.
    ``method``, ``pad_multiple``, ``device`` and ``dtype``: as in :func:`per_example_grads` (test gradients stay
    on the device; scores and norms come back to the CPU). Memory: the test gradients (or sketches) plus one
    training batch; no ``n_train x p`` matrix is ever held. Without a projector, on the hook path, test
    gradients larger than 2**28 entries in all are kept as layer factors and scored by exact "ghost" dot
    products (see :meth:`_Capture.dots`).
    """
    dev, dt = _check_common(normalize, batch_size, method, pad_multiple, device, dtype)
    items = _checkpoint_list(checkpoints)
    weights = _weights(lr_weights, len(items))
    train_ex, test_ex = as_examples(train, "train"), as_examples(test, "test")
    n_e, n_test, n_train = len(items), len(test_ex), len(train_ex)
    per_epoch = train_norms = test_norms = torch.empty(0)
    with tqdm(total=n_e * (n_test + n_train), desc="TracIn", disable=not progress) as bar:
        for e, model in enumerate(_models(items, load_fn, dev, dt)):
            computer = _computer(model, params, loss_fn, method, pad_multiple)
            width = sum(int(np.prod(s)) for s in computer.shapes)
            ghost = projector is None and isinstance(computer, _HookComputer) and n_test * width > _GHOST_ENTRIES
            if ghost:  # test gradients too large to hold: keep their factors, exact dots from the factors
                parts = list(_iter_grads(computer, test_ex, batch_size, None, bar, raw=True))
                ghost = all(isinstance(g, _Capture) for _, g in parts)
                test_g = _GhostSet([g for _, g in parts]) if ghost else _Grads.cat([g.grads() for _, g in parts])
                test_order = torch.cat([idx for idx, _ in parts])
            else:
                test_g, test_order = _collect(computer, test_ex, batch_size, projector, bar)
            t_norms_dev = test_g.sq_norms().sqrt()
            t_norms = t_norms_dev.cpu()
            if e == 0:
                per_epoch = torch.empty(n_e, n_test, n_train, dtype=t_norms.dtype)
                train_norms = torch.empty(n_e, n_train, dtype=t_norms.dtype)
                test_norms = torch.empty(n_e, n_test, dtype=t_norms.dtype)
            scores = torch.empty(n_test, n_train, dtype=t_norms.dtype)  # rows in test_order
            for idx, g in _iter_grads(computer, train_ex, batch_size, projector, bar, raw=ghost, stream=True):
                norms = g.sq_norms().sqrt()
                scores[:, idx] = (weights[e] * _normalise(test_g.dots(g), t_norms_dev, norms, normalize)).cpu()
                train_norms[e, idx] = norms.cpu()
            per_epoch[e, test_order] = scores
            test_norms[e, test_order] = t_norms
    return Influence(per_epoch, train_norms, test_norms, torch.tensor(weights, dtype=torch.float64), normalize)


def self_influence(
    checkpoints: Checkpoint | Sequence[Checkpoint],
    data: Any,
    *,
    params: str | Sequence[str] = "all",
    normalize: str = "none",
    lr_weights: Sequence[float] | None = None,
    projector: GaussianProjector | None = None,
    batch_size: int = 256,
    loss_fn: LossFn | None = None,
    method: str = "auto",
    pad_multiple: int = 8,
    load_fn: Callable[[Path], nn.Module] | None = None,
    progress: bool = True,
    device: str | torch.device = "cpu",
    dtype: str | None = None,
) -> Tensor:
    """TracIn score of every example on itself, summed over checkpoints, ``[n]`` (outliers, mislabelled rows).

    ``"none"``: ``sum_e w_e ||g_e||^2`` (captum's ``self_influence``); ``"train_only"``: ``sum_e w_e ||g_e||``;
    ``"cosine"``: ``sum_e w_e`` over checkpoints with a non-zero gradient. Arguments as in :func:`tracin`.
    """
    dev, dt = _check_common(normalize, batch_size, method, pad_multiple, device, dtype)
    items = _checkpoint_list(checkpoints)
    weights = _weights(lr_weights, len(items))
    ex = as_examples(data, "data")
    out = torch.zeros(len(ex), dtype=torch.float64)
    with tqdm(total=len(items) * len(ex), desc="self-influence", disable=not progress) as bar:
        for e, model in enumerate(_models(items, load_fn, dev, dt)):
            computer = _computer(model, params, loss_fn, method, pad_multiple)
            for idx, g in _iter_grads(computer, ex, batch_size, projector, bar, raw=True):  # norms from factors
                sq = g.sq_norms().double().cpu()
                term = {"none": sq, "train_only": sq.sqrt(), "cosine": (sq > 0).double()}[normalize]
                out[idx] += weights[e] * term
    return out


def topk(scores: Tensor | np.ndarray, k: int, sign: int = 1) -> Tensor:
    """Indices ``[..., k]`` of the k largest (``sign=1``, proponents P_k) or most negative (``sign=-1``, opponents
    N_k) scores along the last axis; stable, ties go to the lower index (spec §2.4)."""
    s = torch.as_tensor(scores)
    check_choice("sign", sign, (1, -1))
    check_int("k", k, 1)
    if k > s.shape[-1]:
        raise ValueError(f"parameter 'k' must be <= the number of training examples ({s.shape[-1]}), got {k}")
    return torch.sort(s, dim=-1, descending=sign == 1, stable=True).indices[..., :k]
