"""CoNLL-U treebanks as lists of syntactic-word sentences (Ch. 02 / thesis Ch. 4: UD parsing and few-shot transfer).

Real UD treebanks (``full`` profile) and the synthetic world's treebanks (``World.treebank``) go through the same
reader, so the parser, the metric and the few-shot sampler never see a difference. Following the CoNLL 2018 shared
task, a sentence is its sequence of *syntactic words*: multiword-token lines (``1-2``) are dropped in favour of the
words they expand to, and empty nodes (``3.1``) of the enhanced graph are skipped. Dependency relations keep their
subtypes (``nsubj:pass``); the metric strips them when scoring.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import conllu
import numpy as np
from conllu.models import Token, TokenList

from mlmc.errors import check_int


@dataclass
class Sentence:
    """One dependency tree over syntactic words; ``heads[i]`` is the 1-based head of word ``i + 1`` (0 = root)."""

    words: list[str]
    heads: list[int]
    deprels: list[str]
    upos: list[str]
    metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.words)
        if not (len(self.heads) == len(self.deprels) == len(self.upos) == n):
            raise ValueError(
                f"Sentence fields must have one entry per word ({n}); got heads={len(self.heads)}, "
                f"deprels={len(self.deprels)}, upos={len(self.upos)}"
            )
        bad = [h for h in self.heads if not 0 <= h <= n]
        if bad:
            raise ValueError(f"Sentence heads must lie in [0, {n}], got {bad}")

    def __len__(self) -> int:
        return len(self.words)


def _is_text(source: str | Path) -> bool:
    return isinstance(source, str) and ("\n" in source or "\t" in source)


def _to_sentence(tokens: TokenList) -> Sentence:
    words = [t for t in tokens if isinstance(t["id"], int)]
    ids = [t["id"] for t in words]
    where = tokens.metadata.get("sent_id", "?")
    if ids != list(range(1, len(ids) + 1)):
        raise ValueError(f"sentence {where}: word ids must be 1..n in order, got {ids}")
    missing = [t["id"] for t in words if t["head"] is None or t["deprel"] in (None, "_")]
    if missing:
        raise ValueError(f"sentence {where}: words {missing} have no basic HEAD/DEPREL")
    return Sentence(
        words=[t["form"] for t in words],
        heads=[int(t["head"]) for t in words],
        deprels=[t["deprel"] for t in words],
        upos=[t["upos"] or "_" for t in words],
        metadata=dict(tokens.metadata),
    )


def read_conllu(source: str | Path) -> list[Sentence]:
    """Read a CoNLL-U file (path) or CoNLL-U text into sentences of syntactic words.

    Multiword tokens are expanded (their range line is dropped, the words it spans are kept), empty nodes are
    skipped, and deprels keep their subtypes. A string containing a newline or tab is parsed as text, anything else
    as a path.
    """
    if _is_text(source):
        return _parse(source.removeprefix("\ufeff"), "CoNLL-U text")
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"parameter 'source' must be CoNLL-U text or an existing file, got {str(source)!r}")
    try:
        text = path.read_text(encoding="utf-8-sig")  # utf-8-sig: a leading byte-order mark is dropped
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise ValueError(f"{path}, line {line}: not valid UTF-8 ({err.reason})") from None
    return _parse(text, str(path))


def _parse(text: str, where: str) -> list[Sentence]:
    """Parse CoNLL-U text; a malformed word line fails naming ``where`` and the line number."""
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip() and not line.startswith("#") and len(line.split("\t")) != 10:
            raise ValueError(f"{where}, line {n}: a word line needs 10 tab-separated columns, got "
                             f"{len(line.split(chr(9)))}: {line[:60]!r}")  # fmt: skip
    try:
        return [_to_sentence(tl) for tl in conllu.parse(text)]
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


def write_conllu(sentences: Iterable[Sentence], path: str | Path | None = None) -> str:
    """Serialise sentences as CoNLL-U (LEMMA, XPOS, FEATS, DEPS, MISC left empty); also write to ``path`` if given."""
    blocks = []
    for sent in sentences:
        tokens = [
            Token(id=i + 1, form=w, lemma="_", upos=u, xpos=None, feats=None, head=h, deprel=d, deps=None, misc=None)
            for i, (w, h, d, u) in enumerate(zip(sent.words, sent.heads, sent.deprels, sent.upos, strict=True))
        ]
        blocks.append(TokenList(tokens, metadata=dict(sent.metadata)).serialize())
    text = "".join(blocks)
    if path is not None:
        Path(path).write_text(text, encoding="utf-8")
    return text


def label_vocab(treebanks: Iterable[Sequence[Sentence]]) -> list[str]:
    """Sorted set of deprels (with subtypes) over several treebanks; build it over train *and* test treebanks
    before training, as UDify does, so that labels first seen in a few-shot set can still be predicted."""
    return sorted({d for sents in treebanks for s in sents for d in s.deprels})


def sample_few_shot(sentences: Sequence[Sentence], n: int, seed: int) -> tuple[list[Sentence], list[Sentence]]:
    """Draw ``n`` sentences without replacement as a few-shot support set; return ``(support, rest)``.

    The support keeps the drawn order; ``rest`` keeps the original order of the remaining sentences. Pass the test
    set to sample from test and evaluate on ``rest`` (the thesis's protocol when a treebank has no dev split).
    """
    check_int("n", n, min_value=1, max_value=len(sentences))
    order = np.random.default_rng(seed).permutation(len(sentences))
    chosen = set(order[:n].tolist())
    support = [sentences[i] for i in order[:n]]
    rest = [s for i, s in enumerate(sentences) if i not in chosen]
    return support, rest
