"""Sparse fine-tuning: each language batch trains only its own subnetwork (chapters 02 and 03).

``sft_step`` forwards each language's batch under that language's mask, averages the losses and takes one optimizer
step in which an entry is updated only if some contributing language enables it. Masking gradients alone is not
enough: Adam moments built up by earlier steps and (decoupled) weight decay move entries whose gradient is zero.
``MaskedOptimizer`` therefore zeroes the masked gradient entries, saves the masked entries of each parameter and of
every optimizer-state tensor shaped like it (``exp_avg``, ``exp_avg_sq``, ``momentum_buffer``, …), steps, and writes
the saved values back: masked entries are bit-identical after the step, for any element-wise torch optimizer.
Scalar state (Adam's ``step`` count) is per parameter tensor and still advances.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from contextlib import ExitStack
from typing import Any

import torch
from torch import nn

from mlmc.heads import HeadGate, check_head_mask, head_gate, head_shape, param_masks_from_head_mask
from mlmc.subnetworks import LossFn, check_param_masks, masked_weights

# A language's mask: None (full model), a binary [L, H] head mask (possibly a straight-through DynamicMask output),
# or unstructured per-parameter masks {name: BoolTensor} (True = entry on), e.g. from ``magnitude_prune``.
LangMask = torch.Tensor | Mapping[str, torch.Tensor] | None


class MaskedOptimizer:
    """Wrap a torch optimizer so that ``step(param_masks)`` leaves every masked-off entry exactly unchanged.

    ``param_masks`` maps parameter names of ``model`` to bool tensors (True = may change); unlisted parameters step
    normally. Hand LR schedulers the wrapped ``.optimizer``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"parameter 'optimizer' must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        self.optimizer, self.model = optimizer, model

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self, param_masks: Mapping[str, torch.Tensor] | None = None) -> None:
        params = check_param_masks("param_masks", self.model, param_masks or {})
        frozen = []
        with torch.no_grad():
            for name, mask in (param_masks or {}).items():
                param = params[name]
                off = ~mask.to(param.device)
                if not bool(off.any()):
                    continue
                if param.grad is not None:
                    param.grad[off] = 0
                state = self.optimizer.state.get(param, {})
                saved_state = {k: v[off].clone() for k, v in state.items() if _entrywise(v, param)}
                frozen.append((param, off, param[off].clone(), saved_state))
        self.optimizer.step()
        with torch.no_grad():
            for param, off, values, saved_state in frozen:
                param[off] = values
                for key, tensor in self.optimizer.state.get(param, {}).items():
                    if _entrywise(tensor, param):
                        # State created by this very step started from zero gradients on these entries: reset to 0.
                        tensor[off] = saved_state.get(key, 0)


def _entrywise(value: Any, param: torch.Tensor) -> bool:
    return isinstance(value, torch.Tensor) and value.shape == param.shape


def union_param_masks(masks: Iterable[Mapping[str, torch.Tensor] | None]) -> dict[str, torch.Tensor]:
    """Entries enabled by at least one mask; a ``None`` (full model) or a name missing from some mask enables all."""
    masks = list(masks)
    if not masks or any(m is None for m in masks):
        return {}
    names = set.intersection(*(set(m) for m in masks))
    return {n: torch.stack([m[n].to(masks[0][n].device) for m in masks]).any(0) for n in sorted(names)}


