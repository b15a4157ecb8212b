"""First-order MAML with per-language subnetworks and few-shot adaptation (Ch. 02 / thesis Ch. 4: META, few-shot test).

The learner never copies the model: adapted weights ``phi`` are a dict of tensors that
:func:`torch.func.functional_call` substitutes for the model's parameters during a forward pass. Forward hooks
registered on the model (such as the head gates of :mod:`mlmc.heads`) therefore stay in force while ``phi`` is used.

Two kinds of restriction can be applied per language:

* a *head mask* through a ``gate`` object with ``.set(mask)`` (the forward pass multiplies disabled heads by 0);
* *parameter masks* ``{name: BoolTensor}`` (True = trainable) that zero the gradient of frozen entries before each
  step, so plain SGD and a fresh Adam leave them bit-identical.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from mlmc.errors import check_choice, check_int, check_positive, check_subset

LossFn = Callable[[nn.Module, Any], Tensor]
Lrs = float | Mapping[str, float]
ParamMasks = Mapping[str, Tensor]


def model_loss(model: nn.Module, batch: Any) -> Tensor:
    """Default loss: the ``.loss`` of the model's output (as returned by :class:`mlmc.parsing.BiaffineParser`)."""
    return model(batch).loss


@contextlib.contextmanager
def gate_scope(gate: Any = None, mask: Any = None) -> Iterator[None]:
    """Run a block with ``mask`` applied through ``gate`` (Ch. 02: each language under its own head subnetwork).

    * ``mask`` given: ``gate.using(mask)`` when the gate has it (:class:`mlmc.heads.HeadGate`; the previous gates
      come back on exit), else ``gate.set(mask)`` on entry and ``gate.set(None)`` on exit. A callable mask (e.g. a
      ``DynamicMask`` module) is called on entry, so its straight-through graph is fresh for each use.
    * no ``mask`` and ``gate`` is a context manager without ``.set``: the block runs inside ``with gate``.
    * otherwise the gate is left as the caller configured it.
    """
    if mask is None:
        if gate is not None and not hasattr(gate, "set") and hasattr(gate, "__enter__"):
            with gate:
                yield
        else:
            yield
        return
    if gate is None or not hasattr(gate, "set"):
        raise ValueError(
            "parameter 'gate' must be an object with .set(mask) (e.g. mlmc.heads.HeadGate) to apply a mask"
        )
    value = mask() if callable(mask) else mask
    if hasattr(gate, "using"):
        with gate.using(value):
            yield
        return
    gate.set(value)
    try:
        yield
    finally:
        gate.set(None)


def trainable_params(model: nn.Module) -> dict[str, Tensor]:
    """The model's parameters that require gradients, by name."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


class _BoundLoss(nn.Module):
    """Wraps ``loss_fn(model, batch)`` as a module so that ``functional_call`` can swap the model's parameters."""

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: Any) -> Tensor:
        return self.loss_fn(self.model, batch)


def functional_loss(model: nn.Module, params: Mapping[str, Tensor], batch: Any, loss_fn: LossFn = model_loss) -> Tensor:
    """``loss_fn(model, batch)`` evaluated with ``params`` in place of the model's parameters of the same names."""
    swapped = {f"model.{name}": t for name, t in params.items()}
    return functional_call(_BoundLoss(model, loss_fn), swapped, (batch,))


def _lr_of(name: str, lrs: Lrs) -> float:
    if not isinstance(lrs, Mapping):
        return float(lrs)
    prefix = max((p for p in lrs if name.startswith(p)), key=len, default=None)
    if prefix is None:
        raise ValueError(
            f"parameter 'lrs' has no prefix matching parameter {name!r}; keys are {sorted(lrs)} (add '' as a default)"
        )
    return float(lrs[prefix])


def _check_lrs(lrs: Lrs) -> None:
    values = lrs.values() if isinstance(lrs, Mapping) else [lrs]
    for value in values:
        check_positive("lrs", value, allow_zero=True)


def _check_param_masks(param_masks: ParamMasks | None, params: Mapping[str, Tensor]) -> None:
    if not param_masks:
        return
    check_subset("param_masks", list(param_masks), list(params))
    for name, m in param_masks.items():
        if m.shape != params[name].shape or m.dtype != torch.bool:
            raise ValueError(
                f"parameter 'param_masks' entry {name!r} must be a bool tensor of shape {tuple(params[name].shape)}, "
                f"got {m.dtype} {tuple(m.shape)}"
            )


