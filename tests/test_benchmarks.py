"""The step-cost benchmark's JSON rows: the documented fields, ratios from their own timings."""

from __future__ import annotations

import json
import os

import pytest

from rnnsweep.benchmarks import step_cost


def test_step_cost_json_has_learner_rows_against_their_estimator(capsys):
    assert step_cost.main(["--quick", "--json", "--no-generic"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["machine"]["cores"] == os.cpu_count() and out["machine"]["threads"] == 1
    assert out["machine"]["cpu"]
    learner = [r for r in out["rows"] if r["path"] == "learner"]
    assert [(r["estimator"], r["hidden"], r["batch"]) for r in learner] == [
        (name, 64, 1) for name in ("uoro", "nobacktrack", "snap1", "rflo", "kf-rtrl")
    ]
    for row in learner:
        # --quick times one repeat: each ratio is that repeat's timings divided.
        assert row["ratio_to_estimator"] == pytest.approx(
            row["us_per_stream_step"] / row["estimator_us"], rel=1e-9
        )
        assert row["ratio_to_forward"] == pytest.approx(
            row["us_per_stream_step"] / row["forward_us"], rel=1e-9
        )
        assert row["ratio_to_own_estimator"] == pytest.approx(
            row["us_per_stream_step"] / row["own_estimator_us"], rel=1e-9
        )
        # the update's cost after the estimator: the pair's time less the estimator's
        assert row["update_us"] > 0
        assert row["update_after_estimator_us"] == pytest.approx(
            row["own_estimator_then_update_us"] - row["own_estimator_us"], rel=1e-9, abs=1e-9
        )
    # every learner row is judged against issue 14's bounds, beside its own ratio, and uoro's
    # overhead also against issue 10's
    verdicts: dict[tuple[str, str], list[dict]] = {}
    for t in out["targets"]:
        if t["hidden"] == 64 and t["batch"] == 1 and not t["compiled"]:
            verdicts.setdefault((t["estimator"], t["against"]), []).append(t)
    bounds = {"uoro": 4.5, "nobacktrack": 4.5, "snap1": 3.0, "rflo": 3.0, "kf-rtrl": 4.0}
    for row in learner:
        name = row["estimator"]
        [fwd], own = verdicts[(name, "forward")], verdicts[(name, "estimator")]
        assert fwd["bound"] == bounds[name]
        assert [t["bound"] for t in own] == ([1.10, 1.15] if name == "uoro" else [1.10])
        assert fwd["ratio"] == row["ratio_to_forward"]
        assert fwd["met"] == (row["ratio_to_forward"] <= bounds[name])
        for t in own:
            assert t["ratio"] == row["ratio_to_estimator"]
            assert t["met"] == (row["ratio_to_estimator"] <= t["bound"])
    closed = {(r["estimator"], r["batch"]) for r in out["rows"] if r["path"] == "closed-form"}
    assert {(name, b) for name in step_cost.CLOSED_FORM for b in (1, 4)} == closed

    # memory at n=128, B=64: w [64, 128, 131] float32 is the influence state's bulk
    memory = {r["estimator"]: r for r in out["rows"] if r["path"] == "memory"}
    assert set(memory) == {"uoro", "nobacktrack"}
    for name, row in memory.items():
        assert row["influence_bytes"] >= 64 * 128 * 131 * 4
        assert row["optimizer_bytes"] == 2 * row["parameters_bytes"]  # Adam's m and v
        state = row["parameters_bytes"] + row["influence_bytes"] + row["optimizer_bytes"]
        assert row["held_bytes"] >= state and row["transient_bytes"] > 0
        assert row["peak_bytes"] == row["held_bytes"] + row["transient_bytes"]
        assert row["ratio_to_state"] == pytest.approx(row["peak_bytes"] / state, rel=1e-12)
        verdict = [t for t in out["targets"] if (t["estimator"], t["against"]) == (name, "state")]
        assert verdict and verdict[0]["bound"] == 1.3
        assert verdict[0]["met"] == (row["ratio_to_state"] <= 1.3)


def test_step_cost_learner_only_prints_the_machine_and_each_bound(capsys):
    assert step_cost.main(["--quick", "--learner-only"]) == 0
    out = capsys.readouterr().out
    assert f"{os.cpu_count()} cores, 1 thread(s)" in out
    rows = [line for line in out.splitlines() if line.startswith(("uoro ", "rflo "))]
    lines = {line.split()[0]: line for line in rows}
    assert "(4.5x)" in lines["uoro"] and "(1.1x)" in lines["uoro"]
    assert "(  3x)" in lines["rflo"]
    assert "x pass" not in out  # no estimator grid


def test_variance_json_rows_hold_both_estimators_their_ratio_and_the_spread(capsys):
    from rnnsweep.benchmarks import variance

    assert variance.main(["--quick", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["machine"]["cores"] == os.cpu_count() and out["machine"]["threads"] == 1
    assert out["machine"]["cpu"]
    rows = out["rows"]
    assert [(r["cell"], r["hidden"], r["scale"]) for r in rows] == variance.QUICK_CONFIGS
    for r in rows:
        assert r["uoro_rel_variance"] > 0 and r["nobacktrack_rel_variance"] > 0
        assert r["ratio"] == pytest.approx(
            r["nobacktrack_rel_variance"] / r["uoro_rel_variance"], rel=1e-12
        )
        states = r["hidden"] * (2 if r["cell"] == "lstm" else 1)
        assert 1 / states <= r["spread_H"] <= 1 + 1e-12
        assert r["predicted_step_ratio"] == pytest.approx(
            (states * r["spread_H"] - 1) / (states - 1), rel=1e-12
        )
        # both are unbiased: gradcheck's verdict holds at K=64 too
        assert r["uoro_passed"] and r["nobacktrack_passed"]


def test_spread_is_one_for_equal_rows_and_the_active_fraction_for_saturated_units():
    """H = (sum a)^2 / (S sum a^2): 1 when every unit's row norm is equal, k/S when k of S
    units are equally active and the rest saturated (a = 0)."""
    from rnnsweep.benchmarks.variance import spread

    h = spread("tanh", 8, 5, 0, 1e-8)  # tiny weights: every d_k ~ 1, every ||z|| shared
    assert h == pytest.approx(1.0, abs=1e-6)
    saturated = spread("tanh", 32, 10, 0, 6.0)  # large weights: many d_k ~ 0
    assert saturated < 0.8


def test_sweep_overhead_phases_come_from_the_launch_lines():
    from rnnsweep.benchmarks import sweep_overhead

    lines = [
        (1.5, "launching sweep 'overhead': 4 trials, 1 worker(s); state in /tmp/x\n"),
        (4.0, "trial 0 uoro QUEUED  step 0/3000\n"),
        (4.25, "trial 0 uoro RUNNING  step 0/3000  wall 0:00\n"),
        (9.0, "trial 0 uoro COMPLETE  step 3000/3000  final_loss 0.6\n"),
        (12.0, "trial 1 uoro FAIL  step 10/3000  error: boom\n"),
        (12.5, "trials 2/2 finished · best final_loss (minimize) 0.6, trial 0\n"),
        (13.0, "sweep 'overhead' done: 1 complete, 1 failed\n"),
    ]
    phases = sweep_overhead.phases(lines, elapsed=14.5)
    assert phases == {
        "launching_s": 1.5,
        "first_trial_s": 4.25,
        "last_trial_end_s": 12.0,
        "exit_after_last_trial_s": 2.5,
    }
