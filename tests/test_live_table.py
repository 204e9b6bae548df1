"""The live table and ``status`` tell the truth: counts after a resume, the objective named,
parameters in full (differing first), wall time, steps/s and ETAs, and ``status --watch``.
Real sweeps on the session's Ray (``ray_session``) and a real driver subprocess."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

import pytest
import yaml
from ray_processes import kill, ray_processes
from served_process import ServedProcess

from rnnsweep.orchestrator import spec as spec_
from rnnsweep.orchestrator import sweep_store
from rnnsweep.orchestrator.cli import main
from rnnsweep.orchestrator.driver import Driver
from rnnsweep.orchestrator.param_display import format_params, key_order
from rnnsweep.orchestrator.sweep_eta import Remaining, sweep_eta

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 400


def _spec_dict(trials: int = 4, steps: int = STEPS, **overrides) -> dict:
    spec = {
        "name": "t",
        "task": "add",
        "hidden": 8,
        "dtype": "float64",
        "steps": steps,
        "trials": trials,
        "estimators": ["uoro", "tbptt"],
        "fixed": {"log_every": 100},
        "search": {
            "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
            "truncation": {"type": "int", "low": 2, "high": 8, "estimators": ["tbptt"]},
        },
        "pruner": "none",
        "sampler": "random",
        "checkpoint_every": 100,
        "workers": 1,
    }
    spec.update(overrides)
    return spec


def test_sweep_eta_places_the_remaining_work_on_the_workers():
    # two places: the started trial (50 steps at 10/s: 5 s) and a new one (100 steps at the
    # median rate of its estimator, 20/s: 5 s) run side by side, then the last (100 steps at
    # the median of all rates, 15/s: 6.67 s) follows on the first place free
    trials = [
        Remaining(0, 20.0, "b"),  # ended: its rate counts
        Remaining(50, 10.0, "a", started=True),
        Remaining(100, None, "b"),
        Remaining(100),
    ]
    assert sweep_eta(trials, 2) == pytest.approx(5 + 100 / 15)
    assert sweep_eta(trials, 1) == pytest.approx(5 + 5 + 100 / 15)
    assert sweep_eta([Remaining(0, 3.0)], 4) == 0.0
    assert sweep_eta([Remaining(100)], 4) is None  # no rate to estimate from


def test_parameters_that_differ_come_first_in_full():
    params = [
        {"optimizer": "sgd", "lr": 0.0031622776601683794},
        {"optimizer": "sgd", "lr": 0.001, "truncation": 4},
    ]
    order = key_order(params)
    assert order == ["lr", "truncation", "optimizer"]
    assert format_params(params[0], order) == "lr=0.0031622776601683794 optimizer=sgd"
    assert format_params(params[0], order, full=False) == "lr=0.00316 optimizer=sgd"


def _interrupt_at_trial(number: int):
    def hook(event) -> None:
        if event.kind == "asked" and event.number == number:
            raise KeyboardInterrupt

    return hook


def test_resumed_table_counts_earlier_trials_and_status_shows_times(
    ray_session, tmp_path, capsys
):
    spec = spec_.load_spec_dict(_spec_dict())
    first = io.StringIO()
    with pytest.raises(KeyboardInterrupt):  # trials 0 and 1 done, one worker: one at a time
        Driver(spec, str(tmp_path), workers=1, out=first, on_event=_interrupt_at_trial(2)).run()
    out = io.StringIO()  # not a terminal: a line per change, the header line at the ends
    Driver(spec, str(tmp_path), workers=1, out=out).run(resume=True)
    text = out.getvalue()
    study = sweep_store.load_study(sweep_store.read_record(str(tmp_path), "t")[1])
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    header = r"^trials (\d+)/4 finished · best final_loss \(minimize\) (.*)$"
    headers = re.findall(header, text, re.M)
    assert headers, text
    assert headers[0][0] == "2"  # seeded with the two the first driver finished
    assert headers[-1][0] == "4"  # was "2/4" when only this process's trials counted
    best = min(trials, key=lambda t: t.value)
    assert headers[-1][1].startswith(f"{best.value:.4f}, trial {best.number} · sweep ETA 0:00")
    for number in (2, 3):  # the lines of this driver's trials: full values, times
        (line,) = re.findall(rf"^trial {number} \S+ COMPLETE .*$", text, re.M)
        assert f"lr={trials[number].params['lr']!r}" in line
        assert re.search(r"final_loss \d\.\d{4}  wall \d+:\d\d  [\d.]+ steps/s  ETA 0:00", line)

    capsys.readouterr()
    assert main(["status", "t", "--state-dir", str(tmp_path), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["eta_s"] == 0.0
    for row in status["trials"]:
        assert row["steps_done"] == STEPS and row["eta_s"] == 0.0
        assert row["wall_s"] > 0 and row["steps_per_sec"] > 0
        # each ran in one driver, from step 0: rate × wall is its steps
        assert row["steps_per_sec"] * row["wall_s"] == pytest.approx(STEPS, rel=0.01)

    assert main(["status", "t", "--state-dir", str(tmp_path)]) == 0
    plain = capsys.readouterr().out
    assert "objective final_loss (minimize); sweep ETA 0:00" in plain
    for trial in trials:
        assert f"lr={trial.params['lr']!r}" in plain  # in full, never cut

    assert main(["status", "t", "--state-dir", str(tmp_path), "--watch", "--interval", "0.1"]) == 0
    watched = capsys.readouterr().out
    assert len(re.findall(r"^-- \d\d:\d\d:\d\d \(sweep finished\)$", watched, re.M)) == 1
    assert watched.count("sweep t: 4/4 trials") == 1  # printed once, then it ended
    assert main(["status", "t", "--state-dir", str(tmp_path), "--watch", "--json"]) == 0
    (line,) = capsys.readouterr().out.splitlines()  # one JSON object a line, for jq
    assert json.loads(line)["trials"] == status["trials"]


def test_status_watch_refreshes_a_running_sweep(tmp_path):
    spec_path = tmp_path / "spec.yaml"
    # never reached (the driver is killed): 60 s even at a fast machine's 30000 steps/s
    spec_path.write_text(yaml.safe_dump(_spec_dict(trials=2, steps=2_000_000)))
    state_dir = tmp_path / "state"
    temp_root = tempfile.mkdtemp(prefix="rs", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": temp_root}
    env.pop("RAY_ADDRESS", None)
    cli = [sys.executable, "-m", "rnnsweep.orchestrator.cli"]
    launch = subprocess.Popen(
        [*cli, "launch", str(spec_path), "--state-dir", str(state_dir)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    watch = None
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # until a trial of the running sweep has a rate
            assert launch.poll() is None, "the driver ended early"
            time.sleep(0.5)
            if not os.path.exists(sweep_store.record_path(str(state_dir), "t")):
                continue
            _, record = sweep_store.read_record(str(state_dir), "t", creating=True)
            if record["state"] == "creating":
                continue
            trials = sweep_store.load_study(record).get_trials()
            if any("timing" in t.user_attrs for t in trials):
                break
        else:
            pytest.fail("the sweep never recorded a trial's time")
        watch = ServedProcess(
            [*cli, "status", "t", "--state-dir", str(state_dir), "--watch", "--interval", "0.5"],
            cwd=ROOT,
            env=env,
            merge_stderr=True,
        )
        blocks = []
        deadline = time.monotonic() + 120
        while len(blocks) < 2:
            line = watch.next_line(max(0.0, deadline - time.monotonic()), "two blocks")
            if line.startswith("-- "):
                blocks.append(line)
            if line.startswith("    ") and "RUNNING" in line:
                fields = line.split()
                assert float(fields[6]) > 0  # steps/s of a running trial, from its record
        assert all("Ctrl-C stops" in b for b in blocks), blocks
        assert watch.stop(signal.SIGINT, 60) == 0  # Ctrl-C: exit 0
    finally:
        if watch is not None:
            watch.close()
        if launch.poll() is None:
            os.killpg(launch.pid, signal.SIGKILL)
            launch.wait()
        kill(ray_processes(temp_root))


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_table_names_the_objective_and_cuts_shared_params_first():
    from rnnsweep.orchestrator.progress_table import ProgressTable, TrialRow

    out = _Terminal()
    table = ProgressTable(3, out, ("final_bpc", "maximize"), slots=1, steps=100)
    shared = {f"setting_{i}": "x" for i in range(6)}  # longer than the column
    for number, (lr, value) in enumerate([(0.5, 1.0), (0.25, 2.0)]):
        row = TrialRow(number, "uoro", {**shared, "lr": lr}, 100, step=100, state="COMPLETE")
        row.value = value
        table.update(row)
    table.draw(force=True)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("trials 2/3 finished · best final_bpc (maximize) 2.0000, trial 1")
    assert "final_bpc" in lines[1].split()
    assert "lr=0.5 setting_0=x" in lines[2] and "…" in lines[2]  # differing key first
    assert "2.0000*" in lines[3]  # the best, by the objective's direction


def test_a_continuation_stands_for_the_trial_it_continues():
    """extend --steps: trial 2 continues trial 0; the header counts 2 trials, as `status`
    does, and the best is taken over the rows that stand (0's old-budget value left)."""
    from rnnsweep.orchestrator.progress_table import ProgressTable, TrialRow

    table = ProgressTable(2, stream=io.StringIO(), objective=("final_loss", "minimize"))
    table.seed(
        [
            TrialRow(0, "uoro", {"lr": 1e-3}, 1000, step=1000, state="COMPLETE", value=0.50),
            TrialRow(1, "tbptt", {"lr": 1e-3}, 1000, step=1000, state="COMPLETE", value=0.60),
        ]
    )
    assert table.header(0.0).startswith("trials 2/2 finished · best final_loss (minimize) 0.5000")
    table.update(TrialRow(2, "uoro", {"lr": 1e-3}, 1500, step=1000, continues=0), True)
    assert sorted(table.rows) == [1, 2]
    assert table.header(0.0).startswith("trials 1/2 finished · best final_loss (minimize) 0.6000")
    done = TrialRow(2, "uoro", {"lr": 1e-3}, 1500, step=1500, state="COMPLETE", value=0.55)
    done.continues = 0
    table.update(done, True)
    assert table.header(0.0).startswith("trials 2/2 finished · best final_loss (minimize) 0.5500")
