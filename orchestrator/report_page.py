"""``report.html``: one self-contained page of a sweep, to read offline or paste into a paper.

Sections (each an ``<h2 id=...>``, in ``SECTIONS``): loss curves per estimator (median and
interquartile band over its trials, in the task's unit, with its reference levels); the probe's
bias, variance, cosine and staleness against step (probe windows only: those metrics are logged
once per window at its own step; exact estimators named as "exact", not drawn at rounding
level); the best objective per estimator with the spread of its completed trials; Optuna's
parameter importances; a parallel-coordinate plot of the searched parameters; and a table of
every trial with a link to its MLflow run. Figures are PNGs inlined as ``data:`` URIs and the
style is inline, so the page needs no network. A figure without data is replaced by a note.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import warnings
from typing import Any
from urllib.parse import urlsplit, urlunsplit

PAGE = "report.html"
SECTIONS = {
    "loss-curves": "Loss curves",
    "probe-metrics": "Gradient probe: bias, variance, cosine, staleness",
    "best-objective": "Best objective per estimator",
    "param-importances": "Parameter importances",
    "parallel-coordinates": "Parallel coordinates of the searched parameters",
    "trials": "Trials",
}
PROBE_PANELS = ("bias", "variance", "cosine", "staleness")
EXACT_HIDDEN = ("bias", "variance")  # zero up to rounding for an exact estimator
LOG_SPAN = 100.0  # a log axis only when positive values span at least two decades
STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
img{max-width:100%}table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}
.note{color:#7a3a00;font-size:14px}code{font-size:12px}"""


def render(
    plt,
    record: dict[str, Any],
    trials: list[dict[str, Any]],
    study: Any,
    summary: dict[str, Any],
    colors: dict[str, Any],
) -> str:
    """The page's HTML. ``trials``: ``report.sweep_trials``' dicts; ``summary``:
    ``report.summarize``'s; ``study``: the sweep's Optuna study (importances)."""
    spec = record["spec"]
    task = _task(spec)
    body = [
        f"<h1>Sweep {_e(record['name'])}</h1>",
        f"<p>task <code>{_e(spec.get('task'))}</code>, {len(trials)} trials, objective "
        f"<code>{_e(json.dumps(spec.get('objective')))}</code>, states "
        f"<code>{_e(json.dumps(summary['states']))}</code></p>",
    ]
    parts = {
        "loss-curves": lambda: _loss_section(plt, trials, colors, task),
        "probe-metrics": lambda: _probe_section(plt, trials, colors),
        "best-objective": lambda: _best_section(plt, trials, summary, colors),
        "param-importances": lambda: _importance_section(plt, study),
        "parallel-coordinates": lambda: _parallel_section(plt, trials, study, summary),
        "trials": lambda: _trials_section(record, trials),
    }
    for anchor, title in SECTIONS.items():
        body.append(f'<h2 id="{anchor}">{_e(title)}</h2>')
        body.append(parts[anchor]())
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>rnnsweep report: {_e(record['name'])}</title><style>{STYLE}</style></head>"
        "<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def _e(value: Any) -> str:
    return html.escape(str(value))


def _note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


def _img(plt, fig, alt: str) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _task(spec: dict[str, Any]):
    """The sweep's task (unit, references), or None when it cannot be built here."""
    try:
        from rnnsweep.tasks.registry import make_task

        return make_task(spec["task"], **(spec.get("task_settings") or {}))
    except Exception:  # noqa: BLE001 - the page then draws no reference levels
        return None


def _exact(estimator: str) -> bool:
    from rnnsweep.algorithms.estimator import ESTIMATORS

    base = ESTIMATORS.get(estimator.removesuffix("-kalman"))
    return bool(base is not None and base.exact)


