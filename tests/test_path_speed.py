"""The path-speed benchmark's JSON: both paths timed in one run, the speed-up from their timings."""

from __future__ import annotations

import json
import os

import pytest

from rnnsweep.benchmarks import path_speed


def test_path_speed_json_times_both_paths_of_nobacktrack_on_the_gru(capsys):
    assert path_speed.main(["--quick", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["machine"]["cores"] == os.cpu_count() and out["machine"]["cpu"]
    auto, generic = out["rows"]
    assert (auto["path"], generic["path"]) == ("auto", "generic")
    assert (auto["estimator"], auto["cell"], auto["hidden"]) == ("nobacktrack", "gru", 8)
    assert auto["closed_form"] and not generic["closed_form"]
    assert auto["steps_per_sec"] > 0 and generic["steps_per_sec"] > 0
    # --quick times one repeat: the speed-up is that repeat's ratio of rates
    assert auto["speedup"] == pytest.approx(
        auto["steps_per_sec"] / generic["steps_per_sec"], rel=1e-9
    )
