"""Benchmark: ``mlmc.influence.per_example_grads`` against the floor of one batched forward + backward pass.

Every per-example method pays at least one forward and one backward pass over its examples; this script times that
floor (padded batches with an attention mask, summed loss, ``.backward()`` into the parameters' ``.grad``) and
``per_example_grads`` with each ``--methods`` entry on the same model and examples, on one CPU thread by default,
and prints the ratio and the examples per second. CPU time (``time.process_time``) is the clock: the machine may be
shared; every contestant is timed ``--repeat`` times and its fastest run counts. The ``[n, p]`` result itself
has to be allocated and written: on virtual machines where first-touching fresh memory is slow, that alone can
cost several floors for ``--params all`` (the dense word-embedding rows); the script times it and prints the
ratio to floor + result too.

    .venv/bin/python benchmarks/bench_pegrad.py [--n 512 --length 24 --methods hooks vmap --params all]

The model is a randomly initialised XLM-R sequence classifier with the zoo's ``tiny-xlmr`` shape (4 layers, d 64,
FFN 128, 8 heads, vocabulary 4000; about 466K parameters); ``--hidden``, ``--layers``, ``--vocab`` change it.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn
from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

from mlmc.influence import per_example_grads, select_params
from mlmc.utils import seed_everything, set_threads

PAD = 1


def tiny_xlmr(hidden: int, layers: int, vocab: int, heads: int = 8) -> XLMRobertaForSequenceClassification:
    """A random XLM-R classifier (no download); ``max_position_embeddings`` leaves room for 96 tokens."""
    cfg = XLMRobertaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * hidden,
        max_position_embeddings=98,
        num_labels=2,
        pad_token_id=PAD,
    )
    return XLMRobertaForSequenceClassification(cfg).eval()


def make_examples(n: int, length: int, min_length: int, vocab: int, seed: int) -> list[tuple[torch.Tensor, int]]:
    """``<s> w .. w </s>`` sequences of ``min_length``..``length`` tokens with random binary labels."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        size = int(torch.randint(min_length, length + 1, (1,), generator=gen))
        body = torch.randint(3, vocab, (size - 2,), generator=gen)
        label = int(torch.randint(0, 2, (1,), generator=gen))
        out.append((torch.cat([torch.tensor([0]), body, torch.tensor([2])]), label))
    return out


def batched_floor(model: nn.Module, examples: list[tuple[torch.Tensor, int]], batch_size: int) -> None:
    """One forward + backward pass over ``examples`` in padded batches (the gradient of the summed loss)."""
    model.zero_grad(set_to_none=True)
    for s in range(0, len(examples), batch_size):
        part = examples[s : s + batch_size]
        ids = nn.utils.rnn.pad_sequence([x for x, _ in part], batch_first=True, padding_value=PAD)
        logits = model(input_ids=ids, attention_mask=(ids != PAD).long()).logits
        loss = nn.functional.cross_entropy(logits, torch.tensor([y for _, y in part]), reduction="sum")
        loss.backward()


def best_cpu(fn, repeat: int) -> float:
    """The smallest CPU time of ``repeat`` calls of ``fn`` (the least disturbed run on a shared machine)."""
    times = []
    for _ in range(repeat):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--length", type=int, default=24, help="longest sequence (tokens, with <s> and </s>)")
    ap.add_argument("--min-length", type=int, default=None, help="shortest sequence; default: all of --length")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=5000)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--params", default="all", choices=["all", "no_word_embeddings"])
    ap.add_argument("--methods", nargs="+", default=["hooks", "vmap"], choices=["auto", "hooks", "vmap", "loop"])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    set_threads(args.threads)
    seed_everything(args.seed)
    model = tiny_xlmr(args.hidden, args.layers, args.vocab)
    examples = make_examples(args.n, args.length, args.min_length or args.length, args.vocab, args.seed)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params:,} parameters; {args.n} examples of {args.min_length or args.length}-{args.length} "
          f"tokens; params={args.params}; {args.threads} thread(s); best CPU time of {args.repeat}")  # fmt: skip
    batched_floor(model, examples[:8], 8)  # warm-up, untimed
    floor = best_cpu(lambda: batched_floor(model, examples, args.batch_size), args.repeat)
    width = sum(p.numel() for p in select_params(model, args.params).values())
    touch = best_cpu(lambda: torch.zeros(args.n, width).view(-1)[::1024].sum(), args.repeat)
    print(f"| method | CPU s | examples/s | ratio to batched fwd+bwd | ratio to fwd+bwd + writing the result |\n"
          f"|---|---|---|---|---|\n| batched forward + backward (floor) | {floor:.3f} | {args.n / floor:.0f} | 1.00 "
          f"| - |\n| allocating and writing a zero [{args.n} x {width}] result | {touch:.3f} | - | "
          f"{touch / floor:.2f} | - |")  # fmt: skip
    for method in args.methods:
        per_example_grads(model, examples[:8], args.params, method=method)  # warm-up
        t = best_cpu(
            lambda m=method: per_example_grads(model, examples, args.params, method=m, batch_size=args.batch_size),
            args.repeat,
        )
        print(f"| per_example_grads, method={method} | {t:.3f} | {args.n / t:.0f} | {t / floor:.2f} | "
              f"{t / (floor + touch):.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
