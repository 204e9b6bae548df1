"""What every fault test asserts of the record a sweep leaves (issue: a record you can publish).

- ``metric_rows``: per MLflow child run and metric key, the number of rows equals the number of
  distinct steps (no step lost to a retry, none written twice by two writers or a replay).
- ``distinct_parameter_sets``: no two trials of the study share a parameter set.
- ``secret_free``: a secret appears in no file under a directory, no MLflow tag or param, and no
  captured output.

Each returns what it read, so that a test can also assert how much there was.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable
from typing import Any

from rnnsweep.orchestrator import sweep_store


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def record_of(state_dir: str, name: str) -> dict[str, Any]:
    return sweep_store.read_record(str(state_dir), name)[1]


def created_record(state_dir: str, name: str) -> dict[str, Any] | None:
    """The sweep's record once the sweep is created (for tests that poll a running driver: the
    record is written first, marked ``creating``, before the study exists), else ``None``."""
    if not os.path.exists(sweep_store.record_path(str(state_dir), name)):
        return None
    record = sweep_store.read_record(str(state_dir), name, creating=True)[1]
    return record if record.get("state") != "creating" else None


def child_runs(record: dict[str, Any]) -> dict[int, Any]:
    """The sweep's MLflow child runs by Optuna trial number (each number exactly once)."""
    client = _client(record["tracking_uri"])
    runs = client.search_runs(
        [record["mlflow_experiment_id"]],
        f"tags.mlflow.parentRunId = '{record['mlflow_parent_run_id']}'",
        max_results=10000,
    )
    numbers = Counter(int(r.data.tags["optuna_trial_number"]) for r in runs)
    twice = sorted(n for n, count in numbers.items() if count > 1)
    assert not twice, f"trials with more than one MLflow child run: {twice}"
    return {int(r.data.tags["optuna_trial_number"]): r for r in runs}


def metric_rows(record: dict[str, Any], keys: Iterable[str] = ("loss",)) -> dict[int, list[int]]:
    """Assert that every child run logs each of ``keys`` at most once per step; returns each
    trial's sorted ``loss`` steps (or the first key's)."""
    client = _client(record["tracking_uri"])
    keys = list(keys)
    steps_by_trial: dict[int, list[int]] = {}
    for number, run in child_runs(record).items():
        for key in keys:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            repeated = sorted(s for s, count in Counter(steps).items() if count > 1)
            assert not repeated, (
                f"trial {number}: metric {key!r} has {len(steps)} rows for "
                f"{len(set(steps))} steps (repeated: {repeated[:10]})"
            )
            if key == keys[0]:
                steps_by_trial[number] = sorted(steps)
    return steps_by_trial


def distinct_parameter_sets(study: Any) -> list[tuple]:
    """Assert that no two trials were given the same parameter set; returns the sets."""
    sets = [
        json.dumps(t.params, sort_keys=True, default=str) for t in study.get_trials() if t.params
    ]
    repeated = [s for s, count in Counter(sets).items() if count > 1]
    assert not repeated, f"parameter sets tried more than once: {repeated}"
    return [tuple(sorted(json.loads(s).items())) for s in sets]


def files_under(root: str) -> Iterable[str]:
    for folder, _, names in os.walk(root):
        for name in names:
            yield os.path.join(folder, name)


def secret_free(
    secret: str,
    roots: Iterable[str] = (),
    record: dict[str, Any] | None = None,
    outputs: Iterable[str] = (),
) -> int:
    """Assert that ``secret`` is in no file under ``roots`` (bytes, so SQLite files count), no
    MLflow tag or param of the sweep's runs (parent and children), and no output; returns how
    many places were searched."""
    needle = secret.encode()
    searched = 0
    for root in roots:
        for path in files_under(str(root)):
            with open(path, "rb") as handle:
                assert needle not in handle.read(), f"the secret is written in {path}"
            searched += 1
    if record is not None:
        client = _client(record["tracking_uri"])
        runs = client.search_runs([record["mlflow_experiment_id"]], "", max_results=10000)
        for run in runs:
            for kind, values in (("tag", run.data.tags), ("param", run.data.params)):
                for key, value in values.items():
                    assert secret not in f"{key}={value}", (
                        f"the secret is in MLflow {kind} {key!r} of run {run.info.run_id}"
                    )
                    searched += 1
    for i, text in enumerate(outputs):
        assert secret not in text, f"the secret is in output #{i}: {text[:200]!r}"
        searched += 1
    return searched
