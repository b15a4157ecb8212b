"""Tests of mlmc.zoo: recipes, cache keys, save/load round trip, atomic writes, rebuild of broken entries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mlmc import models, train, zoo
from mlmc.world import World

TINY = dict(steps=20, layers=1, langs=("en", "ru", "ko"), n_per_lang=120, vocab_size=300, batch_size=16)


@pytest.fixture(scope="module")
def world() -> World:
    return World(seed=0)


def _entries(cache: Path) -> list[Path]:
    root = cache / "zoo"
    return sorted(root.iterdir()) if root.exists() else []


def _same_weights(a, b) -> bool:
    sa, sb = (m if isinstance(m, dict) else m.state_dict() for m in (a, b))
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_recipe_overrides_are_validated():
    assert zoo.recipe("tiny-xlmr", steps=5).steps == 5
    assert zoo.recipe("tiny-llama", langs=["en", "de"]).langs == ("en", "de")
    with pytest.raises(ValueError, match="name"):
        zoo.recipe("tiny-bert")
    with pytest.raises(ValueError, match="unknown recipe override.*stepz"):
        zoo.recipe("tiny-xlmr", stepz=5)
    with pytest.raises(ValueError, match="arch"):
        zoo.recipe("tiny-xlmr", arch="llama")
    with pytest.raises(ValueError, match="'lr'"):
        zoo.recipe("tiny-xlmr", lr=-1.0)
    with pytest.raises(ValueError, match="hidden_size"):
        zoo.recipe("tiny-xlmr", hidden_size=60, heads=8)


def test_cache_key_hashes_the_whole_recipe(monkeypatch):
    base = zoo.recipe("tiny-xlmr")
    key = zoo.cache_key(base, "world-abc")
    assert key == zoo.cache_key(zoo.recipe("tiny-xlmr"), "world-abc")
    changed = {
        zoo.cache_key(zoo.recipe("tiny-xlmr", **{f: v}), "world-abc")
        for f, v in [
            ("steps", 7),
            ("lr", 1e-4),
            ("vocab_size", 999),
            ("dropout", 0.2),
            ("seed", 1),
            ("langs", ("en",)),
            ("mask_prob", 0.2),
            ("hidden_size", 32),
        ]
    }
    assert key not in changed and len(changed) == 8
    assert zoo.cache_key(base, "world-abd") != key
    assert zoo.cache_key(zoo.recipe("tiny-llama"), "world-abc") != key
    monkeypatch.setattr(zoo, "RECIPE_VERSION", zoo.RECIPE_VERSION + 1)
    assert zoo.cache_key(base, "world-abc") != key


def test_cache_root_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MLMC_CACHE", str(tmp_path / "c"))
    assert zoo.cache_root() == tmp_path / "c" / "zoo"
    monkeypatch.delenv("MLMC_CACHE")
    assert zoo.cache_root() == Path.home() / ".cache" / "mlmc" / "zoo"
    assert zoo.cache_root(tmp_path) == tmp_path / "zoo"


@pytest.mark.parametrize("name", zoo.NAMES)
def test_build_save_load_round_trip(world, tmp_path, monkeypatch, name):
    model, tok = zoo.get(name, world=world, cache_dir=tmp_path, progress=False, **TINY)
    (entry,) = _entries(tmp_path)
    rec = zoo.recipe(name, **TINY)
    key = zoo.cache_key(rec, "world-" + world.fingerprint())
    assert entry.name == f"{name}-{key}" and zoo.is_valid(entry, key)
    report = zoo.report(entry)
    assert report["key"] == key and report["recipe"]["steps"] == 20
    assert set(report["heldout"]) == {"accuracy", "baseline_acc", "chance_acc", "loss", "n_tokens"}
    assert report["heldout"]["chance_acc"] == pytest.approx(1 / len(tok))
    # the second call loads the cached entry (no rebuild) through the same path as hub models
    monkeypatch.setattr(zoo, "_build", lambda *a, **k: pytest.fail("rebuilt a valid entry"))
    again, tok2 = zoo.get(name, world=world, cache_dir=tmp_path, progress=False, **TINY)
    assert _same_weights(model, again)
    sample = list(world.pretraining_corpus(["en"], 3)["text"])
    assert tok2(sample)["input_ids"] == tok(sample)["input_ids"]
    kind = {"xlmr": "mlm", "mt5": "seq2seq", "llama": "causal-lm"}[rec.arch]
    assert _same_weights(models.load(entry, kind)[0], model)


def test_builds_are_deterministic(world, tmp_path):
    a = zoo.get("tiny-llama", world=world, cache_dir=tmp_path / "a", progress=False, **TINY)[0]
    b = zoo.get("tiny-llama", world=world, cache_dir=tmp_path / "b", progress=False, **TINY)[0]
    c = zoo.get("tiny-llama", world=world, cache_dir=tmp_path / "c", progress=False, **(TINY | {"seed": 1}))[0]
    assert _same_weights(a, b) and not _same_weights(a, c)


def test_custom_corpus_gets_its_own_key(tmp_path):
    texts = [f"w{i % 7} w{i % 5} w{i % 3} ." for i in range(200)]
    p1 = zoo.path("tiny-llama", corpus=texts, cache_dir=tmp_path, progress=False, **TINY)
    p2 = zoo.path("tiny-llama", corpus=texts[:150], cache_dir=tmp_path, progress=False, **TINY)
    assert p1 != p2 and zoo.report(p1)["corpus"].startswith("corpus-")
    with pytest.raises(ValueError, match="corpus"):
        zoo.path("tiny-llama", corpus=[], cache_dir=tmp_path, **TINY)


def test_failed_build_leaves_nothing_and_next_call_rebuilds(world, tmp_path, monkeypatch):
    def crash(*args, callback=None, **kwargs):
        raise RuntimeError("killed midway")

    monkeypatch.setattr(train, "pretrain_mlm", crash)
    with pytest.raises(RuntimeError, match="killed midway"):
        zoo.path("tiny-xlmr", world=world, cache_dir=tmp_path, progress=False, **TINY)
    assert _entries(tmp_path) == []
    monkeypatch.undo()
    entry = zoo.path("tiny-xlmr", world=world, cache_dir=tmp_path, progress=False, **TINY)
    assert _entries(tmp_path) == [entry] and zoo.is_valid(entry)


def test_crash_while_writing_is_atomic(world, tmp_path, monkeypatch):
    def crash(directory):
        assert (directory / "model.safetensors").exists()  # weights were already written to the temp dir
        raise OSError("disk full")

    monkeypatch.setattr(zoo, "_file_table", crash)
    with pytest.raises(OSError, match="disk full"):
        zoo.path("tiny-llama", world=world, cache_dir=tmp_path, progress=False, **TINY)
    assert _entries(tmp_path) == []  # neither the entry nor its temporary directory


def test_killed_process_leaves_no_valid_entry_and_rerun_rebuilds(world, tmp_path):
    """SIGKILL the building process while it writes the entry; the rerun must produce a valid entry."""
    script = textwrap.dedent(f"""
        import os, signal
        from mlmc import zoo
        def die(directory):
            os.kill(os.getpid(), signal.SIGKILL)
        zoo._file_table = die
        zoo.path("tiny-llama", cache_dir={str(tmp_path)!r}, progress=False, **{TINY!r})
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ | {"MLMC_CACHE": str(tmp_path)},
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    (leftover,) = _entries(tmp_path)
    assert leftover.name.startswith(".tiny-llama-") and ".tmp-" in leftover.name  # only the abandoned temp dir
    os.utime(leftover, (0, 0))  # killed long ago: the rebuild clears it
    entry = zoo.path("tiny-llama", world=world, cache_dir=tmp_path, progress=False, **TINY)
    assert zoo.is_valid(entry) and _entries(tmp_path) == [entry]
    models.load(entry, "causal-lm")