def sft_step(
    model: nn.Module,
    batches_by_lang: Mapping[str, Any],
    masks_by_lang: Mapping[str, LangMask],
    opt: torch.optim.Optimizer | MaskedOptimizer,
    loss_fn: LossFn,
    gate: HeadGate | None = None,
    exact: bool = True,
    on_grad: Callable[[str, dict[str, torch.Tensor]], None] | None = None,
) -> dict[str, float]:
    """One sparse fine-tuning step over several languages (chapter 02 §2.2; chapter 03 calls it with one language).

    For each language: forward ``loss_fn(model, batch)`` under its mask (head gates, or masked-off weights zeroed),
    take the gradient of every parameter the optimizer holds (so ``DynamicMask`` scores in the optimizer are trained
    through the straight-through estimator) and multiply it by the language's parameter mask. The gradients are
    averaged over languages (i.e. the losses are averaged: a head on in k of n languages receives the sum of those k
    gradients / n), then one step is taken. ``exact=True`` keeps entries masked for every language bit-identical
    (``MaskedOptimizer``); ``exact=False`` is the thesis's plain step after gradient masking, where optimizer momentum
    and weight decay still move them. ``on_grad(lang, {name: grad})`` receives each language's masked, unscaled
    gradient (e.g. for gradient-conflict tracking). Returns each language's loss. Training mode is the caller's.
    """
    if not isinstance(batches_by_lang, Mapping) or not batches_by_lang:
        raise ValueError("parameter 'batches_by_lang' must be a non-empty dict {language: batch}")
    if not isinstance(masks_by_lang, Mapping) or set(masks_by_lang) != set(batches_by_lang):
        raise ValueError(
            f"parameter 'masks_by_lang' must have the languages of batches_by_lang {sorted(batches_by_lang)}, "
            f"got {sorted(masks_by_lang) if isinstance(masks_by_lang, Mapping) else type(masks_by_lang).__name__}"
        )
    uses_heads = any(isinstance(m, torch.Tensor) for m in masks_by_lang.values())
    shape = head_shape(model) if uses_heads else None
    param_masks: dict[str, dict[str, torch.Tensor] | None] = {}
    for lang, mask in masks_by_lang.items():
        if mask is None:
            param_masks[lang] = None
        elif isinstance(mask, torch.Tensor):
            check_head_mask(f"masks_by_lang[{lang!r}]", mask, shape)
            param_masks[lang] = param_masks_from_head_mask(model, mask.detach())
        elif isinstance(mask, Mapping):
            check_param_masks(f"masks_by_lang[{lang!r}]", model, mask)
            param_masks[lang] = dict(mask)
        else:
            raise ValueError(f"parameter 'masks_by_lang[{lang!r}]' must be None, an [L, H] tensor or a dict of masks")
    optimizer = opt.optimizer if isinstance(opt, MaskedOptimizer) else opt
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError(f"parameter 'opt' must be a torch optimizer or MaskedOptimizer, got {type(opt).__name__}")

    params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
    names = {id(p): n for n, p in model.named_parameters()}
    optimizer.zero_grad(set_to_none=True)
    losses: dict[str, float] = {}
    n_langs = len(batches_by_lang)
    with ExitStack() as stack:
        if gate is None and (uses_heads or HeadGate.attached(model) is not None):
            gate = stack.enter_context(head_gate(model))
        for lang, batch in batches_by_lang.items():
            mask, pmask = masks_by_lang[lang], param_masks[lang]
            with ExitStack() as inner:
                if gate is not None:
                    inner.enter_context(gate.using(mask if isinstance(mask, torch.Tensor) else None))
                if isinstance(mask, Mapping):
                    inner.enter_context(masked_weights(model, mask))
                loss = loss_fn(model, batch)
                grads = torch.autograd.grad(loss, params, allow_unused=True)
            named: dict[str, torch.Tensor] = {}
            for param, grad in zip(params, grads, strict=True):
                if grad is None:
                    continue
                name = names.get(id(param))
                if pmask is not None and name in pmask:
                    grad = grad.masked_fill(~pmask[name].to(grad.device), 0)
                if name is not None:
                    named[name] = grad
                scaled = grad / n_langs
                param.grad = scaled if param.grad is None else param.grad + scaled
            if on_grad is not None:
                on_grad(lang, named)
            losses[lang] = float(loss.detach())
    if exact:
        MaskedOptimizer(optimizer, model).step(union_param_masks(param_masks.values()))
    else:
        optimizer.step()
    return losses
