"""Cost of head-gating hooks per forward pass (chapters 02 and 03).

Times a no-grad forward of a random-init XLM-R encoder without a gate, with a gate attached but unset, and with a
binary mask set (best of interleaved rounds). Usage:
``python benchmarks/bench_heads.py [--layers 4 --heads 8 --hidden 64 --batch 32 --len 32 --repeats 10 --rounds 15]``.
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import XLMRobertaConfig, XLMRobertaModel

from mlmc.heads import HeadGate
from mlmc.subnetworks import random_mask


def _time(fn, repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in [
        ("layers", 4),
        ("heads", 8),
        ("hidden", 64),
        ("batch", 32),
        ("len", 32),
        ("repeats", 10),
        ("rounds", 15),
    ]:
        parser.add_argument(f"--{name}", type=int, default=default)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = XLMRobertaConfig(
        hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=args.heads,
        intermediate_size=2 * args.hidden, vocab_size=1000, max_position_embeddings=args.len + 2,
    )  # fmt: skip
    model = XLMRobertaModel(cfg).eval()
    ids = torch.randint(3, 1000, (args.batch, args.len))

    def forward() -> None:
        with torch.no_grad():
            model(input_ids=ids)

    mask = random_mask(args.layers, args.heads, args.layers * args.heads // 5, seed=0)
    settings = {"no gate": None, "gate attached, unset": "unset", "binary mask set": mask}
    best = dict.fromkeys(settings, float("inf"))
    forward()  # warm-up
    for _ in range(args.rounds):  # interleaved rounds, best of each: robust to a busy shared CPU
        for label, setting in settings.items():
            if setting is None:
                best[label] = min(best[label], _time(forward, args.repeats))
                continue
            with HeadGate(model) as gate:
                gate.set(None if isinstance(setting, str) else setting)
                best[label] = min(best[label], _time(forward, args.repeats))
    plain = best["no gate"]
    print(f"model {args.layers}x{args.heads} heads, d={args.hidden}, batch {args.batch}x{args.len}, 1 thread")
    for label, ms in best.items():
        print(f"{label:>22}: {ms:7.2f} ms/forward ({100 * (ms / plain - 1):+5.1f}%)")


if __name__ == "__main__":
    main()
