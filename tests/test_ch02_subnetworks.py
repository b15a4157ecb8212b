"""Chapter 02 drivers (mlmc.chapters.subnetworks): data loading for world and UD, parameter checks, stage-2 runs."""

from __future__ import annotations

import copy
from pathlib import Path

import pandas as pd
import pytest
import torch
from transformers import XLMRobertaConfig, XLMRobertaModel

from mlmc import reference
from mlmc.chapters import subnetworks as sx
from mlmc.heads import head_param_slices
from mlmc.world import World
from mlmc.zoo import train_tokenizer

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["cs", "hi"]
TEST = ["sr", "mr"]


@pytest.fixture(scope="module")
def world():
    return World(seed=0)


@pytest.fixture(scope="module")
def data(world):
    return sx.load_parsing_data(
        "world", "en", TRAIN, TEST, n_source=24, n_train=24, n_dev=8, n_test=8, n_support=8, world=world
    )


@pytest.fixture(scope="module")
def tokenizer(world):
    texts = [world.render(x, c) for x in ["en", *TRAIN, *TEST] for c in _clauses(40)]
    return train_tokenizer(texts, arch="xlmr", vocab_size=300)


def _clauses(n):
    import numpy as np

    from mlmc.world.grammar import sample_clause

    rng = np.random.default_rng(0)
    return [sample_clause(rng) for _ in range(n)]


@pytest.fixture(scope="module")
def parser(data, tokenizer):
    torch.manual_seed(0)
    cfg = XLMRobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=80,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.set_num_threads(1)
    return sx.make_parser(XLMRobertaModel(cfg), len(data.labels), 8, 8, 0.0, seed=0)


# ------------------------------------------------------------------------------------------------ data
def test_world_data_has_all_splits_labels_and_nearest_transfer(world, data):
    sizes = data.sizes()
    assert sizes.loc["en", "train"] == 24 and sizes.loc["cs", "dev"] == 8 and sizes.loc["sr", "few-shot pool"] == 8
    assert set(data.test) == {*TRAIN, *TEST}
    assert data.transfer == {x: world.nearest(x, TRAIN) for x in TEST}
    every = {d for split in (data.train, data.dev, data.test, data.support) for s in split.values() for x in s
             for d in x.deprels}  # fmt: skip
    assert data.labels == sorted(every)
    assert data.similarity.loc["sr", "cs"] == pytest.approx(world.typology_similarity(["sr", "cs"]).loc["sr", "cs"])
    assert data.pretrained["sr"] == world.spec("sr").pretrained


def test_ud_dir_names_of_the_thesis_test_treebanks():
    names = reference.load("ch4_table4_2").test_treebank
    dirs = [sx.ud_dir_name(n) for n in names]
    assert len(set(dirs)) == 82 and all(d.startswith("UD_") and "-" in d for d in dirs)
    assert sx.ud_dir_name("Faroese OFT") == "UD_Faroese-OFT"
    assert sx.ud_dir_name("Mbya Guarani Thomas") == "UD_Mbya_Guarani-Thomas"
    assert sx.ud_dir_name("Western Armenian") == "UD_Western_Armenian-ArmTDP"
    assert sx.ud_dir_name("South Levantine Arabic") == "UD_South_Levantine_Arabic-MADAR"
    assert sx.ud_dir_name("Skolt Sami-Giellagas") == "UD_Skolt_Sami-Giellagas"
    with pytest.raises(ValueError, match="thesis_name"):
        sx.ud_dir_name("Faroese")


def test_thesis_transfer_map_follows_table_4_2():
    train = ["UD_Arabic-PADT", "UD_Hindi-HDTB", "UD_Norwegian-Nynorsk"]
    got = sx.thesis_transfer_map(["UD_Faroese-OFT", "UD_Tamil-TTB", "UD_Tagalog-TRG"], train)
    assert got == {"UD_Faroese-OFT": "UD_Norwegian-Nynorsk", "UD_Tamil-TTB": "UD_Hindi-HDTB",
                   "UD_Tagalog-TRG": "UD_Arabic-PADT"}  # fmt: skip
    with pytest.raises(ValueError, match="train_langs"):
        sx.thesis_transfer_map(["UD_Faroese-OFT"], ["UD_Arabic-PADT"])
    with pytest.raises(ValueError, match="test_langs"):
        sx.thesis_transfer_map(["UD_Klingon-X"], train)
    assert sx.lang_code("UD_Norwegian-Nynorsk") == "no" and sx.lang_code("Czech") == "cs" and sx.lang_code("ar") == "ar"


