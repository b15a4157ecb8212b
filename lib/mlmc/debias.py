"""Bias measurement and mitigation for causal LMs (ch. 07; the CrowS scorer is shared with ch. 04's stereotype work).

* CrowS-Pairs: :func:`load_crows` (the multilingual Reusens/bias-bench CSVs), :func:`crows_outcomes`,
  :func:`bias_scores` (|% stereotypical preferred − 50| per bias type) and :func:`significance_threshold`
  (the binomial threshold of Peng et al. 2025, App. B: 12.5 for n = 40);
* sentence vectors and a forward hook that rewrites the last hidden state (:func:`mean_pooled_hidden`,
  :func:`transform_last_hidden`);
* SentDebias (counterfactual variants → PCA bias subspace) and INLP (iterative null-space projection with
  scikit-learn's ``LinearSVC``), both as linear maps on vectors;
* the cross-lingual autoencoder (a shared encoder, one decoder per language, self + cross reconstruction) and
  :func:`latent_hidden_fn`, which debiases in its latent space;
* preference optimisation: :func:`dpo_loss` (Rafailov et al. 2023, trl's ``sigmoid`` loss) and :func:`dpo_train`;
* generation metrics: :func:`expected_max_toxicity`, :func:`language_consistency`, :func:`distinct_n`.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import linalg, stats
from sklearn.decomposition import PCA
from sklearn.svm import LinearSVC
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mlmc.errors import check_choice, check_int, check_positive, check_range
from mlmc.scoring import completion_logprobs, sentence_logprobs
from mlmc.train import pad_sequences
from mlmc.utils import seed_everything

# --- CrowS-Pairs ----------------------------------------------------------------------------------------------------
CROWS_COLUMNS = ("sent_more", "sent_less", "stereo_antistereo", "bias_type")
_CROWS_FILE = re.compile(r"crows_pairs_anonymized_(?P<lang>[a-z]{2})_s(?P<sample>\d+)\.csv$")


def load_crows(
    path: str | Path, langs: Sequence[str] | None = None, samples: Sequence[int] | None = None
) -> pd.DataFrame:
    """Multilingual CrowS-Pairs (Reusens et al. 2023 files ``crows_pairs_anonymized_{lang}_s{k}.csv``).

    ``path`` is one such file or the folder holding them. Returns one row per pair with columns sent_more,
    sent_less, stereo_antistereo, bias_type, lang, sample, pair (the row index in its file). ``sent_more`` is the
    more stereotypical sentence in both directions, as in bias-bench.
    """
    path = Path(path)
    files = [path] if path.is_file() else sorted(path.glob("crows_pairs_anonymized_*_s*.csv"))
    frames = []
    for f in files:
        m = _CROWS_FILE.search(f.name)
        if m is None:
            raise ValueError(f"parameter 'path': {f.name} is not named crows_pairs_anonymized_<lang>_s<k>.csv")
        lang, sample = m["lang"], int(m["sample"])
        if (langs is not None and lang not in langs) or (samples is not None and sample not in samples):
            continue
        df = pd.read_csv(f, index_col=0)
        missing = [c for c in CROWS_COLUMNS if c not in df.columns]
        if missing:
            raise ValueError(f"{f.name}: missing CrowS-Pairs column(s) {missing}; has {list(df.columns)}")
        df = df[list(CROWS_COLUMNS)].assign(lang=lang, sample=sample, pair=np.arange(len(df)))
        frames.append(df)
    if not frames:
        raise ValueError(f"parameter 'path': no CrowS-Pairs files for langs={langs}, samples={samples} in {path}")
    return pd.concat(frames, ignore_index=True)


def load_attribute_words(path: str | Path) -> dict[str, list[tuple[str, ...]]]:
    """Bias attribute words (bias-bench / Reusens JSON): ``{bias_type: [tuple of counterpart words, ...]}``."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise ValueError(f"{path}: expected a JSON object of bias type -> list of word tuples")
    return {k: [tuple(str(w) for w in t) for t in v if len(t) >= 2] for k, v in data.items()}


