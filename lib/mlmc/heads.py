"""Attention-head gates and the parameters each head owns (chapters 02 and 03).

Transformers 5 removed ``head_mask``, so heads are gated here with forward pre-hooks on each layer's attention output
projection (``layer.N.attention.output.dense`` in BERT, RoBERTa and XLM-R): the hook reshapes the merged context
``[B, T, H·d_h]`` to ``[B, T, H, d_h]`` and multiplies head ``h`` of layer ``l`` by ``gates[l, h]``. This works with
eager and SDPA attention, for the bare encoders and for any module that wraps one (``*ForSequenceClassification``,
``*ForMaskedLM``, a parser holding the encoder as an attribute).

Head ``h`` owns rows ``h·d_h:(h+1)·d_h`` of the query, key and value weights and biases and the same columns of the
output projection; embeddings, feed-forward blocks, LayerNorms, the output bias and task heads are shared.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

_LAYER_RE = re.compile(r"^(?P<stack>(?:.*\.)?layer)\.(?P<idx>\d+)\.attention$")
SUPPORTED = "BERT-style encoders (BertModel, RobertaModel, XLMRobertaModel and their *For* wrappers)"


@dataclass(frozen=True)
class AttentionLayer:
    """The four projections of one self-attention block and its head geometry."""

    prefix: str
    query: nn.Linear
    key: nn.Linear
    value: nn.Linear
    output: nn.Linear
    n_heads: int
    head_dim: int


def attention_layers(model: nn.Module) -> list[AttentionLayer]:
    """Locate the self-attention blocks of a BERT-style encoder inside ``model``, in layer order.

    Raises ``ValueError`` naming ``model`` when no (or more than one) such encoder stack is found.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"parameter 'model' must be a torch.nn.Module, got {type(model).__name__}")
    found: dict[str, dict[int, tuple[str, nn.Module]]] = {}
    for name, module in model.named_modules():
        match = _LAYER_RE.match(name)
        if match is None:
            continue
        self_attn, out = getattr(module, "self", None), getattr(module, "output", None)
        if not all(isinstance(getattr(self_attn, p, None), nn.Linear) for p in ("query", "key", "value")):
            continue
        if not isinstance(getattr(out, "dense", None), nn.Linear):
            continue
        found.setdefault(match["stack"], {})[int(match["idx"])] = (name, module)
    if not found:
        raise ValueError(
            f"parameter 'model' ({type(model).__name__}) has no attention blocks of the form "
            f"'layer.N.attention.self.{{query,key,value}}' + 'layer.N.attention.output.dense'; supported: {SUPPORTED}"
        )
    if len(found) > 1:
        raise ValueError(f"parameter 'model' holds several encoder stacks {sorted(found)}; gate one encoder at a time")
    (stack,) = found.values()
    if sorted(stack) != list(range(len(stack))):
        raise ValueError(f"parameter 'model' has non-contiguous layer indices {sorted(stack)}")
    layers = []
    for idx in range(len(stack)):
        name, module = stack[idx]
        n_heads = getattr(module.self, "num_attention_heads", None)
        width = module.output.dense.in_features
        if not isinstance(n_heads, int) or n_heads < 1 or width % n_heads or module.self.value.out_features != width:
            raise ValueError(
                f"parameter 'model': layer {idx} ({name}) has an unsupported head layout; supported: {SUPPORTED}"
            )
        layers.append(
            AttentionLayer(
                name,
                module.self.query,
                module.self.key,
                module.self.value,
                module.output.dense,
                n_heads,
                width // n_heads,
            )
        )
    if len({(a.n_heads, a.head_dim) for a in layers}) != 1:
        raise ValueError("parameter 'model' has layers with different head counts; gates need one [L, H] grid")
    return layers


def head_shape(model: nn.Module) -> tuple[int, int]:
    """``(n_layers, n_heads)`` of the encoder inside ``model``."""
    layers = attention_layers(model)
    return len(layers), layers[0].n_heads


def check_head_mask(name: str, mask: Any, shape: tuple[int, int] | None = None, binary: bool = True) -> torch.Tensor:
    """Validate an ``[L, H]`` mask (or gate) tensor and return it detached; ``binary`` requires values in {0, 1}."""
    if not isinstance(mask, torch.Tensor):
        raise ValueError(
            f"parameter {name!r} must be a torch.Tensor of shape [layers, heads], got {type(mask).__name__}"
        )
    if mask.dim() != 2 or (shape is not None and tuple(mask.shape) != tuple(shape)):
        want = list(shape) if shape is not None else "[layers, heads]"
        raise ValueError(
            f"parameter {name!r} must have shape {want} (layers × heads of the model), got {list(mask.shape)}"
        )
    values = mask.detach()
    if binary and not bool(((values == 0) | (values == 1)).all()):
        raise ValueError(f"parameter {name!r} must be binary (0 = head off, 1 = head on)")
    return values


