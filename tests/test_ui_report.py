"""``rnnsweep report`` and ``rnnsweep ui`` on a sweep state built without Ray, and cluster.yaml.

The state is what the driver leaves: an Optuna study in SQLite whose trials carry the driver's
user attributes (estimator, settings, seed, mlflow_run_id, steps_done), an MLflow SQLite store
with the sweep's parent run and one child run per trial (stepped loss, bias, variance), and the
sweep record written by ``sweep_store.write_record``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial
from served_process import ServedProcess

from rnnsweep.orchestrator import cli, sweep_store, tracking, ui_command

optuna.logging.set_verbosity(optuna.logging.WARNING)

REPO = Path(__file__).resolve().parents[1]
NAME = "ui-report"
STEPS = 1000
PNGS = {
    "loss_curves.png",
    "bias_variance_truncation.png",
    "bias_variance_process_noise.png",
    "best_per_estimator.png",
}

# (estimator, settings, state, value); trial numbers follow the order.
TRIALS: list[tuple[str, dict[str, Any], TrialState, float | None]] = [
    ("tbptt", {"truncation": 2, "lr": 0.01}, TrialState.COMPLETE, 0.52),
    ("tbptt", {"truncation": 8, "lr": 0.01}, TrialState.COMPLETE, 0.45),
    ("nobacktrack-kalman", {"process_noise": 1e-6, "obs_noise": 0.1}, TrialState.COMPLETE, 0.47),
    ("nobacktrack-kalman", {"process_noise": 1e-3, "obs_noise": 0.1}, TrialState.FAIL, None),
    ("uoro", {"lr": 0.003}, TrialState.PRUNED, None),
    ("uoro", {"lr": 0.001}, TrialState.COMPLETE, 0.49),
]


def _bias(number: int, step: int) -> float:
    """Probe bias of trial ``number`` at ``step``: distinct per trial and decreasing in step."""
    return (number + 1) * 0.1 + 1000.0 / (step + 1000)


def _variance(number: int, step: int) -> float:
    return (number + 1) * 0.01 * (2000.0 / (step + 1000))


def build_sweep(state_dir: Path, probe: bool = True) -> dict[str, Any]:
    """Write a finished sweep's Optuna study, MLflow runs and record; return its record."""
    from mlflow.entities import Metric

    optuna_url = f"sqlite:///{state_dir / 'optuna.db'}"
    tracking_uri = f"sqlite:///{state_dir / 'mlflow.db'}"
    client = tracking.client(tracking_uri)
    experiment = client.create_experiment(
        NAME, artifact_location=(state_dir / "mlartifacts").as_uri()
    )
    parent = client.create_run(experiment, run_name=NAME, tags={"rnnsweep.sweep": NAME})
    study = optuna.create_study(study_name=NAME, storage=optuna_url, direction="minimize")
    stamp = int(time.time() * 1000)
    for number, (estimator, settings, state, value) in enumerate(TRIALS):
        child = client.create_run(
            experiment,
            run_name=f"trial-{number}-{estimator}",
            tags={
                "mlflow.parentRunId": parent.info.run_id,
                "optuna_trial_number": str(number),
                "estimator": estimator,
                "rnnsweep.sweep": NAME,
            },
        )
        last = STEPS if state != TrialState.PRUNED else STEPS // 2
        losses = {s: 0.7 - 0.2 * s / STEPS + 0.01 * number for s in range(100, last + 1, 100)}
        metrics = [Metric("loss", v, stamp, s) for s, v in losses.items()]
        if probe:
            for s in range(250, last + 1, 250):
                metrics.append(Metric("bias", _bias(number, s), stamp, s))
                metrics.append(Metric("variance", _variance(number, s), stamp, s))
        client.log_batch(child.info.run_id, metrics=metrics)
        client.set_terminated(child.info.run_id)
        study.add_trial(
            create_trial(
                state=state,
                value=value,
                params={"lr_log": 0.0},
                distributions={"lr_log": FloatDistribution(-1.0, 1.0)},
                user_attrs={
                    "estimator": estimator,
                    "settings": settings,
                    "seed": number,
                    "mlflow_run_id": child.info.run_id,
                    "steps_done": last,
                },
                intermediate_values=losses if state == TrialState.PRUNED else {},
            )
        )
    client.set_terminated(parent.info.run_id)
    record = {
        "name": NAME,
        "spec": {
            "name": NAME,
            "task": "add",
            "steps": STEPS,
            "trials": len(TRIALS),
            "objective": {"metric": "final_loss", "direction": "minimize"},
        },
        "optuna_storage": optuna_url,
        "tracking_uri": tracking_uri,
        "mlflow_parent_run_id": parent.info.run_id,
        "mlflow_experiment_id": experiment,
    }
    sweep_store.write_record(str(state_dir), NAME, record)
    return record


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> tuple[Path, dict[str, Any]]:
    state_dir = tmp_path_factory.mktemp("sweep-state")
    return state_dir, build_sweep(state_dir)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _processes_mentioning(text: str) -> list[int]:
    """Pids of live processes whose command line contains ``text``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/stat") as handle:
                zombie = handle.read().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:
            continue
        if text in cmdline and not zombie:
            found.append(int(entry))
    return found


def _listening_addresses(port: int) -> set[str]:
    """Local IPv4/IPv6 addresses (hex, as in /proc/net/tcp*) listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as handle:
                rows = handle.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            address, hex_port = fields[1].split(":")
            if fields[3] == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