def test_full_profile_names_mbert_ud29_and_the_82_thesis_treebanks():
    import yaml

    full = yaml.safe_load((ROOT / "notebooks" / "params" / "full" / "02_subnetworks.yaml").read_text())
    assert full["encoder"] == "google-bert/bert-base-multilingual-cased" and full["data_source"] == "ud"
    assert "2.9" in full["ud_root"] and full["transfer_map"] == "thesis"
    assert full["test_langs"] == [sx.ud_dir_name(n) for n in reference.load("ch4_table4_2").test_treebank]
    transfer = sx.thesis_transfer_map(full["test_langs"], full["train_langs"])
    assert set(transfer.values()) == set(full["train_langs"])
    assert (full["stage2_iters"], full["meta_episodes"], full["fewshot_seeds"], full["mask_seeds"]) == (1000, 500, 5, 4)


CONLLU = {
    "UD_English-EWT/en_ewt-ud-train.conllu": """# sent_id = e1
1-2	don't	_	_	_	_	_	_	_	_
1	do	do	AUX	_	_	3	aux	_	_
2	n't	not	PART	_	_	3	advmod	_	_
3	go	go	VERB	_	_	0	root	_	_
3.1	went	go	VERB	_	_	_	_	0:root	_
4	.	.	PUNCT	_	_	3	punct	_	_

""",
    "UD_Czech-PDT/cs_pdt-ud-train-c.conllu": """# sent_id = c1
1	pes	pes	NOUN	_	_	2	nsubj	_	_
2	spí	spát	VERB	_	_	0	root	_	_

""",
    "UD_Czech-PDT/cs_pdt-ud-train-ca.conllu": """# sent_id = c2
1	kočka	kočka	NOUN	_	_	2	nsubj:pass	_	_
2	spí	spát	VERB	_	_	0	root	_	_

""",
    "UD_Czech-PDT/cs_pdt-ud-dev.conllu": """# sent_id = c3
1	spí	spát	VERB	_	_	0	root	_	_

""",
    "UD_Czech-PDT/cs_pdt-ud-test.conllu": """# sent_id = c4
1	pes	pes	NOUN	_	_	2	nsubj	_	_
2	běží	běžet	VERB	_	_	0	root	_	_

""",
    "UD_Hindi-HDTB/hi_hdtb-ud-train.conllu": """# sent_id = h1
1	राम	राम	PROPN	_	_	2	nsubj	_	_
2	आया	आ	VERB	_	_	0	root	_	_

""",
    "UD_Hindi-HDTB/hi_hdtb-ud-dev.conllu": """# sent_id = h2
1	आया	आ	VERB	_	_	0	root	_	_

""",
    "UD_Hindi-HDTB/hi_hdtb-ud-test.conllu": """# sent_id = h3
1	आया	आ	VERB	_	_	0	root	_	_

""",
    "UD_Marathi-UFAL/mr_ufal-ud-test.conllu": "".join(
        f"""# sent_id = m{i}
1	तो	तो	PRON	_	_	3	nsubj	_	_
2-3	गेलाच	_	_	_	_	_	_	_	_
2	गेला	जा	VERB	_	_	3	compound:lvc	_	_
3	च	च	PART	_	_	0	root	_	_
3.1	गेला	जा	VERB	_	_	_	_	0:root	_

"""
        for i in range(4)
    ),
}


@pytest.fixture
def ud_root(tmp_path):
    for rel, text in CONLLU.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return tmp_path


