"""``rnnsweep report``: figures and a summary of a sweep, logged to its MLflow parent run.

Reads the Optuna trials (estimator, settings, state, value) and the MLflow metric histories of
their child runs, and writes into one folder (default ``DIR/reports/NAME/``):

- ``loss_curves.png``: loss against step, one thin line per trial, coloured by estimator;
- ``bias_variance_truncation.png``: the last reported probe bias and variance of ``tbptt``
  trials against their truncation length;
- ``bias_variance_process_noise.png``: the same for Kalman-rule trials against
  ``process_noise`` (log x);
- ``best_per_estimator.png``: the best objective value of each estimator;
- ``report.html``: one self-contained page (inline figures, a table of every trial with
  links to its MLflow run; ``orchestrator/report_page.py``);
- ``summary.json``: per estimator of the spec the best value, trial and settings and the count
  of trials per state (one without a completed trial has ``note``: "no completed trial (2
  pruned, 1 failed)", also printed); the probe points plotted; which figures were skipped and
  why.

A figure without data (e.g. a sweep without probe metrics) is skipped with a note. Every file
written is logged as an artifact of the sweep's MLflow parent run under ``report/``.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any

from rnnsweep.algorithms.atomic_file import write_atomic
from rnnsweep.orchestrator import continuation, output_path, report_page, sweep_store
from rnnsweep.orchestrator.sweep_commands import driver_state, no_complete_text

LOSS, BIAS_TRUNC, BIAS_NOISE, BEST = (
    "loss_curves.png",
    "bias_variance_truncation.png",
    "bias_variance_process_noise.png",
    "best_per_estimator.png",
)
SUMMARY = "summary.json"
HISTORIES = ("loss", "bias", "variance", "cosine", "staleness")  # MLflow metrics read per trial
ARTIFACT_PATH = "report"
EXIT_FAILED = 1
MATPLOTLIB_REQUIREMENT = "matplotlib>=3.7,<4"  # as in pyproject.toml


def pyplot():
    """``matplotlib.pyplot`` on the file-only ``Agg`` backend; ``ValueError`` (the CLI's exit 2,
    no traceback) saying how to install it when matplotlib cannot be imported."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ValueError(
            f"drawing the report needs matplotlib, which cannot be imported here ({error}); "
            f"install it with: pip install {MATPLOTLIB_REQUIREMENT!r}"
        ) from None
    return plt


def report_command(args) -> int:
    pyplot()  # before anything is read or written
    state_dir, record = sweep_store.read_record(args.state_dir, args.name)
    out = os.path.abspath(args.out or os.path.join(state_dir, "reports", record["name"]))
    output_path.folder_target(out, "--out")
    mlflow_client = _client(record["tracking_uri"])
    trials = sweep_trials(record, mlflow_client)
    if any(t["state"] == "RUNNING" for t in trials) and not driver_state(record)["running"]:
        for t in trials:  # as `status` shows them: no driver runs them
            if t["state"] == "RUNNING":
                t["state"] = "INTERRUPTED"
    written, skipped = write_report(record, trials, out)
    for figure, reason in skipped.items():
        print(f"note: skipped {figure}: {reason}", file=sys.stderr)
    direction = (record["spec"].get("objective") or {}).get("direction", "minimize")
    for estimator, entry in summarize(record, trials, direction)["estimators"].items():
        best = entry["best_value"]
        line = f"{best:.4g} (trial {entry['best_trial']})" if best is not None else entry["note"]
        print(f"best {estimator}: {line}", file=sys.stderr)
    print(out)
    for name in written:
        print(f"  {name}")
    parent = record.get("mlflow_parent_run_id")
    if not parent:
        print("rnnsweep report: the sweep record names no MLflow parent run", file=sys.stderr)
        return EXIT_FAILED
    try:
        for name in written:
            mlflow_client.log_artifact(parent, os.path.join(out, name), ARTIFACT_PATH)
    except Exception as error:  # noqa: BLE001 - the files are written; say what failed
        print(
            f"rnnsweep report: could not log the report to MLflow run {parent}: {error}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    print(f"logged to MLflow run {parent} under {ARTIFACT_PATH}/", file=sys.stderr)
    return 0


def sweep_trials(record: dict[str, Any], mlflow_client) -> list[dict[str, Any]]:
    """One dict per trial: number, state, value, estimator, settings and metric histories. A
    trial another continued (``extend --steps``) is left out: its continuation stands for it,
    in the same MLflow run, with the whole curve."""
    study = sweep_store.load_study(record)
    every = study.get_trials(deepcopy=False)
    old_budget = continuation.superseded(every)
    trials = []
    for t in every:
        if t.number in old_budget:
            continue
        run_id = t.user_attrs.get("mlflow_run_id")
        histories: dict[str, list[tuple[int, float]]] = {}
        if run_id:
            for key in HISTORIES:
                points = sorted(
                    (m.step, m.value)
                    for m in mlflow_client.get_metric_history(run_id, key)
                    if math.isfinite(m.value)
                )
                if points:
                    histories[key] = points
        trials.append(
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value,
                "estimator": t.user_attrs.get("estimator", t.params.get("estimator", "?")),
                "settings": t.user_attrs.get("settings", dict(t.params)),
                "histories": histories,
                "run_id": run_id,
                "pruned_at_step": t.user_attrs.get("pruned_at_step"),
            }
        )
    return trials


