"""A packed population's streams side by side: member i's b streams are rows i b .. i b + b - 1.

Each member keeps its own ``Stream`` on the CPU (its seed, generator, curriculum, checkpointable
state), exactly as if it ran alone. The members all stand at the same step and refill their
``CHUNK`` buffers at the same steps (multiples of ``CHUNK`` from step 0), so the packed stream
concatenates the members' buffers once per chunk, splits them into per-step views, and
``next()`` only picks up the step's view: no per-member work and no tensor operation on
ordinary steps (one, the one-hot lookup, for symbol tasks). Member streams' positions are
brought up to date lazily, before a curriculum observes a loss and before a member's state is
read.

Member streams generate on the CPU (as every stream does); the packed buffer goes to the
device in one copy per chunk, from pinned memory and without blocking when the device is CUDA,
so the step loop never waits for the host. A curriculum that reads its running loss before
generating a chunk (copy) has all members' losses read in one transfer per chunk.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from rnnsweep.tasks.stream import Stream


class PackedStream:
    """``next()`` returns ``(x [pack b, m], y)`` for all members' streams at once."""

    def __init__(self, streams: Sequence[Stream], device: torch.device | str = "cpu") -> None:
        if not streams:
            raise ValueError("a packed stream needs at least one member stream")
        first = streams[0]
        for i, s in enumerate(streams):
            if (s.task, s.settings, s.batch, s.inputs) != (
                first.task,
                first.settings,
                first.batch,
                first.inputs,
            ):
                raise ValueError(
                    f"member {i}'s stream is task {s.task!r} {s.settings} with batch {s.batch}; "
                    f"member 0's is {first.task!r} {first.settings} with batch {first.batch}"
                )
            if (s.step, s._offset, s._x is None) != (first.step, first._offset, first._x is None):
                raise ValueError(
                    f"member {i}'s stream is at step {s.step}, member 0's at {first.step}: "
                    "members of a pack must stand at the same step"
                )
        self.members = list(streams)
        self.device = torch.device(device)
        self.batch = first.batch * len(streams)
        self.step = first.step
        self._offset = first._offset
        self._eye = first._eye.to(self.device)
        self._x: Tensor | None = None
        self._y: Tensor | None = None
        self._rows: tuple[tuple[Tensor, ...], tuple[Tensor, ...]] = ((), ())
        self._symbols = False
        # the members whose streams keep a curriculum (most tasks have none)
        self._curricula = [
            i for i, s in enumerate(streams) if type(s).observe is not Stream.observe
        ]
        if first._x is not None:
            self._gather()

    def _gather(self) -> None:
        if len(self.members) == 1:  # a lone learner's: its member's buffers, not a copy
            x, y = self.members[0]._x, self.members[0]._y
        else:
            x = torch.cat([s._x for s in self.members], dim=1)
            y = torch.cat([s._y for s in self.members], dim=1)
        self._x, self._y = self._to_device(x), self._to_device(y)
        # each step's rows as views made once per chunk: next() only picks them up
        self._rows = (self._x.unbind(0), self._y.unbind(0))
        self._symbols = self._x.dim() == 2

    def _to_device(self, buffer: Tensor) -> Tensor:
        if self.device.type == "cuda":
            return buffer.pin_memory().to(self.device, non_blocking=True)
        return buffer.to(self.device)

    def _sync(self) -> None:
        for s in self.members:
            s._offset, s.step = self._offset, self.step

    def next(self) -> tuple[Tensor, Tensor]:
        """One time step of every member's streams: ``(x [pack b, m], y)``."""
        if self._x is None or self._offset == self._x.shape[0]:
            self._sync()
            self._settle()
            for s in self.members:
                s._refill()
            self._gather()
            self._offset = 0
        assert self._x is not None and self._y is not None
        t = self._offset
        self._offset += 1
        self.step += 1
        x, y = self._rows[0][t], self._rows[1][t]
        return (self._eye.index_select(0, x) if self._symbols else x), y

    def _settle(self) -> None:
        """Read every member's pending device values (a curriculum's loss) in one transfer."""
        reads = [s.host_reads() for s in self.members]
        flat = [value.reshape(()).to(torch.float64) for values in reads for value in values]
        if not flat:
            return
        host = torch.stack(flat).tolist()
        for s, values in zip(self.members, reads, strict=True):
            s.settle(host[: len(values)])
            host = host[len(values) :]

    @property
    def observes(self) -> bool:
        """Whether ``observe`` does anything: some member keeps a curriculum."""
        return bool(self._curricula)

    def observe(self, loss: Tensor) -> None:
        """Hand each member with a curriculum its rows of the per-stream loss ``[pack b]``."""
        if not self._curricula:
            return
        self._sync()
        width = self.members[0].batch
        for i in self._curricula:
            self.members[i].observe(loss[i * width : (i + 1) * width])

    def curriculum(self, index: int) -> dict[str, float]:
        return self.members[index].curriculum

    def member_state(self, index: int) -> dict[str, Any]:
        """Member ``index``'s ``Stream.state_dict()``, as it would be had it run alone."""
        self._sync()
        return self.members[index].state_dict()