def crows_outcomes(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: pd.DataFrame,
    *,
    reduction: str = "mean",
    batch_size: int = 256,
) -> pd.DataFrame:
    """Score every pair: ``s_more``, ``s_less`` (mean log-prob per token by default), ``success`` (s_more > s_less)
    and ``tie``. A tie counts in N but is no success (bias-bench). Run inside :func:`transform_last_hidden` to
    score a debiased model."""
    texts = list(pairs.sent_more) + list(pairs.sent_less)
    s = sentence_logprobs(model, tokenizer, texts, reduction=reduction, batch_size=batch_size)
    n = len(pairs)
    out = pairs.copy()
    out["s_more"], out["s_less"] = s[:n], s[n:]
    out["success"] = out.s_more > out.s_less
    out["tie"] = out.s_more == out.s_less
    return out


def bias_scores(outcomes: pd.DataFrame, by: Sequence[str] = ()) -> pd.DataFrame:
    """Bias score per group of ``by`` and bias type (Peng et al. 2025): metric = 100 · successes / N per CrowS
    sample, score = |mean over samples − 50|; the row ``bias_type="avg"`` averages the types. Columns: *by,
    bias_type, metric, score, n (pairs per sample), n_ties."""
    keys = [*by, "bias_type"]
    per = (
        outcomes.groupby([*keys, "sample"])
        .agg(successes=("success", "sum"), n=("success", "size"), n_ties=("tie", "sum"))
        .reset_index()
    )
    per["metric"] = 100.0 * per.successes / per.n
    typ = per.groupby(keys).agg(metric=("metric", "mean"), n=("n", "mean"), n_ties=("n_ties", "sum")).reset_index()
    typ["score"] = (typ.metric - 50.0).abs()
    avg = (
        typ.groupby(list(by))
        .agg(metric=("metric", "mean"), score=("score", "mean"), n=("n", "mean"), n_ties=("n_ties", "sum"))
        .reset_index()
        if by
        else pd.DataFrame(
            [dict(metric=typ.metric.mean(), score=typ.score.mean(), n=typ.n.mean(), n_ties=typ.n_ties.sum())]
        )
    )
    avg["bias_type"] = "avg"
    return pd.concat([typ, avg], ignore_index=True)[[*keys, "metric", "score", "n", "n_ties"]]


def significance_threshold(n: int = 40, alpha: float = 0.05, p: float = 0.5, method: str = "normal") -> float:
    """Smallest score (|% − 50|) that is significant for ``n`` pairs, one-tailed (Peng et al. 2025, App. B).

    ``"normal"``: k* = round(n·p + z_α·sqrt(n·p·(1−p))), threshold = 100·k*/n − 50 (12.5 for n = 40);
    ``"binom"``: k* = the exact binomial (1−α) quantile (scipy), which agrees for n ∈ {40, 80, 120, 200}.
    """
    check_int("n", n, min_value=1)
    check_range("alpha", alpha, 1e-12, 0.5)
    check_range("p", p, 1e-12, 1 - 1e-12)
    check_choice("method", method, ["normal", "binom"])
    if method == "normal":
        k = round(n * p + stats.norm.ppf(1 - alpha) * np.sqrt(n * p * (1 - p)))
    else:
        k = stats.binom.ppf(1 - alpha, n, p)
    return float(100.0 * k / n - 100.0 * p)


