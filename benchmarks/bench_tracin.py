"""Benchmark: ``mlmc.influence.tracin`` against captum's ``TracInCP`` on the same tiny XLM-R, parameters and
checkpoints (chapter 01's influence kernel). Prints both wall times, the speed ratio, ms per gradient and the
largest relative difference of the scores. Single CPU thread by default.

    .venv/bin/python benchmarks/bench_tracin.py [--n-train 1500 --n-test 100 --epochs 3 --captum-batch 4 8 16]

Captum gets its fastest fair setting: checkpoints preloaded into memory (its load function only copies a state
dict), per-batch padding with an attention mask, and every ``--captum-batch`` size tried (the best is reported).
Our time includes loading every checkpoint from disk. Both run once on a few examples first (untimed warm-up);
with ``--repeat n`` each is timed n times and its fastest run counts. CPU time is the clock to compare on a
shared machine; wall time is printed too.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from captum.influence import TracInCP
from torch import nn
from torch.utils.data import DataLoader
from transformers import AutoModelForSequenceClassification, XLMRobertaConfig, XLMRobertaForSequenceClassification

from mlmc.influence import tracin
from mlmc.utils import seed_everything, set_threads

PAD = 1


class LogitsOnly(nn.Module):
    """Lets captum call the HF classifier with tensors and get logits back."""

    def __init__(self, hf: nn.Module) -> None:
        super().__init__()
        self.hf = hf

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.hf(input_ids=input_ids, attention_mask=attention_mask).logits


def make_examples(n: int, vocab: int, gen: torch.Generator) -> list[tuple[torch.Tensor, int]]:
    """Random ``<s> w1 .. wL </s>`` sequences (L in 4..18) with random binary labels."""
    out = []
    for _ in range(n):
        length = int(torch.randint(4, 19, (1,), generator=gen))
        body = torch.randint(3, vocab, (length,), generator=gen)
        out.append(
            (torch.cat([torch.tensor([0]), body, torch.tensor([2])]), int(torch.randint(0, 2, (1,), generator=gen)))
        )
    return out


def pad_collate(batch: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids = nn.utils.rnn.pad_sequence([x for x, _ in batch], batch_first=True, padding_value=PAD)
    mask = (ids != PAD).long()
    return ids, mask, torch.tensor([y for _, y in batch])


def make_checkpoints(cfg: XLMRobertaConfig, train, epochs: int, lr: float, root: Path) -> list[Path]:
    """A few SGD steps between checkpoints, each saved with ``save_pretrained``."""
    model = XLMRobertaForSequenceClassification(cfg)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    paths = []
    for e in range(epochs):
        model.train()
        for ids, mask, y in DataLoader(train[:64], batch_size=16, collate_fn=pad_collate):
            opt.zero_grad()
            nn.functional.cross_entropy(model(input_ids=ids, attention_mask=mask).logits, y).backward()
            opt.step()
        paths.append(root / f"epoch_{e + 1}")
        model.save_pretrained(paths[-1])
    return paths


def run_captum(paths: list[Path], train, test, lr: float, batch: int) -> tuple[torch.Tensor, float]:
    states = {str(p): AutoModelForSequenceClassification.from_pretrained(p).state_dict() for p in paths}
    wrapper = LogitsOnly(AutoModelForSequenceClassification.from_pretrained(paths[0])).eval()

    def load(model: nn.Module, path: str) -> float:
        model.hf.load_state_dict(states[path])
        return lr

    start = _clock()
    tracer = TracInCP(
        wrapper,
        DataLoader(train, batch_size=batch, collate_fn=pad_collate),
        checkpoints=list(states),
        checkpoints_load_func=load,
        loss_fn=nn.CrossEntropyLoss(reduction="none"),
        batch_size=batch,
    )
    scores = tracer.influence(DataLoader(test, batch_size=batch, collate_fn=pad_collate), show_progress=False)
    return scores, _elapsed(start)


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _elapsed(start: tuple[float, float]) -> tuple[float, float]:
    """(wall, CPU) seconds since ``start``; CPU time is the fairer clock on a shared machine."""
    wall, cpu = _clock()
    return wall - start[0], cpu - start[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-train", type=int, default=1500)
    ap.add_argument("--n-test", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=150)
    ap.add_argument("--captum-batch", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--repeat", type=int, default=1, help="runs per contestant; the fastest counts")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    set_threads(args.threads)
    seed_everything(args.seed)
    cfg = XLMRobertaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=4,
        intermediate_size=2 * args.hidden,
        max_position_embeddings=40,
        num_labels=2,
    )
    gen = torch.Generator().manual_seed(args.seed)
    train, test = make_examples(args.n_train, args.vocab, gen), make_examples(args.n_test, args.vocab, gen)
    lr = 0.05
    n_grads = args.epochs * (args.n_train + args.n_test)
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_checkpoints(cfg, train, args.epochs, lr, Path(tmp))
        n_params = sum(p.numel() for p in XLMRobertaForSequenceClassification(cfg).parameters())
        print(f"model: {n_params:,} parameters; {args.epochs} checkpoints; {args.n_train} train x {args.n_test} test")
        tracin(paths, train[:16], test[:4], progress=False)  # warm-up (imports, first vmap call), untimed
        run_captum(paths, train[:16], test[:4], lr, args.captum_batch[0])

        ours, t_ours = None, None
        for _ in range(args.repeat):
            start = _clock()
            ours = tracin(paths, train, test, normalize="none", lr_weights=[lr] * args.epochs, progress=False)
            t_ours = _best(t_ours, _elapsed(start))
        print(f"mlmc tracin     : {_rates(t_ours, n_grads)}")

        best = None
        for batch in args.captum_batch:
            t_batch = None
            for _ in range(args.repeat):
                scores, t = run_captum(paths, train, test, lr, batch)
                t_batch = _best(t_batch, t)
            err = ((ours.total - scores).abs().max() / scores.abs().max()).item()
            print(f"captum TracInCP : {_rates(t_batch, n_grads)}  (batch {batch}, max rel. difference {err:.1e})")
            best = _best(best, t_batch)
    print(f"speed ratio captum(best)/mlmc: {best[1] / t_ours[1]:.1f}x CPU time, {best[0] / t_ours[0]:.1f}x wall time")


def _best(a: tuple[float, float] | None, b: tuple[float, float]) -> tuple[float, float]:
    """Element-wise minimum of two (wall, CPU) times; the minimum over repeats is the least disturbed run."""
    return b if a is None else (min(a[0], b[0]), min(a[1], b[1]))


def _rates(t: tuple[float, float], n_grads: int) -> str:
    wall, cpu = t
    return (
        f"wall {wall:6.2f} s  CPU {cpu:6.2f} s  {1000 * cpu / n_grads:6.3f} ms/grad  {n_grads / cpu:6.0f} grads/s (CPU)"
    )


if __name__ == "__main__":
    main()