def test_ud_loader_reads_written_conllu_files(ud_root):
    pytest.importorskip("lang2vec")
    train = ["UD_Czech-PDT", "UD_Hindi-HDTB"]
    sizes = dict(n_source=None, n_dev=None, n_test=None, n_support=None, ud_root=ud_root)
    d = sx.load_parsing_data(
        "ud", "UD_English-EWT", train, ["UD_Marathi-UFAL"], n_train=None, transfer_map="thesis", **sizes
    )
    (en,) = d.train["UD_English-EWT"]
    assert en.words == ["do", "n't", "go", "."] and en.heads == [3, 3, 0, 3]  # token 1-2 expanded, node 3.1 skipped
    assert len(d.train["UD_Czech-PDT"]) == 2  # PDT's train split comes in several files
    assert {"nsubj:pass", "compound:lvc"} <= set(d.labels)  # subtypes kept in the vocabulary
    assert d.support["UD_Marathi-UFAL"] == [] and len(d.test["UD_Marathi-UFAL"]) == 4  # no dev: few-shot from test
    assert d.transfer == {"UD_Marathi-UFAL": "UD_Hindi-HDTB"}  # thesis Table 4.2: Marathi UFAL -> Hindi
    uriel = sx.load_parsing_data("ud", "UD_English-EWT", train, ["UD_Marathi-UFAL"], n_train=1, **sizes)
    assert uriel.transfer == {"UD_Marathi-UFAL": "UD_Hindi-HDTB"}  # URIEL syntax_knn: Marathi is nearest to Hindi
    assert len(uriel.train["UD_Czech-PDT"]) == 1 and uriel.pretrained["UD_Czech-PDT"] is None
    with pytest.raises(ValueError, match="ud_root"):
        sx.load_parsing_data("ud", "UD_English-EWT", ["UD_Czech-PDT", "UD_Klingon-X"], [], n_train=None, **sizes)


def test_few_shot_samples_from_test_when_there_is_no_dev(data, tokenizer, parser):
    from mlmc.data import sample_few_shot

    no_dev = copy.copy(data)
    no_dev.support = {x: [] for x in TEST}
    out = sx.few_shot(parser, no_dev, tokenizer, None, n=3, steps=1, lrs=(1e-3, 1e-3), seeds=2, seed=5)
    for r in out.itertuples():
        _, rest = sample_few_shot(data.test[r.lang], 3, seed=5 * 1013 + r.seed)
        assert r.n_words == sum(len(s) for s in rest)  # scored on the test sentences not drawn for few-shot
    with_dev = sx.few_shot(parser, data, tokenizer, None, n=3, steps=1, lrs=(1e-3, 1e-3), seeds=1)
    assert list(with_dev.transfer) == [data.transfer[x] for x in TEST]
    assert list(with_dev.n_words) == [sum(len(s) for s in data.test[x]) for x in TEST]
    before = copy.deepcopy(parser.state_dict())
    sx.few_shot(parser, data, tokenizer, {"cs": torch.ones(2, 2)}, n=3, steps=2, lrs=(1e-2, 1e-2), seeds=1)
    assert all(torch.equal(v, parser.state_dict()[k]) for k, v in before.items())  # the model itself never changes


# ------------------------------------------------------------------------------------------ parameters
def _params(**over):
    p = dict(seed=0, device="cpu", data_source="world", ud_root=None, encoder="tiny-xlmr", source_lang="en",
             train_langs=["ar", "cs"], test_langs=["fo"], transfer_map="typology", n_source=10, n_train=10, n_dev=5,
             n_test=5, n_support=20, arc_dim=8, label_dim=8, dropout=0.1, wordpiece_dropout=0.0, batch_size=4,
             stage1_steps=1, stage1_lrs=[1e-3, 1e-3], weight_decay=0.01, mask_init="stage1", mask_seeds=1,
             mask_search_steps=1, prune_frac=0.1, prune_threshold=0.95, max_off_frac=0.25, imp_batches=1,
             dyn_off_frac=0.2, stage2_iters=2, stage2_batch=2, nonep_lrs=[1e-3, 1e-3], conflict_window=1,
             exact_sft=True, run_meta=True, meta_episodes=1, meta_batch=2, inner_k=1,
             meta_inner_lrs={"full": [0.01, 0.01], "sn_static": [0.01, 0.01], "sn_dyna": [0.01, 0.01]},
             meta_outer_lrs=[1e-3, 1e-3], meta_conflict_window=1, fewshot_n=20, fewshot_steps=1, fewshot_seeds=1,
             fewshot_lrs=[1e-3, 1e-3], run_ablations=True, selprot_langs=1, ablation_random_off=[5],
             ablation_bad_off=5, ablation_dr_off=5, run_unstructured=True, magnitude_frac=0.1,
             magnitude_max_rounds=2, unstructured_lrs=[1e-3, 1e-3], sparsity_sweep=[], progress=False)  # fmt: skip
    return p | over