class _GateHook:
    """Forward pre-hook of one layer's output projection; reads the current gates from its ``HeadGate``."""

    def __init__(self, gate: HeadGate, layer: int) -> None:
        self.gate, self.layer = gate, layer

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        gates = self.gate.gates
        if gates is None:
            return None
        context, *rest = args
        g = gates[self.layer].to(dtype=context.dtype, device=context.device)
        n_heads = g.shape[0]
        split = context.reshape(*context.shape[:-1], n_heads, context.shape[-1] // n_heads)
        return ((split * g.unsqueeze(-1)).reshape(context.shape), *rest)


class HeadGate:
    """Multiply each attention head's context vector by a gate (chapters 02 and 03).

    ``gate = HeadGate(model)`` attaches the hooks; ``gate.set(gates)`` with a ``[L, H]`` tensor (binary masks,
    fractional values, or a tensor that requires grad — gradients then flow to it) or ``None`` (no gating). Use
    ``with HeadGate(model) as gate:`` to remove the hooks on exit and ``with gate.using(mask):`` for a temporary mask.
    A model carries at most one gate; ``HeadGate.attached(model)`` returns it. A ``copy.deepcopy`` of a gated model
    carries its own copy of the gate (same gates tensor, independent ``set``/``remove``).
    """

    def __init__(self, model: nn.Module) -> None:
        layers = attention_layers(model)
        if HeadGate.attached(model) is not None:
            raise ValueError(
                "parameter 'model' already has a HeadGate; use HeadGate.attached(model) or remove it first"
            )
        self.model, self._layers = model, layers
        self.gates: torch.Tensor | None = None
        for idx, layer in enumerate(layers):
            layer.output.register_forward_pre_hook(_GateHook(self, idx))

    @staticmethod
    def attached(model: nn.Module) -> HeadGate | None:
        """The ``HeadGate`` currently hooked into ``model``, or ``None`` (also for models that cannot be gated)."""
        for module in model.modules():
            for hook in module._forward_pre_hooks.values():
                if isinstance(hook, _GateHook):
                    return hook.gate
        return None

    @property
    def n_layers(self) -> int:
        return len(self._layers)

    @property
    def n_heads(self) -> int:
        return self._layers[0].n_heads

    def set(self, gates: torch.Tensor | None) -> HeadGate:
        """Gate heads with ``gates[l, h]`` from now on (``None`` switches gating off)."""
        if gates is not None:
            check_head_mask("gates", gates, (self.n_layers, self.n_heads), binary=False)
        self.gates = gates
        return self

    @contextmanager
    def using(self, gates: torch.Tensor | None) -> Iterator[HeadGate]:
        """Temporarily set ``gates``; the previous gates come back on exit."""
        previous = self.gates
        self.set(gates)
        try:
            yield self
        finally:
            self.gates = previous

    def remove(self) -> None:
        """Detach the hooks from the model (the gate can no longer be used)."""
        for layer in self._layers:
            hooks = layer.output._forward_pre_hooks
            for key in [k for k, h in hooks.items() if isinstance(h, _GateHook) and h.gate is self]:
                del hooks[key]
        self.gates = None

    def __enter__(self) -> HeadGate:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __deepcopy__(self, memo: dict[int, Any]) -> HeadGate:
        # The gates are an input (possibly a non-leaf STE tensor, which cannot be deep-copied): share them.
        new = copy.copy(self)
        memo[id(self)] = new
        new.model = copy.deepcopy(self.model, memo)
        new._layers = copy.deepcopy(self._layers, memo)
        return new


@contextmanager
def head_gate(model: nn.Module) -> Iterator[HeadGate]:
    """Yield the model's attached ``HeadGate``, or attach a temporary one that is removed on exit."""
    gate = HeadGate.attached(model)
    if gate is not None:
        yield gate
        return
    with HeadGate(model) as gate:
        yield gate


def head_param_slices(model: nn.Module) -> dict[tuple[int, int], list[tuple[str, int, slice]]]:
    """Per ``(layer, head)``: ``(parameter name, dim, slice)`` of its Q/K/V weight rows, biases and output columns."""
    names = {id(p): n for n, p in model.named_parameters()}
    slices: dict[tuple[int, int], list[tuple[str, int, slice]]] = {}
    for idx, layer in enumerate(attention_layers(model)):
        owned = [
            (t, 0) for lin in (layer.query, layer.key, layer.value) for t in (lin.weight, lin.bias) if t is not None
        ]
        owned.append((layer.output.weight, 1))
        for h in range(layer.n_heads):
            part = slice(h * layer.head_dim, (h + 1) * layer.head_dim)
            slices[(idx, h)] = [(names[id(t)], dim, part) for t, dim in owned]
    return slices


def param_masks_from_head_mask(model: nn.Module, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Boolean masks (True = trainable entry) for every head-owned parameter; parameters not listed are shared.

    ``mask`` is a binary ``[L, H]`` tensor (a straight-through mask is read through its detached values).
    """
    values = check_head_mask("mask", mask, head_shape(model))
    params = dict(model.named_parameters())
    out: dict[str, torch.Tensor] = {}
    for (layer, head), owned in head_param_slices(model).items():
        for name, dim, part in owned:
            if name not in out:
                out[name] = torch.ones_like(params[name], dtype=torch.bool)
            if values[layer, head] == 0:
                out[name].narrow(dim, part.start, part.stop - part.start).fill_(False)
    return out
