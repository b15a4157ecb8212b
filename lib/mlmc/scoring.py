"""Batched log-probability scoring for causal, masked and sequence-to-sequence LMs (ch. 04, 05, 06, 07).

* causal LMs: :func:`completion_logprobs` (log p of a completion given a prompt; differentiable for DPO) and
  :func:`sentence_logprobs` (CrowS-style sentence scores);
* masked LMs: :func:`mask_logprobs` (full-vocabulary log-softmax at a mask), :func:`masked_candidate_logprobs`
  (cloze options, one mask per word piece) and :func:`pseudo_log_likelihood` / :func:`token_pseudo_logprobs`;
* seq2seq LMs: :func:`span_candidate_logprobs` (T5 sentinel cloze).

Every function pads a batch on the right and masks the padding, so a batched score equals the score computed one
example at a time (the tests check this against a plain per-example loop).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mlmc.errors import check_choice, check_int
from mlmc.train import pad_sequences

REDUCTIONS = ("sum", "mean", "first")


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _reduce(logps: torch.Tensor, mask: torch.Tensor, reduction: str) -> torch.Tensor:
    """Reduce per-token log-probs ``[n, L]`` over the positions in ``mask``: sum, mean or the first one."""
    logps = logps.masked_fill(~mask, 0.0)
    if reduction == "sum":
        return logps.sum(-1)
    if reduction == "mean":
        return logps.sum(-1) / mask.sum(-1).clamp(min=1)
    return logps.gather(1, mask.float().argmax(-1, keepdim=True)).squeeze(1)


def _start_id(tokenizer: PreTrainedTokenizerBase) -> int:
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if start is None:
        raise ValueError("parameter 'tokenizer' has neither a BOS nor an EOS token to start sequences with")
    return start


def _pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else _start_id(tokenizer)


# --- causal LMs -----------------------------------------------------------------------------------------------------
def completion_logprobs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    completions: Sequence[str],
    *,
    delimiter: str = " ",
    reduction: str = "sum",
    batch_size: int = 32,
    grad: bool = False,
) -> np.ndarray | torch.Tensor:
    """log p(completion | prompt) under a causal LM, one value per (prompt, completion) pair.

    The sequence is ``START + tokens(prompt) + tokens(delimiter + completion)`` with START the tokenizer's BOS (else
    EOS), added once; prompt and completion are tokenized separately, so the last prompt token never merges with the
    completion (the lm-eval-harness split). Only completion tokens are scored (``reduction``: ``"sum"``, ``"mean"``
    or ``"first"``). ``grad=True`` returns a differentiable tensor (ch. 07's DPO loss), otherwise a NumPy array.
    Used by ch. 06 (option scores) and ch. 07 (CrowS, DPO).
    """
    check_choice("reduction", reduction, REDUCTIONS)
    check_int("batch_size", batch_size, min_value=1)
    if len(prompts) != len(completions):
        raise ValueError(
            f"parameters 'prompts' and 'completions' differ in length ({len(prompts)} vs {len(completions)})"
        )
    start = _start_id(tokenizer)
    enc_p = tokenizer(list(prompts), add_special_tokens=False)["input_ids"] if len(prompts) else []
    enc_c = (
        tokenizer([delimiter + c for c in completions], add_special_tokens=False)["input_ids"] if len(prompts) else []
    )
    if any(len(c) == 0 for c in enc_c):
        raise ValueError("parameter 'completions' holds a completion with no tokens")
    out = []
    device = _device(model)
    with torch.set_grad_enabled(grad):
        for lo in range(0, len(enc_p), batch_size):
            seqs = [
                [start, *p, *c] for p, c in zip(enc_p[lo : lo + batch_size], enc_c[lo : lo + batch_size], strict=True)
            ]
            ids, attn = pad_sequences(seqs, _pad_id(tokenizer))
            logits = model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits[:, :-1].float()
            logps = torch.log_softmax(logits, -1).gather(2, ids[:, 1:, None].to(device)).squeeze(2)
            scored = torch.zeros_like(ids[:, 1:], dtype=torch.bool)
            for row, (p, c) in enumerate(zip(enc_p[lo : lo + batch_size], enc_c[lo : lo + batch_size], strict=True)):
                scored[row, len(p) : len(p) + len(c)] = True
            out.append(_reduce(logps, scored.to(device), reduction))
    result = torch.cat(out) if out else torch.zeros(0)
    return result if grad else result.detach().cpu().numpy()


def sentence_logprobs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    reduction: str = "sum",
    batch_size: int = 32,
) -> np.ndarray:
    """Sentence scores Σ (or mean) of log p(w_i | START, w_<i) over all tokens, START added once (ch. 07's CrowS
    scorer uses ``reduction="mean"``, as bias-bench does). Used by ch. 04, 06, 07."""
    return completion_logprobs(
        model, tokenizer, [""] * len(texts), list(texts), delimiter="", reduction=reduction, batch_size=batch_size
    )


# --- masked LMs -----------------------------------------------------------------------------------------------------
def _fill_blank(templates: Sequence[str], blank: str, token: str) -> list[str]:
    bad = [t for t in templates if t.count(blank) != 1]
    if bad:
        raise ValueError(f"parameter 'templates': each template needs exactly one {blank!r}, got {bad[0]!r}")
    return [t.replace(blank, token) for t in templates]


def _candidate_grid(templates: Sequence[str], candidates: Sequence[str] | Sequence[Sequence[str]]) -> list[list[str]]:
    """One list of candidates per template: a flat list is shared by all templates."""
    if len(candidates) and all(isinstance(c, str) for c in candidates):
        return [list(candidates)] * len(templates)
    grid = [list(c) for c in candidates]
    if len(grid) != len(templates) or len({len(c) for c in grid}) > 1:
        raise ValueError(
            "parameter 'candidates' must be one list shared by all templates or one equally long list per template"
        )
    return grid


def _pieces(tokenizer: PreTrainedTokenizerBase, grid: list[list[str]]) -> dict[str, list[int]]:
    """Token ids of each candidate, tokenized as a word on its own."""
    words = sorted({c for row in grid for c in row})
    pieces = dict(zip(words, tokenizer(words, add_special_tokens=False)["input_ids"], strict=True)) if words else {}
    empty = [w for w, p in pieces.items() if not p]
    if empty:
        raise ValueError(f"parameter 'candidates': {empty[0]!r} has no tokens")
    return pieces


def _mask_position(ids: Sequence[int], mask_id: int, which: str) -> int:
    hits = [i for i, t in enumerate(ids) if t == mask_id]
    if not hits:
        raise ValueError("parameter 'texts': a text has no mask token")
    return hits[0] if which == "first" else hits[-1]


@torch.no_grad()
def _positions_logprobs(model, tokenizer, seqs: list[list[int]], positions: list[list[int]], batch_size: int):
    """For each sequence, the full-vocabulary log-softmax ``[len(positions[i]), V]`` at the given positions."""
    device = _device(model)
    out: list[torch.Tensor] = []
    for lo in range(0, len(seqs), batch_size):
        ids, attn = pad_sequences(seqs[lo : lo + batch_size], _pad_id(tokenizer))
        logits = model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits.float().cpu()
        out += [torch.log_softmax(logits[row, pos], -1) for row, pos in enumerate(positions[lo : lo + batch_size])]
    return out


def mask_logprobs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    which: str = "last",
    batch_size: int = 32,
) -> np.ndarray:
    """Full-vocabulary log-softmax ``[len(texts), V]`` of a masked LM at the ``"first"`` or ``"last"`` mask token.

    Texts contain ``tokenizer.mask_token`` (two masks: the prior of Kurita et al.). Used by ch. 04.
    """
    check_choice("which", which, ("first", "last"))
    check_int("batch_size", batch_size, min_value=1)
    seqs = tokenizer(list(texts))["input_ids"] if len(texts) else []
    positions = [[_mask_position(s, tokenizer.mask_token_id, which)] for s in seqs]
    rows = _positions_logprobs(model, tokenizer, seqs, positions, batch_size)
    return torch.cat(rows).numpy() if rows else np.zeros((0, model.config.vocab_size), dtype=np.float32)


def masked_candidate_logprobs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    templates: Sequence[str],
    candidates: Sequence[str] | Sequence[Sequence[str]],
    *,
    blank: str = "[MASK]",
    reduction: str = "sum",
    batch_size: int = 32,
) -> np.ndarray:
    """Cloze scores ``[n_templates, n_candidates]`` of a masked LM: log-probabilities of candidate words at ``blank``.

    Each template holds ``blank`` once; ``candidates`` is one list for all templates or one list per template. A
    candidate is tokenized as a word on its own; a candidate of k pieces replaces the blank with k mask tokens and
    scores piece i at mask i, all masks present at once; ``reduction`` combines the pieces (``"sum"``: the log-prob
    of the whole word under this approximation, ``"mean"``, or ``"first"`` piece). Inputs depend only on (template,
    k), so each is run once. Used by ch. 04 (attribute elicitation) and ch. 05 (two answer options).
    """
    check_choice("reduction", reduction, REDUCTIONS)
    check_int("batch_size", batch_size, min_value=1)
    grid = _candidate_grid(templates, candidates)
    mask_id = tokenizer.mask_token_id
    if mask_id is None:
        raise ValueError("parameter 'tokenizer' has no mask token; masked_candidate_logprobs needs a masked LM")
    base = tokenizer(_fill_blank(templates, blank, tokenizer.mask_token))["input_ids"] if len(templates) else []
    pieces = _pieces(tokenizer, grid)
    keys = sorted({(t, len(pieces[c])) for t, row in enumerate(grid) for c in row})
    seqs, positions = [], []
    for t, k in keys:
        pos = _mask_position(base[t], mask_id, "first")
        seqs.append(base[t][:pos] + [mask_id] * k + base[t][pos + 1 :])
        positions.append(list(range(pos, pos + k)))
    table = dict(zip(keys, _positions_logprobs(model, tokenizer, seqs, positions, batch_size), strict=True))
    out = np.zeros((len(grid), len(grid[0]) if grid else 0))
    for t, row in enumerate(grid):
        for j, c in enumerate(row):
            piece_ids = pieces[c]
            lp = table[(t, len(piece_ids))][torch.arange(len(piece_ids)), torch.tensor(piece_ids)]
            out[t, j] = _reduce(lp[None], torch.ones(1, len(piece_ids), dtype=torch.bool), reduction).item()
    return out


def token_pseudo_logprobs(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], *, batch_size: int = 64
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per text, ``(token_ids, logprobs)`` of every non-special token when that token alone is masked.

    The building block of pseudo-log-likelihood (Salazar et al. 2020); CrowS-Pairs for MLMs (Nangia et al. 2020)
    sums these over the tokens two sentences share, which a caller can select from ``token_ids``. Used by ch. 04, 07.
    """
    check_int("batch_size", batch_size, min_value=1)
    mask_id = tokenizer.mask_token_id
    if mask_id is None:
        raise ValueError("parameter 'tokenizer' has no mask token; pseudo-log-likelihood needs a masked LM")
    enc = tokenizer(list(texts), return_special_tokens_mask=True) if len(texts) else {"input_ids": []}
    seqs, positions, owner = [], [], []
    for n, ids in enumerate(enc["input_ids"]):
        for i in np.flatnonzero(np.asarray(enc["special_tokens_mask"][n]) == 0):
            seqs.append(ids[:i] + [mask_id] + ids[i + 1 :])
            positions.append([int(i)])
            owner.append((n, ids[i]))
    rows = _positions_logprobs(model, tokenizer, seqs, positions, batch_size)
    out: list[tuple[list[int], list[float]]] = [([], []) for _ in enc["input_ids"]]
    for (n, tok), lp in zip(owner, rows, strict=True):
        out[n][0].append(tok)
        out[n][1].append(lp[0, tok].item())
    return [(np.asarray(ids, dtype=np.int64), np.asarray(lps)) for ids, lps in out]


def pseudo_log_likelihood(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    reduction: str = "sum",
    batch_size: int = 64,
) -> np.ndarray:
    """Pseudo-log-likelihood of each text under a masked LM: the ``"sum"`` (or ``"mean"``) over its tokens of
    log p(token | all other tokens), one forward pass per token, batched. Used by ch. 04 and 07."""
    check_choice("reduction", reduction, ("sum", "mean"))
    scores = token_pseudo_logprobs(model, tokenizer, texts, batch_size=batch_size)
    return np.array([lp.sum() if reduction == "sum" else lp.mean() for _, lp in scores])


# --- seq2seq LMs ----------------------------------------------------------------------------------------------------
@torch.no_grad()
def span_candidate_logprobs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    templates: Sequence[str],
    candidates: Sequence[str] | Sequence[Sequence[str]],
    *,
    blank: str = "[MASK]",
    reduction: str = "sum",
    batch_size: int = 32,
) -> np.ndarray:
    """T5 sentinel cloze scores ``[n_templates, n_candidates]`` for an encoder-decoder LM.

    The blank becomes ``<extra_id_0>`` in the encoder input; each candidate is scored under teacher forcing as the
    decoder target ``<extra_id_0> candidate <extra_id_1>``, counting only the candidate's tokens (``reduction``
    ``"sum"``, ``"mean"`` or ``"first"``). Used by ch. 05 (mT5 probing of cultural values).
    """
    check_choice("reduction", reduction, REDUCTIONS)
    check_int("batch_size", batch_size, min_value=1)
    grid = _candidate_grid(templates, candidates)
    s0, s1 = tokenizer.convert_tokens_to_ids(["<extra_id_0>", "<extra_id_1>"])
    if None in (s0, s1) or tokenizer.unk_token_id in (s0, s1):
        raise ValueError("parameter 'tokenizer' has no <extra_id_0>/<extra_id_1> sentinels; it is not a T5 tokenizer")
    enc = tokenizer(_fill_blank(templates, blank, "<extra_id_0>"))["input_ids"] if len(templates) else []
    pieces = _pieces(tokenizer, grid)
    pairs = [(t, pieces[c]) for t, row in enumerate(grid) for c in row]
    device = _device(model)
    scores = []
    for lo in range(0, len(pairs), batch_size):
        chunk = pairs[lo : lo + batch_size]
        ids, attn = pad_sequences([enc[t] for t, _ in chunk], _pad_id(tokenizer))
        labels, _ = pad_sequences([[s0, *p, s1] for _, p in chunk], -100)
        dec = model.prepare_decoder_input_ids_from_labels(labels=labels)
        logits = model(input_ids=ids.to(device), attention_mask=attn.to(device), decoder_input_ids=dec.to(device))
        logps = torch.log_softmax(logits.logits.float().cpu(), -1).gather(2, labels.clamp(min=0)[..., None]).squeeze(2)
        scored = torch.zeros_like(labels, dtype=torch.bool)
        for row, (_, p) in enumerate(chunk):
            scored[row, 1 : 1 + len(p)] = True
        scores.append(_reduce(logps, scored, reduction))
    flat = torch.cat(scores).numpy() if scores else np.zeros(0)
    return flat.reshape(len(grid), len(grid[0]) if grid else 0)