def write_report(
    record: dict[str, Any], trials: list[dict[str, Any]], out: str
) -> tuple[list[str], dict[str, str]]:
    """Write the figures and ``summary.json`` into ``out``: (files written, skipped -> why)."""
    plt = pyplot()

    os.makedirs(out, exist_ok=True)
    objective = record["spec"].get("objective") or {}
    direction = objective.get("direction", "minimize")
    estimators = sorted({t["estimator"] for t in trials})
    colors = {e: plt.get_cmap("tab10")(i % 10) for i, e in enumerate(estimators)}
    summary = summarize(record, trials, direction)
    written: list[str] = []
    skipped: dict[str, str] = {}
    figures = {
        LOSS: lambda: _loss_figure(plt, trials, colors),
        BIAS_TRUNC: lambda: _probe_figure(
            plt, summary["probe"], "truncation", "truncation length", False, colors, "tbptt"
        ),
        BIAS_NOISE: lambda: _probe_figure(
            plt, summary["probe"], "process_noise", "process_noise", True, colors, "Kalman-rule"
        ),
        BEST: lambda: _best_figure(plt, summary["estimators"], objective, direction, colors),
    }
    for name, draw in figures.items():
        path = os.path.join(out, name)
        figure_or_reason = draw()
        if isinstance(figure_or_reason, str):
            skipped[name] = figure_or_reason
            if os.path.exists(path):  # a stale figure from an earlier report would mislead
                os.remove(path)
            continue
        figure_or_reason.savefig(path, dpi=120)
        plt.close(figure_or_reason)
        written.append(name)
    summary["figures"] = list(written)
    summary["skipped"] = skipped
    write_atomic(
        os.path.join(out, SUMMARY), (json.dumps(summary, indent=2, default=str) + "\n").encode()
    )
    written.append(SUMMARY)
    page = report_page.render(
        plt, record, trials, sweep_store.load_study(record), summary, colors
    )
    write_atomic(os.path.join(out, report_page.PAGE), page.encode())
    written.append(report_page.PAGE)
    return written, skipped


def summarize(
    record: dict[str, Any], trials: list[dict[str, Any]], direction: str
) -> dict[str, Any]:
    """Per estimator of the spec (then any other a trial names): trials, count per state,
    best value/trial/settings, and a ``note`` ("no completed trial (2 pruned)") for one without
    a completed trial; and probe points."""
    states: dict[str, int] = {}
    per: dict[str, dict[str, Any]] = {}
    probe = []

    def new_entry() -> dict[str, Any]:
        return {
            "trials": 0,
            "states": {},
            "best_value": None,
            "best_trial": None,
            "best_settings": None,
        }

    for name in record["spec"].get("estimators") or ():
        per[name] = new_entry()
    for t in sorted(trials, key=lambda t: t["number"]):
        states[t["state"]] = states.get(t["state"], 0) + 1
        entry = per.setdefault(t["estimator"], new_entry())
        entry["trials"] += 1
        entry["states"][t["state"]] = entry["states"].get(t["state"], 0) + 1
        value = t["value"]
        if t["state"] == "COMPLETE" and value is not None and math.isfinite(value):
            best = entry["best_value"]
            if best is None or (value < best if direction == "minimize" else value > best):
                entry.update(best_value=value, best_trial=t["number"], best_settings=t["settings"])
        bias, variance = t["histories"].get("bias"), t["histories"].get("variance")
        if bias or variance:
            point: dict[str, Any] = {
                "trial": t["number"],
                "estimator": t["estimator"],
                "bias": bias[-1][1] if bias else None,
                "bias_step": bias[-1][0] if bias else None,
                "variance": variance[-1][1] if variance else None,
                "variance_step": variance[-1][0] if variance else None,
            }
            settings = t["settings"]
            if t["estimator"] == "tbptt" and "truncation" in settings:
                point["truncation"] = settings["truncation"]
            if _kalman(t) and "process_noise" in settings:
                point["process_noise"] = settings["process_noise"]
            probe.append(point)
    for entry in per.values():
        if entry["best_value"] is None:
            entry["note"] = no_complete_text(entry["states"])
    return {
        "sweep": record["name"],
        "objective": record["spec"].get("objective"),
        "direction": direction,
        "trials": len(trials),
        "states": states,
        "estimators": per,
        "probe": probe,
    }


