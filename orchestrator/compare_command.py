"""``rnnsweep compare``: the alignment matrix of several estimators on one learner's trajectory.

One learner is driven by ``--drive`` (default: the first estimator listed); the others run
passively on its trajectory (``rnnsweep.algorithms.alignment``). Every window logs each
estimator's cosine to g* (exact RTRL along the same trajectory) and the pairwise cosine matrix,
recurrent parameters only, to one MLflow run. At the end it writes into ``--out``:

- ``alignment_matrix.png``: heat map of the pairwise cosine matrix, averaged over windows;
- ``cosine_over_time.png``: each estimator's cosine to g* per window;
- ``alignment.json``: every window's numbers and the means;

and logs the three files as artifacts of the run (under ``compare/``). Everything is validated
before anything is written: bad input exits 2 with one line, and leaves no file and no run.
"""

from __future__ import annotations

import io
import json
import math
import os
import sys
from typing import Any

from rnnsweep.algorithms.atomic_file import write_atomic
from rnnsweep.orchestrator import output_path

EXPERIMENT = "rnnsweep-compare"
ARTIFACT_PATH = "compare"
MATRIX, CURVES, NUMBERS = "alignment_matrix.png", "cosine_over_time.png", "alignment.json"


def _plan(args) -> dict[str, Any]:
    """Validate every argument and build the learner and the passive estimators; writes
    nothing. ``ValueError`` (one line) names the first problem."""
    from rnnsweep.algorithms import alignment
    from rnnsweep.algorithms.learner import Learner, LearnerSpec, split_settings, unused_settings
    from rnnsweep.algorithms.settings import (
        HYPER_KEYS,
        KALMAN_RULES,
        ONLINE,
        SETTINGS,
        did_you_mean,
    )
    from rnnsweep.orchestrator.run_command import parse_sets
    from rnnsweep.tasks.registry import TASKS

    names = list(args.estimators)
    for name in names:
        if name == "bptt":
            raise ValueError("estimator 'bptt' is offline (a reference): g* is the reference here")
        if name in KALMAN_RULES:
            raise ValueError(
                f"estimator {name!r} is a Kalman learning rule; compare measures gradient "
                f"estimators: list {KALMAN_RULES[name]!r}"
            )
        if name not in ONLINE:
            raise ValueError(
                f"unknown estimator {name!r}{did_you_mean(name, ONLINE)}; "
                f"known: {', '.join(ONLINE)}"
            )
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"--estimators lists {', '.join(repeated)} more than once")
    if len(names) < 2:
        raise ValueError(
            f"compare needs at least two estimators, got one ({names[0]}): "
            "e.g. --estimators rtrl,uoro"
        )
    drive = args.drive or names[0]
    if drive not in names:
        raise ValueError(f"--drive {drive!r} is not among --estimators ({', '.join(names)})")
    if args.task not in TASKS:
        raise ValueError(
            f"unknown task {args.task!r}{did_you_mean(args.task, sorted(TASKS))}; "
            f"known tasks: {', '.join(sorted(TASKS))}"
        )
    config = alignment.AlignmentConfig(args.probe_every, args.window or args.probe_every)
    if config.every > args.steps:
        raise ValueError(
            f"--probe-every {config.every} exceeds --steps {args.steps}: no window would close"
        )
    settings = parse_sets(args.set or [])
    hyper: dict[str, dict[str, Any]] = {}
    driver_settings: dict[str, Any] = {}
    for key, value in settings.items():
        if key not in HYPER_KEYS:
            driver_settings[key] = value  # learner and task keys: the driver's spec checks them
            continue
        users = [n for n in names if SETTINGS[key].estimators is None
                 or n in SETTINGS[key].estimators]
        if not users:
            raise ValueError(
                f"--set {key} applies to none of {', '.join(names)} "
                f"(only to {', '.join(SETTINGS[key].estimators or ())})"
            )
        for name in users:
            hyper.setdefault(name, {})[key] = value
        if drive in users:
            driver_settings[key] = value
    for key in ("probe_every", "probe_window", "probe_samples", "probe_horizon"):
        if key in driver_settings:
            raise ValueError(f"--set {key}: compare measures with --probe-every and --window")
    spec = LearnerSpec(
        task=args.task,
        estimator=drive,
        cell=args.cell,
        hidden=args.hidden,
        seed=args.seed,
        dtype=args.dtype,
        device=args.device,
        settings=driver_settings,
    )
    unused = unused_settings(spec, split_settings(spec)[4])
    if unused:
        raise ValueError("; ".join(unused))
    learner = Learner(spec)
    state = alignment.init(learner, names, hyper, config)
    return {"names": names, "drive": drive, "learner": learner, "state": state,
            "config": config, "settings": settings}


