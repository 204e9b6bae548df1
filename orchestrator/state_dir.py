"""Where sweep and run state lives: ``--state-dir``, else ``$RNNSWEEP_STATE_DIR``, else
``./.rnnsweep``. It holds the SQLite files of Optuna and MLflow, checkpoints and reports."""

from __future__ import annotations

import os

ENV = "RNNSWEEP_STATE_DIR"
DEFAULT = ".rnnsweep"


def resolve(state_dir: str | None) -> str:
    return os.path.abspath(state_dir or os.environ.get(ENV) or DEFAULT)
