"""The sweep's MLflow experiment is model training, and the runs-table view ``ui`` stores."""

from __future__ import annotations

import json

from rnnsweep.orchestrator import tracking, ui_view


def test_a_created_experiment_is_tagged_model_training(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = tracking.client(uri)
    experiment = tracking.experiment_id(client, "kind", (tmp_path / "art").as_uri())
    tags = client.get_experiment(experiment).tags
    assert tags[ui_view.KIND_TAG] == "custom_model_development"


def test_mark_tags_an_existing_experiment_with_kind_and_view(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = tracking.client(uri)
    experiment = client.create_experiment("old-sweep")  # made before the kind tag existed
    record = {
        "spec": {"objective": {"metric": "tail_loss"}, "search": {"lr": {}, "truncation": {}}},
        "mlflow_parent_run_id": "p123",
    }
    ui_view.mark(client, experiment, record)
    tags = client.get_experiment(experiment).tags
    assert tags[ui_view.KIND_TAG] == "custom_model_development"
    assert json.loads(tags[ui_view.VIEW_TAG]) == {
        "selectedColumns": [
            "attributes.`Source`",
            "metrics.`tail_loss`",
            "metrics.`final_loss`",
            "params.`estimator`",
            "params.`lr`",
            "params.`truncation`",
        ],
        "runsExpanded": {"p123": True},
    }


def test_final_loss_as_objective_is_one_column_and_urls_name_the_classic_table():
    record = {"spec": {"objective": {"metric": "final_loss"}}, "mlflow_parent_run_id": "p"}
    assert ui_view.columns(record).count("metrics.`final_loss`") == 1
    assert ui_view.runs_page("7") == (
        "#/experiments/7/runs?workflowType=machine_learning&compareRunsMode=TABLE"
    )
    key = ui_view.storage_key("7")
    assert key == 'MLflowLocalStorage-1.1-ExperimentPage-["7"]-ReactComponentState'


def test_opener_page_carries_the_view_as_script_safe_json_and_redirects_without_one():
    from rnnsweep.orchestrator.mlflow_ui_app import opener_html

    view = {"selectedColumns": ["params.`</script><b>`"], "runsExpanded": {"p": True}}
    page = opener_html("7", view)
    assert page.count("</script>") == 1  # the value cannot close the script
    assert '"MLflowLocalStorage-1.1-ExperimentPage-[\\"7\\"]-ReactComponentState"' in page
    assert '"#/experiments/7/runs?workflowType=machine_learning&compareRunsMode=TABLE"' in page
    bare = opener_html("7", None)
    assert "var key = " in bare and "view = null" in bare
