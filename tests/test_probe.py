"""The probe on a live online SGD loop: exact against itself for RTRL, zero staleness for frozen
parameters, unbiased rank-one estimators within their standard error, truncation bias,
staleness growing with the learning rate, checkpoints, and no effect on learning."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from rnnsweep.algorithms import probe
from rnnsweep.algorithms.cell import make_cell
from rnnsweep.algorithms.estimator import start
from rnnsweep.algorithms.params import Params, init_params

DT = torch.float64
HIDDEN, INPUTS, OUTPUTS = 8, 3, 2


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: intra-op threads only add overhead (and contention on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def learn(
    learner: str,
    lr: float,
    steps: int,
    config: probe.ProbeConfig | None = None,
    shadow: str | None = None,
    hyper: dict[str, Any] | None = None,
    seed: int = 0,
    checkpoint_at: int | None = None,
    cell_name: str = "tanh",
    guarded: bool = False,
) -> tuple[torch.Tensor, list[dict]]:
    """Online SGD on one random stream, ``theta -= lr grad`` in place every step that has a
    gradient, probing stream 0 with ``shadow``; ``(losses [T], reports)``. ``checkpoint_at``:
    after that step the probe is replaced by a fresh one loaded from its ``state_dict``."""
    cell = make_cell(cell_name, HIDDEN, INPUTS)
    gen = torch.Generator().manual_seed(seed)
    params = init_params(cell, OUTPUTS, gen, DT)
    xs = torch.randn(steps, 1, INPUTS, generator=gen, dtype=DT)
    ys = torch.randint(0, OUTPUTS, (steps, 1), generator=gen)
    est, est_state = start(learner, cell, params, "ce", 1, seed=seed)

    def make_probe() -> probe.ProbeState:
        assert config is not None
        return probe.init(config, cell, shadow or learner, hyper or {}, "ce", seed + 1, DT, "cpu")

    state = make_probe() if config else None
    losses, reports = [], []
    for t in range(steps):
        traj = est_state.traj
        s_prev = (traj.h if cell_name == "tanh" else traj.s)[0].clone()
        result = est.step(params, est_state, xs[t], ys[t])
        losses.append(result.loss)
        if state is not None and (state.wants(t) or not guarded):
            report = state.observe(params, s_prev, xs[t, 0], ys[t, 0], t)
            if report is not None:
                reports.append(report)
            if t == checkpoint_at:
                saved = state.state_dict()
                state = make_probe()
                state.load_state_dict(saved)
        if result.grad is not None:
            params.theta.sub_(result.grad.theta, alpha=lr)
            params.readout.sub_(result.grad.readout, alpha=lr)
    return torch.cat(losses), reports


def test_rtrl_shadows_have_no_bias_and_no_variance():
    config = probe.ProbeConfig(every=20, window=10, samples=4, horizon=16)
    _, reports = learn("rtrl", 0.1, 60, config)
    assert [r["step"] for r in reports] == [9, 29, 49]
    for r in reports:
        assert r["samples"] == 4 and r["window"] == 10
        assert r["bias"] <= 1e-10 and r["variance"] <= 1e-20
        assert 0.0 < r["staleness"] < 1.0 and r["cosine"] > 0.5


def test_frozen_parameters_no_staleness_and_rtrl_aligned():
    config = probe.ProbeConfig(every=25, window=15, samples=2, horizon=64)
    _, reports = learn("rtrl", 0.0, 55, config)
    assert [r["step"] for r in reports] == [14, 39]
    for r in reports:
        assert r["staleness"] <= 1e-8
        assert r["cosine"] == pytest.approx(1.0, abs=1e-10)


def test_generic_cell_lstm():
    """The generic trajectory (state [c; h]): exact RTRL shadows and no staleness when frozen."""
    config = probe.ProbeConfig(every=12, window=8, samples=2, horizon=32)
    _, reports = learn("rtrl", 0.0, 20, config, cell_name="lstm")
    assert [r["step"] for r in reports] == [7, 19]
    for r in reports:
        assert r["bias"] <= 1e-10 and r["variance"] <= 1e-20 and r["staleness"] <= 1e-8


@pytest.mark.parametrize("shadow", ["uoro", "nobacktrack"])
def test_rank_one_unbiased_within_standard_error(shadow):
    """E[bias^2] = tr Cov(G_hat) / (K ||G_rtrl||^2) and E[variance] = tr Cov (K - 1) / (K
    ||G_rtrl||^2), so the standard error of bias is sqrt(variance / (K - 1)); judged at 4."""
    k = 256
    config = probe.ProbeConfig(every=30, window=20, samples=k, horizon=30)
    _, reports = learn("rtrl", 0.1, 80, config, shadow=shadow)
    assert len(reports) == 3
    for r in reports:
        std_error = (r["variance"] / (k - 1)) ** 0.5
        assert 0.0 < r["bias"] <= 4 * std_error
        assert r["variance"] > 1e-6 and -1.0 <= r["cosine"] <= 1.0


def test_short_truncation_has_more_bias():
    config = probe.ProbeConfig(every=30, window=24, samples=1, horizon=30)
    _, short = learn("rtrl", 0.1, 84, config, shadow="tbptt", hyper={"truncation": 2})
    _, long = learn("rtrl", 0.1, 84, config, shadow="tbptt", hyper={"truncation": 8})
    assert len(short) == len(long) == 3
    for a, b in zip(short, long, strict=True):
        assert a["bias"] > b["bias"] > 0.0


def test_staleness_grows_with_learning_rate():
    config = probe.ProbeConfig(every=40, window=20, samples=1, horizon=64)
    staleness = [learn("rtrl", lr, 60, config)[1][-1]["staleness"] for lr in (0.0, 0.05, 0.3)]
    assert staleness[0] <= 1e-8
    assert staleness[0] <= staleness[1] < staleness[2]


@pytest.mark.parametrize("learner", ["uoro", "tbptt"])
def test_probe_does_not_change_learning(learner):
    config = probe.ProbeConfig(every=10, window=6, samples=8, horizon=12)
    off, _ = learn(learner, 0.1, 40, None)
    on, reports = learn(learner, 0.1, 40, config, shadow="nobacktrack")
    assert len(reports) == 4
    assert torch.equal(on, off)


def test_checkpoint_outside_a_window_resumes_exactly():
    config = probe.ProbeConfig(every=20, window=8, samples=8, horizon=10)
    losses, reports = learn("uoro", 0.1, 50, config)
    resumed, again = learn("uoro", 0.1, 50, config, checkpoint_at=15)
    assert torch.equal(resumed, losses)
    assert again == reports


def test_observing_only_where_wanted_is_the_same():
    config = probe.ProbeConfig(every=20, window=8, samples=8, horizon=10)
    state = probe.init(config, make_cell("tanh", HIDDEN, INPUTS), "uoro", {}, "ce", 0, DT, "cpu")
    assert [t for t in range(40) if state.wants(t)] == [*range(8), *range(11, 28), *range(31, 40)]
    losses, reports = learn("uoro", 0.1, 50, config)
    guarded_losses, guarded_reports = learn("uoro", 0.1, 50, config, guarded=True)
    assert torch.equal(guarded_losses, losses) and guarded_reports == reports


def test_checkpoint_mid_window_restarts_it():
    config = probe.ProbeConfig(every=20, window=8, samples=8, horizon=10)
    losses, reports = learn("uoro", 0.1, 50, config)
    resumed, again = learn("uoro", 0.1, 50, config, checkpoint_at=23)
    assert torch.equal(resumed, losses)
    assert [r["step"] for r in again] == [r["step"] for r in reports] == [7, 27, 47]
    assert again[0] == reports[0] and again[2] == reports[2]
    assert again[1]["window"] == 4 and again[1] != reports[1]


def test_bad_config_and_offline_estimator_rejected():
    with pytest.raises(ValueError, match="window"):
        probe.ProbeConfig(every=5, window=6)
    with pytest.raises(ValueError, match="samples"):
        probe.ProbeConfig(every=5, window=5, samples=0)
    cell = make_cell("tanh", 4, 2)
    with pytest.raises(ValueError, match="offline"):
        probe.init(probe.ProbeConfig(every=5, window=5), cell, "bptt", {}, "ce", 0, DT, "cpu")
    with pytest.raises(ValueError, match="truncation"):
        probe.init(
            probe.ProbeConfig(every=5, window=5),
            cell,
            "tbptt",
            {"truncation": 0},
            "ce",
            0,
            DT,
            "cpu",
        )


def test_off_costs_nothing():
    cell = make_cell("tanh", 4, 2)
    state = probe.init(probe.ProbeConfig(), cell, "uoro", {}, "ce", 0, DT, "cpu")
    params = Params(torch.zeros(cell.num_params, dtype=DT), torch.zeros(2, 5, dtype=DT))
    x, s = torch.zeros(2, dtype=DT), torch.zeros(4, dtype=DT)
    assert probe.observe(state, params, s, x, torch.tensor(0), 0) is None
    assert state.last is None and state.ring_y is None
