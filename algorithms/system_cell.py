"""A task's fixed system (``rnnsweep.tasks.system.System``) as a ``Cell`` the estimators run.

The transition is the system's own ``fn``; the readout sees ``s[:hidden]``; ``init_params``
returns the system's ``theta0`` instead of drawing weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rnnsweep.algorithms.cell_base import Cell
from rnnsweep.tasks.system import System


@dataclass(frozen=True)
class SystemCell(Cell):
    """A cell with fixed initial parameters ``theta0`` (``P`` numbers)."""

    theta0: tuple[float, ...] = ()

    def init_params(
        self,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        scale: float = 1.0,
    ) -> Tensor:
        """``theta0 [P]``; the generator and scale are not used."""
        return torch.tensor(self.theta0, dtype=dtype, device=device)


def system_cell(system: System) -> Cell:
    """The cell that runs ``system``: same name, sizes and transition."""
    return SystemCell(
        name=system.name,
        hidden=system.hidden,
        inputs=system.inputs,
        state_size=system.state_size,
        num_params=system.num_params,
        fn=system.fn,
        out_slice=slice(0, system.hidden),
        gates=0,
        theta0=system.theta0,
    )
