"""Sweeps end to end on a real local Ray instance, real SQLite/PostgreSQL and MLflow stores:
completion, actor faults, divergence, a driver killed with SIGKILL then resumed, bad specs."""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time

import pytest
import yaml
from driver_process import rnnsweep_process
from frozen_workers import freeze_when, send, trial_states
from log_chunks import ONE_LOG_CHUNK
from ray_processes import kill, ray_processes, wait_until_gone

from rnnsweep.algorithms.learner import Learner
from rnnsweep.orchestrator import spec as spec_
from rnnsweep.orchestrator import sweep_store
from rnnsweep.orchestrator.cli import main
from rnnsweep.orchestrator.driver import Driver

STEPS, LOG_EVERY = 1200, 100


def _spec_dict(name="t", trials=3, **overrides):
    spec = {
        "name": name,
        "task": "add",
        "hidden": 8,
        "dtype": "float64",
        "steps": STEPS,
        "trials": trials,
        "estimators": ["uoro", "tbptt"],
        "fixed": {"log_every": LOG_EVERY},
        "search": {
            "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
            "truncation": {"type": "int", "low": 2, "high": 8, "estimators": ["tbptt"]},
        },
        "pruner": "none",
        "sampler": "random",
        "checkpoint_every": 300,
        "max_retries": 1,
        "workers": 2,
    }
    spec.update(overrides)
    return spec


