"""``rnnsweep run``: summary JSON, MLflow run with stepped metrics, resume, bad input."""

from __future__ import annotations

import json
import os

import pytest

from rnnsweep.orchestrator.cli import main

BASE = ["run", "--task", "add", "--estimator", "uoro", "--hidden", "8", "--dtype", "float64"]


def _mlflow_client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def test_run_without_mlflow_writes_summary(tmp_path, capsys):
    out = tmp_path / "summary.json"
    code = main(
        BASE
        + [
            "--steps",
            "600",
            "--set",
            "log_every=100",
            "lr=0.01",
            "--no-mlflow",
            "--summary-json",
            str(out),
        ]
    )
    assert code == 0
    summary = json.loads(out.read_text())
    for key in (
        "final_loss",
        "steps",
        "steps_per_sec",
        "diverged",
        "reason",
    ):
        assert key in summary
    assert not any(key.startswith(("bias", "staleness")) for key in summary)  # no probe
    assert summary["steps"] == 600 and summary["diverged"] is False
    assert 0.3 < summary["final_loss"] < 2.0
    assert "final loss" in capsys.readouterr().err


def test_run_records_mlflow_run_with_stepped_metrics(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ck = tmp_path / "ck.pt"
    out = tmp_path / "summary.json"
    code = main(
        BASE
        + [
            "--steps",
            "900",
            "--set",
            "log_every=100",
            "probe_every=200",
            "probe_window=50",
            "probe_samples=8",
            "probe_horizon=50",
            "--tracking-uri",
            uri,
            "--checkpoint",
            str(ck),
            "--summary-json",
            str(out),
        ]
    )
    assert code == 0
    summary = json.loads(out.read_text())
    client = _mlflow_client(uri)
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["estimator"] == "uoro" and run.data.params["probe_every"] == "200"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
    assert sorted(steps) == list(range(100, 1000, 100))
    for key in ("steps_per_sec", "grad_norm"):
        assert client.get_metric_history(run.info.run_id, key), key
    # Each probe window logged once, at its own step (its end), never repeated between windows.
    for key in ("bias", "bias_se", "variance", "cosine", "staleness", "horizon_error"):
        history = client.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in history) == [50, 250, 450, 650, 850], key
    staleness = client.get_metric_history(run.info.run_id, "staleness")
    values = [m.value for m in sorted(staleness, key=lambda m: m.step)]
    assert summary["staleness_last"] == pytest.approx(values[-1])
    assert summary["staleness_max"] == pytest.approx(max(values))
    assert summary["staleness_mean"] == pytest.approx(sum(values) / 5)
    assert summary["probe_windows"] == 5
    from rnnsweep.algorithms.learner import load_checkpoint

    assert load_checkpoint(str(ck)).counters["t"] == 900