# -- report ---------------------------------------------------------------------------------


def test_report_writes_figures_summary_and_artifacts(sweep, capsys):
    state_dir, record = sweep
    assert cli.main(["report", NAME, "--state-dir", str(state_dir)]) == 0
    out = state_dir / "reports" / NAME
    printed = capsys.readouterr().out.split()
    assert printed[0] == str(out)
    assert set(printed[1:]) == PNGS | {"summary.json", "report.html"}

    for name in PNGS:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", name
        assert len(data) > 10_000, name  # axes, lines and labels, not an empty canvas

    summary = json.loads((out / "summary.json").read_text())
    estimators = summary["estimators"]
    assert set(estimators) == {"tbptt", "nobacktrack-kalman", "uoro"}
    assert estimators["tbptt"]["best_value"] == pytest.approx(0.45)
    assert estimators["tbptt"]["best_trial"] == 1
    assert estimators["tbptt"]["best_settings"] == {"truncation": 8, "lr": 0.01}
    assert estimators["tbptt"]["states"] == {"COMPLETE": 2}
    assert estimators["nobacktrack-kalman"]["best_value"] == pytest.approx(0.47)
    assert estimators["nobacktrack-kalman"]["states"] == {"COMPLETE": 1, "FAIL": 1}
    assert estimators["uoro"]["best_trial"] == 5
    assert estimators["uoro"]["states"] == {"COMPLETE": 1, "PRUNED": 1}
    assert summary["states"] == {"COMPLETE": 4, "FAIL": 1, "PRUNED": 1}
    assert summary["skipped"] == {}

    # The probe points are the last reported bias and variance of each trial.
    probe = {p["trial"]: p for p in summary["probe"]}
    assert probe[0]["truncation"] == 2 and probe[1]["truncation"] == 8
    assert probe[0]["bias"] == pytest.approx(_bias(0, STEPS))
    assert probe[1]["variance"] == pytest.approx(_variance(1, STEPS))
    assert probe[0]["bias_step"] == STEPS
    assert probe[3]["process_noise"] == pytest.approx(1e-3)
    assert probe[2]["bias"] == pytest.approx(_bias(2, STEPS))
    assert probe[4]["bias_step"] == STEPS // 2  # pruned half-way
    assert "truncation" not in probe[4] and "process_noise" not in probe[4]

    client = tracking.client(record["tracking_uri"])
    logged = {a.path for a in client.list_artifacts(record["mlflow_parent_run_id"], "report")}
    assert logged == {f"report/{name}" for name in PNGS | {"summary.json", "report.html"}}


