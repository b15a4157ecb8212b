"""Chapter 03 (modularity, thesis ch. 5): driver functions, planted checks, bad parameters and the smoke run.

Kernel properties of spec §8 live with their kernels (gates: test_heads.py; importance and pruning:
test_subnetworks.py; exact SFT step: test_sft.py; per-example gradients and projection: test_influence.py). Here:
what the chapter adds on top (masked TracIn, shares, SFT loop, mask pairs, checks) and the notebook contract.
"""

from __future__ import annotations

import time
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
import torch
from datasets import Dataset
from transformers import PreTrainedTokenizerFast, XLMRobertaConfig, XLMRobertaForSequenceClassification

from mlmc import crossling, influence
from mlmc import evidence as ev
from mlmc.book import ChapterFailed, run_chapter
from mlmc.chapters import modularity as md
from mlmc.heads import HeadGate, head_param_slices
from mlmc.world import World

torch.set_num_threads(1)
TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    vocab_size=60,
    max_position_embeddings=40,
    pad_token_id=1,
)
D_H = 8


def classifier(seed: int = 0) -> XLMRobertaForSequenceClassification:
    torch.manual_seed(seed)
    return XLMRobertaForSequenceClassification(XLMRobertaConfig(**TINY, num_labels=2)).eval()


def table(n: int, seed: int = 0, length: int = 6) -> dict[str, list]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 60, (n, length), generator=g)
    return {"input_ids": [[0, *row.tolist(), 2] for row in ids], "label": [i % 2 for i in range(n)]}


def mask_off(layer: int, head: int) -> torch.Tensor:
    m = torch.ones(2, 4)
    m[layer, head] = 0
    return m


# --------------------------------------------------------------------------------------- masks at test time
def test_a_mask_at_test_time_changes_exactly_the_gated_heads():
    model = classifier()
    gate = md.gate_of(model)  # attached first: its pre-hook runs before the recording hooks below
    seen = {}
    layer1 = model.roberta.encoder.layer[1].attention.output.dense
    layer0 = model.roberta.encoder.layer[0].attention.output.dense
    layer1.register_forward_pre_hook(lambda m, a: seen.__setitem__(("l1", len(seen)), a[0].detach().clone()))
    layer0.register_forward_pre_hook(lambda m, a: seen.__setitem__(("l0", len(seen)), a[0].detach().clone()))
    ids = torch.tensor(table(3)["input_ids"])
    model(input_ids=ids)
    (c0_full,) = [v for k, v in seen.items() if k[0] == "l0"]
    (c1_full,) = [v for k, v in seen.items() if k[0] == "l1"]
    seen.clear()
    with gate.using(mask_off(1, 2)):
        model(input_ids=ids)
    (c0_mask,) = [v for k, v in seen.items() if k[0] == "l0"]
    (c1_mask,) = [v for k, v in seen.items() if k[0] == "l1"]
    assert torch.equal(c0_full, c0_mask)  # layer 0 untouched
    heads = slice(2 * D_H, 3 * D_H)
    assert torch.count_nonzero(c1_mask[..., heads]) == 0
    keep = torch.ones(4 * D_H, dtype=torch.bool)
    keep[heads] = False
    assert torch.equal(c1_full[..., keep], c1_mask[..., keep])
    assert not torch.equal(c1_full[..., heads], c1_mask[..., heads])
    assert HeadGate.attached(model).gates is None  # the temporary mask is gone


