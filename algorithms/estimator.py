"""The estimators by name, and ``start``: look one up, validate its settings, initialise it.

``ESTIMATORS`` is an explicit table (as Optuna lists its samplers): this module imports every
implementation, and the implementations import only the interface
(``rnnsweep.algorithms.estimator_base``, whose public names are re-exported here), so there is
no import cycle. ``register`` adds an estimator of one's own (e.g. a deliberately biased one
in a test).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from rnnsweep.algorithms.bptt import BPTT
from rnnsweep.algorithms.cell import Cell
from rnnsweep.algorithms.estimator_base import (
    Estimator,
    StepFn,
    StepResult,
    check_step,
    forgetting,
    resolve_hyper,
)
from rnnsweep.algorithms.kf_rtrl import KF_RTRL
from rnnsweep.algorithms.loss import LOSS_KINDS
from rnnsweep.algorithms.nobacktrack import NOBACKTRACK
from rnnsweep.algorithms.params import Params, check_params
from rnnsweep.algorithms.rflo import RFLO
from rnnsweep.algorithms.rtrl import RTRL
from rnnsweep.algorithms.signs import stream_seeds
from rnnsweep.algorithms.snap1 import SNAP1
from rnnsweep.algorithms.tbptt import TBPTT
from rnnsweep.algorithms.uoro import UORO

__all__ = [
    "ESTIMATORS",
    "Estimator",
    "StepFn",
    "StepResult",
    "check_step",
    "estimator_names",
    "get_estimator",
    "register",
    "resolve_hyper",
    "start",
]

ESTIMATORS: dict[str, Estimator] = {
    estimator.name: estimator
    for estimator in (BPTT, KF_RTRL, NOBACKTRACK, RFLO, RTRL, SNAP1, TBPTT, UORO)
}


def register(estimator: Estimator) -> Estimator:
    """Add ``estimator`` to the table under its name (replacing one of that name)."""
    ESTIMATORS[estimator.name] = estimator
    return estimator


def get_estimator(name: str) -> Estimator:
    """The registered estimator called ``name``; ``ValueError`` listing the known ones."""
    if name not in ESTIMATORS:
        raise ValueError(
            f"unknown estimator {name!r}; known estimators: {', '.join(sorted(ESTIMATORS))}"
        )
    return ESTIMATORS[name]


def estimator_names() -> list[str]:
    return sorted(ESTIMATORS)


def start(
    name: str,
    cell: Cell,
    params: Params,
    loss_kind: str,
    batch: int,
    *,
    seed: int = 0,
    seeds: Tensor | None = None,
    **overrides: Any,
) -> tuple[Estimator, Any]:
    """Look up, validate and initialise an estimator for B streams: ``(estimator, state)``."""
    estimator = get_estimator(name)
    if estimator.cells is not None and cell.name not in estimator.cells:
        raise ValueError(
            f"estimator {name!r} supports the {', '.join(estimator.cells)} cell only, "
            f"not {cell.name!r}"
        )
    if loss_kind not in LOSS_KINDS:
        raise ValueError(f"unknown loss kind {loss_kind!r}; known: {', '.join(LOSS_KINDS)}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    check_params(cell, params, batch)
    hyper = resolve_hyper(estimator, overrides)
    if hyper.get("influence_decay", 1.0) != 1.0:
        estimator = forgetting(estimator, hyper["influence_decay"])
    if seeds is None:
        seeds = stream_seeds(seed, batch, params.theta.device)
    elif seeds.shape != (batch,):
        raise ValueError(f"seeds must have shape [{batch}], got {tuple(seeds.shape)}")
    state = estimator.init(cell, params, loss_kind, batch, seeds.to(params.theta.device), hyper)
    return estimator, state