# --- chapter 04 (stereotypes): cloze top-k and multi-token candidates at the attribute mask ---------------------------
def check_top_k(name: str, k: int, tokenizer: PreTrainedTokenizerBase) -> int:
    """Return ``k`` if 1 <= k <= the tokenizer's vocabulary size; raise naming ``name`` otherwise (before compute)."""
    return check_int(name, k, min_value=1, max_value=len(tokenizer))


def mask_topk(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    k: int,
    *,
    which: str = "last",
    batch_size: int = 32,
) -> list[list[tuple[int, str, float]]]:
    """The ``k`` most probable vocabulary tokens at the ``"first"``/``"last"`` mask of each text, best first, as
    ``(token_id, decoded and stripped token, log-prob)``. Ties break by token id (deterministic). Used by ch. 04."""
    check_top_k("top_k", k, tokenizer)
    lp = torch.from_numpy(mask_logprobs(model, tokenizer, texts, which=which, batch_size=batch_size))
    out = []
    for row in lp:
        order = np.lexsort((np.arange(row.numel()), -row.numpy()))[:k]
        out.append([(int(i), tokenizer.decode([int(i)]).strip(), float(row[i])) for i in order])
    return out


def cloze_candidate_logprobs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    candidates: Sequence[str],
    *,
    which: str = "last",
    reduction: str = "sum",
    batch_size: int = 32,
) -> np.ndarray:
    """Scores ``[n_texts, n_candidates]`` of candidate words at one mask of texts that may hold several masks.

    Texts contain ``tokenizer.mask_token`` (e.g. the group masked too, for the typicality prior of Kurita et al.);
    the ``"first"`` or ``"last"`` mask is the slot. A candidate of n word pieces (tokenized as a word on its own)
    replaces the slot by n masks and scores piece i at mask i, combined by ``reduction``; the other masks stay.
    Each (text, n) input runs once, batched. Used by ch. 04 (attributes of a world with multi-piece words).
    """
    check_choice("reduction", reduction, REDUCTIONS)
    check_choice("which", which, ("first", "last"))
    check_int("batch_size", batch_size, min_value=1)
    mask_id = tokenizer.mask_token_id
    if mask_id is None:
        raise ValueError("parameter 'tokenizer' has no mask token; cloze scoring needs a masked LM")
    base = tokenizer(list(texts))["input_ids"] if len(texts) else []
    pieces = _pieces(tokenizer, [list(candidates)])
    lengths = sorted({len(p) for p in pieces.values()})
    seqs, positions, keys = [], [], []
    for t, ids in enumerate(base):
        pos = _mask_position(ids, mask_id, which)
        for n in lengths:
            seqs.append(ids[:pos] + [mask_id] * n + ids[pos + 1 :])
            positions.append(list(range(pos, pos + n)))
            keys.append((t, n))
    table = dict(zip(keys, _positions_logprobs(model, tokenizer, seqs, positions, batch_size), strict=True))
    out = np.zeros((len(base), len(candidates)))
    for t in range(len(base)):
        for j, c in enumerate(candidates):
            ids = pieces[c]
            lp = table[(t, len(ids))][torch.arange(len(ids)), torch.tensor(ids)]
            out[t, j] = _reduce(lp[None], torch.ones(1, len(ids), dtype=torch.bool), reduction).item()
    return out


def candidate_topk(scores: np.ndarray, candidates: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
    """Per row of ``scores`` ``[n, len(candidates)]``, the ``k`` best candidates ``(word, score)``; ties keep the
    candidates' order. Used by ch. 04."""
    check_int("top_k", k, min_value=1, max_value=len(candidates))
    out = []
    for row in np.asarray(scores):
        order = np.argsort(-row, kind="stable")[:k]
        out.append([(candidates[j], float(row[j])) for j in order])
    return out
