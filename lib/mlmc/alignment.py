"""Self-alignment by in-context learning: prompts, demonstration selection, answer reading, metrics (chapter 06).

The method of Choenni & Shutova (2024; thesis ch. 8): before a value probe, show ``k`` other probes of the same
language, each completed with the target country's majority answer, and see whether the model's answer to the test
probe moves to that country's majority.

* prompts: :func:`blank`, :func:`format_block`, :func:`build_prompt`, :func:`to_model_text` (chat templates);
* demonstrations: :func:`chrf_matrix` (chrF++ from ``sacrebleu``), :func:`select_demos` (strategies
  :data:`STRATEGIES`; the test item is never a demonstration);
* answers: :func:`option_probs` (two option log-probabilities -> p), :func:`sample_answers` (N draws from p),
  :func:`generate` (sampled continuations through ``forward(input_ids) -> logits``), :func:`parse_option`;
* metrics: :func:`misalignment` (delta), :func:`outcome` (+ / no effect / -), :func:`error_reduction`
  (Eq. 8.1), :func:`outcome_table`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from sacrebleu.metrics import CHRF

from mlmc.errors import check_choice, check_int, check_positive, check_range

INSTRUCTION = "Fill in the blank with one of the two options. Answer with the option only."
STRATEGIES = ("random", "random_cat", "chrf_cat", "chrf")
CONDITIONS = ("zero_shot", *STRATEGIES, "chrf_shuffled")
OUTCOMES = ("+", "/", "-")
MASK = "[MASK]"


def blank(template: str, mask: str = MASK, gap: str = "_") -> str:
    """Replace the template's single ``mask`` with ``gap``; letters glued to the mask stay (``[MASK]es`` -> ``_es``)."""
    if template.count(mask) != 1:
        raise ValueError(f"template must hold exactly one {mask!r}, got {template!r}")
    return template.replace(mask, gap)


def format_block(question: str, shown: Sequence[str], answer: str | None) -> str:
    """One Q/A block: ``Q: <question> Options: a / b`` then ``A: <answer>`` (``A:`` alone for the test item)."""
    if len(shown) != 2:
        raise ValueError(f"a block shows exactly two options, got {list(shown)}")
    tail = "A:" if answer is None else f"A: {answer}"
    return f"Q: {question} Options: {shown[0]} / {shown[1]}\n{tail}"


@dataclass(frozen=True)
class Prompt:
    """A built prompt: its text, the test item's options in shown order, and the demonstration qids in order."""

    text: str
    shown: tuple[str, str]
    demo_qids: tuple[str, ...]


def build_prompt(
    test: Any,
    demos: Sequence[Any],
    answers: dict[str, str],
    rng: np.random.Generator,
    instruction: str = INSTRUCTION,
    test_first: str | None = None,
) -> Prompt:
    """Instruction, one block per demonstration (records with qid, template, opt1, opt2; answered with
    ``answers[qid]``, an option *string*), then the test item with no answer. Every block shows its two options
    in an order drawn from ``rng``; ``test_first`` fixes which test option is shown first (scoring averages over
    both orders)."""
    if test.qid in {d.qid for d in demos}:
        raise ValueError(f"the test item {test.qid!r} is among its own demonstrations")
    blocks = [instruction] if instruction else []
    for d in demos:
        if answers[d.qid] not in (d.opt1, d.opt2):
            raise ValueError(f"answer {answers[d.qid]!r} of {d.qid!r} is not one of its options")
        shown = [d.opt1, d.opt2][:: 1 if rng.random() < 0.5 else -1]
        blocks.append(format_block(blank(d.template), shown, answers[d.qid]))
    flip = rng.random() >= 0.5 if test_first is None else test_first != test.opt1
    if test_first is not None and test_first not in (test.opt1, test.opt2):
        raise ValueError(f"test_first {test_first!r} is not an option of {test.qid!r}")
    shown = (test.opt2, test.opt1) if flip else (test.opt1, test.opt2)
    blocks.append(format_block(blank(test.template), shown, None))
    return Prompt("\n".join(blocks), shown, tuple(d.qid for d in demos))


