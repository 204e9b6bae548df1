"""SnAp-1: closed form against generic, the sparsity mask, and where it is (and is not) RTRL."""

from __future__ import annotations

import pytest
import torch

from rnnsweep.algorithms.cell import Cell, make_cell
from rnnsweep.algorithms.estimator import get_estimator, start
from rnnsweep.algorithms.params import Params, init_params
from rnnsweep.algorithms.snap1 import structural_mask

DT = torch.float64
T, B, M = 30, 3, 3


def stream(cell: Cell, loss_kind: str, outputs: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    xs = torch.randn(T, B, cell.inputs, generator=gen, dtype=DT)
    if loss_kind == "ce":
        ys = torch.randint(0, outputs, (T, B), generator=gen)
    else:
        ys = torch.randn(T, B, outputs, generator=gen, dtype=DT)
    return xs, ys


def run(name: str, cell: Cell, params: Params, loss_kind: str, xs, ys, **hyper):
    """Per-step gradients ``[T, ...]`` (flattened) and the final state."""
    est, state = start(name, cell, params, loss_kind, xs.shape[1], **hyper)
    grads = [est.step(params, state, x, y).grad.flat() for x, y in zip(xs, ys, strict=True)]
    return torch.stack(grads), state


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def diagonal_recurrence(cell: Cell, params: Params) -> Params:
    """The same model with every gate's ``W`` cut to its diagonal (no cross-unit recurrence)."""
    n = cell.hidden
    blocks = params.theta.reshape(cell.gates, n, n + 1 + cell.inputs).clone()
    blocks[:, :, :n] *= torch.eye(n, dtype=DT)
    return Params(blocks.reshape(-1), params.readout)


def test_registration():
    est = get_estimator("snap1")
    assert not est.exact and not est.unbiased
    assert est.defaults == {"path": "auto"}


@pytest.mark.parametrize("leak", [1.0, 0.5])
@pytest.mark.parametrize("mode", ["shared", "expanded"])
@pytest.mark.parametrize("loss_kind", ["ce", "mse"])
def test_closed_form_equals_generic(leak, mode, loss_kind):
    cell = make_cell("tanh", 6, M, leak=leak)
    params = init_params(cell, 3, torch.Generator().manual_seed(2), DT, scale=1.5)
    if mode == "expanded":
        params = params.expand(B)
    xs, ys = stream(cell, loss_kind, 3, 3)
    closed, s_closed = run("snap1", cell, params, loss_kind, xs, ys, path="closed-form")
    generic, s_generic = run("snap1", cell, params, loss_kind, xs, ys, path="generic")
    assert s_closed.closed_form and not s_generic.closed_form
    assert closed.shape == generic.shape
    for t in range(T):
        assert rel(closed[t], generic[t]) < 1e-12
    est = get_estimator("snap1")
    left_c, right_c = est.influence(s_closed)
    left_g, right_g = est.influence(s_generic)
    assert right_c.shape == right_g.shape == (B, cell.state_size, cell.num_params)
    assert rel(right_c, right_g) < 1e-12
    assert torch.equal(left_c, left_g)


def test_shared_gradient_is_the_mean_of_per_stream_gradients():
    cell = make_cell("tanh", 5, M)
    params = init_params(cell, 2, torch.Generator().manual_seed(4), DT, scale=1.5)
    xs, ys = stream(cell, "ce", 2, 5)
    shared, _ = run("snap1", cell, params, "ce", xs, ys)
    per_stream, _ = run("snap1", cell, params.expand(B), "ce", xs, ys)
    assert shared.shape == (T, params.flat().numel())
    assert per_stream.shape == (T, B, params.flat().numel())
    assert rel(shared, per_stream.mean(1)) < 1e-12


@pytest.mark.parametrize("leak", [1.0, 0.5])
def test_tanh_equals_rtrl_exactly_when_recurrence_is_diagonal(leak):
    cell = make_cell("tanh", 6, M, leak=leak)
    dense = init_params(cell, 3, torch.Generator().manual_seed(6), DT, scale=1.5)
    diag = diagonal_recurrence(cell, dense)
    xs, ys = stream(cell, "ce", 3, 7)
    snap, _ = run("snap1", cell, diag, "ce", xs, ys)
    rtrl, _ = run("rtrl", cell, diag, "ce", xs, ys)
    for t in range(T):
        assert rel(snap[t], rtrl[t]) < 1e-12
    snap, _ = run("snap1", cell, dense, "ce", xs, ys)
    rtrl, _ = run("rtrl", cell, dense, "ce", xs, ys)
    assert rel(snap.sum(0), rtrl.sum(0)) > 1e-2
    # the readout gradient is exact either way; only the recurrent part is biased
    readout = slice(cell.num_params, None)
    assert rel(snap[:, readout], rtrl[:, readout]) < 1e-12


def test_gru_generic_equals_rtrl_when_every_gate_is_diagonal():
    cell = make_cell("gru", 5, M)
    dense = init_params(cell, 2, torch.Generator().manual_seed(8), DT, scale=1.5)
    xs, ys = stream(cell, "mse", 2, 9)
    diag = diagonal_recurrence(cell, dense)
    snap, state = run("snap1", cell, diag, "mse", xs, ys)
    rtrl, _ = run("rtrl", cell, diag, "mse", xs, ys)
    assert not state.closed_form
    for t in range(T):
        assert rel(snap[t], rtrl[t]) < 1e-12
    snap, _ = run("snap1", cell, dense, "mse", xs, ys)
    rtrl, _ = run("rtrl", cell, dense, "mse", xs, ys)
    assert rel(snap.sum(0), rtrl.sum(0)) > 1e-2


def test_tanh_mask_is_block_diagonal():
    cell = make_cell("tanh", 4, 2)
    theta = init_params(cell, 2, torch.Generator().manual_seed(0), DT).theta
    mask = structural_mask(cell, theta).view(4, 4, 7)
    expected = torch.eye(4, dtype=DT).unsqueeze(2).expand(4, 4, 7)
    assert torch.equal(mask, expected)


def test_lstm_mask_counts():
    """``c_i`` is driven by unit i's input, forget and cell rows; ``h_i`` by all four gates."""
    n, m = 3, 2
    k = n + 1 + m
    cell = make_cell("lstm", n, m)
    theta = init_params(cell, 2, torch.Generator().manual_seed(0), DT).theta
    mask = structural_mask(cell, theta).view(2 * n, 4, n, k)
    for i in range(n):
        c_row, h_row = mask[i], mask[n + i]
        assert float(c_row.sum()) == 3 * k and float(c_row[:, i].sum()) == 3 * k
        assert float(c_row[3].sum()) == 0.0  # output gate does not touch c
        assert float(h_row.sum()) == 4 * k and float(h_row[:, i].sum()) == 4 * k


def test_mask_does_not_depend_on_zeros_of_the_given_theta():
    cell = make_cell("gru", 4, 2)
    theta = init_params(cell, 2, torch.Generator().manual_seed(1), DT).theta
    zero_reset_path = theta.clone().view(3, 4, 7)
    zero_reset_path[2, :, :4] = 0.0  # candidate W = 0: reset gate has no effect here
    full = structural_mask(cell, theta)
    assert torch.equal(structural_mask(cell, zero_reset_path.view(-1)), full)
    # the reset gate of unit k drives every unit i through W_c[i, k]
    reset = full.view(4, 3, 4, 7)[:, 1, :, :4]
    assert float(reset.sum()) == 4 * 4 * 4


def test_lstm_runs_and_is_biased():
    cell = make_cell("lstm", 4, M)
    params = init_params(cell, 3, torch.Generator().manual_seed(10), DT, scale=1.5)
    xs, ys = stream(cell, "ce", 3, 11)
    snap, _ = run("snap1", cell, params, "ce", xs, ys)
    rtrl, _ = run("rtrl", cell, params, "ce", xs, ys)
    assert bool(torch.isfinite(snap).all())
    assert 1e-3 < rel(snap.sum(0), rtrl.sum(0)) < 1.0


def test_closed_form_buffer_is_updated_in_place():
    cell = make_cell("tanh", 5, M)
    params = init_params(cell, 2, torch.Generator().manual_seed(1), DT)
    xs, ys = stream(cell, "ce", 2, 2)
    est, state = start("snap1", cell, params, "ce", B)
    assert state.g.shape == (B, 5, 5 + 1 + M)
    pointer = state.g.data_ptr()
    for t in range(4):
        est.step(params, state, xs[t], ys[t])
    assert state.g.data_ptr() == pointer
    assert float(state.g.abs().sum()) > 0.0


def test_wrong_shapes_and_paths_raise():
    cell = make_cell("tanh", 4, 2)
    params = init_params(cell, 2, torch.Generator().manual_seed(0), DT)
    with pytest.raises(ValueError, match="theta has shape"):
        start("snap1", cell, Params(params.theta.view(4, -1), params.readout), "ce", 2)
    with pytest.raises(ValueError, match="readout has shape"):
        start("snap1", cell, Params(params.theta, params.readout.t()), "ce", 2)
    with pytest.raises(ValueError, match="tanh cell only"):
        lstm = make_cell("lstm", 4, 2)
        start("snap1", lstm, init_params(lstm, 2, None, DT), "ce", 2, path="closed-form")
    with pytest.raises(ValueError, match="must be one of"):
        start("snap1", cell, params, "ce", 2, path="sparse")
