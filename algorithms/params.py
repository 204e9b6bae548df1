"""Parameters of an online learner: recurrent ``theta`` and the readout ``o = V h + c``.

Shapes: ``theta [P]`` and ``readout [o, n + 1]`` (columns ``V | c``) for one model shared by
all B streams, or ``[B, P]`` and ``[B, o, n + 1]`` for one model per stream (a packed
population, or K independent estimates of one model's gradient). Gradients have the shape of
the parameters they belong to: per stream for per-stream parameters, the mean over streams for
shared ones.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from rnnsweep.algorithms.cell import Cell


class Params(NamedTuple):
    theta: Tensor
    readout: Tensor

    @property
    def per_stream(self) -> bool:
        return self.theta.dim() == 2

    def expand(self, batch: int) -> Params:
        """Per-stream views of shared parameters (no copy)."""
        if self.per_stream:
            return self
        return Params(self.theta.expand(batch, -1), self.readout.expand(batch, *self.readout.shape))

    def flat(self) -> Tensor:
        """``[..., P + o (n + 1)]``: theta then the readout, row-major."""
        lead = self.theta.shape[:-1]
        return torch.cat([self.theta, self.readout.reshape(*lead, -1)], dim=-1)


def init_params(
    cell: Cell,
    outputs: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    scale: float = 1.0,
) -> Params:
    """Random shared parameters: the cell's ``init_params``; readout ``V ~ N(0, 1/n)``, ``c = 0``.

    ``scale`` multiplies the recurrent weights' standard deviation."""
    theta = cell.init_params(generator, dtype, device, scale)
    readout = torch.randn(outputs, cell.hidden + 1, generator=generator, dtype=torch.float64)
    readout /= cell.hidden**0.5
    readout[:, -1] = 0.0
    return Params(theta, readout.to(dtype=dtype, device=device))


def check_params(cell: Cell, params: Params, batch: int) -> None:
    """Raise ``ValueError`` naming the parameter whose shape or values do not fit."""
    theta, readout = params
    lead = (batch,) if theta.dim() == 2 else ()
    if tuple(theta.shape) != lead + (cell.num_params,):
        raise ValueError(
            f"theta has shape {tuple(theta.shape)}, expected [{cell.num_params}] or "
            f"[{batch}, {cell.num_params}] for the {cell.name} cell"
        )
    if (
        readout.dim() != len(lead) + 2
        or tuple(readout.shape[: len(lead)]) != lead
        or (readout.shape[-1] != cell.hidden + 1)
    ):
        raise ValueError(
            f"readout has shape {tuple(readout.shape)}, expected [o, {cell.hidden + 1}]"
            + (f" with leading stream dimension {batch}" if lead else "")
        )
    if readout.dtype != theta.dtype or readout.device != theta.device:
        raise ValueError("theta and readout must share dtype and device")
    for name, tensor in (("theta", theta), ("readout", readout)):
        if not torch.isfinite(tensor).all():
            raise ValueError(f"{name} contains non-finite values")