def to_model_text(prompt: str, tokenizer) -> str:
    """The prompt as one user turn of the tokenizer's chat template (generation prompt added), or unchanged when
    the tokenizer has no template (the tiny models, BLOOMZ)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    return prompt


# --- demonstration selection ----------------------------------------------------------------------------------------
def chrf_matrix(texts: Sequence[str]) -> np.ndarray:
    """``M[i, j]`` = sentence chrF++ (``sacrebleu`` CHRF, char order 6, word order 2, beta 2) of candidate ``j``
    as hypothesis against item ``i`` as reference; the diagonal is ``-inf`` (an item is never its own candidate)."""
    metric = CHRF(char_order=6, word_order=2, beta=2)
    n = len(texts)
    out = np.full((n, n), -np.inf)
    for i in range(n):
        for j in range(n):
            if i != j:
                out[i, j] = metric.sentence_score(texts[j], [texts[i]]).score
    return out


def check_strategies(strategies: Sequence[str], name: str = "strategies") -> list[str]:
    """Each strategy must be one of :data:`STRATEGIES` or ``chrf_shuffled``."""
    allowed = [*STRATEGIES, "chrf_shuffled"]
    if isinstance(strategies, str):
        raise ValueError(f"parameter {name!r} must be a list from {allowed}, got the string {strategies!r}")
    for s in strategies:
        check_choice(name, s, allowed)
    return list(strategies)


def check_k(k: int, pool_size: int, name: str = "k") -> int:
    """``k`` demonstrations need a pool of at least ``k`` other items."""
    check_int(name, k, min_value=1)
    if k > pool_size - 1:
        raise ValueError(
            f"parameter {name!r} ({k}) is larger than the demonstration pool ({pool_size - 1} other items)"
        )
    return k


def select_demos(
    pool: pd.DataFrame,
    test_qid: str,
    strategy: str,
    k: int,
    rng: np.random.Generator,
    chrf: pd.DataFrame | None = None,
) -> list[str]:
    """qids of ``k`` demonstrations for ``test_qid`` from ``pool`` (one language; columns qid, category).

    ``random``: uniform over the other items; ``random_cat``: uniform within the test's category; ``chrf_cat`` /
    ``chrf``: the top ``k`` by chrF++ (``chrf``: qid x qid table from :func:`chrf_matrix`) within the category / over
    the whole pool, most similar first, ties in pool order. A category with fewer than ``k`` other items gives
    them all. The test item is never returned. ``chrf_shuffled`` selects like ``chrf``; its order is shuffled later.
    """
    check_strategies([strategy], "strategy")
    if test_qid not in set(pool.qid):
        raise ValueError(f"test item {test_qid!r} is not in the pool")
    check_k(k, len(pool))
    others = pool[pool.qid != test_qid]
    if strategy in ("random_cat", "chrf_cat"):
        cat = pool.loc[pool.qid == test_qid, "category"].iloc[0]
        others = others[others.category == cat]
    if strategy in ("random", "random_cat"):
        pick = rng.choice(len(others), size=min(k, len(others)), replace=False)
        return [str(q) for q in others.qid.to_numpy()[np.sort(pick)]]
    if chrf is None:
        raise ValueError(f"strategy {strategy!r} needs the chrF++ table")
    scores = chrf.loc[test_qid, others.qid].to_numpy()
    order = np.argsort(-scores, kind="stable")[:k]
    return [str(q) for q in others.qid.to_numpy()[order]]


# --- reading answers ------------------------------------------------------------------------------------------------
def option_probs(logprobs: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Softmax over the last axis of option log-probabilities at sampling ``temperature``."""
    check_positive("temperature", temperature)
    z = np.asarray(logprobs, dtype=float) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def sample_answers(p_maj: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` Bernoulli draws per item of "the answer is the majority" with probability ``p_maj`` -> [items, n]."""
    check_int("n", n, min_value=1)
    p = np.asarray(p_maj, dtype=float)
    return rng.random((p.size, n)) < p.reshape(-1, 1)


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    tokenizer,
    prompts: Sequence[str],
    *,
    n: int,
    temperature: float,
    max_new_tokens: int = 10,
    seed: int = 0,
    batch_size: int = 16,
) -> list[list[str]]:
    """``n`` sampled continuations of each prompt (text after the prompt), drawn token by token from
    ``model(input_ids).logits`` at ``temperature``; stops at the end-of-text token. Prompts are left-padded."""
    check_int("n", n, min_value=1)
    check_positive("temperature", temperature)
    check_int("max_new_tokens", max_new_tokens, min_value=1)
    gen = torch.Generator().manual_seed(seed)
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    device = next(model.parameters()).device
    enc = [[start, *ids] for ids in tokenizer(list(prompts), add_special_tokens=False)["input_ids"]]
    jobs = [(i, s) for i, s in enumerate(enc) for _ in range(n)]
    out: list[list[str]] = [[] for _ in prompts]
    for lo in range(0, len(jobs), batch_size):
        chunk = jobs[lo : lo + batch_size]
        width = max(len(s) for _, s in chunk)
        ids = torch.tensor([[pad] * (width - len(s)) + s for _, s in chunk])
        attn = (torch.arange(width)[None, :] >= torch.tensor([width - len(s) for _, s in chunk])[:, None]).long()
        done = torch.zeros(len(chunk), dtype=torch.bool)
        new = []
        for _ in range(max_new_tokens):
            pos = (attn.cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=ids.to(device), attention_mask=attn.to(device), position_ids=pos.to(device))
            probs = torch.softmax(logits.logits[:, -1].float().cpu() / temperature, -1)
            nxt = torch.multinomial(probs, 1, generator=gen).squeeze(1)
            nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
            new.append(nxt)
            done |= nxt == eos
            ids = torch.cat([ids, nxt[:, None]], 1)
            attn = torch.cat([attn, (~done | (nxt == eos)).long()[:, None]], 1)
            if bool(done.all()):
                break
        cont = torch.stack(new, 1).tolist()
        for (i, _), toks in zip(chunk, cont, strict=True):
            toks = toks[: toks.index(eos)] if eos in toks else toks
            out[i].append(tokenizer.decode(toks, skip_special_tokens=True))
    return out


def parse_option(text: str, options: Sequence[str]) -> int | None:
    """Index of the option that ``text`` answers: whole-word, case-insensitive, punctuation stripped; the earliest
    match wins, then the longest (``disagree`` is never read as ``agree``). ``None`` when no option occurs or
    when two different options start at the same place."""
    clean = " " + re.sub(r"[^\w\s]", " ", text.lower()) + " "
    clean = re.sub(r"\s+", " ", clean)
    hits = []
    for i, opt in enumerate(options):
        o = re.sub(r"\s+", " ", re.sub(r"[^\w\s]", " ", opt.lower())).strip()
        if not o:
            continue
        m = re.search(r"(?<=\s)" + re.escape(o) + r"(?=\s)", clean)
        if m:
            hits.append((m.start(), -len(o), i))
    if not hits:
        return None
    hits.sort()
    if len(hits) > 1 and hits[0][:2] == hits[1][:2] and hits[0][2] != hits[1][2]:
        return None
    return hits[0][2]


# --- metrics --------------------------------------------------------------------------------------------------------
def misalignment(correct: np.ndarray) -> np.ndarray:
    """delta = 100 (1 - accuracy) per item from [items, N] booleans (or from expected accuracies [items])."""
    c = np.asarray(correct, dtype=float)
    return 100.0 * (1.0 - (c.mean(axis=-1) if c.ndim > 1 else c))


def outcome(d_zs: np.ndarray, d_sa: np.ndarray, eps: float = 1e-9) -> np.ndarray:
    """'+' where self-alignment lowered delta, '-' where it raised it, '/' within ``eps``."""
    check_range("eps", eps, 0.0, np.inf)
    diff = np.asarray(d_sa, dtype=float) - np.asarray(d_zs, dtype=float)
    return np.where(diff < -eps, "+", np.where(diff > eps, "-", "/"))


def error_reduction(d_zs: np.ndarray, d_sa: np.ndarray) -> np.ndarray:
    """Eq. 8.1: (delta_zs - delta_sa) / delta_zs where the outcome is '+'; NaN elsewhere (and where delta_zs = 0)."""
    d_zs, d_sa = np.asarray(d_zs, dtype=float), np.asarray(d_sa, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        red = (d_zs - d_sa) / d_zs
    return np.where((d_zs > 0) & (outcome(d_zs, d_sa) == "+"), red, np.nan)


def outcome_table(df: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """% of misaligned items (``d_zs > 0``) per outcome, grouped ``by``; columns ``+``, ``/``, ``-``, ``n_misaligned``.
    ``df`` needs columns ``d_zs`` and ``d_sa``."""
    m = df[df.d_zs > 0].assign(outcome=lambda x: outcome(x.d_zs, x.d_sa))
    counts = m.groupby(list(by))["outcome"].value_counts().unstack(fill_value=0)
    counts = counts.reindex(columns=list(OUTCOMES), fill_value=0)
    n = counts.sum(axis=1)
    out = 100.0 * counts.div(n, axis=0)
    out["n_misaligned"] = n
    out.columns.name = None
    return out
