"""The ``rnnsweep`` command line: one subcommand per user task.

Heavy imports (ray, optuna, mlflow) happen inside the subcommands that need them, so that
``rnnsweep gradcheck`` and ``--help`` start quickly.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections.abc import Sequence

from rnnsweep.orchestrator.device import resolve_device
from rnnsweep.orchestrator.environment_fault import EXIT_ENVIRONMENT, EnvironmentFault, describe
from rnnsweep.orchestrator.sweep_lease import LeaseHeld

# 3: the sweep is being driven by another live driver (launch, resume); 130: interrupted
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_HELD = 0, 1, 2, 3
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a tool killed by it

GRADCHECK_EXAMPLES = """\
examples:
  rnnsweep gradcheck                                # every estimator, tanh cell, float64
  rnnsweep gradcheck --cell gru --hidden 8 --estimators uoro,nobacktrack,rtrl
  rnnsweep gradcheck --steps 20 --hidden 8 --samples 1024 --json
  rnnsweep gradcheck --estimators tbptt --truncation 5   # a biased truncation: reported only

exit status: 0 when every judged claim holds, 1 otherwise, 2 on bad arguments.
"""


RUN_EXAMPLES = """\
examples:
  rnnsweep run --task add --estimator uoro --steps 1000     # default 100000 steps
  rnnsweep run --task add --estimator tbptt --steps 2000 --set truncation=10 --summary-json o.json
  rnnsweep run --task influence-balancing --estimator rtrl --steps 1000 --no-mlflow
  rnnsweep run --task add --estimator nobacktrack-kalman --set process_noise=1e-4 --steps 300
  rnnsweep run --task add --estimator uoro --steps 2000 --probe-every 1000 --checkpoint ck.pt
  rnnsweep run --resume ck.pt                     # continue bit-for-bit, same MLflow run
  rnnsweep run --resume ck.pt --steps 3000        # extend it to 3000 steps
  rnnsweep run --resume ck.pt --steps 4000 --set lr=3e-4  # keys safe mid-run: lr, ...


{set_keys}
"""
SETTINGS_EXAMPLES = """\
examples:
  rnnsweep settings                              # every key: type, default, bounds, scope
  rnnsweep settings lr truncation probe_samples  # some keys
  rnnsweep settings --estimator tbptt --task add # the keys a tbptt learner on add uses
  rnnsweep settings --json | jq '.[] | select(.pack == "per-member") | .name'

The same table validates `rnnsweep run --set` and sweep specs: an unknown key gets a
did-you-mean, a key that does not apply says where it does, a bad value exits 2.
"""


def _fill(text: str) -> str:
    """``{set_keys}``, ``{rules}``, ``{default:KEY}`` and ``{sweep_default:KEY}`` filled from
    the settings tables. Only when help is shown: the table loads the task modules (torch),
    which plain commands need not."""
    if "{rules}" in text:
        from rnnsweep.algorithms.settings import RULES

        text = text.replace("{rules}", ", ".join(RULES))
    if "{sweep_default:" in text:
        import re

        from rnnsweep.orchestrator.sweep_settings import SWEEP_SETTINGS

        pattern = r"\{sweep_default:([\w.]+)\}"
        text = re.sub(pattern, lambda m: str(SWEEP_SETTINGS[m[1]].default), text)
    if "{set_keys}" not in text and "{default:" not in text:
        return text
    import re

    from rnnsweep.algorithms.settings import HYPER_KEYS, LEARNER_KEYS, RESUME_SAFE_KEYS, SETTINGS

    keys = (
        f"--set KEY=VALUE takes the learner keys ({', '.join(LEARNER_KEYS)}), the "
        f"estimator's hyperparameters ({', '.join(HYPER_KEYS)}) and the task's settings "
        "(e.g. t1, t2 of add). `rnnsweep settings` lists each with its type, default, bounds "
        "and where it applies. An unknown key, a key that does not apply to the estimator or "
        "optimizer, or a bad value exits 2 before any work. With --resume, only the keys safe "
        f"to change mid-run ({', '.join(RESUME_SAFE_KEYS)}): they apply from the resume step."
    )
    text = text.replace("{set_keys}", textwrap.fill(keys, 92))
    return re.sub(r"\{default:(\w+)\}", lambda m: SETTINGS[m[1]].default_text(), text)


class _TableHelp(argparse.RawDescriptionHelpFormatter):
    """Help whose ``{...}`` placeholders the settings table fills (see ``_fill``)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        return _fill(super()._get_help_string(action) or "")

    def add_text(self, text: str | None) -> None:
        super().add_text(_fill(text) if isinstance(text, str) else text)