def _kalman(trial: dict[str, Any]) -> bool:
    return trial["estimator"].endswith("-kalman") or trial["settings"].get("optimizer") == "kalman"


def _loss_figure(plt, trials: list[dict[str, Any]], colors: dict[str, Any]):
    curves = [t for t in trials if t["histories"].get("loss")]
    if not curves:
        return "no trial has reported a loss yet"
    fig, ax = plt.subplots(figsize=(8, 5))
    labelled: set[str] = set()
    positive = True
    for t in curves:
        steps, values = zip(*t["histories"]["loss"], strict=True)
        positive = positive and min(values) > 0
        label = None if t["estimator"] in labelled else t["estimator"]
        labelled.add(t["estimator"])
        ax.plot(steps, values, lw=0.8, alpha=0.7, color=colors[t["estimator"]], label=label)
    if positive:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"loss per trial ({len(curves)} trials)")
    ax.legend(title="estimator", fontsize="small")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _probe_figure(
    plt,
    probe: list[dict[str, Any]],
    key: str,
    label: str,
    log_x: bool,
    colors: dict[str, Any],
    kind: str,
):
    points = [p for p in probe if key in p]
    if not points:
        return f"no {kind} trial with {key} has reported probe metrics (bias, variance)"
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, metric in zip(axes, ("bias", "variance"), strict=True):
        shown = False
        for estimator in sorted({p["estimator"] for p in points}):
            xy = [
                (float(p[key]), p[metric])
                for p in points
                if p["estimator"] == estimator and p[metric] is not None
            ]
            if not xy:
                continue
            shown = True
            xs, ys = zip(*sorted(xy), strict=True)
            ax.plot(xs, ys, "o", color=colors[estimator], label=estimator, alpha=0.8)
        if log_x:
            ax.set_xscale("log")
        values = [p[metric] for p in points if p[metric] is not None]
        if values and min(values) > 0:
            ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel(f"last {metric}")
        ax.set_title(f"{metric} vs {label}")
        ax.grid(alpha=0.3)
        if shown:
            ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def _best_figure(
    plt,
    per: dict[str, dict[str, Any]],
    objective: dict[str, Any],
    direction: str,
    colors: dict[str, Any],
):
    best = {e: v for e, v in per.items() if v["best_value"] is not None}
    if not best:
        return "no trial has completed yet"
    names = sorted(best, key=lambda e: best[e]["best_value"], reverse=direction == "maximize")
    values = [best[e]["best_value"] for e in names]
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(names) + 2), 4.5))
    bars = ax.bar(names, values, color=[colors[e] for e in names])
    for bar, e in zip(bars, names, strict=True):
        ax.annotate(
            f"{best[e]['best_value']:.4g}\n(trial {best[e]['best_trial']})",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize="small",
        )
    ax.set_ylabel(f"best {objective.get('metric', 'objective')} ({direction})")
    missing = [f"{e}: {v['note']}" for e, v in per.items() if v["best_value"] is None]
    if missing:  # listed, never dropped silently
        ax.set_xlabel("\n".join(missing), fontsize="small", color="firebrick")
    ax.set_title("best value per estimator")
    ax.margins(y=0.15)
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    return fig


def _client(uri: str):
    from rnnsweep.orchestrator.tracking import client

    return client(uri)
