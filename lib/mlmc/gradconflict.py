"""Gradient conflicts between languages: pairwise cosines of per-language gradients summed over a window (Ch. 02 /
thesis Ch. 4, Table 4.6).

Following Yu et al. (2020) and the thesis, two languages conflict when the cosine of their gradients is negative.
Per language, the flattened gradient of its loss is *summed* over a window of iterations (50 in the thesis) before
the cosines are taken; the window's statistics are the share of conflicting pairs and the mean pairwise cosine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
import torch
from torch import Tensor, nn

from mlmc.errors import check_int

_CHUNK = 1 << 22


def flat_grad(
    model: nn.Module, loss: Tensor, params: Sequence[Tensor] | None = None, retain_graph: bool = False
) -> Tensor:
    """Gradient of ``loss`` w.r.t. ``params`` (default: the model's trainable parameters) as one flat vector.

    Parameters the loss does not reach contribute zeros, so vectors of different languages line up.
    """
    params = [p for p in model.parameters() if p.requires_grad] if params is None else list(params)
    if not params:
        raise ValueError("parameter 'params' must contain at least one tensor that requires grad")
    grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=retain_graph)
    return torch.cat(
        [(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads, strict=True)]
    )


def _as_vector(grad: Tensor | Mapping[str, Tensor]) -> Tensor:
    if isinstance(grad, Mapping):
        return torch.cat([g.detach().reshape(-1) for g in grad.values()])
    return grad.detach().reshape(-1)


def pairwise_cosine(vecs: Mapping[str, Tensor]) -> pd.DataFrame:
    """Language x language cosine matrix of flat gradient vectors (float64; 0 where a vector is all zeros).

    The Gram matrix is accumulated over chunks, so even mBERT-sized vectors need no stacked float64 copy.
    """
    names = list(vecs)
    if len(names) < 2:
        raise ValueError(f"parameter 'vecs' needs at least 2 languages, got {names}")
    flat = [_as_vector(vecs[n]) for n in names]
    sizes = {v.numel() for v in flat}
    if len(sizes) != 1:
        raise ValueError(f"parameter 'vecs' must hold vectors of one length, got lengths {sorted(sizes)}")
    size = sizes.pop()
    gram = torch.zeros(len(names), len(names), dtype=torch.float64)
    for start in range(0, size, _CHUNK):
        block = torch.stack([v[start : start + _CHUNK].to(torch.float64).cpu() for v in flat])
        gram += block @ block.T
    norms = gram.diagonal().sqrt()
    denom = torch.outer(norms, norms)
    cos = torch.where(denom > 0, gram / denom.clamp_min(torch.finfo(torch.float64).tiny), torch.zeros_like(gram))
    return pd.DataFrame(cos.numpy(), index=names, columns=names)


def conflict_stats(vecs: Mapping[str, Tensor]) -> dict[str, object]:
    """``pct_conflict`` (percentage of language pairs with cosine < 0), ``mean_cos`` over pairs, and ``pairwise``."""
    cos = pairwise_cosine(vecs)
    names = list(cos.index)
    pairs = [cos.iat[i, j] for i in range(len(names)) for j in range(i + 1, len(names))]
    return {
        "pct_conflict": 100.0 * sum(c < 0 for c in pairs) / len(pairs),
        "mean_cos": float(sum(pairs) / len(pairs)),
        "pairwise": cos,
    }


class GradientConflictTracker:
    """Sums each language's gradient over a window, then records the window's conflict statistics (Table 4.6).

    ``add(lang, grad)`` accumulates; once every language seen in the window has ``window`` gradients the window is
    closed automatically and its statistics are returned (otherwise ``None``). ``flush()`` closes a partial window.
    """

    def __init__(self, window: int = 50) -> None:
        self.window = check_int("window", window, min_value=1)
        self._sums: dict[str, Tensor] = {}
        self._counts: dict[str, int] = {}
        self._rows: list[dict[str, float]] = []

    def add(self, lang: str, grad: Tensor | Mapping[str, Tensor]) -> dict[str, object] | None:
        """Add one gradient (flat tensor, or a dict of tensors flattened in its order) for ``lang``."""
        vec = _as_vector(grad)
        if self._sums:
            size = next(iter(self._sums.values())).numel()
            if vec.numel() != size:
                raise ValueError(f"parameter 'grad' has {vec.numel()} entries, earlier gradients had {size}")
        if lang in self._sums:
            self._sums[lang] += vec
        else:
            self._sums[lang] = vec.clone()
        self._counts[lang] = self._counts.get(lang, 0) + 1
        if len(self._counts) >= 2 and min(self._counts.values()) >= self.window:
            return self.flush()
        return None

    def flush(self) -> dict[str, object] | None:
        """Close the current window: statistics of the summed gradients (``None`` if the window is empty)."""
        if not self._sums:
            return None
        if len(self._sums) < 2:
            raise ValueError(f"a window needs gradients of at least 2 languages, got {list(self._sums)}")
        stats = conflict_stats(self._sums)
        stats["window"] = len(self._rows)
        stats["n_steps"] = max(self._counts.values())
        self._rows.append({k: stats[k] for k in ("window", "n_steps", "pct_conflict", "mean_cos")})
        self._sums, self._counts = {}, {}
        return stats

    def history(self) -> pd.DataFrame:
        """One row per closed window: ``window``, ``n_steps``, ``pct_conflict`` (%), ``mean_cos``."""
        return pd.DataFrame(self._rows, columns=["window", "n_steps", "pct_conflict", "mean_cos"])
