"""The Kalman filter (algorithms/kalman.py) and its composition with estimators (kalman_step.py)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest
import torch
from torch import Tensor

from rnnsweep.algorithms import kalman
from rnnsweep.algorithms import kalman_step as ks
from rnnsweep.algorithms.cell import Cell, make_cell
from rnnsweep.algorithms.estimator import (
    Estimator,
    StepResult,
    estimator_names,
    get_estimator,
    start,
)
from rnnsweep.algorithms.forward_mode import jacobians
from rnnsweep.algorithms.loss import loss as loss_fn
from rnnsweep.algorithms.params import Params, init_params
from rnnsweep.algorithms.readout import output as readout_output
from rnnsweep.algorithms.trajectory import Trajectory
from rnnsweep.algorithms.uoro import rank_one_influence

D = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def spd(size: int, g: torch.Generator, shift: float = 0.5) -> Tensor:
    a = torch.randn(size, size, generator=g, dtype=D)
    return a @ a.T / size + shift * torch.eye(size, dtype=D)


def run_filter(state, mu0: Tensor, hs: list[Tensor], ys: list[Tensor], r: Tensor, q: float = 0.0):
    """Filter ``y = H theta + noise``: ``hs[t] [B, o, Q]``, ``ys[t] [B, o]``."""
    theta = mu0.clone()
    for h, y in zip(hs, ys, strict=True):
        e = y - torch.bmm(h, theta.unsqueeze(2)).squeeze(2)
        theta = kalman.update(state, theta, h, e, r, q)
    return theta


def posterior(p0: float, mu0: Tensor, hs: list[Tensor], ys: list[Tensor], r: Tensor):
    """Closed-form Bayesian posterior (per filter): ``Sigma = (Sigma0^-1 + sum H^T R^-1 H)^-1``,
    ``mu = Sigma (Sigma0^-1 mu0 + sum H^T R^-1 y)``."""
    q_size = mu0.shape[1]
    r_inv = torch.linalg.inv(r)
    prec = torch.eye(q_size, dtype=D).expand(mu0.shape[0], -1, -1) / p0
    info = mu0 / p0
    for h, y in zip(hs, ys, strict=True):
        prec = prec + h.mT @ r_inv @ h
        info = info + (h.mT @ r_inv @ y.unsqueeze(2)).squeeze(2)
    cov = torch.linalg.inv(prec)
    return (cov @ info.unsqueeze(2)).squeeze(2), cov


def linear_data(g, batch, q_size, obs, steps, mask=None):
    theta_true = torch.randn(batch, q_size, generator=g, dtype=D)
    hs, ys = [], []
    for t in range(steps):
        h = torch.randn(batch, obs, q_size, generator=g, dtype=D)
        if mask is not None:
            h = h * mask(t)
        hs.append(h)
        noise = 0.3 * torch.randn(batch, obs, generator=g, dtype=D)
        ys.append(torch.bmm(h, theta_true.unsqueeze(2)).squeeze(2) + noise)
    return hs, ys


# ---------------------------------------------------------------- linear-Gaussian exactness


@pytest.mark.parametrize("obs", [1, 3])
def test_full_filter_is_bayesian_posterior(obs):
    g = gen(0)
    batch, q_size, p0 = 2, 6, 2.0
    hs, ys = linear_data(g, batch, q_size, obs, 40 // obs)
    r = spd(obs, g).expand(batch, -1, -1).contiguous()
    mu0 = torch.randn(batch, q_size, generator=g, dtype=D)
    state = kalman.init(q_size, batch, "full", p0, dtype=D)
    theta = run_filter(state, mu0, hs, ys, r)
    mu, cov = posterior(p0, mu0, hs, ys, r)
    assert torch.allclose(theta, mu, atol=1e-8, rtol=0)
    assert torch.allclose(state.cov, cov, atol=1e-8, rtol=0)
    assert torch.equal(state.cov, state.cov.mT)


def one_block_mask(blocks: list[int], pick: list[int]):
    """Observation t depends only on block pick[t]'s coordinates."""
    edges = torch.tensor([0] + blocks).cumsum(0)

    def mask(t: int) -> Tensor:
        m = torch.zeros(sum(blocks), dtype=D)
        j = pick[t]
        m[edges[j] : edges[j + 1]] = 1.0
        return m

    return mask


