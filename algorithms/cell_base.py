"""The cell interface: a recurrent cell as a pure function with its sizes.

A cell is ``s' = F(theta, s, x)`` for one stream: ``theta: [P]`` (all recurrent parameters,
flattened), ``s: [S]``, ``x: [m]``. Being pure, the same function serves forward mode
(``torch.func.jvp``), reverse mode (``vjp``) and batching (``vmap``). Every cell keeps the
incoming parameters of one unit contiguous: a gate block is ``[n, n + 1 + m]`` acting on the
column ``z = [h; 1; x]``, so unit ``k`` of a gate owns row ``k`` = ``[W_k | b_k | U_k]``. (The
bias column sits next to ``h`` so that ``[h; 1]``, the readout's input, is a slice of ``z``.)

The readout sees ``s[out_slice]`` (``h``; for the LSTM, whose state is ``[c; h]``, the second
half). The name -> cell table lives in ``rnnsweep.algorithms.cell``, which imports the
implementations (``tanh_rnn``, ``gru``, ``lstm``); they import only this module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

CellFn = Callable[[Tensor, Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Cell:
    """A recurrent cell: its sizes and its pure single-stream transition ``fn``."""

    name: str
    hidden: int  # n: units seen by the readout
    inputs: int  # m
    state_size: int  # S: n, or 2n for the LSTM
    num_params: int  # P
    fn: CellFn  # (theta [P], s [S], x [m]) -> s' [S]
    out_slice: slice
    gates: int  # blocks of shape [n, n + 1 + m] in theta
    leak: float = 1.0
    forget_bias: float = 0.0

    def init_params(
        self,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        scale: float = 1.0,
    ) -> Tensor:
        """Random theta ``[P]``: weights ~ N(0, scale^2 / (n + m)), biases 0 (+forget bias)."""
        n, m = self.hidden, self.inputs
        blocks = torch.randn(self.gates, n, n + m + 1, generator=generator, dtype=torch.float64)
        blocks *= scale / (n + m) ** 0.5
        blocks[:, :, n] = 0.0
        if self.forget_bias:
            blocks[1, :, n] = self.forget_bias
        return blocks.reshape(-1).to(dtype=dtype, device=device)

    def step(self, theta: Tensor, s: Tensor, x: Tensor) -> Tensor:
        """Batched transition: ``theta [P]`` (shared) or ``[B, P]``, ``s [B, S]``, ``x [B, m]``."""
        in_dims = (None if theta.dim() == 1 else 0, 0, 0)
        return torch.func.vmap(self.fn, in_dims=in_dims)(theta, s, x)

    def check_inputs(self, theta: Tensor, s: Tensor, x: Tensor) -> None:
        """Raise ``ValueError`` naming the tensor whose shape does not fit this cell."""
        if theta.shape[-1] != self.num_params or theta.dim() not in (1, 2):
            raise ValueError(
                f"{self.name} cell: theta has shape {tuple(theta.shape)}, expected "
                f"[{self.num_params}] or [B, {self.num_params}]"
            )
        if s.dim() != 2 or s.shape[1] != self.state_size:
            raise ValueError(
                f"{self.name} cell: state has shape {tuple(s.shape)}, "
                f"expected [B, {self.state_size}]"
            )
        if x.dim() != 2 or x.shape != (s.shape[0], self.inputs):
            raise ValueError(
                f"{self.name} cell: input x has shape {tuple(x.shape)}, expected "
                f"[{s.shape[0]}, {self.inputs}]"
            )
        if theta.dim() == 2 and theta.shape[0] != s.shape[0]:
            raise ValueError(
                f"{self.name} cell: per-stream theta has {theta.shape[0]} rows for "
                f"{s.shape[0]} streams"
            )


def column(h: Tensor, x: Tensor) -> Tensor:
    """``z = [h; 1; x]`` along the last dimension."""
    one = torch.ones(h.shape[:-1] + (1,), dtype=h.dtype, device=h.device)
    return torch.cat([h, one, x], dim=-1)