def _mlflow(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _plain_value(spec, trial):
    """The trial's objective computed in this process, without Ray, Optuna or MLflow.

    Compared to 1e-9: MKL's matrix products may sum in another order in another process
    (memory alignment), which long runs amplify from 1e-16 to about 1e-11; within one
    process a restored learner is bit-for-bit (tests/test_learner.py)."""
    learner_spec = spec_.learner_spec(
        spec,
        trial.user_attrs["estimator"],
        trial.user_attrs["settings"],
        trial.user_attrs["seed"],
    )
    return pytest.approx(Learner(learner_spec).run(spec.steps)["final_loss"], rel=1e-9)


def _check_sweep(spec, state_dir):
    """Every trial once in Optuna, one MLflow child run each with every step exactly once."""
    _, record = sweep_store.read_record(state_dir, spec.name)
    study = sweep_store.load_study(record)
    trials = study.get_trials()
    assert len(trials) == spec.trials
    client = _mlflow(record["tracking_uri"])
    children = client.search_runs(
        [record["mlflow_experiment_id"]],
        f"tags.mlflow.parentRunId = '{record['mlflow_parent_run_id']}'",
    )
    assert len(children) == spec.trials
    by_number = {int(r.data.tags["optuna_trial_number"]): r for r in children}
    for trial in trials:
        run = by_number[trial.number]
        assert trial.user_attrs["mlflow_run_id"] == run.info.run_id
        if trial.state.name == "COMPLETE":
            steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
            assert sorted(steps) == list(range(LOG_EVERY, spec.steps + 1, LOG_EVERY)), steps
    return study, trials


def test_sweep_completes_with_mlflow_children(ray_session, storage_url, tmp_path):
    spec = spec_.load_spec_dict(_spec_dict(storage={"optuna": storage_url}))
    summary = Driver(spec, str(tmp_path), workers=2).run()
    study, trials = _check_sweep(spec, str(tmp_path))
    assert summary["states"] == {"COMPLETE": 3}
    assert study.user_attrs == {}  # the sweep's metadata lives in its record alone
    for trial in trials:
        assert trial.value == _plain_value(spec, trial)  # through Ray, Optuna and MLflow
    _, record = sweep_store.read_record(str(tmp_path), spec.name)
    parent = _mlflow(record["tracking_uri"]).get_run(record["mlflow_parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["rnnsweep.sweep"] == "t"




class ActorKiller:
    """A driver hook: kills the actor of trial 0 after each of its checkpoints before the end,
    ``kills`` times (a real fault: the actor's process dies)."""

    def __init__(self, kills: int = 1) -> None:
        self.kills = kills

    def __call__(self, event) -> None:
        if event.kind == "checkpoint" and event.number == 0 and event.step < STEPS:
            if self.kills > 0 and event.actor is not None:
                self.kills -= 1
                _kill_and_wait(event.actor)


def _kill_and_wait(actor, seconds: float = 60.0) -> None:
    """``ray.kill`` lands asynchronously; under load the trial could otherwise run on to its
    end first. The hook runs in the driver's thread, so no new chunk starts meanwhile."""
    import ray

    ray.kill(actor)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            ray.get(actor.pid.remote(), timeout=seconds)
        except ray.exceptions.RayActorError:
            return
        time.sleep(0.02)
    raise AssertionError("the killed actor is still alive")


def _packed_spec(**overrides):
    return _spec_dict(
        estimators=["uoro"],
        search={"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
        pack=3,
        **overrides,
    )


def test_packed_sweep_equals_plain_runs(ray_session, tmp_path):
    spec = spec_.load_spec_dict(_packed_spec(trials=5, workers=2))
    summary = Driver(spec, str(tmp_path), workers=2).run()
    study, trials = _check_sweep(spec, str(tmp_path))
    assert summary["states"] == {"COMPLETE": 5}
    packs = {tuple(t.user_attrs["pack"]) for t in trials}
    assert (0, 1, 2) in packs and all(len(p) <= 3 for p in packs)
    for trial in trials:
        assert trial.value == _plain_value(spec, trial)  # each member, as if run alone


def _pruning_trial_1():
    """An Optuna pruner that prunes trial 1 at its first report."""
    import optuna

    class PruneTrial1(optuna.pruners.BasePruner):
        def prune(self, study, trial) -> bool:
            return trial.number == 1

    return PruneTrial1()


def test_pruned_member_leaves_the_rest_of_its_pack_undisturbed(ray_session, tmp_path):
    spec = spec_.load_spec_dict(_packed_spec(trials=3, workers=1))
    driver = Driver(
        spec, str(tmp_path), workers=1, chunk_seconds=ONE_LOG_CHUNK, pruner=_pruning_trial_1()
    )
    summary = driver.run()
    assert summary["states"] == {"COMPLETE": 2, "PRUNED": 1}
    study, trials = _check_sweep(spec, str(tmp_path))
    assert [t.user_attrs["pack"] for t in trials] == [[0, 1, 2]] * 3
    pruned = trials[1]
    assert pruned.state.name == "PRUNED" and pruned.user_attrs["steps_done"] < STEPS
    _, record = sweep_store.read_record(str(tmp_path), "t")
    history = _mlflow(record["tracking_uri"]).get_metric_history(
        pruned.user_attrs["mlflow_run_id"], "loss"
    )
    assert max(m.step for m in history) == pruned.user_attrs["steps_done"]
    # its last loss and the step it was pruned at, in Optuna and in MLflow
    step = pruned.user_attrs["pruned_at_step"]
    assert step == pruned.last_step == pruned.user_attrs["steps_done"]
    assert pruned.value == pruned.intermediate_values[step]
    run = _mlflow(record["tracking_uri"]).get_run(pruned.user_attrs["mlflow_run_id"])
    assert run.data.metrics["pruned_loss"] == pruned.value
    assert run.data.metrics["pruned_at_step"] == step
    for trial in (trials[0], trials[2]):
        assert trial.value == _plain_value(spec, trial)


def test_killed_pack_restarts_all_its_members_from_checkpoints(ray_session, tmp_path):
    spec = spec_.load_spec_dict(_packed_spec(trials=3, workers=1))
    killer = ActorKiller()
    Driver(spec, str(tmp_path), workers=1, chunk_seconds=ONE_LOG_CHUNK, on_event=killer).run()
    assert killer.kills == 0
    study, trials = _check_sweep(spec, str(tmp_path))
    for trial in trials:
        assert trial.state.name == "COMPLETE" and trial.user_attrs["retries"] == 1
        assert trial.user_attrs["pack"] == [0, 1, 2]
        assert trial.value == _plain_value(spec, trial)


def test_killed_actor_restarts_from_checkpoint(ray_session, tmp_path):
    spec = spec_.load_spec_dict(_spec_dict(trials=2))
    killer = ActorKiller()
    Driver(spec, str(tmp_path), workers=2, chunk_seconds=ONE_LOG_CHUNK, on_event=killer).run()
    assert killer.kills == 0
    study, trials = _check_sweep(spec, str(tmp_path))
    first = study.trials[0]
    assert first.state.name == "COMPLETE" and first.user_attrs["retries"] == 1
    assert first.value == _plain_value(spec, first)


def test_actor_dying_past_max_retries_fails_the_trial_and_the_sweep_goes_on(ray_session, tmp_path):
    spec = spec_.load_spec_dict(_spec_dict(trials=3, max_retries=1))
    killer = ActorKiller(kills=5)
    driver = Driver(spec, str(tmp_path), workers=2, chunk_seconds=ONE_LOG_CHUNK, on_event=killer)
    summary = driver.run()
    study, trials = _check_sweep(spec, str(tmp_path))
    first = study.trials[0]
    assert first.state.name == "FAIL"
    assert "actor died 2 times (max_retries 1)" in first.user_attrs["fail_reason"]
    assert summary["states"]["COMPLETE"] == 2


def test_diverging_trial_fails_with_its_reason_without_retry(ray_session, tmp_path):
    spec = spec_.load_spec_dict(
        _spec_dict(
            task="influence-balancing",
            estimators=["tbptt"],
            trials=1,
            steps=3000,
            hidden=23,
            dtype="float32",  # overflows within a thousand steps
            fixed={
                "log_every": 100,
                "truncation": 1,
                "optimizer": "sgd",
                "lr": 0.1,
                "lr_decay": 0.0,
                "clip": 0.0,
            },
            search={},
        )
    )
    summary = Driver(spec, str(tmp_path), workers=1).run()
    trial = sweep_store.load_study(sweep_store.read_record(str(tmp_path), "t")[1]).trials[0]
    assert summary["states"] == {"FAIL": 1}
    assert trial.user_attrs["fail_reason"].startswith("diverged: non-finite")
    assert "retries" not in trial.user_attrs


def _launch_subprocess(spec_path, state_dir, temp_root):
    return rnnsweep_process(["launch", str(spec_path), "--state-dir", str(state_dir)], temp_root)


def test_driver_killed_mid_sweep_then_resumed(ray_session, storage_url, tmp_path):
    spec_dict = _spec_dict(
        trials=4,
        steps=12000,
        storage={"optuna": storage_url},
        fixed={"log_every": LOG_EVERY, "optimizer": "sgd"},
    )
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec_dict))
    state_dir = tmp_path / "state"
    temp_root = tempfile.mkdtemp(prefix="rs", dir="/tmp")
    proc = _launch_subprocess(spec_path, state_dir, temp_root)

    def one_done_one_checkpointed() -> bool:
        states = trial_states(str(state_dir))
        return any(s == "COMPLETE" for s, _ in states) and any(
            s == "RUNNING" and step > 0 for s, step in states
        )

    try:
        # frozen there (SIGSTOP), so that the sweep cannot end first on a fast machine
        workers = freeze_when(
            proc, temp_root, one_done_one_checkpointed, "a complete and a checkpointed trial"
        )
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        send(workers, signal.SIGKILL)  # its Ray goes with it
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)

    spec = spec_.load_spec_dict(spec_dict)
    try:
        assert main(["resume", "t", "--state-dir", str(state_dir)]) == 0
        study, trials = _check_sweep(spec, str(state_dir))
    finally:
        kill(ray_processes(temp_root))
    assert all(t.state.name == "COMPLETE" for t in trials)
    for trial in trials:
        assert trial.value == _plain_value(spec, trial)


def test_normal_exit_leaves_no_ray_process(tmp_path):
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(_spec_dict(trials=2, workers=1)))
    temp_root = tempfile.mkdtemp(prefix="rs", dir="/tmp")
    proc = _launch_subprocess(spec_path, tmp_path / "state", temp_root)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out
    assert wait_until_gone(temp_root, 10.0) == []


