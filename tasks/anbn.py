"""``anbn``: the language ``a^n \\n b^n \\n``, n ~ U{min_n .. max_n} (default 1 .. 32).

Each stream is an endless concatenation of independent episodes ``a^n \\n b^n \\n`` (length
2n + 2). Alphabet ``(a, b, \\n)``: the input is the one-hot current symbol ``x [B, 3]``, the
target the next symbol (ce, 3 classes); reported in bits per character. All the randomness of
an episode is n, so the entropy rate is ``ln K / E[2n + 2]`` with ``K = max_n - min_n + 1``:
``optimum`` = 0.0990 nats = 0.143 bpc for 1 .. 32. ``memoryless`` is the entropy of the symbol
frequencies (a model without memory). References in nats per step.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from rnnsweep.tasks.entropy import entropy
from rnnsweep.tasks.episodes import EpisodeStream
from rnnsweep.tasks.settings import Setting, integer_setting
from rnnsweep.tasks.stream import Stream
from rnnsweep.tasks.task import Task

ALPHABET = ("a", "b", "\n")
A, B, NEWLINE = 0, 1, 2


def references(min_n: int, max_n: int) -> dict[str, float]:
    mean_n = 0.5 * (min_n + max_n)
    length = 2 * mean_n + 2
    letter = mean_n / length
    return {
        "memoryless": entropy((letter, letter, 2 / length)),
        "optimum": math.log(max_n - min_n + 1) / length,
    }


class AnbnStream(EpisodeStream):
    """Episode parameter: ``n``; symbol at offset k: a (k < n), \\n (k = n), b, \\n (k = 2n + 1)."""

    def __init__(self, min_n: int, max_n: int, **kwargs: Any) -> None:
        self.min_n, self.max_n = min_n, max_n
        self.min_length = 2 * min_n + 2
        super().__init__(**kwargs)

    def _draw(self, count: int) -> dict[str, Tensor]:
        n = torch.randint(self.min_n, self.max_n + 1, (self.batch, count), generator=self.generator)
        return {"n": n}

    def _length(self, params: dict[str, Tensor]) -> Tensor:
        return 2 * params["n"] + 2

    def _render(self, params: dict[str, Tensor], offset: Tensor) -> Tensor:
        n = params["n"]
        symbols = torch.full_like(offset, NEWLINE)
        symbols[offset < n] = A
        symbols[(offset > n) & (offset <= 2 * n)] = B
        return symbols


SETTINGS = (
    Setting("min_n", int, 1, "smallest n of a^n b^n", low=1),
    Setting("max_n", int, 32, "largest n of a^n b^n (>= min_n); n ~ U[min_n, max_n]", low=1),
)


def anbn_task(*, min_n: int, max_n: int) -> Task:
    max_n = integer_setting("anbn", "max_n", max_n, low=min_n)
    settings = {"min_n": min_n, "max_n": max_n}

    def make_stream(batch: int, seed: int, dtype: torch.dtype, device: torch.device) -> Stream:
        return AnbnStream(
            min_n, max_n, task="anbn", settings=settings, inputs=3, batch=batch, seed=seed,
            dtype=dtype, device=device,
        )

    return Task(
        "anbn", 3, 3, "ce", references(min_n, max_n), True, settings, make_stream,
        alphabet=ALPHABET,
    )
