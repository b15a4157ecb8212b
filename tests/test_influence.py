"""Tests of mlmc.influence (spec ch. 3 §8): TracIn against manual autograd, closed forms and captum's TracInCP."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset
from torch import nn
from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

from mlmc.influence import (
    GaussianProjector,
    as_examples,
    pairwise_scores,
    per_example_grads,
    select_params,
    self_influence,
    topk,
    tracin,
)

VOCAB, PAD, LR = 50, 1, 0.1


def tiny_model(seed: int = 0) -> XLMRobertaForSequenceClassification:
    torch.manual_seed(seed)
    cfg = XLMRobertaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=40,
        num_labels=2,
        pad_token_id=PAD,
        hidden_dropout_prob=0.2,
        attention_probs_dropout_prob=0.2,
    )
    return XLMRobertaForSequenceClassification(cfg).double().eval()


def make_examples(n: int, seed: int) -> list[tuple[torch.Tensor, int]]:
    """Distinct random ``<s> ... </s>`` sequences of 3-12 tokens (some repeated ids) with random labels."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        body = torch.randint(3, VOCAB, (int(torch.randint(3, 13, (1,), generator=gen)),), generator=gen)
        out.append(
            (torch.cat([torch.tensor([0]), body, torch.tensor([2])]), int(torch.randint(0, 2, (1,), generator=gen)))
        )
    return out


TRAIN, TEST = make_examples(24, 1), make_examples(6, 2)


