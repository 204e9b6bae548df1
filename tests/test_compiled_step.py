"""``compile: true``: a lone learner's step as one torch.compile graph computes what the eager
step computes (1e-12 in float64, through a sign chunk's refill and a checkpoint), and where
nothing can be compiled the learner says so and steps eagerly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict

import pytest
import torch

from rnnsweep.algorithms.learner import Learner, LearnerSpec
from rnnsweep.algorithms.population import Population
from rnnsweep.algorithms.trajectory import add_outer_

TOL = 1e-12
STEPS = 600  # past the first sign chunk (256 steps): its refill is a graph of its own


def _spec(estimator: str, compile: bool = True, **settings) -> LearnerSpec:
    settings = {"log_every": 100, "compile": compile, **settings}
    return LearnerSpec("add", estimator, "tanh", 8, seed=3, dtype="float64", settings=settings)


def _gap(a: Learner, b: Learner) -> float:
    return max(float((p - q).abs().max()) for p, q in zip(a.params, b.params, strict=True))


def _reports_gap(a: list[dict], b: list[dict]) -> float:
    assert [r["step"] for r in a] == [r["step"] for r in b]
    return max(
        abs(x[key] - y[key]) / max(1.0, abs(x[key]))
        for x, y in zip(a, b, strict=True)
        for key in ("loss", "grad_norm")
    )


def test_compiled_uoro_adam_equals_eager_through_a_checkpoint():
    settings = {"lr": 3e-3, "lr_decay": 0.1, "beta2": 0.99}
    eager, eager_reports = Learner(_spec("uoro", False, **settings)), []
    eager.run(STEPS, on_report=eager_reports.append)

    first, reports = Learner(_spec("uoro", True, **settings)), []
    first.run(STEPS, on_report=reports.append, should_stop=lambda: first.counters["t"] >= 300)
    assert first.population._compiled is not None  # the compiled path, not a fallback
    snap = first.snapshot()
    second = Learner(_spec("uoro", True, **settings))
    second.restore(snap)
    second.run(STEPS, on_report=reports.append)

    assert second.population._compiled is not None
    assert second.counters["t"] == STEPS and second.counters["updates"] == STEPS
    assert second.population.opt_state.t == eager.population.opt_state.t == STEPS
    assert _reports_gap(eager_reports, reports) <= TOL
    assert _gap(eager, second) <= TOL
    assert abs(eager.summary()["final_loss"] - second.summary()["final_loss"]) <= TOL
    # and the learners moved: a gap of 0 between two frozen learners would prove nothing
    start = Learner(_spec("uoro", False)).params.theta
    assert float((eager.params.theta - start).abs().max()) > 1e-3


@pytest.mark.parametrize(
    ("estimator", "settings"),
    [
        ("snap1", {"optimizer": "sgd", "lr": 0.02}),
        ("rflo", {"lr": 3e-3}),
        ("kf-rtrl", {"lr": 3e-3}),
        ("nobacktrack", {"lr": 3e-3}),
    ],
)
def test_compiled_estimators_equal_eager(estimator, settings):
    """SGD's update, and the one-stream products that ``compiled_step.OPTIONS`` and
    ``add_outer_`` turn into fused loops (matrix-vector and outer products), compute what the
    eager step computes with BLAS."""
    eager = Learner(_spec(estimator, False, **settings))
    compiled = Learner(_spec(estimator, True, **settings))
    eager_reports, reports = [], []
    eager.run(300, on_report=eager_reports.append)
    compiled.run(300, on_report=reports.append)
    assert compiled.population._compiled is not None
    assert _reports_gap(eager_reports, reports) <= TOL
    assert _gap(eager, compiled) <= TOL
    start = Learner(_spec(estimator, False)).params.theta
    assert float((eager.params.theta - start).abs().max()) > 1e-4


@pytest.mark.parametrize("beta", [1.0, 0.25, 0.0])
def test_add_outer_paths_agree(beta):
    """``add_outer_``'s BLAS path (one stream, eager) and its broadcast path (several streams, or
    compiled) agree to 1e-12 in float64; ``beta = 0`` overwrites, as BLAS does."""
    gen = torch.Generator().manual_seed(0)
    acc = torch.randn(3, 5, 7, dtype=torch.float64, generator=gen)
    u = torch.randn(3, 5, dtype=torch.float64, generator=gen)
    v = torch.randn(3, 7, dtype=torch.float64, generator=gen)
    if beta == 0.0:
        acc[0, 0, 0] = float("nan")
    expected = beta * acc + u.unsqueeze(2) * v.unsqueeze(1)
    if beta == 0.0:
        expected = u.unsqueeze(2) * v.unsqueeze(1)
    lone = add_outer_(acc[:1].clone(), u[:1], v[:1], beta)  # baddbmm_
    rows = add_outer_(acc.clone(), u, v, beta)  # broadcast
    compiled = torch.compile(add_outer_, fullgraph=True)(acc[:1].clone(), u[:1], v[:1], beta)
    assert float((lone - expected[:1]).abs().max()) <= TOL
    assert float((rows - expected).abs().max()) <= TOL
    assert float((compiled - expected[:1]).abs().max()) <= TOL


def test_compile_without_a_compiler_warns_and_steps_eagerly(tmp_path):
    """A real failure: Inductor's C++ compiler does not exist, and no cached kernel helps."""
    env = {
        **os.environ,
        "CXX": str(tmp_path / "no-such-compiler"),
        "TORCHINDUCTOR_FORCE_DISABLE_CACHES": "1",
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"),
    }
    summaries = {}
    for compile in (True, False):
        out = tmp_path / f"summary-{compile}.json"
        rnnsweep = os.path.join(os.path.dirname(sys.executable), "rnnsweep")
        command = [
            rnnsweep, "run", "--task", "add", "--estimator", "uoro", "--hidden", "8",
            "--steps", "300", "--dtype", "float64", "--no-mlflow",
            "--summary-json", str(out), "--set", f"compile={str(compile).lower()}",
        ]  # fmt: skip
        done = subprocess.run(
            command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr
        summaries[compile] = json.loads(out.read_text())
        warned = [line for line in done.stderr.splitlines() if "stepping eagerly" in line]
        if compile:
            assert len(warned) == 1, done.stderr
            assert warned[0].startswith("rnnsweep run: warning: compile: ")
        else:
            assert warned == []
    assert summaries[True]["final_loss"] == summaries[False]["final_loss"]
    assert torch.isfinite(torch.tensor(summaries[True]["final_loss"]))


def test_step_cost_compiled_rows_time_the_compiled_learner():
    from rnnsweep.benchmarks import step_cost

    lines: list[str] = []
    (row,) = step_cost.measure_compiled(["uoro"], 8, 1, 20, lines.append)
    assert row["path"] == "learner-compiled" and (row["estimator"], row["hidden"]) == ("uoro", 8)
    assert row["warmup_steps"] == step_cost.COMPILED_WARMUP and row["warmup_s"] > 0
    # each ratio is a median of per-repeat ratios: with one repeat, exactly the quotient
    assert abs(row["ratio_to_forward"] - row["us_per_stream_step"] / row["forward_us"]) < 1e-9
    eager = row["us_per_stream_step"] / row["eager_learner_us"]
    assert abs(row["ratio_to_eager_learner"] - eager) < 1e-9
    alone = row["us_per_stream_step"] / row["compiled_estimator_us"]
    assert abs(row["ratio_to_compiled_estimator"] - alone) < 1e-9
    assert any(line.startswith("compiled learner uoro n=8") for line in lines)


def test_compile_takes_only_lone_single_stream_learners():
    """Where the lone update does not apply, ``compile`` changes nothing: no graph is built."""
    lone = {"compile": True}
    eager_cases = [
        ("uoro", {**lone, "clip": 1.0}),
        ("uoro", {**lone, "update_every": 2}),
        ("uoro", {**lone, "batch": 2}),
        ("uoro-kalman", lone),
    ]
    for estimator, settings in eager_cases:
        learner = Learner(_spec(estimator, **settings))
        assert learner.population._compiled is None, (estimator, settings)
    pack = Population([_spec("uoro", **lone), LearnerSpec(**{**asdict(_spec("uoro")), "seed": 4})])
    assert pack._compiled is None
    assert Learner(_spec("uoro", **lone)).population._compiled is not None