def test_check_params_accepts_the_defaults_and_derives_head_counts(world):
    derived = sx.check_params(_params(), world)
    assert derived == {"n_layers": 4, "n_heads": 8, "dyn_off": 6, "max_off": 8}


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"train_langs": ["ar", "xx"]}, "'train_langs' has unknown value"),
        ({"test_langs": ["fo", "klingon"]}, "'test_langs' has unknown value"),
        ({"source_lang": "zz"}, "'source_lang' has unknown value"),
        ({"train_langs": ["ar", "fo"]}, "'train_langs' must not repeat"),
        ({"ablation_random_off": [5, 33]}, "'ablation_random_off' must be <= 32"),
        ({"ablation_bad_off": 40}, "'ablation_bad_off' must be <= 32"),
        ({"stage1_steps": -1}, "'stage1_steps' must be >= 0"),
        ({"stage2_iters": -5}, "'stage2_iters' must be >= 1"),
        ({"meta_episodes": 0}, "'meta_episodes' must be >= 1"),
        ({"dyn_off_frac": 1.5}, "'dyn_off_frac' must be in"),
        ({"fewshot_n": 50}, "'fewshot_n' must be <= 20"),
        ({"transfer_map": "thesis"}, "'transfer_map' must be 'typology'"),
        ({"mask_init": "random"}, "'mask_init' must be one of"),
        ({"nonep_lrs": [1e-3]}, "'nonep_lrs' must be \\[encoder_lr, decoder_lr\\]"),
        ({"device": "tpu"}, "'device'"),
        ({"encoder": "./no/such/encoder"}, "'encoder' must be a zoo name"),
    ],
)
def test_bad_parameters_fail_with_the_parameter_named(world, over, match):
    with pytest.raises(ValueError, match=match):
        sx.check_params(_params(**over), world)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu_fails_first(world):
    with pytest.raises(ValueError, match="parameter 'device'='cuda' needs a GPU"):
        sx.check_params(_params(device="cuda", stage2_iters=-5), world)


def test_the_default_path_never_reads_uriel(world, monkeypatch):
    """lang2vec (the optional ``full`` extra) cannot change a default-profile number: the world path never imports
    mlmc.typology, and its typology cosines are rounded (stable across CPUs)."""
    import sys

    monkeypatch.setitem(sys.modules, "lang2vec", None)
    monkeypatch.setitem(sys.modules, "mlmc.typology", None)  # any import of it would fail here
    d = sx.load_parsing_data("world", "en", TRAIN, TEST, n_source=4, n_train=4, n_dev=2, n_test=2, n_support=2,
                             world=world)  # fmt: skip
    assert d.similarity.equals(d.similarity.round(6))
    assert d.transfer == {x: world.nearest(x, TRAIN) for x in TEST}