def _bands(series: list[list[tuple[int, float]]]) -> tuple[list[int], list[list[float]]]:
    """Steps present in any series and, per step, the values of the series that have it."""
    by_step: dict[int, list[float]] = {}
    for points in series:
        for step, value in points:
            if math.isfinite(value):
                by_step.setdefault(step, []).append(value)
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def _draw_band(ax, series, color, label: str, scale=lambda v: v) -> list[float]:
    """Median line and interquartile band over ``series``; the values drawn."""
    import numpy as np

    steps, values = _bands(series)
    if not steps:
        return []
    q = np.array([np.percentile([scale(v) for v in vs], (25, 50, 75)) for vs in values])
    ax.plot(steps, q[:, 1], color=color, lw=1.6, label=f"{label} (n={len(series)})")
    ax.fill_between(steps, q[:, 0], q[:, 2], color=color, alpha=0.25, lw=0)
    return [float(v) for v in q.ravel()]


def _y_scale(ax, values: list[float]) -> None:
    positive = [v for v in values if v > 0]
    if values and len(positive) == len(values) and max(values) / min(values) >= LOG_SPAN:
        ax.set_yscale("log")


def _by_estimator(trials, key: str) -> dict[str, list[list[tuple[int, float]]]]:
    out: dict[str, list[list[tuple[int, float]]]] = {}
    for t in trials:
        if t["histories"].get(key):
            out.setdefault(t["estimator"], []).append(t["histories"][key])
    return out


def _loss_section(plt, trials, colors, task) -> str:
    curves = _by_estimator(trials, "loss")
    if not curves:
        return _note("no trial has reported a loss yet")
    unit = "loss (nats per step)"
    if task is not None and task.loss_kind == "mse":
        unit = "loss (mean squared error)"
    elif task is not None and task.bits_per_char:
        unit = "loss (bpc: bits per character)"
    convert = task.in_report_units if task is not None else (lambda v: v)
    fig, ax = plt.subplots(figsize=(9, 5))
    drawn: list[float] = []
    for estimator, series in sorted(curves.items()):
        drawn += _draw_band(ax, series, colors[estimator], estimator, convert)
    references = dict(task.references) if task is not None else {}
    styles = ("--", ":", "-.")
    for i, (name, level) in enumerate(sorted(references.items(), key=lambda kv: -kv[1])):
        ax.axhline(convert(level), color="0.3", ls=styles[i % 3], lw=1,
                   label=f"{name} {convert(level):.4g}")
        drawn.append(convert(level))
    _y_scale(ax, drawn)
    ax.set_xlabel("step")
    ax.set_ylabel(unit)
    ax.set_title("loss per estimator: median, band = interquartile range over trials")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    text = "" if references else _note("the task names no reference loss levels")
    return _img(plt, fig, "loss curves") + text


def _probe_section(plt, trials, colors) -> str:
    panels = {m: _by_estimator(trials, m) for m in PROBE_PANELS}
    if not any(panels.values()):
        return _note("no trial reported probe windows (set probe.every in the spec)")
    exact = sorted({e for m in panels.values() for e in m if _exact(e)})
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for ax, metric in zip(axes.ravel(), PROBE_PANELS, strict=True):
        drawn: list[float] = []
        for estimator, series in sorted(panels[metric].items()):
            if metric in EXACT_HIDDEN and estimator in exact:
                continue
            drawn += _draw_band(ax, series, colors[estimator], estimator)
        hidden = [e for e in exact if metric in EXACT_HIDDEN and e in panels[metric]]
        if hidden:  # named, never drawn at 1e-15
            ax.plot([], [], " ", label=f"exact: {', '.join(hidden)}")
        if not drawn and not hidden:
            ax.text(0.5, 0.5, f"no {metric} reported", ha="center", transform=ax.transAxes)
        _y_scale(ax, drawn)
        ax.set_xlabel("step (probe window end)")
        ax.set_ylabel(metric)
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        if drawn or hidden:
            ax.legend(fontsize="x-small")
    fig.tight_layout()
    note = (
        _note(f"exact estimators ({', '.join(exact)}): bias and variance are zero up to "
              "rounding, shown as \"exact\" in the legend rather than drawn")
        if exact else ""
    )
    return _img(plt, fig, "probe metrics") + note


