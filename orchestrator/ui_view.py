"""The MLflow runs-table view a sweep opens with: model-training kind, columns, expanded parent.

MLflow 3 (3.17) opens an experiment on its GenAI pages unless the URL says
``workflowType=machine_learning``; the experiment tag ``mlflow.experimentKind`` records the kind
(``custom_model_development`` = model training), and sweeps set it when they create the
experiment. The runs table's columns and expanded rows have no URL parameter: MLflow keeps them
in the browser's localStorage (per origin) under ``storage_key(experiment)``. ``view_state``
is what rnnsweep wants there (the objective, ``final_loss``, the estimator and every searched
parameter; the parent run expanded so its trials show); ``ui`` stores it as the experiment tag
``VIEW_TAG``, and the opener page of ``mlflow_ui_app`` (served by the same MLflow server, so on
the same origin) merges it into localStorage and redirects to ``runs_page``.
"""

from __future__ import annotations

import json
from typing import Any

KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
VIEW_TAG = "rnnsweep.uiView"
OPENER = "/rnnsweep/open/"
# MLflow's own default columns stay first (its default is Source, Models, Dataset).
DEFAULT_COLUMNS = ["attributes.`Source`"]


def runs_page(experiment_id: str) -> str:
    """The hash route of the classic runs table (``#/...``, relative to the server's root)."""
    return f"#/experiments/{experiment_id}/runs?workflowType=machine_learning&compareRunsMode=TABLE"


def storage_key(experiment_id: str) -> str:
    """MLflow's localStorage key of one experiment's runs-table state."""
    scope = json.dumps([experiment_id])
    return f"MLflowLocalStorage-1.1-ExperimentPage-{scope}-ReactComponentState"


def column(group: str, key: str) -> str:
    """An ag-grid column id as MLflow builds it: ``metrics.`final_loss```."""
    return f"{group}.`{key}`"


def columns(record: dict[str, Any]) -> list[str]:
    """The objective, ``final_loss``, the estimator and each searched parameter, in that order."""
    spec = record["spec"]
    wanted = [
        column("metrics", spec["objective"]["metric"]),
        column("metrics", "final_loss"),
        column("params", "estimator"),
        *(column("params", key) for key in spec.get("search") or {}),
    ]
    return list(dict.fromkeys(DEFAULT_COLUMNS + wanted))


def view_state(record: dict[str, Any]) -> dict[str, Any]:
    """The part of MLflow's runs-table state rnnsweep sets (merged into the user's own)."""
    return {
        "selectedColumns": columns(record),
        "runsExpanded": {record["mlflow_parent_run_id"]: True},
    }


def mark(mlflow_client: Any, experiment_id: str, record: dict[str, Any] | None) -> None:
    """Tag the experiment as model training and, given the sweep's record, store its view."""
    mlflow_client.set_experiment_tag(experiment_id, KIND_TAG, MODEL_TRAINING)
    if record is not None and record.get("mlflow_parent_run_id"):
        mlflow_client.set_experiment_tag(experiment_id, VIEW_TAG, json.dumps(view_state(record)))
