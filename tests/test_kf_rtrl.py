"""KF-RTRL: unbiasedness (statistical), exact mean over every sign pattern, shapes, errors."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from rnnsweep.algorithms import kf_rtrl
from rnnsweep.algorithms.bptt import bptt_gradient
from rnnsweep.algorithms.cell import Cell, make_cell
from rnnsweep.algorithms.estimator import get_estimator, start
from rnnsweep.algorithms.params import Params, init_params

F64 = torch.float64


class FixedSigns:
    """Stands in for a ``SignStream``: returns the given ``[T, B, 2]`` signs step by step."""

    def __init__(self, signs: Tensor) -> None:
        self.signs = signs
        self.step = 0

    def next(self) -> Tensor:
        out = self.signs[self.step]
        self.step += 1
        return out


def all_sign_patterns(steps: int, dtype: torch.dtype = F64) -> Tensor:
    """Every pattern of ``2 steps`` signs: ``[steps, 4**steps, 2]``."""
    idx = torch.arange(4**steps)
    bits = (idx[:, None] >> torch.arange(2 * steps)) & 1
    return (1 - 2 * bits).to(dtype).view(-1, steps, 2).transpose(0, 1).contiguous()


def problem(n: int, m: int, outputs: int, steps: int, leak: float = 1.0, seed: int = 1):
    cell = make_cell("tanh", n, m, leak=leak)
    g = torch.Generator().manual_seed(seed)
    params = init_params(cell, outputs, g, F64, scale=1.5)
    params.readout[:, -1] = torch.randn(outputs, generator=g, dtype=F64)
    xs = torch.randn(steps, 1, m, generator=g, dtype=F64)
    ys = torch.randint(0, outputs, (steps, 1), generator=g)
    return cell, params, xs, ys


def run(cell: Cell, params: Params, xs: Tensor, ys: Tensor, batch: int, signs=None, **hyper):
    """Summed per-step gradients ``[B, P + o (n + 1)]`` (or ``[...]`` for shared params)."""
    est, state = start("kf-rtrl", cell, params, "ce", batch, seed=3, **hyper)
    if signs is not None:
        state.signs = FixedSigns(signs)
    total = None
    for x, y in zip(xs, ys, strict=True):
        flat = est.step(params, state, x.expand(batch, -1), y.expand(batch)).grad.flat()
        total = flat if total is None else total + flat
    return total, state


def unrolled_h(cell: Cell, theta: Tensor, xs: Tensor) -> Tensor:
    h = torch.zeros(1, cell.hidden, dtype=theta.dtype)
    for x in xs:
        h = cell.step(theta, h, x)
    return h[0]


@pytest.mark.parametrize("n, leak", [(8, 1.0), (16, 0.6)])
def test_unbiased_against_bptt(n: int, leak: float) -> None:
    steps, streams = 30, 4096
    cell, params, xs, ys = problem(n, 3, 2, steps, leak)
    _, truth = bptt_gradient(cell, params, "ce", xs, ys)
    truth = truth.flat()
    total, _ = run(cell, params.expand(streams), xs, ys, streams)
    mean = total.mean(0)
    norm = truth.norm()
    err = (mean - truth).norm() / norm
    se = (total.var(0).sum() / streams).sqrt() / norm
    assert err <= 4 * se, (float(err), float(se))
    assert se < 0.5  # the check has power: the estimate's spread is not enormous


@pytest.mark.parametrize("leak", [1.0, 0.7])
def test_mean_over_every_sign_pattern_is_exact(leak: float) -> None:
    """Averaging over all 4^T sign patterns is the exact expectation: RTRL's gradient and G."""
    steps = 4
    cell, params, xs, ys = problem(3, 2, 3, steps, leak, seed=5)
    signs = all_sign_patterns(steps)
    batch = signs.shape[1]
    est, state = start("kf-rtrl", cell, params.expand(batch), "ce", batch)
    state.signs = FixedSigns(signs)
    total = torch.zeros(params.flat().shape, dtype=F64)
    for t in range(steps):
        result = est.step(params.expand(batch), state, xs[t].expand(batch, -1), ys[t].expand(batch))
        grads = result.grad.flat()
        total += grads.mean(0)
        _, truth = bptt_gradient(cell, params, "ce", xs[: t + 1], ys[: t + 1])
        torch.testing.assert_close(total, truth.flat(), rtol=1e-10, atol=1e-12)
        g_true = torch.autograd.functional.jacobian(
            lambda th, t=t: unrolled_h(cell, th, xs[: t + 1]), params.theta
        )
        left, right = est.influence(state)
        torch.testing.assert_close(
            torch.bmm(left, right).mean(0), g_true, rtol=1e-10, atol=1e-12
        )
        if t > 0:  # single patterns are not exact: the cross terms are real
            assert (grads - grads.mean(0)).norm() > 1e-3 * grads.mean(0).norm()