@pytest.mark.parametrize("damage", ["truncate_weights", "delete_marker", "edit_marker_key", "corrupt_tokenizer"])
def test_broken_entry_is_detected_and_rebuilt(world, tmp_path, damage):
    entry = zoo.path("tiny-xlmr", world=world, cache_dir=tmp_path, progress=False, **TINY)
    key = zoo.report(entry)["key"]
    # loaded weights may be memory-mapped from the file damaged below: keep a copy
    original = {
        k: v.clone()
        for k, v in zoo.get("tiny-xlmr", world=world, cache_dir=tmp_path, progress=False, **TINY)[0]
        .state_dict()
        .items()
    }
    if damage == "truncate_weights":
        weights = entry / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "delete_marker":
        (entry / "done.json").unlink()
    elif damage == "edit_marker_key":
        done = json.loads((entry / "done.json").read_text())
        (entry / "done.json").write_text(json.dumps(done | {"key": "0" * 16}))
    else:
        (entry / "tokenizer.json").write_text("{not json")
    assert not zoo.is_valid(entry, key)
    rebuilt, _ = zoo.get("tiny-xlmr", world=world, cache_dir=tmp_path, progress=False, **TINY)
    assert zoo.is_valid(entry) and _same_weights(rebuilt, original)
    assert _entries(tmp_path) == [entry]


def test_pretraining_runs_single_threaded_and_restores_threads(world, tmp_path, monkeypatch):
    seen = []
    real = train.pretrain_clm

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "pretrain_clm", spy)
    before = torch.get_num_threads()
    zoo.path("tiny-llama", world=world, cache_dir=tmp_path, progress=False, **TINY)
    assert seen == [1] and torch.get_num_threads() == before


@pytest.mark.slow
@pytest.mark.parametrize("name", zoo.NAMES)
def test_default_models_beat_the_unigram_baseline(name):
    """The full recipes (about a minute each on one thread, cached in $MLMC_CACHE) learn the world's languages."""
    held = zoo.report(zoo.path(name, progress=False))["heldout"]
    assert held["accuracy"] > 1.3 * held["baseline_acc"]
    assert held["accuracy"] > 100 * held["chance_acc"]
