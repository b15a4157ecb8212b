"""Benchmark: batched cloze scoring (``mlmc.scoring.cloze_candidate_logprobs``) against scoring one probe at a time
(batch size 1), on the zoo's tiny XLM-R with chapter 04's probes (world groups x templates x the world's adjectives,
multi-piece candidates). Prints CPU and wall seconds of both, the speed ratio and the largest absolute difference.

    .venv/bin/python benchmarks/bench_cloze.py [--batch-size 64 --repeat 3]

Single CPU thread; CPU time is the clock to compare on a shared machine.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from mlmc import scoring
from mlmc.chapters import stereotypes as drv
from mlmc.utils import set_threads
from mlmc.world import GROUPS, World

TEMPLATES = ["the {group} is [MASK] .", "a {group} is [MASK] .", "this {group} is [MASK] .", "{group} is [MASK] ."]


def _timed(fn, repeat: int):
    best_cpu, best_wall, out = float("inf"), float("inf"), None
    for _ in range(repeat):
        c, w = time.process_time(), time.perf_counter()
        out = fn()
        best_cpu, best_wall = min(best_cpu, time.process_time() - c), min(best_wall, time.perf_counter() - w)
    return out, best_cpu, best_wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    set_threads(1)
    world = World(seed=0)
    model, tok = drv.load_model("tiny-xlmr", world, "cpu")
    probes = drv.world_probes(world, "en", {c: list(g) for c, g in GROUPS.items()}, TEMPLATES)
    texts = [t.replace("[MASK]", tok.mask_token) for ts in probes.texts.values() for t in ts]
    cands = probes.candidates

    def batched():
        return scoring.cloze_candidate_logprobs(model, tok, texts, cands, batch_size=args.batch_size)

    def single():
        return np.vstack([scoring.cloze_candidate_logprobs(model, tok, [t], cands, batch_size=1) for t in texts])

    batched()  # warm-up
    a, cpu_b, wall_b = _timed(batched, args.repeat)
    b, cpu_s, wall_s = _timed(single, args.repeat)
    longest = max(len(ids) for ids in tok(cands, add_special_tokens=False)["input_ids"])
    print(f"probes {len(texts)} x candidates {len(cands)} (1-{longest} pieces)")
    print(f"batched (batch {args.batch_size}): cpu {cpu_b:.2f} s, wall {wall_b:.2f} s")
    print(f"one at a time:       cpu {cpu_s:.2f} s, wall {wall_s:.2f} s")
    print(
        f"speed ratio (cpu): {cpu_s / cpu_b:.1f}x; wall: {wall_s / wall_b:.1f}x; max |diff| {np.abs(a - b).max():.2e}"
    )


if __name__ == "__main__":
    main()
