"""The GRU's and the LSTM's closed-form derivatives (``gru_rows``, ``lstm_rows``) against
``torch.func``, and NoBackTrack's and UORO's closed-form steps on them against their generic
paths: the same numbers, the same learning trajectory."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from rnnsweep.algorithms.cell import make_cell
from rnnsweep.algorithms.estimator import start
from rnnsweep.algorithms.forward_mode import param_rows, state_jvp
from rnnsweep.algorithms.gru_rows import gru_forward, gru_jvp, gru_pull, gru_row_norms
from rnnsweep.algorithms.learner import Learner, LearnerSpec
from rnnsweep.algorithms.lstm_rows import lstm_forward, lstm_jvp, lstm_pull, lstm_row_norms
from rnnsweep.algorithms.params import Params, init_params

F64 = torch.float64
N, M = 6, 3
CELLS = ["gru", "lstm"]
# cell -> (forward, jvp, row norms, pull)
CLOSED = {
    "gru": (gru_forward, gru_jvp, gru_row_norms, gru_pull),
    "lstm": (lstm_forward, lstm_jvp, lstm_row_norms, lstm_pull),
}


def _point(cell_name: str, batch: int, shared: bool, seed=0):
    """A random cell, state, input, tangent and cotangent (weights of order 1: no saturation)."""
    cell = make_cell(cell_name, N, M)
    gen = torch.Generator().manual_seed(seed)
    shape = (cell.num_params,) if shared else (batch, cell.num_params)
    theta = torch.randn(shape, generator=gen, dtype=F64) * 0.7
    s, v, nu = (torch.randn(batch, cell.state_size, generator=gen, dtype=F64) for _ in range(3))
    x = torch.randn(batch, M, generator=gen, dtype=F64)
    return cell, theta, s, x, v, nu


@pytest.mark.parametrize("cell_name", CELLS)
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per-stream"])
def test_closed_form_rows_pull_and_jvp_equal_torch_func(cell_name, batch, shared):
    cell, theta, s, x, v, nu = _point(cell_name, batch, shared)
    forward, jvp, row_norms, pull_of = CLOSED[cell_name]
    norms, pull = param_rows(cell, theta, s, x)
    pulled = pull(nu)  # once: the generic pull frees its graph
    s_next, jv = state_jvp(cell, theta, s, x, v)
    step = forward(cell, theta, s, x)
    assert norms.shape == (batch, cell.state_size) and pulled.shape == (batch, cell.num_params)
    assert float(norms.min()) > 1e-3  # every unit active: the norms are not trivially zero
    for closed, generic in (
        (row_norms(step), norms),
        (pull_of(step, nu), pulled),
        (step.s_next, s_next),
        (jvp(step, v), jv),
    ):
        assert closed.shape == generic.shape
        torch.testing.assert_close(closed, generic, rtol=1e-10, atol=1e-10)


def test_reset_block_couples_every_unit():
    """dF_k/dTheta_r has a nonzero row j for every j: the pull of e_k reaches all reset rows."""
    cell, theta, s, x, _, _ = _point("gru", 1, True)
    step = gru_forward(cell, theta, s, x)
    e0 = torch.zeros(1, N, dtype=F64)
    e0[0, 0] = 1.0
    reset = gru_pull(step, e0).view(3, N, -1)[1]
    assert bool((reset.abs().sum(1) > 0).all())


@pytest.mark.parametrize("cell_name", CELLS)
def test_float32_matches_float64(cell_name):
    cell, theta, s, x, v, nu = _point(cell_name, 3, False)
    forward, jvp, row_norms, pull = CLOSED[cell_name]
    step64 = forward(cell, theta, s, x)
    step32 = forward(cell, theta.float(), s.float(), x.float())
    assert pull(step32, nu.float()).dtype == torch.float32
    for a, b in (
        (row_norms(step32), row_norms(step64)),
        (pull(step32, nu.float()), pull(step64, nu)),
        (jvp(step32, v.float()), jvp(step64, v)),
    ):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-5)


def _sgd_run(cell, params, xs, ys, path, lr=0.05, rule="nobacktrack"):
    """``rule`` with plain SGD applied every step: losses and gradients depend on every
    estimate before them."""
    batch = xs.shape[1]
    est, state = start(rule, cell, params, "ce", batch, seed=4, path=path)
    losses, grads = [], []
    for x, y in zip(xs, ys, strict=True):
        result = est.step(params, state, x, y)
        losses.append(result.loss)
        grads.append(result.grad.theta)
        grad = result.grad
        params = Params(params.theta - lr * grad.theta, params.readout - lr * grad.readout)
    return state, torch.stack(losses), torch.stack(grads)


@pytest.mark.parametrize("rule", ["nobacktrack", "uoro"])
@pytest.mark.parametrize("cell_name", CELLS)
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per-stream"])
def test_rank_one_paths_give_the_same_run(rule, cell_name, batch, shared):
    cell = make_cell(cell_name, N, M)
    gen = torch.Generator().manual_seed(2)
    params = init_params(cell, 2, gen, F64)
    if not shared:
        params = Params(
            params.theta + 0.1 * torch.randn(batch, cell.num_params, generator=gen, dtype=F64),
            params.readout.expand(batch, -1, -1).clone(),
        )
    xs = torch.randn(25, batch, M, generator=gen, dtype=F64)
    ys = torch.randint(0, 2, (25, batch), generator=gen)
    closed, l_closed, g_closed = _sgd_run(cell, params, xs, ys, "auto", rule=rule)
    generic, l_generic, g_generic = _sgd_run(cell, params, xs, ys, "generic", rule=rule)
    assert closed.closed_form and not generic.closed_form
    assert float(l_closed[-1].sub(l_closed[0]).abs().max()) > 1e-4  # the run moved
    torch.testing.assert_close(l_closed, l_generic, rtol=0, atol=1e-9)
    torch.testing.assert_close(g_closed, g_generic, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("cell_name", CELLS)
@pytest.mark.parametrize(
    "rule,settings",
    [
        ("nobacktrack", {"lr": 1e-2}),
        ("uoro", {"lr": 1e-2}),
        ("nobacktrack-kalman", {}),
        ("nobacktrack", {"probe_every": 10, "probe_window": 4, "probe_samples": 2,
                         "probe_horizon": 8}),
    ],
    ids=["adam", "uoro", "kalman", "probe"],
)
def test_learner_losses_equal_on_both_paths(cell_name, rule, settings):
    """The whole learner (task stream, optimizer or filter, probe): auto == generic."""

    def losses(path):
        spec = LearnerSpec(
            "add", rule, cell_name, 8, seed=1, dtype="float64",
            settings={"path": path, "batch": 2, **settings},
        )
        learner = Learner(spec)
        assert learner.population.est_state.closed_form is (path == "auto")
        return torch.stack([learner.step().clone() for _ in range(30)])

    auto = losses("auto")
    assert auto.shape == (30, 2) and float(auto.std()) > 0
    torch.testing.assert_close(auto, losses("generic"), rtol=0, atol=1e-9)


@pytest.mark.parametrize("cell_name", CELLS)
def test_the_rank_one_rules_take_a_gated_closed_form(cell_name):
    gated = make_cell(cell_name, 4, 3)
    _, nbt = start("nobacktrack", gated, init_params(gated, 2, None, F64), "ce", 1)
    _, uoro = start("uoro", gated, init_params(gated, 2, None, F64), "ce", 1)
    _, snap1 = start("snap1", gated, init_params(gated, 2, None, F64), "ce", 1)
    assert nbt.closed_form and uoro.closed_form and not snap1.closed_form


def test_closed_form_refusals_name_the_cells():
    gru = make_cell("gru", 4, 3)
    other = dataclasses.replace(make_cell("tanh", 4, 3), name="mine")  # no closed form known
    forced = "path=closed-form exists for the tanh"
    other_params = init_params(other, 2, None, F64)
    params = init_params(gru, 2, None, F64)
    _, state = start("nobacktrack", gru, params, "ce", 1, path="closed-form")
    assert state.closed_form and state.w.shape == (1, gru.num_params)
    with pytest.raises(ValueError, match=f"{forced}, gru, lstm cells only, not mine"):
        start("nobacktrack", other, other_params, "ce", 1, path="closed-form")
    with pytest.raises(ValueError, match=f"{forced}, gru, lstm cells only, not mine"):
        start("uoro", other, other_params, "ce", 1, path="closed-form")
    with pytest.raises(ValueError, match=f"{forced} cell only, not gru"):
        start("snap1", gru, init_params(gru, 2, None, F64), "ce", 1, path="closed-form")


@pytest.mark.parametrize("cell_name", CELLS)
def test_packed_members_equal_alone_and_resume_from_a_snapshot(cell_name):
    """The closed form over a pack's per-stream parameters: each member's losses are its lone
    run's, and a snapshot at step 60 resumes to the same losses."""
    from rnnsweep.algorithms.population import Population

    specs = [
        LearnerSpec("add", "nobacktrack", cell_name, 8, seed=s, dtype="float64",
                    settings={"lr": lr, "batch": 2, "log_every": 20})
        for s, lr in ((1, 1e-3), (2, 5e-3))
    ]

    def packed(snapshots=None, stop_at=None):
        pop = Population(specs, snapshots)
        assert pop.est_state.closed_form
        losses: dict[int, list[float]] = {0: [], 1: []}
        stop = (lambda: pop.counters["t"] >= stop_at) if stop_at else None
        pop.run(120, on_report=lambda i, r: losses[i].append(r["loss"]), should_stop=stop)
        return losses, pop

    straight, _ = packed()
    first, pop = packed(stop_at=60)
    rest, _ = packed(pop.snapshots())
    assert straight[0] != straight[1]
    for i, spec in enumerate(specs):
        reports: list[dict] = []
        Learner(spec).run(120, on_report=reports.append)
        alone = [r["loss"] for r in reports]
        torch.testing.assert_close(straight[i], alone, rtol=0, atol=1e-12)
        torch.testing.assert_close(first[i] + rest[i], straight[i], rtol=0, atol=1e-12)
