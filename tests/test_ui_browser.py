"""``rnnsweep ui`` in a real browser: headless Chromium (the distribution's ``/usr/bin/chromium``)
driven by Playwright opens the printed address of a finished sweep and must land on the classic
runs table with one row per trial (the parent expanded, its children under it) and the columns
of the objective, ``final_loss``, the estimator and every searched parameter, next to a column
the browser had already chosen.

The screenshot goes to ``$RNNSWEEP_TEST_ARTIFACTS/mlflow_ui.png`` (``.ci/run`` sets it to
``test-artifacts/`` in the checkout, which CI keeps), else to the test's ``tmp_path``. Without
Playwright or Chromium the test is skipped, except under CI (``CI=true``), where it fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from served_process import ServedProcess
from test_ui_report import NAME, REPO, TRIALS, _free_port, _processes_mentioning, build_sweep

from rnnsweep.orchestrator import sweep_store, tracking, ui_view

CHROMIUM = "/usr/bin/chromium"
OBJECTIVE = "tail_loss"  # not final_loss, so that both columns must be there
USER_COLUMN = "metrics.`loss`"  # chosen in this browser before `ui` opens the table
# Chromium's background services would try to reach the internet; the sandbox needs
# namespaces a container (or root) does not give.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _unavailable(reason: str) -> None:
    """Skip on a developer machine; fail under CI, where a skip would hide a broken set-up."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"the browser test needs {reason} under CI", pytrace=False)
    pytest.skip(reason)


def _sweep(state_dir: Path) -> dict[str, Any]:
    """The finished sweep of test_ui_report, with what the driver logs for the columns: the
    trial's params (estimator, settings), ``final_loss`` and the objective, and a search space."""
    record = build_sweep(state_dir)
    client = tracking.client(record["tracking_uri"])
    children = client.search_runs(
        [record["mlflow_experiment_id"]],
        f"tags.mlflow.parentRunId = '{record['mlflow_parent_run_id']}'",
    )
    for run in children:
        number = int(run.data.tags["optuna_trial_number"])
        estimator, settings, _, value = TRIALS[number]
        for key, setting in {"estimator": estimator, **settings}.items():
            client.log_param(run.info.run_id, key, setting)
        client.log_metric(run.info.run_id, "final_loss", 0.5 + 0.01 * number, step=1000)
        if value is not None:
            client.log_metric(run.info.run_id, OBJECTIVE, value, step=1000)
    record["spec"]["objective"]["metric"] = OBJECTIVE
    record["spec"]["search"] = {key: {} for _, settings, _, _ in TRIALS for key in settings}
    sweep_store.write_record(str(state_dir), NAME, record)
    record["children"] = {run.info.run_id for run in children}
    return record


def _start_ui(state_dir: Path, port: int) -> tuple[ServedProcess, str]:
    served = ServedProcess(
        [sys.executable, "-m", "rnnsweep.orchestrator.cli", "ui", NAME]
        + ["--state-dir", str(state_dir), "--port", str(port), "--timeout", "120"],
        cwd=REPO,
    )
    try:
        return served, served.next_line(150, "URL")
    except AssertionError as error:
        served.close()
        pytest.fail(str(error), pytrace=False)


def _row_ids(page) -> set[str]:
    return set(
        page.eval_on_selector_all(
            ".ag-center-cols-container [row-id]", "rows => rows.map(r => r.getAttribute('row-id'))"
        )
    )


def test_ui_opens_the_runs_table_with_every_trial_and_the_sweep_columns(tmp_path):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("Playwright for Python (pip install -e '.[test]')")
    if not os.access(CHROMIUM, os.X_OK):
        _unavailable(f"Chromium at {CHROMIUM} (apt-get install chromium)")
    artifacts = Path(os.environ.get("RNNSWEEP_TEST_ARTIFACTS") or tmp_path)
    artifacts.mkdir(parents=True, exist_ok=True)
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    record = _sweep(state_dir)
    parent, experiment = record["mlflow_parent_run_id"], record["mlflow_experiment_id"]
    expected_rows = {parent} | record["children"]
    assert len(record["children"]) == len(TRIALS)

    proc, url = _start_ui(state_dir, _free_port())
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
            )
            try:
                # wide: ag-grid leaves columns out of the DOM while they are off-screen
                context = browser.new_context(viewport={"width": 2400, "height": 1000})
                page = context.new_page()
                # a column this browser already shows for the experiment must stay
                page.goto(url.split("/rnnsweep/")[0] + "/health", timeout=60_000)
                page.evaluate(
                    "([key, state]) => localStorage.setItem(key, JSON.stringify(state))",
                    [ui_view.storage_key(experiment), {"selectedColumns": [USER_COLUMN]}],
                )
                page.goto(url, timeout=120_000)
                page.wait_for_url(f"**/#/experiments/{experiment}/runs?*", timeout=60_000)
                assert "workflowType=machine_learning" in page.url
                page.wait_for_selector(".ag-center-cols-container [row-id]", timeout=120_000)
                deadline = time.monotonic() + 60
                while _row_ids(page) != expected_rows and time.monotonic() < deadline:
                    page.wait_for_timeout(250)
                page.screenshot(path=str(artifacts / "mlflow_ui.png"), full_page=True)
                # one row per trial, under the (expanded) parent's row
                assert _row_ids(page) == expected_rows
                headers = set(
                    page.eval_on_selector_all(
                        ".ag-header-cell[col-id]",
                        "cells => cells.map(c => c.getAttribute('col-id'))",
                    )
                )
                wanted = {
                    USER_COLUMN,
                    f"metrics.`{OBJECTIVE}`",
                    "metrics.`final_loss`",
                    "params.`estimator`",
                    *(f"params.`{key}`" for key in record["spec"]["search"]),
                }
                assert wanted <= headers, f"missing columns {sorted(wanted - headers)}"
                assert len(record["spec"]["search"]) == 4  # truncation, lr, process/obs noise
                # MLflow's assistant panel is told it already opened once (so it stays shut)
                opened = "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1"
                assert page.evaluate(f"localStorage.getItem('{opened}')") == "true"
            finally:
                browser.close()
    finally:
        try:
            proc.stop(signal.SIGINT, 30)
        except subprocess.TimeoutExpired:
            pass
        proc.close()
        for pid in _processes_mentioning(str(state_dir / "mlflow.db")):
            os.kill(pid, signal.SIGKILL)
