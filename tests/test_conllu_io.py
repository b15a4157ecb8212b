"""CoNLL-U reader/writer, label vocabulary and few-shot sampling (Ch. 02; spec ch4 §2.1 data handling)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlmc.data import Sentence, label_vocab, read_conllu, sample_few_shot, write_conllu

UD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ud"
REAL = {
    "en_pud": UD / "UD_English-PUD" / "en_pud-ud-test.conllu",
    "fr_pud": UD / "UD_French-PUD" / "fr_pud-ud-test.conllu",
    "fo_oft": UD / "UD_Faroese-OFT" / "fo_oft-ud-test.conllu",
}

TEXT = """# newdoc id = d1
# sent_id = fr-1
# text = Il parle du chat.
1\tIl\til\tPRON\t_\t_\t2\tnsubj\t_\t_
2\tparle\tparler\tVERB\t_\t_\t0\troot\t_\t_
3-4\tdu\t_\t_\t_\t_\t_\t_\t_\t_
3\tde\tde\tADP\t_\t_\t5\tcase\t_\t_
4\tle\tle\tDET\t_\t_\t5\tdet\t_\t_
5\tchat\tchat\tNOUN\t_\t_\t2\tobl:arg\t_\tSpaceAfter=No
6\t.\t.\tPUNCT\t_\t_\t2\tpunct\t_\t_

# sent_id = en-2
# text = Sue likes tea and Joe coffee
1\tSue\tSue\tPROPN\t_\t_\t2\tnsubj\t_\t_
2\tlikes\tlike\tVERB\t_\t_\t0\troot\t_\t_
3\ttea\ttea\tNOUN\t_\t_\t2\tobj\t_\t_
4\tand\tand\tCCONJ\t_\t_\t5\tcc\t_\t_
5\tJoe\tJoe\tPROPN\t_\t_\t2\tconj\t_\t_
5.1\tlikes\tlike\tVERB\t_\t_\t_\t_\t2:conj\tCopyOf=2
6\tcoffee\tcoffee\tNOUN\t_\t_\t5\torphan\t_\t_

