"""Tests of mlmc.train: padding, vectorised masking, span corruption, fine-tuning and pretraining loops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datasets import Dataset

from mlmc import models, train, zoo
from mlmc.world import World


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return list(World(seed=0).pretraining_corpus(langs=["en", "ru", "ko"], n_per_lang=150)["text"])


@pytest.fixture(scope="module")
def xlmr_tok(texts):
    return zoo.train_tokenizer(texts, arch="xlmr", vocab_size=300)


def _tiny(arch: str, tokenizer, **kw):
    rec = zoo.recipe({"xlmr": "tiny-xlmr", "mt5": "tiny-mt5", "llama": "tiny-llama"}[arch], layers=1, heads=2, **kw)
    return zoo.init_model(rec, tokenizer)


def test_pad_sequences_right_and_left():
    ids, mask = train.pad_sequences([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask = train.pad_sequences([[5, 6, 7], [8]], pad_id=-1, side="left")
    assert ids.tolist() == [[5, 6, 7], [-1, -1, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    with pytest.raises(ValueError, match="side"):
        train.pad_sequences([[1]], 0, side="middle")


def test_mask_tokens_rates_and_specials():
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 100, (400, 50), generator=gen)
    maskable = torch.ones_like(ids, dtype=torch.bool)
    maskable[:, 0] = False
    inputs, labels = train.mask_tokens(ids, maskable, mask_id=1, vocab_size=100, mask_prob=0.2, generator=gen)
    selected = labels != -100
    assert not selected[:, 0].any()
    assert torch.equal(labels[selected], ids[selected])
    assert torch.equal(inputs[~selected], ids[~selected])
    assert abs(selected[:, 1:].float().mean().item() - 0.2) < 0.01
    masked = (inputs == 1) & selected
    assert abs(masked.sum().item() / selected.sum().item() - 0.8) < 0.02
    kept = (inputs == ids) & selected
    assert 0.08 < kept.sum().item() / selected.sum().item() < 0.13  # 10 % kept + random draws equal to the original
    salient = ids < 20
    _, labels = train.mask_tokens(
        ids, maskable, mask_id=1, vocab_size=100, mask_prob=0.2, generator=gen, salient=salient, salient_prob=0.5
    )
    rate = (labels != -100)[salient & maskable].float().mean().item()
    assert abs(rate - (1 - 0.8 * 0.5)) < 0.02


def test_span_corrupt_reassembles_and_hits_density():
    rng = np.random.default_rng(0)
    sentinels, eos = list(range(1000, 1020)), 1
    noise = total = 0
    for _ in range(1000):
        ids = list(rng.integers(10, 500, int(rng.integers(2, 40))))
        inputs, targets = train.span_corrupt(ids, rng, sentinel_ids=sentinels, eos_id=eos, noise_density=0.15)
        assert inputs[-1] == eos and targets[-1] == eos
        used = [t for t in targets if t in sentinels]
        assert used == sentinels[: len(used)]  # sentinels in order, one more in the target than in the input
        assert [t for t in inputs if t in sentinels] == used[:-1]
        spans, cur = {}, None
        for t in targets[:-1]:
            if t in sentinels:
                cur = t
                spans[cur] = []
            else:
                spans[cur].append(t)
        rebuilt = [x for t in inputs[:-1] for x in (spans[t] if t in sentinels else [t])]
        assert rebuilt == ids
        noise += sum(len(v) for v in spans.values())
        total += len(ids)
    assert abs(noise / total - 0.15) < 0.05


def test_span_corrupt_places_spans_anywhere():
    rng = np.random.default_rng(1)
    last_in_span = [
        train.span_corrupt(list(range(10, 18)), rng, sentinel_ids=[100, 101, 102], eos_id=1)[0][-2] > 99
        for _ in range(300)
    ]
    assert 0.05 < np.mean(last_in_span) < 0.5


def test_fast_mlm_loss_equals_model_loss(texts, xlmr_tok):
    model = _tiny("xlmr", xlmr_tok)
    tok = train._Tok.of(xlmr_tok)
    seqs = xlmr_tok(texts[:16], add_special_tokens=False)["input_ids"]
    batch = train._make_batch("mlm", seqs, tok, torch.Generator().manual_seed(0), None, False, mask_prob=0.3)
    assert torch.allclose(train._loss(model, batch, "mlm"), model(**batch).loss, atol=1e-5)


@pytest.mark.parametrize("arch", ["xlmr", "mt5", "llama"])
def test_pretraining_lowers_loss_and_is_deterministic(texts, arch):
    tok = zoo.train_tokenizer(texts, arch=arch, vocab_size=300)
    fn = {"xlmr": train.pretrain_mlm, "mt5": train.pretrain_span, "llama": train.pretrain_clm}[arch]
    runs = []
    for _ in range(2):
        model = _tiny(arch, tok)
        losses = fn(model, tok, texts, steps=40, batch_size=16, lr=5e-3, seed=3, progress=False)
        runs.append((losses, model.state_dict()))
    losses = runs[0][0]
    assert np.mean(losses[-8:]) < np.mean(losses[:8])
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(runs[0][1][k], runs[1][1][k]) for k in runs[0][1])


def test_pretrain_rejects_bad_parameters(texts, xlmr_tok):
    model = _tiny("xlmr", xlmr_tok)
    with pytest.raises(ValueError, match="steps"):
        train.pretrain_mlm(model, xlmr_tok, texts, steps=-1)
    with pytest.raises(ValueError, match="mask_prob"):
        train.pretrain_mlm(model, xlmr_tok, texts, steps=1, mask_prob=1.5)
    llama_tok = zoo.train_tokenizer(texts, arch="llama", vocab_size=300)
    with pytest.raises(ValueError, match="mask token"):
        train.pretrain_mlm(model, llama_tok, texts, steps=1)
    with pytest.raises(ValueError, match="sentinel"):
        train.pretrain_span(model, llama_tok, texts, steps=1)


def test_evaluate_lm_clm_matches_manual_count(texts):
    tok = zoo.train_tokenizer(texts, arch="llama", vocab_size=300)
    model = _tiny("llama", tok)
    train.pretrain_clm(model, tok, texts, steps=30, batch_size=16, lr=5e-3, progress=False)
    held = texts[:40]
    res = train.evaluate_lm(model, tok, held, "clm", baseline_token=tok.convert_tokens_to_ids("▁."), batch_size=7)
    hits = base = n = 0
    with torch.no_grad():
        for text in held:
            ids = torch.tensor(
                [[tok.bos_token_id, *tok(text, add_special_tokens=False)["input_ids"], tok.eos_token_id]]
            )
            pred = model(input_ids=ids).logits[0, :-1].argmax(-1)
            hits += (pred == ids[0, 1:]).sum().item()
            base += (ids[0, 1:] == tok.convert_tokens_to_ids("▁.")).sum().item()
            n += ids.shape[1] - 1
    assert res["n_tokens"] == n
    assert res["accuracy"] == pytest.approx(hits / n)
    assert res["baseline_acc"] == pytest.approx(base / n)


# --- fine-tuning ------------------------------------------------------------------------------------------------
def _cls_data(texts: list[str], n: int, seed: int) -> Dataset:
    """Label 1 iff the sentence mentions the first word of the corpus (a cue a tiny model can pick up)."""
    rng = np.random.default_rng(seed)
    cue = texts[0].split()[0]
    rows = []
    for i in range(n):
        words = texts[int(rng.integers(len(texts)))].split()
        words = [w for w in words if w != cue]
        label = int(rng.random() < 0.5)
        if label:
            words.insert(int(rng.integers(len(words) + 1)), cue)
        rows.append({"text_a": " ".join(words), "text_b": "", "label": label, "lang": ["x", "y"][i % 2]})
    return Dataset.from_list(rows)


@pytest.fixture(scope="module")
def cls_data(texts):
    return _cls_data(texts, 240, 0), _cls_data(texts, 80, 1)


def _cls_model(tok, tmp_path, seed=0):
    path = tmp_path / "base"
    if not path.exists():
        _tiny("xlmr", tok).save_pretrained(path)
        tok.save_pretrained(path)
    return models.load(path, "seq-cls", num_labels=2, seed=seed)[0]


def test_finetune_learns_saves_checkpoints_and_history(cls_data, xlmr_tok, tmp_path):
    train_ds, dev_ds = cls_data
    model = _cls_model(xlmr_tok, tmp_path)
    res = train.finetune_classifier(
        model,
        xlmr_tok,
        train_ds,
        dev_ds,
        lr=3e-3,
        epochs=4,
        batch_size=16,
        seed=0,
        ckpt_dir=tmp_path / "ckpt",
        progress=False,
    )
    assert [p.name for p in res.checkpoints] == ["epoch-1", "epoch-2", "epoch-3", "epoch-4"]
    assert list(res.history.columns) == ["epoch", "train_loss", "dev_acc", "dev_acc_x", "dev_acc_y"]
    assert res.best_epoch == int(res.history.loc[res.history.dev_acc.idxmax(), "epoch"])
    assert res.history.dev_acc.max() > 0.8
    # the last checkpoint reloads through models.load and predicts what the trained model predicts
    reloaded, tok = models.load(res.checkpoints[-1], "seq-cls", num_labels=2)
    probs = train.predict(reloaded, tok, dev_ds, batch_size=7)
    assert np.allclose(probs, train.predict(model, xlmr_tok, dev_ds), atol=1e-5)
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    acc = (probs.argmax(1) == np.asarray(dev_ds["label"])).mean()
    assert acc == pytest.approx(res.history.dev_acc.iloc[-1])
    lang = np.asarray(dev_ds["lang"]) == "x"
    assert res.history.dev_acc_x.iloc[-1] == pytest.approx((probs.argmax(1) == dev_ds["label"])[lang].mean())


def test_predict_matches_unbatched_forward(cls_data, xlmr_tok, tmp_path):
    model = _cls_model(xlmr_tok, tmp_path)
    dev = cls_data[1].select(range(9))
    probs = train.predict(model, xlmr_tok, dev, batch_size=4)
    with torch.no_grad():
        for i, text in enumerate(dev["text_a"]):
            logits = model(**xlmr_tok(text, return_tensors="pt")).logits[0]
            assert np.allclose(probs[i], torch.softmax(logits, -1).numpy(), atol=1e-5)


def test_finetune_is_deterministic(cls_data, xlmr_tok, tmp_path):
    train_ds = cls_data[0].select(range(64))
    states = []
    for run, seed in enumerate([5, 5, 6]):
        model = _cls_model(xlmr_tok, tmp_path)
        train.finetune_classifier(
            model,
            xlmr_tok,
            train_ds,
            lr=3e-3,
            epochs=1,
            batch_size=16,
            seed=seed,
            ckpt_dir=tmp_path / f"run{run}",
            progress=False,
        )
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not all(torch.equal(states[0][k], states[2][k]) for k in states[0])


def test_finetune_patience_stops_early(cls_data, xlmr_tok, tmp_path):
    model = _cls_model(xlmr_tok, tmp_path)
    res = train.finetune_classifier(
        model,
        xlmr_tok,
        cls_data[0].select(range(32)),
        cls_data[1],
        lr=1e-12,
        epochs=5,
        batch_size=16,
        seed=0,
        ckpt_dir=tmp_path / "p",
        patience=1,
        progress=False,
    )
    assert len(res.history) == 2 and len(res.checkpoints) == 2 and res.best_epoch == 1


def test_finetune_rejects_bad_parameters(cls_data, xlmr_tok, tmp_path):
    model = _cls_model(xlmr_tok, tmp_path)
    kw = dict(lr=1e-3, epochs=1, batch_size=8, seed=0, ckpt_dir=tmp_path / "bad", progress=False)
    with pytest.raises(ValueError, match="'lr'"):
        train.finetune_classifier(model, xlmr_tok, cls_data[0], **(kw | {"lr": 0}))
    with pytest.raises(ValueError, match="label_col"):
        train.finetune_classifier(model, xlmr_tok, cls_data[0], label_col="y", **kw)
    with pytest.raises(ValueError, match="patience"):
        train.finetune_classifier(model, xlmr_tok, cls_data[0], patience=2, **kw)
    with pytest.raises(ValueError, match="text_cols"):
        train.finetune_classifier(model, xlmr_tok, cls_data[0], text_cols=("sentence",), **kw)
