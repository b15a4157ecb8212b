"""Milliseconds per pretraining step of each tiny zoo model with 1 vs 2 torch threads (a script, not a test).

Run: ``python benchmarks/bench_threads.py [--steps 30] [--threads 1 2]``. On the book's 2-core machines one thread
was several times faster than two for models this small; this script measures it on yours. It prints wall and
CPU milliseconds per step (batch 32) for randomly initialised models with the zoo's recipes, timed between the
optimizer steps after a warm-up (tokenising the corpus is not counted).
"""

from __future__ import annotations

import argparse
import time

import torch

from mlmc import train, zoo
from mlmc.world import World

WARMUP = 5
PRETRAIN = {"xlmr": train.pretrain_mlm, "mt5": train.pretrain_span, "llama": train.pretrain_clm}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per (model, thread count)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts to compare")
    args = parser.parse_args()
    texts = World(seed=0).pretraining_corpus()["text"]
    print(f"{'model':<11} {'threads':>7} {'wall ms/step':>13} {'cpu ms/step':>12}")
    for name in zoo.NAMES:
        rec = zoo.recipe(name)
        tokenizer = zoo.train_tokenizer(texts, arch=rec.arch, vocab_size=rec.vocab_size, n_sentinels=rec.n_sentinels)
        for n in args.threads:
            torch.set_num_threads(n)
            model = zoo.init_model(rec, tokenizer)
            stamps: list[tuple[float, float]] = []
            stamp = stamps.append
            PRETRAIN[rec.arch](
                model,
                tokenizer,
                texts,
                steps=args.steps + WARMUP,
                batch_size=rec.batch_size,
                lr=rec.lr,
                max_length=rec.max_length,
                progress=False,
                callback=lambda step, loss, stamp=stamp: stamp((time.perf_counter(), time.process_time())),
            )
            wall, cpu = (1000 * (b - a) / args.steps for a, b in zip(stamps[WARMUP - 1], stamps[-1], strict=True))
            print(f"{name:<11} {n:>7} {wall:>13.1f} {cpu:>12.1f}", flush=True)


if __name__ == "__main__":
    main()