def test_block_filter_exact_when_observations_stay_in_one_block():
    g = gen(1)
    blocks, batch, p0 = [2, 3, 1], 2, 1.5
    pick = torch.randint(0, 3, (40,), generator=g).tolist()
    hs, ys = linear_data(g, batch, 6, 1, 40, one_block_mask(blocks, pick))
    r = torch.full((batch, 1, 1), 0.2, dtype=D)
    mu0 = torch.randn(batch, 6, generator=g, dtype=D)
    block = kalman.init(6, batch, "block", p0, blocks, dtype=D)
    full = kalman.init(6, batch, "full", p0, dtype=D)
    theta_b = run_filter(block, mu0, hs, ys, r)
    theta_f = run_filter(full, mu0, hs, ys, r)
    mu, cov = posterior(p0, mu0, hs, ys, r)
    assert torch.allclose(theta_b, mu, atol=1e-8, rtol=0)
    assert torch.allclose(theta_f, mu, atol=1e-8, rtol=0)
    assert torch.allclose(kalman.covariance(block), cov, atol=1e-8, rtol=0)


def test_block_filter_exact_for_independent_parts_of_a_vector_observation():
    """Component i sees block i only and R is diagonal: S is diagonal, blocks stay decoupled."""
    g = gen(2)
    blocks, batch, p0 = [2, 3, 1], 1, 1.0
    mask = torch.zeros(3, 6, dtype=D)
    mask[0, :2], mask[1, 2:5], mask[2, 5] = 1.0, 1.0, 1.0
    hs, ys = linear_data(g, batch, 6, 3, 20, lambda t: mask)
    r = torch.diag_embed(torch.tensor([[0.1, 0.5, 0.3]], dtype=D))
    mu0 = torch.zeros(batch, 6, dtype=D)
    block = kalman.init(6, batch, "block", p0, blocks, dtype=D)
    theta_b = run_filter(block, mu0, hs, ys, r)
    mu, cov = posterior(p0, mu0, hs, ys, r)
    assert torch.allclose(theta_b, mu, atol=1e-8, rtol=0)
    assert torch.allclose(kalman.covariance(block), cov, atol=1e-8, rtol=0)


def test_diagonal_filter_exact_when_each_observation_touches_one_coordinate():
    g = gen(3)
    batch, p0 = 3, 0.7
    pick = torch.randint(0, 6, (40,), generator=g).tolist()
    hs, ys = linear_data(g, batch, 6, 1, 40, one_block_mask([1] * 6, pick))
    r = torch.full((batch, 1, 1), 0.4, dtype=D)
    mu0 = torch.randn(batch, 6, generator=g, dtype=D)
    diag = kalman.init(6, batch, "diagonal", p0, dtype=D)
    theta_d = run_filter(diag, mu0, hs, ys, r)
    mu, cov = posterior(p0, mu0, hs, ys, r)
    assert torch.allclose(theta_d, mu, atol=1e-8, rtol=0)
    assert torch.allclose(kalman.covariance(diag), cov, atol=1e-8, rtol=0)


def test_block_and_diagonal_are_approximations_when_observations_mix_blocks():
    g = gen(4)
    batch, p0 = 1, 1.0
    hs, ys = linear_data(g, batch, 6, 1, 40)  # dense rows: every observation mixes all blocks
    r = torch.full((batch, 1, 1), 0.2, dtype=D)
    mu0 = torch.zeros(batch, 6, dtype=D)
    mu, _ = posterior(p0, mu0, hs, ys, r)
    block = kalman.init(6, batch, "block", p0, [2, 3, 1], dtype=D)
    diag = kalman.init(6, batch, "diagonal", p0, dtype=D)
    assert (run_filter(block, mu0, hs, ys, r) - mu).abs().max() > 1e-3
    assert (run_filter(diag, mu0, hs, ys, r) - mu).abs().max() > 1e-3
    # but a single block covering everything is the full filter
    one = kalman.init(6, batch, "block", p0, [6], dtype=D)
    assert torch.allclose(run_filter(one, mu0, hs, ys, r), mu, atol=1e-8, rtol=0)