def compare_command(args) -> int:
    from rnnsweep.algorithms import alignment
    from rnnsweep.orchestrator.device import resolve_device
    from rnnsweep.orchestrator.progress import ProgressLine
    from rnnsweep.orchestrator.report import pyplot
    from rnnsweep.orchestrator.state_dir import resolve as resolve_state_dir

    args.device = resolve_device(args.device)
    plan = _plan(args)
    plt = pyplot()  # before anything is written
    names, drive, learner, state = plan["names"], plan["drive"], plan["learner"], plan["state"]
    run_name = f"compare-{args.task}-{drive}-s{args.seed}"
    state_dir = resolve_state_dir(args.state_dir)
    out = os.path.abspath(args.out or os.path.join(state_dir, "compare", run_name))
    output_path.folder_target(out, "--out")  # before any step
    tracker = None
    if not args.no_mlflow:
        from rnnsweep.orchestrator.tracking import Tracker, check_store, default_tracking_uri
        from rnnsweep.orchestrator.url_secrets import redact

        uri = args.tracking_uri or default_tracking_uri(state_dir)
        check_store(uri)
        tracker = Tracker(
            uri,
            EXPERIMENT,
            run_name=run_name,
            tags={"rnnsweep.command": "compare", "task": args.task, "drive": drive},
        )
        tracker.log_params(
            {
                "task": args.task,
                "drive": drive,
                "estimators": ",".join(names),
                "cell": learner.spec.cell,
                "hidden": learner.cell.hidden,
                "seed": args.seed,
                "dtype": args.dtype,
                "steps": args.steps,
                "probe_every": plan["config"].every,
                "window": plan["config"].window,
                **learner.config,
                **plan["settings"],
            }
        )
        print(f"MLflow run {tracker.run_id} at {redact(uri)}", file=sys.stderr)

    def on_window(report: dict[str, Any]) -> None:
        if tracker is None:
            return
        values = {f"cosine_gstar/{n}": c for n, c in report["cosine"].items()}
        for i, a in enumerate(names):
            for j in range(i + 1, len(names)):
                values[f"pairwise/{a}/{names[j]}"] = report["matrix"][i][j]
        tracker.log_metrics(report["step"], values)

    progress = ProgressLine(args.steps, f"compare on {args.task}, driven by {drive} ")

    def on_report(report: dict[str, Any]) -> None:
        progress.update(report["step"], loss=report["loss"])
        if tracker is not None:
            tracker.log_metrics(report["step"], {"loss": report["loss"]})

    alignment.attach(learner, state, on_window)
    try:
        summary = learner.run(args.steps, on_report)
    except KeyboardInterrupt:
        progress.close()
        if tracker is not None:
            tracker.close("KILLED")
        print(f"interrupted at step {learner.counters['t']}: no figures written",
              file=sys.stderr)
        return 130
    except BaseException:
        progress.close()
        if tracker is not None:
            tracker.close("FAILED")
        raise
    progress.close()
    means = alignment.summarize(state.reports, names)
    numbers = {
        "task": args.task,
        "drive": drive,
        "estimators": names,
        "steps": args.steps,
        "probe_every": plan["config"].every,
        "window": plan["config"].window,
        "parameters": "recurrent (theta) only",
        "reference": "g*: exact RTRL run passively on the driven trajectory",
        "final_loss": summary["final_loss"],
        "diverged": summary["diverged"],
        **means,
        "windows_detail": state.reports,
    }
    os.makedirs(out, exist_ok=True)
    _save(plt, _matrix_figure(plt, names, means["mean_matrix"], drive, means["windows"]),
          os.path.join(out, MATRIX))
    _save(plt, _curves_figure(plt, names, state.reports, drive), os.path.join(out, CURVES))
    write_atomic(os.path.join(out, NUMBERS),
                 (json.dumps(numbers, indent=2, default=str) + "\n").encode())
    if tracker is not None:
        for name in (MATRIX, CURVES, NUMBERS):
            tracker.log_artifact(os.path.join(out, name), ARTIFACT_PATH)
        tracker.log_metrics(
            args.steps, {f"mean_cosine_gstar/{n}": c for n, c in means["mean_cosine"].items()}
        )
        tracker.close("FAILED" if summary["diverged"] else "FINISHED")
    print(_table(names, means), file=sys.stdout)
    print(out)
    return 0


def _table(names: list[str], means: dict[str, Any]) -> str:
    width = max(8, *(len(n) for n in names))
    lines = [f"mean over {means['windows']} windows (recurrent parameters):",
             f"{'estimator':<{width}} {'cos g*':>7}  " + " ".join(f"{n[:7]:>7}" for n in names)]
    for i, name in enumerate(names):
        row = " ".join(f"{v:>7.3f}" for v in means["mean_matrix"][i])
        lines.append(f"{name:<{width}} {means['mean_cosine'][name]:>7.3f}  {row}")
    return "\n".join(lines)


def _save(plt, figure, path: str) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    plt.close(figure)
    write_atomic(path, buffer.getvalue())


def _matrix_figure(plt, names: list[str], matrix: list[list[float]], drive: str, windows: int):
    size = 1.0 + 0.7 * len(names)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    image = ax.imshow(matrix, vmin=-1.0, vmax=1.0, cmap="RdBu_r")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            text = "nan" if math.isnan(value) else f"{value:.2f}"
            ax.text(j, i, text, ha="center", va="center", fontsize="small",
                    color="white" if abs(value) > 0.6 else "black")
    fig.colorbar(image, ax=ax, label="cosine")
    ax.set_title(f"pairwise cosine, mean of {windows} windows\n(driven by {drive}; theta only)",
                 fontsize="medium")
    fig.tight_layout()
    return fig


def _curves_figure(plt, names: list[str], reports: list[dict[str, Any]], drive: str):
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [r["step"] + 1 for r in reports]
    for i, name in enumerate(names):
        values = [r["cosine"][name] for r in reports]
        style = "-" if name != drive else "-o"
        ax.plot(steps, values, style, label=name, color=plt.get_cmap("tab10")(i % 10),
                markersize=3)
    ax.axhline(0.0, color="grey", linewidth=0.5)
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel("step (window end)")
    ax.set_ylabel("cos(window gradient, g*)")
    ax.set_title(f"alignment with g* (exact RTRL on the trajectory driven by {drive})",
                 fontsize="medium")
    ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return fig