def test_first_step_is_exact_for_every_stream() -> None:
    """From ``A = 0, u = 0`` the first step's product is ``c2^2 diag(d) (x) z``: no noise."""
    cell, params, xs, ys = problem(5, 3, 2, 1, leak=0.8)
    total, _ = run(cell, params.expand(64), xs, ys, 64)
    _, truth = bptt_gradient(cell, params, "ce", xs, ys)
    torch.testing.assert_close(total, truth.flat().expand(64, -1), rtol=1e-12, atol=1e-14)


def test_influence_and_gradient_agree() -> None:
    cell, params, xs, ys = problem(4, 2, 3, 6)
    est, state = start("kf-rtrl", cell, params, "ce", 5)
    for x, y in zip(xs, ys, strict=True):
        xb, yb = x.expand(5, -1), y.expand(5)
        result = est.step(params, state, xb, yb)
    left, right = est.influence(state)
    assert left.shape == (5, 4, 4) and right.shape == (5, 4, cell.num_params)
    kron = torch.einsum("bij,bl->bijl", state.a, state.u).reshape(5, 4, -1)
    torch.testing.assert_close(torch.bmm(left, right), kron, rtol=0, atol=1e-15)
    # gradient = mean over streams of (dl/dh)^T (A (x) u); dl/dh from the readout
    h = state.traj.h
    out = torch.mm(torch.cat([h, torch.ones_like(h[:, :1])], 1), params.readout.t())
    delta = torch.softmax(out, 1) - torch.nn.functional.one_hot(yb, 3).to(F64)
    dh = delta @ params.readout[:, :4]
    expect = torch.einsum("bi,bip->p", dh, kron) / 5
    torch.testing.assert_close(result.grad.theta, expect, rtol=1e-12, atol=1e-14)


def test_shared_params_give_the_mean_of_per_stream_gradients() -> None:
    cell, params, xs, ys = problem(6, 2, 2, 8, leak=0.9)
    batch = 7
    noise = torch.randn(8, batch, 2, dtype=F64, generator=torch.Generator().manual_seed(3))
    xs = xs.expand(-1, batch, -1) + noise  # its own generator: not the test order's draws
    ys = ys.expand(-1, batch).clone()
    shared = start("kf-rtrl", cell, params, "ce", batch, seed=11)
    single = start("kf-rtrl", cell, params.expand(batch), "ce", batch, seed=11)
    for x, y in zip(xs, ys, strict=True):
        a = shared[0].step(params, shared[1], x, y)
        b = single[0].step(params.expand(batch), single[1], x, y)
        assert a.grad.theta.shape == params.theta.shape
        assert b.grad.theta.shape == (batch, cell.num_params)
        torch.testing.assert_close(a.loss, b.loss, rtol=1e-14, atol=0)
        torch.testing.assert_close(a.grad.theta, b.grad.theta.mean(0), rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(
            a.grad.readout, b.grad.readout.mean(0), rtol=1e-12, atol=1e-14
        )


def test_streams_do_not_depend_on_their_neighbours() -> None:
    cell, params, xs, ys = problem(4, 2, 2, 5)
    est, big = start("kf-rtrl", cell, params.expand(6), "ce", 6, seed=2)
    seeds = big.signs.seeds
    _, small = start("kf-rtrl", cell, params.expand(2), "ce", 2, seeds=seeds[3:5])
    for x, y in zip(xs, ys, strict=True):
        g_big = est.step(params.expand(6), big, x.expand(6, -1), y.expand(6)).grad.theta
        g_small = est.step(params.expand(2), small, x.expand(2, -1), y.expand(2)).grad.theta
        torch.testing.assert_close(g_small, g_big[3:5], rtol=1e-14, atol=0)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtypes_and_devices(device: str, dtype: torch.dtype) -> None:
    cell = make_cell("tanh", 5, 3)
    params = init_params(cell, 4, torch.Generator().manual_seed(0), dtype, device)
    est, state = start("kf-rtrl", cell, params, "mse", 3)
    for _ in range(300):  # past the sign stream's 256-step chunk
        x = torch.randn(3, 3, dtype=dtype, device=device)
        result = est.step(params, state, x, torch.zeros(3, 4, dtype=dtype, device=device))
    assert result.grad.theta.dtype == dtype and result.grad.theta.device.type == device
    assert result.grad.theta.shape == params.theta.shape
    assert torch.isfinite(result.grad.flat()).all()
    assert state.signs.step == 300


def test_registry_entry() -> None:
    est = get_estimator("kf-rtrl")
    assert est.unbiased and not est.exact and est.cells == ("tanh",)
    assert est.defaults == {"eps": 1e-7}
    assert est is kf_rtrl.KF_RTRL


def test_errors_name_the_cell_and_the_key() -> None:
    gru = make_cell("gru", 4, 2)
    params = init_params(gru, 2)
    with pytest.raises(ValueError, match="gru"):
        start("kf-rtrl", gru, params, "ce", 2)
    tanh = make_cell("tanh", 4, 2)
    params = init_params(tanh, 2)
    for bad in (-1, 0.0):
        with pytest.raises(ValueError, match="eps"):
            start("kf-rtrl", tanh, params, "ce", 2, eps=bad)
    with pytest.raises(ValueError, match="rho"):
        start("kf-rtrl", tanh, params, "ce", 2, rho=1.0)
