"""``rnnsweep report``'s ``report.html`` for a real tiny sweep (local Ray, SQLite Optuna and
MLflow stores, probe on): the page is self-contained, holds every section, has one table row
per trial with its MLflow run link, names exact estimators as such, and is logged to the
sweep's MLflow parent run."""

from __future__ import annotations

import os
import re
import shutil

import optuna
import pytest
from log_chunks import ONE_LOG_CHUNK
from mlflow.tracking import MlflowClient

from rnnsweep.orchestrator import report_page, sweep_store
from rnnsweep.orchestrator import spec as spec_
from rnnsweep.orchestrator.cli import main
from rnnsweep.orchestrator.driver import Driver

NAME = "paper"
SPEC = {
    "name": NAME,
    "task": "add",
    "hidden": 6,
    "dtype": "float64",
    "steps": 600,
    "trials": 5,
    "estimators": ["uoro", "tbptt", "rtrl"],
    "fixed": {"log_every": 100},
    "search": {
        "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "truncation": {"type": "int", "low": 2, "high": 8, "estimators": ["tbptt"]},
    },
    "probe": {"every": 250, "window": 40, "samples": 4, "horizon": 40},
    "pruner": "none",
    "sampler": "random",
    "checkpoint_every": 300,
    "workers": 2,
}


class PruneTrialOne(optuna.pruners.BasePruner):
    """Prunes trial 1 at its first report (a PRUNED row with ``pruned_at_step``)."""

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return trial.number == 1


@pytest.fixture(scope="module")
def reported(ray_session, tmp_path_factory):
    """The finished sweep's state dir, record, and its report page's text."""
    state_dir = tmp_path_factory.mktemp("report-page")
    spec = spec_.load_spec_dict(SPEC)
    # one log interval a chunk: a trial reports before it ends, so trial 1 is pruned part-way
    driver = Driver(
        spec, str(state_dir), workers=2, chunk_seconds=ONE_LOG_CHUNK, pruner=PruneTrialOne()
    )
    driver.run()
    assert main(["report", NAME, "--state-dir", str(state_dir)]) == 0
    _, record = sweep_store.read_record(str(state_dir), NAME)
    path = state_dir / "reports" / NAME / report_page.PAGE
    page = path.read_text()
    if os.environ.get("RNNSWEEP_KEEP_REPORT"):  # to look at the page by hand
        shutil.copy(path, os.environ["RNNSWEEP_KEEP_REPORT"])
    return state_dir, record, page


def test_report_page_is_self_contained_with_every_section(reported):
    _, record, page = reported
    for anchor in report_page.SECTIONS:
        assert f'<h2 id="{anchor}">' in page, anchor
    images = re.findall(r"<img [^>]*src=\"([^\"]*)\"", page)
    # loss, probe, best, importances (or a note) and parallel coordinates
    assert len(images) >= 4
    assert all(src.startswith("data:image/png;base64,") for src in images)
    assert not re.search(r"<(script|link|iframe)\b", page)
    assert "@import" not in page and "url(" not in page
    # The only references out of the page are the MLflow run links.
    refs = re.findall(r"(?:src|href)=\"([^\"]*)\"", page)
    outside = [r for r in refs if not r.startswith("data:")]
    assert outside and all(
        re.fullmatch(rf"#/experiments/{record['mlflow_experiment_id']}/runs/[0-9a-f]{{32}}", r)
        for r in outside
    ), outside
    assert "http://" not in page and "https://" not in page  # a SQLite store: relative links
    assert "links are relative" in page


def test_report_page_has_one_row_per_trial_with_its_run(reported):
    _, record, page = reported
    study = sweep_store.load_study(record)
    trials = {t.number: t for t in study.get_trials()}
    assert len(trials) == SPEC["trials"]
    assert trials[1].state.name == "PRUNED"
    rows = re.findall(r"<tr class=\"trial\">(.*?)</tr>", page, re.S)
    assert len(rows) == len(trials)
    for row in rows:
        cells = re.findall(r"<td>(.*?)</td>", row, re.S)
        trial = trials[int(cells[0])]
        assert cells[1] == trial.user_attrs["estimator"]
        assert cells[2] == trial.state.name
        if trial.state.name == "COMPLETE":
            assert float(cells[3]) == pytest.approx(trial.value, rel=1e-5)
        assert cells[5] == str(trial.user_attrs.get("pruned_at_step", ""))
        assert f"/runs/{trial.user_attrs['mlflow_run_id']}\"" in cells[6]
    assert trials[1].user_attrs["pruned_at_step"] < SPEC["steps"]  # shown in its row above


def test_report_page_names_exact_estimators_and_reference_levels(reported):
    _, _, page = reported
    assert "<td>rtrl</td>" in page  # the seeded sampler draws rtrl; its bias is not drawn
    assert "exact estimators (rtrl): bias and variance are zero up to rounding" in page
    assert "the task names no reference loss levels" not in page
    task = report_page._task(SPEC)
    assert sorted(round(v, 4) for v in task.references.values()) == [0.4545, 0.5192, 0.6616]


@pytest.mark.parametrize(
    "values, scale",
    [
        ([1e-4, 0.5, 2.0], "log"),  # positive, four decades
        ([0.2, 0.9, 1.0], "linear"),  # within one decade
        ([0.0, 1e-3, 10.0], "linear"),  # a zero: no log axis
        ([-1e-3, 1e-1, 10.0], "linear"),
    ],
)
def test_a_probe_axis_is_logarithmic_only_for_positive_values_spanning_decades(values, scale):
    from rnnsweep.orchestrator.report import pyplot

    plt = pyplot()
    fig, ax = plt.subplots()
    report_page._y_scale(ax, values)
    assert ax.get_yscale() == scale
    plt.close(fig)


def test_report_page_is_logged_to_the_parent_run(reported):
    state_dir, record, page = reported
    client = MlflowClient(tracking_uri=record["tracking_uri"])
    parent = record["mlflow_parent_run_id"]
    logged = {a.path for a in client.list_artifacts(parent, "report")}
    assert f"report/{report_page.PAGE}" in logged
    local = client.download_artifacts(parent, f"report/{report_page.PAGE}", str(state_dir))
    with open(local) as f:
        assert f.read() == page


def test_run_links_point_at_a_tracking_server_without_its_credentials():
    href, absolute = report_page.run_link("http://bob:s3cret@mlflow.lan:5000/", "7", "ab12")
    assert (href, absolute) == ("http://mlflow.lan:5000/#/experiments/7/runs/ab12", True)
    href, absolute = report_page.run_link("postgresql://bob:s3cret@db/mlflow", "7", "ab12")
    assert (href, absolute) == ("#/experiments/7/runs/ab12", False)


def test_the_best_objective_section_names_an_estimator_without_a_completed_trial():
    from rnnsweep.orchestrator.report import pyplot, summarize

    record = {"name": NAME, "spec": {"estimators": ["uoro", "tbptt"]}}
    trials = [
        {"number": 0, "state": "COMPLETE", "value": 0.6, "estimator": "uoro", "settings": {},
         "histories": {}},
        {"number": 1, "state": "PRUNED", "value": 0.9, "estimator": "tbptt", "settings": {},
         "histories": {}},
        {"number": 2, "state": "FAIL", "value": None, "estimator": "tbptt", "settings": {},
         "histories": {}},
    ]
    summary = summarize(record, trials, "minimize")
    section = report_page._best_section(pyplot(), trials, summary, {"uoro": "C0", "tbptt": "C1"})
    assert section.count("<img ") == 1
    assert "tbptt: no completed trial (1 pruned, 1 failed)" in section
