"""Truncated BPTT: exact against BPTT when the window covers the stream, the immediate gradient
at truncation 1, closed form == generic, bias that grows as the truncation shrinks, and
hyperparameter validation."""

from __future__ import annotations

import pytest
import torch

from rnnsweep.algorithms import readout as readout_
from rnnsweep.algorithms.bptt import bptt_gradient
from rnnsweep.algorithms.cell import Cell, make_cell
from rnnsweep.algorithms.estimator import get_estimator, start
from rnnsweep.algorithms.loss import loss as loss_fn
from rnnsweep.algorithms.params import Params, init_params

DT = torch.float64
BATCH, OUTPUTS, INPUTS, HIDDEN = 3, 3, 2, 5


def _setup(
    cell: Cell, per_stream: bool, steps: int, seed: int = 0, scale: float = 1.0
) -> tuple[Params, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    params = init_params(cell, OUTPUTS, gen, DT, scale=scale)
    if per_stream:
        theta = params.theta.expand(BATCH, -1) + 0.1 * torch.randn(
            BATCH, cell.num_params, generator=gen, dtype=DT
        )
        readout = params.readout.expand(BATCH, -1, -1) + 0.1 * torch.randn(
            BATCH, *params.readout.shape, generator=gen, dtype=DT
        )
        params = Params(theta, readout)
    xs = torch.randn(steps, BATCH, cell.inputs, generator=gen, dtype=DT)
    ys = torch.randint(0, OUTPUTS, (steps, BATCH), generator=gen)
    return params, xs, ys


def _run(
    cell: Cell, params: Params, xs: torch.Tensor, ys: torch.Tensor, **hyper: object
) -> tuple[list[Params | None], Params | None, list[torch.Tensor]]:
    """``(grads of every step, flush, losses)`` with frozen parameters."""
    est, state = start("tbptt", cell, params, "ce", xs.shape[1], **hyper)
    grads, losses = [], []
    for x, y in zip(xs, ys, strict=True):
        result = est.step(params, state, x, y)
        grads.append(result.grad)
        losses.append(result.loss)
    return grads, est.flush(params, state), losses


def _total(grads: list[Params | None], flushed: Params | None) -> Params:
    parts = [g for g in grads + [flushed] if g is not None]
    return Params(sum(g.theta for g in parts), sum(g.readout for g in parts))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("cell_name", ["tanh", "gru", "lstm"])
@pytest.mark.parametrize("per_stream", [False, True])
@pytest.mark.parametrize("stride", [1, 3, 10])
def test_full_window_equals_bptt(cell_name: str, per_stream: bool, stride: int) -> None:
    steps = 10
    cell = make_cell(cell_name, HIDDEN, INPUTS)
    params, xs, ys = _setup(cell, per_stream, steps)
    grads, flushed, losses = _run(cell, params, xs, ys, truncation=steps, stride=stride)
    assert [g is not None for g in grads] == [(t + 1) % stride == 0 for t in range(steps)]
    assert (flushed is None) == (steps % stride == 0)
    ref_losses, ref = bptt_gradient(cell, params, "ce", xs, ys)
    total = _total(grads, flushed)
    assert total.theta.shape == params.theta.shape
    assert total.readout.shape == params.readout.shape
    assert _rel(total.theta, ref.theta) < 1e-9
    assert _rel(total.readout, ref.readout) < 1e-9
    torch.testing.assert_close(torch.stack(losses), ref_losses, rtol=1e-12, atol=1e-12)


def test_longer_window_than_stream_equals_bptt_leaky_mse() -> None:
    steps = 7
    cell = make_cell("tanh", HIDDEN, INPUTS, leak=0.5)
    params, xs, _ = _setup(cell, False, steps)
    ys = torch.randn(steps, BATCH, OUTPUTS, dtype=DT)
    est, state = start("tbptt", cell, params, "mse", BATCH, truncation=12, stride=5)
    grads = [est.step(params, state, x, y).grad for x, y in zip(xs, ys, strict=True)]
    total = _total(grads, est.flush(params, state))
    _, ref = bptt_gradient(cell, params, "mse", xs, ys)
    assert _rel(total.theta, ref.theta) < 1e-9
    assert _rel(total.readout, ref.readout) < 1e-9


@pytest.mark.parametrize("per_stream", [False, True])
def test_truncation_one_is_the_immediate_gradient(per_stream: bool) -> None:
    steps = 6
    cell = make_cell("tanh", HIDDEN, INPUTS)
    params, xs, ys = _setup(cell, per_stream, steps)
    grads, flushed, _ = _run(cell, params, xs, ys, truncation=1)
    assert flushed is None
    h = torch.zeros(BATCH, cell.state_size, dtype=DT)
    for t in range(steps):
        theta = params.theta.clone().requires_grad_(True)
        readout = params.readout.clone().requires_grad_(True)
        h_next = cell.step(theta, h.detach(), xs[t])
        hb = torch.cat([h_next, torch.ones_like(h_next[:, :1])], dim=1)
        losses = loss_fn("ce", readout_.output(readout, hb), ys[t])
        total = losses.sum() if per_stream else losses.sum() / BATCH
        g_theta, g_readout = torch.autograd.grad(total, (theta, readout))
        got = grads[t]
        assert got is not None
        torch.testing.assert_close(got.theta, g_theta, rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(got.readout, g_readout, rtol=1e-12, atol=1e-13)
        h = h_next.detach()


@pytest.mark.parametrize("leak", [1.0, 0.5])
@pytest.mark.parametrize("per_stream", [False, True])
@pytest.mark.parametrize(("truncation", "stride"), [(5, 2), (4, 4), (3, 1), (6, 0)])
def test_closed_form_equals_generic(
    leak: float, per_stream: bool, truncation: int, stride: int
) -> None:
    steps = 13  # several wraps of the ring and a partial stride left for flush
    cell = make_cell("tanh", HIDDEN, INPUTS, leak=leak)
    params, xs, ys = _setup(cell, per_stream, steps, seed=3, scale=1.5)
    runs = [
        _run(cell, params, xs, ys, truncation=truncation, stride=stride, path=path)
        for path in ("closed-form", "generic")
    ]
    (g_closed, f_closed, l_closed), (g_generic, f_generic, l_generic) = runs
    assert [g is None for g in g_closed] == [g is None for g in g_generic]
    assert (f_closed is None) == (f_generic is None)
    assert any(g is not None for g in g_closed)
    for a, b in zip(g_closed + [f_closed], g_generic + [f_generic], strict=True):
        if a is None:
            continue
        torch.testing.assert_close(a.theta, b.theta, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(a.readout, b.readout, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.stack(l_closed), torch.stack(l_generic), rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 3])
def test_bias_grows_as_truncation_shrinks(seed: int) -> None:
    steps = 30
    cell = make_cell("tanh", 8, INPUTS)  # recurrence strong enough for long-lived influence
    params, xs, ys = _setup(cell, False, steps, seed=seed, scale=1.5)
    _, ref = bptt_gradient(cell, params, "ce", xs, ys)
    errors = []
    for truncation in (2, 4, 8, 16, 30):
        grads, flushed, _ = _run(cell, params, xs, ys, truncation=truncation, stride=1)
        errors.append(_rel(_total(grads, flushed).theta, ref.theta))
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False)), errors
    assert errors[0] > 0.1 and errors[3] > 1e-3, errors
    assert errors[-1] < 1e-10, errors


