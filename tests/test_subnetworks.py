"""Tests of mlmc.subnetworks (spec ch4 §8 tests 2, 3, 6, 7, 12, 15; spec ch5 §8 tests 2-5)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

from mlmc.heads import HeadGate
from mlmc.subnetworks import (
    DynamicMask,
    compose,
    head_importance,
    head_usage,
    iterative_head_pruning,
    magnitude_prune,
    mask_cosine,
    mask_jaccard,
    masked_weights,
    overlap_matrix,
    random_mask,
    shuffle_mask,
)

torch.set_num_threads(1)
TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    vocab_size=50,
    max_position_embeddings=40,
    initializer_range=0.2,
)  # fmt: skip  (a wider init than BERT's 0.02 gives head gradients far above finite-difference noise)


def classifier(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return XLMRobertaForSequenceClassification(XLMRobertaConfig(**TINY)).to(dtype).eval()


def make_batches(n=3, b=4, t=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [
        {"input_ids": torch.randint(3, 50, (b, t), generator=g), "labels": torch.randint(0, 2, (b,), generator=g)}
        for _ in range(n)
    ]


def ce(model, batch):
    return F.cross_entropy(model(input_ids=batch["input_ids"]).logits, batch["labels"])


def fd_grad(model, batch, gates, eps=1e-6):
    """|∂L/∂gate| by central finite differences (independent of autograd)."""
    grad = torch.zeros(gates.shape, dtype=torch.float64)
    with HeadGate(model) as gate, torch.no_grad():
        for idx in range(gates.numel()):
            up, down = gates.clone().flatten(), gates.clone().flatten()
            up[idx] += eps
            down[idx] -= eps
            gate.set(up.view_as(gates))
            lo_up = ce(model, batch)
            gate.set(down.view_as(gates))
            lo_down = ce(model, batch)
            grad.view(-1)[idx] = (lo_up - lo_down) / (2 * eps)
    return grad.abs()


# ------------------------------------------------------------------------------------------- importance (6)
def test_unnormalised_importance_equals_finite_difference_gradient():
    model, (batch,) = classifier(dtype=torch.float64), make_batches(1)
    imp = head_importance(model, [batch], ce, normalize_layer=False, normalize_global=False)
    ref = fd_grad(model, batch, torch.ones(2, 4, dtype=torch.float64))
    assert ref.min() > 1e-4  # every head matters in a random model
    assert torch.allclose(imp.double(), ref, rtol=1e-4, atol=1e-7)


def test_importance_is_mean_of_per_batch_absolute_gradients_under_a_mask():
    model, batches = classifier(dtype=torch.float64), make_batches(2)
    mask = torch.ones(2, 4, dtype=torch.float64)
    mask[1, 1] = 0
    imp = head_importance(model, batches, ce, mask=mask, normalize_layer=False, normalize_global=False)
    per_batch = [fd_grad(model, b, mask) for b in batches]
    assert torch.allclose(imp.double(), (per_batch[0] + per_batch[1]) / 2, rtol=1e-4, atol=1e-7)
    assert model.training is False and HeadGate.attached(model) is None
    assert all(p.grad is None for p in model.parameters())


def test_importance_normalisation_layer_then_global():
    model, batches = classifier(), make_batches(2)
    raw = head_importance(model, batches, ce, normalize_layer=False, normalize_global=False)
    by_layer = head_importance(model, batches, ce, normalize_global=False)
    assert torch.allclose(by_layer, raw / raw.norm(dim=1, keepdim=True), atol=1e-6)
    both = head_importance(model, batches, ce)
    expect = (by_layer - by_layer.min()) / (by_layer.max() - by_layer.min())
    assert torch.allclose(both, expect, atol=1e-6) and both.min() == 0 and both.max() == 1


def test_importance_on_a_model_where_only_one_head_writes_to_the_residual():
    model, batches = classifier(), make_batches(2)
    with torch.no_grad():
        for layer in model.roberta.encoder.layer:
            layer.attention.output.dense.weight.zero_()
        model.roberta.encoder.layer[0].attention.output.dense.weight[:, 8:16].normal_()
    imp = head_importance(model, batches, ce, normalize_layer=False, normalize_global=False)
    assert imp[0, 1] > 0
    assert torch.count_nonzero(imp) == 1


# ------------------------------------------------------------------------------------------- pruning (2, 7)
class MockScore:
    """Scores by call: base, then the given ratios; checks that the model is gated by the mask it receives."""

    def __init__(self, ratios):
        self.values, self.seen = [1.0, *ratios], []

    def __call__(self, model, gates):
        assert torch.equal(HeadGate.attached(model).gates, gates)
        self.seen.append(gates.clone())
        return self.values[min(len(self.seen) - 1, len(self.values) - 1)]


def test_stop_rule_returns_the_round_before_the_drop():
    model, batches = classifier(), make_batches(2)
    score = MockScore([0.99, 0.96, 0.90, 0.99])
    res = iterative_head_pruning(model, batches, score, ce, step_frac=0.25, progress=False)
    k = 2
    assert list(res.history["n_off"]) == [0, k, 2 * k, 3 * k]
    assert list(res.history["accepted"]) == [True, True, True, False]
    assert torch.equal(res.mask, res.masks[2]) and int((res.mask == 0).sum()) == 2 * k
    for prev, nxt in zip(res.masks, res.masks[1:], strict=False):  # nested, exactly k more heads off per round
        assert bool((nxt <= prev).all()) and int((prev - nxt).sum()) == k
    first = head_importance(model, batches, ce)
    assert set(torch.argsort(first.flatten(), stable=True)[:k].tolist()) == set(
        (res.masks[1].flatten() == 0).nonzero().flatten().tolist()
    )
    assert HeadGate.attached(model) is None
    again = iterative_head_pruning(model, batches, MockScore([0.99, 0.96, 0.90]), ce, step_frac=0.25, progress=False)
    assert torch.equal(again.mask, res.mask)  # deterministic


def test_max_off_max_rounds_and_head_insensitive_model():
    model, batches = classifier(), make_batches(1)
    flat = MockScore([])  # always 1.0: the model never gets worse
    res = iterative_head_pruning(model, batches, flat, ce, step_frac=0.25, progress=False)
    assert list(res.history["n_off"]) == [0, 2, 4, 6] and int(res.mask.sum()) == 2  # stops at <= k heads on
    res = iterative_head_pruning(model, batches, MockScore([]), ce, step_frac=0.25, max_off=5, progress=False)
    assert int((res.mask == 0).sum()) == 4  # a 3rd round would exceed max_off
    res = iterative_head_pruning(model, batches, MockScore([]), ce, step_frac=0.25, max_rounds=1, progress=False)
    assert int((res.mask == 0).sum()) == 2 and len(res.history) == 2
    res = iterative_head_pruning(model, batches, MockScore([]), ce, max_rounds=0, progress=False)
    assert bool((res.mask == 1).all())
    res = iterative_head_pruning(model, batches, MockScore([]), ce, max_rounds=3, progress=False)
    assert list(res.history["n_off"]) == [0, 1, 2, 3]  # default step: max(1, int(0.1 * 8)) = 1 head per round


def test_pruning_bad_parameters_fail_before_any_compute():
    model, batches = classifier(), make_batches(1)

    def never(model, gates):
        raise AssertionError("score_fn must not run")

    for kwargs, name in [
        ({"max_off": 9}, "max_off"),
        ({"max_rounds": -1}, "max_rounds"),
        ({"step_frac": 0.0}, "step_frac"),
        ({"threshold": 1.5}, "threshold"),
    ]:
        with pytest.raises(ValueError, match=f"'{name}'"):
            iterative_head_pruning(model, batches, never, ce, progress=False, **kwargs)
    with pytest.raises(ValueError, match="'imp_batches'"):
        iterative_head_pruning(model, iter(batches), never, ce, progress=False)
    with pytest.raises(ValueError, match="'mask'.*\\[2, 4\\]"):
        head_importance(model, batches, ce, mask=torch.ones(4, 2))
    with pytest.raises(ValueError, match="'batches'"):
        head_importance(model, [], ce)


# ----------------------------------------------------------------------------- random and dynamic masks (2, 12)
def test_random_masks_have_exact_sparsity_and_respect_forbid_off():
    for seed in range(5):
        mask = random_mask(12, 12, 20, seed)
        assert int((mask == 0).sum()) == 20 and set(mask.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(random_mask(12, 12, 20, 3), random_mask(12, 12, 20, 3))
    assert not torch.equal(random_mask(12, 12, 20, 3), random_mask(12, 12, 20, 4))
    real = random_mask(12, 12, 30, seed=9)
    for seed in range(5):
        bad = random_mask(12, 12, 20, seed, forbid_off=real == 0)
        assert int((bad == 0).sum()) == 20
        assert not bool(((bad == 0) & (real == 0)).any())
    with pytest.raises(ValueError, match="'n_off'"):
        random_mask(12, 12, 145, 0)
    with pytest.raises(ValueError, match="'n_off'.*forbid_off"):
        random_mask(12, 12, 115, 0, forbid_off=real == 0)
    with pytest.raises(ValueError, match="'forbid_off'"):
        random_mask(12, 12, 5, 0, forbid_off=torch.zeros(4, 4))


def test_shuffle_keeps_the_count_and_is_seeded():
    mask = random_mask(4, 8, 7, seed=1)
    a, b = shuffle_mask(mask, 0), shuffle_mask(mask, 0)
    assert torch.equal(a, b) and a.sum() == mask.sum() and not torch.equal(a, mask)
    assert not torch.equal(shuffle_mask(mask, 1), a)


def test_dynamic_mask_exact_k_off_even_with_all_scores_tied():
    n = 12 * 12
    dyn = DynamicMask(torch.ones(12, 12), k_off=math.floor(0.2 * n), jitter=0.0)
    assert len(dyn.scores.unique()) == 1
    assert int((dyn.binary() == 0).sum()) == 28
    init = random_mask(4, 8, 6, seed=2)
    dyn = DynamicMask(init, k_off=6, seed=5)
    assert torch.equal(dyn.binary(), init)  # init_on dominates the jitter: starts at the static mask
    assert torch.equal(DynamicMask(init, 6, seed=5).scores, dyn.scores)
    with pytest.raises(ValueError, match="'k_off'"):
        DynamicMask(init, k_off=33)
    with pytest.raises(ValueError, match="'init_mask'"):
        DynamicMask(torch.full((2, 2), 0.5), k_off=1)


def test_straight_through_estimator():
    dyn = DynamicMask(random_mask(3, 4, 2, seed=0), k_off=3, seed=1)
    m = dyn()
    assert torch.equal(m.detach(), dyn.binary()) and set(m.detach().unique().tolist()) == {0.0, 1.0}
    c = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    (c * m).sum().backward()
    assert torch.equal(dyn.scores.grad, c)


# ---------------------------------------------------------------------------------------- compose, overlap (3)
def test_compose_is_elementwise_max_and_min():
    a, b = random_mask(4, 8, 10, 0), random_mask(4, 8, 12, 1)
    union, inter = compose(a, b, "or"), compose(a, b, "and")
    assert torch.equal(union, torch.max(a, b)) and torch.equal(inter, torch.min(a, b))
    assert bool((inter <= a).all() and (a <= union).all())
    with pytest.raises(ValueError, match="'op'"):
        compose(a, b, "xor")
    with pytest.raises(ValueError, match="'b'"):
        compose(a, torch.ones(2, 2))


def test_overlap_metrics():
    a, b = random_mask(4, 8, 10, 0), random_mask(4, 8, 12, 1)
    assert mask_cosine(a, a) == pytest.approx(1.0) and mask_jaccard(a, a) == 1.0
    assert mask_cosine(a, b) == pytest.approx(mask_cosine(b, a))
    both = float((a * b).sum())
    assert mask_cosine(a, b) == pytest.approx(both / math.sqrt(float(a.sum() * b.sum())))
    assert mask_jaccard(a, b) == pytest.approx(both / float(torch.max(a, b).sum()))
    assert mask_cosine(a, 1 - a) == 0 and mask_jaccard(a, 1 - a) == 0
    z = a.clone()
    z[1] = 0
    assert math.isnan(mask_cosine(z, b, layer=1)) and mask_cosine(z, b, layer=0) == pytest.approx(
        mask_cosine(a[0:1], b[0:1])
    )
    # the thesis's XNLI example: de (74 heads on) lies inside en (102 on)
    en = torch.zeros(12, 12)
    en.view(-1)[:102] = 1
    de = torch.zeros(12, 12)
    de.view(-1)[:74] = 1
    pct = overlap_matrix({"de": de, "en": en}, metric="pct")
    assert pct.loc["de", "en"] == 100.0 and pct.loc["en", "de"] == pytest.approx(72.549, abs=1e-3)
    cnt = overlap_matrix({"de": de, "en": en}, metric="count", heads="off")
    assert cnt.loc["de", "en"] == 42 and cnt.loc["de", "de"] == 70
    cos = overlap_matrix({"a": a, "b": b, "c": shuffle_mask(a, 3)})
    assert list(cos.index) == ["a", "b", "c"] and cos.loc["a", "b"] == pytest.approx(mask_cosine(a, b))
    assert torch.equal(head_usage([a, b, en[:4, :8]]), a + b + en[:4, :8])
    with pytest.raises(ValueError, match="'metric'"):
        overlap_matrix({"a": a}, metric="dice")


# ------------------------------------------------------------------------------------- magnitude pruning (15)
def test_magnitude_pruning_removes_a_share_of_the_remaining_attention_weights():
    model = classifier()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    attn = {
        n for n in before if n.endswith(("query.weight", "key.weight", "value.weight", "attention.output.dense.weight"))
    }
    state, n_total = None, sum(before[n].numel() for n in attn)
    for _ in range(3):
        new = magnitude_prune(model, 0.1, state)
        assert set(new) == attn  # never embeddings, FFN, biases, LayerNorm or classifier
        kept_before = n_total if state is None else sum(int(m.sum()) for m in state.values())
        kept_now = sum(int(m.sum()) for m in new.values())
        assert kept_before - kept_now == round(0.1 * kept_before)
        if state is not None:
            assert all(bool((new[n] <= state[n]).all()) for n in attn)  # nested
        removed = torch.cat([before[n][~new[n] & (state[n] if state else True)].abs() for n in attn])
        kept = torch.cat([before[n][new[n]].abs() for n in attn])
        assert removed.max() <= kept.min()  # the smallest magnitudes among the remaining weights go
        state = new
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # the model is untouched
    assert [n for n, _ in model.named_parameters()] == list(before)
    with pytest.raises(ValueError, match="'state'"):
        magnitude_prune(model, 0.1, {"roberta.embeddings.word_embeddings.weight": torch.ones(50, 32, dtype=bool)})
    with pytest.raises(ValueError, match="'frac'"):
        magnitude_prune(model, 1.5)


def test_masked_weights_zeroes_then_restores_exactly():
    model, (batch,) = classifier(), make_batches(1)
    masks = magnitude_prune(model, 0.3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with masked_weights(model, masks):
        for n, m in masks.items():
            p = dict(model.named_parameters())[n]
            assert bool((p[~m] == 0).all()) and torch.equal(p[m], before[n][m])
        inside = ce(model, batch)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert not torch.isclose(inside, ce(model, batch))
    with pytest.raises(ValueError, match="'param_masks'"), masked_weights(model, {"nope": torch.ones(1, dtype=bool)}):
        pass
