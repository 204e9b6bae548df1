"""The probe on a live online SGD loop and on the add task: exact against itself for RTRL, zero
staleness for frozen parameters at every horizon, staleness growing with the learning rate,
horizon_error falling as the horizon grows (and its warning), the squared bias without its
noise floor (zero within 3 standard errors for unbiased estimators, clearly above for biased
ones), the full-run shadow, checkpoints mid-window, and no effect on learning."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch

from rnnsweep.algorithms import probe
from rnnsweep.algorithms.cell import make_cell
from rnnsweep.algorithms.estimator import start
from rnnsweep.algorithms.learner import Learner, LearnerSpec
from rnnsweep.algorithms.params import Params, init_params

DT = torch.float64
HIDDEN, INPUTS, OUTPUTS = 8, 3, 2
# Short windows do not cover these networks' memory: the warning is expected (and tested once).
pytestmark = pytest.mark.filterwarnings("ignore:probe. horizon_error:RuntimeWarning")


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


def add_run(lr: float, seed: int, steps: int, **probe: Any) -> list[dict]:
    """A learner (rtrl, Adam, tanh n=8) on the add task; its probe windows, in order."""
    settings = {"lr": lr, "log_every": 50, "probe_samples": 2, **probe}
    learner = Learner(LearnerSpec("add", "rtrl", "tanh", 8, seed=seed, dtype="float64",
                                  settings=settings))
    windows: list[dict] = []
    learner.run(steps, on_report=lambda r: windows.extend(r.get("probe", ())))
    return windows


def test_rtrl_shadows_have_no_bias_and_no_variance():
    config = probe.ProbeConfig(every=20, window=10, samples=4, horizon=16)
    _, reports = learn("rtrl", 0.1, 60, config)
    assert [(r["start"], r["step"]) for r in reports] == [(0, 16), (20, 36), (40, 56)]
    for r in reports:
        assert r["samples"] == 4 and r["window"] == 10
        assert abs(r["bias_sq"]) <= 1e-20 and r["variance"] <= 1e-20
        assert r["bias_se"] <= 1e-20 and r["bias"] <= 1e-10
        assert r["staleness"] > 0.01 and -1.0 <= r["cosine"] < 1.0
        assert -1.0 <= r["readout_cosine"] < 1.0 and "staleness_full" not in r


@pytest.mark.parametrize("horizon", [1, 2, 5, 16, 40])
def test_frozen_parameters_no_staleness_at_every_horizon(horizon):
    """lr = 0: the moving and the held exact RTRL are the same computation (<= 1e-12)."""
    config = probe.ProbeConfig(every=horizon + 7, window=horizon, samples=2, horizon=horizon)
    _, reports = learn("rtrl", 0.0, 3 * (horizon + 7), config)
    assert len(reports) == 3
    for r in reports:
        assert r["staleness"] <= 1e-12
        assert r["cosine"] == pytest.approx(1.0, abs=1e-10)


def test_generic_cell_lstm():
    """The generic trajectory (state [c; h]): exact RTRL shadows and no staleness when frozen."""
    config = probe.ProbeConfig(every=12, window=8, samples=2, horizon=8)
    _, reports = learn("rtrl", 0.0, 24, config, cell_name="lstm")
    assert [r["step"] for r in reports] == [8, 20]
    for r in reports:
        assert r["bias"] <= 1e-10 and r["variance"] <= 1e-20 and r["staleness"] <= 1e-12


def test_staleness_grows_with_learning_rate_on_add():
    """Per seed (each of 3), the mean staleness over the windows is 0 at lr = 0 and strictly
    increasing over lr = 1e-4, 1e-3, 1e-2 (Adam)."""
    probe_settings = {"probe_every": 100, "probe_window": 20, "probe_horizon": 20}
    for seed in (0, 1, 2):
        means = []
        for lr in (0.0, 1e-4, 1e-3, 1e-2):
            windows = add_run(lr, seed, 400, **probe_settings)
            assert [w["step"] for w in windows] == [20, 120, 220, 320]
            means.append(sum(w["metrics"]["staleness"] for w in windows) / len(windows))
        assert means[0] <= 1e-12, (seed, means)
        assert 0.0 < means[1] < means[2] < means[3], (seed, means)


def test_horizon_error_falls_as_the_horizon_grows_and_warns_once():
    """On add (frozen parameters, so the same trajectory for every W; recurrent weights at half
    scale, so the network's memory is finite), the mean horizon_error over the windows past
    the first falls strictly over W = 2, 6, 20, 60, from above 0.1 to below; a run whose
    horizon_error exceeds 0.1 warns once, naming probe_horizon."""
    means = []
    for horizon in (2, 6, 20, 60):
        settings = {"probe_every": 120, "probe_window": horizon, "probe_horizon": horizon}
        settings["init_scale"] = 0.5
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            windows = add_run(0.0, 0, 600, **settings)
        errors = [w["metrics"]["horizon_error"] for w in windows[1:]]  # the first has no past
        assert windows[0]["metrics"]["horizon_error"] == 0.0 and len(errors) == 4
        means.append(sum(errors) / len(errors))
        messages = [str(w.message) for w in caught if "horizon_error" in str(w.message)]
        assert len(messages) == (1 if max(errors) > 0.1 else 0), messages
        if messages:
            assert "probe_horizon" in messages[0]
    assert means[0] > means[1] > means[2] > means[3], means
    assert means[0] > 0.1 > means[3], means


@pytest.mark.parametrize("k", [16, 256])
@pytest.mark.parametrize("shadow", ["uoro", "nobacktrack"])
def test_unbiased_estimators_bias_within_three_standard_errors(shadow, k):
    """Frozen theta: the noise-floor-free squared bias is 0 within 3 jackknife standard errors
    in every window (its raw ||mean - g||^2, the old figure, is well above 0)."""
    config = probe.ProbeConfig(every=30, window=20, samples=k, horizon=20)
    _, reports = learn("rtrl", 0.0, 90, config, shadow=shadow)
    assert len(reports) == 3
    for r in reports:
        assert r["bias_se"] > 0.0 and r["variance"] > 1e-3
        assert abs(r["bias_sq"]) <= 3 * r["bias_se"], r
        raw = r["bias_sq"] + r["variance"] / (k - 1)  # ||mean - g||^2 / ||g||^2
        assert raw > 0.0


@pytest.mark.parametrize("k", [16, 256])
@pytest.mark.parametrize("shadow", ["snap1", "rflo"])
def test_biased_estimators_bias_clearly_above_zero(shadow, k):
    config = probe.ProbeConfig(every=30, window=20, samples=k, horizon=20)
    _, reports = learn("rtrl", 0.0, 90, config, shadow=shadow)
    assert len(reports) == 3
    for r in reports:
        assert r["bias_sq"] > 3 * r["bias_se"] and r["bias"] > 0.3, r


def test_squared_bias_and_its_jackknife_standard_error():
    """The closed forms against the definitions: ||mean - g||^2 - tr S / K (S with K - 1) and
    the jackknife over explicit leave-one-out estimates."""
    gen = torch.Generator().manual_seed(5)
    hat = torch.randn(12, 7, generator=gen, dtype=DT) + 0.3
    ref = torch.randn(7, generator=gen, dtype=DT)

    def direct(rows: torch.Tensor) -> float:
        k = rows.shape[0]
        return float((rows.mean(0) - ref).square().sum() - torch.cov(rows.T).trace() / k)

    b2, se = probe.squared_bias(hat, ref)
    assert b2 == pytest.approx(direct(hat), rel=1e-12)
    loo = torch.tensor([direct(torch.cat([hat[:i], hat[i + 1 :]])) for i in range(12)])
    assert se == pytest.approx(float((11 / 12 * (loo - loo.mean()).square().sum()).sqrt()))
    assert probe.squared_bias(hat[:2], ref)[1] != probe.squared_bias(hat[:2], ref)[1]  # NaN


def test_short_truncation_has_more_bias():
    config = probe.ProbeConfig(every=30, window=24, samples=1, horizon=24)
    _, short = learn("rtrl", 0.1, 84, config, shadow="tbptt", hyper={"truncation": 2})
    _, long = learn("rtrl", 0.1, 84, config, shadow="tbptt", hyper={"truncation": 8})
    assert len(short) == len(long) == 3
    for a, b in zip(short, long, strict=True):
        assert a["bias"] > b["bias"] > 0.0


def test_full_run_shadow():
    """staleness_full: in the window that starts with the run it is staleness itself; frozen, it
    is only the truncation beyond 2W (below horizon_error); its mean over windows grows with lr;
    n > 64 is refused."""
    config = probe.ProbeConfig(every=20, window=10, samples=2, horizon=10, full=True)
    means = []
    for lr in (0.0, 0.01, 0.1):
        _, reports = learn("rtrl", lr, 80, config)
        assert len(reports) == 4
        first = reports[0]
        assert first["staleness_full"] == pytest.approx(first["staleness"], rel=1e-9, abs=1e-12)
        means.append(sum(r["staleness_full"] for r in reports[1:]) / 3)
        if lr == 0.0:
            for r in reports[1:]:
                assert r["staleness"] <= 1e-12 and r["staleness_full"] < r["horizon_error"]
    assert means[0] < means[1] < means[2], means
    big = make_cell("tanh", 65, 2)
    with pytest.raises(ValueError, match="probe_full.*hidden 65 > 64"):
        probe.init(config, big, "uoro", {}, "ce", 0, DT, "cpu")


@pytest.mark.parametrize("learner", ["uoro", "tbptt"])
def test_probe_does_not_change_learning(learner):
    config = probe.ProbeConfig(every=10, window=6, samples=8, horizon=6, full=True)
    off, _ = learn(learner, 0.1, 40, None)
    on, reports = learn(learner, 0.1, 40, config, shadow="nobacktrack")
    assert len(reports) == 4
    assert torch.equal(on, off)


@pytest.mark.parametrize("at", [15, 23, 25])  # outside a window, inside, inside (full shadow)
def test_checkpoint_resumes_exactly(at):
    config = probe.ProbeConfig(every=20, window=6, samples=8, horizon=8, full=at == 25)
    losses, reports = learn("uoro", 0.1, 50, config)
    resumed, again = learn("uoro", 0.1, 50, config, checkpoint_at=at)
    assert torch.equal(resumed, losses)
    assert [r["step"] for r in reports] == [8, 28, 48]
    assert again == reports


def test_observing_only_where_wanted_is_the_same():
    config = probe.ProbeConfig(every=20, window=6, samples=8, horizon=8)
    state = probe.init(config, make_cell("tanh", HIDDEN, INPUTS), "uoro", {}, "ce", 0, DT, "cpu")
    assert [t for t in range(40) if state.wants(t)] == [*range(8), *range(12, 28), *range(32, 40)]
    losses, reports = learn("uoro", 0.1, 50, config)
    guarded_losses, guarded_reports = learn("uoro", 0.1, 50, config, guarded=True)
    assert torch.equal(guarded_losses, losses) and guarded_reports == reports


def test_bad_config_and_offline_estimator_rejected():
    with pytest.raises(ValueError, match="window"):
        probe.ProbeConfig(every=5, window=6)
    with pytest.raises(ValueError, match="horizon must be <= every"):
        probe.ProbeConfig(every=5, window=5, horizon=6)
    with pytest.raises(ValueError, match="window must be <= horizon"):
        probe.ProbeConfig(every=10, window=6, horizon=5)
    with pytest.raises(ValueError, match="samples"):
        probe.ProbeConfig(every=5, window=5, samples=0, horizon=5)
    cell = make_cell("tanh", 4, 2)
    config = probe.ProbeConfig(every=5, window=5, horizon=5)
    with pytest.raises(ValueError, match="offline"):
        probe.init(config, cell, "bptt", {}, "ce", 0, DT, "cpu")
    with pytest.raises(ValueError, match="truncation"):
        probe.init(config, cell, "tbptt", {"truncation": 0}, "ce", 0, DT, "cpu")


def test_off_costs_nothing():
    cell = make_cell("tanh", 4, 2)
    state = probe.init(probe.ProbeConfig(), cell, "uoro", {}, "ce", 0, DT, "cpu")
    params = Params(torch.zeros(cell.num_params, dtype=DT), torch.zeros(2, 5, dtype=DT))
    x, s = torch.zeros(2, dtype=DT), torch.zeros(4, dtype=DT)
    assert probe.observe(state, params, s, x, torch.tensor(0), 0) is None
    assert state.last is None and state.ring_y is None
