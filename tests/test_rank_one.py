"""UORO and NoBackTrack: unbiasedness for frozen parameters, closed form == torch.func path."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from rnnsweep.algorithms.bptt import bptt_gradient
from rnnsweep.algorithms.cell import make_cell
from rnnsweep.algorithms.estimator import check_step, get_estimator, start
from rnnsweep.algorithms.params import Params, init_params

F64 = torch.float64


def _stream(cell, steps, batch, seed=1, outputs=2):
    gen = torch.Generator().manual_seed(seed)
    params = init_params(cell, outputs, gen, F64)
    xs = torch.randn(steps, batch, cell.inputs, generator=gen, dtype=F64)
    ys = torch.randint(0, outputs, (steps, batch), generator=gen)
    return params, xs, ys


def _summed(name, cell, params, xs, ys, seed=0, **hyper):
    batch = xs.shape[1]
    est, state = start(name, cell, params, "ce", batch, seed=seed, **hyper)
    total = None
    for x, y in zip(xs, ys, strict=True):
        grad = est.step(params, state, x, y).grad.flat()
        total = grad if total is None else total + grad
    return total


@pytest.mark.parametrize(
    "name,cell_name",
    [
        ("uoro", "tanh"),
        ("nobacktrack", "tanh"),
        # The GRU runs the generic torch.func path over 4096 streams: the same claim, slower.
        pytest.param("uoro", "gru", marks=pytest.mark.slow),
        pytest.param("nobacktrack", "gru", marks=pytest.mark.slow),
    ],
)
def test_unbiased_for_frozen_parameters(name, cell_name):
    """T=30, n=16, K=4096 streams with identical inputs and independent signs."""
    cell = make_cell(cell_name, 16, 3)
    params, xs, ys = _stream(cell, 30, 1)
    _, truth = bptt_gradient(cell, params, "ce", xs, ys)
    truth = truth.flat()[0] if truth.flat().dim() == 2 else truth.flat()
    k = 4096
    total = _summed(name, cell, params.expand(k), xs.expand(-1, k, -1), ys.expand(-1, k))
    norm = truth.norm()
    rel_error = (total.mean(0) - truth).norm() / norm
    std_error = (total.var(0).sum() / k).sqrt() / norm
    assert std_error < 0.5, "the check must be sharp enough to see a bias"
    assert rel_error <= 4 * std_error, (float(rel_error), float(std_error))


@pytest.mark.parametrize("name", ["uoro", "nobacktrack"])
@pytest.mark.parametrize("leak", [1.0, 0.5])
@pytest.mark.parametrize("shared", [True, False])
def test_closed_form_equals_generic(name, leak, shared):
    cell = make_cell("tanh", 7, 3, leak=leak)
    params, xs, ys = _stream(cell, 12, 5)
    if not shared:
        gen = torch.Generator().manual_seed(7)
        params = Params(
            params.theta + 0.1 * torch.randn(5, cell.num_params, generator=gen, dtype=F64),
            params.readout.expand(5, -1, -1).clone(),
        )
    results = {}
    for path in ("closed-form", "generic"):
        est, state = start(name, cell, params, "ce", 5, seed=3, path=path)
        results[path] = [est.step(params, state, x, y) for x, y in zip(xs, ys, strict=True)]
    for a, b in zip(results["closed-form"], results["generic"], strict=True):
        torch.testing.assert_close(a.loss, b.loss, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(a.grad.theta, b.grad.theta, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(a.grad.readout, b.grad.readout, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["uoro", "nobacktrack"])
def test_shared_gradient_is_mean_of_per_stream(name):
    cell = make_cell("tanh", 6, 3)
    params, xs, ys = _stream(cell, 10, 4)
    shared = _summed(name, cell, params, xs, ys, seed=5)
    per_stream = _summed(name, cell, params.expand(4), xs, ys, seed=5)
    torch.testing.assert_close(shared, per_stream.mean(0), rtol=1e-12, atol=1e-14)


def test_stream_noise_does_not_depend_on_batch_neighbours():
    """Stream b's estimate is the same alone or batched (counter-based signs)."""
    from rnnsweep.algorithms.signs import stream_seeds

    cell = make_cell("tanh", 6, 3)
    params, xs, ys = _stream(cell, 10, 3)
    seeds = stream_seeds(11, 3)
    est, batched = start("uoro", cell, params.expand(3), "ce", 3, seeds=seeds)
    _, alone = start("uoro", cell, params.expand(1), "ce", 1, seeds=seeds[1:2])
    for x, y in zip(xs, ys, strict=True):
        a = est.step(params.expand(3), batched, x, y).grad.theta[1]
        b = est.step(params.expand(1), alone, x[1:2], y[1:2]).grad.theta[0]
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)


