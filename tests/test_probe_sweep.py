"""A sweep trial's probe windows reach MLflow once each, at their own steps (through Ray, the
driver and the tracker), never repeated at the log steps between windows."""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from rnnsweep.orchestrator import spec as spec_
from rnnsweep.orchestrator import sweep_store
from rnnsweep.orchestrator.driver import Driver


def test_sweep_logs_each_probe_window_at_its_own_step(ray_session, tmp_path):
    spec = spec_.load_spec_dict(
        {
            "name": "probed",
            "task": "add",
            "hidden": 8,
            "dtype": "float64",
            "steps": 600,
            "trials": 1,
            "estimators": ["uoro"],
            "fixed": {"log_every": 100, "lr": 1e-3},
            "probe": {"every": 250, "window": 40, "samples": 4, "horizon": 40},
            "pruner": "none",
            "sampler": "random",
            "checkpoint_every": 300,
            "workers": 1,
        }
    )
    summary = Driver(spec, str(tmp_path), workers=1).run()
    assert summary["states"] == {"COMPLETE": 1}
    _, record = sweep_store.read_record(str(tmp_path), spec.name)
    client = MlflowClient(tracking_uri=record["tracking_uri"])
    (child,) = client.search_runs(
        [record["mlflow_experiment_id"]],
        f"tags.mlflow.parentRunId = '{record['mlflow_parent_run_id']}'",
    )
    run_id = child.info.run_id
    loss_steps = sorted(m.step for m in client.get_metric_history(run_id, "loss"))
    assert loss_steps == [100, 200, 300, 400, 500, 600]
    for key in ("bias", "bias_se", "variance", "cosine", "staleness", "horizon_error"):
        steps = sorted(m.step for m in client.get_metric_history(run_id, key))
        assert steps == [40, 290, 540], key  # windows [0, 40), [250, 290), [500, 540)
