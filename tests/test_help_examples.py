"""Every example of every subcommand's ``--help`` runs as written.

The subcommands come from the argparse parser (``cli.build_parser``), not from a list kept
here. Their examples run in that order, each as its line reads (its ``# comment`` dropped),
through ``bash`` in a temporary folder holding a copy of ``examples/`` (its own state
directory and Ray), with ``rnnsweep`` on the PATH; ``launch`` goes first, since the others use
the sweep ``smoke`` it makes. The examples that use no sweep of another example (``gradcheck``,
``run``, ``compare``, ``settings``, ``delete`` with its own sweep, ``--dry-run``) run in a
second folder at the same time, in their order (``run --resume ck.pt`` after the run that made
``ck.pt``). Each must exit 0; the seconds each took are printed. The exceptions are named
below with why, and a line that is neither runnable nor listed fails the test:

- ``ui`` serves until Ctrl-C: each ``ui`` example is started, must print the runs-table
  address, answer it over HTTP, then stop with exit 0 on SIGINT;
- a line that needs what no test machine has (a Ray cluster's head with GPUs) is checked with
  ``--dry-run`` added, which validates its spec;
- a line that is not an ``rnnsweep`` command (``ssh -L ...``) is not run.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from ray_processes import kill, ray_processes, wait_until_gone
from served_process import ServedProcess

from rnnsweep.orchestrator.cli import build_parser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIRST = ("launch",)  # their examples make what the others' need
NEEDS_A_CLUSTER = {"RAY_ADDRESS=auto rnnsweep launch examples/gpu_cluster.yaml"}
NOT_RNNSWEEP = {"ssh -L 5000:127.0.0.1:5000 HOST"}
SERVES = ("ui",)
TIMEOUT = 900  # one example, on a loaded machine
# subcommands whose examples need no sweep another example made: run beside the sweep's
ON_THEIR_OWN = ("gradcheck", "run", "compare", "settings", "delete")


def subcommands() -> dict[str, argparse.ArgumentParser]:
    """Every subcommand's parser, by name, in the order the parser declares them."""
    parser = build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def examples(parser: argparse.ArgumentParser) -> list[str]:
    """The indented lines under ``examples:`` in the parser's help, comments dropped."""
    lines = parser.format_help().splitlines()
    start = lines.index("examples:") + 1
    found = []
    for line in lines[start:]:
        if not line.startswith("  "):
            break
        found.append(re.sub(r"\s+#\s.*$", "", line).strip())
    return found


def _words(line: str) -> list[str]:
    """The command's words after any ``NAME=value`` environment prefixes."""
    words = shlex.split(line)
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
        words.pop(0)
    return words


def _env(folder: str, ray_root: str) -> dict[str, str]:
    bin_dir = os.path.join(folder, ".bin")
    os.makedirs(bin_dir, exist_ok=True)
    shim = os.path.join(bin_dir, "rnnsweep")
    with open(shim, "w") as handle:  # this interpreter's rnnsweep, installed or not
        handle.write(f'#!/bin/sh\nexec "{sys.executable}" -m rnnsweep.orchestrator.cli "$@"\n')
    os.chmod(shim, 0o755)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RAY_ADDRESS", "RNNSWEEP_STATE_DIR", "MLFLOW_TRACKING_URI")
    }
    env.update(PATH=f"{bin_dir}:{env.get('PATH', '')}", RAY_TMPDIR=ray_root)
    return env


def _run(line: str, folder: str, env: dict[str, str]) -> None:
    done = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {line}"],  # a failing rnnsweep before `| jq` fails
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, (
        f"`{line}` exited {done.returncode}\nstdout:\n{done.stdout[-3000:]}\n"
        f"stderr:\n{done.stderr[-3000:]}"
    )


