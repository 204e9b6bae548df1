"""``mlflow server --app-name rnnsweep``: MLflow plus one page, ``/rnnsweep/open/<id>``.

The page opens a sweep's runs table as rnnsweep wants it. It is served by the MLflow server
itself (same origin), so its script can write MLflow's localStorage: it merges the view that
``rnnsweep ui`` stored in the experiment tag ``ui_view.VIEW_TAG`` (columns added to the user's
own, the parent run expanded), keeps the assistant panel from opening by itself (only if the
browser has never decided), then replaces itself with the classic runs table. Registered as an
``mlflow.app`` entry point in pyproject.toml; MLflow runs ``create_app`` as a uvicorn factory.
"""

from __future__ import annotations

import html
import json
from typing import Any

from rnnsweep.orchestrator import ui_view

# Placeholders filled by ``opener_html``; the values are JSON (safe inside a <script>).
_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>rnnsweep: opening __TITLE__</title></head>
<body><p>Opening the runs table of experiment __TITLE__ ...</p>
<script>
(function () {
  var key = __KEY__, view = __VIEW__, page = __PAGE__;
  if (view) {
    var saved = {};
    try { saved = JSON.parse(localStorage.getItem(key) || "{}") || {}; } catch (e) { saved = {}; }
    var columns = saved.selectedColumns || [];
    view.selectedColumns.forEach(function (c) { if (columns.indexOf(c) < 0) columns.push(c); });
    saved.selectedColumns = columns;
    saved.runsExpanded = Object.assign({}, saved.runsExpanded || {}, view.runsExpanded);
    localStorage.setItem(key, JSON.stringify(saved));
  }
  var asked = "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1";
  if (localStorage.getItem(asked) === null) localStorage.setItem(asked, "true");
  location.replace("/" + page);
})();
</script></body></html>
"""


def opener_html(experiment_id: str, view: dict[str, Any] | None) -> str:
    """The opener page of one experiment; ``view`` None only redirects."""

    def script_json(value: Any) -> str:
        return json.dumps(value).replace("</", "<\\/")

    return (
        _PAGE.replace("__TITLE__", html.escape(experiment_id))
        .replace("__KEY__", script_json(ui_view.storage_key(experiment_id)))
        .replace("__VIEW__", script_json(view))
        .replace("__PAGE__", script_json(ui_view.runs_page(experiment_id)))
    )


def _open(experiment_id: str):
    from flask import Response
    from mlflow.server.handlers import _get_tracking_store

    try:
        tags = _get_tracking_store().get_experiment(experiment_id).tags
    except Exception:  # noqa: BLE001 - unknown id: MLflow's own page says so
        tags = {}
    try:
        view = json.loads(tags[ui_view.VIEW_TAG])
    except (KeyError, ValueError):
        view = None
    response = Response(opener_html(experiment_id, view), mimetype="text/html")
    response.headers["Cache-Control"] = "no-store"
    return response


def create_app():
    """MLflow's FastAPI app with the opener route added to its Flask app."""
    from mlflow.server import app
    from mlflow.server.fastapi_app import create_fastapi_app

    app.add_url_rule(f"{ui_view.OPENER}<experiment_id>", "rnnsweep_open", _open)
    return create_fastapi_app(app)