@pytest.mark.parametrize("structure", ["full", "block", "diagonal"])
def test_process_noise_adds_q_identity(structure):
    g = gen(5)
    batch, q = 2, 0.05
    hs, ys = linear_data(g, batch, 6, 2, 1)
    r = spd(2, g).expand(batch, -1, -1)
    mu0 = torch.randn(batch, 6, generator=g, dtype=D)
    blocks = [2, 3, 1] if structure == "block" else None
    a = kalman.init(6, batch, structure, 1.0, blocks, dtype=D)
    b = kalman.init(6, batch, structure, 1.0, blocks, dtype=D)
    theta_a = run_filter(a, mu0, hs, ys, r, q=0.0)
    theta_b = run_filter(b, mu0, hs, ys, r, q=q)
    assert torch.equal(theta_a, theta_b)
    expected = kalman.covariance(a) + q * torch.eye(6, dtype=D)
    assert torch.allclose(kalman.covariance(b), expected, atol=1e-14, rtol=0)


# ---------------------------------------------------------------- softmax observation


def test_ce_observation_fisher_and_noise():
    g = gen(6)
    batch, outputs, q_size, r = 4, 5, 7, 1e-3
    out = 3.0 * torch.randn(batch, outputs, generator=g, dtype=D)
    y = torch.randint(0, outputs, (batch,), generator=g)
    h_out = torch.randn(batch, outputs, q_size, generator=g, dtype=D)
    H, R, e = kalman.observation("ce", out, y, h_out, r)
    p = torch.softmax(out, -1)
    fisher = R - r * torch.eye(outputs, dtype=D)
    assert torch.allclose(fisher, torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1))
    eig = torch.linalg.eigvalsh(fisher)
    assert eig.min() > -1e-12
    assert (torch.linalg.matrix_rank(fisher, atol=1e-10) == outputs - 1).all()
    assert torch.linalg.eigvalsh(R).min() >= r * (1 - 1e-9)
    assert torch.allclose(H, fisher @ h_out)
    onehot = torch.nn.functional.one_hot(y, outputs).to(D)
    assert torch.allclose(e, onehot - p)
    assert torch.allclose(e.sum(-1), torch.zeros(batch, dtype=D), atol=1e-15)
    # mse: H unchanged, R = r I, e = y - o
    target = torch.randn(batch, outputs, generator=g, dtype=D)
    H2, R2, e2 = kalman.observation("mse", out, target, h_out, 0.3)
    assert torch.equal(H2, h_out) and torch.equal(e2, target - out)
    assert torch.allclose(R2, 0.3 * torch.eye(outputs, dtype=D).expand(batch, -1, -1))


@pytest.mark.parametrize("structure", ["full", "block", "diagonal"])
def test_ce_filtered_step_lowers_the_loss_on_its_example(structure):
    """Logistic model ``o = W x``: one filter step on (x, y) lowers that example's loss."""
    g = gen(7)
    outputs, inputs = 4, 5
    q_size = outputs * inputs
    blocks = [inputs] * outputs if structure == "block" else None
    state = kalman.init(q_size, 1, structure, 0.5, blocks, dtype=D)
    theta = torch.randn(1, q_size, generator=g, dtype=D)
    for _ in range(10):
        x = torch.randn(1, inputs, generator=g, dtype=D)
        y = torch.randint(0, outputs, (1,), generator=g)
        out = theta.view(outputs, inputs) @ x[0]
        h_out = torch.kron(torch.eye(outputs, dtype=D), x).unsqueeze(0)  # do_i/dW_ij = x_j
        assert torch.allclose(h_out[0] @ theta[0], out)
        H, R, e = kalman.observation("ce", out.unsqueeze(0), y, h_out, 1e-2)
        before = loss_fn("ce", out.unsqueeze(0), y)
        theta = kalman.update(state, theta, H, e, R, 0.0)
        after = loss_fn("ce", (theta.view(outputs, inputs) @ x[0]).unsqueeze(0), y)
        assert after.item() < before.item() - 1e-4


# ---------------------------------------------------------------- composition with estimators


@dataclass
class ExactState:
    traj: Trajectory
    G: Tensor  # [B, S, P]


def _exact_init(cell, params, loss_kind, batch, seeds, hyper) -> ExactState:
    dtype = params.theta.dtype
    traj = Trajectory(cell, loss_kind, batch, dtype, "cpu")
    return ExactState(traj, torch.zeros(batch, cell.state_size, cell.num_params, dtype=dtype))