def inner_adapt(
    model: nn.Module,
    batch: Any,
    k: int,
    lrs: Lrs,
    loss_fn: LossFn = model_loss,
    *,
    gate: Any = None,
    mask: Any = None,
    param_masks: ParamMasks | None = None,
    opt: str = "sgd",
    params: Mapping[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Take ``k`` optimiser steps on the same ``batch`` from the model's weights; return the adapted weights ``phi``.

    Used for the inner loop of META and for few-shot fine-tuning on a test language under the mask of its
    typologically nearest training language (plain SGD for META, ``opt="adam"`` with a fresh state for NONEP).
    ``lrs`` is one learning rate or ``{name_prefix: lr}`` (longest prefix wins, e.g. ``{"encoder.": 1e-5, "":
    5e-4}`` for the encoder vs the decoder and scalar mix). The model itself is not modified; ``phi`` holds leaf
    tensors that require grad (start from ``params`` instead of the model's weights if given).
    """
    check_int("k", k, min_value=0)
    check_choice("opt", opt, ["sgd", "adam"])
    _check_lrs(lrs)
    start = trainable_params(model) if params is None else params
    _check_param_masks(param_masks, start)
    phi = {name: t.detach().clone().requires_grad_(True) for name, t in start.items()}
    by_lr: dict[float, list[Tensor]] = {}
    for name, t in phi.items():
        by_lr.setdefault(_lr_of(name, lrs), []).append(t)
    groups = [{"params": ts, "lr": lr} for lr, ts in by_lr.items()]
    optimizer = torch.optim.SGD(groups) if opt == "sgd" else torch.optim.Adam(groups)
    names, tensors = list(phi), list(phi.values())
    with gate_scope(gate, mask):
        for _ in range(k):
            loss = functional_loss(model, phi, batch, loss_fn)
            grads = torch.autograd.grad(loss, tensors, allow_unused=True)
            for name, t, g in zip(names, tensors, grads, strict=True):
                g = torch.zeros_like(t) if g is None else g
                if param_masks and name in param_masks:
                    g = g * param_masks[name]
                t.grad = g
            optimizer.step()
    for t in tensors:
        t.grad = None
    return phi


def fomaml_outer_step(
    model: nn.Module,
    tasks: Mapping[str, tuple[Any, Any]],
    gates_by_lang: Mapping[str, Any] | None,
    k: int,
    inner_lrs: Lrs,
    outer_opt: torch.optim.Optimizer,
    loss_fn: LossFn = model_loss,
    *,
    gate: Any = None,
    param_masks_by_lang: Mapping[str, ParamMasks] | None = None,
    tracker: Any = None,
    max_grad_norm: float | None = None,
) -> float:
    """One first-order MAML episode over languages; returns the mean query loss (Ch. 02, META-FULL/SN).

    ``tasks[lang] = (support, query)``. For each language, ``phi = inner_adapt(model, support, k, inner_lrs)`` under
    the language's head mask ``gates_by_lang[lang]`` (through ``gate``) and parameter masks; then the query loss at
    ``phi`` is back-propagated under the same mask, and its gradient with respect to ``phi`` (masked like the inner
    steps) is averaged over languages into the model's ``.grad`` before one ``outer_opt.step()`` — the first-order
    approximation ``theta <- theta - beta * mean_l grad_phi L(phi_l, query_l)``. A callable mask (dynamic mask)
    receives the first-order query gradient through its straight-through estimator. ``tracker.add(lang, grad)``
    receives each language's flattened query gradient (scaled by 1/#languages, which leaves cosines unchanged).
    """
    if not tasks:
        raise ValueError("parameter 'tasks' must map at least one language to (support, query)")
    langs = list(tasks)
    gates_by_lang = gates_by_lang or {}
    param_masks_by_lang = param_masks_by_lang or {}
    check_subset("gates_by_lang", list(gates_by_lang), langs, min_size=0)
    check_subset("param_masks_by_lang", list(param_masks_by_lang), langs, min_size=0)
    if max_grad_norm is not None:
        check_positive("max_grad_norm", max_grad_norm)
    theta = trainable_params(model)
    outer_opt.zero_grad()
    total = 0.0
    for lang in langs:
        support, query = tasks[lang]
        mask = gates_by_lang.get(lang)
        pmasks = param_masks_by_lang.get(lang)
        phi = inner_adapt(model, support, k, inner_lrs, loss_fn, gate=gate, mask=mask, param_masks=pmasks, opt="sgd")
        with gate_scope(gate, mask):
            query_loss = functional_loss(model, phi, query, loss_fn)
            (query_loss / len(langs)).backward()
        total += float(query_loss.detach())
        grads = []
        for name, p in theta.items():
            g = phi[name].grad
            g = torch.zeros_like(p) if g is None else g
            if pmasks and name in pmasks:
                g = g * pmasks[name]
            p.grad = g.clone() if p.grad is None else p.grad + g
            grads.append(g.reshape(-1))
        if tracker is not None:
            tracker.add(lang, torch.cat(grads))
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(list(theta.values()), max_grad_norm)
    outer_opt.step()
    return total / len(langs)
