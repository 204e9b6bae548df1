"""The journal of the metrics MLflow could not take yet: ``DIR/journal/NAME/RUN_ID.jsonl``.

While the tracking store is unavailable, a run's reports spill from memory into its journal,
one JSON line ``{"step": int, "stamp": ms, "values": {key: float}}`` per report, appended
and fsynced by ``append`` alone, so that a trial's checkpoint never runs ahead of its
recorded metrics. ``replay`` writes them to MLflow once the store is back (or on ``resume``),
skipping the steps MLflow already has for each key, then deletes the journal.
"""

from __future__ import annotations

import json
import os
from typing import Any

Item = tuple[int, int, dict[str, float]]  # (step, stamp in ms, values)


def directory(state_dir: str, sweep: str) -> str:
    return os.path.join(state_dir, "journal", sweep)


def path(journal_dir: str, run_id: str) -> str:
    return os.path.join(journal_dir, f"{run_id}.jsonl")


def append(file: str, items: list[Item]) -> None:
    """Append ``items`` to the journal ``file`` and fsync it (and its folder when new). A
    line torn by a crash mid-write is ended first, so that it stays the only bad line."""
    folder = os.path.dirname(file)
    os.makedirs(folder, exist_ok=True)
    new = not os.path.exists(file)
    lines = "".join(
        json.dumps({"step": step, "stamp": stamp, "values": values}) + "\n"
        for step, stamp, values in items
    )
    with open(file, "a+b") as handle:
        if handle.tell() > 0:
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) != b"\n":
                lines = "\n" + lines
        handle.write(lines.encode())
        handle.flush()
        os.fsync(handle.fileno())
    if new:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read(file: str) -> list[Item]:
    """The journal's reports in order (a line torn by a crash is skipped)."""
    items: list[Item] = []
    with open(file, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            try:
                entry = json.loads(line)
                items.append((int(entry["step"]), int(entry["stamp"]), dict(entry["values"])))
            except (ValueError, KeyError, TypeError):
                continue
    return items


def runs(journal_dir: str) -> list[str]:
    """The run ids that have a journal to replay."""
    if not os.path.isdir(journal_dir):
        return []
    return sorted(n.removesuffix(".jsonl") for n in os.listdir(journal_dir) if n.endswith(".jsonl"))


def replay(client: Any, run_id: str, file: str, batch: int = 1000) -> int:
    """Write the journal ``file`` of run ``run_id`` to MLflow (``client``: an
    ``MlflowClient``), in order, skipping per key the steps up to the last one MLflow already
    has (a replay cut short by the store going away again is then taken up where it stopped),
    then delete the file. Returns the number of values written."""
    from mlflow.entities import Metric

    if not os.path.exists(file):
        return 0
    items = read(file)
    keys = {key for _, _, values in items for key in values}
    last = {
        key: max((m.step for m in client.get_metric_history(run_id, key)), default=-1)
        for key in keys
    }
    metrics = [
        Metric(key, value, stamp, step)
        for step, stamp, values in items
        for key, value in values.items()
        if step > last[key]
    ]
    for i in range(0, len(metrics), batch):
        client.log_batch(run_id, metrics=metrics[i : i + batch])
    os.remove(file)
    return len(metrics)
