"""Tests of mlmc.scoring: batched scores equal plain per-example computations on tiny HF models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlmc import scoring, train, zoo
from mlmc.world import World


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return list(World(seed=0).pretraining_corpus(langs=["en", "ru", "ko"], n_per_lang=150)["text"])


def _trained(arch: str, texts: list[str]):
    """A briefly trained tiny model (so that its distributions are far from uniform) and its tokenizer."""
    tok = zoo.train_tokenizer(texts, arch=arch, vocab_size=300)
    name = {"xlmr": "tiny-xlmr", "mt5": "tiny-mt5", "llama": "tiny-llama"}[arch]
    model = zoo.init_model(zoo.recipe(name, layers=1, heads=2), tok)
    fn = {"xlmr": train.pretrain_mlm, "mt5": train.pretrain_span, "llama": train.pretrain_clm}[arch]
    fn(model, tok, texts, steps=30, batch_size=16, lr=5e-3, progress=False)
    return model, tok


@pytest.fixture(scope="module")
def llama(texts):
    return _trained("llama", texts)


@pytest.fixture(scope="module")
def xlmr(texts):
    return _trained("xlmr", texts)


@pytest.fixture(scope="module")
def mt5(texts):
    return _trained("mt5", texts)


def _multi_piece_word(tok, texts) -> str:
    for text in texts:
        for w in text.split():
            if len(tok(w, add_special_tokens=False)["input_ids"]) >= 2:
                return w
    raise AssertionError("no multi-piece word in the corpus")


def _single_piece_words(tok, texts, n: int) -> list[str]:
    words = sorted({w for t in texts for w in t.split() if len(tok(w, add_special_tokens=False)["input_ids"]) == 1})
    return words[:n]


# --- causal -----------------------------------------------------------------------------------------------------
def _manual_completion(model, tok, prompt: str, completion: str) -> list[float]:
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    c = tok(" " + completion, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([[tok.bos_token_id, *p, *c]])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0], -1)
    return [logp[len(p) + i, c[i]].item() for i in range(len(c))]


def test_completion_logprobs_match_unbatched(llama, texts):
    model, tok = llama
    multi = _multi_piece_word(tok, texts)
    prompts = [texts[0], texts[5], "", texts[7][:9].strip()]
    completions = [multi, texts[1].split()[0], texts[2], f"{multi} {multi}"]
    manual = [_manual_completion(model, tok, p, c) for p, c in zip(prompts, completions, strict=True)]
    for reduction, fn in [("sum", np.sum), ("mean", np.mean), ("first", lambda x: x[0])]:
        got = scoring.completion_logprobs(model, tok, prompts, completions, reduction=reduction, batch_size=3)
        assert np.allclose(got, [fn(m) for m in manual], atol=1e-4)
    grad = scoring.completion_logprobs(model, tok, prompts, completions, grad=True)
    assert grad.requires_grad
    grad.sum().backward()
    assert model.model.embed_tokens.weight.grad is not None
    assert np.allclose(grad.detach().numpy(), [sum(m) for m in manual], atol=1e-4)


def test_sentence_logprobs_start_once_and_batched(llama, texts):
    model, tok = llama
    sents = texts[10:17]
    got = scoring.sentence_logprobs(model, tok, sents, batch_size=4)
    got_mean = scoring.sentence_logprobs(model, tok, sents, reduction="mean", batch_size=2)
    for text, s, m in zip(sents, got, got_mean, strict=True):
        ids = [tok.bos_token_id, *tok(text, add_special_tokens=False)["input_ids"]]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0], -1)
        lps = [logp[i, ids[i + 1]].item() for i in range(len(ids) - 1)]
        assert s == pytest.approx(sum(lps), abs=1e-4)
        assert m == pytest.approx(np.mean(lps), abs=1e-5)


def test_completion_logprobs_bad_input(llama):
    model, tok = llama
    with pytest.raises(ValueError, match="reduction"):
        scoring.completion_logprobs(model, tok, ["a"], ["b"], reduction="max")
    with pytest.raises(ValueError, match="differ in length"):
        scoring.completion_logprobs(model, tok, ["a", "b"], ["c"])


# --- masked -----------------------------------------------------------------------------------------------------
def _mask_lp(model, ids: list[int], positions: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, positions], -1)


def test_mask_logprobs_first_and_last(xlmr, texts):
    model, tok = xlmr
    t = [f"{texts[0].split()[0]} {tok.mask_token} {texts[0].split()[1]} {tok.mask_token} .", f"{tok.mask_token} ."]
    for which in ("first", "last"):
        got = scoring.mask_logprobs(model, tok, t, which=which, batch_size=1)
        for row, text in zip(got, t, strict=True):
            ids = tok(text)["input_ids"]
            pos = [i for i, x in enumerate(ids) if x == tok.mask_token_id]
            assert np.allclose(row, _mask_lp(model, ids, [pos[0] if which == "first" else pos[-1]])[0], atol=1e-5)


def test_masked_candidate_logprobs_multi_piece(xlmr, texts):
    model, tok = xlmr
    multi = _multi_piece_word(tok, texts)
    cands = [*_single_piece_words(tok, texts, 2), multi]
    templates = [f"{texts[3].split()[0]} [MASK] .", f"[MASK] {texts[4]}", f"{texts[5]} [MASK]"]
    got = scoring.masked_candidate_logprobs(model, tok, templates, cands, batch_size=2)
    assert got.shape == (3, 3)
    for t, template in enumerate(templates):
        for j, c in enumerate(cands):
            pieces = tok(c, add_special_tokens=False)["input_ids"]
            base = tok(template.replace("[MASK]", tok.mask_token))["input_ids"]
            pos = base.index(tok.mask_token_id)
            ids = base[:pos] + [tok.mask_token_id] * len(pieces) + base[pos + 1 :]
            lp = _mask_lp(model, ids, list(range(pos, pos + len(pieces))))
            want = sum(lp[i, p].item() for i, p in enumerate(pieces))
            assert got[t, j] == pytest.approx(want, abs=1e-4)
    per_template = scoring.masked_candidate_logprobs(model, tok, templates, [cands[::-1]] * 3, reduction="first")
    assert per_template[:, 2] == pytest.approx(got[:, 0], abs=1e-4)  # single-piece words: first == sum


def test_masked_candidate_logprobs_bad_input(xlmr):
    model, tok = xlmr
    with pytest.raises(ValueError, match="exactly one"):
        scoring.masked_candidate_logprobs(model, tok, ["no blank here"], ["a"])
    with pytest.raises(ValueError, match="candidates"):
        scoring.masked_candidate_logprobs(model, tok, ["[MASK] a", "[MASK] b"], [["a"], ["b", "c"]])


def test_pseudo_log_likelihood_matches_loop(xlmr, texts):
    model, tok = xlmr
    sents = texts[20:25]
    pll = scoring.pseudo_log_likelihood(model, tok, sents, batch_size=7)
    per_token = scoring.token_pseudo_logprobs(model, tok, sents, batch_size=3)
    for text, total, (tok_ids, lps) in zip(sents, pll, per_token, strict=True):
        ids = tok(text)["input_ids"]
        want = []
        for i in range(1, len(ids) - 1):  # every token but <s> and </s>
            masked = ids[:i] + [tok.mask_token_id] + ids[i + 1 :]
            want.append(_mask_lp(model, masked, [i])[0, ids[i]].item())
        assert tok_ids.tolist() == ids[1:-1]
        assert np.allclose(lps, want, atol=1e-5)
        assert total == pytest.approx(sum(want), abs=1e-4)


# --- seq2seq ----------------------------------------------------------------------------------------------------
def test_span_candidate_logprobs_match_teacher_forcing(mt5, texts):
    model, tok = mt5
    multi = _multi_piece_word(tok, texts)
    cands = [_single_piece_words(tok, texts, 1)[0], multi]
    templates = [f"{texts[0].split()[0]} [MASK] .", f"[MASK] {texts[1]}", f"{texts[2]} [MASK]"]
    got = scoring.span_candidate_logprobs(model, tok, templates, cands, batch_size=4)
    got_mean = scoring.span_candidate_logprobs(model, tok, templates, cands, reduction="mean", batch_size=1)
    s0, s1 = tok.convert_tokens_to_ids(["<extra_id_0>", "<extra_id_1>"])
    for t, template in enumerate(templates):
        enc = torch.tensor([tok(template.replace("[MASK]", "<extra_id_0>"))["input_ids"]])
        for j, c in enumerate(cands):
            pieces = tok(c, add_special_tokens=False)["input_ids"]
            labels = torch.tensor([[s0, *pieces, s1]])
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=enc, labels=labels).logits[0], -1)
            lps = [logp[1 + i, p].item() for i, p in enumerate(pieces)]
            assert got[t, j] == pytest.approx(sum(lps), abs=1e-4)
            assert got_mean[t, j] == pytest.approx(np.mean(lps), abs=1e-5)


def test_span_candidate_logprobs_need_sentinels(xlmr):
    model, tok = xlmr
    with pytest.raises(ValueError, match="sentinel"):
        scoring.span_candidate_logprobs(model, tok, ["[MASK] a"], ["a"])