def manual_grads(model: nn.Module, examples, names: list[str] | None = None) -> torch.Tensor:
    """Per-example gradients by plain autograd, one example at a time, flattened in named_parameters order."""
    model.eval()
    rows = []
    for x, y in examples:
        model.zero_grad()
        nn.functional.cross_entropy(model(input_ids=x[None]).logits, torch.tensor([y])).backward()
        params = [(k, p) for k, p in model.named_parameters() if names is None or k in names]
        rows.append(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for _, p in params]))
    return torch.stack(rows)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three checkpoints of the tiny model, two SGD steps apart, saved with save_pretrained."""
    root = tmp_path_factory.mktemp("ckpts")
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    paths = []
    for e in range(3):
        model.train()
        for x, y in TRAIN[2 * e : 2 * e + 2]:
            opt.zero_grad()
            nn.functional.cross_entropy(model(input_ids=x[None]).logits, torch.tensor([y])).backward()
            opt.step()
        paths.append(root / f"epoch-{e + 1}")
        model.save_pretrained(paths[-1])
    return paths


@pytest.fixture(scope="module")
def loaded(checkpoints: list[Path]) -> list[nn.Module]:
    from transformers import AutoModelForSequenceClassification

    return [AutoModelForSequenceClassification.from_pretrained(p).eval() for p in checkpoints]


# ------------------------------------------------------------------------------------------- math (spec §8)


def test_single_checkpoint_dot_equals_lr_times_manual_inner_product(checkpoints, loaded):
    inf = tracin(checkpoints[:1], TRAIN, TEST, normalize="none", lr_weights=[0.3], progress=False)
    g_train, g_test = manual_grads(loaded[0], TRAIN), manual_grads(loaded[0], TEST)
    assert loaded[0].dtype == torch.float64 and inf.per_epoch.dtype == torch.float64
    torch.testing.assert_close(inf.total, 0.3 * g_test @ g_train.T, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(inf.train_norms[0], g_train.norm(dim=1), rtol=1e-10, atol=1e-12)


def test_cosine_is_bounded_and_sums_over_checkpoints(checkpoints, loaded):
    inf = tracin(checkpoints, TRAIN, TEST, progress=False)
    n_e = len(checkpoints)
    assert inf.per_epoch.shape == (n_e, len(TEST), len(TRAIN))
    assert inf.per_epoch.abs().max() <= 1 + 1e-12 and inf.total.abs().max() <= n_e + 1e-12
    torch.testing.assert_close(inf.per_epoch.sum(0), inf.total)
    g_train, g_test = manual_grads(loaded[1], TRAIN), manual_grads(loaded[1], TEST)
    cos = (g_test / g_test.norm(dim=1, keepdim=True)) @ (g_train / g_train.norm(dim=1, keepdim=True)).T
    torch.testing.assert_close(inf.per_epoch[1], cos, rtol=1e-10, atol=1e-12)


def test_train_only_divides_by_the_training_norm(loaded):
    inf = tracin(loaded[:1], TRAIN, TEST, normalize="train_only", progress=False)
    g_train, g_test = manual_grads(loaded[0], TRAIN), manual_grads(loaded[0], TEST)
    torch.testing.assert_close(inf.total, (g_test @ g_train.T) / g_train.norm(dim=1), rtol=1e-10, atol=1e-12)


def test_self_influence(checkpoints, loaded):
    n_e = len(checkpoints)
    cos = tracin(checkpoints, TRAIN, TRAIN, progress=False)
    torch.testing.assert_close(cos.total.diagonal(), torch.full((len(TRAIN),), float(n_e), dtype=torch.float64))
    assert torch.equal(topk(cos.total, 1)[:, 0], torch.arange(len(TRAIN)))  # unique examples: own top-1 proponent
    dot = self_influence(checkpoints, TRAIN, lr_weights=[1.0, 2.0, 0.5], progress=False)
    expected = sum(w * manual_grads(m, TRAIN).square().sum(1) for w, m in zip([1.0, 2.0, 0.5], loaded, strict=True))
    assert (dot > 0).all()
    torch.testing.assert_close(dot, expected, rtol=1e-10, atol=1e-12)
    full = tracin(checkpoints, TRAIN, TRAIN, normalize="none", lr_weights=[1.0, 2.0, 0.5], progress=False)
    torch.testing.assert_close(full.total.diagonal(), dot, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(
        self_influence(checkpoints, TRAIN, normalize="cosine", progress=False), cos.total.diagonal()
    )


@pytest.mark.parametrize("normalize", ["cosine", "none"])
def test_symmetry(checkpoints, normalize):
    ab = tracin(checkpoints, TRAIN, TEST, normalize=normalize, progress=False).total
    ba = tracin(checkpoints, TEST, TRAIN, normalize=normalize, progress=False).total
    torch.testing.assert_close(ab, ba.T, rtol=1e-10, atol=1e-12)


def test_vmap_buckets_loop_and_padding_agree(loaded):
    model = loaded[2]
    reference = manual_grads(model, TRAIN)
    for kwargs in ({}, {"pad_multiple": 0}, {"batch_size": 5}, {"method": "loop"}, {"method": "vmap"}):
        torch.testing.assert_close(per_example_grads(model, TRAIN, **kwargs), reference, rtol=0, atol=1e-10)
    # a padded table with an attention mask, against HF's own masked forward pass on the padded rows
    ids = nn.utils.rnn.pad_sequence([x for x, _ in TRAIN], batch_first=True, padding_value=PAD)
    mask = (torch.arange(ids.shape[1])[None] < torch.tensor([len(x) for x, _ in TRAIN])[:, None]).long()
    table = Dataset.from_dict(
        {"input_ids": ids.tolist(), "attention_mask": mask.tolist(), "label": [y for _, y in TRAIN]}
    )
    masked = []
    for i, (_, y) in enumerate(TRAIN):
        model.zero_grad()
        logits = model(input_ids=ids[i : i + 1], attention_mask=mask[i : i + 1]).logits
        nn.functional.cross_entropy(logits, torch.tensor([y])).backward()
        masked.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(per_example_grads(model, table), torch.stack(masked), rtol=0, atol=1e-6)


def test_pad_token_inside_a_sequence_gets_no_embedding_gradient(loaded):
    examples = [(torch.tensor([0, 5, PAD, 7, 5, 2]), 1), (torch.tensor([0, PAD, 9, 2]), 0)] + TRAIN[:3]
    torch.testing.assert_close(
        per_example_grads(loaded[1], examples), manual_grads(loaded[1], examples), rtol=0, atol=1e-10
    )


def test_select_params_gives_slices_of_the_full_gradient(loaded):
    model = loaded[0]
    full = per_example_grads(model, TRAIN)
    offsets, start = {}, 0
    for name, p in model.named_parameters():
        offsets[name] = (start, start + p.numel())
        start += p.numel()
    for spec in (["classifier.*", "*.layer.1.attention.*"], "no_word_embeddings", ["*word_embeddings*"]):
        names = list(select_params(model, spec))
        cols = torch.cat([torch.arange(*offsets[n]) for n in names])
        torch.testing.assert_close(per_example_grads(model, TRAIN, spec), full[:, cols], rtol=0, atol=1e-12)
        torch.testing.assert_close(
            per_example_grads(model, TRAIN, spec), manual_grads(model, TRAIN, names), rtol=0, atol=1e-10
        )
    assert "roberta.embeddings.word_embeddings.weight" not in select_params(model, "no_word_embeddings")
    assert len(select_params(model, "all")) == len(list(model.parameters()))


def test_rescaled_training_gradient_dominates_dot_but_not_cosine(loaded):
    g_train, g_test = per_example_grads(loaded[1], TRAIN), per_example_grads(loaded[1], TEST + make_examples(30, 3))
    j = 5
    scaled = g_train.clone()
    scaled[j] *= 100
    positive = (g_test @ g_train[j]) > 0
    assert positive.sum() >= 5
    top_dot = topk(pairwise_scores(g_test, scaled, "none"), 1)[:, 0]
    assert (top_dot[positive] == j).float().mean() >= 0.9
    assert (topk(pairwise_scores(g_test, g_train, "none"), 1)[:, 0][positive] == j).float().mean() < 0.5
    before = torch.argsort(pairwise_scores(g_test, g_train, "cosine"), dim=1, stable=True)
    after = torch.argsort(pairwise_scores(g_test, scaled, "cosine"), dim=1, stable=True)
    assert torch.equal(before, after)


def test_projection_is_unbiased_and_deterministic(loaded):
    g = per_example_grads(loaded[0], TRAIN[:2])
    g1, g2 = g[0:1], g[0:1] + 0.5 * g[1:2]
    pairs = torch.cat([g1, g2])
    samples = torch.tensor([(lambda p: p[0] @ p[1])(GaussianProjector(32, seed=s)(pairs)).item() for s in range(200)])
    exact = (g1 @ g2.T).item()
    se = samples.std().item() / 200**0.5
    assert abs(samples.mean().item() - exact) <= 3 * se
    assert samples.std() < abs(exact)  # the spread is that of a d=32 projection, not of an unscaled one
    proj = GaussianProjector(16, seed=7, chunk=1000)
    assert torch.equal(proj(g), GaussianProjector(16, seed=7, chunk=1000, cache_entries=0)(g))
    assert not torch.equal(proj(g), GaussianProjector(16, seed=8, chunk=1000)(g))
    dense = GaussianProjector(16, seed=7, chunk=1000, structure="dense")
    assert torch.equal(dense(g), proj(g))  # a plain tensor is one flat block, whatever the structure
    inf = tracin(loaded[:1], TRAIN, TEST, normalize="none", projector=dense, progress=False)
    torch.testing.assert_close(
        inf.total, dense(per_example_grads(loaded[0], TEST)) @ dense(per_example_grads(loaded[0], TRAIN)).T
    )


def kron_reference(proj: GaussianProjector, model: nn.Module, g: torch.Tensor) -> torch.Tensor:
    """The Kronecker projection written out densely: per parameter, kron(P1, P2) (or the dense block of a
    vector) applied to its slice of the flat gradient, summed over parameters."""
    out, start, vectors = torch.zeros(len(g), proj.dim, dtype=g.dtype), 0, []
    for k, p in enumerate(model.parameters()):
        block = g[:, start : start + p.numel()]
        start += p.numel()
        if p.ndim < 2:
            vectors.append(block)
        else:
            p1, p2 = proj._factors(k, p.shape[0], p.numel() // p.shape[0], block)
            out += block @ torch.kron(p1, p2).T
    flat = torch.cat(vectors, dim=1)  # all vectors as one zero-padded r x c matrix
    r = int(np.ceil(flat.shape[1] ** 0.5))
    c = -(-flat.shape[1] // r)
    flat = nn.functional.pad(flat, (0, r * c - flat.shape[1]))
    a, b = proj.factors
    p1, p2 = proj._gaussian((3, 0), a, r, a, flat, True), proj._gaussian((3, 1), b, c, b, flat, True)
    return out + flat @ torch.kron(p1, p2).T


def test_kronecker_projection_equals_its_dense_form_for_every_batch_size(loaded):
    proj = GaussianProjector(12, seed=3)  # factors 3 x 4
    assert proj.factors == (3, 4)
    exact = per_example_grads(loaded[0], TRAIN[:9])  # the word embeddings are projected from the sparse form
    reference = kron_reference(proj, loaded[0], exact)
    for batch_size in (1, 4, 9):
        got = per_example_grads(loaded[0], TRAIN[:9], projector=proj, batch_size=batch_size)
        torch.testing.assert_close(got, reference, rtol=1e-10, atol=1e-12)
    again = per_example_grads(loaded[0], TRAIN[:9], projector=GaussianProjector(12, seed=3), batch_size=2)
    torch.testing.assert_close(again, reference, rtol=1e-10, atol=1e-12)
    other = per_example_grads(loaded[0], TRAIN[:9], projector=GaussianProjector(12, seed=4))
    assert not torch.allclose(other, reference)


def test_kronecker_projection_is_unbiased(loaded):
    g = per_example_grads(loaded[0], TRAIN[:2])
    exact = (g[0] @ g[1]).item()
    samples = torch.tensor([(lambda p: p[0] @ p[1])(kron_reference(GaussianProjector(16, seed=s), loaded[0], g)).item()
                            for s in range(200)])  # fmt: skip
    assert abs(samples.mean().item() - exact) <= 3 * samples.std().item() / 200**0.5


def test_dense_projection_with_tracin_matches_projected_grads_at_any_chunk(loaded):
    for chunk in (100, 5000):
        proj = GaussianProjector(8, seed=1, chunk=chunk, structure="dense")
        for batch_size in (3, 256):
            inf = tracin(
                loaded[:1], TRAIN, TEST, normalize="none", projector=proj, batch_size=batch_size, progress=False
            )
            ref = proj(per_example_grads(loaded[0], TEST)) @ proj(per_example_grads(loaded[0], TRAIN)).T
            torch.testing.assert_close(inf.total, ref)


def test_explicit_cpu_device_equals_the_default(loaded):
    ref = tracin(loaded[:2], TRAIN, TEST, progress=False)
    for device in ("cpu", torch.device("cpu")):
        got = tracin(loaded[:2], TRAIN, TEST, progress=False, device=device)
        assert torch.equal(got.per_epoch, ref.per_epoch) and torch.equal(got.train_norms, ref.train_norms)
    assert torch.equal(self_influence(loaded[:2], TRAIN, progress=False, device="cpu"),
                       self_influence(loaded[:2], TRAIN, progress=False))  # fmt: skip
    assert torch.equal(per_example_grads(loaded[0], TEST, device="cpu"), per_example_grads(loaded[0], TEST))


@pytest.mark.parametrize("device", ["tpu", "cuda:x", 3.5, "cuda:99"])
def test_bad_device_raises_naming_device(device):
    with pytest.raises(ValueError, match="'device'"):
        tracin([_Exploding()], TRAIN, TEST, progress=False, device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("fn", ["tracin", "self_influence", "per_example_grads"])
def test_cuda_without_a_gpu_raises_before_compute(fn):
    call = {
        "tracin": lambda: tracin([_Exploding()], TRAIN, TEST, progress=False, device="cuda"),
        "self_influence": lambda: self_influence([_Exploding()], TRAIN, progress=False, device="cuda"),
        "per_example_grads": lambda: per_example_grads(_Exploding(), TRAIN, device="cuda"),
    }[fn]
    with pytest.raises(ValueError, match="'device'.*cuda.is_available"):
        call()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("params", ["all", "no_word_embeddings"])
def test_cuda_matches_cpu(loaded, params):
    proj = GaussianProjector(16, seed=2)
    for projector in (None, proj):
        cpu = tracin(loaded, TRAIN, TEST, params=params, projector=projector, progress=False)
        gpu = tracin(loaded, TRAIN, TEST, params=params, projector=projector, progress=False, device="cuda")
        assert gpu.per_epoch.device.type == "cpu" and gpu.train_norms.device.type == "cpu"
        torch.testing.assert_close(gpu.per_epoch, cpu.per_epoch, rtol=1e-9, atol=1e-9)
    assert all(p.device.type == "cpu" for m in loaded for p in m.parameters())  # models are given back
    si = self_influence(loaded, TRAIN, params=params, progress=False, device="cuda:0")
    torch.testing.assert_close(si, self_influence(loaded, TRAIN, params=params, progress=False))


class LogReg(nn.Module):
    """Logistic regression written as 2-way logits [0, w·x]: the class-1 probability is sigmoid(w·x)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(dim, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x @ self.w
        return torch.stack([torch.zeros_like(s), s], dim=-1)


@pytest.mark.parametrize("method", ["hooks", "vmap", "loop"])
def test_logistic_regression_closed_form(method):
    torch.manual_seed(0)
    model = LogReg(7)
    x = torch.randn(20, 7, dtype=torch.float64)
    y = torch.randint(0, 2, (20,))
    grads = per_example_grads(model, list(zip(x, y.tolist(), strict=True)), method=method)
    closed = (torch.sigmoid(x @ model.w.detach()) - y)[:, None] * x
    torch.testing.assert_close(grads, closed, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------- captum oracle


class LogitsOnly(nn.Module):
    def __init__(self, hf: nn.Module) -> None:
        super().__init__()
        self.hf = hf

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.hf(input_ids=input_ids, attention_mask=attention_mask).logits


def _pad_collate(batch):
    ids = nn.utils.rnn.pad_sequence([x for x, _ in batch], batch_first=True, padding_value=PAD)
    return ids, (ids != PAD).long(), torch.tensor([y for _, y in batch])


@pytest.mark.parametrize(("ours", "layers"), [("all", None), (["classifier.*"], ["hf.classifier"])])
def test_matches_captum_tracincp(checkpoints, loaded, ours, layers):
    from captum.influence import TracInCP
    from torch.utils.data import DataLoader

    lrs = {str(p): lr for p, lr in zip(checkpoints, [0.1, 0.05, 0.02], strict=True)}
    states = {str(p): m.state_dict() for p, m in zip(checkpoints, loaded, strict=True)}
    wrapper = LogitsOnly(tiny_model(seed=9)).eval()

    def load(model: nn.Module, path: str) -> float:
        model.hf.load_state_dict(states[path])
        return lrs[path]

    tracer = TracInCP(
        wrapper,
        DataLoader(TRAIN, batch_size=4, collate_fn=_pad_collate),
        checkpoints=list(states),
        checkpoints_load_func=load,
        layers=layers,
        loss_fn=nn.CrossEntropyLoss(reduction="none"),
        batch_size=4,
    )
    expected = tracer.influence(DataLoader(TEST, batch_size=3, collate_fn=_pad_collate))
    got = tracin(checkpoints, TRAIN, TEST, params=ours, normalize="none", lr_weights=list(lrs.values()), progress=False)
    assert ((got.total - expected).abs().max() / expected.abs().max()).item() <= 1e-4


# ------------------------------------------------------------------------------------------------ plumbing


def test_inputs_tables_and_pairs_agree_and_eval_mode_is_restored(loaded):
    model = loaded[0]
    table = Dataset.from_dict({"input_ids": [x.tolist() for x, _ in TEST], "label": [y for _, y in TEST]})
    assert len(as_examples(table)) == len(TEST)
    reference = tracin([model], TRAIN, TEST, progress=False).total
    torch.testing.assert_close(tracin([model], TRAIN, table, progress=False).total, reference)
    model.train()  # dropout on: the kernel must switch it off and restore the training flag
    torch.testing.assert_close(tracin([model], TRAIN, TEST, progress=False).total, reference)
    assert model.training
    model.eval()
    assert torch.equal(tracin([model], TRAIN, TEST, progress=False).total, reference)  # deterministic


def test_finetune_checkpoints_with_tokenizer_load_through_mlmc_models(tmp_path, loaded):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w3"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="w1").save_pretrained(tmp_path)
    loaded[0].save_pretrained(tmp_path)
    torch.testing.assert_close(
        tracin([tmp_path], TRAIN, TEST, progress=False).total, tracin(loaded[:1], TRAIN, TEST, progress=False).total
    )


def test_topk_is_stable_with_ties_to_the_lower_index():
    scores = torch.tensor([[1.0, 3.0, 3.0, -2.0, 0.0, -2.0]])
    assert topk(scores, 3).tolist() == [[1, 2, 0]]
    assert topk(scores, 3, sign=-1).tolist() == [[3, 5, 4]]
    assert topk(np.asarray(scores[0]), 2).tolist() == [1, 2]
    many = torch.randint(0, 3, (4, 3000), generator=torch.Generator().manual_seed(0)).double()
    for sign in (1, -1):
        idx = topk(many, 3000, sign)
        ranked = many.gather(1, idx)
        assert (sign * ranked.diff(dim=1) <= 0).all()  # ordered by score
        assert ((ranked.diff(dim=1) != 0) | (idx.diff(dim=1) > 0)).all()  # equal scores: increasing index
    with pytest.raises(ValueError, match="'k'.*7"):
        topk(scores, 7)
    with pytest.raises(ValueError, match="'sign'"):
        topk(scores, 1, sign=0)


class _Exploding(nn.Module):
    """A model that fails if any gradient is computed: validation must happen before compute."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("compute started before the parameters were validated")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"normalize": "l2"}, "'normalize'"),
        ({"lr_weights": [0.1, 0.2]}, "'lr_weights'"),
        ({"lr_weights": [-1.0]}, "'lr_weights'"),
        ({"method": "jit"}, "'method'"),
        ({"batch_size": 0}, "'batch_size'"),
        ({"params": ["encoder.nothing.*"]}, "'params'"),
        ({"params": "embeddings_only"}, "'params'"),
        ({"train": []}, "'train'"),
        ({"test": [(torch.tensor([0, 2]), 1, 5)]}, "'test'"),
        ({"checkpoints": ["/nonexistent/epoch-1"]}, "'checkpoints'"),
        ({"checkpoints": []}, "'checkpoints'"),
    ],
)
def test_bad_parameters_raise_before_compute(kwargs, match):
    args = {"checkpoints": [_Exploding()], "train": TRAIN, "test": TEST} | kwargs
    with pytest.raises(ValueError, match=match):
        tracin(args.pop("checkpoints"), args.pop("train"), args.pop("test"), progress=False, **args)


# ------------------------------------------------------------------------- factorised (hook) path, issue 13

ARCH_VOCAB = 40


def arch_model(kind: str) -> nn.Module:
    """Tiny random HF classifiers of four families, configs built locally (no download), float32, eval mode."""
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        LlamaConfig,
        LlamaForSequenceClassification,
        T5Config,
        T5ForSequenceClassification,
    )

    torch.manual_seed(0)
    common = {"vocab_size": ARCH_VOCAB, "num_labels": 3}
    if kind == "bert":
        cfg = BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
                         max_position_embeddings=32, pad_token_id=0, **common)  # fmt: skip
        model = BertForSequenceClassification(cfg)
    elif kind == "xlmr":
        cfg = XLMRobertaConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
                               max_position_embeddings=40, pad_token_id=PAD, **common)  # fmt: skip
        model = XLMRobertaForSequenceClassification(cfg)
    elif kind == "t5":
        cfg = T5Config(d_model=16, d_kv=8, d_ff=24, num_layers=2, num_decoder_layers=1, num_heads=2, pad_token_id=0,
                       eos_token_id=1, decoder_start_token_id=0, **common)  # fmt: skip
        model = T5ForSequenceClassification(cfg)
    else:
        cfg = LlamaConfig(hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
                          num_key_value_heads=1, max_position_embeddings=32, pad_token_id=0, **common)  # fmt: skip
        model = LlamaForSequenceClassification(cfg)
    return model.eval()


def arch_examples(kind: str, n: int = 10, seed: int = 0) -> list[tuple[torch.Tensor, int]]:
    """Sequences of 3-14 tokens (so that buckets hold several lengths and get padded), framed as each family
    frames them (T5: ending in </s>; Llama: no special tokens), with 3-way labels."""
    gen = torch.Generator().manual_seed(seed)
    bos, eos = {"bert": (2, 3), "xlmr": (0, 2)}.get(kind, (None, None))
    out = []
    for _ in range(n):
        body = torch.randint(3, ARCH_VOCAB, (int(torch.randint(3, 13, (1,), generator=gen)),), generator=gen)
        x = torch.cat([body, torch.tensor([1])]) if kind == "t5" else body
        x = torch.cat([torch.tensor([bos]), body, torch.tensor([eos])]) if bos is not None else x
        out.append((x, int(torch.randint(0, 3, (1,), generator=gen))))
    return out


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


ARCHS = ["bert", "xlmr", "t5", "llama"]


@pytest.mark.parametrize("kind", ARCHS)
def test_factorised_path_equals_the_exact_one_on_four_families(kind):
    from mlmc.influence import _HookComputer

    model, data = arch_model(kind), arch_examples(kind)
    reference = manual_grads(model, data)
    hooks = per_example_grads(model, data, method="hooks")
    assert rel_err(hooks, reference) <= 1e-5
    assert rel_err(per_example_grads(model, data), reference) <= 1e-5  # "auto" takes the hook path
    exact = per_example_grads(model, data, method="vmap" if kind != "t5" else "loop")  # T5 cannot be vmapped
    assert rel_err(hooks, exact) <= 1e-5
    computer = _HookComputer(model, "all", None, 8)
    if kind == "t5":  # the relative attention bias is one lookup per batch: left to torch.func
        assert computer.rest is not None and computer.pad_id is None
        names = [k for k in select_params(model) if "relative_attention_bias" not in k]
        computer = _HookComputer(model, names, None, 8)
        starts = np.cumsum([0] + [p.numel() for p in model.parameters()])
        named = list(model.named_parameters())
        cols = torch.cat(
            [torch.arange(s, s + p.numel()) for s, (k, p) in zip(starts, named, strict=False) if k in names]
        )
        torch.testing.assert_close(per_example_grads(model, data, names, method="hooks"), hooks[:, cols])
    assert computer.rest is None and computer.pad_id is not None  # padded buckets, all from one backward pass
    assert len(set(len(x) for x, _ in data)) > 2


@pytest.mark.parametrize("kind", ["xlmr", "llama"])
def test_factorised_tracin_and_projection_equal_the_exact_ones(kind, monkeypatch):
    import mlmc.influence

    model, train, test = arch_model(kind), arch_examples(kind, 12, 1), arch_examples(kind, 5, 2)
    g_train, g_test = manual_grads(model, train), manual_grads(model, test)
    for ghost_entries in (2**28, 0):  # 0: test gradients kept as factors, scored by ghost dot products
        monkeypatch.setattr(mlmc.influence, "_GHOST_ENTRIES", ghost_entries)
        for normalize in ("none", "cosine"):
            got = tracin(model, train, test, normalize=normalize, method="hooks", batch_size=5, progress=False)
            ref = pairwise_scores(g_test, g_train, normalize)
            assert rel_err(got.total, ref) <= 1e-5
            assert rel_err(got.train_norms[0], g_train.norm(dim=1)) <= 1e-5
    torch.testing.assert_close(self_influence(model, train, method="hooks", progress=False),
                               g_train.square().sum(1).double(), rtol=1e-5, atol=0)  # fmt: skip
    proj = GaussianProjector(12, seed=5)  # factors 3 x 4: Linear weights projected from their factors
    assert rel_err(per_example_grads(model, train, projector=proj, method="hooks"),
                   kron_reference(proj, model, g_train)) <= 1e-5  # fmt: skip


def test_padded_table_rows_give_the_unpadded_gradients_on_the_factorised_path(loaded):
    ids = nn.utils.rnn.pad_sequence([x for x, _ in TRAIN], batch_first=True, padding_value=PAD)
    mask = (torch.arange(ids.shape[1])[None] < torch.tensor([len(x) for x, _ in TRAIN])[:, None]).long()
    table = {"input_ids": ids.tolist(), "attention_mask": mask.tolist(), "label": [y for _, y in TRAIN]}
    reference = manual_grads(loaded[0], TRAIN)
    for kwargs in ({"pad_multiple": 16}, {"pad_multiple": 0}, {"batch_size": 7}):
        got = per_example_grads(loaded[0], table, method="hooks", **kwargs)
        torch.testing.assert_close(got, reference, rtol=0, atol=1e-10)


def test_kronecker_projection_is_unbiased_for_non_square_factors():
    """E[<Pg, Ph>] = <g, h> with factors 3 x 4 (a != b) on Linear weights of shape 6 x 5 and 2 x 6, the vector
    group and sparse embeddings, all projected from the hook path's factors; a scale that assumed a == b (e.g.
    1/a for both factors) is off by 4/3 and fails."""
    from mlmc.influence import _HookComputer

    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(9, 5), nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 2), _MeanPool()).double()
    xs = [torch.tensor([1, 4, 4, 7]), torch.tensor([2, 4, 1, 8])]
    with torch.no_grad():
        cap = _HookComputer(model, "all", None, 0)(xs, torch.tensor([0, 1]))
    dense = cap.grads().to_dense()
    exact = (dense[0] @ dense[1]).item()
    assert abs(exact) > 0.1 * dense.norm(dim=1).prod().item()  # correlated pair: the test has power
    shapes = [tuple(p.shape) for p in model.parameters()]
    est = torch.tensor([(lambda q: (q[0] @ q[1]).item())(GaussianProjector(12, seed=s).project(cap, shapes))
                        for s in range(600)])  # fmt: skip
    assert GaussianProjector(12).factors == (3, 4)
    assert abs(est.mean().item() - exact) <= 3 * est.std().item() / len(est) ** 0.5
    assert abs(est.mean().item() - exact) < 0.25 * abs(exact) / 3  # well inside the 4/3 (or 3/4) bias of a bug
    one = GaussianProjector(12, seed=0)
    torch.testing.assert_close(one.project(cap, shapes), one.project(cap.grads(), shapes))


class _MeanPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1)


def test_kronecker_error_exceeds_dense_error_for_rank_one_gradients():
    """The documented trade-off: on a rank-1 (one-position) Linear gradient the Kronecker estimate of a dot product
    has the spread of an a-dimensional projection, the dense one of a dim-dimensional one."""
    from mlmc.influence import _Capture

    torch.manual_seed(1)
    grad_out, inputs = torch.randn(2, 1, 20, dtype=torch.float64), torch.randn(2, 1, 30, dtype=torch.float64)
    grad_out[1] += 2 * grad_out[0]
    inputs[1] += 2 * inputs[0]
    cap = _Capture([("factors", [(grad_out, inputs)])], None, 2)
    exact = cap.grads().to_dense()
    errors = {}
    for structure in ("kronecker", "dense"):
        est = [GaussianProjector(64, seed=s, structure=structure).project(cap, [(20, 30)]) for s in range(200)]
        dots = torch.tensor([(e[0] @ e[1]).item() for e in est])
        errors[structure] = (dots - exact[0] @ exact[1]).square().mean().sqrt().item()
    assert errors["kronecker"] > 1.5 * errors["dense"]


def test_half_precision_path_scores_in_float32_close_to_float32(loaded):
    model = tiny_model().float()
    ref = tracin(model, TRAIN, TEST, normalize="none", progress=False)
    for dtype, tol in (("bfloat16", 2e-2), ("float16", 5e-3)):
        got = tracin(model, TRAIN, TEST, normalize="none", progress=False, dtype=dtype)
        assert got.total.dtype == torch.float32
        err = rel_err(got.total, ref.total)
        assert 0 < err <= tol  # computed in half precision (not silently in float32), and close
    assert next(model.parameters()).dtype == torch.float32  # the caller's model is not cast
    g16 = per_example_grads(model, TRAIN, dtype="bfloat16", projector=GaussianProjector(16, seed=1))
    assert g16.dtype == torch.float32 and torch.isfinite(g16).all()
    with pytest.raises(ValueError, match="'dtype'"):
        tracin(model, TRAIN, TEST, progress=False, dtype="int8")


def test_hooks_refuse_a_custom_loss_and_auto_falls_back():
    torch.manual_seed(0)
    model = LogReg(7)
    data = [(torch.randn(7, dtype=torch.float64), int(i % 2)) for i in range(6)]
    loss = lambda out, y: nn.functional.cross_entropy(out, y)  # noqa: E731
    with pytest.raises(ValueError, match="'method'='hooks'"):
        per_example_grads(model, data, method="hooks", loss_fn=loss)
    torch.testing.assert_close(per_example_grads(model, data, loss_fn=loss), per_example_grads(model, data))
