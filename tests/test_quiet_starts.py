"""Quiet, quick starts: Ray's token authentication set up once (no warning on any launch, one
line the first time, the token file 0600 and never in the output or the sweep's files);
``resume`` of a finished sweep, ``status``, ``best`` and ``report`` without importing Ray; no
Ray process left behind. Two real tiny launches, in subprocesses with a private HOME and
RAY_TMPDIR, made once for the module."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile

import pytest
import yaml
from ray_processes import kill, ray_processes, wait_until_gone

from rnnsweep.orchestrator import local_ray, metric_journal, sweep_store
from rnnsweep.orchestrator.finished_sweep import nothing_to_resume

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WARNING = "Token authentication is enabled for this Ray cluster"
SETUP = "set up Ray token authentication for local sweeps:"
RAY_AUTH = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS")


def _spec(name: str) -> dict:
    return {
        "name": name,
        "task": "add",
        "hidden": 4,
        "dtype": "float64",
        "steps": 200,
        "trials": 2,
        "workers": 1,
        "estimators": ["uoro"],
        "fixed": {"log_every": 50},
        "search": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
        "pruner": "none",
        "sampler": "random",
        "checkpoint_every": 100,
    }


def _token_digest(path: str) -> str:
    with open(path, "rb") as handle:  # compared as digests: a failure never shows the token
        return hashlib.sha256(handle.read()).hexdigest()


@pytest.fixture(scope="module")
def launches(tmp_path_factory):
    """Two launches in a row (sweeps ``qa`` then ``qb``, one state dir), each a fresh driver
    process: their outputs, the Ray processes left 10 s after each, the token's digest after
    each, and the paths."""
    tmp = tmp_path_factory.mktemp("quiet")
    home, state = tmp / "home", tmp / "state"
    home.mkdir()
    temp_root = tempfile.mkdtemp(prefix="rq", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if k not in RAY_AUTH}
    env.update(HOME=str(home), RAY_TMPDIR=temp_root, RAY_USAGE_STATS_ENABLED="0")
    token = home / ".ray" / "auth_token"
    found = {"home": str(home), "state": str(state), "token": str(token), "temp_root": temp_root}
    try:
        for name in ("qa", "qb"):
            (tmp / f"{name}.yaml").write_text(yaml.safe_dump(_spec(name)))
            done = subprocess.run(
                [sys.executable, "-m", "rnnsweep.orchestrator.cli", "launch"]
                + [str(tmp / f"{name}.yaml"), "--state-dir", str(state)],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=400,
            )
            assert done.returncode == 0, done.stdout
            found[name] = {
                "out": done.stdout,
                "left": wait_until_gone(temp_root, 10.0),
                "token": _token_digest(str(token)) if token.exists() else None,
            }
        yield found
    finally:
        kill(ray_processes(temp_root))
        shutil.rmtree(temp_root, ignore_errors=True)


def test_ray_token_is_set_up_once_quietly(launches):
    first, second = launches["qa"]["out"], launches["qb"]["out"]
    assert WARNING not in first and WARNING not in second
    assert "RAY_AUTH_MODE=disabled" not in first + second
    setup = [line for line in first.splitlines() if line.startswith(SETUP)]
    assert setup == [f"{SETUP} {launches['token']} (mode 0600)"]
    assert SETUP not in second
    mode = stat.S_IMODE(os.stat(launches["token"]).st_mode)
    assert mode == 0o600, oct(mode)
    # the second launch used the token the first made (Ray generated none of its own)
    assert launches["qa"]["token"] is not None
    assert launches["qb"]["token"] == launches["qa"]["token"]


def test_ray_token_is_in_no_output_and_no_sweep_file(launches):
    with open(launches["token"], "rb") as handle:
        token = handle.read().strip()
    assert len(token) == 64
    leaked = [name for name in ("qa", "qb") if token.decode() in launches[name]["out"]]
    for folder, _, files in os.walk(launches["state"]):
        for file in files:
            with open(os.path.join(folder, file), "rb") as handle:
                if token in handle.read():
                    leaked.append(os.path.join(folder, file))
    assert leaked == []


def test_launches_leave_no_ray_process(launches):
    assert launches["qa"]["left"] == [] and launches["qb"]["left"] == []


def _in_subprocess(launches, commands: list[list[str]]) -> list[dict]:
    """Run each CLI command in turn in one fresh interpreter; after each: its exit status and
    whether ray (and torch, mlflow) were imported by then."""
    script = (
        "import json, sys\n"
        "from rnnsweep.orchestrator.cli import main\n"
        "for argv in json.loads(sys.argv[1]):\n"
        "    rc = main(argv)\n"
        "    print('RESULT ' + json.dumps({'argv': argv, 'rc': rc,"
        " 'ray': 'ray' in sys.modules, 'mlflow': 'mlflow' in sys.modules}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in RAY_AUTH}
    env.update(HOME=launches["home"], RAY_TMPDIR=launches["temp_root"])
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps(commands)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    results = [json.loads(line[7:]) for line in lines if line.startswith("RESULT ")]
    assert len(results) == len(commands), done.stdout + done.stderr
    return results + [{"stderr": done.stderr}]


def test_resume_of_a_finished_sweep_answers_without_ray(launches):
    *results, out = _in_subprocess(launches, [["resume", "qa", "--state-dir", launches["state"]]])
    assert [(r["rc"], r["ray"], r["mlflow"]) for r in results] == [(0, False, False)]
    assert "sweep 'qa' is finished (2 complete): nothing to resume" in out["stderr"]
    assert WARNING not in out["stderr"] and SETUP not in out["stderr"]
    assert wait_until_gone(launches["temp_root"], 10.0) == []


def test_status_best_report_never_import_ray(launches, tmp_path):
    state = launches["state"]
    commands = [
        ["status", "qa", "--state-dir", state],
        ["status", "qa", "--json", "--state-dir", state],
        ["best", "qa", "--state-dir", state],
        ["report", "qa", "--out", str(tmp_path / "report"), "--state-dir", state],
    ]
    *results, _ = _in_subprocess(launches, commands)
    assert [(r["argv"][0], r["rc"], r["ray"]) for r in results] == [
        ("status", 0, False),
        ("status", 0, False),
        ("best", 0, False),
        ("report", 0, False),
    ]


def _copy_state(launches, tmp_path) -> tuple[str, dict]:
    """A copy of the launches' state dir and sweep ``qa``'s record pointing at it."""
    state = str(tmp_path / "state")
    shutil.copytree(launches["state"], state)
    _, record = sweep_store.read_record(state, "qa")
    record["optuna_storage"] = sweep_store.default_optuna_url(state)
    return state, record


def _sql(state: str, statement: str) -> None:
    with sqlite3.connect(os.path.join(state, "optuna.db")) as connection:
        connection.execute(statement)


def test_anything_left_to_do_goes_to_the_driver(launches, tmp_path):
    """``nothing_to_resume`` answers only a clean finish: each way a sweep can be unfinished
    (on real copies of the finished sweep's SQLite database) leaves it to the driver."""
    state, record = _copy_state(launches, tmp_path)
    assert nothing_to_resume(state, record) == {"COMPLETE": 2}
    assert nothing_to_resume(state, {**record, "spec": {**record["spec"], "trials": 3}}) is None
    assert nothing_to_resume(state, {**record, "state": "creating"}) is None
    journal = metric_journal.directory(state, "qa")
    os.makedirs(journal)
    open(metric_journal.path(journal, "somerun"), "w").close()
    assert nothing_to_resume(state, record) is None
    os.remove(metric_journal.path(journal, "somerun"))
    _sql(state, "UPDATE rnnsweep_lease SET token = 'abc' WHERE sweep = 'qa'")  # a killed driver
    assert nothing_to_resume(state, record) is None
    _sql(state, "UPDATE rnnsweep_lease SET token = '' WHERE sweep = 'qa'")
    _sql(state, "UPDATE trials SET state = 'RUNNING' WHERE number = 1")
    assert nothing_to_resume(state, record) is None
    _sql(state, "UPDATE trials SET state = 'PRUNED' WHERE number = 1")
    assert nothing_to_resume(state, record) == {"COMPLETE": 1, "PRUNED": 1}
    _sql(state, "DROP TABLE rnnsweep_lease")  # a sweep no lease-taking driver ever ran
    assert nothing_to_resume(state, record) is None


def test_an_existing_readable_token_is_narrowed_once(tmp_path):
    path = tmp_path / ".ray" / "auth_token"
    path.parent.mkdir()
    path.write_text("f" * 64)
    path.chmod(0o644)
    said = local_ray.secure_token_file(str(path))
    assert said == f"{SETUP} {path} (mode 0600); it was readable by others (mode 0644)"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_text() == "f" * 64
    assert local_ray.secure_token_file(str(path)) == ""


def test_a_new_token_file_is_private_and_whole(tmp_path):
    path = tmp_path / "home" / ".ray" / "auth_token"
    assert local_ray.secure_token_file(str(path)) == f"{SETUP} {path} (mode 0600)"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    token = path.read_text()
    assert len(token) == 64 and int(token, 16) >= 0
    assert os.listdir(path.parent) == ["auth_token"]  # no draft left beside it


@pytest.mark.parametrize(
    "env", [{"RAY_AUTH_MODE": "disabled"}, {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": "x"}]
)
def test_a_users_own_auth_choice_is_left_alone(env, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert local_ray.token_auth() == ""
    assert not (tmp_path / ".ray").exists()
    assert os.environ["RAY_AUTH_MODE"] == env["RAY_AUTH_MODE"]


def test_trial_states_are_read_as_optuna_writes_them(storage_url):
    """``trial_states`` reads Optuna's tables directly (SQLite and PostgreSQL, whose states
    are a native enum): the same counts as Optuna's own API, of the named study only."""
    import optuna

    from rnnsweep.orchestrator.finished_sweep import trial_states

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="s", storage=storage_url)
    for state in ("COMPLETE", "COMPLETE", "PRUNED", "FAIL", "RUNNING"):
        trial = study.ask()
        if state != "RUNNING":
            value = 1.0 if state == "COMPLETE" else None
            study.tell(trial, value, state=optuna.trial.TrialState[state])
    study.enqueue_trial({})  # WAITING
    optuna.create_study(study_name="other", storage=storage_url).ask()
    counts: dict[str, int] = {}
    for frozen in optuna.load_study(study_name="s", storage=storage_url).get_trials():
        counts[frozen.state.name] = counts.get(frozen.state.name, 0) + 1
    assert trial_states(storage_url, "s") == counts
    assert counts == {"COMPLETE": 2, "PRUNED": 1, "FAIL": 1, "RUNNING": 1, "WAITING": 1}
