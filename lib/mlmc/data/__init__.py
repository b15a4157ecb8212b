"""Loaders for the real datasets of the ``full`` profile, returning the types of the synthetic world (all chapters)."""

from mlmc.data.conllu_io import Sentence, label_vocab, read_conllu, sample_few_shot, write_conllu

__all__ = ["Sentence", "label_vocab", "read_conllu", "sample_few_shot", "write_conllu"]