LAUNCH_EXAMPLES = """\
examples:
  rnnsweep launch examples/smoke.yaml --workers 2       # a 2-minute laptop sweep
  rnnsweep launch examples/compare_add.yaml --dry-run   # validate, show the search space
  RAY_ADDRESS=auto rnnsweep launch examples/gpu_cluster.yaml   # on a Ray cluster's head
  rnnsweep launch examples/smoke.yaml --set trials=4 --set search.lr.high=1e-3 --dry-run

--set KEY=VALUE overrides one key of the spec (repeatable; a later one wins): a dotted KEY
reaches into sections (search.lr.high, probe.every, fixed.log_every, resources.cpus), the
VALUE is YAML (1e-2, true, [uoro, rtrl]; null removes the key). An unknown key (with a
did-you-mean) or a bad value exits 2 naming the --set, before anything is created.

estimators and pruning (spec keys with their defaults; --dry-run shows both):
  estimator_choice: {sweep_default:estimator_choice}
      the trials shared evenly by the estimators, each searched by its own sampler
      (searched: the sampler picks the estimator)
  prune_within: {sweep_default:prune_within}
      a trial pruned only against trials of its own estimator, task and cell
      (global: against every trial)
  min_complete_per_estimator: {sweep_default:min_complete_per_estimator}
      completed trials an estimator needs before its trials may be pruned

exit status: 0 when the sweep ends; 2 on a bad spec, or resources no node has (nothing
created); 3 when another live driver holds the sweep; 74 the machine (disk full, read-only or
locked store: one line names it; resume once fixed); 130 when stopped by Ctrl-C or SIGTERM
(checkpoints kept: `rnnsweep resume NAME`).
"""
RESUME_EXAMPLES = """\
examples:
  rnnsweep resume smoke             # running trials continue from their checkpoints
  rnnsweep resume smoke --workers 2
  rnnsweep resume smoke --restart-broken   # a lost checkpoint's trial starts again at 0

One driver at a time: a second launch or resume exits 3 naming the holder (host, pid) and its
heartbeat's age. A driver killed on this host is taken over at once; one on another machine
once its heartbeat is older than the sweep's lease_timeout (60 s).
exit status: 0 when the sweep ends, 2 bad input, 3 when another live driver holds it, 74 the
machine (disk full, read-only, locked), 130 when stopped by Ctrl-C or SIGTERM.
"""
STATUS_EXAMPLES = """\
examples:
  rnnsweep status smoke
  rnnsweep status smoke --json | jq '.trials[] | select(.state == "COMPLETE")'
  rnnsweep status smoke --watch     # redrawn every 2 s until the sweep is finished
  rnnsweep status smoke --watch --interval 5 --json   # one JSON line per refresh

It says whether a driver runs the sweep (host, pid, heartbeat age, from its lease); when none
does, the trials it left RUNNING show as INTERRUPTED and `rnnsweep resume NAME` continues them.
Each trial shows its objective, wall time, steps/s and ETA (from the rate its driver last
recorded), its parameters in full, those that differ between trials first; the header gives
the sweep's ETA (remaining steps at each trial's rate, on the driver's workers). It only
reads the stores: it never starts Ray nor takes the lease, --watch included.
"""
STOP_EXAMPLES = """\
examples:
  rnnsweep stop smoke               # ask its driver to stop; wait until it has
  rnnsweep stop smoke --no-wait     # ask, and return at once

Works from any terminal or machine that reaches the sweep's Optuna database: the request is
a row beside the sweep's lease, read by the driver's heartbeat (every 5 s). The driver then
stops as on Ctrl-C: running trials keep their checkpoints and show as INTERRUPTED, their
MLflow runs and the parent run end KILLED, it exits 130; `rnnsweep resume NAME` continues.
exit status: 0 once stopped, or when no driver holds the sweep (nothing to stop); 1 if the
driver still holds it after --timeout; 2 on an unknown sweep.
"""
DELETE_EXAMPLES = """\
examples:
  rnnsweep launch examples/smoke.yaml --name scratch --set trials=2 --set steps=500
  rnnsweep delete scratch <<< scratch    # asks to type its name (here on stdin)
  rnnsweep launch examples/smoke.yaml --name scratch --set trials=2 --set steps=500
  rnnsweep delete scratch --yes          # without the question

Deletes the Optuna study, the MLflow parent and child runs (and the experiment when nothing
else is in it; MLflow marks them deleted, `mlflow gc` purges them), the checkpoints, the
metric journal and the sweep's record. Interrupted half-way, `delete` again finishes it.
exit status: 0 deleted; 1 not confirmed; 2 on an unknown sweep; 3 while a driver holds it
(stop it first: `rnnsweep stop NAME`).
"""
EXTEND_EXAMPLES = """\
examples:
  rnnsweep extend smoke --trials +2             # two more trials, then run them
  rnnsweep extend smoke --steps 4500 --workers 2   # every trial runs (on) to 4500 steps

Works on a finished or stopped sweep (a driver holding it: exit 3). --steps is the budget of
every trial: a stopped trial continues from its checkpoint to it; a COMPLETE one continues
from its final checkpoint as a new trial (user attr `continues`: its number) in its MLflow
run (Optuna's COMPLETE is final); PRUNED and FAILED ones stay. Neither may shrink (exit 2).
exit status as for resume: 0 when the sweep ends, 2 bad input, 3 while a driver holds it, 130
when stopped.
"""
SWEEP_NAME = "the sweep's name (its spec's `name`, or launch --name)"
BEST_EXAMPLES = """\
examples:
  rnnsweep best smoke                      # the best trial of every estimator of the spec
  rnnsweep best smoke -o best.yaml
  rnnsweep run --config best.yaml --estimator uoro   # run a best configuration again

One row per estimator of the spec; one without a completed trial reads "no completed trial
(3 pruned, 1 failed)", its trials counted by state (running ones show as interrupted when no
driver runs the sweep).
"""
UI_EXAMPLES = """\
examples:
  rnnsweep ui smoke                  # serve, print http://127.0.0.1:5000/rnnsweep/open/<id>
  rnnsweep ui smoke --port 5055
  rnnsweep ui                        # every experiment of the state directory's store
  ssh -L 5000:127.0.0.1:5000 HOST    # from a laptop, while `rnnsweep ui` runs on HOST

The server listens on 127.0.0.1 only and runs until Ctrl-C. A sweep tracked on a remote MLflow
server (http(s)://...) starts nothing: its runs-table address is printed.
exit status: 0 after Ctrl-C, 1 if the server exits by itself, 2 on an unknown sweep, a port
in use or a server that does not start (its log's last lines are shown).
"""
REPORT_EXAMPLES = """\
examples:
  rnnsweep report smoke             # report.html, figures, summary.json in DIR/reports/smoke/
  rnnsweep report smoke --out figures/smoke

report.html is one self-contained page (figures inline, no network needed): loss curves per
estimator (median and interquartile band, the task's reference levels), the probe's bias,
variance, cosine and staleness against step, the best objective per estimator with its spread,
Optuna's parameter importances, a parallel-coordinate plot of the searched parameters and a
table of every trial linked to its MLflow run. The PNG figures and summary.json sit beside it.
A figure without data is skipped with a note. Every file is also logged to the sweep's MLflow
parent run under report/.
"""