# ------------------------------------------------------------------------------------------ planted checks
def planted_inputs(seed: int = 0) -> dict:
    """Check inputs with the chapter's structure: typology cosines with three distinct values (ties), LAS on a 0.1
    grid, pretrained languages better, no systematic mask effect."""
    import numpy as np

    rng = np.random.default_rng(seed)
    cos = np.array([0.62, 0.62, 0.85, 0.85, 0.85, 1.0, 1.0, 0.62, 0.85, 1.0, 0.62, 0.85, 1.0])
    las = np.round(40 + 20 * cos + rng.normal(0, 4, 13), 1)
    return {
        "transfer_is_nearest": np.ones(13), "transfer_random": (rng.uniform(size=13) < 1 / 7).astype(float),
        "fs_cosine": cos, "fs_las": las,
        "las_pretrained": np.round(rng.normal(65, 5, 18), 1), "las_unseen": np.round(rng.normal(40, 5, 21), 1),
        "pair_typology": np.round(rng.uniform(0.5, 1, 21), 6), "pair_jaccard": np.round(rng.uniform(0, 0.5, 21), 6),
        "pair_importance": np.round(rng.uniform(0.8, 1, 21), 6),
        "train_static": np.round(rng.normal(85, 2, 7), 1), "train_full": np.round(rng.normal(85, 2, 7), 1),
        "train_random": np.round(rng.normal(85, 2, 7), 1),
        "fs_static": np.round(las.repeat(3) + rng.normal(0, 1, 39), 1), "fs_full": las.repeat(3),
        "gain_static": np.round(rng.normal(0, 1, 13), 1),
        "conflict_full": np.array([57.1, 61.9, 52.4, 57.1, 57.1]), "conflict_static": np.array([57.1, 52.4, 57.1,
                                                                                               61.9, 57.1]),
    }  # fmt: skip


def test_transfer_nearest_is_a_consistency_check_and_pretraining_is_asserted():
    from mlmc import evidence as ev

    checks = {c.claim: c for c in sx.subnet_checks(planted_inputs())}
    nearest = [c for name, c in checks.items() if name.startswith("transfer language")]
    assert nearest[0].kind == "consistency" and not nearest[0].asserted
    asserted = [c for c in checks.values() if c.asserted]
    assert [c.claim for c in asserted] == [n for n in checks if n.startswith("test languages seen in pretraining")]
    assert all(c.passed and ev.control_fails(c) for c in asserted)
    typ = [c for name, c in checks.items() if name.startswith("few-shot LAS rises")][0]
    assert 0 <= typ.p_value <= 1 and typ.statistic == "spearman correlation"
    assert not sx.subnet_checks(planted_inputs(), asserted=False)[0].asserted


def test_subnet_asserted_checks_fail_on_their_controls_outputs():
    x = planted_inputs()
    swapped = dict(x, las_pretrained=x["las_unseen"])
    assert all(not c.passed for c in sx.subnet_checks(swapped) if c.asserted)


def test_subnet_check_verdicts_do_not_flip_under_jitter():
    from mlmc import evidence as ev

    x = planted_inputs()
    keys = list(x)
    assert ev.jitter_stable(lambda *a: sx.subnet_checks(dict(zip(keys, a, strict=True))), *x.values())


def test_tiny_samples_skip_checks_instead_of_failing():
    x = {k: v[:2] for k, v in planted_inputs().items()}  # e.g. the smoke profile: 2 training languages
    claims = [c.claim for c in sx.subnet_checks(x)]
    assert not any("correlation" in c for c in claims) and any(c.startswith("SN_static beats FULL") for c in claims)


def test_stop_reasons_tell_the_cap_from_the_stop_rule():
    hist = pd.DataFrame({"lang": ["a"] * 3 + ["b"] * 2, "seed": 0, "round": [0, 1, 2, 0, 1],
                         "accepted": [True, True, False, True, True]})  # fmt: skip
    assert sx.stop_reasons(hist).to_dict() == {("a", 0): "stop rule", ("b", 0): "cap"}


def test_committed_chapter_asserts_only_checks_whose_control_fails():
    import nbformat

    from mlmc import evidence as ev

    nb = nbformat.read(ROOT / "book" / "chapters" / "02_subnetworks.ipynb", 4)
    records = [r for c in nb.cells for o in c.get("outputs", []) for r in
               o.get("data", {}).get(ev.MIME, {}).get("checks", [])]  # fmt: skip
    assert records, "the chapter shows its checks with ev.show"
    for r in records:
        assert r["kind"] == "consistency" or r["control_verdict"] != "pass", r["claim"]
        if r["asserted"]:
            assert r["verdict"] == "pass" and r["control_verdict"] != "pass", r["claim"]


