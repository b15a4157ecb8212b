"""First-order MAML and few-shot adaptation with gates and parameter masks (Ch. 02; spec ch4 §8 test 11)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mlmc.gradconflict import GradientConflictTracker
from mlmc.metalearn import fomaml_outer_step, functional_loss, gate_scope, inner_adapt, trainable_params

torch.set_num_threads(1)


class Line(nn.Module):
    """y = w x + b in float64."""

    def __init__(self, w: float, b: float) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w, dtype=torch.float64))
        self.b = nn.Parameter(torch.tensor(b, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w * x + self.b


def mse(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return ((model(x) - y) ** 2).mean()


def batch(xs, ys):
    return torch.tensor(xs, dtype=torch.float64), torch.tensor(ys, dtype=torch.float64)


def hand_grads(w: float, b: float, xs, ys) -> tuple[float, float]:
    """d/dw and d/db of mean((w x + b - y)^2), written out by hand."""
    r = [w * x + b - y for x, y in zip(xs, ys, strict=True)]
    n = len(xs)
    return sum(2 * ri * x for ri, x in zip(r, xs, strict=True)) / n, sum(2 * ri for ri in r) / n


def hand_loss(w: float, b: float, xs, ys) -> float:
    return sum((w * x + b - y) ** 2 for x, y in zip(xs, ys, strict=True)) / len(xs)


TASKS = {
    "aa": (([1.0, 2.0], [3.0, 5.0]), ([0.5, -1.0], [2.0, 0.0])),
    "bb": (([-1.0, 0.0, 3.0], [1.0, 0.5, -2.0]), ([2.0], [1.0])),
}


def test_fomaml_matches_hand_derivation():
    w0, b0, k, beta = 0.3, -0.2, 2, 0.05
    lrs = {"w": 0.1, "b": 0.04}
    # hand computation: k inner SGD steps per task, query gradient at phi, averaged, one outer SGD step
    gw_sum = gb_sum = loss_sum = 0.0
    for (sx, sy), (qx, qy) in TASKS.values():
        w, b = w0, b0
        for _ in range(k):
            gw, gb = hand_grads(w, b, sx, sy)
            w, b = w - lrs["w"] * gw, b - lrs["b"] * gb
        gw, gb = hand_grads(w, b, qx, qy)
        gw_sum, gb_sum, loss_sum = gw_sum + gw, gb_sum + gb, loss_sum + hand_loss(w, b, qx, qy)
    expected_w = w0 - beta * gw_sum / len(TASKS)
    expected_b = b0 - beta * gb_sum / len(TASKS)

    model = Line(w0, b0)
    tasks = {lang: (batch(*s), batch(*q)) for lang, (s, q) in TASKS.items()}
    opt = torch.optim.SGD(model.parameters(), lr=beta)
    loss = fomaml_outer_step(model, tasks, None, k, lrs, opt, mse)
    assert abs(model.w.item() - expected_w) < 1e-10
    assert abs(model.b.item() - expected_b) < 1e-10
    assert abs(loss - loss_sum / len(TASKS)) < 1e-10


def test_param_mask_freezes_b_in_inner_loop_and_outer_step():
    model = Line(0.3, -0.2)
    (sx, sy), (qx, qy) = TASKS["aa"]
    frozen_b = {"b": torch.tensor(False)}
    phi = inner_adapt(model, batch(sx, sy), 3, 0.1, mse, param_masks=frozen_b)
    assert torch.equal(phi["b"], model.b.detach())
    assert not torch.equal(phi["w"], model.w.detach())
    b_before = model.b.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tasks = {"aa": (batch(sx, sy), batch(qx, qy))}
    fomaml_outer_step(model, tasks, None, 2, 0.1, opt, mse, param_masks_by_lang={"aa": frozen_b})
    assert torch.equal(model.b.detach(), b_before)


def test_inner_adapt_leaves_model_untouched_and_respects_masks_with_adam():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 1))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x, y = torch.randn(8, 4), torch.randn(8, 1)

    def loss_fn(m, data):
        return ((m(data[0]) - data[1]) ** 2).mean()

    keep = torch.ones(3, 4, dtype=torch.bool)
    keep[1] = False
    phi = inner_adapt(model, (x, y), 5, {"0.": 0.05, "": 0.01}, loss_fn, param_masks={"0.weight": keep}, opt="adam")
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), before[name])
    assert torch.equal(phi["0.weight"][1], before["0.weight"][1])  # frozen row bit-identical under Adam
    assert not torch.equal(phi["0.weight"][0], before["0.weight"][0])
    assert all(t.requires_grad and t.is_leaf for t in phi.values())
    assert functional_loss(model, phi, (x, y), loss_fn) < loss_fn(model, (x, y))


def test_inner_lrs_by_prefix():
    model = Line(0.3, -0.2)
    (sx, sy), _ = TASKS["aa"]
    phi = inner_adapt(model, batch(sx, sy), 1, {"w": 0.1, "": 0.0}, mse)
    gw, _ = hand_grads(0.3, -0.2, sx, sy)
    assert phi["w"].item() == pytest.approx(0.3 - 0.1 * gw, abs=1e-12)
    assert phi["b"].item() == -0.2
    with pytest.raises(ValueError, match="'lrs'"):
        inner_adapt(model, batch(sx, sy), 1, {"w": 0.1}, mse)
    with pytest.raises(ValueError, match="'opt'"):
        inner_adapt(model, batch(sx, sy), 1, 0.1, mse, opt="rmsprop")
    with pytest.raises(ValueError, match="'param_masks'"):
        inner_adapt(model, batch(sx, sy), 1, 0.1, mse, param_masks={"c": torch.tensor(True)})


def test_gate_masks_are_set_during_inner_and_query_passes():
    class RecordingGate:
        def __init__(self):
            self.active = None
            self.log = []

        def set(self, mask):
            self.active = mask
            self.log.append(mask)

    gate = RecordingGate()
    seen = []

    def loss_fn(m, data):
        seen.append(gate.active)
        return mse(m, data)

    masks = {"aa": torch.tensor([1.0, 0.0]), "bb": None}
    model = Line(0.3, -0.2)
    tasks = {lang: (batch(*s), batch(*q)) for lang, (s, q) in TASKS.items()}
    tracker = GradientConflictTracker(window=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    fomaml_outer_step(model, tasks, masks, 2, 0.1, opt, loss_fn, gate=gate, tracker=tracker)
    assert seen[:3] == [masks["aa"]] * 3 and seen[3:] == [None] * 3  # 2 inner + 1 query pass per language
    assert gate.active is None
    assert len(tracker.history()) == 1  # both languages reported their query gradient

    calls = []
    with gate_scope(gate, lambda: calls.append(1) or "fresh"):
        assert gate.active == "fresh"
    assert calls == [1] and gate.active is None
    with pytest.raises(ValueError, match="gate"), gate_scope(None, torch.ones(2)):
        pass


def test_gate_scope_enters_a_plain_context_manager():
    events = []

    class Scope:
        def __enter__(self):
            events.append("enter")

        def __exit__(self, *exc):
            events.append("exit")

    model = Line(0.3, -0.2)
    (sx, sy), _ = TASKS["aa"]
    inner_adapt(model, batch(sx, sy), 2, 0.1, lambda m, d: events.append("loss") or mse(m, d), gate=Scope())
    assert events == ["enter", "loss", "loss", "exit"]


def test_fomaml_input_checks():
    model = Line(0.0, 0.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="tasks"):
        fomaml_outer_step(model, {}, None, 1, 0.1, opt, mse)
    tasks = {"aa": (batch([1.0], [1.0]), batch([1.0], [1.0]))}
    with pytest.raises(ValueError, match="gates_by_lang"):
        fomaml_outer_step(model, tasks, {"zz": None}, 1, 0.1, opt, mse)
    assert set(trainable_params(model)) == {"w", "b"}
