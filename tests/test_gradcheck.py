"""The gradcheck command: its report, its verdicts and its exit status."""

from __future__ import annotations

import dataclasses
import json

import pytest

from rnnsweep.algorithms import uoro
from rnnsweep.algorithms.estimator import ESTIMATORS, StepResult, get_estimator
from rnnsweep.algorithms.gradcheck import gradcheck
from rnnsweep.orchestrator.cli import main


@pytest.mark.slow
def test_json_report_tanh_all_claims_hold(capsys):
    code = main(["gradcheck", "--steps", "30", "--hidden", "16", "--samples", "4096", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["passed"] is True
    assert report["cell"] == "tanh"
    estimators = report["estimators"]
    assert {"rtrl", "tbptt", "uoro", "nobacktrack", "kf-rtrl", "snap1", "rflo"} <= set(estimators)
    for name in ("rtrl", "tbptt"):
        assert estimators[name]["exact"] and estimators[name]["rel_error"] <= 1e-9
        assert estimators[name]["cosine"] == pytest.approx(1.0, abs=1e-12)
    for name in ("uoro", "nobacktrack", "kf-rtrl"):
        r = estimators[name]
        assert r["unbiased"] and not r["exact"] and r["judged"]
        assert r["rel_error"] <= 4 * r["std_error"] and r["std_error"] < 0.5
        assert r["rel_variance"] > 0
    for name in ("snap1", "rflo"):
        assert not estimators[name]["judged"] and estimators[name]["rel_error"] > 1e-3
    keys = {"rel_error", "std_error", "rel_variance", "cosine", "exact", "unbiased", "passed"}
    assert all(keys <= set(r) for r in estimators.values())


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_exact_estimators_on_gated_cells(cell):
    report = gradcheck(cell, hidden=6, steps=20, samples=2, estimators=["rtrl", "tbptt"])
    for r in report["estimators"].values():
        assert r["exact"] and r["passed"] and r["rel_error"] <= 1e-9


@pytest.mark.slow
def test_gru_rank_one_unbiased():
    report = gradcheck("gru", hidden=16, steps=30, samples=4096, estimators=["uoro"])
    r = report["estimators"]["uoro"]
    assert r["passed"] and r["rel_error"] <= 4 * r["std_error"] < 2.0


def test_short_truncation_is_reported_as_biased():
    report = gradcheck("tanh", hidden=8, steps=30, samples=2, estimators=["tbptt"], truncation=3)
    r = report["estimators"]["tbptt"]
    assert not r["exact"] and not r["judged"] and r["rel_error"] > 1e-3


def test_a_biased_estimator_claiming_unbiasedness_fails(monkeypatch, capsys):
    """The judge can fail: UORO with its recurrent gradient tripled is biased."""

    def biased_step(params, state, x, y):
        result = uoro.step(params, state, x, y)
        grad = result.grad._replace(theta=result.grad.theta * 3.0)
        return StepResult(result.loss, result.output, grad)

    fake = dataclasses.replace(get_estimator("uoro"), name="uoro-scaled", step=biased_step)
    monkeypatch.setitem(ESTIMATORS, "uoro-scaled", fake)
    code = main(["gradcheck", "--estimators", "uoro-scaled,rtrl", "--samples", "4096"])
    out = capsys.readouterr().out
    assert code == 1
    assert "uoro-scaled" in out and "FAIL" in out and "SOME CLAIMS FAIL" in out


def test_bad_arguments_exit_2_naming_the_problem(capsys):
    assert main(["gradcheck", "--estimators", "uoro,bogus"]) == 2
    assert "unknown estimator 'bogus'" in capsys.readouterr().err
    assert main(["gradcheck", "--device", "tpu"]) == 2
    assert "unknown device 'tpu'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["gradcheck", "--steps", "0"])
    assert exit_info.value.code == 2
    assert "expected an integer >= 1, got 0" in capsys.readouterr().err