def test_bad_spec_exits_2_and_creates_nothing(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(_spec_dict(trails=3)))
    state = tmp_path / "state"
    assert main(["launch", str(bad), "--state-dir", str(state)]) == 2
    assert "trails" in capsys.readouterr().err
    assert not state.exists()
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(_spec_dict()))
    assert main(["launch", str(good), "--dry-run", "--state-dir", str(state)]) == 0
    assert "truncation" in capsys.readouterr().out
    assert not state.exists()


def test_status_best_and_run_back(ray_session, tmp_path, capsys):
    spec = spec_.load_spec_dict(_spec_dict(trials=2))
    Driver(spec, str(tmp_path), workers=2).run()
    capsys.readouterr()
    assert main(["status", "t", "--state-dir", str(tmp_path), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["name"] == "t" and len(status["trials"]) == 2
    for row in status["trials"]:
        assert row["state"] == "COMPLETE" and row["steps_done"] == STEPS
        assert row["estimator"] in ("uoro", "tbptt") and row["mlflow_run_id"]
        assert set(row) == {
            "number",
            "state",
            "estimator",
            "params",
            "value",
            "steps_done",
            "wall_s",
            "steps_per_sec",
            "eta_s",
            "mlflow_run_id",
            "ray_node_id",
            "ray_node_ip",
            "continues",  # None: no trial was continued (extend --steps)
        }
        assert len(row["ray_node_id"]) == 56 and row["ray_node_ip"]  # where it ran (hex id)
        assert row["continues"] is None
    best_file = tmp_path / "best.yaml"
    assert main(["best", "t", "--state-dir", str(tmp_path), "-o", str(best_file)]) == 0
    best = next(b for b in yaml.safe_load(best_file.read_text())["best"] if "run" in b)
    out = tmp_path / "again.json"
    assert (
        main(
            [
                "run",
                "--config",
                str(best_file),
                "--estimator",
                best["estimator"],
                "--no-mlflow",
                "--summary-json",
                str(out),
            ]
        )
        == 0
    )
    # the sweep's trial ran as a pack of one: the lone learner's numbers up to reassociation
    assert json.loads(out.read_text())["final_loss"] == pytest.approx(best["value"], rel=1e-9)
    assert main(["status", "nope", "--state-dir", str(tmp_path)]) == 2
    assert "no sweep named 'nope'" in capsys.readouterr().err


class Interrupter:
    """A driver hook: stops the sweep (as Ctrl-C would) once every running trial has a
    checkpoint past step 0."""

    def __init__(self) -> None:
        self.checkpointed: set[int] = set()

    def __call__(self, event) -> None:
        if event.kind == "checkpoint":
            self.checkpointed.add(event.number)
            if event.running and event.running <= self.checkpointed:
                raise KeyboardInterrupt


def test_interrupted_packed_sweep_resumes_in_packs_from_checkpoints(ray_session, tmp_path):
    spec = spec_.load_spec_dict(_packed_spec(trials=3, workers=1))
    with pytest.raises(KeyboardInterrupt):
        Driver(
            spec, str(tmp_path), workers=1, chunk_seconds=ONE_LOG_CHUNK, on_event=Interrupter()
        ).run()
    study = sweep_store.load_study(sweep_store.read_record(str(tmp_path), "t")[1])
    left = [t for t in study.get_trials() if t.state.name == "RUNNING"]
    assert len(left) == 3 and all(0 < t.user_attrs["checkpoint_step"] < STEPS for t in left)
    Driver(spec, str(tmp_path), workers=1).run(resume=True)
    study, trials = _check_sweep(spec, str(tmp_path))  # every metric step exactly once
    for trial in trials:
        assert trial.state.name == "COMPLETE" and trial.user_attrs["pack"] == [0, 1, 2]
        assert trial.value == _plain_value(spec, trial)


def test_a_failed_start_leaves_the_actor_without_a_pack(tmp_path):
    """Reused actors: the previous pack must not be advanced in the failed one's place."""
    from dataclasses import asdict

    from rnnsweep.algorithms import checkpoint_file
    from rnnsweep.algorithms.learner import LearnerSpec
    from rnnsweep.orchestrator.actors import LearnerHost
    from rnnsweep.orchestrator.stores import checkpoint_step

    class Host(LearnerHost):
        def device(self):
            return "cpu"

    spec = asdict(LearnerSpec("add", "uoro", hidden=8, seed=1, settings={"log_every": 50}))
    host = Host(1)
    host.start([(0, spec, None), (1, {**spec, "seed": 2}, None)], 400, 100)
    result = host.advance(0.05)
    assert set(result["members"]) == {0, 1}
    snapshot = host.population.snapshots([0])[0]
    data = checkpoint_file.encode(snapshot)
    assert checkpoint_step(data) == snapshot["counters"]["t"] > 0
    assert checkpoint_step(None) == 0
    fresh = {**spec, "seed": 3}
    with pytest.raises(ValueError, match="same step"):  # one at its step, one fresh
        host.start([(5, spec, data), (6, fresh, None)], 400, 100)
    with pytest.raises(RuntimeError, match=r"advance\(\) before start\(\)"):
        host.advance(0.05)


def _dying_at(kind: str, number: int):
    """A driver hook: the driver is interrupted at event ``kind`` of trial ``number``."""

    def hook(event) -> None:
        if event.kind == kind and event.number == number:
            raise KeyboardInterrupt

    return hook


def test_resume_after_a_kill_inside_begin_keeps_one_run_per_trial(ray_session, tmp_path):
    search = {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}
    spec = spec_.load_spec_dict(_spec_dict(trials=3, workers=1, estimators=["uoro"], search=search))
    with pytest.raises(KeyboardInterrupt):  # trial 1: MLflow run open, its id not recorded
        Driver(spec, str(tmp_path), workers=1, on_event=_dying_at("run_opened", 1)).run()
    second = Driver(spec, str(tmp_path), workers=1, on_event=_dying_at("asked", 2))
    with pytest.raises(KeyboardInterrupt):  # trial 2: asked, nothing recorded
        second.run(resume=True)
    Driver(spec, str(tmp_path), workers=1).run(resume=True)
    study, trials = _check_sweep(spec, str(tmp_path))  # one MLflow child per trial
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    for trial in trials:
        assert trial.value == _plain_value(spec, trial)


def test_resume_after_a_kill_between_a_trials_attributes(ray_session, tmp_path):
    """A driver killed between writing a trial's ``estimator`` and its ``settings`` (one
    storage transaction each) leaves the first alone: resume suggests the settings again."""
    import optuna

    search = {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}
    spec = spec_.load_spec_dict(_spec_dict(trials=2, workers=1, estimators=["uoro"], search=search))
    with pytest.raises(KeyboardInterrupt):  # trial 1: asked, nothing recorded yet
        Driver(spec, str(tmp_path), workers=1, on_event=_dying_at("asked", 1)).run()
    study = sweep_store.load_study(sweep_store.read_record(str(tmp_path), "t")[1])
    (running,) = [t for t in study.get_trials() if t.state.name == "RUNNING"]
    optuna.trial.Trial(study, running._trial_id).set_user_attr("estimator", "uoro")
    Driver(spec, str(tmp_path), workers=1).run(resume=True)
    study, trials = _check_sweep(spec, str(tmp_path))
    assert [t.state.name for t in trials] == ["COMPLETE"] * 2
    assert trials[1].user_attrs["settings"]["lr"] == trials[1].params["lr"]
    assert trials[1].user_attrs["seed"] == spec.seed + 1
    for trial in trials:
        assert trial.value == _plain_value(spec, trial)


class Payload:
    """Unpickled by anything but a weights-only loader, it creates the file ``marker``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _rewrapped(data: bytes, body_change=None, **header_change) -> bytes:
    """A checkpoint file's bytes with its body and/or header fields changed (and its payload's
    checksum kept valid): the documented layout of ``checkpoint_file``."""
    import hashlib
    import io
    import struct

    import torch

    from rnnsweep.algorithms import checkpoint_file

    header = checkpoint_file.read_header(data, "test")
    payload = data[header.payload_start :]
    if body_change is not None:
        body = torch.load(io.BytesIO(payload), weights_only=True)
        body_change(body)
        buffer = io.BytesIO()
        torch.save(body, buffer)
        payload = buffer.getvalue()
    fields = {
        "format": header.format,
        "step": header.step,
        "payload_bytes": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
        **header_change,
    }
    text = json.dumps(fields).encode()
    return checkpoint_file.MAGIC + struct.pack("<I", len(text)) + text + payload


def test_a_refused_checkpoint_fails_only_its_trial_on_resume(ray_session, tmp_path):
    spec = spec_.load_spec_dict(
        _spec_dict(
            trials=5,
            workers=1,
            pack=4,
            estimators=["uoro"],
            search={"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
        )
    )
    with pytest.raises(KeyboardInterrupt):
        Driver(
            spec, str(tmp_path), workers=1, chunk_seconds=ONE_LOG_CHUNK, on_event=Interrupter()
        ).run()
    study = sweep_store.load_study(sweep_store.read_record(str(tmp_path), "t")[1])
    assert [t.state.name for t in study.get_trials()] == ["RUNNING"] * 4
    path = {n: sweep_store.checkpoint_path(str(tmp_path), "t", n) for n in range(4)}
    data = {n: open(path[n], "rb").read() for n in range(4)}
    marker = tmp_path / "pwned"
    with open(path[1], "wb") as handle:  # truncated: caught by the driver (length, checksum)
        handle.write(data[1][: len(data[1]) // 2])
    with open(path[2], "wb") as handle:  # another format version: caught by the driver
        handle.write(_rewrapped(data[2], format=3))
    with open(path[3], "wb") as handle:  # a valid header around pickled code: by the actor
        handle.write(
            _rewrapped(data[3], lambda body: body.update(last_probe={"p": Payload(str(marker))}))
        )

    summary = Driver(spec, str(tmp_path), workers=1).run(resume=True)
    study, trials = _check_sweep(spec, str(tmp_path))
    assert summary["states"] == {"COMPLETE": 2, "FAIL": 3}
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "FAIL", "FAIL", "COMPLETE"]
    reasons = {t.number: t.user_attrs["fail_reason"] for t in trials if t.state.name == "FAIL"}
    assert reasons[1].startswith(f"checkpoint {path[1]!r} of trial 1 is truncated: ")
    assert reasons[2].startswith(f"checkpoint {path[2]!r} of trial 2 has format version 3; ")
    assert reasons[3].startswith(f"checkpoint {path[3]!r} of trial 3 holds pickled objects")
    assert not marker.exists()
    _, record = sweep_store.read_record(str(tmp_path), "t")
    client = _mlflow(record["tracking_uri"])
    for number, reason in reasons.items():
        run = client.get_run(trials[number].user_attrs["mlflow_run_id"])
        assert run.info.status == "FAILED" and run.data.tags["reason"] == reason
        assert run.data.tags["optuna_state"] == "FAIL"
    for trial in (trials[0], trials[4]):  # the others went on, as if never interrupted
        assert trial.value == _plain_value(spec, trial)


def test_a_second_driver_of_a_running_sweep_is_refused(ray_session, tmp_path, capsys):
    import socket

    from rnnsweep.orchestrator.sweep_lease import SweepLease

    spec = spec_.load_spec_dict(_spec_dict(trials=1, workers=1))
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(_spec_dict(trials=1, workers=1)))
    url = sweep_store.default_optuna_url(str(tmp_path))
    holder = SweepLease(url, "t", timeout=60.0)
    assert holder.acquire() == ""  # as a running driver (this live process) holds it
    try:
        assert main(["launch", str(spec_path), "--state-dir", str(tmp_path)]) == 3
        err = capsys.readouterr().err
        who = f"pid {os.getpid()} on {socket.gethostname()}"
        assert f"error: sweep 't' is being driven by {who} (heartbeat " in err
        assert not os.path.exists(sweep_store.record_path(str(tmp_path), "t"))  # nothing made
    finally:
        holder.release()
    assert Driver(spec, str(tmp_path), workers=1).run()["states"] == {"COMPLETE": 1}
    after = SweepLease(url, "t", timeout=60.0)
    assert after.acquire() == ""  # the finished driver released it: no takeover
    after.release()
