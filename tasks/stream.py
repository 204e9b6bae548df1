"""A task's data stream: B independent streams of ``(x_t, y_t)``, generated in chunks.

``next()`` returns one time step, ``x [B, m]`` in the stream's dtype and ``y`` (``[B]`` int64
class indices for ``ce``, ``[B, o]`` for ``mse``), both on the stream's device. Steps are
generated ``CHUNK`` at a time by the task's ``_generate`` on the CPU from one
``torch.Generator`` per stream object (seeded by ``seed``; the B streams are rows of the same
draws, so a stream's content depends on ``(seed, batch)``), then moved to the device once per
chunk: ``next()`` only indexes a buffer, and the data are the same on every device.

Symbol tasks generate class indices ``[T, B]``; ``next()`` turns a row into one-hot inputs by
indexing an identity matrix. Float tasks generate ``x [T, B, m]`` directly.

``state_dict()`` holds the buffer, the position in it, the generator state and the task's own
carried state (``_extra_state``), so that a restored stream continues bit-for-bit.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor

CHUNK = 256


def buffered_step(x: Tensor, y: Tensor, t: int, eye: Tensor) -> tuple[Tensor, Tensor]:
    """Step ``t`` of chunk buffers ``x`` (symbols ``[T, B]``, one-hot through ``eye``, or floats
    ``[T, B, m]``) and ``y``."""
    return (eye.index_select(0, x[t]) if x.dim() == 2 else x[t]), y[t]


class Stream(ABC):
    """B endless, seeded streams of one task; subclasses implement ``_generate``."""

    def __init__(
        self,
        task: str,
        settings: dict[str, Any],
        inputs: int,
        batch: int,
        seed: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.task = task
        self.settings = dict(settings)
        self.inputs = inputs
        self.batch = batch
        self.seed = seed
        self.dtype = dtype
        self.device = device
        self.generator = torch.Generator()
        self.generator.manual_seed(seed)
        self.step = 0  # steps returned by next()
        self._x: Tensor | None = None
        self._y: Tensor | None = None
        self._offset = 0
        self._eye = torch.eye(inputs, dtype=dtype, device=device)

    @abstractmethod
    def _generate(self, steps: int) -> tuple[Tensor, Tensor]:
        """The next ``steps`` time steps, on the CPU, drawn from ``self.generator``.

        Returns ``x``: int64 symbols ``[T, B]`` (one-hot inputs) or floats ``[T, B, m]``, and
        ``y``: int64 classes ``[T, B]`` or floats ``[T, B, o]``.
        """

    def _extra_state(self) -> dict[str, Any]:
        """State the task carries between chunks (beyond the generator)."""
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        """Inverse of ``_extra_state``."""
        return None

    def _refill(self) -> None:
        x, y = self._generate(CHUNK)
        if x.dtype == torch.int64:
            self._x = x.to(self.device)
        else:
            self._x = x.to(device=self.device, dtype=self.dtype)
        self._y = y.to(self.device) if y.dtype == torch.int64 else y.to(self.device, self.dtype)
        self._offset = 0

    def next(self) -> tuple[Tensor, Tensor]:
        """One time step: ``(x [B, m], y)`` for all B streams."""
        if self._x is None or self._offset == self._x.shape[0]:
            self._refill()
        assert self._x is not None and self._y is not None
        t = self._offset
        self._offset += 1
        self.step += 1
        return buffered_step(self._x, self._y, t, self._eye)

    def observe(self, loss: Tensor) -> None:
        """The learner's per-stream loss ``[B]`` for the step just returned (curricula use it)."""
        return None

    def host_reads(self) -> list[Tensor]:
        """Device values the next chunk's generation will read on the host (a curriculum's
        running loss): a packed stream reads all its members' in one transfer and hands
        them back through ``settle``."""
        return []

    def settle(self, values: list[float]) -> None:
        """The host values of ``host_reads()``, in its order."""
        return None

    @property
    def curriculum(self) -> dict[str, float]:
        """The current curriculum stage (empty for tasks without one)."""
        return {}

    def _identity(self) -> dict[str, Any]:
        return {"task": self.task, "settings": self.settings, "batch": self.batch}

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-for-bit: buffer, position, RNG, carried state."""
        state = self._identity()
        state.update(
            seed=self.seed,
            step=self.step,
            offset=self._offset,
            generator=self.generator.get_state(),
            x=None if self._x is None else self._x.clone(),
            y=None if self._y is None else self._y.clone(),
            extra=self._extra_state(),
        )
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict`` of the same task, settings and batch size."""
        mine = self._identity()
        theirs = {key: state.get(key) for key in mine}
        if theirs != mine:
            raise ValueError(
                f"stream state is for task {theirs['task']!r} with settings "
                f"{theirs['settings']} and batch {theirs['batch']}; this stream is task "
                f"{self.task!r} with settings {self.settings} and batch {self.batch}"
            )
        x, y = state["x"], state["y"]
        if (x is None) != (y is None) or (x is not None and x.shape[1] != self.batch):
            raise ValueError(f"{self.task}: stream state has a malformed buffer")
        self.seed = int(state["seed"])
        self.step = int(state["step"])
        self.generator.set_state(state["generator"])
        if x is None:
            self._x = self._y = None
        else:
            self._x = x.to(self.device) if x.dtype == torch.int64 else x.to(self.device, self.dtype)
            self._y = y.to(self.device) if y.dtype == torch.int64 else y.to(self.device, self.dtype)
        self._offset = int(state["offset"])
        self._load_extra_state(state["extra"])
