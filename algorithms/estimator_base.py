"""The estimator interface: what every estimator module builds and the learner calls.

An estimator is an online learning rule, written as a pair of functions over a plain state
(as in optax):

    state = est.init(cell, params, loss_kind, batch, seeds, hyper)
    result = est.step(params, state, x, y)      # one time step of B streams
    grad = est.flush(params, state)             # gradient of losses no step has covered yet

``step`` runs the cell forward, the readout and the loss, updates the estimator's influence
state (in place: buffers are preallocated and reused, and the same state object is what
``step`` keeps working on) and returns ``StepResult(loss [B], output [B, o], grad)``. ``grad`` is
a ``Params`` estimate of the gradient of this step's loss (shaped like ``params``: per stream,
or the mean over streams for shared parameters), or ``None`` on steps that make no update
(truncated BPTT between truncation points).

Hyperparameters are a flat dict; their types, bounds and defaults are declared once, in the
settings table (``rnnsweep.algorithms.settings``): an estimator's ``defaults`` are
``hyper_defaults(name)``, and ``resolve_hyper`` validates names and values against them. The
name -> estimator table lives in ``rnnsweep.algorithms.estimator``, which imports the
implementations; they import only this module.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor

from rnnsweep.algorithms.cell_base import Cell
from rnnsweep.algorithms.loss import check_targets
from rnnsweep.algorithms.params import Params, check_params
from rnnsweep.algorithms.settings import SETTINGS


class StepResult(NamedTuple):
    loss: Tensor  # [B]
    output: Tensor  # [B, o]
    grad: Params | None


@dataclass
class LentGradient:
    """A state's ``grad_out``: where its next step writes the shared gradient, a buffer a lone
    learner lends for one step so that its update reads the gradient where it already lies (no
    copy); None: fresh tensors (and always for per-stream parameters). The step returns that
    ``Params`` itself, with the same values bit for bit. Lent, not stored: a checkpoint skips
    the names in ``TRANSIENT``."""

    grad_out: Params | None = field(default=None, kw_only=True)
    TRANSIENT: ClassVar[tuple[str, ...]] = ("grad_out",)

    @property
    def readout_out(self) -> Tensor | None:
        """Where the readout's gradient goes: the loan's readout part, or None."""
        return None if self.grad_out is None else self.grad_out.readout


@dataclass(frozen=True)
class Estimator:
    name: str
    init: Callable[..., Any]
    step: Callable[[Params, Any, Tensor, Tensor], StepResult]
    defaults: Mapping[str, Any]
    exact: bool  # equals BPTT for frozen parameters
    unbiased: bool  # unbiased estimate of the BPTT gradient for frozen parameters
    summary: str
    cells: tuple[str, ...] | None = None  # None: every cell
    flush: Callable[[Params, Any], Params | None] = field(default=lambda params, state: None)
    # state -> (L [B, S, r], R [B, r, P]) with dh/dtheta ~ L R, for the Kalman filter
    influence: Callable[[Any], tuple[Tensor, Tensor]] | None = None
    # hyperparameter -> check returning an error message or None
    checks: Mapping[str, Callable[[Any], str | None]] = field(default_factory=dict)
    # (state, gamma) -> the carried influence scaled by gamma in place (``influence_decay``)
    forget: Callable[[Any, float], None] | None = None


StepFn = Callable[[Params, Any, Tensor, Tensor], StepResult]


def forgetting(estimator: Estimator, gamma: float) -> Estimator:
    """``estimator`` whose step first scales the influence it carries by ``gamma``:

        G_t = J_t (gamma G_{t-1}) + dF_t/dtheta,

    an exponential truncation of RTRL's sum over the past (about ``1 / (1 - gamma)`` steps).
    The estimate of this G stays unbiased; as an estimate of the true gradient it is biased
    for ``gamma < 1``, and the variance carried from the past is damped by gamma per step."""
    forget, inner = estimator.forget, estimator.step
    if forget is None:
        raise ValueError(f"estimator {estimator.name!r} has no influence to decay")

    def step(params: Params, state: Any, x: Tensor, y: Tensor) -> StepResult:
        forget(state, gamma)
        return inner(params, state, x, y)

    return replace(estimator, step=step)


def resolve_hyper(estimator: Estimator, overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """Defaults updated by ``overrides``; unknown names and bad values raise ``ValueError``.

    Types and bounds are the settings table's (``rnnsweep.algorithms.settings``); ``checks``
    add what involves the estimator itself.
    """
    hyper = dict(estimator.defaults)
    for key, value in (overrides or {}).items():
        if key not in hyper:
            known = ", ".join(sorted(hyper)) or "none"
            raise ValueError(
                f"estimator {estimator.name!r} has no hyperparameter {key!r} (known: {known})"
            )
        problem = SETTINGS[key].problem(value)
        if problem:
            raise ValueError(f"{estimator.name}: {key}={value!r}: must be {problem}")
        hyper[key] = SETTINGS[key].coerce(value)
    for key, check in estimator.checks.items():
        problem = check(hyper[key])
        if problem:
            raise ValueError(f"{estimator.name}: {key}={hyper[key]!r}: {problem}")
    return hyper


def by_path(closed_form: StepFn, generic: StepFn) -> StepFn:
    """A ``step`` that takes the closed form when the state was built for one."""

    def step(params: Params, state: Any, x: Tensor, y: Tensor) -> StepResult:
        return (closed_form if state.closed_form else generic)(params, state, x, y)

    return step


def use_closed_form(cell: Cell, path: str, name: str, cells: tuple[str, ...] = ("tanh",)) -> bool:
    """Resolve the ``path`` hyperparameter: ``cells`` are those ``name`` has a closed form for
    (the tanh cell, and for NoBackTrack also the GRU and the LSTM)."""
    if path == "closed-form" and cell.name not in cells:
        which = ", ".join(cells) + (" cells" if len(cells) > 1 else " cell")
        raise ValueError(f"{name}: path=closed-form exists for the {which} only, not {cell.name}")
    return path == "closed-form" or (path == "auto" and cell.name in cells)


def zeros_like_params(params: Params) -> Params:
    """A zero gradient of the shape a step returns."""
    return Params(torch.zeros_like(params.theta), torch.zeros_like(params.readout))


def check_step(
    cell: Cell, params: Params, loss_kind: str, batch: int, x: Tensor, y: Tensor
) -> None:
    """Validate one step's inputs; ``ValueError`` naming the problem.

    Not called by ``step`` itself (it would synchronise with the device every step): callers
    check the first step and then every few hundred.
    """
    check_params(cell, params, batch)
    if x.shape != (batch, cell.inputs):
        raise ValueError(f"input x has shape {tuple(x.shape)}, expected [{batch}, {cell.inputs}]")
    if x.dtype != params.theta.dtype or x.device != params.theta.device:
        raise ValueError(
            f"input x is {x.dtype} on {x.device}, the parameters are {params.theta.dtype} on "
            f"{params.theta.device}"
        )
    if not bool(torch.isfinite(x).all()):
        raise ValueError("input x contains non-finite values")
    outputs = params.readout.shape[-2]
    check_targets(loss_kind, y, batch, outputs)