# ---------------------------------------------------------------------------------------- training runs
def test_stage2_rejects_a_mask_of_the_wrong_shape_before_training(data, tokenizer, parser):
    before = copy.deepcopy(parser.state_dict())
    with pytest.raises(ValueError, match=r"must have shape \[2, 2\]"):
        sx.run_stage2(parser, data, tokenizer, {"cs": torch.ones(4, 8), "hi": None}, iters=1, batch_size=2,
                      lrs=(1e-3, 1e-3))  # fmt: skip
    with pytest.raises(ValueError, match="masks"):
        sx.run_stage2(parser, data, tokenizer, {"cs": torch.ones(2, 2), "xx": None}, iters=1, batch_size=2,
                      lrs=(1e-3, 1e-3))  # fmt: skip
    with pytest.raises(ValueError, match="iters"):
        sx.run_stage2(parser, data, tokenizer, None, iters=-1, batch_size=2, lrs=(1e-3, 1e-3))
    assert all(torch.equal(v, parser.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("episodic", [False, True])
def test_exact_sparse_stage2_keeps_heads_off_in_every_language_bit_identical(data, tokenizer, parser, episodic):
    off_everywhere = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    masks = {"cs": off_everywhere, "hi": torch.tensor([[0.0, 0.0], [1.0, 1.0]])}  # head (0,1) off in both
    res = sx.run_stage2(parser, data, tokenizer, masks, iters=3, batch_size=3, lrs=(1e-2, 1e-2), episodic=episodic,
                        inner_k=1, inner_lrs=(0.05, 0.05), window=1)  # fmt: skip
    new, old = dict(res.model.named_parameters()), dict(parser.named_parameters())
    for (layer, head), owned in head_param_slices(parser).items():
        for name, dim, part in owned:
            same = torch.equal(new[name].narrow(dim, part.start, part.stop - part.start),
                               old[name].narrow(dim, part.start, part.stop - part.start))  # fmt: skip
            if (layer, head) == (0, 1):
                assert same, f"{name} of the head switched off in every language moved"
            elif (layer, head) == (1, 0):
                assert not same, f"{name} of a head on in both languages did not move"
    assert len(res.conflicts) == 3 and res.conflicts.pct_conflict.between(0, 100).all()
    assert list(res.losses.iteration) == [0, 1, 2]


def test_dynamic_stage2_ends_with_exactly_k_heads_off(data, tokenizer, parser):
    masks = {x: torch.ones(2, 2) for x in TRAIN}
    res = sx.run_stage2(parser, data, tokenizer, masks, iters=2, batch_size=2, lrs=(1e-3, 1e-3), dynamic=True,
                        dyn_off=1, window=1)  # fmt: skip
    assert all(int((m == 0).sum()) == 1 for m in res.masks.values())
    with pytest.raises(ValueError, match="dyn_off"):
        sx.run_stage2(parser, data, tokenizer, masks, iters=1, batch_size=2, lrs=(1e-3, 1e-3), dynamic=True,
                      dyn_off=5)  # fmt: skip


def test_mask_search_union_and_magnitude_masks(data, tokenizer, parser):
    search = sx.find_head_masks(parser, data, tokenizer, seeds=2, steps=8, batch_size=8, lrs=(2e-2, 2e-2),
                                prune_frac=0.25, threshold=0.0, max_off_frac=0.5, n_imp_batches=1)  # fmt: skip
    for x in TRAIN:
        union = torch.maximum(*search.per_seed[x])
        assert torch.equal(search.masks[x], union)
        assert all(int((m == 0).sum()) <= 2 for m in search.per_seed[x])
    assert set(search.history.lang) == set(TRAIN) and set(search.finetuned) == set(TRAIN)
    masks, hist = sx.find_magnitude_masks(search.finetuned, data, tokenizer, frac=0.1, threshold=0.0, max_rounds=2)
    shares = [sx.pct_off(m) for m in masks.values()]
    assert all(18 < s < 20 for s in shares)  # two rounds: 1 - 0.9² = 19% of the attention weights
    assert list(hist["round"]) == [1, 2, 1, 2]
    res = sx.run_stage2(parser, data, tokenizer, masks, iters=1, batch_size=2, lrs=(1e-3, 1e-3), window=1)
    ev = sx.evaluate_langs(res.model, data, tokenizer, TRAIN, res.masks)
    assert list(ev.lang) == TRAIN and ev.LAS.between(0, 100).all()


def test_batches_are_seeded_per_language(data, tokenizer):
    a = sx.Batches(data.train, tokenizer, data.labels, 3, seed=1)
    b = sx.Batches(data.train, tokenizer, data.labels, 3, seed=1)
    c = sx.Batches(data.train, tokenizer, data.labels, 3, seed=2)
    assert torch.equal(a("cs")["input_ids"], b("cs")["input_ids"])
    assert not torch.equal(a("cs")["input_ids"], c("cs")["input_ids"])


def test_selection_protection_best_share_and_pct_off():
    m = {"ar": torch.tensor([[0.0, 1.0]]), "cs": torch.tensor([[1.0, 0.0]])}
    sel = sx.selection_protection_masks(m, "ar", "selection")
    prot = sx.selection_protection_masks(m, "ar", "protection")
    assert sel["cs"] is None and torch.equal(sel["ar"], m["ar"])
    assert prot["ar"] is None and torch.equal(prot["cs"], m["cs"])
    with pytest.raises(ValueError, match="kind"):
        sx.selection_protection_masks(m, "ar", "both")
    table = pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": [1.0, 3.0, 0.0]})
    assert sx.best_share(table, ["a", "b"]).round(1).to_dict() == {"a": 66.7, "b": 66.7}
    assert sx.pct_off(m["ar"]) == 50.0 and sx.pct_off(None) == 0.0
    assert sx.pct_off({"w": torch.tensor([True, False, False, False])}) == 75.0


# ------------------------------------------------------------------ long sentences through every zoo encoder
def _shared_ud() -> Path:
    import os

    return Path(os.environ.get("MLMC_SHARED_DATA", ROOT.parent / "shared" / "data")) / "ud"


def _joined(sents, n_words: int):
    """One long sentence made of consecutive sentences: later roots attach to the first one as ``parataxis``."""
    from mlmc.data import Sentence

    words, heads, rels, root = [], [], [], 0
    for s in sents:
        off = len(words)
        for h, d in zip(s.heads, s.deprels, strict=True):
            if h == 0 and off:
                heads.append(root)
                rels.append("parataxis")
            else:
                heads.append(h + off if h else 0)
                rels.append(d)
        root = root or s.heads.index(0) + 1
        words += s.words
        if len(words) >= n_words:
            break
    return Sentence(words, heads, rels, ["X"] * len(words))


def _parse_long(encoder: str, world, sent) -> None:
    from mlmc.data import label_vocab

    enc, tok = sx.load_encoder(encoder, world=world)
    limit = sx.positions(enc)
    assert tok.model_max_length == limit
    labels = label_vocab([[sent]])
    batch = sx.collate(tok, [sent], labels)
    assert batch["input_ids"].shape[1] <= limit < len(tok(sent.words, is_split_into_words=True)["input_ids"])
    parser = sx.make_parser(enc, len(labels), 16, 8, 0.0, 0).eval()
    res = sx.evaluate(parser, [batch])
    assert res["n_words"] == len(sent)


@pytest.mark.parametrize("encoder", [n for n in sx.zoo.NAMES if sx.zoo.recipe(n).arch == "xlmr"])
def test_sentences_longer_than_the_positions_parse_on_every_zoo_encoder(encoder, world):
    sents = read_world(world, 60)
    _parse_long(encoder, world, _joined(sents, 150))


def read_world(world, n):
    from mlmc.data import read_conllu

    return read_conllu(world.treebank("en", n, "test", seed=0))


@pytest.mark.shared_data
def test_longest_real_english_pud_sentence_parses_on_the_zoo_encoder(world):
    from mlmc.data import read_conllu

    path = _shared_ud() / "UD_English-PUD" / "en_pud-ud-test.conllu"
    if not path.is_file():
        pytest.skip(f"real-data sample not found at {path}")
    longest = max(read_conllu(path), key=len)
    _parse_long("tiny-xlmr", world, longest)
