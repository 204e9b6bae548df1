"""``rnnsweep stop NAME``: ask the driver of a sweep to stop, from any terminal or machine that
reaches the sweep's Optuna database.

The request is a row beside the sweep's lease (``sweep_lease.request_stop``), addressed to the
lease's current holder; its heartbeat thread reads it within one beat (5 s) and the driver
stops as on Ctrl-C: running trials keep their checkpoints and stay RUNNING in Optuna (shown as
INTERRUPTED), their MLflow runs and the parent run end KILLED, the lease is released and the
driver exits 130. ``stop`` then waits until the lease is released (``--no-wait``: not)."""

from __future__ import annotations

import os
import sys
import time

from rnnsweep.orchestrator import sweep_store

POLL_SECONDS = 0.5


def stop_command(args) -> int:
    from rnnsweep.orchestrator.sweep_commands import _lease_timeout
    from rnnsweep.orchestrator.sweep_lease import read_holder, request_stop, this_host

    state_dir, record = sweep_store.read_record(args.state_dir, args.name, creating=True)
    name, url, timeout = record["name"], sweep_store.study_url(record), _lease_timeout(record)
    where = f" --state-dir {args.state_dir}" if args.state_dir else ""
    by = f"`rnnsweep stop` (pid {os.getpid()} on {this_host()})"
    holder = request_stop(url, name, timeout, by)
    if holder is None:
        print(f"no driver holds sweep {name!r}: nothing to stop")
        return 0
    print(
        f"asked the driver of sweep {name!r} ({holder.who()}) to stop: its running trials "
        "checkpoint and are marked interrupted"
    )
    if args.no_wait:
        print(f"not waiting: `rnnsweep status {name}{where}` says when it has stopped")
        return 0
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        now = read_holder(url, name)
        if now is None or now.token != holder.token or now.free_because(timeout):
            print(f"stopped: continue it with `rnnsweep resume {name}{where}`")
            return 0
        time.sleep(POLL_SECONDS)
    print(
        f"rnnsweep stop: error: the driver of sweep {name!r} ({holder.who()}) still holds it "
        f"after {args.timeout:g} s; the request stands (it is read at each heartbeat)",
        file=sys.stderr,
    )
    return 1