COMPARE_EXAMPLES = (  # one line per example, so that each can be run as written
    "examples:\n"
    "  rnnsweep compare --task add --estimators rtrl,uoro,nobacktrack,kf-rtrl,snap1,rflo,tbptt "
    "--hidden 8 --steps 200 --probe-every 50 --out cmp\n"
    "  rnnsweep compare --task add --estimators uoro,nobacktrack,rtrl --drive uoro --hidden 8 "
    "--steps 200 --window 50 --no-mlflow --out cmp-uoro\n"
    "  rnnsweep compare --task add --estimators rtrl,tbptt,snap1 --hidden 8 --steps 200 "
    "--probe-every 50 --set truncation=4 lr=0.01 --out cmp-tbptt\n"
    """
The driven learner (--drive, default the first listed) learns as `rnnsweep run` would; every
other estimator runs passively on its trajectory: the same parameters at every step, the same
inputs and hidden states, its own estimator state, its gradients never applied. g* is exact
RTRL run passively on the same trajectory (the true online gradient). Per window: each
estimator's cosine to g* and the pairwise cosines of the window's summed gradients, over the
recurrent parameters only. Figures: a heat map of the pairwise cosines (mean over windows) and
the cosines to g* over time, written to --out and logged to an MLflow run (experiment
rnnsweep-compare) with alignment.json.
exit status: 0 when done, 2 on bad input (nothing written), 130 when stopped by Ctrl-C.
"""
)


