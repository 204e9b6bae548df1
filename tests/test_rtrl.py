"""RTRL: exact against BPTT for every cell, closed form against generic, shapes and errors."""

from __future__ import annotations

import pytest
import torch

from rnnsweep.algorithms.bptt import bptt_gradient
from rnnsweep.algorithms.cell import Cell, make_cell
from rnnsweep.algorithms.estimator import get_estimator, start
from rnnsweep.algorithms.params import Params, init_params

DT = torch.float64
T, B, M = 30, 3, 3


def stream(cell: Cell, loss_kind: str, outputs: int, seed: int, batch: int = B):
    """Different inputs and targets per stream: ``xs [T, B, m]``, ``ys [T, B(, o)]``."""
    gen = torch.Generator().manual_seed(seed)
    xs = torch.randn(T, batch, cell.inputs, generator=gen, dtype=DT)
    if loss_kind == "ce":
        ys = torch.randint(0, outputs, (T, batch), generator=gen)
    else:
        ys = torch.randn(T, batch, outputs, generator=gen, dtype=DT)
    return xs, ys


def distinct(cell: Cell, outputs: int, seed: int, batch: int = B) -> Params:
    """One independently drawn model per stream: ``theta [B, P]``, ``readout [B, o, n + 1]``."""
    gen = torch.Generator().manual_seed(seed)
    models = [init_params(cell, outputs, gen, DT, scale=1.5) for _ in range(batch)]
    return Params(torch.stack([p.theta for p in models]), torch.stack([p.readout for p in models]))


def run(name: str, cell: Cell, params: Params, loss_kind: str, xs, ys, **hyper):
    """Per-step gradients ``[T, ...]`` (flattened) and losses ``[T, B]``."""
    est, state = start(name, cell, params, loss_kind, xs.shape[1], **hyper)
    grads, losses = [], []
    for x, y in zip(xs, ys, strict=True):
        result = est.step(params, state, x, y)
        grads.append(result.grad.flat())
        losses.append(result.loss)
    return torch.stack(grads), torch.stack(losses), state


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


CELLS = [
    ("tanh", {}, 7),
    ("tanh", {"leak": 0.5}, 6),
    ("gru", {}, 6),
    ("lstm", {}, 6),
]


@pytest.mark.parametrize("cell_name,options,hidden", CELLS)
@pytest.mark.parametrize("loss_kind,outputs", [("ce", 3), ("mse", 2)])
@pytest.mark.parametrize("mode", ["shared", "expanded", "distinct"])
def test_summed_gradient_equals_bptt(cell_name, options, hidden, loss_kind, outputs, mode):
    cell = make_cell(cell_name, hidden, M, **options)
    gen = torch.Generator().manual_seed(11)
    params = init_params(cell, outputs, gen, DT, scale=1.5)
    if mode == "expanded":
        params = params.expand(B)
    elif mode == "distinct":
        params = distinct(cell, outputs, 12)
    xs, ys = stream(cell, loss_kind, outputs, 13)
    bptt_losses, truth = bptt_gradient(cell, params, loss_kind, xs, ys)
    paths = ["closed-form", "generic"] if cell_name == "tanh" else ["generic"]
    for path in paths:
        grads, losses, _ = run("rtrl", cell, params, loss_kind, xs, ys, path=path)
        total = grads.sum(0)
        assert total.shape == truth.flat().shape
        assert rel(total, truth.flat()) < 1e-9, (path, rel(total, truth.flat()))
        torch.testing.assert_close(losses, bptt_losses, rtol=1e-12, atol=1e-12)


def test_each_step_is_the_gradient_of_that_steps_loss():
    """Step t's gradient is BPTT of l_t alone: differences of prefix BPTT gradients."""
    cell = make_cell("gru", 5, M)
    params = init_params(cell, 2, torch.Generator().manual_seed(3), DT, scale=1.5)
    xs, ys = stream(cell, "mse", 2, 4)
    grads, _, _ = run("rtrl", cell, params, "mse", xs, ys)
    prefix = [bptt_gradient(cell, params, "mse", xs[:t], ys[:t])[1].flat() for t in (9, 10)]
    assert rel(grads[9], prefix[1] - prefix[0]) < 1e-9


