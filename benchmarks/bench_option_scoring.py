"""Benchmark: batched two-option span scoring (``mlmc.values.probe_profile`` through
``mlmc.scoring.span_candidate_logprobs``) against a one-at-a-time teacher-forced loop (chapter 05's probing).

Both score every (probe, option) pair of the world's value probes with the same tiny mT5: the loop runs one
forward pass per pair with ``labels = <extra_id_0> option <extra_id_1>``. Prints the largest absolute difference
of the option log-probabilities and of P(option 1), both CPU and wall times, and their ratio. Single CPU thread.

    .venv/bin/python benchmarks/bench_option_scoring.py [--langs de fa ko ur --batch-size 64 --repeat 3]

With ``--zoo`` the cached zoo ``tiny-mt5`` is used (built on first use); by default a freshly initialised model of
the same recipe, briefly trained on a small corpus (seconds), so the benchmark needs no cache.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from mlmc import scoring, train, values, zoo
from mlmc.utils import set_threads
from mlmc.world import World


def loop_logprobs(model, tok, templates: list[str], options: list[list[str]]) -> np.ndarray:
    """The reference: one teacher-forced forward pass per (template, option), summing the option's token
    log-probabilities at decoder positions 1..k of ``<extra_id_0> option <extra_id_1>``."""
    s0, s1 = tok.convert_tokens_to_ids(["<extra_id_0>", "<extra_id_1>"])
    out = np.zeros((len(templates), 2))
    with torch.no_grad():
        for t, (template, opts) in enumerate(zip(templates, options, strict=True)):
            enc = torch.tensor([tok(template.replace(values.MASK, "<extra_id_0>"))["input_ids"]])
            for j, option in enumerate(opts):
                pieces = tok(option, add_special_tokens=False)["input_ids"]
                labels = torch.tensor([[s0, *pieces, s1]])
                logp = torch.log_softmax(model(input_ids=enc, labels=labels).logits[0].float(), -1)
                out[t, j] = sum(logp[1 + i, p].item() for i, p in enumerate(pieces))
    return out


def _timed(fn, repeat: int):
    best_cpu = best_wall = float("inf")
    for _ in range(repeat):
        c, w = time.process_time(), time.perf_counter()
        result = fn()
        best_cpu, best_wall = min(best_cpu, time.process_time() - c), min(best_wall, time.perf_counter() - w)
    return result, best_cpu, best_wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--langs", nargs="+", default=["de", "fa", "ko", "ur", "tr", "id"])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--zoo", action="store_true", help="use the cached zoo tiny-mt5")
    args = ap.parse_args()
    set_threads(1)
    world = World(seed=0)
    probes = values.world_probes(world, args.langs)
    if args.zoo:
        model, tok = zoo.get("tiny-mt5", world=world, progress=False)
    else:
        texts = list(world.pretraining_corpus(args.langs, n_per_lang=200)["text"])
        tok = zoo.train_tokenizer(texts, arch="mt5", vocab_size=800)
        model = zoo.init_model(zoo.recipe("tiny-mt5"), tok)
        train.pretrain_span(model, tok, texts, steps=30, batch_size=16, lr=3e-3, progress=False)
    model.eval()
    templates = list(probes.template)
    options = [[a, b] for a, b in zip(probes.opt1, probes.opt2, strict=True)]

    def batched():
        return scoring.span_candidate_logprobs(
            model, tok, templates, options, blank=values.MASK, batch_size=args.batch_size
        )

    batched()  # warm-up
    lp_b, cpu_b, wall_b = _timed(batched, args.repeat)
    lp_l, cpu_l, wall_l = _timed(lambda: loop_logprobs(model, tok, templates, options), 1)
    p_b, p_l = values.option_probs(lp_b)[:, 0], values.option_probs(lp_l)[:, 0]
    print(f"pairs scored: {2 * len(templates)} ({len(templates)} probes, {len(args.langs)} languages)")
    print(f"max |logprob batched - loop| = {np.abs(lp_b - lp_l).max():.2e}")
    print(f"max |P(opt1) batched - loop| = {np.abs(p_b - p_l).max():.2e}")
    print(f"batched (batch {args.batch_size}): cpu {cpu_b:.3f} s, wall {wall_b:.3f} s")
    print(f"one-at-a-time loop:        cpu {cpu_l:.3f} s, wall {wall_l:.3f} s")
    print(f"speed-up: cpu x{cpu_l / cpu_b:.1f}, wall x{wall_l / wall_b:.1f}")


if __name__ == "__main__":
    main()