def _estimator_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected a comma-separated list of estimator names")
    return names


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"expected a TCP port in 1..65535, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rnnsweep",
        description="Online gradient estimators for recurrent networks, and sweeps of them.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    check = sub.add_parser(
        "gradcheck",
        help="check that every estimator computes what it claims (exact / unbiased)",
        description=(
            "Draw a random cell and a random stream, take the BPTT gradient of the summed "
            "loss as the truth, run each estimator online over the same steps with "
            "SAMPLES independent noise draws, and compare."
        ),
        epilog=GRADCHECK_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument(
        "--cell", choices=["tanh", "gru", "lstm"], default="tanh", help="the cell (default tanh)"
    )
    check.add_argument("--hidden", type=_positive_int, default=16, help="units (default 16)")
    check.add_argument("--steps", type=_positive_int, default=30, help="stream length T (30)")
    check.add_argument(
        "--samples",
        type=_positive_int,
        default=4096,
        help="independent noise draws K for stochastic estimators (4096)",
    )
    check.add_argument(
        "--dtype", choices=["float64", "float32"], default="float64", help="default float64"
    )
    check.add_argument(
        "--estimators",
        type=_estimator_list,
        default=None,
        help="comma-separated names (default: all but bptt, the reference)",
    )
    check.add_argument(
        "--truncation",
        type=_positive_int,
        default=None,
        help="tbptt truncation (default: the stream length, which makes it exact)",
    )
    check.add_argument("--seed", type=int, default=0, help="draws the cell and stream (default 0)")
    check.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default auto)")
    check.add_argument("--json", action="store_true", help="print one JSON object")
    check.set_defaults(handler=gradcheck_command)

    run = sub.add_parser(
        "run",
        help="train one online learner end to end (progress, MLflow, checkpoints)",
        description="Train one online learner on a task stream and record it in MLflow.",
        epilog=RUN_EXAMPLES,
        formatter_class=_TableHelp,
    )
    run.add_argument("--task", help="add, influence-balancing, copy, brackets, anbn, mimic, text")
    run.add_argument("--estimator", help="one of {rules}")
    run.add_argument("--cell", default=None, help="tanh, gru or lstm (default {default:cell})")
    run.add_argument("--hidden", type=int, default=None, help="units (default {default:hidden})")
    run.add_argument(
        "--steps", type=_positive_int, default=None,
        help="default 100000; with --resume: extend the run to this many steps",
    )
    run.add_argument(
        "--set",
        nargs="+",
        metavar="KEY=VALUE",
        action="extend",
        default=[],
        help="any setting of the table (see below and `rnnsweep settings`)",
    )
    run.add_argument("--seed", type=int, default=None, help="default {default:seed}")
    run.add_argument("--dtype", default=None, help="float32 or float64 (default {default:dtype})")
    run.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    run.add_argument("--probe-every", type=int, default=None, help="probe every K steps")
    run.add_argument("--summary-json", metavar="PATH", help="write the run's summary there")
    run.add_argument("--no-mlflow", action="store_true", help="do not record in MLflow")
    run.add_argument("--tracking-uri", help="MLflow URI (default: SQLite in the state dir)")
    run.add_argument("--state-dir", help="default $RNNSWEEP_STATE_DIR or ./.rnnsweep")
    run.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="write checkpoints here (atomically; with --resume: default its PATH)",
    )
    run.add_argument(
        "--checkpoint-every", type=_positive_int, default=10000, help="steps (default 10000)"
    )
    run.add_argument(
        "--resume", metavar="PATH", help="continue the run in this checkpoint (and update it)"
    )
    run.add_argument(
        "--config", metavar="FILE", help="a run file, e.g. written by `rnnsweep best -o FILE`"
    )
    run.set_defaults(handler=run_entry)

    def sweep_parser(name: str, help_text: str, examples: str) -> argparse.ArgumentParser:
        sub_parser = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=examples,
            formatter_class=_TableHelp,
        )
        sub_parser.add_argument("--state-dir", help="default $RNNSWEEP_STATE_DIR or ./.rnnsweep")
        return sub_parser

    launch = sweep_parser("launch", "launch a sweep from a YAML spec", LAUNCH_EXAMPLES)
    launch.add_argument("spec", help="the sweep spec (YAML); see examples/")
    launch.add_argument("--name", help="override the spec's name")
    launch.add_argument("--workers", type=_positive_int, help="concurrent trials (actors)")
    launch.add_argument(
        "--set",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="override a spec key, dotted into sections (trials=40, search.lr.high=1e-2); "
        "repeatable; checked against the spec's schema",
    )
    launch.add_argument(
        "--dry-run", action="store_true", help="validate and show the search space; start nothing"
    )
    launch.set_defaults(handler=_lazy("rnnsweep.orchestrator.sweep_commands", "launch_command"))

    resume = sweep_parser("resume", "continue an interrupted sweep", RESUME_EXAMPLES)
    resume.add_argument("name", help=SWEEP_NAME)
    resume.add_argument(
        "--workers", type=_positive_int, help="concurrent trials (actors); default: the spec's"
    )
    resume.add_argument(
        "--restart-broken",
        action="store_true",
        help="restart a trial whose checkpoint is missing or corrupt from step 0, in a new "
        "MLflow run (default: that trial fails with the reason; the others go on)",
    )
    resume.set_defaults(handler=_lazy("rnnsweep.orchestrator.sweep_commands", "resume_command"))

    extend = sweep_parser(
        "extend", "add trials or steps to a finished or stopped sweep, and run them",
        EXTEND_EXAMPLES,
    )
    extend.add_argument("name", help=SWEEP_NAME)
    extend.add_argument(
        "--trials", metavar="+N|N", help="+N: N more trials; N: N trials in all (not fewer)"
    )
    extend.add_argument(
        "--steps", type=_positive_int, help="the step budget of unfinished and new trials"
    )
    extend.add_argument(
        "--workers", type=_positive_int, help="concurrent trials (actors); default: the spec's"
    )
    extend.set_defaults(handler=_lazy("rnnsweep.orchestrator.extend_command", "extend_command"))

    status = sweep_parser("status", "one row per trial of a sweep", STATUS_EXAMPLES)
    status.add_argument("name", help=SWEEP_NAME)
    status.add_argument(
        "--json", action="store_true", help="print one JSON object (driver, trials) instead"
    )
    status.add_argument(
        "--watch",
        action="store_true",
        help="redraw every --interval seconds (in place on a terminal, a new block in a log) "
        "until the sweep is finished; Ctrl-C stops it (exit 0)",
    )
    status.add_argument(
        "--interval",
        type=_positive_float,
        default=2.0,
        metavar="SECONDS",
        help="seconds between --watch refreshes (default: 2)",
    )
    status.set_defaults(handler=_lazy("rnnsweep.orchestrator.sweep_commands", "status_command"))

    stop = sweep_parser("stop", "stop a sweep's driver gracefully (any machine)", STOP_EXAMPLES)
    stop.add_argument("name", help=SWEEP_NAME)
    stop.add_argument(
        "--no-wait", action="store_true", help="return once asked, without waiting for the stop"
    )
    stop.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="how long to wait for the driver to stop (default 600)",
    )
    stop.set_defaults(handler=_lazy("rnnsweep.orchestrator.stop_command", "stop_command"))

    delete = sweep_parser(
        "delete", "delete a sweep: study, MLflow runs, checkpoints, record", DELETE_EXAMPLES
    )
    delete.add_argument("name", help=SWEEP_NAME)
    delete.add_argument(
        "--yes", action="store_true", help="delete without asking to type the sweep's name"
    )
    delete.set_defaults(handler=_lazy("rnnsweep.orchestrator.delete_command", "delete_command"))

    best = sweep_parser("best", "the best trial per estimator, as runs", BEST_EXAMPLES)
    best.add_argument("name", help=SWEEP_NAME)
    best.add_argument(
        "-o", "--output", metavar="FILE", help="write the rows (YAML, for run --config) there"
    )
    best.set_defaults(handler=_lazy("rnnsweep.orchestrator.sweep_commands", "best_command"))

    ui = sweep_parser("ui", "browse a sweep's runs in the MLflow UI (127.0.0.1 only)", UI_EXAMPLES)
    ui.add_argument("name", nargs="?", help="the sweep (default: list every experiment)")
    ui.add_argument(
        "--port", type=_port, help="default 5000, or the next free one if 5000 is taken"
    )
    ui.add_argument(
        "--timeout",
        type=float,
        default=90.0,
        metavar="SECONDS",
        help="how long to wait for the server to answer (default 90)",
    )
    ui.set_defaults(handler=_lazy("rnnsweep.orchestrator.ui_command", "ui_command"))

    compare = sub.add_parser(
        "compare",
        help="alignment matrix: several estimators on one driven learner's trajectory",
        description=(
            "Drive one learner with one estimator and run the others passively on its "
            "trajectory; per window, log each one's cosine to g* (exact RTRL along the same "
            "trajectory) and their pairwise cosines (recurrent parameters), and draw them."
        ),
        epilog=COMPARE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    compare.add_argument("--task", required=True, help="add, influence-balancing, copy, ...")
    compare.add_argument(
        "--estimators", type=_estimator_list, required=True, help="two or more, comma-separated"
    )
    compare.add_argument("--drive", help="the estimator that drives (default: the first listed)")
    compare.add_argument("--steps", type=_positive_int, default=2000, help="default 2000")
    compare.add_argument(
        "--probe-every", type=_positive_int, default=100, help="a window opens every K steps (100)"
    )
    compare.add_argument(
        "--window", type=_positive_int, default=None, help="steps per window (default: all K)"
    )
    compare.add_argument("--cell", default="tanh", help="tanh, gru or lstm (default tanh)")
    compare.add_argument("--hidden", type=_positive_int, default=32, help="units (default 32)")
    compare.add_argument("--seed", type=int, default=0, help="the learner's seed (default 0)")
    compare.add_argument(
        "--dtype", choices=["float64", "float32"], default="float64", help="default float64"
    )
    compare.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    compare.add_argument(
        "--set", nargs="+", metavar="KEY=VALUE", action="extend", default=[],
        help="driver settings (lr, ...); an estimator key goes to every listed one it fits",
    )
    compare.add_argument("--out", metavar="FOLDER", help="default DIR/compare/RUN_NAME/")
    compare.add_argument("--no-mlflow", action="store_true", help="do not record in MLflow")
    compare.add_argument("--tracking-uri", help="MLflow URI (default: SQLite in the state dir)")
    compare.add_argument("--state-dir", help="default $RNNSWEEP_STATE_DIR or ./.rnnsweep")
    compare.set_defaults(handler=_lazy("rnnsweep.orchestrator.compare_command", "compare_command"))

    settings = sub.add_parser(
        "settings",
        help="every setting: type, default, bounds, where it applies, per-member or pack-shared",
        description=(
            "List the settings table: every learner, optimizer, estimator, Kalman, probe, "
            "task and sweep key with its type, default, bounds or choices, the estimators it "
            "applies to, whether packed members may differ in it, and a one-line doc."
        ),
        epilog=SETTINGS_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    settings.add_argument("keys", nargs="*", metavar="KEY", help="only these keys")
    settings.add_argument("--estimator", help="only the keys that apply to this estimator")
    settings.add_argument(
        "--optimizer", help="with --estimator: the optimizer (default adam, or kalman)"
    )
    settings.add_argument("--task", help="only this task's settings (default: every task's)")
    settings.add_argument("--json", action="store_true", help="print a JSON list of rows")
    settings.set_defaults(
        handler=_lazy("rnnsweep.orchestrator.settings_command", "settings_command")
    )

    report = sweep_parser("report", "figures and a summary of a sweep", REPORT_EXAMPLES)
    report.add_argument("name", help=SWEEP_NAME)
    report.add_argument("--out", metavar="FOLDER", help="default DIR/reports/NAME/")
    report.set_defaults(handler=_lazy("rnnsweep.orchestrator.report", "report_command"))
    return parser


def _lazy(module: str, function: str):
    def handler(args: argparse.Namespace) -> int:
        import importlib

        return getattr(importlib.import_module(module), function)(args)

    return handler


def run_entry(args: argparse.Namespace) -> int:
    from rnnsweep.orchestrator.run_command import run_command

    if args.steps is None and not args.resume and not args.config:
        args.steps = 100_000
    return run_command(args)


def gradcheck_command(args: argparse.Namespace) -> int:
    import torch

    from rnnsweep.algorithms.gradcheck import gradcheck

    dtype = torch.float64 if args.dtype == "float64" else torch.float32
    device = resolve_device(args.device)
    progress = None if args.json else (lambda line: print(f"  .. {line}", file=sys.stderr))
    report = gradcheck(
        args.cell,
        args.hidden,
        args.steps,
        args.samples,
        dtype,
        args.estimators,
        args.seed,
        device,
        args.truncation,
        progress,
    )
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_gradcheck(report))
    return EXIT_OK if report["passed"] else EXIT_FAILED


def format_gradcheck(report: dict) -> str:
    lines = [
        f"gradcheck: {report['cell']} cell, n={report['hidden']}, T={report['steps']}, "
        f"K={report['samples']}, {report['dtype']} on {report['device']}",
        f"{'estimator':<12} {'claim':<9} {'rel_error':>10} {'std_error':>10} "
        f"{'rel_var':>10} {'cosine':>8}  verdict",
    ]
    for name, r in report["estimators"].items():
        claim = "exact" if r["exact"] else "unbiased" if r["unbiased"] else "biased"
        if not r["judged"]:
            verdict = "reported"
        elif r["exact"]:
            verdict = "ok" if r["passed"] else f"FAIL (> {report['exact_tolerance']:g})"
        else:
            verdict = "ok" if r["passed"] else "FAIL (> 4 std_error)"
        note = f"  [{r['note']}]" if r["note"] else ""
        lines.append(
            f"{name:<12} {claim:<9} {r['rel_error']:>10.3e} {r['std_error']:>10.3e} "
            f"{r['rel_variance']:>10.3e} {r['cosine']:>8.4f}  {verdict}{note}"
        )
    for name, why in report.get("skipped", {}).items():
        lines.append(f"{name:<12} skipped: {why}")
    lines.append("all claims hold" if report["passed"] else "SOME CLAIMS FAIL")
    return "\n".join(lines)


def _one_line_warnings(command: str) -> None:
    """rnnsweep's own warnings (a ``compile`` that steps eagerly, a probe whose horizon is
    short, ...) print as one line naming the command, like its errors; other libraries' keep
    their format."""
    import os
    import warnings

    plain = warnings.formatwarning
    packages = ("rnnsweep.algorithms", "rnnsweep.orchestrator", "rnnsweep.tasks")

    def ours(filename: str) -> bool:
        # asked only when a warning prints: a package that warned is imported by then (and
        # no command pays for importing torch to install this hook)
        folders = [
            os.path.dirname(module.__file__) + os.sep
            for module in map(sys.modules.get, packages)
            if module is not None and module.__file__
        ]
        return str(filename).startswith(tuple(folders))

    def format_warning(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        line: str | None = None,
    ) -> str:
        if ours(filename):
            return f"rnnsweep {command}: warning: {message}\n"
        return plain(message, category, filename, lineno, line)

    warnings.formatwarning = format_warning


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "run":  # (not the serving commands: they keep Python's own format)
        _one_line_warnings(args.command)
    try:
        return args.handler(args)
    except BrokenPipeError:  # `rnnsweep status NAME | head`: the reader left, as for any tool
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error at exit
        return EXIT_BROKEN_PIPE
    except ValueError as error:
        from rnnsweep.orchestrator.url_secrets import scrub

        print(f"rnnsweep {args.command}: error: {scrub(str(error))}", file=sys.stderr)
        return EXIT_HELD if isinstance(error, LeaseHeld) else EXIT_USAGE
    except Exception as error:  # the machine's faults (full, read-only, locked): one line
        from rnnsweep.orchestrator.url_secrets import scrub

        fault = str(error) if isinstance(error, EnvironmentFault) else describe(error, {})
        if fault is None:
            raise
        print(f"rnnsweep {args.command}: error: {scrub(fault)}", file=sys.stderr)
        return EXIT_ENVIRONMENT


def entry() -> None:
    """The console script: ``main``, then the process's end. A local Ray instance left to its
    reaper (``local_ray.leave_to_reaper``) needs an end without Ray's atexit shutdown."""
    import os

    from rnnsweep.orchestrator import local_ray

    local_ray.exit_follows = True
    try:
        code = main()
    except BaseException as error:
        if not local_ray.left_to_reaper:
            raise
        if isinstance(error, KeyboardInterrupt):
            code = 130
        else:
            import traceback

            traceback.print_exc()
            code = 1
    if local_ray.left_to_reaper:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