# --- sentence vectors and the hidden-state hook ---------------------------------------------------------------------
def _encode(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> list[list[int]]:
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    return [[start, *ids] for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def mean_pooled_hidden(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    exclude_bos: bool = True,
    batch_size: int = 64,
) -> np.ndarray:
    """``[N, d]`` mean over tokens of the base model's last hidden state (after the final norm, i.e. the LM-head
    input), START token excluded by default (an attention sink in Llama-style models)."""
    check_int("batch_size", batch_size, min_value=1)
    seqs = _encode(tokenizer, texts)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else seqs[0][0] if seqs else 0
    base = model.base_model
    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for lo in range(0, len(seqs), batch_size):
            ids, attn = pad_sequences(seqs[lo : lo + batch_size], pad)
            h = base(input_ids=ids.to(device), attention_mask=attn.to(device)).last_hidden_state.float()
            m = attn.to(device).clone().float()
            if exclude_bos:
                m[:, 0] = 0.0
            out.append(((h * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp(min=1)).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.config.hidden_size), dtype=np.float32)


@contextmanager
def transform_last_hidden(model: PreTrainedModel, fn: Callable[[torch.Tensor], torch.Tensor] | None) -> Iterator[None]:
    """Rewrite ``model.base_model``'s ``last_hidden_state`` with ``fn`` (applied to ``[..., d]`` at every position)
    while the block runs, so the model's own LM head scores debiased states (bias-bench's hook). ``None`` = no-op;
    the hook is removed on exit."""
    if fn is None:
        yield
        return

    def hook(_module, _inputs, output):
        output.last_hidden_state = fn(output.last_hidden_state)
        return output

    handle = model.base_model.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def linear_fn(P: np.ndarray) -> Callable[[torch.Tensor], torch.Tensor]:
    """``h -> h Pᵀ`` for a projection ``P`` (``[d, d]``) acting on column vectors."""
    Pt = torch.as_tensor(np.asarray(P), dtype=torch.float32)

    def fn(h: torch.Tensor) -> torch.Tensor:
        return h @ Pt.to(h.device, h.dtype).T

    return fn


# --- SentDebias -----------------------------------------------------------------------------------------------------
def counterfactual_examples(sentences: Sequence[str], tuples: Sequence[Sequence[str]]) -> list[list[str]]:
    """Counterfactual data augmentation on whitespace tokens: for each sentence and each tuple word it contains (as
    a whole token), one example whose variants replace every occurrence of that word by each tuple member."""
    out = []
    for s in sentences:
        toks = s.split()
        for tup in tuples:
            for w in dict.fromkeys(tup):
                if w in toks:
                    out.append([" ".join(v if t == w else t for t in toks) for v in tup])
    return out


def sentdebias_subspace(variant_embs: Sequence[np.ndarray], k: int = 1) -> np.ndarray:
    """``[k, d]`` bias subspace (Liang et al. 2020): unit-normalise each variant vector, subtract the mean of its
    example's variants, PCA on the stacked differences; rows are orthonormal."""
    if not variant_embs:
        raise ValueError("parameter 'variant_embs' is empty: no sentence contained a bias attribute word")
    d = variant_embs[0].shape[1]
    check_int("k", k, min_value=1, max_value=d)
    centred = []
    for e in variant_embs:
        u = e / np.linalg.norm(e, axis=1, keepdims=True).clip(min=1e-12)
        centred.append(u - u.mean(0, keepdims=True))
    return PCA(n_components=k, svd_solver="full").fit(np.concatenate(centred)).components_


def subspace_removal(V: np.ndarray) -> np.ndarray:
    """``I − VᵀV`` for orthonormal rows ``V``: h ↦ h minus its component in the bias subspace."""
    V = np.atleast_2d(V)
    return np.eye(V.shape[1]) - V.T @ V


# --- INLP -----------------------------------------------------------------------------------------------------------
def rowspace_projection(W: np.ndarray) -> np.ndarray:
    """Projection onto the row space of ``W`` (``[c, d]``): B Bᵀ with B = orth(Wᵀ)."""
    B = linalg.orth(np.atleast_2d(W).T)
    return B @ B.T


def nullspace_intersection(rowspace_projs: Sequence[np.ndarray], dim: int) -> np.ndarray:
    """Projection onto the intersection of the null spaces (Ben-Israel): I − P_R(Σ_i P_R(W_i))."""
    if not rowspace_projs:
        return np.eye(dim)
    return np.eye(dim) - rowspace_projection(np.sum(rowspace_projs, axis=0))


@dataclass
class InlpResult:
    """INLP output: projection ``P`` (``[d, d]``), classifier weights per iteration, dev accuracies before each
    removal, the majority rate and the removed rank."""

    P: np.ndarray
    Ws: list[np.ndarray] = field(default_factory=list)
    dev_acc: list[float] = field(default_factory=list)
    majority: float = 0.0
    removed_rank: int = 0


def fit_inlp(
    X: np.ndarray,
    y: np.ndarray,
    *,
    n_iter: int = 80,
    stop_at_chance: bool = True,
    max_rank_frac: float = 0.3,
    dev_frac: float = 0.3,
    seed: int = 0,
) -> InlpResult:
    """Iterative null-space projection (Ravfogel et al. 2020, bias-bench settings): fit
    ``LinearSVC(fit_intercept=False, dual=False)`` on X·P, add its row space, recompute P as the intersection of
    all null spaces. Stops after ``n_iter`` classifiers, when dev accuracy ≤ majority + 0.01 (``stop_at_chance``),
    or before the removed rank would exceed ``max_rank_frac``·d (the rank guard: a 128-d latent has fewer dimensions
    than 80 × 3 classifier rows)."""
    X, y = np.asarray(X, dtype=np.float64), np.asarray(y)
    d = X.shape[1]
    check_int("n_iter", n_iter, min_value=1)
    check_range("max_rank_frac", max_rank_frac, 0.0, 1.0)
    classes = np.unique(y)
    if len(classes) < 2:
        raise ValueError("parameter 'y' needs at least two classes for INLP")
    order = np.random.default_rng(seed).permutation(len(y))
    n_dev = max(1, int(round(dev_frac * len(y))))
    dev, tr = order[:n_dev], order[n_dev:]
    majority = float(pd.Series(y[dev]).value_counts(normalize=True).max())
    per_iter = 1 if len(classes) == 2 else len(classes)
    res = InlpResult(P=np.eye(d), majority=majority)
    projs: list[np.ndarray] = []
    for _ in range(n_iter):
        if res.removed_rank + per_iter > max_rank_frac * d:
            break
        clf = LinearSVC(fit_intercept=False, dual=False, random_state=seed).fit(X[tr] @ res.P, y[tr])
        acc = float(clf.score(X[dev] @ res.P, y[dev]))
        res.dev_acc.append(acc)
        if stop_at_chance and acc <= majority + 0.01:
            break
        W = np.atleast_2d(clf.coef_)
        res.Ws.append(W)
        projs.append(rowspace_projection(W))
        res.P = nullspace_intersection(projs, d)
        res.removed_rank = int(round(np.trace(np.eye(d) - res.P)))
    return res


def random_removal(dim: int, rank: int, seed: int = 0) -> np.ndarray:
    """``I − QQᵀ`` for a uniformly random ``rank``-dimensional subspace (the random-direction control)."""
    check_int("rank", rank, min_value=0, max_value=dim)
    if rank == 0:
        return np.eye(dim)
    Q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(dim, rank)))
    return np.eye(dim) - Q @ Q.T