def _exact_step(params: Params, state: ExactState, x: Tensor, y: Tensor) -> StepResult:
    traj = state.traj
    s, j, f_theta = jacobians(traj.cell, params.theta, traj.s, x)
    state.G = torch.bmm(j, state.G) + f_theta
    traj.s, traj.t = s, traj.t + 1
    loss, out, _, _ = traj.score(params, y)
    return StepResult(loss, out, None)


def _tanh_exact_step(params: Params, state: ExactState, x: Tensor, y: Tensor) -> StepResult:
    """``_exact_step`` in closed form, tanh cell, shared theta: ``dF_k/dTheta_k = d_k z``."""
    traj = state.traj
    n = traj.cell.hidden
    weights = params.theta.view(n, -1)
    z = torch.cat([traj.s, torch.ones_like(traj.s[:, :1]), x], 1)
    s = torch.tanh(z @ weights.T)
    d = 1.0 - s * s
    f_theta = torch.einsum("bk,kl,bj->bklj", d, torch.eye(n, dtype=D), z).reshape(len(x), n, -1)
    state.G = d.unsqueeze(2) * (weights[:, :n] @ state.G) + f_theta
    traj.s, traj.t = s, traj.t + 1
    loss, out, _, _ = traj.score(params, y)
    return StepResult(loss, out, None)


def _exact_influence(state: ExactState) -> tuple[Tensor, Tensor]:
    batch, size = state.G.shape[:2]
    return torch.eye(size, dtype=state.G.dtype).expand(batch, -1, -1), state.G


EXACT = Estimator(
    name="exact-test", init=_exact_init, step=_exact_step, defaults={}, exact=True,
    unbiased=True, summary="test-only RTRL", influence=_exact_influence,
)

FAST_EXACT = replace(EXACT, step=_tanh_exact_step)


def autograd_jacobian(cell: Cell, params: Params, xs: Tensor) -> Tensor:
    """``d o_T / d params.flat() [B, o, Q]`` by reverse mode through the unrolled cell."""
    batch = xs.shape[1]

    def out_of(flat: Tensor) -> Tensor:
        p = ks.unflatten(flat, params)
        s = torch.zeros(batch, cell.state_size, dtype=D)
        for x in xs:
            s = cell.step(p.theta, s, x)
        h = s[:, cell.out_slice]
        return readout_output(p.readout, torch.cat([h, torch.ones_like(h[:, :1])], 1))

    jac = torch.func.jacrev(out_of)(params.flat())
    if params.per_stream:  # [B, o, B, Q] -> the diagonal over streams
        jac = torch.diagonal(jac, dim1=0, dim2=2).permute(2, 0, 1)
    return jac


def make_problem(cell_name: str, per_stream: bool, batch: int = 3, outputs: int = 2, seed: int = 0):
    cell = make_cell(cell_name, 3, 2)
    g = gen(seed)
    params = init_params(cell, outputs, g, dtype=D)
    params = Params(params.theta, params.readout + 0.1)  # nonzero c
    if per_stream:
        noise = torch.randn(batch, params.flat().shape[0], generator=g, dtype=D)
        params = ks.unflatten(params.flat() + 0.1 * noise, params.expand(batch))
    xs = torch.randn(4, batch, cell.inputs, generator=g, dtype=D)
    return cell, params, xs


@pytest.mark.parametrize("cell_name", ["tanh", "gru", "lstm"])
@pytest.mark.parametrize("per_stream", [False, True])
def test_observation_jacobian_from_exact_influence_equals_autograd(cell_name, per_stream):
    cell, params, xs = make_problem(cell_name, per_stream)
    batch, outputs = xs.shape[1], params.readout.shape[-2]
    state = _exact_init(cell, params, "mse", batch, None, {})
    y = torch.zeros(batch, outputs, dtype=D)
    for x in xs:
        _exact_step(params, state, x, y)
    H = ks.observation_jacobian(EXACT, params, state)
    assert H.shape == (batch, outputs, cell.num_params + outputs * (cell.hidden + 1))
    assert torch.allclose(H, autograd_jacobian(cell, params, xs), atol=1e-12, rtol=0)
    if cell_name == "tanh" and not per_stream:
        fast = _exact_init(cell, params, "mse", batch, None, {})
        for x in xs:
            _tanh_exact_step(params, fast, x, y)
        assert torch.allclose(fast.G, state.G, atol=1e-13, rtol=0)


