"""Tests of mlmc.models.load: one loading path for local directories and hub ids, and the offline error."""

from __future__ import annotations

import pytest
import torch
from huggingface_hub import constants as hf_constants

from mlmc import models, zoo
from mlmc.world import World


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A small randomly initialised tiny-xlmr saved with save_pretrained, as the zoo saves its entries."""
    texts = World(seed=0).pretraining_corpus(langs=["en", "ko"], n_per_lang=100)["text"]
    tok = zoo.train_tokenizer(texts, arch="xlmr", vocab_size=200)
    model = zoo.init_model(zoo.recipe("tiny-xlmr", layers=1, heads=2), tok)
    path = tmp_path_factory.mktemp("saved")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path, model, texts[0]


def test_round_trip_mlm_equals_saved_model(saved):
    path, model, text = saved
    loaded, tok = models.load(path, "mlm")
    assert not loaded.training
    enc = tok(text, return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(loaded(**enc).logits, model.eval()(**enc).logits, atol=1e-6)


@pytest.mark.parametrize(
    ("kind", "num_labels", "cls"),
    [
        ("encoder", None, "XLMRobertaModel"),
        ("seq-cls", 3, "XLMRobertaForSequenceClassification"),
        ("token-cls", 5, "XLMRobertaForTokenClassification"),
    ],
)
def test_kinds_load_with_the_right_head(saved, kind, num_labels, cls):
    path, model, _ = saved
    loaded, _ = models.load(path, kind, num_labels=num_labels)
    assert type(loaded).__name__ == cls
    if num_labels:
        assert loaded.config.num_labels == num_labels
    emb = loaded.base_model.embeddings.word_embeddings.weight
    assert torch.equal(emb, model.roberta.embeddings.word_embeddings.weight)


def test_new_heads_are_seeded_without_touching_global_rng(saved):
    path, _, _ = saved
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    a = models.load(path, "seq-cls", num_labels=2, seed=0)[0].classifier.dense.weight
    assert torch.equal(torch.random.get_rng_state(), state)
    b = models.load(path, "seq-cls", num_labels=2, seed=0)[0].classifier.dense.weight
    c = models.load(path, "seq-cls", num_labels=2, seed=1)[0].classifier.dense.weight
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_causal_and_seq2seq_kinds(tmp_path):
    texts = World(seed=0).pretraining_corpus(langs=["en"], n_per_lang=80)["text"]
    for name, kind, cls in [
        ("tiny-llama", "causal-lm", "LlamaForCausalLM"),
        ("tiny-mt5", "seq2seq", "MT5ForConditionalGeneration"),
    ]:
        rec = zoo.recipe(name, layers=1)
        tok = zoo.train_tokenizer(texts, arch=rec.arch, vocab_size=150)
        zoo.init_model(rec, tok).save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
        model, loaded_tok = models.load(tmp_path / name, kind)
        assert type(model).__name__ == cls
        assert loaded_tok(texts[0])["input_ids"] == tok(texts[0])["input_ids"]


def test_bad_arguments_raise_value_errors(saved):
    path, _, _ = saved
    with pytest.raises(ValueError, match="kind"):
        models.load(path, "classifier")
    with pytest.raises(ValueError, match="num_labels"):
        models.load(path, "seq-cls")
    with pytest.raises(ValueError, match="num_labels"):
        models.load(path, "mlm", num_labels=2)
    with pytest.raises(FileNotFoundError, match="no model directory"):
        models.load(path / "missing", "mlm")


def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))


def test_offline_hub_miss_gives_one_clear_error(monkeypatch, tmp_path):
    _offline(monkeypatch, tmp_path)
    with pytest.raises(models.ModelNotAvailableError) as info:
        models.load("FacebookAI/xlm-roberta-base", "mlm")
    msg = str(info.value)
    assert "FacebookAI/xlm-roberta-base" in msg and "huggingface-cli download FacebookAI/xlm-roberta-base" in msg
    assert "HF_HOME" in msg and "local directory" in msg
    assert info.value.__cause__ is None and info.value.__context__ is None
    assert isinstance(info.value, RuntimeError)


def test_loader_errors_for_hub_ids_are_wrapped_without_a_chain(monkeypatch):
    monkeypatch.setattr(models, "_is_offline", lambda: False)

    def fail(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(models.AutoTokenizer, "from_pretrained", fail)
    with pytest.raises(models.ModelNotAvailableError, match="couldn't connect") as info:
        models.load("google/mt5-base", "seq2seq")
    assert info.value.__suppress_context__ and info.value.__cause__ is None
