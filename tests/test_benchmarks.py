"""The step-cost benchmark's JSON rows: the documented fields, ratios from their own timings."""

from __future__ import annotations

import json

import pytest

from rnnsweep.benchmarks import step_cost


def test_step_cost_json_has_learner_rows_against_their_estimator(capsys):
    assert step_cost.main(["--quick", "--json", "--no-generic"]) == 0
    out = json.loads(capsys.readouterr().out)
    learner = [r for r in out["rows"] if r["path"] == "learner"]
    assert [(r["estimator"], r["hidden"], r["batch"]) for r in learner] == [("uoro", 32, 1)]
    (row,) = learner
    # --quick times one repeat: each ratio is that repeat's timings divided.
    assert row["ratio_to_estimator"] == pytest.approx(
        row["us_per_stream_step"] / row["estimator_us"], rel=1e-9
    )
    assert row["ratio_to_forward"] == pytest.approx(
        row["us_per_stream_step"] / row["forward_us"], rel=1e-9
    )
    closed = {(r["estimator"], r["batch"]) for r in out["rows"] if r["path"] == "closed-form"}
    assert {(name, b) for name in step_cost.CLOSED_FORM for b in (1, 4)} == closed
