"""Random signs as a pure function of (stream seed, step, index).

``sign(seed, t, i) = +-1`` from the splitmix64 finaliser of a counter, so that the noise of
stream b at step t does not depend on how many other streams are batched with it, on the
device, or on anything but its seed: a run restored from a checkpoint, a member of a packed
population and a shadow copy in the probe all draw exactly the signs they would draw alone.
``SignStream`` draws them ``chunk`` steps at a time so that the step loop only indexes a buffer;
the chunk shrinks as streams and width grow (at most ``CHUNK_ELEMENTS`` signs a chunk), so that
the buffer and the int64 counters drawing it stay small beside the influence state they feed.
"""

from __future__ import annotations

import torch
from torch import Tensor

CHUNK_STEPS = 256  # steps a chunk covers at most
CHUNK_ELEMENTS = 1 << 15  # signs a chunk holds at most (drawn through 2 int64 tensors as large)
_GOLDEN = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB


def _i64(value: int) -> int:
    """An unsigned 64-bit constant as the signed int64 with the same bits."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _shr(x: Tensor, bits: int) -> Tensor:
    """Logical right shift of int64 bits."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def mix(x: Tensor) -> Tensor:
    """splitmix64 finaliser on int64 tensors (wrapping arithmetic); ``x`` is left unchanged."""
    return mix_(x.clone())


def mix_(x: Tensor) -> Tensor:
    """``mix`` in place (one scratch tensor: the finaliser runs over large counter blocks)."""
    scratch = torch.empty_like(x)
    for bits, factor in ((30, _M1), (27, _M2), (31, None)):
        torch.bitwise_right_shift(x, bits, out=scratch).bitwise_and_((1 << (64 - bits)) - 1)
        x.bitwise_xor_(scratch)
        if factor is not None:
            x.mul_(_i64(factor))
    return x


def signs(seeds: Tensor, start: int, steps: int, width: int, dtype: torch.dtype) -> Tensor:
    """``[steps, B, width]`` of +-1 for steps ``start ..`` onwards; ``seeds [B]`` int64."""
    device = seeds.device
    t = torch.arange(start, start + steps, dtype=torch.int64, device=device)
    i = torch.arange(width, dtype=torch.int64, device=device)
    key = mix(seeds.to(torch.int64) * _i64(_GOLDEN) + 0x632BE59BD9B4E019)
    counter = (t[:, None, None] * width + i[None, None, :]) + key[None, :, None] * 0x2545F491
    # the top bit of the mix, as a sign: +1 where it is set (negative as int64), else -1
    return mix_(counter).lt_(0).to(dtype).mul_(2).sub_(1)


def stream_seeds(seed: int, batch: int, device: torch.device | str = "cpu") -> Tensor:
    """Distinct per-stream seeds ``[B]`` derived from one integer seed."""
    base = torch.arange(batch, dtype=torch.int64, device=device) + int(seed) * 1_000_003
    return mix(base)


class SignStream:
    """Signs ``[B, width]`` for consecutive steps, drawn ``chunk`` steps at a time.

    Its whole state is ``(seeds, step)``; the buffer is recomputed from them.
    """

    def __init__(
        self, seeds: Tensor, width: int, dtype: torch.dtype, step: int = 0, chunk: int = 0
    ) -> None:
        """``chunk``: steps drawn at a time (0: ``CHUNK_STEPS``, fewer for many streams)."""
        self.seeds = seeds
        self.width = width
        self.dtype = dtype
        per_step = max(1, seeds.shape[0] * width)
        self.chunk = chunk or max(1, min(CHUNK_STEPS, CHUNK_ELEMENTS // per_step))
        self.step = step
        self._fill(step)

    def _fill(self, start: int) -> None:
        self._start = start
        self._buffer = signs(self.seeds, start, self.chunk, self.width, self.dtype)

    def next(self) -> Tensor:
        offset = self.step - self._start
        if offset >= self.chunk:
            self._fill(self.step)
            offset = 0
        self.step += 1
        return self._buffer[offset]

    def state_dict(self) -> dict:
        return {"seeds": self.seeds, "width": self.width, "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        if state["width"] != self.width or state["seeds"].shape != self.seeds.shape:
            raise ValueError("sign stream state does not match this estimator's shape")
        self.seeds = state["seeds"].to(self.seeds.device)
        self.step = int(state["step"])
        self._fill(self.step)