def test_masked_tracin_zeroes_the_gated_heads_gradients_and_is_bounded():
    model = classifier()
    md.gate_of(model).set(mask_off(0, 1))
    grads = influence.per_example_grads(model, table(4), params=["roberta.encoder.layer.0.attention.self.query.*"])
    weight = grads[:, : 32 * 32].reshape(4, 32, 32)
    assert torch.count_nonzero(weight[:, D_H : 2 * D_H]) == 0  # rows of head 1
    assert torch.count_nonzero(weight[:, :D_H]) > 0
    md.gate_of(model).set(None)
    models = [classifier(0), classifier(1)]
    train = table(12, seed=3)
    test = {k: v[:3] for k, v in train.items()}  # duplicates of the first three training items
    for proj in (0, 64):
        tracer = md.Tracer(train, "all", proj, seed=0, batch_size=8, device="cpu")
        per_epoch = tracer(models, test, mask_off(1, 3))
        assert per_epoch.shape == (2, 3, 12)
        total = per_epoch.sum(0)
        assert np.all(np.abs(total) <= 2 + 1e-5)
        np.testing.assert_allclose(total[np.arange(3), np.arange(3)], 2.0, atol=1e-5)
        assert list(total.argmax(1)) == [0, 1, 2]
    assert all(HeadGate.attached(m).gates is None for m in models)  # gating restored after tracing


def test_shares_rows_sum_to_100_and_a_language_ranked_first_gives_a_full_diagonal():
    langs = ["a", "b", "c"]
    train_lang = np.repeat(langs, 10)
    test_lang = np.array(["a", "b", "c", "a"])
    scores = np.random.default_rng(0).normal(size=(4, 30))
    for i, x in enumerate(test_lang):
        scores[i, train_lang == x] += 100
    plus = md.shares(scores, train_lang, langs, 5, 1)
    minus = md.shares(scores, train_lang, langs, 5, -1)
    np.testing.assert_allclose(plus.sum(1), 100, atol=1e-9)
    assert ((minus >= 0) & (minus <= 100)).all()
    table_ = md.share_table(plus, test_lang, langs)
    np.testing.assert_allclose(np.diag(table_.to_numpy()), 100)
    assert np.all(np.diag(md.share_table(minus, test_lang, langs).to_numpy()) == 0)
    top, bottom = (influence.topk(torch.as_tensor(scores), 5, s).numpy() for s in (1, -1))
    assert all(not set(t) & set(b) for t, b in zip(top, bottom, strict=True))  # N >= 2m: disjoint
    via_kernel = crossling.language_shares(top, train_lang, test_lang, langs)
    pd.testing.assert_frame_equal(table_, via_kernel, check_names=False)


def test_item_shares_rejects_bad_positions():
    with pytest.raises(ValueError, match="idx"):
        crossling.item_shares(np.array([[0, 99]]), ["a", "b"], ["a", "b"])


