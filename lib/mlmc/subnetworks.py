"""Language subnetworks: head importance, iterative head pruning, random/dynamic/magnitude masks, mask overlap.

Used by chapter 02 (language-specific subnetworks for parsing, Choenni et al. 2023) and chapter 03 (modularity,
Choenni et al. 2024). A head mask is a float ``[L, H]`` tensor with 1 = head on, 0 = head off (the gate ξ of
Michel et al. 2019); an unstructured mask is a ``dict[name, BoolTensor]`` with True = weight kept.

Callers pass their task as callables, so the same kernels serve a parser and a classifier:
``loss_fn(model, batch) -> scalar tensor`` and ``score_fn(model, gates) -> float`` (higher is better).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.nn.utils import prune
from tqdm.auto import tqdm

from mlmc.errors import check_choice, check_int, check_positive, check_range
from mlmc.heads import attention_layers, check_head_mask, head_gate, head_shape

LossFn = Callable[[nn.Module, Any], torch.Tensor]
ScoreFn = Callable[[nn.Module, torch.Tensor], float]


# --------------------------------------------------------------------------------------------------- importance
def head_importance(
    model: nn.Module,
    batches: Iterable[Any],
    loss_fn: LossFn,
    mask: torch.Tensor | None = None,
    normalize_layer: bool = True,
    normalize_global: bool = True,
    progress: bool = False,
) -> torch.Tensor:
    """Head importance ``HI(l, h) = mean over batches of |∂L_b/∂ξ(l, h)|`` with gates ξ fixed at ``mask`` (default 1).

    Each batch's gradient is taken separately (``torch.autograd.grad``), so scores are a mean of per-batch absolute
    values, never of running totals, and the model's ``.grad`` fields are untouched. The model is in eval mode while
    scoring. HF bertology divides by the token count instead of the batch count, a constant that the optional
    normalisations remove: per-layer L2 (``normalize_layer``), then global min-max to [0, 1] (``normalize_global``).
    """
    shape = head_shape(model)
    gates0 = torch.ones(shape) if mask is None else check_head_mask("mask", mask, shape)
    if hasattr(batches, "__len__") and len(batches) == 0:
        raise ValueError("parameter 'batches' is empty; head importance needs at least one batch")
    dtype = next(model.parameters()).dtype
    gates = gates0.to(dtype=dtype).clone().requires_grad_(True)
    total = torch.zeros(shape, dtype=torch.float64)
    n_batches = 0
    was_training = model.training
    model.eval()
    try:
        with head_gate(model) as gate, gate.using(gates):
            for batch in tqdm(batches, desc="head importance", disable=not progress):
                (grad,) = torch.autograd.grad(loss_fn(model, batch), gates)
                total += grad.detach().abs().to(torch.float64).cpu()
                n_batches += 1
    finally:
        model.train(was_training)
    if n_batches == 0:
        raise ValueError("parameter 'batches' yielded no batch; head importance needs at least one")
    imp = total / n_batches
    if normalize_layer:
        imp = imp / (imp.norm(p=2, dim=-1, keepdim=True) + 1e-20)
    if normalize_global:
        span = imp.max() - imp.min()
        imp = (imp - imp.min()) / span if span > 0 else torch.zeros_like(imp)
    return imp.float()


# ------------------------------------------------------------------------------------------------------ pruning
@dataclass
class PruneResult:
    """Outcome of ``iterative_head_pruning``: the returned mask, one history row per evaluated mask, and those masks."""

    mask: torch.Tensor
    history: pd.DataFrame
    masks: list[torch.Tensor] = field(default_factory=list)


def iterative_head_pruning(
    model: nn.Module,
    imp_batches: Iterable[Any],
    score_fn: ScoreFn,
    loss_fn: LossFn,
    step_frac: float = 0.1,
    threshold: float = 0.95,
    max_off: int | None = None,
    max_rounds: int | None = None,
    normalize_layer: bool = True,
    normalize_global: bool = True,
    progress: bool = True,
) -> PruneResult:
    """Michel et al. (2019) iterative head pruning, as used for the language masks of chapters 02 and 03.

    Each round recomputes importance under the current mask, switches off the ``k = max(1, int(step_frac·L·H))``
    least important heads still on (ties: lowest flat index first) and calls ``score_fn(model, mask)`` with the model
    already gated by that mask and in eval mode. Pruning stops when a score falls below ``threshold × base`` (base =
    the unpruned score), and the *previous* mask is returned. It also stops, returning the current mask, before a
    round that would exceed ``max_off`` heads off, leave no head on (≤ k heads on), or exceed ``max_rounds``; every
    round removes exactly ``k`` heads.
    """
    n_layers, n_heads = head_shape(model)
    n_total = n_layers * n_heads
    check_range("step_frac", step_frac, 0.0, 1.0)
    check_positive("step_frac", step_frac)
    check_range("threshold", threshold, 0.0, 1.0)
    if max_off is not None:
        check_int("max_off", max_off, 0, n_total)
    if max_rounds is not None:
        check_int("max_rounds", max_rounds, 0)
    if iter(imp_batches) is imp_batches:
        raise ValueError("parameter 'imp_batches' must be re-iterable (a list or DataLoader), got a one-shot iterator")
    k = max(1, int(step_frac * n_total))
    limit = n_total if max_off is None else max_off

    was_training = model.training
    model.eval()
    try:
        with head_gate(model) as gate:
            mask = torch.ones(n_layers, n_heads)
            with gate.using(mask):
                base = float(score_fn(model, mask))
            if not base > 0:
                raise ValueError(f"score_fn must be positive on the unpruned model (stop rule is relative), got {base}")
            rows = [{"round": 0, "n_off": 0, "score": base, "ratio": 1.0, "accepted": True}]
            masks = [mask.clone()]
            bar = tqdm(desc="head pruning", disable=not progress, total=max_rounds)
            while max_rounds is None or len(rows) - 1 < max_rounds:
                n_off = int((mask == 0).sum())
                if n_total - n_off <= k or n_off + k > limit:
                    break
                imp = head_importance(model, imp_batches, loss_fn, mask, normalize_layer, normalize_global)
                imp[mask == 0] = math.inf
                candidate = mask.flatten().clone()
                candidate[torch.argsort(imp.flatten(), stable=True)[:k]] = 0
                candidate = candidate.view(n_layers, n_heads)
                with gate.using(candidate):
                    score = float(score_fn(model, candidate))
                accepted = score >= threshold * base
                rows.append(
                    {
                        "round": len(rows),
                        "n_off": n_off + k,
                        "score": score,
                        "ratio": score / base,
                        "accepted": accepted,
                    }
                )
                masks.append(candidate.clone())
                bar.update()
                if not accepted:
                    break
                mask = candidate
            bar.close()
    finally:
        model.train(was_training)
    return PruneResult(mask=mask, history=pd.DataFrame(rows), masks=masks)


# ------------------------------------------------------------------------------------- random and composed masks
def compose(a: torch.Tensor, b: torch.Tensor, op: str = "or") -> torch.Tensor:
    """Union (``"or"``: a head is on if on in either) or intersection (``"and"``) of two binary masks."""
    check_choice("op", op, ["or", "and"])
    if a.shape != b.shape:
        raise ValueError(f"parameter 'b' must have the shape of 'a' {list(a.shape)}, got {list(b.shape)}")
    return torch.maximum(a, b) if op == "or" else torch.minimum(a, b)


def shuffle_mask(mask: torch.Tensor, seed: int) -> torch.Tensor:
    """Permute all entries of ``mask`` (same number of heads off, random positions; the "Shuffle" ablation)."""
    perm = torch.randperm(mask.numel(), generator=torch.Generator().manual_seed(seed))
    return mask.flatten()[perm].view_as(mask).clone()


def random_mask(
    n_layers: int, n_heads: int, n_off: int, seed: int, forbid_off: torch.Tensor | None = None
) -> torch.Tensor:
    """A mask with exactly ``n_off`` random heads off (R-n), never switching off a head where ``forbid_off`` is true.

    For the "Bad" ablation pass ``forbid_off = (real_mask == 0)``: only heads that the real mask keeps are disabled.
    """
    check_int("n_layers", n_layers, 1)
    check_int("n_heads", n_heads, 1)
    check_int("n_off", n_off, 0, n_layers * n_heads)
    forbid = torch.zeros(n_layers, n_heads, dtype=torch.bool)
    if forbid_off is not None:
        forbid = check_head_mask("forbid_off", forbid_off, (n_layers, n_heads)).bool()
    allowed = (~forbid).flatten().nonzero().flatten()
    if n_off > len(allowed):
        raise ValueError(f"parameter 'n_off' must be <= {len(allowed)} (heads not in forbid_off), got {n_off}")
    pick = allowed[torch.randperm(len(allowed), generator=torch.Generator().manual_seed(seed))[:n_off]]
    mask = torch.ones(n_layers * n_heads)
    mask[pick] = 0
    return mask.view(n_layers, n_heads)


class DynamicMask(nn.Module):
    """Learned mask with a straight-through estimator (SN_dyna of chapter 02; works for any mask shape).

    Scores start at ``init_on · init_mask + U(0, jitter)``. ``binary()`` switches off exactly ``k_off`` entries with
    the smallest scores (ties: lowest flat index first). ``forward()`` returns ``m + (s − s.detach())``: the value is
    exactly the binary mask and ``∂m/∂s`` is the identity.
    """

    def __init__(
        self, init_mask: torch.Tensor, k_off: int, init_on: float = 1e-2, jitter: float = 1e-4, seed: int = 0
    ) -> None:
        super().__init__()
        if not isinstance(init_mask, torch.Tensor) or init_mask.numel() == 0:
            raise ValueError("parameter 'init_mask' must be a non-empty binary torch.Tensor")
        if not bool(((init_mask == 0) | (init_mask == 1)).all()):
            raise ValueError("parameter 'init_mask' must be binary (0 = off, 1 = on)")
        check_int("k_off", k_off, 0, init_mask.numel())
        check_positive("init_on", init_on, allow_zero=True)
        check_positive("jitter", jitter, allow_zero=True)
        noise = torch.rand(init_mask.shape, generator=torch.Generator().manual_seed(seed)) * jitter
        self.k_off = k_off
        self.scores = nn.Parameter(init_on * init_mask.detach().float() + noise)

    def binary(self) -> torch.Tensor:
        """The hard mask: 0 at the ``k_off`` smallest scores, 1 elsewhere."""
        flat = self.scores.detach().flatten()
        mask = torch.ones_like(flat)
        mask[torch.argsort(flat, stable=True)[: self.k_off]] = 0
        return mask.view_as(self.scores)

    def forward(self) -> torch.Tensor:
        return self.binary() + (self.scores - self.scores.detach())


# --------------------------------------------------------------------------------------------------- overlap
def _pair(a: torch.Tensor, b: torch.Tensor, layer: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    if a.shape != b.shape:
        raise ValueError(f"parameter 'b' must have the shape of 'a' {list(a.shape)}, got {list(b.shape)}")
    if layer is not None:
        check_int("layer", layer, 0, a.shape[0] - 1)
        a, b = a[layer], b[layer]
    return a.detach().flatten().double(), b.detach().flatten().double()


def mask_cosine(a: torch.Tensor, b: torch.Tensor, layer: int | None = None) -> float:
    """Cosine of two masks as vectors (optionally one layer's row); NaN when either is all zero."""
    x, y = _pair(a, b, layer)
    norm = x.norm() * y.norm()
    return float(x @ y / norm) if norm > 0 else math.nan


def mask_jaccard(a: torch.Tensor, b: torch.Tensor, layer: int | None = None) -> float:
    """|a ∧ b| / |a ∨ b| of the heads that are on; NaN when both are all zero."""
    x, y = _pair(a, b, layer)
    union = torch.maximum(x, y).sum()
    return float(torch.minimum(x, y).sum() / union) if union > 0 else math.nan


def overlap_matrix(
    masks: Mapping[str, torch.Tensor], metric: str = "cosine", heads: str = "on", layer: int | None = None
) -> pd.DataFrame:
    """Pairwise overlap of language masks (rows and columns in the order of ``masks``).

    ``metric``: ``"cosine"``, ``"jaccard"``, ``"count"`` (|a ∧ b|) or ``"pct"`` (row-normalised 100·|a ∧ b|/|a|,
    asymmetric). ``heads="off"`` compares the sets of disabled heads instead of the enabled ones.
    """
    check_choice("metric", metric, ["cosine", "jaccard", "count", "pct"])
    check_choice("heads", heads, ["on", "off"])
    if not masks:
        raise ValueError("parameter 'masks' is empty")
    sets = {k: (m if heads == "on" else 1 - m) for k, m in masks.items()}

    def value(a: torch.Tensor, b: torch.Tensor) -> float:
        if metric == "cosine":
            return mask_cosine(a, b, layer)
        if metric == "jaccard":
            return mask_jaccard(a, b, layer)
        x, y = _pair(a, b, layer)
        both = float(torch.minimum(x, y).sum())
        if metric == "count":
            return both
        return 100.0 * both / float(x.sum()) if x.sum() > 0 else math.nan

    langs = list(sets)
    return pd.DataFrame([[value(sets[r], sets[c]) for c in langs] for r in langs], index=langs, columns=langs)


def head_usage(masks: Iterable[torch.Tensor]) -> torch.Tensor:
    """How many of the masks keep each head on (chapter 03, head-usage heatmap)."""
    stacked = list(masks)
    if not stacked:
        raise ValueError("parameter 'masks' is empty")
    return torch.stack([m.detach().float() for m in stacked]).sum(0)


# ---------------------------------------------------------------------------------------- unstructured masks
def magnitude_prune(
    model: nn.Module, frac: float = 0.1, state: Mapping[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """Global magnitude pruning of the attention weights: switch off ``round(frac · remaining)`` more Q/K/V/O weights.

    ``state`` is the previous call's result (entries already off stay off); embeddings, feed-forward blocks, biases
    and LayerNorms are never touched, nor is the model itself: the returned masks (True = kept) are applied with
    ``masked_weights``. Uses ``torch.nn.utils.prune.global_unstructured`` with ``L1Unstructured``, whose
    ``PruningContainer`` prunes a share of the *remaining* weights, on stand-in modules that share the weights'
    storage, so the model is not re-parametrised (its parameter names stay valid for SFT and checkpoints).
    """
    check_range("frac", frac, 0.0, 1.0)
    check_positive("frac", frac)
    names = {id(p): n for n, p in model.named_parameters()}
    targets = [
        (names[id(lin.weight)], lin.weight)
        for layer in attention_layers(model)
        for lin in (layer.query, layer.key, layer.value, layer.output)
    ]
    if state is not None:
        want = {n: tuple(w.shape) for n, w in targets}
        got = {n: tuple(m.shape) for n, m in state.items()}
        if got != want:
            raise ValueError("parameter 'state' must be a previous magnitude_prune result for this model")
    holders = []
    for name, weight in targets:
        holder = nn.Module()
        holder.register_parameter("weight", nn.Parameter(weight.detach(), requires_grad=False))
        if state is not None:
            prune.custom_from_mask(holder, "weight", state[name].to(weight.device))
        holders.append(holder)
    prune.global_unstructured([(h, "weight") for h in holders], pruning_method=prune.L1Unstructured, amount=float(frac))
    return {name: holder.weight_mask.bool() for (name, _), holder in zip(targets, holders, strict=True)}


def check_param_masks(name: str, model: nn.Module, param_masks: Mapping[str, torch.Tensor]) -> dict[str, nn.Parameter]:
    """Validate ``{parameter name: BoolTensor}`` against ``model``; return the model's parameters by name."""
    params = dict(model.named_parameters())
    for key, mask in param_masks.items():
        if key not in params:
            raise ValueError(f"parameter {name!r} names {key!r}, which is not a parameter of the model")
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != params[key].shape:
            raise ValueError(f"parameter {name!r}[{key!r}] must be a bool tensor of shape {list(params[key].shape)}")
    return params


@contextmanager
def masked_weights(model: nn.Module, param_masks: Mapping[str, torch.Tensor]) -> Iterator[nn.Module]:
    """Zero the masked-off entries (False) of the named parameters in place; restore exactly those entries on exit.

    Entries that stay on keep whatever happened to them inside the block (e.g. training steps).
    """
    params = check_param_masks("param_masks", model, param_masks)
    saved = []
    with torch.no_grad():
        for key, mask in param_masks.items():
            off = ~mask.to(params[key].device)
            saved.append((params[key], off, params[key][off].clone()))
            params[key][off] = 0
    try:
        yield model
    finally:
        with torch.no_grad():
            for param, off, values in saved:
                param[off] = values
