"""Persona documents with a latent culture, their Bayes-optimal reader, and its LM wrapper (chapter 06).

A *persona* from country ``c`` answers value probes: the country fixes each item's marginal ``p[c, j]`` (the
planted ``p(option 1)`` of the world, or a survey share), and a persona-level latent ``eta ~ N(0, I_2)`` ties
answers together along the items' loadings ``u_j`` (a Gaussian copula, so every country's marginal stays exact):

    P(option 1 | c, eta) = Phi((Phi^-1(p[c, j]) + sqrt(rho) u_j . eta) / sqrt(1 - rho)).

A document written in language ``L`` is one persona's answers to a few probes; its country is drawn from the
language's prior ``pi_L`` (mostly the home culture, some English-speaking culture: an English-centric web). This
is the "in-context learning as implicit Bayesian inference" setting (Xie et al. 2022): the latent (country, eta)
is shared by all answers of a document, so earlier answers tell a reader how to answer later ones.

:class:`PersonaWorld` samples such documents and computes the exact posterior predictive on a Gauss-Hermite grid;
:class:`BayesPersonaLM` wraps it as ``forward(input_ids) -> logits`` over a word-level tokenizer, so the chapter
scores and samples it with exactly the code that scores a trained or hub LM.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch
from scipy import stats

from mlmc.alignment import INSTRUCTION, blank, format_block
from mlmc.errors import check_choice, check_int, check_range, check_subset

HOME_SHARE = 0.6
ANCHOR_SHARE = 0.3


def value_loadings(p_table: pd.DataFrame, dims: int = 2) -> pd.DataFrame:
    """Unit loadings ``u_j`` of items (rows of ``p_table``: qid x culture ``p(option 1)``) on the top principal
    axes of their centred logits: items that separate cultures in the same way load on the same axis."""
    check_int("dims", dims, min_value=1, max_value=min(p_table.shape))
    z = np.log(p_table.to_numpy()) - np.log1p(-p_table.to_numpy())
    z = z - z.mean(axis=1, keepdims=True)
    u, s, _ = np.linalg.svd(z, full_matrices=False)
    load = u[:, :dims] * s[:dims]
    load = load / np.linalg.norm(load, axis=1, keepdims=True).clip(min=1e-12)
    return pd.DataFrame(load, index=p_table.index, columns=[f"u{k}" for k in range(dims)])


def language_prior(
    langs: Sequence[str], anchor: str, home_share: float = HOME_SHARE, anchor_share: float = ANCHOR_SHARE
) -> pd.DataFrame:
    """``pi_L(c)``: rows = document language, columns = country (one per language), rows summing to one:
    ``pi_L(c) ∝ rest + home_share [c = L] + anchor_share [c = anchor]`` with ``rest = (1 - home_share -
    anchor_share) / (n - 1)`` for every culture. A document in ``L`` thus mostly comes from ``L``'s own culture and
    from the ``anchor`` (English-speaking) culture, and sometimes from any other."""
    langs = list(langs)
    check_choice("anchor", anchor, langs)
    check_range("home_share", home_share, 0.0, 1.0)
    check_range("anchor_share", anchor_share, 0.0, 1.0 - home_share)
    rest = (1.0 - home_share - anchor_share) / max(len(langs) - 1, 1)
    prior = pd.DataFrame(rest, index=langs, columns=langs)
    for lang in langs:
        prior.loc[lang, lang] += home_share
        prior.loc[lang, anchor] += anchor_share
    if len(langs) == 1:
        prior.iloc[0, 0] = 1.0
    return prior.div(prior.sum(axis=1), axis=0)


@dataclass
class PersonaWorld:
    """Countries (one per language), items with planted marginals and loadings, and a language prior.

    ``probes``: columns lang, qid, category, template, opt1, opt2, target_p1 (``target_p1`` is country ``lang``'s
    p(option 1)); ``loadings``: qid -> unit vector; ``prior``: :func:`language_prior`; ``rho`` in [0, 1): the share
    of an answer's latent that the persona shares across items (``rho = 0``: answers independent given country).
    """

    probes: pd.DataFrame
    loadings: pd.DataFrame
    prior: pd.DataFrame
    rho: float = 0.5
    n_grid: int = 12

    def __post_init__(self) -> None:
        check_range("rho", self.rho, 0.0, 0.95)
        check_int("n_grid", self.n_grid, min_value=1)
        self.langs = list(self.prior.index)
        self.countries = list(self.prior.columns)
        check_subset("probes.lang", sorted(set(self.probes.lang)), self.langs)
        self.qids = sorted(set(self.probes.qid), key=_qid_order)
        check_subset("loadings", self.qids, list(self.loadings.index))
        wide = self.probes.pivot(index="qid", columns="lang", values="target_p1").loc[self.qids, self.countries]
        self._z = stats.norm.ppf(wide.to_numpy().clip(1e-6, 1 - 1e-6))  # [item, country]
        self._u = self.loadings.loc[self.qids].to_numpy()  # [item, dims]
        x, w = np.polynomial.hermite_e.hermegauss(self.n_grid)  # nodes for N(0, 1)
        grids = np.meshgrid(*([x] * self._u.shape[1]), indexing="ij")
        self._eta = np.stack([g.ravel() for g in grids], axis=1)  # [grid, dims]
        ws = np.meshgrid(*([w / w.sum()] * self._u.shape[1]), indexing="ij")
        self._w_eta = np.prod(np.stack([g.ravel() for g in ws], axis=1), axis=1)
        if self.rho == 0.0:
            self._eta, self._w_eta = self._eta[:1] * 0.0, np.ones(1)
        self._qidx = {q: i for i, q in enumerate(self.qids)}
        self._p1 = self._cond_p1()  # [item, country, grid]

    def _cond_p1(self) -> np.ndarray:
        shift = np.sqrt(self.rho) * (self._u @ self._eta.T)  # [item, grid]
        return stats.norm.cdf((self._z[:, :, None] + shift[:, None, :]) / np.sqrt(1.0 - self.rho))

    def marginal(self, lang: str) -> pd.Series:
        """Zero-shot p(option 1) of a reader who knows only the document language (prior mixture)."""
        pi = self.prior.loc[lang].to_numpy()
        return pd.Series((self._p1 * self._w_eta).sum(-1) @ pi, index=self.qids, name=lang)

    def predictive(self, lang: str, demos: Sequence[tuple[str, int]], test_qid: str) -> float:
        """Posterior predictive p(option 1 of ``test_qid``) after answers ``demos`` = [(qid, 1|2), ...] in ``lang``."""
        logw = np.log(self.prior.loc[lang].to_numpy())[:, None] + np.log(self._w_eta)[None, :]
        for qid, ans in demos:
            p = self._p1[self._qidx[qid]]
            logw = logw + np.log(np.clip(p if ans == 1 else 1.0 - p, 1e-300, None))
        w = np.exp(logw - logw.max())
        return float((w * self._p1[self._qidx[test_qid]]).sum() / w.sum())

    def sample_documents(
        self,
        n_docs: int,
        rng: np.random.Generator,
        langs: Sequence[str] | None = None,
        max_pairs: int = 8,
        oracle: bool = False,
    ) -> pd.DataFrame:
        """``n_docs`` persona documents: columns lang, country, text, qids, answers (1|2) and prior (the prior-only
        p(option 1) of each answer); with ``oracle`` also p1, the Bayes predictive before each answer. Options are
        shown in random order."""
        langs = self.langs if langs is None else check_subset("langs", langs, self.langs)
        check_int("max_pairs", max_pairs, min_value=1, max_value=len(self.qids))
        by = {
            lang: {
                r.qid: (blank(r.template), r.opt1, r.opt2) for r in self.probes[self.probes.lang == lang].itertuples()
            }
            for lang in langs
        }
        margs = {lang: self.marginal(lang) for lang in langs}
        rows = []
        for _ in range(n_docs):
            lang = langs[int(rng.integers(len(langs)))]
            c = int(rng.choice(len(self.countries), p=self.prior.loc[lang].to_numpy()))
            eta = rng.standard_normal(self._u.shape[1]) if self.rho > 0 else np.zeros(self._u.shape[1])
            n = int(rng.integers(1, max_pairs + 1))
            qids = [self.qids[i] for i in rng.choice(len(self.qids), size=n, replace=False)]
            blocks, answers, p1, prior = [INSTRUCTION], [], [], []
            for q in qids:
                j = self._qidx[q]
                z = np.sqrt(self.rho) * self._u[j] @ eta + np.sqrt(1 - self.rho) * rng.standard_normal()
                ans = 1 if z + self._z[j, c] > 0 else 2
                if oracle:
                    p1.append(self.predictive(lang, list(zip(qids, answers, strict=False)), q))
                prior.append(float(margs[lang][q]))
                question, o1, o2 = by[lang][q]
                shown = [o1, o2][:: 1 if rng.random() < 0.5 else -1]
                blocks.append(format_block(question, shown, o1 if ans == 1 else o2))
                answers.append(ans)
            row = dict(lang=lang, country=self.countries[c], text="\n".join(blocks), qids=qids, answers=answers)
            rows.append(row | dict(prior=prior) | (dict(p1=p1) if oracle else {}))
        return pd.DataFrame(rows)


def _qid_order(qid: str) -> tuple[int, str]:
    digits = "".join(ch for ch in qid if ch.isdigit())
    return (int(digits) if digits else 0, qid)


class BayesPersonaLM(torch.nn.Module):
    """The Bayes-optimal reader of persona documents as a causal LM: ``forward(input_ids) -> .logits``.

    At the last answer marker ``A:`` of a sequence it parses the Q/A blocks before it (word-level tokens),
    identifies items by their blanked template and options, and puts ``log p`` of the posterior predictive on the
    two option tokens (``-30`` elsewhere); at every other position the end-of-text token is certain, so sampling
    stops after one answer. ``associations=False`` ignores the demonstrations (a reader without associations
    between answers: the prior-only reference).
    """

    def __init__(self, world: PersonaWorld, tokenizer, associations: bool = True) -> None:
        super().__init__()
        self.world, self.tok, self.associations = world, tokenizer, associations
        self._anchor = torch.nn.Parameter(torch.zeros(1), requires_grad=False)
        self.vocab = len(tokenizer)
        self.marker, self.q_id, self.opt_id = tokenizer.convert_tokens_to_ids(["A:", "Q:", "Options:"])
        self.items: dict[tuple[str, ...], tuple[str, str, str, str]] = {}
        for r in world.probes.itertuples():
            q = tokenizer.convert_ids_to_tokens(tokenizer(blank(r.template), add_special_tokens=False)["input_ids"])
            key = (*q, "|", *sorted([r.opt1, r.opt2]))
            if key in self.items and self.items[key][:2] != (r.lang, r.qid):
                raise ValueError(f"probes {self.items[key][:2]} and {(r.lang, r.qid)} render identically")
            self.items[key] = (r.lang, r.qid, r.opt1, r.opt2)
        self._cache: dict[tuple, float] = {}

    def _predictive(self, lang: str, demos: tuple[tuple[str, int], ...], qid: str) -> float:
        key = (lang, demos if self.associations else (), qid)
        if key not in self._cache:
            self._cache[key] = self.world.predictive(*key)
        return self._cache[key]

    def _blocks(self, row: list[int]) -> list[tuple[int, tuple[str, str, str, str]]]:
        """(marker position, item) of every complete ``Q: ... Options: a / b A:`` block of ``row``."""
        toks = self.tok.convert_ids_to_tokens(row)
        out, q, opt = [], None, None
        for i, t in enumerate(row):
            if t == self.q_id:
                q, opt = i, None
            elif t == self.opt_id and q is not None:
                opt = i
            elif t == self.marker and q is not None and opt is not None:
                options = [x for x in toks[opt + 1 : i] if x != "/"]
                out.append((i, self.items[(*toks[q + 1 : opt], "|", *sorted(options))]))
                q = opt = None
        return out

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_) -> SimpleNamespace:
        rows = input_ids.cpu().tolist()
        logits = torch.full((*input_ids.shape, self.vocab), -30.0)
        logits[:, :, self.tok.eos_token_id] = 0.0
        for b, row in enumerate(rows):
            blocks = self._blocks(row)
            if not blocks:
                continue
            demos = []
            for pos, (_, qid, o1, o2) in blocks[:-1]:
                ans = row[pos + 1] if pos + 1 < len(row) else None
                i1, i2 = self.tok.convert_tokens_to_ids([o1, o2])
                if ans in (i1, i2):
                    demos.append((qid, 1 if ans == i1 else 2))
            pos, (lang, qid, o1, o2) = blocks[-1]
            p = self._predictive(lang, tuple(demos), qid)
            i1, i2 = self.tok.convert_tokens_to_ids([o1, o2])
            logits[b, pos] = -30.0
            logits[b, pos, i1] = float(np.log(max(p, 1e-12)))
            logits[b, pos, i2] = float(np.log(max(1.0 - p, 1e-12)))
        return SimpleNamespace(logits=logits.to(input_ids.device))
