"""``rnnsweep compare``: passive estimators on one driven trajectory, their alignment with g*
and with each other, the figures and their MLflow artifacts, and bad input."""

from __future__ import annotations

import os
import shlex

import pytest
import torch

from rnnsweep.algorithms import alignment, rank_one_stack
from rnnsweep.algorithms.cell import make_cell
from rnnsweep.algorithms.estimator import start
from rnnsweep.algorithms.learner import Learner, LearnerSpec
from rnnsweep.algorithms.params import Params, init_params
from rnnsweep.algorithms.signs import stream_seeds
from rnnsweep.orchestrator import cli

ALL = ["rtrl", "uoro", "nobacktrack", "kf-rtrl", "snap1", "rflo", "tbptt"]
PNG = b"\x89PNG\r\n\x1a\n"


def _spec(drive: str, **settings) -> LearnerSpec:
    return LearnerSpec(
        task="add", estimator=drive, hidden=8, dtype="float64",
        settings={"lr": 1e-2, "log_every": 50, **settings},
    )


def _compare(drive: str, names: list[str], every: int = 50):
    learner = Learner(_spec(drive))
    state = alignment.init(learner, names, {}, alignment.AlignmentConfig(every, every))
    alignment.attach(learner, state)
    return learner, state


def test_passives_follow_the_driver_bit_for_bit():
    """The passives' parameters are the driven learner's at every step, and the driven
    learner's trajectory is that of the same learner run alone (the passives change nothing)."""
    steps = 120
    alone = Learner(_spec("uoro"))
    lone_theta: list[torch.Tensor] = []
    lone_step = alone.step

    def record_alone():
        lone_theta.append(alone.params.theta.clone())  # theta_t, before step t's update
        return lone_step()

    alone.step = record_alone
    alone.run(steps)

    learner, state = _compare("uoro", ALL)
    seen, driver, states = [], [], []
    step = learner.step

    def record():
        driver.append(learner.params.theta.clone())
        loss = step()
        seen.append(state.params.theta.clone())  # what every passive stepped with at step t
        h = learner.population.est_state.traj.state
        for g in state.groups:  # each passive's own s_t, from the driver's s_{t-1}
            mine = g.state.traj.state[: h.shape[0]]
            # the stacked rank-one rows take one batched product: equal to rounding
            states.append(torch.equal(mine, h) if g.estimator else (mine - h).abs().max() < 1e-15)
        return loss

    learner.step = record
    learner.run(steps)
    assert len(seen) == len(lone_theta) == steps
    assert all(torch.equal(a, b) for a, b in zip(driver, lone_theta, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(seen, lone_theta, strict=True))
    assert not torch.equal(lone_theta[0], lone_theta[-1])  # the parameters did move
    assert all(states)
    assert torch.equal(learner.params.theta, alone.params.theta)


def test_rtrl_aligns_with_g_star_and_rank_one_estimators_do_not():
    learner, state = _compare("uoro", ["rtrl", "uoro", "nobacktrack", "tbptt"])
    learner.run(300)
    assert len(state.reports) == 6
    for report in state.reports:
        assert abs(report["cosine"]["rtrl"] - 1.0) <= 1e-10
    means = alignment.summarize(state.reports, state.names)["mean_cosine"]
    assert means["uoro"] < means["rtrl"] - 0.1
    assert means["nobacktrack"] < means["rtrl"] - 0.1


def test_matrix_is_symmetric_with_ones_on_the_diagonal():
    learner, state = _compare("rtrl", ALL, every=25)
    learner.run(100)
    assert len(state.reports) == 4
    for m in [torch.tensor(r["matrix"]) for r in state.reports] + [
        torch.tensor(alignment.summarize(state.reports, ALL)["mean_matrix"])
    ]:
        assert m.shape == (len(ALL), len(ALL))
        assert torch.allclose(m, m.T, rtol=0, atol=1e-12)
        assert torch.allclose(m.diagonal(), torch.ones(len(ALL), dtype=m.dtype), atol=1e-12)
        assert m.abs().max() <= 1.0
        assert (m - torch.eye(len(ALL), dtype=m.dtype)).abs().max() > 0.05  # not the identity


def test_stacked_rank_one_equals_each_estimator_alone():
    """uoro and nobacktrack stacked in one state step as each does alone."""
    cell = make_cell("tanh", 6, 2)
    gen = torch.Generator().manual_seed(3)
    params = init_params(cell, 2, gen, torch.float64)
    batch = 3
    seeds = [stream_seeds(11, batch), stream_seeds(12, batch)]
    stack = rank_one_stack.init(cell, params, "ce", batch, ["uoro", "nobacktrack"], seeds, {})
    alone = [start(n, cell, params, "ce", batch, seeds=s) for n, s in zip(
        ["uoro", "nobacktrack"], seeds, strict=True)]
    s_prev = torch.zeros(batch, 6, dtype=torch.float64)
    for _ in range(40):
        x = torch.randn(batch, 2, generator=gen, dtype=torch.float64)
        y = torch.randint(0, 2, (batch,), generator=gen)
        grads = rank_one_stack.step(params, stack, s_prev, x, y)
        for (est, st), g in zip(alone, grads, strict=True):
            expected = est.step(params, st, x, y).grad.theta
            assert torch.allclose(g, expected, rtol=1e-12, atol=1e-14)
        s_prev = alone[0][1].traj.state.clone()
        assert torch.allclose(stack.traj.state[:batch], s_prev, rtol=0, atol=1e-15)


def test_rank_one_estimators_share_one_batched_state():
    learner, state = _compare("rtrl", ALL)
    assert [g.names for g in state.groups][0] == ["uoro", "nobacktrack"]
    assert state.groups[0].estimator is None
    assert sum(len(g.names) for g in state.groups) == len(ALL)


def _mlflow_client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def test_cli_writes_figures_and_logs_them_to_mlflow(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "figures"
    code = cli.main([
        "compare", "--task", "add", "--estimators", "rtrl,uoro,nobacktrack,tbptt",
        "--drive", "uoro", "--hidden", "8", "--steps", "150", "--probe-every", "50",
        "--tracking-uri", uri, "--out", str(out),
    ])
    assert code == 0
    for name in ("alignment_matrix.png", "cosine_over_time.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000
    client = _mlflow_client(uri)
    experiment = client.get_experiment_by_name("rnnsweep-compare")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["drive"] == "uoro"
    logged = {os.path.basename(a.path): a.file_size for a in client.list_artifacts(
        run.info.run_id, "compare")}
    assert set(logged) == {"alignment_matrix.png", "cosine_over_time.png", "alignment.json"}
    assert logged["alignment_matrix.png"] == (out / "alignment_matrix.png").stat().st_size
    history = client.get_metric_history(run.info.run_id, "cosine_gstar/rtrl")
    assert [m.step for m in history] == [49, 99, 149]
    assert all(abs(m.value - 1.0) <= 1e-10 for m in history)
    pair = client.get_metric_history(run.info.run_id, "pairwise/uoro/nobacktrack")
    assert len(pair) == 3
    assert "mean over 3 windows" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--estimators", "rtrl,uoroo"], "unknown estimator 'uoroo' (did you mean 'uoro'?)"),
        (["--estimators", "uoro"], "at least two estimators, got one (uoro)"),
        (["--estimators", "rtrl,uoro", "--task", "ad"], "unknown task 'ad' (did you mean 'add'?)"),
        (["--estimators", "rtrl,uoro", "--drive", "tbptt"], "--drive 'tbptt' is not among"),
        (["--estimators", "rtrl,bptt"], "estimator 'bptt' is offline"),
        (["--estimators", "rtrl,rflo", "--cell", "gru"], "estimator 'rflo' cannot run here"),
        (["--estimators", "rtrl,uoro", "--set", "truncation=4"], "--set truncation applies to"),
        (["--estimators", "rtrl,uoro", "--window", "200"], "--window must be in [1,"),
        (["--estimators", "uoro,rtrl", "--set", "optimizer=kalman"], "not the Kalman filter"),
        (["--estimators", "nobacktrack-kalman,uoro"], "is a Kalman learning rule"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    tmp_path, monkeypatch, capsys, argv, message
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RNNSWEEP_STATE_DIR", raising=False)
    base = ["compare", "--task", "add", "--hidden", "4", "--steps", "200", "--out", "out"]
    code = cli.main(base + argv)
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("rnnsweep compare: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert os.listdir(tmp_path) == []


def _examples() -> list[str]:
    epilog = cli.COMPARE_EXAMPLES
    return [line.strip() for line in epilog.splitlines() if line.strip().startswith("rnnsweep ")]


def test_help_examples_run_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RNNSWEEP_STATE_DIR", raising=False)
    examples = _examples()
    assert len(examples) == 3
    for line in examples:
        argv = shlex.split(line)[1:]
        assert cli.main(argv) == 0, line
        out = argv[argv.index("--out") + 1]
        assert (tmp_path / out / "alignment_matrix.png").read_bytes().startswith(PNG)
    assert capsys.readouterr().out.count("mean over") == 3


def test_params_are_the_passives_own_copy():
    learner, state = _compare("rtrl", ["rtrl", "uoro"])
    assert isinstance(state.params, Params)
    assert state.params.theta.data_ptr() != learner.params.theta.data_ptr()
