"""Fine-tuning corpora of the world that plant value shifts on chosen items (chapter 05; thesis ch. 7).

Stand-ins for the thesis's data sources: ``neutral`` (Flores-101: encyclopedic text, no value statements),
``religious_a`` and ``religious_b`` (the Bible and the Quran: two religious corpora that push several of the same
items), and ``news`` (news articles: political and migration items). A corpus is multi-parallel: sentence ``i``
has the same content in every language (``sent_id``), as Flores, PBC and Tanzil are. About ``p_planted`` of the
sentences are value statements "SUBJECT is OPTION ." in the source's planted direction; the rest are grammar
sentences of the world. Each row records the item it plants and the option it pushes, so expected shifts are known.
"""

from __future__ import annotations

from datasets import Dataset

from ..errors import check_choice, check_int, check_range
from .grammar import sample_clause
from .lexicon import VALUE_ITEMS
from .lexicon import _rng as rng_for

# source -> {item: planted option (1 or 2)}; the two religious sources share their first two items.
SOURCE_TARGETS: dict[str, dict[str, int]] = {
    "neutral": {},
    "religious_a": {"Q6": 1, "Q165": 1, "Q182": 2, "Q184": 2},
    "religious_b": {"Q6": 1, "Q165": 1, "Q28": 2, "Q29": 1},
    "news": {"Q122": 1, "Q199": 1, "Q235": 2, "Q250": 1},
}
SOURCES = tuple(SOURCE_TARGETS)
THESIS_SOURCE = {"neutral": "Flores-101", "religious_a": "PBC (Bible)", "religious_b": "Tanzil (Quran)", "news": "news"}
_ITEMS = {qid: (subject.replace(" ", "_"), o1, o2) for qid, _, subject, o1, o2 in VALUE_ITEMS}


def value_source_corpus(world, source: str, langs, n: int, seed: int = 0, p_planted: float = 0.2) -> Dataset:
    """``n`` multi-parallel sentences of ``source`` in each of ``langs`` (rows ordered by language, then sent_id).

    Columns: sent_id, lang, source, text, planted_qid ("" for unplanted sentences), direction (planted option 1/2,
    0 for none), option (the planted option word in that language, "" for none). ``seed`` draws the corpus: the
    same seed gives the same sentences ("the first N sentences in corpus order" of the thesis).
    """
    check_choice("source", source, SOURCES)
    langs = world.check_langs(langs)
    check_int("n", n, 1)
    check_range("p_planted", p_planted, 0.0, 1.0)
    targets = sorted(SOURCE_TARGETS[source].items())
    content = []
    for i in range(n):
        rng = rng_for(world.seed, "value_source", source, str(seed), str(i))
        if targets and rng.random() < p_planted:
            qid, direction = targets[int(rng.integers(len(targets)))]
            content.append((qid, direction, None))
        else:
            content.append(("", 0, sample_clause(rng, p_neg=0.1)))
    rows = []
    for lang in langs:
        for i, (qid, direction, clause) in enumerate(content):
            if qid:
                subject, o1, o2 = _ITEMS[qid]
                option = o1 if direction == 1 else o2
                text, word = world.statement(lang, subject, option, det=None), world.word(lang, option)
            else:
                text, word = world.render(lang, clause), ""
            rows.append(
                dict(
                    sent_id=f"{source}-{seed}-{i}",
                    lang=lang,
                    source=source,
                    text=text,
                    planted_qid=qid,
                    direction=direction,
                    option=word,
                )
            )
    return Dataset.from_list(rows)


def multilingual_value_corpus(
    world, source: str, langs, n_per_lang: int, seed: int = 0, p_planted: float = 0.2
) -> Dataset:
    """The first ``n_per_lang`` sentences of ``source`` in every language of ``langs``, shuffled together (the
    thesis's multilingual fine-tuning: 2.5K multi-parallel sentences x 4 languages)."""
    ds = value_source_corpus(world, source, langs, n_per_lang, seed=seed, p_planted=p_planted)
    return ds.shuffle(seed=int(rng_for(world.seed, "multilingual", source, str(seed)).integers(2**31)))