# --------------------------------------------------------------------------------------------------- SFT
def test_language_batches_sample_languages_equally_and_deterministically():
    order = md.language_batches(["x", "y", "z"], {"x": 4, "y": 4, "z": 3}, np.random.default_rng(0))
    counts = pd.Series([lang for lang, _ in order]).value_counts()
    assert counts.max() - counts.min() <= 1 and len(order) == 11
    assert sorted(b for lang, b in order if lang == "x") == [0, 1, 2, 3]
    assert order == md.language_batches(["x", "y", "z"], {"x": 4, "y": 4, "z": 3}, np.random.default_rng(0))
    assert order != md.language_batches(["x", "y", "z"], {"x": 4, "y": 4, "z": 3}, np.random.default_rng(1))


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory) -> tuple[str, PreTrainedTokenizerFast]:
    """A random-init XLM-R classifier and a word-level tokenizer saved like a zoo entry (no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    root = tmp_path_factory.mktemp("tiny-src")
    vocab = {t: i for i, t in enumerate(["<s>", "<pad>", "</s>", "<unk>", "<mask>"] + [f"w{i}" for i in range(55)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
        cls_token="<s>",
        sep_token="</s>",
    )
    classifier().save_pretrained(root)
    fast.save_pretrained(root)
    return str(root), fast


def sentences(langs: list[str], n: int) -> Dataset:
    rng = np.random.default_rng(0)
    rows = [
        {
            "uid": f"{x}:{i}",
            "lang": x,
            "cid": str(i),
            "text_a": " ".join(f"w{j}" for j in rng.integers(0, 55, 6)),
            "text_b": "",
            "label": int(i % 2),
        }
        for x in langs
        for i in range(n)
    ]
    return Dataset.from_list(rows)


@pytest.mark.parametrize("mode", ["strict", "grad"])
def test_sparse_finetune_keeps_switched_off_heads_fixed(tmp_path, tiny_source, mode):
    source, tok = tiny_source
    masks = {"x": mask_off(0, 1), "y": mask_off(0, 1)}  # head (0, 1) off for every language
    masks["y"][1, 0] = 0  # head (1, 0) on only for x
    before = influence.load_checkpoint(source)
    paths = md.sparse_finetune(
        source,
        tok,
        sentences(["x", "y"], 16),
        masks,
        tmp_path / mode,
        lr=1e-2,
        epochs=2,
        batch_size=4,
        seed=0,
        weight_decay=0.01,
        max_length=16,
        device="cpu",
        mode=mode,
    )
    assert [p.name for p in paths] == ["epoch-1", "epoch-2"]
    after = influence.load_checkpoint(paths[-1])
    b, a = dict(before.named_parameters()), dict(after.named_parameters())
    slices = head_param_slices(before)
    for name, dim, part in slices[(0, 1)]:
        if mode == "strict":
            assert torch.equal(b[name].narrow(dim, part.start, D_H), a[name].narrow(dim, part.start, D_H)), name
    moved_off = any(
        not torch.equal(b[n].narrow(d, p.start, D_H), a[n].narrow(d, p.start, D_H)) for n, d, p in slices[(0, 1)]
    )
    assert moved_off == (mode == "grad")  # AdamW momentum / weight decay move masked weights under "grad"
    for name, dim, part in slices[(1, 0)]:  # on for x only: trained by x's batches
        assert not torch.equal(b[name].narrow(dim, part.start, D_H), a[name].narrow(dim, part.start, D_H))
    assert not torch.equal(b["classifier.out_proj.weight"], a["classifier.out_proj.weight"])  # shared: trained
    again = md.sparse_finetune(
        source,
        tok,
        sentences(["x", "y"], 16),
        masks,
        tmp_path / f"{mode}-2",
        lr=1e-2,
        epochs=2,
        batch_size=4,
        seed=0,
        weight_decay=0.01,
        max_length=16,
        device="cpu",
        mode=mode,
    )
    c = dict(influence.load_checkpoint(again[-1]).named_parameters())
    assert all(torch.equal(a[k], c[k]) for k in a)  # same seed, same weights


# ------------------------------------------------------------------------------------------- masks, pairs
def test_random_masks_keep_the_sparsity_and_pair_table_counts():
    own = mask_off(0, 1)
    own[1, 2] = 0
    draws = md.random_masks(own, 5, seed=3)
    assert all(int((m == 0).sum()) == 2 for m in draws) and len({tuple(m.flatten().tolist()) for m in draws}) > 1
    assert all(torch.equal(a, b) for a, b in zip(draws, md.random_masks(own, 5, seed=3), strict=True))
    assert all(int((m == 0).sum()) == 4 for m in md.random_masks(own, 3, seed=0, sparsity=0.5))
    a, b = torch.ones(2, 4), mask_off(0, 0)
    pt = md.pair_table({"a": a, "b": b, "c": 1 - b}, pd.DataFrame(np.eye(3), index=list("abc"), columns=list("abc")))
    row = pt.set_index("pair").loc["a-b"]
    assert row["shared on"] == 7 and row["shared off"] == 0
    assert row["mask cosine"] == pytest.approx(7 / np.sqrt(8 * 7))
    assert pt.set_index("pair").loc["b-c", "mask cosine"] == 0
    lay = md.layer_correlations(
        {"a": a, "b": b, "c": mask_off(1, 0)},
        pd.DataFrame(np.arange(9.0).reshape(3, 3), index=list("abc"), columns=list("abc")),
    )
    assert list(lay.layer) == [0, 1] and lay.pairs.tolist() == [6, 6]


# ------------------------------------------------------------------------------------------------- checks
def _overlap_inputs():
    sim = np.array([0.9, 0.8, 0.2, 0.1, 0.5, 0.4, 0.3, 0.7, 0.6, 0.15])
    return sim, sim * 0.5 + 0.01 * np.sin(np.arange(10))


def _spec_inputs():
    rng = np.random.default_rng(0)
    own = np.clip(60 + rng.normal(0, 8, 100).round(), 0, 100)
    rand = np.clip(45 + rng.normal(0, 8, 500).round(), 0, 100)
    return own, rand


@pytest.mark.parametrize("make", ["overlap", "specialisation", "sft"])
def test_checks_pass_on_planted_signal_fail_on_their_control_and_are_jitter_stable(make):
    if make == "overlap":
        x, y = _overlap_inputs()
        fn = lambda a, b: md.overlap_check(a, b, "monolingual")  # noqa: E731
        control_fn = lambda a, b: md.overlap_check(a, b[np.random.default_rng(5).permutation(b.size)], "m")  # noqa: E731
    elif make == "specialisation":
        x, y = _spec_inputs()
        fn = lambda a, b: md.specialisation_check(a, b, "random masks")  # noqa: E731
        control_fn = lambda a, b: md.specialisation_check(b[: a.size], b, "random masks")  # noqa: E731
    else:
        x = np.array([80, 85, 78, 90, 70, 82, 88, 79, 91, 75.0])
        y = x - np.array([9, 12, 8, 15, 5, 10, 11, 7, 14, 6.0])
        fn = md.sft_accuracy_check  # noqa: E731
        control_fn = lambda a, b: md.sft_accuracy_check(b, b)  # noqa: E731
    check = fn(x, y)
    assert check.verdict == "pass" and ev.control_fails(check)
    assert control_fn(x, y).verdict != "pass"  # the check evaluated on its control's outputs does not pass
    assert ev.jitter_stable(fn, x, y)


def test_asserted_claims_are_claims_the_chapter_makes():
    claims = {md.overlap_check([1, 2, 3], [1, 2, 3], s).claim for s in md.MASK_SOURCES}
    claims |= {
        md.specialisation_check([1.0], [1.0], n).claim
        for n in ["random masks of the same sparsity", "other languages' masks"]
    }
    claims.add(md.sft_accuracy_check([1.0, 2.0], [1.0, 2.0]).claim)
    assert claims >= md.ASSERTED


# ------------------------------------------------------------------------------------------------ params
def params(**over) -> dict:
    p = dict(
        seed=0,
        seeds=[0],
        device="cpu",
        model_name="tiny-xlmr",
        task="sentiment",
        data_source=None,
        langs=["de", "en", "es", "fr", "ko"],
        n_train_per_lang=30,
        n_trace_per_lang=10,
        n_dev_per_lang=10,
        n_test_pool_per_lang=10,
        n_test_per_lang=3,
        epochs=1,
        trace_every=1,
        mono_epochs=1,
        lr=1e-3,
        sft_lr=1e-3,
        batch_size=8,
        max_length=32,
        weight_decay=0.01,
        mask_source="monolingual",
        prune_step=0.1,
        prune_threshold=0.95,
        n_imp_batches=1,
        n_random_masks=5,
        random_sparsity=None,
        other_masks=None,
        compose_pairs=[["es", "fr"]],
        top_m=5,
        proj_dim=64,
        grad_params="all",
        trace_batch_size=64,
        sft_mask_mode="strict",
    )
    p.update(over)
    return p


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"langs": ["de", "xx"]}, "parameter 'langs' has unknown value"),
        ({"random_sparsity": 1.0}, r"parameter 'random_sparsity' must be a number in the open interval \(0, 1\)"),
        ({"random_sparsity": 0}, r"'random_sparsity' must be a number in the open interval"),
        ({"prune_step": -0.1}, r"parameter 'prune_step' must be a number in the open interval \(0, 1\)"),
        ({"compose_pairs": [["es", "ru"]]}, "parameter 'compose_pairs' has unknown value"),
        ({"compose_pairs": [["es"]]}, "parameter 'compose_pairs' must be a list of"),
        ({"other_masks": {"de": ["ru"]}}, r"parameter 'other_masks\[de\]' has unknown value"),
        ({"other_masks": {"ru": ["de"]}}, r"parameter 'other_masks \(test language\)' must be one of"),
        ({"mask_source": "bilingual"}, "parameter 'mask_source' must be one of"),
        ({"task": "nli"}, "parameter 'task' must be one of"),
        ({"top_m": 26}, "parameter 'top_m' must be <= 25"),
        ({"n_trace_per_lang": 31}, "parameter 'n_trace_per_lang' must be <= 30"),
        ({"device": "tpu"}, "parameter 'device' must be 'cpu', 'cuda'"),
    ],
)
def test_bad_parameters_raise_one_clear_error(over, match):
    with pytest.raises(ValueError, match=match):
        md.check_params(params(**over), World(0))


def test_cuda_without_a_gpu_is_refused_before_compute():
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(ValueError, match="parameter 'device'='cuda' needs a GPU"):
        md.check_params(params(device="cuda"), World(0))


def test_params_ok_and_derived_sizes():
    d = md.check_params(params(), World(0))
    assert (d["n_layers"], d["n_heads"], d["prune_k"], d["n_trace"]) == (4, 8, 3, 50)
    real = md.check_params(params(data_source="some/hub-id", task="paraphrase", compose_pairs=[["es", "fr"]]), None)
    assert real["langs"] == ["de", "en", "es", "fr", "ko"]
    with pytest.raises(ValueError, match="parameter 'langs' has unknown value"):
        md.check_params(params(data_source="x", task="sentiment"), None)  # ko is not a MARC language


# ----------------------------------------------------------------------------------------------- data
def test_load_data_reads_real_format_files_like_the_world(tmp_path):
    root = tmp_path / "x-final"
    for lang in ("de", "en"):
        for _split, name in (
            ("train", "train.tsv" if lang == "en" else "translated_train.tsv"),
            ("dev", "dev_2k.tsv"),
            ("test", "test_2k.tsv"),
        ):
            lines = ["id\tsentence1\tsentence2\tlabel"] + [
                f"{i}\t{lang} a {i}\t{lang} b {i}\t{i % 2}" for i in range(20)
            ]
            (root / lang).mkdir(parents=True, exist_ok=True)
            (root / lang / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    data = md.load_data("paraphrase", ["de", "en"], 8, 4, 5, 3, seed=0, source=str(root))
    world = md.load_data("paraphrase", ["de", "en"], 8, 4, 5, 3, seed=0, world=World(0))
    for split in ("train", "dev", "pool", "trace"):
        assert getattr(data, split).column_names == getattr(world, split).column_names
    assert len(data.train) == 16 and len(data.trace) == 6 and data.trace["lang"] == ["de"] * 3 + ["en"] * 3
    assert set(data.of("train", "de")["cid"]) == set(data.of("train", "en")["cid"])  # parallel
    enc = md.encode(
        PreTrainedTokenizerFast.from_pretrained(str(Path(md.model_source("tiny-xlmr", World(0))))), data.trace, 16
    )
    assert len(enc["input_ids"]) == 6 and enc["label"] == [int(v) for v in data.trace["label"]]


# ------------------------------------------------------------------------------------------------ notebook
@pytest.fixture
def results(tmp_path, monkeypatch):
    monkeypatch.setenv("MLMC_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return tmp_path / "results"


def test_smoke_profile_runs_end_to_end(tmp_path, results):
    # CPU seconds of this process and of the (reaped) kernel: wall time on a shared machine says little
    path = run_chapter("03", profile="smoke", out_dir=tmp_path / "out")
    nb = nbformat.read(path, as_version=4)
    assert not [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    (run_dir,) = (results / "03_modularity").iterdir()
    tables = {p.stem for p in run_dir.glob("*.csv")}
    assert {"accuracy", "share_items", "thesis_vs_reproduced", "planted_checks", "composition"} <= tables
    checks = pd.read_csv(run_dir / "planted_checks.csv")
    assert len(checks) >= 4 and not checks.asserted.any()  # the smoke profile asserts nothing


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"langs": ["de", "klingon"]}, "parameter 'langs' has unknown value"),
        ({"random_sparsity": 1.5}, "parameter 'random_sparsity' must be a number in the open interval"),
        ({"compose_pairs": [["es", "ru"]]}, "parameter 'compose_pairs' has unknown value"),
    ],
)
def test_bad_parameters_fail_in_the_setup_cell_and_write_nothing(tmp_path, results, overrides, match):
    start = time.perf_counter()
    with pytest.raises(ChapterFailed, match=match) as info:
        run_chapter("03", profile="smoke", overrides=overrides, out_dir=tmp_path / "out")
    assert info.value.user_error and "cell" in str(info.value)  # one user-error line from the setup cell's checks
    assert time.perf_counter() - start < 120  # kernel start-up only (seconds on an idle machine)
    assert not (tmp_path / "out" / "03_modularity.ipynb").exists()
    assert not results.exists() or not any(results.rglob("*.csv"))


def test_thesis_table_c2_means_match_the_printed_means():
    from mlmc import reference

    ref = reference.load("ch5_thesis")
    c2 = ref[ref.table == "C.2"]
    for task in ("PAWS-X", "MARC"):
        for metric in ("acc_ft_mask", "acc_sft_mask"):
            rows = c2[(c2.task == task) & (c2.metric == metric)]
            per_lang = rows[rows.lang != "mean"].value
            assert len(per_lang) == 5
            assert per_lang.mean() == pytest.approx(float(rows[rows.lang == "mean"].value.iloc[0]), abs=0.01)
    c1 = ref[ref.table == "C.1"]
    assert (c1.value % 14 == 0).all() and len(c1) == 15  # 10% of 144 heads per pruning round
    assert ref.source.str.contains("Choenni").all()


def test_traced_items_are_correct_under_every_compared_model_and_mask(monkeypatch):
    pool = sentences(["x", "y"], 5)
    data = md.TaskData(pool, pool, pool, pool)
    masks = {"x": mask_off(0, 0), "y": mask_off(1, 1)}
    run = md.SeedRun(0, [Path("ft")], pd.DataFrame(), {}, masks, masks, [Path("sft")], [], pd.DataFrame())
    monkeypatch.setattr(
        md.influence, "load_checkpoint", lambda path: type("M", (), {"name": str(path), "to": lambda self, d: self})()
    )
    right = {  # per (model, mask language or None): which of the 5 rows of each language are correct
        ("ft", None): [1, 1, 1, 0, 1],
        ("ft", "mask"): [1, 0, 1, 1, 1],
        ("sft", "mask"): [1, 1, 0, 1, 1],
    }

    def fake_correct(model, tokenizer, ds, mask, max_length, batch_size=64):
        return np.array(right[(model.name, None if mask is None else "mask")], dtype=bool)

    monkeypatch.setattr(md, "correct", fake_correct)
    picked = md.pick_tests(run, data, None, n=5, max_length=8, device="cpu")
    assert picked["uid"] == ["x:0", "x:4", "y:0", "y:4"]
    assert md.pick_tests(run, data, None, n=1, max_length=8, device="cpu")["uid"] == ["x:0", "y:0"]


def test_traced_epochs_count_back_from_the_last():
    assert (
        md.traced_epochs(4, 2) == [2, 4] and md.traced_epochs(5, 2) == [1, 3, 5] and md.traced_epochs(3, 1) == [1, 2, 3]
    )