@pytest.mark.parametrize("leak", [1.0, 0.5])
@pytest.mark.parametrize("mode", ["shared", "distinct"])
def test_closed_form_equals_generic(leak, mode):
    cell = make_cell("tanh", 6, M, leak=leak)
    if mode == "shared":
        params = init_params(cell, 3, torch.Generator().manual_seed(5), DT, scale=1.5)
    else:
        params = distinct(cell, 3, 5)
    xs, ys = stream(cell, "ce", 3, 6)
    closed, l_closed, s_closed = run("rtrl", cell, params, "ce", xs, ys, path="closed-form")
    generic, l_generic, s_generic = run("rtrl", cell, params, "ce", xs, ys, path="generic")
    assert s_closed.closed_form and not s_generic.closed_form
    for t in range(T):
        assert rel(closed[t], generic[t]) < 1e-12
    torch.testing.assert_close(l_closed, l_generic, rtol=1e-13, atol=1e-13)
    est = get_estimator("rtrl")
    left_c, right_c = est.influence(s_closed)
    left_g, right_g = est.influence(s_generic)
    assert right_c.shape == right_g.shape == (B, cell.state_size, cell.num_params)
    assert rel(right_c, right_g) < 1e-12
    assert torch.equal(left_c, left_g)


def test_auto_path_picks_the_closed_form_for_tanh_only():
    tanh, gru = make_cell("tanh", 4, 2), make_cell("gru", 4, 2)
    for cell, closed in ((tanh, True), (gru, False)):
        params = init_params(cell, 2, torch.Generator().manual_seed(0), DT)
        _, state = start("rtrl", cell, params, "ce", 2)
        assert state.closed_form is closed


def test_influence_is_identity_times_state_without_copies():
    cell = make_cell("lstm", 4, M)
    params = init_params(cell, 2, torch.Generator().manual_seed(8), DT)
    xs, ys = stream(cell, "ce", 2, 9)
    est = get_estimator("rtrl")
    assert est.exact and est.unbiased
    _, _, state = run("rtrl", cell, params, "ce", xs[:5], ys[:5])
    left, right = est.influence(state)
    size = cell.state_size
    assert left.shape == (B, size, size) and left.stride(0) == 0
    assert torch.equal(left[1], torch.eye(size, dtype=DT))
    assert right.data_ptr() == state.g.data_ptr()
    assert right.shape == (B, size, cell.num_params)
    assert float(right.abs().sum()) > 0.0


def test_step_updates_preallocated_buffers_in_place():
    cell = make_cell("tanh", 5, M)
    params = init_params(cell, 2, torch.Generator().manual_seed(1), DT)
    xs, ys = stream(cell, "ce", 2, 2)
    est, state = start("rtrl", cell, params, "ce", B)
    pointers = (state.g.data_ptr(), state.wg.data_ptr(), state.diag.data_ptr())
    for t in range(4):
        est.step(params, state, xs[t], ys[t])
    assert (state.g.data_ptr(), state.wg.data_ptr(), state.diag.data_ptr()) == pointers
    # the diagonal view still aliases G[:, j, j, :]
    assert torch.equal(state.diag, torch.diagonal(state.g, dim1=1, dim2=2).transpose(1, 2))


def test_float32_tracks_float64():
    cell = make_cell("tanh", 6, M)
    params = init_params(cell, 3, torch.Generator().manual_seed(4), DT)
    xs, ys = stream(cell, "ce", 3, 5)
    g64, _, _ = run("rtrl", cell, params, "ce", xs, ys)
    p32 = Params(params.theta.float(), params.readout.float())
    g32, _, _ = run("rtrl", cell, p32, "ce", xs.float(), ys)
    assert g32.dtype == torch.float32
    assert rel(g32.double().sum(0), g64.sum(0)) < 1e-4


def test_wrong_shapes_and_paths_raise():
    cell = make_cell("tanh", 4, 2)
    params = init_params(cell, 2, torch.Generator().manual_seed(0), DT)
    with pytest.raises(ValueError, match="theta has shape"):
        start("rtrl", cell, Params(params.theta[:-1], params.readout), "ce", 2)
    with pytest.raises(ValueError, match=r"theta has shape \(3, "):
        start("rtrl", cell, params.expand(3), "ce", 2)
    with pytest.raises(ValueError, match="readout has shape"):
        start("rtrl", cell, Params(params.theta, params.readout[:, :-1]), "ce", 2)
    with pytest.raises(ValueError, match="readout has shape"):
        start("rtrl", cell, Params(params.theta.expand(2, -1), params.readout), "ce", 2)
    with pytest.raises(ValueError, match="tanh cell only"):
        gru = make_cell("gru", 4, 2)
        start("rtrl", gru, init_params(gru, 2, None, DT), "ce", 2, path="closed-form")
    with pytest.raises(ValueError, match="path"):
        start("rtrl", cell, params, "ce", 2, path="fast")
    with pytest.raises(ValueError, match="no hyperparameter 'eps'"):
        start("rtrl", cell, params, "ce", 2, eps=1e-3)