def test_rho_guard_keeps_saturated_units_finite():
    """Saturated units (d = 0) and a zero influence must not produce NaN."""
    cell = make_cell("tanh", 5, 3)
    params, xs, ys = _stream(cell, 20, 2)
    params = Params(params.theta * 1e4, params.readout)
    for name in ("uoro", "nobacktrack"):
        est, state = start(name, cell, params, "ce", 2)
        for x, y in zip(xs, ys, strict=True):
            grad = est.step(params, state, x, y).grad
            assert torch.isfinite(grad.theta).all() and torch.isfinite(grad.readout).all()


def test_float32_runs_and_tracks_float64():
    cell = make_cell("tanh", 8, 3)
    params, xs, ys = _stream(cell, 15, 2)
    g64 = _summed("uoro", cell, params, xs, ys)
    p32 = Params(params.theta.float(), params.readout.float())
    g32 = _summed("uoro", cell, p32, xs.float(), ys)
    assert g32.dtype == torch.float32
    assert (g32.double() - g64).norm() / g64.norm() < 1e-4


def test_bad_names_and_shapes_are_named():
    cell = make_cell("tanh", 4, 3)
    params, xs, ys = _stream(cell, 2, 2)
    with pytest.raises(ValueError, match="unknown estimator 'uro'"):
        get_estimator("uro")
    with pytest.raises(ValueError, match="unknown cell 'rnn'"):
        make_cell("rnn", 4, 3)
    with pytest.raises(ValueError, match="no hyperparameter 'rho'"):
        start("uoro", cell, params, "ce", 2, rho=1.0)
    with pytest.raises(ValueError, match="eps"):
        start("uoro", cell, params, "ce", 2, eps=-1.0)
    other = dataclasses.replace(make_cell("tanh", 4, 3), name="mine")  # no closed form known
    with pytest.raises(ValueError, match="path=closed-form exists for the tanh, gru, lstm cells"):
        start("uoro", other, init_params(other, 2), "ce", 1, path="closed-form")
    with pytest.raises(ValueError, match="theta has shape"):
        start("uoro", cell, Params(params.theta[:-1], params.readout), "ce", 2)
    with pytest.raises(ValueError, match="readout has shape"):
        start("uoro", cell, Params(params.theta, params.readout[:, :-1]), "ce", 2)
    with pytest.raises(ValueError, match="unknown loss kind 'l2'"):
        start("uoro", cell, params, "l2", 2)
    with pytest.raises(ValueError, match="theta contains non-finite"):
        start("uoro", cell, Params(params.theta * float("nan"), params.readout), "ce", 2)


def test_step_inputs_are_checked_with_names():
    cell = make_cell("tanh", 4, 3)
    params, xs, ys = _stream(cell, 2, 2)
    check_step(cell, params, "ce", 2, xs[0], ys[0])
    with pytest.raises(ValueError, match=r"input x has shape \(2, 2\), expected \[2, 3\]"):
        check_step(cell, params, "ce", 2, xs[0][:, :2], ys[0])
    bad = xs[0].clone()
    bad[0, 0] = float("inf")
    with pytest.raises(ValueError, match="input x contains non-finite"):
        check_step(cell, params, "ce", 2, bad, ys[0])
    with pytest.raises(ValueError, match="ce targets must lie in"):
        check_step(cell, params, "ce", 2, xs[0], torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="input x is torch.float32"):
        check_step(cell, params, "ce", 2, xs[0].float(), ys[0])


@pytest.mark.parametrize("name", ["uoro", "nobacktrack"])
@pytest.mark.parametrize("cell_name", ["tanh", "gru"])
def test_influence_decay_scales_the_carried_influence(name, cell_name):
    """``influence_decay`` gamma: a step carries gamma G (G ~ v w^T), nothing else changes, so it
    equals the plain step from the same state with v scaled by gamma; 1 keeps the plain step."""
    cell = make_cell(cell_name, 5, 3)
    params, xs, ys = _stream(cell, 12, 2)
    plain, a = start(name, cell, params, "ce", 2, seed=4)
    decayed, b = start(name, cell, params, "ce", 2, seed=4, influence_decay=0.5)
    assert start(name, cell, params, "ce", 2, influence_decay=1.0)[0] is get_estimator(name)
    for x, y in zip(xs[:6], ys[:6], strict=True):  # the same non-zero influence in both
        plain.step(params, a, x, y)
        plain.step(params, b, x, y)
    assert float(a.v.abs().max()) > 0.0
    for x, y in zip(xs[6:], ys[6:], strict=True):
        a.v.mul_(0.5)
        want, got = plain.step(params, a, x, y), decayed.step(params, b, x, y)
        assert torch.equal(want.grad.flat(), got.grad.flat())
        assert torch.equal(a.v, b.v) and torch.equal(a.w, b.w)
    # and the decay is real: the decayed gradient differs from the plain one
    _, c = start(name, cell, params, "ce", 2, seed=4)
    for x, y in zip(xs, ys, strict=True):
        last = plain.step(params, c, x, y)
    assert float((last.grad.flat() - got.grad.flat()).abs().max()) > 1e-6