@pytest.mark.parametrize("per_stream", [False, True])
def test_filtered_step_is_the_ekf_update_with_the_true_jacobian(per_stream):
    cell, params, xs = make_problem("tanh", per_stream)
    batch, outputs = xs.shape[1], params.readout.shape[-2]
    g = gen(11)
    ys = torch.randint(0, outputs, (len(xs), batch), generator=g)
    state = _exact_init(cell, params, "ce", batch, None, {})
    kf = ks.init_filter(cell, params, batch, "full", p0=0.3)
    for x, y in zip(xs[:-1], ys[:-1], strict=True):
        _exact_step(params, state, x, y)
    reference = kalman.KalmanState("full", kf.q_size, kf.batch, kf.cov.clone())
    result, new = ks.filtered_step(
        EXACT, params, state, kf, xs[-1], ys[-1], process_noise=1e-3, obs_noise=0.05
    )
    H_out = autograd_jacobian(cell, params, xs)
    H, R, e = kalman.observation("ce", result.output, ys[-1], H_out, 0.05)
    if per_stream:
        theta = kalman.update(reference, params.flat(), H, e, R, 1e-3)
    else:  # one filter, the streams' observations in sequence (= stacked, independent)
        # (linearised at theta0: stream b's innovation moves by -H_b (theta - theta0))
        theta0 = theta = params.flat().unsqueeze(0)
        for b in range(batch):
            h_b = H[b : b + 1]
            e_b = e[b : b + 1] - torch.bmm(h_b, (theta - theta0).unsqueeze(2)).squeeze(2)
            theta = kalman.update(reference, theta, h_b, e_b, R[b : b + 1], 0.0)
        reference.cov.diagonal(dim1=1, dim2=2).add_(1e-3)
        theta = theta.squeeze(0)
    assert torch.allclose(new.flat(), theta, atol=1e-10, rtol=0)
    assert torch.allclose(kf.cov, reference.cov, atol=1e-10, rtol=0)
    assert new.theta.shape == params.theta.shape and new.readout.shape == params.readout.shape


@pytest.mark.parametrize("cell_name", ["tanh", "lstm"])
def test_uoro_observation_jacobian_is_its_rank_one_influence(cell_name):
    cell, params, xs = make_problem(cell_name, per_stream=False)
    batch, outputs, n = xs.shape[1], params.readout.shape[-2], cell.hidden
    est, st = start("uoro", cell, params, "mse", batch, seed=3)
    kf = ks.init_filter(cell, params, batch, "diagonal")
    y = torch.zeros(batch, outputs, dtype=D)
    for x in xs:
        result, new = ks.filtered_step(est, params, st, kf, x, y)
    v, w = rank_one_influence(st)
    H = ks.observation_jacobian(est, params, st)
    h_theta = torch.einsum("on,bn,bp->bop", params.readout[:, :n], v[:, cell.out_slice, 0], w[:, 0])
    assert torch.allclose(H[:, :, : cell.num_params], h_theta, atol=1e-13, rtol=0)
    hb = torch.cat([st.traj.h, torch.ones(batch, 1, dtype=D)], 1)
    h_read = H[:, :, cell.num_params :].view(batch, outputs, outputs, n + 1)
    for i in range(outputs):
        for k in range(outputs):
            expected = hb if i == k else torch.zeros_like(hb)
            assert torch.equal(h_read[:, i, k], expected)
    assert torch.isfinite(new.flat()).all() and not torch.equal(new.flat(), params.flat())
    assert kf.cov.max() <= kalman.P0 + 4 * kalman.PROCESS_NOISE  # information only shrinks it


def registered_with_influence(name: str) -> Estimator:
    assert name in estimator_names() and get_estimator(name).influence is not None
    return get_estimator(name)


