"""mlmc.debias: CrowS scoring and threshold, SentDebias, INLP, the cross-lingual autoencoder, the hook, DPO."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.svm import LinearSVC

from mlmc import debias as db

# --- threshold ------------------------------------------------------------------------------------------------------


def test_significance_threshold_matches_peng_appendix_b():
    assert db.significance_threshold(40) == 12.5
    assert db.significance_threshold(80) == 8.75
    assert db.significance_threshold(120) == 7.5
    assert db.significance_threshold(200) == 6.0
    x40 = 20 + 1.6448536269514722 * math.sqrt(10)
    assert abs(x40 - 25.20) < 0.01


def test_binomial_threshold_agrees_and_decreases_with_n():
    for n in (40, 80, 120, 200):
        assert db.significance_threshold(n, method="binom") == db.significance_threshold(n)
    # non-increasing over CrowS-sized steps (the discrete quantile is not monotone for every single n)
    thr = [db.significance_threshold(n, method="binom") for n in range(40, 441, 40)]
    assert all(a >= b for a, b in zip(thr, thr[1:], strict=False))
    assert thr == [db.significance_threshold(n) for n in range(40, 441, 40)]


def test_threshold_rejects_bad_parameters():
    with pytest.raises(ValueError, match="parameter 'method'"):
        db.significance_threshold(40, method="exact")
    with pytest.raises(ValueError, match="parameter 'n'"):
        db.significance_threshold(0)


# --- CrowS on a hand-made bigram LM ---------------------------------------------------------------------------------
class _Tok:
    """Whitespace tokenizer over a fixed vocabulary with the HF call signature the scorer uses."""

    bos_token_id, eos_token_id, pad_token_id = 0, 1, 2

    def __init__(self, words):
        self.vocab = {w: i + 3 for i, w in enumerate(words)}

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[self.vocab[w] for w in t.split()] for t in texts]}


class _Out:
    def __init__(self, **kw):
        self.__dict__.update(kw)


class _Base(torch.nn.Module):
    def __init__(self, v):
        super().__init__()
        self.v = v
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None):
        return _Out(last_hidden_state=torch.nn.functional.one_hot(input_ids, self.v).float())


class _Bigram(torch.nn.Module):
    """Base model returns one-hot states; the head is a fixed bigram log-probability table."""

    def __init__(self, table: np.ndarray):
        super().__init__()
        self.base_model = _Base(table.shape[0])
        self.table = torch.as_tensor(table, dtype=torch.float32)

    def forward(self, input_ids, attention_mask=None):
        h = self.base_model(input_ids, attention_mask).last_hidden_state
        return _Out(logits=h @ self.table)


@pytest.fixture
def bigram():
    words = ["a", "b", "c"]
    tok = _Tok(words)
    rng = np.random.default_rng(0)
    table = np.log(rng.dirichlet(np.ones(6), size=6))
    return _Bigram(table), tok, table


def _hand_mean(table, ids):
    seq = [0, *ids]
    return float(np.mean([table[seq[i], seq[i + 1]] for i in range(len(ids))]))


def test_crows_scores_by_hand_and_start_used_once(bigram):
    model, tok, table = bigram
    pairs = pd.DataFrame(
        {
            "sent_more": ["a b", "c"],
            "sent_less": ["b b", "c"],
            "bias_type": ["g", "g"],
            "sample": [0, 0],
            "stereo_antistereo": ["stereo", "antistereo"],
        }
    )
    out = db.crows_outcomes(model, tok, pairs)
    assert out.s_more[0] == pytest.approx(_hand_mean(table, [3, 4]), abs=1e-5)
    assert out.s_less[0] == pytest.approx(_hand_mean(table, [4, 4]), abs=1e-5)
    out_sum = db.crows_outcomes(model, tok, pairs, reduction="sum")
    assert out_sum.s_more[0] == pytest.approx(2 * _hand_mean(table, [3, 4]), abs=1e-5)
    assert out.success[0] == (out.s_more[0] > out.s_less[0])
    assert bool(out.tie[1]) and not bool(out.success[1])  # a tie counts in N, not as a success


def test_bias_scores_aggregate_samples_then_types():
    rows = []
    for bt, succ in [("gender", [1] * 30 + [0] * 10), ("religion", [1] * 20 + [0] * 20)]:
        for s in (0, 1):
            flip = succ if s == 0 else [1] * 10 + [0] * 30
            rows += [dict(bias_type=bt, sample=s, success=bool(x), tie=False) for x in flip]
    bs = db.bias_scores(pd.DataFrame(rows)).set_index("bias_type")
    assert bs.loc["gender", "metric"] == pytest.approx((75 + 25) / 2)  # mean over samples, then |· − 50|
    assert bs.loc["gender", "score"] == pytest.approx(0.0)
    assert bs.loc["religion", "score"] == pytest.approx(abs((50 + 25) / 2 - 50))
    assert bs.loc["avg", "score"] == pytest.approx((0 + 12.5) / 2)
    assert bs.loc["gender", "n"] == 40


# --- hook -----------------------------------------------------------------------------------------------------------
def test_hook_identity_zero_and_removed(bigram):
    model, tok, _ = bigram
    ids = torch.tensor([[0, 3, 4, 5]])
    ref = model(ids).logits
    with db.transform_last_hidden(model, db.linear_fn(np.eye(6))):
        assert torch.allclose(model(ids).logits, ref)
    with db.transform_last_hidden(model, db.linear_fn(np.zeros((6, 6)))):
        out = model(ids).logits
        assert torch.allclose(out, torch.zeros_like(out))
    assert torch.allclose(model(ids).logits, ref)  # hook removed on exit
    with db.transform_last_hidden(model, None):
        assert torch.allclose(model(ids).logits, ref)


# --- SentDebias -----------------------------------------------------------------------------------------------------
def test_counterfactual_examples_whole_tokens_and_every_occurrence():
    assert db.counterfactual_examples(["he is a nurse ."], [("he", "she")]) == [["he is a nurse .", "she is a nurse ."]]
    assert db.counterfactual_examples(["then the"], [("the", "a")]) == [["then the", "then a"]]
    assert db.counterfactual_examples(["thena x"], [("the", "a")]) == []
    assert db.counterfactual_examples(["x y x"], [("x", "z")]) == [["x y x", "z y z"]]
    assert len(db.counterfactual_examples(["a jew"], [("muslim", "christian", "jew")])[0]) == 3


def test_sentdebias_recovers_planted_direction_and_removal_is_a_projection():
    rng = np.random.default_rng(0)
    d = 16
    u = rng.normal(size=d)
    u /= np.linalg.norm(u)
    embs = []
    for _ in range(200):
        base = rng.normal(size=d) * 5
        a = rng.normal() * 2
        embs.append(np.stack([base + a * u + 0.01 * rng.normal(size=d), base - a * u + 0.01 * rng.normal(size=d)]))
    V = db.sentdebias_subspace(embs, k=1)
    assert abs(float(V[0] @ u)) > 0.99
    R = db.subspace_removal(V)
    h = rng.normal(size=d)
    assert abs(float(V[0] @ (R @ h))) < 1e-10
    assert np.allclose(R @ R, R)
    w = h - (h @ V[0]) * V[0]
    assert np.allclose(R @ w, w)
    with pytest.raises(ValueError, match="parameter 'k'"):
        db.sentdebias_subspace(embs, k=d + 1)


# --- INLP -----------------------------------------------------------------------------------------------------------
@pytest.fixture
def separable():
    rng = np.random.default_rng(1)
    n, d = 600, 10
    X = rng.normal(size=(n, d))
    y = rng.integers(0, 2, size=n)
    X[:, 0] += 3 * (2 * y - 1)
    X[:, 1] += 1.5 * (2 * y - 1)
    return X, y


def test_inlp_projection_idempotent_symmetric_and_removes_directions(separable):
    X, y = separable
    res = db.fit_inlp(X, y, n_iter=4, stop_at_chance=False, max_rank_frac=1.0)
    P = res.P
    assert len(res.Ws) == 4 and res.removed_rank == 4
    assert np.allclose(P @ P, P, atol=1e-10)
    assert np.allclose(P, P.T, atol=1e-10)
    x = np.random.default_rng(2).normal(size=(50, X.shape[1]))
    for W in res.Ws:
        assert np.abs(W @ P @ x.T).max() < 1e-8
    for i, Wi in enumerate(res.Ws):
        for Wj in res.Ws[i + 1 :]:
            assert np.abs(Wi @ Wj.T).max() < 1e-6  # autoregressive classifiers are mutually orthogonal
    fresh = LinearSVC(fit_intercept=False, dual=False, random_state=0).fit(X @ P, y)
    assert fresh.score(X @ P, y) <= max(np.mean(y), 1 - np.mean(y)) + 0.1


def test_inlp_rank_guard_stop_at_chance_and_multiclass(separable):
    X, y = separable
    res = db.fit_inlp(X, y, n_iter=50, stop_at_chance=False, max_rank_frac=0.3)
    assert res.removed_rank <= 0.3 * X.shape[1]
    rand = np.random.default_rng(3).integers(0, 2, size=len(y))
    res = db.fit_inlp(np.random.default_rng(4).normal(size=X.shape), rand, n_iter=10, stop_at_chance=True)
    assert len(res.dev_acc) == 1 and res.removed_rank == 0  # stops at the first classifier
    y3 = np.random.default_rng(5).integers(0, 3, size=len(y))
    X3 = X.copy()
    X3[:, 2] += 3 * (y3 == 2)
    res = db.fit_inlp(X3, y3, n_iter=1, stop_at_chance=False, max_rank_frac=1.0)
    assert res.Ws[0].shape[0] == 3 and res.removed_rank == 3


def test_random_removal_is_a_projection_of_the_rank():
    R = db.random_removal(8, 3, seed=0)
    assert np.allclose(R @ R, R) and round(np.trace(np.eye(8) - R)) == 3
    with pytest.raises(ValueError, match="parameter 'rank'"):
        db.random_removal(8, 9)


# --- autoencoder ----------------------------------------------------------------------------------------------------
def _identity_ae(d=4):
    ae = db.CrossLingualAE(d, ["a", "b"], hidden=(), latent=d)
    with torch.no_grad():
        for lin in [ae.encoder[0], ae.decoders["a"][0], ae.decoders["b"][0]]:
            lin.weight.copy_(torch.eye(d))
            lin.bias.zero_()
    return ae


def test_ae_loss_terms_identity_case():
    ae = _identity_ae()
    x = torch.randn(5, 4)
    same = db.ae_loss_terms(ae, x, x, "a", "b")
    assert all(v.item() == 0 for v in same.values())
    y = torch.randn(5, 4)
    t = db.ae_loss_terms(ae, x, y, "a", "b")
    mse = torch.nn.functional.mse_loss(x, y)
    assert float(t["self_x"]) == 0 and float(t["self_y"]) == 0
    assert float(t["cross_y_from_x"]) == pytest.approx(float(mse)) == pytest.approx(float(t["cross_x_from_y"]))


def test_ae_swapped_decoders_change_only_cross_terms_and_gradients_flow():
    torch.manual_seed(0)
    ae = db.CrossLingualAE(6, ["a", "b"], hidden=(8,), latent=3)
    x, y = torch.randn(7, 6), torch.randn(7, 6)
    t1 = db.ae_loss_terms(ae, x, y, "a", "b")
    t2 = db.ae_loss_terms(ae, x, x, "a", "a")
    assert float(t2["self_x"]) == pytest.approx(float(t1["self_x"]))
    total = sum(t1.values())
    total.backward()
    for mod in (ae.encoder, ae.decoders["a"], ae.decoders["b"]):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in mod.parameters())


def test_train_ae_vectorised_loss_equals_sum_of_pair_terms_and_early_stopping():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    langs = ["a", "b", "c"]
    z = rng.normal(size=(120, 3))
    data = {x: z @ rng.normal(size=(3, 6)) + 0.1 * rng.normal(size=(120, 6)) for x in langs}
    train, dev = {x: v[:100] for x, v in data.items()}, {x: v[100:] for x, v in data.items()}
    ae = db.CrossLingualAE(6, langs, hidden=(8,), latent=3)
    hist = db.train_ae(ae, train, dev, lr=1e-3, max_epochs=3, patience=5)
    with torch.no_grad():
        dv = {x: torch.as_tensor(v, dtype=torch.float32) for x, v in dev.items()}
        pairs = [("a", "b"), ("a", "c"), ("b", "c")]
        manual = sum(float(sum(db.ae_loss_terms(ae, dv[a], dv[b], a, b).values())) for a, b in pairs) / 3
    assert hist.dev_loss.min() == pytest.approx(manual, rel=1e-5)  # best weights restored
    ae2 = db.CrossLingualAE(6, langs, hidden=(8,), latent=3)
    hist2 = db.train_ae(ae2, train, dev, lr=10.0, max_epochs=100, patience=2)  # diverges: stops early
    assert len(hist2) <= hist2.dev_loss.idxmin() + 1 + 3


def test_latent_hidden_fn_modes():
    torch.manual_seed(0)
    ae = db.CrossLingualAE(6, ["a", "b"], hidden=(8,), latent=3)
    h = torch.randn(2, 5, 6)
    assert torch.equal(db.latent_hidden_fn(ae, "a", None, mode="delta")(h), h)
    rt = db.latent_hidden_fn(ae, "a", None, mode="replace")(h)
    assert torch.allclose(rt, ae.decode(ae.encode(h), "a"))
    delta = db.latent_hidden_fn(ae, "b", np.eye(3), mode="delta")(h)
    assert torch.allclose(delta, h, atol=1e-6)
    with pytest.raises(ValueError, match="parameter 'lang'"):
        db.latent_hidden_fn(ae, "zz")


def test_retrieval_at1():
    X = np.eye(4)
    assert db.retrieval_at1(X, X) == 1.0
    assert db.retrieval_at1(X, X[::-1]) == 0.0


# --- DPO ------------------------------------------------------------------------------------------------------------
def test_dpo_loss_equals_formula_on_hand_made_numbers():
    pc, pr = torch.tensor([-2.0, -1.0]), torch.tensor([-3.0, -0.5])
    rc, rr = torch.tensor([-2.5, -1.0]), torch.tensor([-2.0, -1.0])
    loss, ch, rj = db.dpo_loss(pc, pr, rc, rr, beta=0.5)
    z = 0.5 * ((pc - rc) - (pr - rr))  # [0.5*(0.5+1), 0.5*(0-0.5)] = [0.75, -0.25]
    expected = float(np.mean([-np.log(1 / (1 + np.exp(-v))) for v in z.tolist()]))
    assert float(loss) == pytest.approx(expected, abs=1e-6)
    assert torch.allclose(ch, 0.5 * (pc - rc)) and torch.allclose(rj, 0.5 * (pr - rr))
    eq = torch.tensor([-1.0, -2.0])
    assert float(db.dpo_loss(eq, eq, eq, eq)[0]) == pytest.approx(math.log(2))
    assert float(db.dpo_loss(pc, pr, rc, rr, beta=1e-9)[0]) == pytest.approx(math.log(2), abs=1e-6)
    pcg = pc.clone().requires_grad_(True)
    db.dpo_loss(pcg, pr, rc, rr)[0].backward()
    assert (pcg.grad < 0).all()


@pytest.mark.skipif(importlib.util.find_spec("trl") is None, reason="trl not installed (optional extra)")
def test_dpo_loss_matches_trl_on_a_tiny_hf_model(tmp_path):
    """trl's DPOTrainer loss on one of its own batches equals dpo_loss on log-probs summed over the batch's
    completion tokens (policy = a perturbed copy of the reference, so the loss is not just log 2)."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from mlmc import zoo

    tok = zoo.train_tokenizer(
        ["the cat is kind .", "the dog is rude .", "a bird is calm ."] * 5, arch="llama", vocab_size=60
    )
    rec = zoo.recipe("tiny-llama", hidden_size=16, ffn=32, heads=2, layers=1)
    ref = zoo.init_model(rec, tok)
    policy = zoo.init_model(rec, tok)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    data = Dataset.from_list(
        [
            dict(prompt="the cat is", chosen=" kind .", rejected=" rude ."),
            dict(prompt="the dog is", chosen=" calm .", rejected=" rude ."),
        ]
    )
    args = DPOConfig(
        output_dir=str(tmp_path),
        beta=0.1,
        per_device_train_batch_size=2,
        report_to=[],
        use_cpu=True,
        max_length=32,
        precompute_ref_log_probs=False,
    )
    trainer = DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=data, processing_class=tok)
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.eval()
    with torch.no_grad():
        theirs = trainer.compute_loss(trainer.model, batch)
        ids, attn, mask = batch["input_ids"], batch["attention_mask"], batch["completion_mask"][:, 1:].bool()

        def seq_logps(m):
            logits = m(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
            lp = torch.log_softmax(logits, -1).gather(2, ids[:, 1:, None]).squeeze(2)
            return (lp * mask).sum(1).chunk(2)

        (pc, pr), (rc, rr) = seq_logps(trainer.model), seq_logps(ref)
        ours = db.dpo_loss(pc, pr, rc, rr, beta=0.1)[0]
    assert float(ours) == pytest.approx(float(theirs), abs=1e-5)
    assert abs(float(ours) - math.log(2)) > 1e-6


# --- generation metrics ---------------------------------------------------------------------------------------------
def test_generation_metrics():
    assert db.expected_max_toxicity([[0, 1], [0.2, 0.1]]) == pytest.approx(0.6)
    assert db.language_consistency(["a", "b", "x"], {"a", "b"}) == pytest.approx(2 / 3)
    assert db.distinct_n(["the", "cat"], ["the", "dog", "dog"], 1) == pytest.approx(1 / 3)
    assert db.distinct_n([], ["a", "b", "a", "b"], 2) == pytest.approx(2 / 4)


# --- real-data loaders ----------------------------------------------------------------------------------------------
def _write_crows(folder, lang, sample, n=4):
    df = pd.DataFrame(
        {
            "sent_more": [f"more {i}" for i in range(n)],
            "sent_less": [f"less {i}" for i in range(n)],
            "stereo_antistereo": ["stereo", "antistereo"] * (n // 2),
            "bias_type": ["gender", "religion"] * (n // 2),
        }
    )
    df.to_csv(folder / f"crows_pairs_anonymized_{lang}_s{sample}.csv")  # index column first, as in the files


def test_load_crows_on_written_files(tmp_path):
    for lang in ("en", "fr"):
        for s in (0, 1):
            _write_crows(tmp_path, lang, s)
    df = db.load_crows(tmp_path)
    assert len(df) == 16 and set(df.lang) == {"en", "fr"} and set(df["sample"]) == {0, 1}
    assert list(df.columns[:4]) == list(db.CROWS_COLUMNS)
    assert len(db.load_crows(tmp_path, langs=["fr"], samples=[1])) == 4
    with pytest.raises(ValueError, match="no CrowS-Pairs files"):
        db.load_crows(tmp_path, langs=["de"])
    (tmp_path / "crows_pairs_anonymized_de_s0.csv").write_text(",a,b\n0,x,y\n")
    with pytest.raises(ValueError, match="missing CrowS-Pairs column"):
        db.load_crows(tmp_path, langs=["de"])


def test_load_attribute_words_on_written_file(tmp_path):
    p = tmp_path / "bias_attribute_words.json"
    p.write_text('{"gender": [["he", "she"], ["man", "woman"]], "religion": [["jew", "christian", "muslim"]]}')
    w = db.load_attribute_words(p)
    assert w["gender"][1] == ("man", "woman") and len(w["religion"][0]) == 3


@pytest.mark.shared_data
def test_loaders_on_shared_multilingual_crows(shared_data):
    folder = shared_data / "crows_multilingual"
    df = db.load_crows(folder)
    assert set(df.lang) == {"en", "fr", "de", "nl"} and set(df["sample"]) == {0, 1, 2}
    counts = df.groupby(["lang", "sample", "bias_type"]).size()
    assert (counts == 40).all()
    assert set(df.bias_type) == {"gender", "race-color", "religion"}
    assert set(df.stereo_antistereo) == {"stereo", "antistereo"}
    for name in (
        "bias_attribute_words.json",
        "bias_attribute_words_fr.json",
        "bias_attribute_words_de.json",
        "bias_attribute_words_nl.json",
    ):
        w = db.load_attribute_words(folder / name)
        assert {"gender", "religion"} <= set(w) and all(len(t) >= 2 for t in w["gender"])