def _best_section(plt, trials, summary, colors) -> str:
    import numpy as np

    per = summary["estimators"]
    values = {
        e: [t["value"] for t in trials if t["estimator"] == e and t["state"] == "COMPLETE"
            and t["value"] is not None and math.isfinite(t["value"])]
        for e in per
    }
    names = [e for e in per if values[e]]
    missing = [f"{e}: {per[e]['note']}" for e in per if not values[e]]
    notes = "".join(_note(m) for m in missing)
    if not names:
        return _note("no trial has completed yet") + notes
    metric = (summary.get("objective") or {}).get("metric", "objective")
    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(names) + 2), 4.5))
    rng = np.random.default_rng(0)
    for i, e in enumerate(names):
        vs = values[e]
        if len(vs) >= 3:
            ax.boxplot([vs], positions=[i], widths=0.5, showfliers=False)
        ax.scatter(i + rng.uniform(-0.12, 0.12, len(vs)), vs, color=colors[e], alpha=0.7, s=18)
        best = per[e]["best_value"]
        ax.scatter([i], [best], marker="*", s=160, color=colors[e], edgecolor="k", zorder=3)
        ax.annotate(f"{best:.4g}", (i, best), xytext=(8, 0), textcoords="offset points",
                    fontsize="small", va="center")
    ax.set_xticks(range(len(names)), [f"{e}\n(n={len(values[e])})" for e in names])
    ax.set_ylabel(f"{metric} ({summary['direction']}); star = best")
    ax.set_title("objective of completed trials per estimator")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return _img(plt, fig, "best objective per estimator") + notes


def _importance_section(plt, study) -> str:
    import optuna

    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if len(complete) < 2:
        return _note(f"not computed: {len(complete)} completed trial(s), at least 2 needed")
    try:
        with warnings.catch_warnings(record=True) as caught:  # e.g. "less than 2 trials"
            warnings.simplefilter("always")
            importances = optuna.importance.get_param_importances(study)
    except Exception as error:  # noqa: BLE001 - too few trials, conditional params, one value
        return _note(f"not computed: {' '.join(str(error).split())[:200]}")
    cautions = "".join(_note(f"Optuna: {w.message}") for w in caught)
    if not importances:
        return _note("not computed: no parameter is shared by every completed trial")
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(names) + 1.6))
    ax.barh(names, [importances[n] for n in names], color="tab:blue")
    ax.set_xlabel("importance (Optuna's default evaluator; the shares sum to 1)")
    ax.set_title("Optuna parameter importances (completed trials)")
    fig.tight_layout()
    image = _img(plt, fig, "parameter importances") + cautions
    if len(importances) < len({k for t in complete for k in t.params}):
        image += _note(
            "computed over the parameters every completed trial has; a parameter searched "
            "for only some estimators is left out"
        )
    return image


def _axis_position(value: Any, distribution: Any) -> float:
    """``value`` on ``distribution``'s axis scaled to [0, 1] (log where it is log)."""
    from optuna.distributions import CategoricalDistribution

    if isinstance(distribution, CategoricalDistribution):
        n = len(distribution.choices)
        return distribution.choices.index(value) / max(1, n - 1)
    low, high, x = float(distribution.low), float(distribution.high), float(value)
    if getattr(distribution, "log", False):
        low, high, x = math.log(low), math.log(high), math.log(x)
    return 0.5 if high == low else (x - low) / (high - low)