# --- cross-lingual autoencoder --------------------------------------------------------------------------------------
def _mlp(sizes: Sequence[int]) -> torch.nn.Sequential:
    layers: list[torch.nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(torch.nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


class CrossLingualAE(torch.nn.Module):
    """Shared MLP encoder and one mirrored decoder per language (Peng et al. 2025, §2). Inputs are standardised
    with the stored per-dimension ``mu``/``sigma``; no activation on the bottleneck or the output."""

    def __init__(self, dim: int, langs: Sequence[str], hidden: Sequence[int] = (128,), latent: int = 32):
        super().__init__()
        sizes = [dim, *hidden, latent]
        self.langs = list(langs)
        self.encoder = _mlp(sizes)
        self.decoders = torch.nn.ModuleDict({lang: _mlp(sizes[::-1]) for lang in self.langs})
        self.register_buffer("mu", torch.zeros(dim))
        self.register_buffer("sigma", torch.ones(dim))

    def encode(self, h: torch.Tensor) -> torch.Tensor:
        """Raw hidden states → latent codes."""
        return self.encoder((h - self.mu) / self.sigma)

    def decode(self, z: torch.Tensor, lang: str) -> torch.Tensor:
        """Latent codes → raw hidden states of ``lang``."""
        return self.decoders[lang](z) * self.sigma + self.mu


def ae_loss_terms(ae: CrossLingualAE, x: torch.Tensor, y: torch.Tensor, la: str, lb: str) -> dict[str, torch.Tensor]:
    """The four MSE terms of Peng et al.'s Eq. 1 on standardised vectors for a parallel pair (x in ``la``, y in
    ``lb``): self_x, self_y, cross_y_from_x (dec_lb(enc x) vs y), cross_x_from_y; the loss is their sum."""
    xs, ys = (x - ae.mu) / ae.sigma, (y - ae.mu) / ae.sigma
    zx, zy = ae.encoder(xs), ae.encoder(ys)
    mse = torch.nn.functional.mse_loss
    return dict(
        self_x=mse(ae.decoders[la](zx), xs),
        self_y=mse(ae.decoders[lb](zy), ys),
        cross_y_from_x=mse(ae.decoders[lb](zx), ys),
        cross_x_from_y=mse(ae.decoders[la](zy), xs),
    )


def train_ae(
    ae: CrossLingualAE,
    train: dict[str, np.ndarray],
    dev: dict[str, np.ndarray],
    *,
    lr: float = 1e-3,
    max_epochs: int = 200,
    patience: int = 5,
    batch_size: int = 256,
    weight_decay: float = 0.01,
    seed: int = 0,
) -> pd.DataFrame:
    """Train on every language pair of aligned rows (``train[lang][i]`` are translations of each other) with AdamW;
    dev loss after every epoch, early stopping after ``patience`` epochs without improvement, best weights restored.
    Sets ``mu``/``sigma`` from the training vectors. Returns the history (epoch, train_loss, dev_loss)."""
    check_positive("lr", lr)
    check_int("max_epochs", max_epochs, min_value=1)
    check_int("patience", patience, min_value=0)
    langs = ae.langs
    if len(langs) < 2:
        raise ValueError(f"the cross-lingual autoencoder needs at least two languages, got {langs}")
    allx = np.concatenate([train[x] for x in langs])
    ae.mu.copy_(torch.as_tensor(allx.mean(0), dtype=torch.float32))
    ae.sigma.copy_(torch.as_tensor(allx.std(0) + 1e-6, dtype=torch.float32))
    pairs = [(a, b) for i, a in enumerate(langs) for b in langs[i + 1 :]]
    tr = {x: torch.as_tensor(train[x], dtype=torch.float32) for x in langs}
    dv = {x: torch.as_tensor(dev[x], dtype=torch.float32) for x in langs}
    n = len(tr[langs[0]])
    seed_everything(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(ae.parameters(), lr=lr, weight_decay=weight_decay)

    def total(batch: dict[str, torch.Tensor], idx: torch.Tensor | None) -> torch.Tensor:
        # Eq. 1 summed over all language pairs, each language encoded once: every self term occurs once per partner
        # language and every ordered cross term once (equal to summing ae_loss_terms over the pairs; tested).
        xs = {x: (batch[x] if idx is None else batch[x][idx]) for x in langs}
        zs = {x: ae.encoder((v - ae.mu) / ae.sigma) for x, v in xs.items()}
        loss = torch.zeros(())
        for a in langs:
            for b in langs:
                w = len(langs) - 1 if a == b else 1
                loss = loss + w * torch.nn.functional.mse_loss(ae.decoders[b](zs[a]), (xs[b] - ae.mu) / ae.sigma)
        return loss / len(pairs)

    hist, best, best_state, bad = [], np.inf, copy.deepcopy(ae.state_dict()), 0
    for epoch in range(1, max_epochs + 1):
        ae.train()
        perm, losses = torch.randperm(n, generator=gen), []
        for lo in range(0, n, batch_size):
            loss = total(tr, perm[lo : lo + batch_size])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        ae.eval()
        with torch.no_grad():
            dev_loss = float(total(dv, None))
        hist.append(dict(epoch=epoch, train_loss=float(np.mean(losses)), dev_loss=dev_loss))
        if dev_loss < best - 1e-6:
            best, best_state, bad = dev_loss, copy.deepcopy(ae.state_dict()), 0
        else:
            bad += 1
            if bad > patience:
                break
    ae.load_state_dict(best_state)
    return pd.DataFrame(hist)


def latent_hidden_fn(
    ae: CrossLingualAE, lang: str, P_latent: np.ndarray | None = None, mode: str = "replace"
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Debias in the AE's latent space: z = enc(h); z' = P z (``None`` = identity, the AE round-trip control).
    ``"replace"`` (Peng et al.): h ← dec_lang(z'); ``"delta"``: h ← h + dec_lang(z') − dec_lang(z), so only the
    debiasing change reaches h (``P_latent=None`` is then exactly the identity)."""
    check_choice("mode", mode, ["replace", "delta"])
    check_choice("lang", lang, ae.langs)
    P = None if P_latent is None else torch.as_tensor(np.asarray(P_latent), dtype=torch.float32)

    def fn(h: torch.Tensor) -> torch.Tensor:
        if mode == "delta" and P is None:
            return h
        with torch.no_grad():
            z = ae.encode(h.float())
            zp = z if P is None else z @ P.to(z.device).T
            out = ae.decode(zp, lang)
            if mode == "delta":
                out = h.float() + out - ae.decode(z, lang)
        return out.to(h.dtype)

    return fn


def ae_encode(ae: CrossLingualAE, X: np.ndarray) -> np.ndarray:
    """Latent codes of raw vectors ``X`` (NumPy in, NumPy out)."""
    with torch.no_grad():
        return ae.encode(torch.as_tensor(X, dtype=torch.float32, device=ae.mu.device)).cpu().numpy()


def retrieval_at1(X: np.ndarray, Y: np.ndarray) -> float:
    """Share of rows of ``X`` whose cosine-nearest row of ``Y`` is its own translation (same index)."""
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True).clip(min=1e-12)
    Yn = Y / np.linalg.norm(Y, axis=1, keepdims=True).clip(min=1e-12)
    return float(((Xn @ Yn.T).argmax(1) == np.arange(len(X))).mean())


# --- preference optimisation ----------------------------------------------------------------------------------------
def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sigmoid DPO loss (Rafailov et al. 2023; trl's default): mean of −log σ(β[(π_c − ref_c) − (π_r − ref_r)])
    over sequence log-probs summed over completion tokens. Returns (loss, chosen rewards, rejected rewards) with
    reward = β(log π_θ − log π_ref). π_θ = π_ref gives log 2."""
    check_positive("beta", beta, allow_zero=True)
    chosen = beta * (policy_chosen - ref_chosen)
    rejected = beta * (policy_rejected - ref_rejected)
    loss = -torch.nn.functional.logsigmoid(chosen - rejected).mean()
    return loss, chosen.detach(), rejected.detach()


def dpo_train(
    policy: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    chosen: Sequence[str],
    rejected: Sequence[str],
    *,
    beta: float = 0.1,
    lr: float = 1e-4,
    steps: int = 150,
    batch_size: int = 16,
    seed: int = 0,
) -> pd.DataFrame:
    """Direct preference optimisation of ``policy`` in place against a frozen copy of itself (AdamW, constant lr).
    Returns the history (step, loss, reward margin)."""
    check_int("steps", steps, min_value=0)
    check_int("batch_size", batch_size, min_value=1)
    check_positive("lr", lr)
    if not (len(prompts) == len(chosen) == len(rejected)) or not prompts:
        raise ValueError("parameters 'prompts', 'chosen' and 'rejected' must be non-empty and of equal length")
    seed_everything(seed)
    ref = copy.deepcopy(policy).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(policy.parameters(), lr=lr, weight_decay=0.0)
    policy.train()
    hist = []
    for step in range(steps):
        idx = rng.choice(len(prompts), size=min(batch_size, len(prompts)), replace=False)
        pr = [prompts[i] for i in idx]
        both = [chosen[i] for i in idx] + [rejected[i] for i in idx]
        lp = completion_logprobs(policy, tokenizer, pr + pr, both, grad=True, batch_size=2 * len(idx))
        with torch.no_grad():
            lr_ = completion_logprobs(ref, tokenizer, pr + pr, both, grad=True, batch_size=2 * len(idx))
        k = len(idx)
        loss, rc, rr = dpo_loss(lp[:k], lp[k:], lr_[:k], lr_[k:], beta=beta)
        opt.zero_grad()
        loss.backward()
        opt.step()
        hist.append(dict(step=step, loss=loss.item(), margin=float((rc - rr).mean())))
    policy.eval()
    return pd.DataFrame(hist)


# --- generation metrics ---------------------------------------------------------------------------------------------
def expected_max_toxicity(scores: Sequence[Sequence[float]]) -> float:
    """Mean over prompts of the maximum toxicity over that prompt's samples (Gehman et al. 2020)."""
    return float(np.mean([np.max(s) for s in scores]))


def language_consistency(words: Sequence[str], vocabulary: set[str]) -> float:
    """Share of generated words that belong to the prompt language's vocabulary (1.0 for no words)."""
    return float(np.mean([w in vocabulary for w in words])) if words else 1.0


def distinct_n(prompt: Sequence[str], generated: Sequence[str], n: int = 1) -> float:
    """Neplenbroek et al.'s diversity: generated n-grams not in the prompt, as a share of generated tokens."""
    check_int("n", n, min_value=1)
    grams = lambda toks: {tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)}  # noqa: E731
    return len(grams(list(generated)) - grams(list(prompt))) / max(1, len(generated))