def test_returned_gradients_are_not_overwritten_later() -> None:
    cell = make_cell("tanh", HIDDEN, INPUTS)
    params, xs, ys = _setup(cell, False, 9)
    est, state = start("tbptt", cell, params, "ce", BATCH, truncation=3, stride=2)
    kept = []
    for x, y in zip(xs, ys, strict=True):
        grad = est.step(params, state, x, y).grad
        if grad is not None:
            kept.append((grad, Params(grad.theta.clone(), grad.readout.clone())))
    assert len(kept) == 4
    for grad, copy in kept:
        assert torch.equal(grad.theta, copy.theta) and torch.equal(grad.readout, copy.readout)
    assert est.flush(params, state) is not None
    assert est.flush(params, state) is None


def test_float32_runs_and_stays_finite() -> None:
    cell = make_cell("tanh", 16, INPUTS)
    params = init_params(cell, OUTPUTS, torch.Generator().manual_seed(0), torch.float32)
    est, state = start("tbptt", cell, params, "ce", 4, truncation=4)
    for t in range(9):
        x = torch.randn(4, INPUTS)
        result = est.step(params, state, x, torch.full((4,), t % OUTPUTS))
        if result.grad is not None:
            assert result.grad.theta.dtype == torch.float32
            assert torch.isfinite(result.grad.theta).all()


def test_registry_entry() -> None:
    est = get_estimator("tbptt")
    assert not est.exact and not est.unbiased
    assert est.defaults == {"truncation": 16, "stride": 0, "path": "auto"}


@pytest.mark.parametrize(
    ("hyper", "key"),
    [
        ({"truncation": 0}, "truncation"),
        ({"truncation": -3}, "truncation"),
        ({"truncation": 4, "stride": 5}, "stride"),
        ({"stride": 17}, "stride"),
        ({"stride": -1}, "stride"),
        ({"path": "fast"}, "path"),
        ({"truncation": 2.5}, "truncation"),
        ({"window": 3}, "window"),
    ],
)
def test_bad_hyperparameters_raise_naming_the_key(hyper: dict[str, object], key: str) -> None:
    cell = make_cell("tanh", HIDDEN, INPUTS)
    params = init_params(cell, OUTPUTS, torch.Generator().manual_seed(0), DT)
    with pytest.raises(ValueError, match=key):
        start("tbptt", cell, params, "ce", BATCH, **hyper)


def test_closed_form_path_refused_for_other_cells() -> None:
    cell = make_cell("gru", HIDDEN, INPUTS)
    params = init_params(cell, OUTPUTS, torch.Generator().manual_seed(0), DT)
    with pytest.raises(ValueError, match="closed-form"):
        start("tbptt", cell, params, "ce", BATCH, path="closed-form")