def _parallel_section(plt, trials, study, summary) -> str:
    from optuna.distributions import CategoricalDistribution

    complete = [t for t in study.get_trials(deepcopy=False)
                if t.state.name == "COMPLETE" and t.value is not None]
    distributions: dict[str, Any] = {}
    for t in complete:
        distributions.update(t.distributions)
    if not complete or not distributions:
        return _note("nothing to draw: no completed trial with searched parameters")
    names = sorted(distributions)
    values = [t.value for t in complete]
    vmin, vmax = min(values), max(values)
    cmap = plt.get_cmap("viridis_r" if summary["direction"] == "minimize" else "viridis")
    fig, ax = plt.subplots(figsize=(max(6, 1.8 * (len(names) + 1)), 4.8))
    xs = list(range(len(names) + 1))
    for t in complete:
        span = (t.value - vmin) / (vmax - vmin) if vmax > vmin else 0.5
        points = [(x, _axis_position(t.params[n], distributions[n]))
                  for x, n in enumerate(names) if n in t.params] + [(len(names), span)]
        px, py = zip(*points, strict=True)
        ax.plot(px, py, color=cmap(span), alpha=0.8, lw=1.2, marker="o", ms=3)
    for x, n in enumerate(names):
        d = distributions[n]
        if isinstance(d, CategoricalDistribution):  # every choice at its place
            for choice in d.choices:
                ax.annotate(str(choice), (x, _axis_position(choice, d)), xytext=(4, 3),
                            textcoords="offset points", fontsize="x-small")
            continue
        for value, y in ((d.high, 1.02), (d.low, -0.07)):
            ax.annotate(f"{value:.3g}", (x, y), ha="center", fontsize="x-small")
    ax.annotate(f"{vmax:.4g}", (len(names), 1.02), ha="center", fontsize="x-small")
    ax.annotate(f"{vmin:.4g}", (len(names), -0.07), ha="center", fontsize="x-small")
    for x in xs:
        ax.axvline(x, color="0.5", lw=0.8)
    metric = (summary.get("objective") or {}).get("metric", "objective")
    labels = [f"{n}{' (log)' if getattr(distributions[n], 'log', False) else ''}" for n in names]
    ax.set_xticks(xs, labels + [metric])
    ax.set_yticks([])
    ax.set_ylim(-0.12, 1.08)
    ax.set_title(f"completed trials, coloured by {metric} "
                 "(a line passes an axis it was not searched on)", fontsize="medium")
    fig.tight_layout()
    return _img(plt, fig, "parallel coordinates")


def run_link(tracking_uri: str, experiment: Any, run_id: str) -> tuple[str, bool]:
    """``(href, absolute)``: the MLflow UI address of a run; relative (``#/experiments/...``)
    when the tracking store is not an HTTP server. Credentials in the URI are dropped."""
    page = f"#/experiments/{experiment}/runs/{run_id}"
    parts = urlsplit(tracking_uri)
    if parts.scheme in ("http", "https") and parts.hostname:
        netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
        base = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        return f"{base}/{page}", True
    return page, False


def _trials_section(record, trials) -> str:
    uri, experiment = record["tracking_uri"], record.get("mlflow_experiment_id", "")
    rows = []
    absolute = True
    for t in sorted(trials, key=lambda t: t["number"]):
        link = ""
        if t.get("run_id"):
            href, absolute = run_link(uri, experiment, t["run_id"])
            link = f'<a href="{_e(href)}">{_e(t["run_id"][:8])}</a>'
        value = t["value"]
        cells = [
            str(t["number"]), _e(t["estimator"]), _e(t["state"]),
            "" if value is None else f"{value:.6g}",
            f"<code>{_e(json.dumps(t['settings'], sort_keys=True, default=str))}</code>",
            "" if t.get("pruned_at_step") is None else str(t["pruned_at_step"]),
            link,
        ]
        rows.append(f'<tr class="trial">{"".join(f"<td>{c}</td>" for c in cells)}</tr>')
    head = "".join(f"<th>{h}</th>" for h in (
        "trial", "estimator", "state", "objective (pruned: last loss)", "settings",
        "pruned at step", "MLflow run"))
    note = "" if absolute else _note(
        "the tracking store is not an MLflow server, so the run links are relative "
        "(#/experiments/ID/runs/RUN): open them from an MLflow UI serving this store, e.g. "
        f"`rnnsweep ui {record['name']}`"
    )
    return note + f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
