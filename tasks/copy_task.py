"""``copy``: reproduce a random sequence after a delimiter, with a length curriculum.

As in Mujika et al. (2018, KF-RTRL): an episode of length 2L shows L random symbols (uniform
over ``symbols``, default 2: binary), then a delimiter, then blanks; the target is blank while
the symbols are shown, then the L symbols in order:

    x:  s1 .. sL  D  _ .. _        (one-hot over symbols + delimiter + blank: m = symbols + 2)
    y:  _  .. _   s1 .. sL         (ce over symbols + blank: o = symbols + 1)

All B streams share L and are in phase. The running loss is the mean of the losses the learner
reports through ``observe`` on output steps (the L steps that carry a symbol), accumulated on
the device and read once per chunk (256 steps, a single host sync): if it is below
``threshold`` (nats per output step; default 0.15 bits) L grows by 1, up to ``max_length``.
A new L applies to the episodes that start after the check. ``curriculum`` reports L.
References (nats per step, independent of L): ``nothing learned`` = ln 2 + 1/2 ln symbols (the
target frequencies), ``blanks only`` = 1/2 ln symbols (blanks right, symbols at chance),
``optimum`` = 0.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from rnnsweep.tasks.entropy import bits_to_nats
from rnnsweep.tasks.settings import Setting, integer_setting
from rnnsweep.tasks.stream import Stream
from rnnsweep.tasks.task import Task


class CopyStream(Stream):
    """Carries the unfinished episode (``x``, ``y``, scored steps), L and the loss sums."""

    def __init__(
        self, symbols: int, threshold: float, length: int, max_length: int, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.symbols = symbols
        self.threshold = threshold
        self.max_length = max_length
        self.length = length
        self._carry_x = torch.zeros(0, self.batch, dtype=torch.int64)
        self._carry_y = torch.zeros(0, self.batch, dtype=torch.int64)
        self._carry_scored: list[bool] = []
        self._scored: list[bool] = []  # per step of the current chunk
        # on the learner's device; a float once a packed stream has read it for the refill
        self._loss_sum: Tensor | float | None = None
        self._loss_count = 0

    @property
    def curriculum(self) -> dict[str, float]:
        return {"length": float(self.length)}

    def observe(self, loss: Tensor) -> None:
        t = self._offset - 1
        if 0 <= t < len(self._scored) and self._scored[t]:
            total = loss.detach().sum(dtype=torch.float64)
            # the sum lives where the losses do (a packed member's CPU stream sees a GPU's)
            self._loss_sum = total if self._loss_sum is None else self._loss_sum.to(total) + total
            self._loss_count += loss.numel()

    def host_reads(self) -> list[Tensor]:
        return [self._loss_sum] if isinstance(self._loss_sum, Tensor) else []

    def settle(self, values: list[float]) -> None:
        if values:
            self._loss_sum = values[0]

    def _update_curriculum(self) -> None:
        if self._loss_count == 0 or self._loss_sum is None:
            return
        mean = float(self._loss_sum) / self._loss_count  # the one host read per chunk
        if mean < self.threshold and self.length < self.max_length:
            self.length += 1
        self._loss_sum = None
        self._loss_count = 0

    def _generate(self, steps: int) -> tuple[Tensor, Tensor]:
        self._update_curriculum()
        k, n = self.symbols, self.length
        count = max(0, math.ceil((steps - self._carry_x.shape[0]) / (2 * n)))
        shown = torch.randint(0, k, (count, n, self.batch), generator=self.generator)
        x = torch.full((count, 2 * n, self.batch), k + 1, dtype=torch.int64)
        x[:, :n] = shown
        x[:, n] = k
        y = torch.full((count, 2 * n, self.batch), k, dtype=torch.int64)
        y[:, n:] = shown
        x = torch.cat([self._carry_x, x.reshape(-1, self.batch)])
        y = torch.cat([self._carry_y, y.reshape(-1, self.batch)])
        scored = self._carry_scored + ([False] * n + [True] * n) * count
        self._carry_x, self._carry_y = x[steps:].clone(), y[steps:].clone()
        self._carry_scored = scored[steps:]
        self._scored = scored[:steps]
        return x[:steps].contiguous(), y[:steps].contiguous()

    def _extra_state(self) -> dict[str, Any]:
        return {
            "length": self.length,
            "carry_x": self._carry_x.clone(),
            "carry_y": self._carry_y.clone(),
            "carry_scored": list(self._carry_scored),
            "scored": list(self._scored),
            "loss_sum": None if self._loss_sum is None else self._loss_sum.clone(),
            "loss_count": self._loss_count,
        }

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self.length = int(state["length"])
        self._carry_x = state["carry_x"].clone()
        self._carry_y = state["carry_y"].clone()
        self._carry_scored = list(state["carry_scored"])
        self._scored = list(state["scored"])
        loss_sum = state["loss_sum"]
        self._loss_sum = None if loss_sum is None else loss_sum.to(self.device)
        self._loss_count = int(state["loss_count"])


SETTINGS = (
    Setting("symbols", int, 2, "size of the alphabet copied", low=2),
    Setting(
        "threshold",
        float,
        bits_to_nats(0.15),
        "running loss (nats per output step; 0.15 bits) below which the length grows by 1",
        low=0.0,
        low_open=True,
    ),
    Setting("length", int, 1, "initial sequence length L of the curriculum", low=1),
    Setting("max_length", int, 100, "longest sequence of the curriculum (>= length)", low=1),
)


def copy_task(*, symbols: int, threshold: float, length: int, max_length: int) -> Task:
    max_length = integer_setting("copy", "max_length", max_length, low=length)
    settings: dict[str, Any] = {
        "symbols": symbols, "threshold": threshold, "length": length, "max_length": max_length,
    }

    def make_stream(batch: int, seed: int, dtype: torch.dtype, device: torch.device) -> Stream:
        return CopyStream(
            symbols, threshold, length, max_length, task="copy", settings=settings,
            inputs=symbols + 2, batch=batch, seed=seed, dtype=dtype, device=device,
        )

    references = {
        "nothing learned": math.log(2.0) + 0.5 * math.log(symbols),
        "blanks only": 0.5 * math.log(symbols),
        "optimum": 0.0,
    }
    return Task("copy", symbols + 2, symbols + 1, "ce", references, False, settings, make_stream)