@pytest.mark.parametrize(
    "name,cell_name",
    [(n, c) for n in ("uoro", "nobacktrack", "rtrl", "snap1") for c in ("tanh", "gru")]
    + [("kf-rtrl", "tanh")],
)
def test_every_influence_estimator_composes_with_the_filter(name, cell_name):
    """H's recurrent part is ``V L[out_slice] R`` (``Estimator.influence``); steps stay finite."""
    est = registered_with_influence(name)
    cell, params, xs = make_problem(cell_name, per_stream=True)
    batch, outputs, n = xs.shape[1], params.readout.shape[-2], cell.hidden
    est, st = start(name, cell, params, "ce", batch, seed=4)
    kf = ks.init_filter(cell, params, batch, "block")
    ys = torch.randint(0, outputs, (len(xs), batch), generator=gen(9))
    for x, y in zip(xs, ys, strict=True):
        _, new = ks.filtered_step(est, params, st, kf, x, y)
    left, right = est.influence(st)
    H = ks.observation_jacobian(est, params, st)
    vl = torch.bmm(params.readout[..., :n], left[:, cell.out_slice])
    assert torch.allclose(H[:, :, : cell.num_params], torch.bmm(vl, right), atol=1e-13, rtol=0)
    assert torch.isfinite(new.flat()).all()


@pytest.mark.parametrize("cell_name", ["tanh", "gru"])
def test_rtrl_influence_gives_the_true_jacobian(cell_name):
    est = registered_with_influence("rtrl")
    cell, params, xs = make_problem(cell_name, per_stream=False)
    batch, outputs = xs.shape[1], params.readout.shape[-2]
    est, st = start("rtrl", cell, params, "mse", batch)
    y = torch.zeros(batch, outputs, dtype=D)
    for x in xs:
        est.step(params, st, x, y)
    H = ks.observation_jacobian(est, params, st)
    assert torch.allclose(H, autograd_jacobian(cell, params, xs), atol=1e-12, rtol=0)


def test_filtered_exact_influence_learns_a_teacher_online():
    """Default hyperparameters, diagonal filter: the online loss on a teacher RNN falls."""
    cell = make_cell("tanh", 4, 2)
    teacher = init_params(cell, 1, gen(20), dtype=D, scale=1.5)
    student = init_params(cell, 1, gen(21), dtype=D)
    batch, steps = 4, 400
    g = gen(22)
    state = _exact_init(cell, student, "mse", batch, None, {})
    kf = ks.init_filter(cell, student, batch, "diagonal")
    s_teacher = torch.zeros(batch, 4, dtype=D)
    losses = []
    for _ in range(steps):
        x = torch.randn(batch, 2, generator=g, dtype=D)
        s_teacher = cell.step(teacher.theta, s_teacher, x)
        hb = torch.cat([s_teacher, torch.ones(batch, 1, dtype=D)], 1)
        y = readout_output(teacher.readout, hb)
        result, student = ks.filtered_step(FAST_EXACT, student, state, kf, x, y)
        losses.append(result.loss.mean().item())
    first, last = sum(losses[:100]) / 100, sum(losses[-100:]) / 100
    assert last < 0.5 * first


def test_filtered_step_shared_equals_per_stream_for_one_stream():
    cell, params, xs = make_problem("gru", per_stream=False, batch=1)
    per = params.expand(1)
    per = Params(per.theta.clone(), per.readout.clone())
    y = torch.zeros(1, 2, dtype=D)
    results = []
    for p in (params, per):
        est, st = start("uoro", cell, p, "mse", 1, seed=5)
        kf = ks.init_filter(cell, p, 1, "block")
        for x in xs:
            _, p = ks.filtered_step(est, p, st, kf, x, y, process_noise=0.0, obs_noise=0.5)
        results.append(p.flat().reshape(-1))
    assert torch.allclose(results[0], results[1], atol=1e-12, rtol=0)


def test_block_sizes_cover_params_in_flat_order():
    for name, gates in (("tanh", 1), ("gru", 3), ("lstm", 4)):
        cell = make_cell(name, 5, 3)
        sizes = ks.block_sizes(cell, 2)
        assert len(sizes) == gates * 5 + 2
        assert sum(sizes) == cell.num_params + 2 * 6
        assert sizes[: gates * 5] == [9] * (gates * 5) and sizes[gates * 5 :] == [6, 6]


def test_state_dict_round_trip():
    g = gen(8)
    hs, ys = linear_data(g, 1, 6, 1, 5)
    r = torch.full((1, 1, 1), 0.2, dtype=D)
    for structure, blocks in (("full", None), ("block", [2, 4]), ("diagonal", None)):
        a = kalman.init(6, 1, structure, 1.0, blocks, dtype=D)
        run_filter(a, torch.zeros(1, 6, dtype=D), hs, ys, r)
        b = kalman.init(6, 1, structure, 1.0, blocks, dtype=D)
        b.load_state_dict(a.state_dict())
        assert torch.equal(kalman.covariance(a), kalman.covariance(b))
    with pytest.raises(ValueError, match="does not match"):
        kalman.init(6, 2, "full", dtype=D).load_state_dict(a.state_dict())


