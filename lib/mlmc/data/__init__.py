"""Loaders for the real datasets of the ``full`` profile, returning the types of the synthetic world (all chapters)."""

from mlmc.data.classification import DataNotAvailableError, load_marc, load_pawsx, load_task, load_xnli
from mlmc.data.conllu_io import Sentence, label_vocab, read_conllu, sample_few_shot, write_conllu

__all__ = [
    "DataNotAvailableError",
    "Sentence",
    "label_vocab",
    "load_marc",
    "load_pawsx",
    "load_task",
    "load_xnli",
    "read_conllu",
    "sample_few_shot",
    "write_conllu",
]
