"""Gradient-conflict statistics and the windowed tracker (Ch. 02; spec ch4 §8 test 10)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import mlmc.gradconflict as gc
from mlmc.gradconflict import GradientConflictTracker, conflict_stats, flat_grad, pairwise_cosine

torch.set_num_threads(1)


def np_cos(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_three_language_example():
    vecs = {"a": torch.tensor([1.0, 0, 0]), "b": torch.tensor([-1.0, 0, 0]), "c": torch.tensor([0.0, 1, 0])}
    stats = conflict_stats(vecs)
    cos = stats["pairwise"]
    assert (cos.loc["a", "b"], cos.loc["a", "c"], cos.loc["b", "c"]) == (-1.0, 0.0, 0.0)
    assert np.allclose(np.diag(cos.values), 1.0) and np.allclose(cos.values, cos.values.T)
    assert stats["pct_conflict"] == pytest.approx(100 / 3)
    assert stats["mean_cos"] == pytest.approx(-1 / 3)


def test_tracker_sums_over_window_before_cosine():
    steps = {"a": [[1.0, 0.0], [10.0, 0.0]], "b": [[-1.0, 0.1], [1.0, 1.0]]}
    tracker = GradientConflictTracker(window=2)
    results = []
    for t in range(2):
        for lang in ("a", "b"):
            results.append(tracker.add(lang, torch.tensor(steps[lang][t])))
    assert results[:3] == [None, None, None] and results[3] is not None  # window closed on the last add
    summed = np_cos(np.sum(steps["a"], 0), np.sum(steps["b"], 0))
    per_step = np.mean([np_cos(steps["a"][t], steps["b"][t]) for t in range(2)])
    assert results[3]["mean_cos"] == pytest.approx(summed, abs=1e-12)
    assert abs(per_step - summed) > 0.1  # averaging per-step cosines would give another answer
    assert results[3]["pct_conflict"] == (100.0 if summed < 0 else 0.0)
    hist = tracker.history()
    assert list(hist.columns) == ["window", "n_steps", "pct_conflict", "mean_cos"]
    assert hist.iloc[0]["n_steps"] == 2 and hist.iloc[0]["mean_cos"] == pytest.approx(summed)


def test_tracker_windows_reset_and_flush_partial():
    rng = np.random.default_rng(0)
    grads = {lang: rng.normal(size=(5, 6)) for lang in ("x", "y", "z")}
    tracker = GradientConflictTracker(window=3)
    for t in range(5):
        for lang, g in grads.items():
            tracker.add(lang, {"p": torch.tensor(g[t, :4]), "q": torch.tensor(g[t, 4:])})
    last = tracker.flush()  # the 2 remaining steps
    assert tracker.flush() is None
    hist = tracker.history()
    assert hist["n_steps"].tolist() == [3, 2]
    for window, rows in ((0, slice(0, 3)), (1, slice(3, 5))):
        sums = {lang: g[rows].sum(0) for lang, g in grads.items()}
        pairs = [np_cos(sums[a], sums[b]) for a, b in (("x", "y"), ("x", "z"), ("y", "z"))]
        assert hist.iloc[window]["mean_cos"] == pytest.approx(np.mean(pairs), abs=1e-12)
        assert hist.iloc[window]["pct_conflict"] == pytest.approx(100 * np.mean(np.array(pairs) < 0))
    assert last["pairwise"].loc["x", "y"] == pytest.approx(np_cos(grads["x"][3:].sum(0), grads["y"][3:].sum(0)))


def test_pairwise_cosine_in_chunks(monkeypatch):
    rng = np.random.default_rng(1)
    vecs = {k: rng.normal(size=11) for k in "pqr"}
    vecs["zero"] = np.zeros(11)
    monkeypatch.setattr(gc, "_CHUNK", 3)
    cos = pairwise_cosine({k: torch.tensor(v, dtype=torch.float32) for k, v in vecs.items()})
    for a in "pqr":
        for b in "pqr":
            assert cos.loc[a, b] == pytest.approx(np_cos(vecs[a], vecs[b]), abs=1e-6)
    assert (cos.loc["zero"] == 0).all()


def test_flat_grad_lines_up_parameters():
    torch.manual_seed(0)
    model = nn.ModuleDict({"used": nn.Linear(3, 2), "unused": nn.Linear(2, 2)})
    x = torch.randn(4, 3)
    loss = model["used"](x).pow(2).sum()
    flat = flat_grad(model, loss, retain_graph=True)
    params = list(model.parameters())
    assert flat.numel() == sum(p.numel() for p in params)
    w, b = torch.autograd.grad(loss, [model["used"].weight, model["used"].bias])
    expected = torch.cat([w.reshape(-1), b.reshape(-1), torch.zeros(6)])
    assert torch.allclose(flat, expected)


def test_bad_input():
    with pytest.raises(ValueError, match="at least 2"):
        pairwise_cosine({"a": torch.ones(3)})
    with pytest.raises(ValueError, match="one length"):
        pairwise_cosine({"a": torch.ones(3), "b": torch.ones(4)})
    with pytest.raises(ValueError, match="'window'"):
        GradientConflictTracker(window=0)
    tracker = GradientConflictTracker()
    tracker.add("a", torch.ones(3))
    with pytest.raises(ValueError, match="'grad'"):
        tracker.add("b", torch.ones(4))
    with pytest.raises(ValueError, match="at least 2 languages"):
        tracker.flush()
