"""A recurrent system that a task fixes (the literature's model, not a learned cell), as data.

``fn(theta [P], s [S], x [m]) -> s' [S]`` is the transition of one stream; it must be a pure
function of its arguments so that ``torch.func`` (jvp, vjp, vmap) applies. The readout sees
``s[:hidden]``. ``theta0`` is the initial ``theta`` (``P`` numbers, not drawn at random).
The learner wraps a ``System`` into its cell (``rnnsweep.algorithms.system_cell``); this layer
knows nothing of cells or estimators.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

SystemFn = Callable[[Tensor, Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class System:
    """``s' = fn(theta, s, x)`` with its sizes and initial parameters."""

    name: str
    hidden: int  # n: the readout sees s[:n]
    inputs: int  # m
    state_size: int  # S
    num_params: int  # P
    fn: SystemFn  # (theta [P], s [S], x [m]) -> s' [S], pure
    theta0: tuple[float, ...]  # the initial theta [P]

    def __post_init__(self) -> None:
        if len(self.theta0) != self.num_params:
            raise ValueError(
                f"system {self.name}: theta0 has {len(self.theta0)} values, "
                f"num_params is {self.num_params}"
            )
        if not 1 <= self.hidden <= self.state_size:
            raise ValueError(
                f"system {self.name}: hidden must be in [1, state_size = {self.state_size}], "
                f"got {self.hidden}"
            )
