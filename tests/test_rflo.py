"""RFLO: one-step truncated BPTT at leak 1, the eligibility recursion, feedback, errors."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from rnnsweep.algorithms import readout as readout_
from rnnsweep.algorithms import rflo
from rnnsweep.algorithms.bptt import bptt_gradient
from rnnsweep.algorithms.cell import Cell, column, make_cell
from rnnsweep.algorithms.estimator import get_estimator, start
from rnnsweep.algorithms.loss import loss as loss_fn
from rnnsweep.algorithms.params import Params, init_params

F64 = torch.float64


def problem(n: int, m: int, outputs: int, steps: int, batch: int, leak: float, kind: str):
    cell = make_cell("tanh", n, m, leak=leak)
    g = torch.Generator().manual_seed(4)
    params = init_params(cell, outputs, g, F64, scale=1.5)
    params.readout[:, -1] = torch.randn(outputs, generator=g, dtype=F64)
    xs = torch.randn(steps, batch, m, generator=g, dtype=F64)
    if kind == "ce":
        ys = torch.randint(0, outputs, (steps, batch), generator=g)
    else:
        ys = torch.randn(steps, batch, outputs, generator=g, dtype=F64)
    return cell, params, xs, ys


def per_stream(params: Params, batch: int) -> Params:
    """Distinct per-stream parameters (not views of one model)."""
    noise = torch.Generator().manual_seed(9)
    size = params.theta.shape[0]
    theta = params.theta + 0.1 * torch.randn(batch, size, generator=noise, dtype=F64)
    readout = params.readout + 0.1 * torch.randn(
        (batch,) + tuple(params.readout.shape), generator=noise, dtype=F64
    )
    return Params(theta, readout)


def truncated_one(cell: Cell, params: Params, kind: str, h_prev: Tensor, x: Tensor, y: Tensor):
    """``(h_t, dl_t/dTheta, dl_t/dR)`` by autograd with ``h_{t-1}`` detached."""
    with torch.enable_grad():
        theta = params.theta.detach().clone().requires_grad_(True)
        readout = params.readout.detach().clone().requires_grad_(True)
        h = cell.step(theta, h_prev.detach(), x)
        out = readout_.output(readout, torch.cat([h, torch.ones_like(h[:, :1])], 1))
        losses = loss_fn(kind, out, y)
        total = losses.sum() if params.per_stream else losses.mean()
        g_theta, g_readout = torch.autograd.grad(total, (theta, readout))
    return h.detach(), g_theta, g_readout


@pytest.mark.parametrize("kind", ["ce", "mse"])
@pytest.mark.parametrize("stream_params", [False, True])
def test_leak_one_readout_feedback_is_one_step_truncated_bptt(
    kind: str, stream_params: bool
) -> None:
    batch = 4
    cell, params, xs, ys = problem(6, 3, 3, 12, batch, 1.0, kind)
    if stream_params:
        params = per_stream(params, batch)
    est, state = start("rflo", cell, params, kind, batch, feedback="readout")
    h = torch.zeros(batch, 6, dtype=F64)
    for x, y in zip(xs, ys, strict=True):
        result = est.step(params, state, x, y)
        h, g_theta, g_readout = truncated_one(cell, params, kind, h, x, y)
        torch.testing.assert_close(state.traj.h, h, rtol=0, atol=1e-14)
        assert result.grad.theta.shape == params.theta.shape
        torch.testing.assert_close(result.grad.theta, g_theta, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(result.grad.readout, g_readout, rtol=1e-12, atol=1e-12)


def naive_rflo(
    cell: Cell, params: Params, kind: str, xs: Tensor, ys: Tensor, feedback: Tensor | None
) -> list[Tensor]:
    """Per-step per-stream theta gradients, element by element: ``E[j, l]`` and ``fb_j``."""
    n, k, leak = cell.hidden, cell.hidden + 1 + cell.inputs, cell.leak
    batch = xs.shape[1]
    thetas = params.expand(batch).theta.view(batch, n, k)
    readouts = params.expand(batch).readout
    h = torch.zeros(batch, n, dtype=F64)
    e = torch.zeros(batch, n, k, dtype=F64)
    grads = []
    for x, y in zip(xs, ys, strict=True):
        g = torch.zeros(batch, n, k, dtype=F64)
        h_new = torch.zeros_like(h)
        for b in range(batch):
            z = column(h[b], x[b])
            for j in range(n):
                act = torch.tanh(torch.dot(thetas[b, j], z))
                h_new[b, j] = (1 - leak) * h[b, j] + leak * act
                d_j = leak * (1 - act**2)
                for l in range(k):
                    e[b, j, l] = (1 - leak) * e[b, j, l] + d_j * z[l]
        h = h_new
        for b in range(batch):
            with torch.enable_grad():
                out = (readouts[b] @ torch.cat([h[b], torch.ones(1, dtype=F64)])).requires_grad_()
                value = loss_fn(kind, out.unsqueeze(0), y[b : b + 1])
                (delta,) = torch.autograd.grad(value.sum(), out)
            fb = readouts[b, :, :n].t() @ delta if feedback is None else feedback @ delta
            for j in range(n):
                g[b, j] = fb[j] * e[b, j]
        grads.append(g)
    return grads


@pytest.mark.parametrize("kind", ["ce", "mse"])
@pytest.mark.parametrize("feedback", ["readout", "random"])
@pytest.mark.parametrize("stream_params", [False, True])
def test_leaky_traces_match_the_naive_recursion(
    kind: str, feedback: str, stream_params: bool
) -> None:
    batch = 3
    cell, params, xs, ys = problem(4, 2, 3, 7, batch, 0.35, kind)
    if stream_params:
        params = per_stream(params, batch)
    est, state = start("rflo", cell, params, kind, batch, feedback=feedback, feedback_seed=5)
    matrix = state.feedback
    assert (matrix is None) == (feedback == "readout")
    expected = naive_rflo(cell, params, kind, xs, ys, matrix)
    for x, y, g in zip(xs, ys, expected, strict=True):
        result = est.step(params, state, x, y)
        want = g.reshape(batch, -1) if stream_params else g.reshape(batch, -1).mean(0)
        torch.testing.assert_close(result.grad.theta, want, rtol=1e-12, atol=1e-13)


def test_readout_gradient_is_exact() -> None:
    cell, params, xs, ys = problem(5, 2, 3, 10, 4, 0.5, "ce")
    est, state = start("rflo", cell, params, "ce", 4)
    total = torch.zeros_like(params.readout)
    for x, y in zip(xs, ys, strict=True):
        total += est.step(params, state, x, y).grad.readout
    _, truth = bptt_gradient(cell, params, "ce", xs, ys)
    torch.testing.assert_close(total, truth.readout, rtol=1e-12, atol=1e-13)


def test_random_feedback_is_fixed_by_its_seed() -> None:
    cell = make_cell("tanh", 7, 2)
    params = init_params(cell, 3, torch.Generator().manual_seed(0), F64)
    _, a = start("rflo", cell, params, "ce", 2, feedback_seed=3)
    _, b = start("rflo", cell, params.expand(5), "ce", 5, seed=8, feedback_seed=3)
    _, c = start("rflo", cell, params, "ce", 2, feedback_seed=4)
    p32 = Params(params.theta.float(), params.readout.float())
    _, d = start("rflo", cell, p32, "ce", 2, feedback_seed=3)
    assert a.feedback.shape == (7, 3) and a.feedback.dtype == F64
    assert torch.equal(a.feedback, b.feedback)
    assert not torch.allclose(a.feedback, c.feedback)
    assert d.feedback.dtype == torch.float32
    torch.testing.assert_close(d.feedback, a.feedback.float(), rtol=0, atol=0)
    assert not torch.allclose(a.feedback, params.readout[:, :7].t())
    # N(0, 1/o): the scale over many draws
    big = rflo.random_feedback(200, 50, 0, F64, "cpu")
    assert abs(float(big.var()) * 50 - 1.0) < 0.05


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtypes_and_devices(device: str, dtype: torch.dtype) -> None:
    cell = make_cell("tanh", 5, 3, leak=0.5)
    params = init_params(cell, 4, torch.Generator().manual_seed(0), dtype, device)
    est, state = start("rflo", cell, params.expand(3), "ce", 3)
    for _ in range(20):
        x = torch.randn(3, 3, dtype=dtype, device=device)
        y = torch.zeros(3, dtype=torch.int64, device=device)
        result = est.step(params.expand(3), state, x, y)
    assert result.grad.theta.dtype == dtype and result.grad.theta.device.type == device
    assert result.grad.theta.shape == (3, cell.num_params)
    assert result.grad.readout.shape == (3, 4, 6)
    assert torch.isfinite(result.grad.flat()).all()


def test_registry_entry() -> None:
    est = get_estimator("rflo")
    assert not est.unbiased and not est.exact and est.cells == ("tanh",)
    assert est.defaults == {"feedback": "random", "feedback_seed": 0}


def test_errors_name_the_cell_and_the_key() -> None:
    gru = make_cell("gru", 4, 2)
    with pytest.raises(ValueError, match="gru"):
        start("rflo", gru, init_params(gru, 2), "ce", 2)
    tanh = make_cell("tanh", 4, 2)
    params = init_params(tanh, 2)
    with pytest.raises(ValueError, match="feedback"):
        start("rflo", tanh, params, "ce", 2, feedback="x")
    with pytest.raises(ValueError, match="feedback_seed"):
        start("rflo", tanh, params, "ce", 2, feedback_seed=-1)
    with pytest.raises(ValueError, match="feedback_seed"):
        start("rflo", tanh, params, "ce", 2, feedback_seed=1.5)
    with pytest.raises(ValueError, match="eps"):
        start("rflo", tanh, params, "ce", 2, eps=1e-7)
