"""Tests of mlmc.heads: hook-based head gates, head-owned parameter slices and masks (spec ch4 §8 tests 1 and 5)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    GPT2Config,
    GPT2Model,
    XLMRobertaConfig,
    XLMRobertaForMaskedLM,
    XLMRobertaForSequenceClassification,
    XLMRobertaModel,
)

from mlmc.heads import HeadGate, head_gate, head_param_slices, head_shape, param_masks_from_head_mask

torch.set_num_threads(1)
TINY = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=50,
    max_position_embeddings=40,
)  # fmt: skip
D_H = 8


def xlmr(cls=XLMRobertaModel, attn="sdpa", seed=0):
    torch.manual_seed(seed)
    return cls(XLMRobertaConfig(**TINY, attn_implementation=attn)).eval()


def bert(cls=BertModel, seed=0):
    torch.manual_seed(seed)
    return cls(BertConfig(**TINY)).eval()


class Wrapper(nn.Module):
    """A parser-like module that holds an encoder as an attribute."""

    def __init__(self):
        super().__init__()
        self.encoder = xlmr()
        self.out = nn.Linear(32, 3)

    def forward(self, input_ids, attention_mask=None):
        return self.out(self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state)


def inputs(seed=1, b=3, t=7):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 50, (b, t), generator=g)
    am = torch.ones(b, t, dtype=torch.long)
    am[0, 5:] = 0
    return {"input_ids": ids, "attention_mask": am}


def out(model, batch):
    y = model(**batch)
    return y if isinstance(y, torch.Tensor) else (y.logits if hasattr(y, "logits") else y.last_hidden_state)


MODELS = {
    "xlmr": lambda: xlmr(),
    "xlmr-eager": lambda: xlmr(attn="eager"),
    "xlmr-cls": lambda: xlmr(XLMRobertaForSequenceClassification),
    "xlmr-mlm": lambda: xlmr(XLMRobertaForMaskedLM),
    "bert": lambda: bert(),
    "bert-cls": lambda: bert(BertForSequenceClassification),
    "wrapper": Wrapper,
}


class ManualZero:
    """Independent gating: a hand-written hook that scales one head's context slice."""

    def __init__(self, model, layer, head, value=0.0):
        dense = [m for n, m in model.named_modules() if n.endswith(f"layer.{layer}.attention.output.dense")][0]
        self.handle = dense.register_forward_pre_hook(self.hook)
        self.head, self.value = head, value

    def hook(self, module, args):
        x = args[0].clone()
        x[..., self.head * D_H : (self.head + 1) * D_H] *= self.value
        return (x,)


@pytest.mark.parametrize("kind", list(MODELS))
def test_all_ones_gates_reproduce_ungated_output_exactly(kind):
    model, batch = MODELS[kind](), inputs()
    ref = out(model, batch)
    with HeadGate(model) as gate:
        assert (gate.n_layers, gate.n_heads) == head_shape(model) == (2, 4)
        gate.set(torch.ones(2, 4))
        assert torch.equal(out(model, batch), ref)
        gate.set(None)
        assert torch.equal(out(model, batch), ref)
    assert HeadGate.attached(model) is None
    assert torch.equal(out(model, batch), ref)


@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize(("layer", "head", "value"), [(0, 1, 0.0), (1, 3, 0.0), (1, 0, 0.5)])
def test_gate_equals_manual_scaling_of_the_context_slice(kind, layer, head, value):
    model, batch = MODELS[kind](), inputs()
    manual = ManualZero(model, layer, head, value)
    ref = out(model, batch)
    manual.handle.remove()
    gates = torch.ones(2, 4)
    gates[layer, head] = value
    with HeadGate(model) as gate, gate.using(gates):
        got = out(model, batch)
    assert torch.equal(got, ref)
    assert not torch.equal(got, out(model, batch))  # gating did change the output


def _perturbed(model, layer, head, which):
    model = copy.deepcopy(model)
    att = dict(model.named_modules())
    prefix = [n for n in att if n.endswith(f"layer.{layer}.attention")][0]
    sl = slice(head * D_H, (head + 1) * D_H)
    with torch.no_grad():
        lin = att[f"{prefix}.self.{which}"] if which != "output" else att[f"{prefix}.output.dense"]
        g = torch.Generator().manual_seed(head)
        if which == "output":
            lin.weight[:, sl] += torch.randn(lin.weight[:, sl].shape, generator=g)
        else:
            lin.weight[sl] += torch.randn(lin.weight[sl].shape, generator=g)
            lin.bias[sl] += torch.randn(lin.bias[sl].shape, generator=g)
    return model


@pytest.mark.parametrize("which", ["query", "key", "value", "output"])
def test_disabled_head_parameters_do_not_matter_but_others_do(which):
    base, batch = xlmr(), inputs()
    gates = torch.ones(2, 4)
    gates[0, 2] = 0
    with HeadGate(base) as gate, gate.using(gates):
        ref = out(base, batch)
    same, other = _perturbed(base, 0, 2, which), _perturbed(base, 0, 1, which)
    with HeadGate(same) as gate, gate.using(gates):
        assert torch.equal(out(same, batch), ref)
    with HeadGate(other) as gate, gate.using(gates):
        assert (out(other, batch) - ref).abs().max() > 1e-3


