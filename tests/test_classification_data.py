"""PAWS-X / XNLI / MARC loaders (mlmc.data.classification) on files written here in the formats of the releases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlmc.data import DataNotAvailableError, load_marc, load_pawsx, load_task, load_xnli
from mlmc.world import World

COLUMNS = ["uid", "lang", "cid", "text_a", "text_b", "label"]


def write_tsv(path: Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["\t".join(header)] + ["\t".join(str(v) for v in r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture
def pawsx_dir(tmp_path: Path) -> Path:
    """x-final layout: en/train.tsv, de/translated_train.tsv, <lang>/dev_2k.tsv; a quote and a bad label inside."""
    root = tmp_path / "x-final"
    header = ["id", "sentence1", "sentence2", "label"]
    for lang in ("en", "de", "ko"):
        rows = [[i, f'{lang} "a {i}', f"{lang} b {i}", i % 2] for i in range(1, 13)]
        rows[3][3] = -1  # unusable label: dropped
        if lang == "de":
            rows = rows[:-1]  # id 12 missing in de: not common to all languages
        write_tsv(root / lang / ("train.tsv" if lang == "en" else "translated_train.tsv"), header, rows)
        write_tsv(root / lang / "dev_2k.tsv", header, [[i, f"{lang} dev {i}", "x", 1] for i in range(5)])
    return root


def test_pawsx_local_parallel_columns_and_labels(pawsx_dir: Path):
    ds = load_pawsx(["de", "en", "ko"], 6, "train", seed=3, source=str(pawsx_dir))
    assert ds.column_names == COLUMNS
    assert ds["lang"] == ["de"] * 6 + ["en"] * 6 + ["ko"] * 6
    cids = [set(ds.filter(lambda r, lg=lg: r["lang"] == lg)["cid"]) for lg in ("de", "en", "ko")]
    assert cids[0] == cids[1] == cids[2]  # translations share a content id
    assert "pawsx-train-4" not in cids[0] and "pawsx-train-12" not in cids[0]
    for r in ds:
        n = int(r["cid"].rsplit("-", 1)[1])
        assert r["label"] == n % 2 and r["text_a"] == f'{r["lang"]} "a {n}' and r["uid"] == f"{r['lang']}:{r['cid']}"
    assert load_pawsx(["de", "en", "ko"], 6, "train", seed=3, source=str(pawsx_dir))["uid"] == ds["uid"]
    assert load_pawsx(["de", "en", "ko"], 6, "train", seed=4, source=str(pawsx_dir))["uid"] != ds["uid"]
    assert len(load_pawsx(["en"], None, "dev", source=str(pawsx_dir))) == 5


def test_pawsx_too_many_and_bad_names(pawsx_dir: Path):
    with pytest.raises(ValueError, match="n_per_lang"):
        load_pawsx(["de", "en"], 11, source=str(pawsx_dir))  # 10 common usable ids
    with pytest.raises(ValueError, match="langs"):
        load_pawsx(["de", "xx"], 2, source=str(pawsx_dir))
    with pytest.raises(ValueError, match="task"):
        load_task("mnli", ["en"], 2)
    with pytest.raises(ValueError, match="split"):
        load_pawsx(["en"], 2, "validation", source=str(pawsx_dir))
    with pytest.raises(FileNotFoundError, match="source"):
        load_pawsx(["en"], 2, "test", source=str(pawsx_dir))


def test_xnli_release_files_binarise_and_align(tmp_path: Path):
    labels = ["entailment", "neutral", "contradiction"]
    header = ["language", "gold_label", "sentence1_binary_parse", "sentence1", "sentence2", "promptID", "pairID"]
    rows = [[lang, labels[i % 3], "", f"{lang} p{i}", f"{lang} h{i}", i // 3, 100 + i] for lang in ("de", "ru")
            for i in range(9)]  # fmt: skip
    write_tsv(tmp_path / "XNLI-1.0" / "xnli.test.tsv", header, rows)
    with (tmp_path / "XNLI-1.0" / "xnli.dev.jsonl").open("w") as fh:
        for lang, i in [(lg, i) for lg in ("de", "ru") for i in range(4)]:
            fh.write(json.dumps(dict(language=lang, gold_label=labels[i % 3], sentence1=f"p{i}", sentence2="h",
                                     pairID=str(i))) + "\n")  # fmt: skip
    ds = load_xnli(["ru", "de"], 9, "test", source=str(tmp_path))
    assert ds.column_names == COLUMNS and ds["lang"] == ["ru"] * 9 + ["de"] * 9
    for r in ds:
        i = int(r["cid"].rsplit("-", 1)[1]) - 100
        assert (
            r["label"] == int(i % 3 == 0) and r["text_a"] == f"{r['lang']} p{i}" and r["text_b"] == f"{r['lang']} h{i}"
        )
    assert sorted(load_xnli(["de"], None, "dev", source=str(tmp_path))["label"]) == [0, 0, 1, 1]
    # XNLI-MT train: premise/hypo/label per language, aligned by row; a broken row keeps the others aligned
    mt = tmp_path / "XNLI-MT-1.0" / "multinli"
    for lang in ("de", "ru"):
        lines = [[f"{lang} p{i}", f"{lang} h{i}", ["entailment", "neutral", "contradictory"][i % 3]] for i in range(8)]
        write_tsv(mt / f"multinli.train.{lang}.tsv", ["premise", "hypo", "label"], lines)
    broken = mt / "multinli.train.de.tsv"
    text = broken.read_text().splitlines()
    text[3] = "only one field"
    broken.write_text("\n".join(text) + "\n")
    tr = load_xnli(["de", "ru"], 7, "train", source=str(tmp_path))
    by = {(r["lang"], r["cid"]): r for r in tr}
    for (lang, cid), r in by.items():
        i = int(cid.rsplit("-", 1)[1])
        assert i != 2 and r["text_a"] == f"{lang} p{i}" and r["label"] == int(i % 3 == 0)


def test_marc_json_lines_stars_and_template(tmp_path: Path):
    for lang in ("de", "zh"):
        with (tmp_path / f"dataset_{lang}_train.json").open("w", encoding="utf-8") as fh:
            for i in range(10):
                row = dict(review_id=f"{lang}_{i:07d}", product_id=f"p{i}", reviewer_id=f"r{i}", stars=str(i % 5 + 1),
                           review_body=f"body {i}", review_title=f"title {i}" if i % 2 else "", language=lang,
                           product_category="home")  # fmt: skip
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    ds = load_marc(["zh", "de"], 8, "train", seed=1, source=str(tmp_path))  # 2 of 10 have 3 stars: dropped
    assert ds.column_names == COLUMNS and ds["lang"] == ["zh"] * 8 + ["de"] * 8
    for r in ds:
        i = int(r["cid"].rsplit("_", 1)[1])
        assert i % 5 + 1 != 3 and r["label"] == int(i % 5 + 1 >= 4) and r["text_b"] == ""
        assert r["text_a"] == (f"title {i}. body {i}" if i % 2 else f"body {i}")
    assert set(ds.filter(lambda r: r["lang"] == "de")["cid"]).isdisjoint(ds.filter(lambda r: r["lang"] == "zh")["cid"])
    with pytest.raises(ValueError, match="n_per_lang"):
        load_marc(["de"], 9, source=str(tmp_path))
    same = load_marc(["de"], 8, "train", seed=1, source=str(tmp_path / "dataset_{lang}_{split}.json"))
    assert same["uid"] == ds.filter(lambda r: r["lang"] == "de")["uid"]


def test_same_columns_as_the_world_generators(pawsx_dir: Path):
    world = World(0)
    for gen in (world.paraphrase, world.entailment, world.sentiment):
        assert set(COLUMNS) <= set(gen(["en"], 2).column_names)
    ds = load_pawsx(["en"], 2, source=str(pawsx_dir))
    assert ds.features["label"].dtype == world.paraphrase(["en"], 2).features["label"].dtype


def test_offline_hub_gives_one_clear_error(monkeypatch: pytest.MonkeyPatch):
    import datasets
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataNotAvailableError, match="paws-x.*not available.*source"):
        load_pawsx(["en"], 2, source="google-research-datasets/paws-x")


def test_larger_samples_extend_smaller_ones(pawsx_dir: Path):
    small = load_pawsx(["de", "en"], 4, seed=2, source=str(pawsx_dir))
    large = load_pawsx(["de", "en"], 7, seed=2, source=str(pawsx_dir))
    for lang in ("de", "en"):
        s = small.filter(lambda r, lg=lang: r["lang"] == lg)["uid"]
        assert large.filter(lambda r, lg=lang: r["lang"] == lg)["uid"][:4] == s
