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

How gradients are computed: in eval mode (dropout off), with ``torch.func.vmap(grad(...))`` over buckets of
examples of equal length, which needs no attention mask (HF's own mask logic cannot be vmapped). For XLM-R,
RoBERTa and BERT, buckets span lengths up to a multiple of ``pad_multiple`` and are padded with a 4-D additive key
mask, which is exact and gives fewer, larger vmap calls. A per-example autograd loop is the fallback. The gradient
of the input word-embedding matrix is kept sparse (the gradient at the embedding output, per position), so large
vocabularies cost neither memory nor time; dot products with it are exact.
"""

from __future__ import annotations

import contextlib
import fnmatch
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModelForSequenceClassification

from mlmc.errors import check_choice, check_int, check_positive
from mlmc.models import load, quiet_transformers

NORMALIZE = ("cosine", "train_only", "none")
METHODS = ("auto", "vmap", "loop")
PARAM_PRESETS = ("all", "no_word_embeddings")
PROJECTIONS = ("kronecker", "dense")
DEVICES = ("cpu", "cuda")

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
    word-embedding gradient is projected without being made dense. Vectors (biases, LayerNorm) are projected
    densely. Only O(dim * (m + n)) random numbers per matrix, drawn once and cached.

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

    def project(self, g: _Grads, shapes: Sequence[tuple[int, ...]]) -> Tensor:
        """Project one batch of per-example gradients (parameter ``shapes`` in :func:`select_params` order)."""
        if self.structure == "dense":
            return self(g.to_dense())
        n = len(g)
        slots = [k for k in range(len(shapes)) if g.h is None or k != g.emb_slot]
        out = torch.zeros(n, self.dim, dtype=g._dtype(), device=g._device())
        for k, block in zip(slots, g.dense, strict=True):
            if len(shapes[k]) < 2:
                out += self._flat(block, (2, k), True)
                continue
            p1, p2 = self._factors(k, shapes[k][0], block.shape[1] // shapes[k][0], block)
            out += (p1 @ block.reshape(n, p1.shape[1], p2.shape[1]) @ p2.T).reshape(n, -1)
        if g.h is not None:  # P1 dE P2^T = sum over positions of P1[:, id] (P2 h)^T; ignored positions (-1) drop out
            p1, p2 = self._factors(g.emb_slot, g.vocab, g.h.shape[2], g.h)
            cols = p1.T[g.ids.clamp_min(0)] * (g.ids >= 0).unsqueeze(2).to(g.h.dtype)
            out += torch.bmm(cols.transpose(1, 2), g.h @ p2.T).reshape(n, -1)
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
        sq = torch.zeros(len(self), dtype=self._dtype(), device=self._device())
        for b in self.dense:
            sq += torch.linalg.vector_norm(b, dim=1).square()
        if self.h is not None:
            same = (self.ids[:, :, None] == self.ids[:, None, :]) & (self.ids >= 0)[:, :, None]
            sq += ((self.h @ self.h.transpose(1, 2)) * same).sum((1, 2))
        return sq

    def dots(self, other: _Grads) -> Tensor:
        """``[len(self), len(other)]`` inner products of the full flattened gradients. The embedding part only
        needs the rows of tokens that occur in ``self``: ``other`` is compacted onto ``self``'s vocabulary."""
        out = torch.zeros(len(self), len(other), dtype=self._dtype(), device=self._device())
        for a, b in zip(self.dense, other.dense, strict=True):
            out.addmm_(a, b.T)
        if self.h is not None:
            lookup, mine = self._compact()
            theirs = _scatter_rows(other.h, other._rows(lookup), mine.shape[1] // self.h.shape[2])
            out.addmm_(mine, theirs.T)
        return out

    def to_dense(self) -> Tensor:
        """The full flattened gradients ``[B, p]`` in :func:`select_params` order."""
        blocks = list(self.dense)
        if self.h is not None:
            blocks.insert(self.emb_slot, _scatter_rows(self.h, self.ids, self.vocab))
        return torch.cat(blocks, dim=1)

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

    def _dtype(self) -> torch.dtype:
        return (self.dense[0] if self.dense else self.h).dtype

    def _device(self) -> torch.device:
        return (self.dense[0] if self.dense else self.h).device


def _scatter_rows(h: Tensor, rows: Tensor, n_rows: int) -> Tensor:
    """Sum ``h[b, l]`` ([B, L, d]) into row ``rows[b, l]`` of a zero ``[B, n_rows, d]`` tensor (rows < 0 are
    dropped); returned flattened to ``[B, n_rows * d]``."""
    n, length, d = h.shape
    out = torch.zeros(n, n_rows, d, dtype=h.dtype, device=h.device)
    keep = rows >= 0
    example = torch.arange(n, device=h.device)[:, None].expand(n, length)
    out.index_put_((example[keep], rows[keep]), h[keep], accumulate=True)
    return out.reshape(n, -1)


# Bidirectional HF encoders for which right padding with a 4-D additive key mask is exact: positions of real
# tokens do not change and no real token attends to a pad. HF passes a 4-D mask through as is, without the
# data-dependent mask logic that vmap cannot trace.
_PADDABLE = ("xlm-roberta", "roberta", "bert")


def _sparse_embedding(model: nn.Module, selected: dict[str, nn.Parameter]) -> nn.Embedding | None:
    """The input embedding module if its weight is selected and used only as a lookup (not tied to an output)."""
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if not isinstance(emb, nn.Embedding) or not any(p is emb.weight for p in selected.values()):
        return None
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
        dense = [g_sel[k].reshape(len(ids), -1) for k in self.sel]
        if self.emb is None:
            return _Grads(dense)
        if self.emb.padding_idx is not None:  # the lookup gives no gradient to the padding row
            ids = ids.masked_fill(ids == self.emb.padding_idx, -1)
        return _Grads(dense, ids, g_delta, self.emb_slot, self.emb.num_embeddings)

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


def _iter_grads(
    computer: _GradComputer, ex: Examples, batch_size: int, projector: GaussianProjector | None, bar: tqdm
) -> Iterator[tuple[Tensor, _Grads]]:
    """Yield ``(indices, gradients)`` per length bucket; a projector maps the gradients to ``[B, dim]``."""
    with _grad_mode(computer.model, computer.method != "loop"):
        for idx in _buckets(ex, batch_size, computer.multiple):
            g = computer([ex.inputs[i] for i in idx.tolist()], ex.labels[idx])
            yield idx, (_Grads([projector.project(g, computer.shapes)]) if projector is not None else g)
            bar.update(len(idx))


def _collect(
    computer: _GradComputer, ex: Examples, batch_size: int, projector: GaussianProjector | None, bar: tqdm
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
def _on_device(model: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """The model moved to ``device``, and back to where it was afterwards (the caller's model is left as found)."""
    home = next(model.parameters()).device
    model.to(device)
    try:
        yield model
    finally:
        model.to(home)


def _check_common(
    normalize: str, batch_size: int, method: str, pad_multiple: int, device: str | torch.device
) -> torch.device:
    check_choice("normalize", normalize, NORMALIZE)
    check_int("batch_size", batch_size, 1)
    check_choice("method", method, METHODS)
    check_int("pad_multiple", pad_multiple, 0)
    return _check_device(device)


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
) -> Tensor:
    """Flattened loss gradients ``[n, p]`` (or ``[n, projector.dim]``) of every example, in input order.

    ``params``: see :func:`select_params` (columns follow its order). ``method``: ``"vmap"``, ``"loop"`` or
    ``"auto"`` (vmap, falling back to the loop if the model cannot be vmapped). ``pad_multiple``: for XLM-R,
    RoBERTa and BERT, vmap buckets hold lengths rounded up to this multiple, padded and masked (exact, fewer and
    larger buckets); 0 or 1 keeps exact-length buckets, as for every other model. ``device``: where gradients are
    computed (the model is moved there and back); the result is on the CPU. Used by chapters 01, 03, 05.
    """
    ex = as_examples(data, "data")
    dev = _check_common("none", batch_size, method, pad_multiple, device)
    with _on_device(model, dev), tqdm(total=len(ex), desc="per-example grads", disable=not progress) as bar:
        computer = _GradComputer(model, params, loss_fn, method, pad_multiple)
        grads, order = _collect(computer, ex, batch_size, projector, bar)
        return grads.to_dense().cpu()[torch.argsort(order)]


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
    items: list[Checkpoint], load_fn: Callable[[Path], nn.Module] | None, device: torch.device
) -> Iterator[nn.Module]:
    """The checkpoints one at a time on ``device``; models passed in go back to their device afterwards."""
    for c in items:
        if isinstance(c, nn.Module):
            with _on_device(c, device) as model:
                yield model
        else:
            yield (load_fn or load_checkpoint)(Path(c)).to(device)


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
) -> Influence:
    """TracIn influence of every training example on every test example, per checkpoint (chapters 01, 03, 05).

    ``checkpoints``: models or ``save_pretrained`` directories (e.g. ``finetune_classifier(...).checkpoints``),
    loaded one at a time with ``load_fn`` (default :func:`load_checkpoint`). ``normalize``: ``"cosine"`` (thesis),
    ``"train_only"`` (divide by ``||g(z)||``) or ``"none"`` (dot). ``lr_weights``: one positive weight per
    checkpoint (TracInCP's learning rates); default 1. Test gradients are held in memory, training gradients are
    streamed in length buckets of ``batch_size``; ``projector`` maps both to ``projector.dim`` first.
    ``method``, ``pad_multiple`` and ``device``: as in :func:`per_example_grads` (test gradients stay on the
    device; scores and norms come back to the CPU).
    """
    dev = _check_common(normalize, batch_size, method, pad_multiple, device)
    items = _checkpoint_list(checkpoints)
    weights = _weights(lr_weights, len(items))
    train_ex, test_ex = as_examples(train, "train"), as_examples(test, "test")
    n_e, n_test, n_train = len(items), len(test_ex), len(train_ex)
    per_epoch = train_norms = test_norms = torch.empty(0)
    with tqdm(total=n_e * (n_test + n_train), desc="TracIn", disable=not progress) as bar:
        for e, model in enumerate(_models(items, load_fn, dev)):
            computer = _GradComputer(model, params, loss_fn, method, pad_multiple)
            test_g, test_order = _collect(computer, test_ex, batch_size, projector, bar)
            t_norms_dev = test_g.sq_norms().sqrt()
            t_norms = t_norms_dev.cpu()
            if e == 0:
                per_epoch = torch.empty(n_e, n_test, n_train, dtype=t_norms.dtype)
                train_norms = torch.empty(n_e, n_train, dtype=t_norms.dtype)
                test_norms = torch.empty(n_e, n_test, dtype=t_norms.dtype)
            scores = torch.empty(n_test, n_train, dtype=t_norms.dtype)  # rows in test_order
            for idx, g in _iter_grads(computer, train_ex, batch_size, projector, bar):
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
) -> Tensor:
    """TracIn score of every example on itself, summed over checkpoints, ``[n]`` (outliers, mislabelled rows).

    ``"none"``: ``sum_e w_e ||g_e||^2`` (captum's ``self_influence``); ``"train_only"``: ``sum_e w_e ||g_e||``;
    ``"cosine"``: ``sum_e w_e`` over checkpoints with a non-zero gradient. Arguments as in :func:`tracin`.
    """
    dev = _check_common(normalize, batch_size, method, pad_multiple, device)
    items = _checkpoint_list(checkpoints)
    weights = _weights(lr_weights, len(items))
    ex = as_examples(data, "data")
    out = torch.zeros(len(ex), dtype=torch.float64)
    with tqdm(total=len(items) * len(ex), desc="self-influence", disable=not progress) as bar:
        for e, model in enumerate(_models(items, load_fn, dev)):
            computer = _GradComputer(model, params, loss_fn, method, pad_multiple)
            for idx, g in _iter_grads(computer, ex, batch_size, projector, bar):
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