def test_gradient_flows_to_gates_that_require_grad():
    model, batch = xlmr(), inputs()
    gates = torch.full((2, 4), 0.7, requires_grad=True)
    with HeadGate(model) as gate, gate.using(gates):
        out(model, batch).pow(2).sum().backward()
    assert gates.grad is not None and gates.grad.shape == (2, 4) and bool((gates.grad != 0).all())


@pytest.mark.parametrize("kind", ["xlmr", "bert", "wrapper"])
def test_forward_mask_gives_exactly_zero_gradients_to_disabled_heads(kind):
    model, batch = MODELS[kind](), inputs()
    mask = torch.ones(2, 4)
    mask[0, 1] = mask[1, 3] = 0
    params = dict(model.named_parameters())
    with HeadGate(model) as gate, gate.using(mask):
        out(model, batch).pow(2).sum().backward()
    for (layer, head), owned in head_param_slices(model).items():
        assert len(owned) == 7  # q/k/v weight + bias, output columns
        for name, dim, sl in owned:
            grad = params[name].grad.narrow(dim, sl.start, sl.stop - sl.start)
            if mask[layer, head] == 0:
                assert bool((grad == 0).all()), (name, layer, head)
            else:
                assert bool((grad != 0).any()), (name, layer, head)


def test_param_slices_name_the_right_tensors():
    model = Wrapper()
    slices = head_param_slices(model)
    assert sorted(slices) == [(layer, h) for layer in range(2) for h in range(4)]
    names = [n for n, _, _ in slices[(1, 2)]]
    assert names == [
        f"encoder.encoder.layer.1.attention.self.{p}.{t}" for p in ("query", "key", "value") for t in ("weight", "bias")
    ] + ["encoder.encoder.layer.1.attention.output.dense.weight"]
    assert [(d, s) for _, d, s in slices[(1, 2)]] == [(0, slice(16, 24))] * 6 + [(1, slice(16, 24))]


def test_param_masks_count_and_location():
    model = xlmr()
    mask = torch.ones(2, 4)
    mask[1, 2] = 0
    masks = param_masks_from_head_mask(model, mask)
    assert set(masks) == {n for owned in head_param_slices(model).values() for n, _, _ in owned}
    n_false = sum(int((~m).sum()) for m in masks.values())
    assert n_false == 3 * (D_H * 32 + D_H) + 32 * D_H
    assert not masks["encoder.layer.1.attention.output.dense.weight"][:, 16:24].any()
    assert masks["encoder.layer.1.attention.output.dense.weight"][:, :16].all()
    assert not masks["encoder.layer.1.attention.self.value.bias"][16:24].any()
    assert all(bool(m.all()) for n, m in masks.items() if ".layer.0." in n)
    # a straight-through mask is read through its values
    ste = mask + (torch.zeros(2, 4, requires_grad=True) - 0)
    assert all(torch.equal(masks[n], m) for n, m in param_masks_from_head_mask(model, ste).items())


def test_bad_inputs_raise_clear_errors():
    model = xlmr()
    with pytest.raises(ValueError, match="'model'"):
        HeadGate(GPT2Model(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=50, n_positions=40)))
    with pytest.raises(ValueError, match="'model'"):
        head_shape(nn.Linear(3, 3))
    with HeadGate(model) as gate:
        with pytest.raises(ValueError, match="'gates'.*\\[2, 4\\]"):
            gate.set(torch.ones(3, 4))
        with pytest.raises(ValueError, match="already has a HeadGate"):
            HeadGate(model)
    with pytest.raises(ValueError, match="'mask'.*\\[2, 4\\]"):
        param_masks_from_head_mask(model, torch.ones(2, 5))
    with pytest.raises(ValueError, match="'mask'.*binary"):
        param_masks_from_head_mask(model, torch.full((2, 4), 0.5))


def test_head_gate_context_reuses_or_attaches_and_deepcopy_is_independent():
    model, batch = xlmr(), inputs()
    mask = torch.ones(2, 4)
    mask[0, 0] = 0
    with head_gate(model) as temp:
        assert HeadGate.attached(model) is temp
    assert HeadGate.attached(model) is None
    gate = HeadGate(model).set(mask)
    with head_gate(model) as same:
        assert same is gate
    ref = out(model, batch)
    clone = copy.deepcopy(model)
    clone_gate = HeadGate.attached(clone)
    assert clone_gate is not None and clone_gate is not gate
    assert torch.equal(out(clone, batch), ref)  # the clone is gated the same way
    clone_gate.remove()
    assert HeadGate.attached(clone) is None and HeadGate.attached(model) is gate
    assert torch.equal(out(model, batch), ref)
    gate.remove()