def _serve(line: str, folder: str, env: dict[str, str]) -> None:
    """Start a serving example, fetch the address it prints, stop it with SIGINT (exit 0)."""
    served = ServedProcess(
        ["bash", "-c", f"exec {line}"], cwd=folder, env=env, start_new_session=True
    )
    try:
        url = served.next_line(300, "address")
        assert url.startswith("http://127.0.0.1:"), (line, url, served.stderr())
        with urllib.request.urlopen(url, timeout=30) as response:
            assert response.status == 200 and b"<html" in response.read().lower(), line
        assert served.stop(signal.SIGINT) == 0, f"`{line}` after Ctrl-C: {served.stderr()}"
    finally:
        served.close()
        _kill_servers_of(folder)


def _kill_servers_of(folder: str) -> None:
    """Any process left with this folder's stores on its command line (a server a failed
    check did not stop), by pid."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if folder in cmdline and "mlflow" in cmdline:
            try:
                os.kill(int(entry), signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_every_subcommand_has_examples_and_each_runs_as_written():
    parsers = subcommands()
    assert {"launch", "resume", "status", "best", "report", "ui", "run", "gradcheck"} <= set(
        parsers
    )
    order = [n for n in FIRST if n in parsers] + [n for n in parsers if n not in FIRST]
    planned = [(name, line) for name in order for line in examples(parsers[name])]
    for name in parsers:
        assert examples(parsers[name]), f"`rnnsweep {name} --help` shows no example"
    lines = {line for _, line in planned}
    # the exceptions are examples that exist: a stale entry here fails
    assert NEEDS_A_CLUSTER <= lines and NOT_RNNSWEEP <= lines
    for _, line in planned:
        assert line in NOT_RNNSWEEP or _words(line)[0] == "rnnsweep", (
            f"`{line}` is not an rnnsweep command; list it in NOT_RNNSWEEP with why"
        )

    # two folders, each with its own state directory and Ray; the sweep's examples in order
    # in one, those on their own in order in the other, at the same time
    on_their_own = [
        (name, line)
        for name, line in planned
        if name in ON_THEIR_OWN or "--dry-run" in line or line in NEEDS_A_CLUSTER
    ]
    groups = [[p for p in planned if p not in on_their_own], on_their_own]
    places = [_place() for _ in groups]
    ran: list[tuple[str, float]] = []
    try:
        with ThreadPoolExecutor(len(groups)) as pool:
            done = [
                pool.submit(_run_in_order, group, folder, env, ran)
                for group, (folder, _, env) in zip(groups, places, strict=True)
            ]
            for future in done:
                future.result()
        assert len(ran) == len(planned) - len(NOT_RNNSWEEP)
        # the best example ran a best configuration back: it found its run
        assert os.path.exists(os.path.join(places[0][0], "best.yaml"))
    finally:
        print("\n".join(f"{seconds:7.1f} s  {line}" for line, seconds in ran))
        for folder, ray_root, _ in places:
            kill(ray_processes(ray_root))
            wait_until_gone(ray_root, 30)
            _kill_servers_of(folder)
            shutil.rmtree(folder, ignore_errors=True)
            shutil.rmtree(ray_root, ignore_errors=True)


def _place() -> tuple[str, str, dict[str, str]]:
    """A temporary folder holding a copy of ``examples/``, a Ray temp root, and the
    environment the examples run in there."""
    folder = tempfile.mkdtemp(prefix="rnnsweep-help-")
    ray_root = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: Ray's socket paths
    shutil.copytree(os.path.join(ROOT, "examples"), os.path.join(folder, "examples"))
    return folder, ray_root, _env(folder, ray_root)


def _run_in_order(
    planned: list[tuple[str, str]], folder: str, env: dict[str, str], ran: list
) -> None:
    """Run ``planned`` (subcommand, line) one after the other in ``folder``; each line and its
    seconds go to ``ran``."""
    for name, line in planned:
        started = time.monotonic()
        if line in NOT_RNNSWEEP:
            continue
        if line in NEEDS_A_CLUSTER:
            _run(f"{line} --dry-run", folder, env)
        elif name in SERVES:
            _serve(line, folder, env)
        else:
            _run(line, folder, env)
        ran.append((line, round(time.monotonic() - started, 1)))