def test_report_skips_figures_without_data(tmp_path, capsys):
    record = build_sweep(tmp_path, probe=False)
    out = tmp_path / "figures"
    out.mkdir()
    stale = out / "bias_variance_truncation.png"
    stale.write_bytes(b"an earlier report's figure")
    assert cli.main(["report", NAME, "--state-dir", str(tmp_path), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "skipped bias_variance_truncation.png" in captured.err
    assert "skipped bias_variance_process_noise.png" in captured.err
    assert not stale.exists()
    assert sorted(p.name for p in out.iterdir()) == [
        "best_per_estimator.png",
        "loss_curves.png",
        "report.html",
        "summary.json",
    ]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["probe"] == []
    assert set(summary["skipped"]) == {
        "bias_variance_truncation.png",
        "bias_variance_process_noise.png",
    }
    client = tracking.client(record["tracking_uri"])
    logged = {a.path for a in client.list_artifacts(record["mlflow_parent_run_id"], "report")}
    kept = ("best_per_estimator.png", "loss_curves.png", "report.html", "summary.json")
    assert logged == {f"report/{name}" for name in kept}


# Run in a fresh interpreter: a meta-path finder refuses every matplotlib module, as when the
# package is not installed; then ``rnnsweep report`` runs through the real CLI.
WITHOUT_MATPLOTLIB = """
import sys

class NoMatplotlib:
    def find_spec(self, name, path=None, target=None):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoMatplotlib())
try:
    import matplotlib  # noqa: F401
except ModuleNotFoundError:
    pass
else:
    sys.exit("the blocker did not block matplotlib")
from rnnsweep.orchestrator.cli import main

sys.exit(main(sys.argv[1:]))
"""


def test_report_without_matplotlib_says_how_to_install_it_and_exits_2(sweep):
    state_dir, _ = sweep
    out = state_dir / "no-matplotlib"
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_MATPLOTLIB, "report", NAME, "--state-dir", str(state_dir),
         "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("rnnsweep report: error: drawing the report needs matplotlib")
    assert "pip install 'matplotlib>=3.7,<4'" in done.stderr
    assert not out.exists()  # checked before anything is written


def test_report_names_the_matplotlib_requirement_of_pyproject():
    import tomllib

    from rnnsweep.orchestrator.report import MATPLOTLIB_REQUIREMENT

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert MATPLOTLIB_REQUIREMENT in project["dependencies"]


def test_report_unknown_sweep_exits_2(tmp_path, capsys):
    assert cli.main(["report", "no-such-sweep", "--state-dir", str(tmp_path)]) == 2
    assert "'no-such-sweep'" in capsys.readouterr().err


# -- ui -------------------------------------------------------------------------------------


def test_ui_serves_the_runs_table_and_stops_cleanly(sweep):
    state_dir, record = sweep
    port = _free_port()
    served = ServedProcess(
        [sys.executable, "-m", "rnnsweep.orchestrator.cli", "ui", NAME]
        + ["--state-dir", str(state_dir), "--port", str(port), "--timeout", "90"],
        cwd=REPO,
    )
    try:
        url = served.next_line(120, "URL")
        experiment = record["mlflow_experiment_id"]
        # the opener page (mlflow_ui_app), served by the MLflow server itself
        assert url == f"http://127.0.0.1:{port}/rnnsweep/open/{experiment}"
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200
            page = response.read().decode()
        assert f'"#/experiments/{experiment}/runs?workflowType=machine_learning' in page
        assert record["mlflow_parent_run_id"] in page  # the parent run it expands
        tags = tracking.client(record["tracking_uri"]).get_experiment(experiment).tags
        assert tags["mlflow.experimentKind"] == "custom_model_development"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
            assert b"<html" in response.read().lower()  # MLflow's own UI still served
        api = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get?experiment_id={experiment}"
        with urllib.request.urlopen(api, timeout=10) as response:
            assert json.load(response)["experiment"]["name"] == NAME  # the sweep's store
        assert _listening_addresses(port) == {"0100007F"}  # 127.0.0.1 only
        assert _processes_mentioning(str(state_dir / "mlflow.db"))

        assert served.stop(signal.SIGINT, 30) == 0, served.stderr()
        assert _listening_addresses(port) == set()
        assert _processes_mentioning(str(state_dir / "mlflow.db")) == []
    finally:
        served.close()
        for pid in _processes_mentioning(str(state_dir / "mlflow.db")):
            os.kill(pid, signal.SIGKILL)


def test_ui_unknown_sweep_exits_2(tmp_path, capsys):
    assert cli.main(["ui", "no-such-sweep", "--state-dir", str(tmp_path)]) == 2
    assert "'no-such-sweep'" in capsys.readouterr().err


def test_ui_port_in_use_exits_2(sweep, capsys):
    state_dir, _ = sweep
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert cli.main(["ui", NAME, "--state-dir", str(state_dir), "--port", str(port)]) == 2
    assert f"port {port}" in capsys.readouterr().err


def test_ui_server_dying_at_start_exits_2_with_its_output(sweep, capsys, monkeypatch):
    state_dir, _ = sweep
    fail = "import sys; print('cannot open the backend store: boom', file=sys.stderr); sys.exit(3)"
    monkeypatch.setattr(
        ui_command,
        "server_command",
        lambda uri, port, artifacts, app=False: [sys.executable, "-c", fail],
    )
    port = _free_port()
    assert cli.main(["ui", NAME, "--state-dir", str(state_dir), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert "exited during start-up (status 3)" in err
    assert "cannot open the backend store: boom" in err


def test_ui_remote_tracking_server_prints_its_runs_table(tmp_path, capsys):
    record = {
        "name": NAME,
        "spec": {"name": NAME},
        "optuna_storage": f"sqlite:///{tmp_path / 'optuna.db'}",
        "tracking_uri": "https://mlflow.example.org:5000/",
        "mlflow_parent_run_id": "0" * 32,
        "mlflow_experiment_id": "7",
    }
    sweep_store.write_record(str(tmp_path), NAME, record)
    assert cli.main(["ui", NAME, "--state-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out == (
        "https://mlflow.example.org:5000/#/experiments/7/runs"
        "?workflowType=machine_learning&compareRunsMode=TABLE\n"
    )


# -- cluster.yaml ---------------------------------------------------------------------------


def _commands(config: dict[str, Any]) -> list[str]:
    keys = [k for k in config if k.endswith("_commands")]
    out = [c for k in keys for c in config[k] or []]
    for node_type in config["available_node_types"].values():
        out += [c for k in node_type if k.endswith("_commands") for c in node_type[k]]
    return out


def test_cluster_yaml_is_a_valid_launcher_config():
    import jsonschema
    import ray.autoscaler

    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    for key in (
        "cluster_name",
        "provider",
        "available_node_types",
        "head_node_type",
        "setup_commands",
        "head_start_ray_commands",
        "worker_start_ray_commands",
    ):
        assert config.get(key), key
    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    jsonschema.validate(config, json.loads(schema_path.read_text()))

    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    workers = [t for name, t in types.items() if name != config["head_node_type"]]
    assert workers and all(t["resources"]["GPU"] >= 1 for t in workers)

    commands = _commands(config)
    text = "\n".join(commands)
    assert "0.0.0.0" not in text and "--host=0" not in text
    head_start = "\n".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start or "--dashboard-host 127.0.0.1" in head_start
    assert "mlflow server" in head_start and "--host 127.0.0.1" in head_start
    for start in config["head_start_ray_commands"] + config["worker_start_ray_commands"]:
        if "ray start" in start:
            assert "RAY_AUTH_MODE=token" in start, start
    assert "pip install torch==2.13.0" in text and "pip install -e" in text