def test_resume_continues_same_mlflow_run_bit_for_bit(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ck = tmp_path / "ck.pt"
    from rnnsweep.algorithms.learner import Learner, LearnerSpec, save_checkpoint
    from rnnsweep.orchestrator.tracking import Tracker

    # Simulate a crash after step 400: checkpoint at 400, metrics logged up to 500.
    spec = LearnerSpec(
        "add", "uoro", "tanh", 8, seed=0, dtype="float64", settings={"log_every": 100}
    )
    learner = Learner(spec)
    tracker = Tracker(uri, "rnnsweep-runs", run_name="crashed")
    learner.run(
        1000,
        on_report=lambda r: tracker.log_metrics(r["step"], r),
        should_stop=lambda: learner.counters["t"] >= 400,
    )
    save_checkpoint(learner, str(ck), {"mlflow_run_id": tracker.run_id})
    learner.run(
        1000,
        on_report=lambda r: tracker.log_metrics(r["step"], r),
        should_stop=lambda: learner.counters["t"] >= 500,
    )
    tracker.close("FAILED")

    out = tmp_path / "resumed.json"
    assert (
        main(["run", "--resume", str(ck), "--tracking-uri", uri, "--summary-json", str(out)]) == 0
    )
    summary = json.loads(out.read_text())
    assert summary["mlflow_run_id"] == tracker.run_id and summary["steps"] == 1000
    steps = [m.step for m in _mlflow_client(uri).get_metric_history(tracker.run_id, "loss")]
    assert sorted(steps) == list(range(100, 1100, 100))  # none missing, none twice

    straight = Learner(spec).run(1000)
    assert summary["final_loss"] == straight["final_loss"]


def test_bad_set_key_exits_2_before_any_work(tmp_path, capsys):
    state = tmp_path / "state"
    code = main(BASE + ["--set", "lrr=0.1", "--state-dir", str(state)])
    assert code == 2
    assert "unknown setting 'lrr'" in capsys.readouterr().err
    assert not os.path.exists(state)


@pytest.mark.parametrize(
    "pair,message",
    [
        ("lr", "expects key=value"),
        ("truncation=3", "setting 'truncation' applies only to tbptt, not to uoro"),
    ],
)
def test_set_syntax_errors(pair, message, capsys):
    assert main(BASE + ["--no-mlflow", "--set", pair]) == 2
    assert message in capsys.readouterr().err


def test_corrupt_checkpoint_is_refused(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_text("garbage")
    assert main(["run", "--resume", str(bad), "--no-mlflow"]) == 2
    assert "corrupt or not a checkpoint" in capsys.readouterr().err


def test_set_values_are_yaml_scalars_with_exponents_as_numbers():
    from rnnsweep.orchestrator.run_command import parse_sets

    assert parse_sets(
        [
            "process_noise=1e-4",
            "lr=0.01",
            "truncation=8",
            "optimizer=sgd",
            "clip=2E1",
            "labels=soft",
        ]
    ) == {
        "process_noise": 1e-4,
        "lr": 0.01,
        "truncation": 8,
        "optimizer": "sgd",
        "clip": 20.0,
        "labels": "soft",
    }


def _step_of(path) -> int:
    from rnnsweep.algorithms.checkpoint_file import read_header

    return read_header(path.read_bytes(), str(path)).step


def test_resume_keeps_its_own_checkpoint_up_to_date(tmp_path):
    """``--resume CK`` without ``--checkpoint`` writes CK again: a second extension (or a
    Ctrl-C) continues from where the first ended, not from the first checkpoint."""
    ck = tmp_path / "ck.pt"
    assert main(BASE + ["--steps", "300", "--no-mlflow", "--checkpoint", str(ck)]) == 0
    assert _step_of(ck) == 300
    assert main(["run", "--resume", str(ck), "--steps", "600", "--no-mlflow"]) == 0
    assert _step_of(ck) == 600
    out = tmp_path / "s.json"
    assert main(["run", "--resume", str(ck), "--steps", "900", "--no-mlflow",
                 "--summary-json", str(out)]) == 0
    assert _step_of(ck) == 900 and json.loads(out.read_text())["steps"] == 900


def test_new_values_on_an_outrun_checkpoint_are_refused(tmp_path, capsys):
    """A copy of a checkpoint whose MLflow run a later continuation took further cannot take
    ``--set`` values: the run would hold two trajectories. Without new values it continues the
    same trajectory, whose steps the run already has."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ck, old = tmp_path / "ck.pt", tmp_path / "old.pt"
    track = ["--tracking-uri", uri]
    assert main(BASE + ["--steps", "300", "--set", "log_every=100", "--checkpoint", str(ck)]
                + track) == 0
    old.write_bytes(ck.read_bytes())
    assert main(["run", "--resume", str(ck), "--steps", "600"] + track) == 0
    capsys.readouterr()
    assert main(["run", "--resume", str(old), "--steps", "600", "--set", "lr=0.003"]
                + track) == 2
    err = capsys.readouterr().err
    assert "already holds steps up to 600, past this checkpoint's step 300" in err
    assert _step_of(old) == 300  # nothing written
    assert main(["run", "--resume", str(old), "--steps", "600"] + track) == 0


@pytest.mark.parametrize("flag", ["--summary-json", "--checkpoint"])
def test_an_output_path_that_is_a_folder_exits_2_before_any_work(tmp_path, capsys, flag):
    folder = tmp_path / "adir"
    folder.mkdir()
    state = tmp_path / "state"
    assert main(BASE + ["--steps", "200", flag, str(folder), "--state-dir", str(state)]) == 2
    assert f"{flag} {folder}: is a folder" in capsys.readouterr().err
    assert not state.exists() and list(folder.iterdir()) == []  # no MLflow run, no file


def test_best_and_compare_check_their_output_before_any_work(tmp_path, capsys):
    folder, existing = tmp_path / "adir", tmp_path / "existing.txt"
    folder.mkdir()
    existing.write_text("{}")
    state = tmp_path / "state"
    assert main(["best", "nosuch", "-o", str(folder), "--state-dir", str(state)]) == 2
    assert f"-o {folder}: is a folder" in capsys.readouterr().err
    compare = ["compare", "--task", "add", "--estimators", "uoro,rtrl", "--hidden", "4",
               "--steps", "200", "--out", str(existing), "--state-dir", str(state)]
    assert main(compare) == 2
    assert f"--out {existing}: exists and is not a folder" in capsys.readouterr().err
    assert not state.exists() and existing.read_text() == "{}"


def test_resume_refuses_what_contradicts_the_checkpoint(tmp_path, capsys):
    ck = tmp_path / "ck.pt"
    assert main(BASE + ["--steps", "100", "--no-mlflow", "--checkpoint", str(ck)]) == 0
    for extra, message in (
        (["--hidden", "16"], "--hidden 16 contradicts the checkpoint"),
        (["--seed", "5"], "--seed 5 contradicts the checkpoint"),
        (["--dtype", "float32"], "--dtype float32 contradicts the checkpoint"),
        (["--config", str(ck)], "a checkpoint holds its run's settings; give one of them"),
    ):
        capsys.readouterr()
        assert main(["run", "--resume", str(ck), "--steps", "200", "--no-mlflow"] + extra) == 2
        assert message in capsys.readouterr().err
    assert _step_of(ck) == 100


def test_resume_continues_on_this_device_whatever_the_checkpoint_says(tmp_path):
    """A checkpoint written on a GPU machine records ``device: cuda``; here it continues on the
    CPU (its tensors are read onto the CPU), as the same run."""
    from rnnsweep.algorithms import checkpoint_file

    ck, moved = tmp_path / "ck.pt", tmp_path / "cuda.pt"
    assert main(BASE + ["--steps", "100", "--no-mlflow", "--checkpoint", str(ck)]) == 0
    saved = checkpoint_file.read(str(ck))
    saved.snapshot["spec"]["device"] = "cuda"
    moved.write_bytes(checkpoint_file.encode(saved.snapshot, saved.extra))
    out = tmp_path / "s.json"
    assert main(["run", "--resume", str(moved), "--steps", "200", "--no-mlflow",
                 "--summary-json", str(out)]) == 0
    assert json.loads(out.read_text())["steps"] == 200


def test_resume_against_a_store_without_its_run_creates_nothing(tmp_path, capsys):
    ck = tmp_path / "ck.pt"
    first = tmp_path / "first"
    assert main(BASE + ["--steps", "100", "--checkpoint", str(ck), "--state-dir", str(first)]) == 0
    other = tmp_path / "other"
    capsys.readouterr()
    assert main(["run", "--resume", str(ck), "--steps", "200", "--state-dir", str(other)]) == 2
    err = capsys.readouterr().err
    assert "its MLflow run" in err and "is not in sqlite:///" in err and "--no-mlflow" in err
    assert not other.exists() and _step_of(ck) == 100
    other.mkdir()  # an existing store without the run: the same, and it stays as it was
    uri = f"sqlite:///{tmp_path / 'empty.db'}"
    from rnnsweep.orchestrator.tracking import client

    client(uri).search_experiments()
    assert main(["run", "--resume", str(ck), "--steps", "200", "--tracking-uri", uri]) == 2
    assert "is not in" in capsys.readouterr().err and _step_of(ck) == 100


@pytest.mark.parametrize(
    "uri,message",
    [
        ("ftp://x/y", "is unusable"),
        ("file:///tmp/mlruns", "is a file store, which MLflow 3 refuses"),
    ],
)
def test_an_unusable_tracking_uri_exits_2_before_any_work(tmp_path, capsys, uri, message):
    state = tmp_path / "state"
    assert main(BASE + ["--steps", "100", "--tracking-uri", uri, "--state-dir", str(state)]) == 2
    assert message in capsys.readouterr().err
    assert not state.exists()


def test_a_state_dir_that_is_a_file_exits_2(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("")
    assert main(BASE + ["--steps", "100", "--state-dir", str(afile)]) == 2
    assert f"--state-dir {afile}: exists and is not a folder" in capsys.readouterr().err


def test_a_size_beyond_memory_is_one_line_naming_it(capsys):
    # rtrl's influence [n, P] at n = 100,000: 320 GB, refused by the allocator at once
    run = ["run", "--task", "add", "--estimator", "rtrl", "--hidden", "100000"]
    code = main(run + ["--steps", "10", "--no-mlflow"])
    assert code == 74
    err = capsys.readouterr().err
    assert err.startswith("rnnsweep run: error: out of memory (") and "allocate" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "body,message",
    [
        ("steps: abc", "setting 'steps' must be an integer >= 1, got 'abc'"),
        ("steps: 200.5", "setting 'steps' must be an integer >= 1, got 200.5"),
        ("steps: true", "setting 'steps' must be an integer >= 1, got True"),
        ("steps: 0", "setting 'steps' must be >= 1, got 0"),
        ("settings: [lr, 0.1]", "settings must be a mapping of setting names to values"),
        ("settings: {5: 0.1}", "settings must be a mapping of setting names to values"),
        ("stepz: 3", "unknown key 'stepz' (did you mean 'steps'?)"),
        ("hidden: 0", "setting 'hidden' must be >= 1, got 0"),
    ],
)
def test_a_run_file_of_bad_values_is_refused_naming_it(tmp_path, capsys, body, message):
    config = tmp_path / "cfg.yaml"
    config.write_text(f"task: add\nestimator: uoro\n{body}\n")
    state = tmp_path / "state"
    assert main(["run", "--config", str(config), "--state-dir", str(state)]) == 2
    err = capsys.readouterr().err
    assert f"--config {config}: {message}" in err and len(err.strip().splitlines()) == 1
    assert not state.exists()  # no MLflow run


def test_own_warnings_are_one_line_and_a_finished_run_shows_no_eta_left(tmp_path):
    """In a real process (pytest captures warnings in its own): the probe's horizon warning
    prints as ``rnnsweep run: warning: ...``, not Python's two-line format with the source."""
    import subprocess
    import sys

    argv = [sys.executable, "-m", "rnnsweep.orchestrator.cli"] + BASE + [
        "--steps", "2000", "--probe-every", "1000", "--set", "probe_horizon=3",
        "probe_window=3", "--no-mlflow",
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    warned = [line for line in lines if "horizon_error" in line]
    assert len(warned) == 1 and warned[0].startswith("rnnsweep run: warning: probe: horizon_error")
    assert "RuntimeWarning" not in done.stderr and "probe.py" not in done.stderr
    last = [line for line in lines if "2000/2000" in line][-1]
    assert last.endswith("ETA 0:00")


def test_a_tracking_server_nobody_listens_at_is_refused_at_once(tmp_path, capsys):
    import socket
    import time

    with socket.socket() as probe:  # a port nothing listens at once this closes
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    state = tmp_path / "state"
    start = time.monotonic()
    uri = f"http://127.0.0.1:{port}"
    assert main(BASE + ["--steps", "10", "--tracking-uri", uri, "--state-dir", str(state)]) == 2
    assert time.monotonic() - start < 30  # MLflow's own client retries for minutes
    assert f"MLflow tracking URI '{uri}' is unreachable" in capsys.readouterr().err
    assert not state.exists()
