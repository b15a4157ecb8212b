"""Tests of mlmc.sft: exact masked optimizer steps and the multi-language SFT step (spec ch4 §8 test 4, ch5 test 6)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    XLMRobertaConfig,
    XLMRobertaForSequenceClassification,
)

from mlmc.heads import HeadGate, head_param_slices, param_masks_from_head_mask
from mlmc.sft import MaskedOptimizer, sft_step, union_param_masks
from mlmc.subnetworks import DynamicMask, magnitude_prune, masked_weights, random_mask

torch.set_num_threads(1)
TINY = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=50,
    max_position_embeddings=40, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
)  # fmt: skip


def classifier(seed=0, bert=False):
    torch.manual_seed(seed)
    if bert:
        return BertForSequenceClassification(BertConfig(**TINY))
    return XLMRobertaForSequenceClassification(XLMRobertaConfig(**TINY))


def batch(seed, b=4, t=6):
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(3, 50, (b, t), generator=g), "labels": torch.randint(0, 2, (b,), generator=g)}


def ce(model, b):
    return F.cross_entropy(model(input_ids=b["input_ids"]).logits, b["labels"])


def head_off(*heads):
    mask = torch.ones(2, 4)
    for layer, head in heads:
        mask[layer, head] = 0
    return mask


def snapshot(model, opt):
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    names = {id(p): n for n, p in model.named_parameters()}
    state = {}
    for p, st in opt.state.items():
        for k, v in st.items():
            if id(p) in names and torch.is_tensor(v) and v.shape == p.shape:
                state[(names[id(p)], k)] = v.clone()
    return params, state


def head_values(tensors, model, layer, head):
    """The entries of head (layer, head) in a dict of full-parameter tensors (parameters or optimizer state)."""
    return [
        t.narrow(d, s.start, s.stop - s.start)
        for n, d, s in head_param_slices(model)[(layer, head)]
        for t in [tensors[n]]
    ]


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def warm_up(model, opt, n=2):
    """Unmasked steps so that Adam moments / momentum buffers are non-zero everywhere."""
    for i in range(n):
        opt.zero_grad()
        ce(model, batch(100 + i)).backward()
        opt.step()


OPTIMIZERS = {
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.01),
    "adam-l2": lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=0.01),
    "sgd-momentum": lambda ps: torch.optim.SGD(ps, lr=1e-1, momentum=0.9, weight_decay=0.01),
}


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
@pytest.mark.parametrize("bert", [False, True])
def test_disabled_heads_stay_bit_identical_while_the_rest_changes(kind, bert):
    model = classifier(bert=bert).train()
    opt = OPTIMIZERS[kind](model.parameters())
    warm_up(model, opt)
    off = [(0, 1), (1, 3)]
    params, state = snapshot(model, opt)
    sft_step(model, {"xx": batch(1)}, {"xx": head_off(*off)}, opt, ce)
    params2, state2 = snapshot(model, opt)
    for layer in range(2):
        for head in range(4):
            frozen = same(head_values(params, model, layer, head), head_values(params2, model, layer, head))
            assert frozen == ((layer, head) in off), (layer, head)
            for key in {k for _, k in state}:
                st, st2 = ({n: v for (n, k), v in s.items() if k == key} for s in (state, state2))
                if all(n in st for n, _, _ in head_param_slices(model)[(layer, head)]):
                    moved = not same(head_values(st, model, layer, head), head_values(st2, model, layer, head))
                    assert moved == ((layer, head) not in off), (key, layer, head)
    shared = [n for n in params if "embeddings" in n or "intermediate" in n or "LayerNorm" in n]
    assert all(not torch.equal(params[n], params2[n]) for n in shared if params2[n].requires_grad)


@pytest.mark.parametrize("kind", ["adamw", "sgd-momentum"])
def test_plain_step_after_grad_masking_moves_masked_heads(kind):
    """The thesis caveat: with momentum / weight decay, gradient masking alone (exact=False) is not enough."""
    model = classifier().train()
    opt = OPTIMIZERS[kind](model.parameters())
    warm_up(model, opt)
    params, _ = snapshot(model, opt)
    sft_step(model, {"xx": batch(1)}, {"xx": head_off((0, 1))}, opt, ce, exact=False)
    params2, _ = snapshot(model, opt)
    assert not same(head_values(params, model, 0, 1), head_values(params2, model, 0, 1))


def test_plain_sgd_without_momentum_needs_no_restore():
    model = classifier().train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    params, _ = snapshot(model, opt)
    sft_step(model, {"xx": batch(1)}, {"xx": head_off((0, 1))}, opt, ce, exact=False)
    params2, _ = snapshot(model, opt)
    assert same(head_values(params, model, 0, 1), head_values(params2, model, 0, 1))


def test_two_language_step_updates_a_head_enabled_by_either_language():
    model = classifier().train()
    opt = OPTIMIZERS["adamw"](model.parameters())
    warm_up(model, opt)
    params, _ = snapshot(model, opt)
    masks = {"ar": head_off((0, 1), (1, 2)), "cs": head_off((0, 1), (1, 3))}
    losses = sft_step(model, {"ar": batch(1), "cs": batch(2)}, masks, opt, ce)
    params2, _ = snapshot(model, opt)
    assert set(losses) == {"ar", "cs"} and all(v > 0 for v in losses.values())
    assert same(head_values(params, model, 0, 1), head_values(params2, model, 0, 1))  # off in both
    assert not same(head_values(params, model, 1, 2), head_values(params2, model, 1, 2))  # on in cs
    assert not same(head_values(params, model, 1, 3), head_values(params2, model, 1, 3))  # on in ar


def test_step_gradient_is_the_mean_of_per_language_masked_gradients():
    model = classifier().train()
    masks = {"ar": head_off((0, 1)), "cs": head_off((1, 2))}
    batches = {"ar": batch(1), "cs": batch(2)}
    ref = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    with HeadGate(model) as gate:
        for lang in masks:
            model.zero_grad()
            with gate.using(masks[lang]):
                (ce(model, batches[lang]) / 2).backward()
            for n, p in model.named_parameters():
                if p.grad is not None:
                    ref[n] += p.grad
    model.zero_grad()
    seen = {}
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    sft_step(model, batches, masks, opt, ce, on_grad=lambda lang, g: seen.setdefault(lang, g))
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, ref[n], atol=1e-7), n
    assert set(seen) == {"ar", "cs"}
    for name, dim, sl in head_param_slices(model)[(0, 1)]:
        assert not seen["ar"][name].narrow(dim, sl.start, sl.stop - sl.start).any()
        assert seen["cs"][name].narrow(dim, sl.start, sl.stop - sl.start).any()


def test_unstructured_masks_forward_zeroed_and_frozen_when_off_everywhere():
    model = classifier().train()
    opt = OPTIMIZERS["adamw"](model.parameters())
    warm_up(model, opt)
    pm = magnitude_prune(model, 0.2)
    b = batch(1)
    with masked_weights(model, pm), torch.no_grad():
        expected = float(ce(model, b))
    params, _ = snapshot(model, opt)
    losses = sft_step(model, {"xx": b}, {"xx": pm}, opt, ce)
    params2, _ = snapshot(model, opt)
    assert losses["xx"] == pytest.approx(expected, abs=1e-6)
    for n, m in pm.items():
        assert torch.equal(params[n][~m], params2[n][~m]) and not torch.equal(params[n][m], params2[n][m])


def test_dynamic_mask_scores_train_through_the_step():
    model = classifier().train()
    dyn = DynamicMask(random_mask(2, 4, 2, seed=0), k_off=2, seed=0)
    opt = torch.optim.Adam([{"params": model.parameters()}, {"params": dyn.parameters(), "weight_decay": 0.0}], lr=1e-2)
    before = dyn.scores.detach().clone()
    params, _ = snapshot(model, opt)
    off = [tuple(x) for x in (dyn.binary() == 0).nonzero().tolist()]
    sft_step(model, {"xx": batch(1)}, {"xx": dyn()}, opt, ce)
    params2, _ = snapshot(model, opt)
    assert not torch.equal(dyn.scores.detach(), before)
    for layer, head in off:
        assert same(head_values(params, model, layer, head), head_values(params2, model, layer, head))


def test_masked_optimizer_and_union_helpers():
    model = classifier()
    a = param_masks_from_head_mask(model, head_off((0, 0), (1, 1)))
    b = param_masks_from_head_mask(model, head_off((0, 0)))
    union = union_param_masks([a, b])
    assert all(torch.equal(union[n], a[n] | b[n]) for n in a)
    assert union_param_masks([a, None]) == {}
    opt = MaskedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model)
    with pytest.raises(ValueError, match="'param_masks'"):
        opt.step({"nope": torch.ones(2, dtype=torch.bool)})
    with pytest.raises(ValueError, match="'param_masks'"):
        opt.step({"classifier.dense.weight": torch.ones(2, 2, dtype=torch.bool)})
    with pytest.raises(ValueError, match="'optimizer'"):
        MaskedOptimizer("adam", model)


def test_sft_step_bad_inputs_fail_before_compute():
    model = classifier()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match="'masks_by_lang'"):
        sft_step(model, {"ar": batch(1)}, {"cs": head_off()}, opt, ce)
    with pytest.raises(ValueError, match="masks_by_lang\\['ar'\\].*\\[2, 4\\]"):
        sft_step(model, {"ar": batch(1)}, {"ar": torch.ones(3, 4)}, opt, ce)
    with pytest.raises(ValueError, match="masks_by_lang\\['ar'\\].*binary"):
        sft_step(model, {"ar": batch(1)}, {"ar": torch.full((2, 4), 0.5)}, opt, ce)
    with pytest.raises(ValueError, match="'batches_by_lang'"):
        sft_step(model, {}, {}, opt, ce)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (full profile runs on GPU)")
def test_exact_step_on_cuda_with_head_and_cpu_unstructured_masks():
    model = classifier().cuda().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    warm_up_batches = {k: v.cuda() for k, v in batch(100).items()}
    opt.zero_grad()
    ce(model, warm_up_batches).backward()
    opt.step()
    pm = {n: m.cpu() for n, m in magnitude_prune(model, 0.2).items()}  # masks may live on the CPU
    params, _ = snapshot(model, opt)
    batches = {lang: {k: v.cuda() for k, v in batch(i).items()} for i, lang in enumerate(["ar", "cs"])}
    sft_step(model, batches, {"ar": head_off((0, 1)), "cs": pm}, opt, ce)
    params2, _ = snapshot(model, opt)
    assert not same(head_values(params, model, 0, 1), head_values(params2, model, 0, 1))  # on under the cs mask
    sft_step(model, batches, {"ar": head_off((0, 1)), "cs": head_off((0, 1))}, opt, ce)
    params3, _ = snapshot(model, opt)
    assert same(head_values(params2, model, 0, 1), head_values(params3, model, 0, 1))


def test_unstructured_masks_mask_each_languages_gradient_with_its_own_mask():
    """Two languages with different unstructured masks: p.grad is the mean of each language's gradient, computed
    under its zeroed weights and masked by its own mask (pins the per-language masking, not only the final union)."""
    model = classifier().train()
    masks = {"ar": magnitude_prune(model, 0.3), "cs": {n: ~m for n, m in magnitude_prune(model, 0.3).items()}}
    masks["cs"] = {n: m | (torch.rand(m.shape, generator=torch.Generator().manual_seed(1)) < 0.5)
                   for n, m in masks["cs"].items()}  # fmt: skip
    batches = {"ar": batch(1), "cs": batch(2)}
    ref = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for lang, pm in masks.items():
        model.zero_grad()
        with masked_weights(model, pm):
            ce(model, batches[lang]).backward()
        for n, p in model.named_parameters():
            if p.grad is not None:
                ref[n] += (p.grad.masked_fill(~pm[n], 0) if n in pm else p.grad) / 2
    model.zero_grad()
    seen = {}
    sft_step(model, batches, masks, torch.optim.SGD(model.parameters(), lr=0.0), ce,
             on_grad=lambda lang, g: seen.setdefault(lang, g))  # fmt: skip
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, ref[n], atol=1e-7), n
    for lang, pm in masks.items():
        for n, m in pm.items():
            assert not seen[lang][n][~m].any(), (lang, n)  # masked entries get no gradient from this language
            assert seen[lang][n][m].any(), (lang, n)
    # an entry off for ar but on for cs is updated by cs alone (half its gradient: the losses are averaged)
    n = next(iter(masks["ar"]))
    only_cs = ~masks["ar"][n] & masks["cs"][n]
    assert torch.allclose(model.get_parameter(n).grad[only_cs], seen["cs"][n][only_cs] / 2, atol=1e-7)