# ---------------------------------------------------------------- bad input


def test_bad_input_raises_value_error_naming_the_problem():
    with pytest.raises(ValueError, match="unknown covariance structure 'dense'"):
        kalman.init(6, 1, "dense")
    with pytest.raises(ValueError, match="block sizes sum to 5, expected q_size = 6"):
        kalman.init(6, 1, "block", blocks=[2, 3])
    with pytest.raises(ValueError, match="needs blocks"):
        kalman.init(6, 1, "block")
    with pytest.raises(ValueError, match="p0"):
        kalman.init(6, 1, "full", p0=0.0)
    state = kalman.init(3, 1, "full", dtype=D)
    theta, H = torch.zeros(1, 3, dtype=D), torch.ones(1, 1, 3, dtype=D)
    e, R = torch.ones(1, 1, dtype=D), torch.ones(1, 1, 1, dtype=D)
    with pytest.raises(ValueError, match="process_noise"):
        kalman.update(state, theta, H, e, R, -1e-3)
    with pytest.raises(ValueError, match="H has shape"):
        kalman.update(state, theta, torch.ones(1, 1, 4, dtype=D), e, R)
    with pytest.raises(ValueError, match="obs_noise"):
        kalman.observation("mse", e, e, H, -0.1)
    with pytest.raises(ValueError, match="obs_noise must be > 0 for ce"):
        kalman.observation("ce", e, torch.zeros(1, dtype=torch.int64), H, 0.0)
    with pytest.raises(ValueError, match="unknown loss kind"):
        kalman.observation("hinge", e, e, H, 0.1)

    cell, params, xs = make_problem("tanh", per_stream=False)
    bptt, st = start("bptt", cell, params, "mse", 3)
    kf = ks.init_filter(cell, params, 3)
    y = torch.zeros(3, 2, dtype=D)
    with pytest.raises(ValueError, match="'bptt'"):
        ks.filtered_step(bptt, params, st, kf, xs[0], y)
    est, st = start("uoro", cell, params, "mse", 3)
    with pytest.raises(ValueError, match="3 filters, expected 1"):
        ks.filtered_step(est, params, st, kalman.init(kf.q_size, 3), xs[0], y)
    with pytest.raises(ValueError, match="covers 7 parameters"):
        ks.filtered_step(est, params, st, kalman.init(7, 1), xs[0], y)


def test_float32_runs():
    cell = make_cell("tanh", 3, 2)
    params = init_params(cell, 2, gen(0))
    est, st = start("uoro", cell, params, "ce", 2)
    for structure in ("full", "block", "diagonal"):
        kf = ks.init_filter(cell, params, 2, structure)
        x = torch.randn(2, 2, generator=gen(1))
        _, new = ks.filtered_step(est, params, st, kf, x, torch.tensor([0, 1]))
        assert new.theta.dtype == torch.float32 and torch.isfinite(new.flat()).all()



def test_a_full_covariance_beyond_free_memory_is_refused_before_allocating(capsys):
    """n=512: the covariance alone is ~1 TB; refused up front in one line (exit 74), where the
    allocation would have been killed by the kernel's out-of-memory killer."""
    from rnnsweep.algorithms import memory_budget
    from rnnsweep.orchestrator.cli import main

    free = memory_budget.available_bytes("cpu")
    assert free is not None and free > 0
    memory_budget.check_fits(free // 2, "cpu", "half of it")  # fits: no error
    with pytest.raises(MemoryError, match=r"^too much needs .* GiB, more than the .* GiB free"):
        memory_budget.check_fits(free + 2**30, "cpu", "too much")
    run = ["run", "--task", "add", "--estimator", "nobacktrack-kalman", "--hidden", "512"]
    assert main(run + ["--set", "covariance=full", "--steps", "5", "--no-mlflow"]) == 74
    err = capsys.readouterr().err
    assert "out of memory (a learner with the full Kalman covariance [1, " in err
