"""A lone learner lends each estimator's state a gradient buffer (``grad_out``): the step
writes its shared gradient there, the same values bit for bit as in fresh tensors, and a
checkpoint does not store the loan."""

from __future__ import annotations

import pytest
import torch

from rnnsweep.algorithms import checkpoint
from rnnsweep.algorithms.cell import make_cell
from rnnsweep.algorithms.estimator import start
from rnnsweep.algorithms.learner import Learner, LearnerSpec
from rnnsweep.algorithms.params import Params, init_params

CASES = [  # (estimator, cell, path, writes into the loan)
    ("uoro", "tanh", "closed-form", True),
    ("uoro", "gru", "auto", True),
    ("uoro", "tanh", "generic", True),
    ("nobacktrack", "tanh", "closed-form", True),
    ("nobacktrack", "lstm", "auto", True),
    ("nobacktrack", "tanh", "generic", True),
    ("snap1", "tanh", "auto", True),
    ("snap1", "tanh", "generic", False),  # a fresh gradient: the learner copies it
    ("rflo", "tanh", None, True),  # tanh only, one path
    ("kf-rtrl", "tanh", None, True),
]


@pytest.mark.parametrize("name,cell_name,path,writes", CASES)
@pytest.mark.parametrize("batch", [1, 3])
def test_a_lent_buffer_holds_the_step_gradient_bit_for_bit(name, cell_name, path, writes, batch):
    cell = make_cell(cell_name, 5, 3)
    gen = torch.Generator().manual_seed(1)
    params = init_params(cell, 2, gen, torch.float64)
    xs = torch.randn(6, batch, cell.inputs, generator=gen, dtype=torch.float64)
    ys = torch.randint(0, 2, (6, batch), generator=gen)
    hyper = {} if path is None else {"path": path}
    est, fresh = start(name, cell, params, "ce", batch, seed=4, **hyper)
    _, lent = start(name, cell, params, "ce", batch, seed=4, **hyper)
    buffer = Params(torch.full_like(params.theta, float("nan")), torch.zeros_like(params.readout))
    lent.grad_out = buffer
    one_stream_rflo = name == "rflo" and batch > 1  # rflo writes into the loan at B=1 only
    for x, y in zip(xs, ys, strict=True):
        a, b = est.step(params, fresh, x, y), est.step(params, lent, x, y)
        assert (b.grad is buffer) == (writes and not one_stream_rflo)
        assert torch.equal(a.loss, b.loss)
        assert torch.equal(a.grad.theta, b.grad.theta.view(a.grad.theta.shape))
        assert torch.equal(a.grad.readout, b.grad.readout)
    # lent, not stored: a checkpoint has no such field, and restores into a state without one
    tree = checkpoint.snapshot(lent)
    assert "grad_out" not in tree["fields"]
    _, other = start(name, cell, params, "ce", batch, seed=9, **hyper)
    checkpoint.restore(other, tree)
    assert other.grad_out is None
    assert checkpoint.snapshot(other)["fields"].keys() == tree["fields"].keys()


@pytest.mark.parametrize("name", ["uoro", "snap1", "rflo", "kf-rtrl", "rtrl", "tbptt"])
def test_a_lone_learner_updates_from_its_ring_like_a_pack(name):
    """Whether the estimator writes into the ring or the learner copies its gradient there,
    the lone learner's gradient norms and parameters are a pack member's (1e-12)."""
    from rnnsweep.algorithms.population import Population

    settings = {"log_every": 50, "lr": 3e-3}
    spec = LearnerSpec("add", name, "tanh", 8, seed=2, dtype="float64", settings=settings)
    other = LearnerSpec("add", name, "tanh", 8, seed=3, dtype="float64", settings=settings)
    learner = Learner(spec)
    alone: list[dict] = []
    learner.run(150, on_report=alone.append)
    assert learner.population._lone
    pop = Population([spec, other])
    packed: list[dict] = []
    pop.run(150, on_report=lambda i, r: packed.append(r) if i == 0 else None)
    assert [r["step"] for r in alone] == [r["step"] for r in packed]
    for a, b in zip(alone, packed, strict=True):
        assert abs(a["grad_norm"] - b["grad_norm"]) <= 1e-12 * max(1.0, a["grad_norm"])
        assert abs(a["loss"] - b["loss"]) <= 1e-12 * max(1.0, a["loss"])
    for p, q in zip(learner.params, pop.params, strict=True):
        assert float((p - q[0]).abs().max()) <= 1e-12


@pytest.mark.parametrize("name", ["uoro", "nobacktrack", "snap1", "rflo", "kf-rtrl"])
def test_per_stream_parameters_ignore_a_loan(name):
    """A loan holds a shared gradient: with per-stream parameters (a pack's layout) the step
    returns its own per-stream tensors, the same as without a loan, and leaves the buffer."""
    cell = make_cell("tanh", 5, 3)
    gen = torch.Generator().manual_seed(2)
    params = init_params(cell, 2, gen, torch.float64).expand(3)
    xs = torch.randn(4, 3, cell.inputs, generator=gen, dtype=torch.float64)
    ys = torch.randint(0, 2, (4, 3), generator=gen)
    est, fresh = start(name, cell, params, "ce", 3, seed=4)
    _, lent = start(name, cell, params, "ce", 3, seed=4)
    shared = init_params(cell, 2, gen, torch.float64)
    buffer = Params(torch.zeros_like(shared.theta), torch.zeros_like(shared.readout))
    lent.grad_out = buffer
    for x, y in zip(xs, ys, strict=True):
        a, b = est.step(params, fresh, x, y), est.step(params, lent, x, y)
        assert b.grad is not buffer and b.grad.theta.shape == params.theta.shape
        assert torch.equal(a.grad.theta, b.grad.theta)
        assert torch.equal(a.grad.readout, b.grad.readout)
    assert not buffer.theta.any() and not buffer.readout.any()


@pytest.mark.parametrize("batch,hidden,slots", [(1, 8, 64), (3, 8, 64), (64, 128, 1)])
def test_the_loan_lasts_one_step_and_the_ring_fits_its_budget(batch, hidden, slots):
    """Between steps no buffer is lent (a caller stepping the state aside cannot write into
    the ring); the ring holds at most GRAD_RING_BYTES / streams, RING rows, at least one."""
    learner = Learner(
        LearnerSpec("add", "uoro", "tanh", hidden, settings={"log_every": 10**9, "batch": batch})
    )
    pop = learner.population
    for _ in range(3):
        learner.step()
        assert pop.est_state.grad_out is None
    assert pop._lends_grad and pop._grad_ring.shape[0] == slots