"""


def _sentences(n: int) -> list[Sentence]:
    return [Sentence([f"w{i}", "."], [0, 1], ["root", "punct"], ["X", "PUNCT"], {"sent_id": str(i)}) for i in range(n)]


def test_reader_expands_multiword_tokens_and_skips_empty_nodes(tmp_path):
    path = tmp_path / "toy.conllu"
    path.write_text(TEXT, encoding="utf-8")
    for sents in (read_conllu(path), read_conllu(str(path)), read_conllu(TEXT)):
        assert len(sents) == 2
        fr, en = sents
        assert fr.words == ["Il", "parle", "de", "le", "chat", "."]  # 'du' expanded into its syntactic words
        assert fr.heads == [2, 0, 5, 5, 2, 2]
        assert fr.deprels == ["nsubj", "root", "case", "det", "obl:arg", "punct"]  # subtype kept
        assert fr.upos[2:4] == ["ADP", "DET"]
        assert fr.metadata["sent_id"] == "fr-1" and fr.metadata["text"] == "Il parle du chat."
        assert en.words == ["Sue", "likes", "tea", "and", "Joe", "coffee"]  # empty node 5.1 dropped
        assert en.heads == [2, 0, 2, 5, 2, 5]


def test_write_read_round_trip(tmp_path):
    sents = read_conllu(TEXT)
    text = write_conllu(sents, tmp_path / "out.conllu")
    assert (tmp_path / "out.conllu").read_text(encoding="utf-8") == text
    again = read_conllu(tmp_path / "out.conllu")
    assert [(s.words, s.heads, s.deprels, s.upos) for s in again] == [
        (s.words, s.heads, s.deprels, s.upos) for s in sents
    ]
    assert again[0].metadata["sent_id"] == "fr-1"


def test_label_vocab_is_sorted_union_with_subtypes():
    a, b = read_conllu(TEXT), _sentences(2)
    vocab = label_vocab([a, b])
    expected = sorted({d for s in a + b for d in s.deprels})
    assert vocab == expected and "obl:arg" in vocab and "obl" not in vocab


def test_sample_few_shot_is_a_seeded_partition():
    sents = _sentences(30)
    support, rest = sample_few_shot(sents, 5, seed=3)
    assert len(support) == 5 and len(rest) == 25
    ids = [s.metadata["sent_id"] for s in support + rest]
    assert sorted(ids) == sorted(s.metadata["sent_id"] for s in sents)
    assert [s.metadata["sent_id"] for s in rest] == [s.metadata["sent_id"] for s in sents if s not in support]
    again, _ = sample_few_shot(sents, 5, seed=3)
    other, _ = sample_few_shot(sents, 5, seed=4)
    assert again == support and other != support
    for bad in (0, 31):
        with pytest.raises(ValueError, match="'n'"):
            sample_few_shot(sents, bad, seed=0)


def test_reader_and_sentence_reject_bad_input(tmp_path):
    with pytest.raises(ValueError, match="source"):
        read_conllu(tmp_path / "missing.conllu")
    gap = "1\ta\t_\tX\t_\t_\t0\troot\t_\t_\n3\tb\t_\tX\t_\t_\t1\tdep\t_\t_\n\n"
    with pytest.raises(ValueError, match="1..n"):
        read_conllu(gap)
    with pytest.raises(ValueError, match="heads"):
        Sentence(["a"], [2], ["root"], ["X"])


def _raw_counts(path: Path) -> dict[str, object]:
    """Independent count from the raw lines: sentences, integer-id words (forms), MWT ranges, empty nodes."""
    forms, sentence, n_mwt, n_empty = [], [], 0, 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            if sentence:
                forms.append(sentence)
            sentence = []
        elif not line.startswith("#"):
            first, form = line.split("\t")[:2]
            if first.isdigit():
                sentence.append(form)
            n_mwt += "-" in first
            n_empty += "." in first
    if sentence:
        forms.append(sentence)
    return {"forms": forms, "mwt": n_mwt, "empty": n_empty}


@pytest.mark.shared_data
@pytest.mark.parametrize("name", sorted(REAL))
def test_real_ud_treebanks(name):
    path = REAL[name]
    if not path.exists():
        pytest.skip(f"real UD sample {path} absent (only present in the project's shared data folder)")
    sents = read_conllu(path)
    raw = _raw_counts(path)
    assert len(sents) == len(raw["forms"])
    assert sum(len(s) for s in sents) == sum(len(f) for f in raw["forms"])
    assert [s.words for s in sents] == raw["forms"]
    for s in sents:
        assert sum(h == 0 for h in s.heads) >= 1
    if name == "en_pud":
        assert raw["mwt"] > 0 and raw["empty"] > 0  # the sample exercises both features
    if name == "fr_pud":
        assert raw["mwt"] > 0
        assert any(d.count(":") for s in sents for d in s.deprels)


def test_reader_drops_a_utf8_byte_order_mark(tmp_path):
    path = tmp_path / "bom.conllu"
    path.write_bytes(b"\xef\xbb\xbf" + TEXT.encode("utf-8"))
    with_bom, plain = read_conllu(path), read_conllu(TEXT)
    assert [s.words for s in with_bom] == [s.words for s in plain]
    assert with_bom[0].metadata["sent_id"] == "fr-1"  # the BOM is not glued to the first comment
    assert read_conllu("\ufeff" + TEXT)[0].words == plain[0].words


def test_reader_names_file_and_line_of_a_malformed_word_line(tmp_path):
    path = tmp_path / "bad.conllu"
    lines = TEXT.splitlines()
    lines[4] = lines[4].replace("\t", " ", 3)  # line 5: columns run together
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{path.name}, line 5: a word line needs 10 tab-separated columns"):
        read_conllu(path)
    path.write_bytes(TEXT.encode("utf-8")[:40] + b"\xff\xfe" + TEXT.encode("utf-8")[40:])
    line = TEXT.encode("utf-8")[:40].count(b"\n") + 1
    with pytest.raises(ValueError, match=rf"{path.name}, line {line}: not valid UTF-8"):
        read_conllu(path)
