"""What a task is: sizes, loss kind, known loss levels, and a factory of seeded streams.

Loss levels (``references``) are always stored in **nats per step** (the unit of the learner's
cross-entropy); tasks with ``bits_per_char`` are reported in bits per character, converted by
``Task.in_report_units`` (``bits = nats / ln 2``).

A task may fix part of the learner: ``cell`` (a factory of the ``System`` being learned, e.g.
influence balancing's linear dynamics, plain data that the learner wraps into its cell),
``readout`` (a fixed ``[o, n + 1] = [V | c]`` the learner must not train), ``hidden`` (the only
hidden size that fits) and ``initial_state`` (``s_0 [S]``, instead of zeros). Tensors are
float64 on the CPU; the learner casts them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from rnnsweep.tasks.entropy import nats_to_bits
from rnnsweep.tasks.stream import Stream
from rnnsweep.tasks.system import System

StreamFactory = Callable[[int, int, torch.dtype, torch.device], Stream]


@dataclass(frozen=True)
class Task:
    """A seeded, endless, batched stream of ``(x_t, y_t)`` with its loss kind and levels."""

    name: str
    inputs: int  # m
    outputs: int  # o: classes for ce, targets for mse
    loss_kind: str  # "ce" | "mse"
    references: dict[str, float]  # known loss levels, nats per step
    bits_per_char: bool  # report losses in bits per character
    settings: dict[str, Any]  # the resolved settings, defaults included
    make_stream: StreamFactory  # (batch, seed, dtype, device) -> Stream
    cell: Callable[[], System] | None = None  # a task-defined system
    readout: Tensor | None = None  # fixed [o, n + 1] = [V | c], float64
    hidden: int | None = None  # the hidden size the learner must use
    initial_state: Tensor | None = None  # s_0 [S], float64
    alphabet: tuple[str, ...] | None = None  # names of the symbols, for symbol tasks

    def new_stream(
        self,
        batch: int,
        seed: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> Stream:
        """``batch`` independent streams, reproducible from ``seed``."""
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"{self.name}: batch must be an integer >= 1, got {batch!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"{self.name}: seed must be an integer, got {seed!r}")
        if not dtype.is_floating_point:
            raise ValueError(f"{self.name}: dtype must be a floating point type, got {dtype}")
        return self.make_stream(batch, seed, dtype, torch.device(device))

    @property
    def unit(self) -> str:
        """The unit losses of this task are reported in: ``"bpc"`` or ``"nats"``."""
        return "bpc" if self.bits_per_char else "nats"

    def in_report_units(self, loss: float) -> float:
        """A loss in nats per step, converted to this task's report unit."""
        return nats_to_bits(loss) if self.bits_per_char else loss
