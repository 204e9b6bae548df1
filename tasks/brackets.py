"""``brackets``: distant brackets (after the NoBackTrack and UORO experiments).

Alphabet (10): three bracket pairs ``( [ {`` / ``) ] }`` and four filler letters ``a b c d``.
Each stream is an endless concatenation of independent episodes

    open bracket (uniform over 3), k filler letters (each uniform over 4),
    the matching closing bracket,          k ~ U{min_gap .. max_gap},

e.g. ``(abdca)[cc]{dbaadcbab}``. Predicting a closing bracket needs the bracket opened k + 1
steps before: the only long-range dependency. Input: the one-hot current symbol ``x [B, 10]``;
target: the next symbol (ce, 10 classes); reported in bits per character.

References, exact for this generator, stored in nats per step
(``rnnsweep.tasks.entropy.nats_to_bits`` converts): with ``L = E[k] + 2``,
``optimum`` = (ln 3 + E[k] ln 4 + ln K) / L (the entropy rate, K = max_gap - min_gap + 1),
``no bracket memory`` = optimum + ln 3 / L (everything but which bracket is open),
``memoryless`` = entropy of the symbol frequencies. Defaults 1 .. 10:
optimum 2.121, no bracket memory 2.332, memoryless 2.993 bpc. (The literature quotes ~1.66 bpc
best and ~1.94 bpc memoryless for its own variant, whose exact parameters are not reproduced
here.)
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

ALPHABET = ("(", "[", "{", ")", "]", "}", "a", "b", "c", "d")
PAIRS = 3
FILLERS = 4


def references(min_gap: int, max_gap: int) -> dict[str, float]:
    mean_gap = 0.5 * (min_gap + max_gap)
    length = mean_gap + 2
    optimum = (
        math.log(PAIRS) + mean_gap * math.log(FILLERS) + math.log(max_gap - min_gap + 1)
    ) / length
    bracket = 1.0 / (PAIRS * length)
    filler = mean_gap / (FILLERS * length)
    return {
        "memoryless": entropy([bracket] * (2 * PAIRS) + [filler] * FILLERS),
        "no bracket memory": optimum + math.log(PAIRS) / length,
        "optimum": optimum,
    }


class BracketsStream(EpisodeStream):
    """Episode parameters: bracket ``kind`` and ``gap`` k; fillers are drawn per position."""

    def __init__(self, min_gap: int, max_gap: int, **kwargs: Any) -> None:
        self.min_gap, self.max_gap = min_gap, max_gap
        self.min_length = min_gap + 2
        super().__init__(**kwargs)

    def _draw(self, count: int) -> dict[str, Tensor]:
        shape = (self.batch, count)
        kind = torch.randint(0, PAIRS, shape, generator=self.generator)
        gap = torch.randint(self.min_gap, self.max_gap + 1, shape, generator=self.generator)
        return {"kind": kind, "gap": gap}

    def _length(self, params: dict[str, Tensor]) -> Tensor:
        return params["gap"] + 2

    def _render(self, params: dict[str, Tensor], offset: Tensor) -> Tensor:
        kind, gap = params["kind"], params["gap"]
        letters = torch.randint(0, FILLERS, offset.shape, generator=self.generator)
        symbols = 2 * PAIRS + letters
        symbols = torch.where(offset == 0, kind, symbols)
        return torch.where(offset == gap + 1, PAIRS + kind, symbols)


SETTINGS = (
    Setting("min_gap", int, 1, "fewest symbols between a bracket and its closing one", low=0),
    Setting("max_gap", int, 10, "most symbols between a bracket and its closing one", low=0),
)


def brackets_task(*, min_gap: int, max_gap: int) -> Task:
    max_gap = integer_setting("brackets", "max_gap", max_gap, low=min_gap)
    settings = {"min_gap": min_gap, "max_gap": max_gap}

    def make_stream(batch: int, seed: int, dtype: torch.dtype, device: torch.device) -> Stream:
        return BracketsStream(
            min_gap, max_gap, task="brackets", settings=settings, inputs=len(ALPHABET),
            batch=batch, seed=seed, dtype=dtype, device=device,
        )

    return Task(
        "brackets", len(ALPHABET), len(ALPHABET), "ce", references(min_gap, max_gap), True,
        settings, make_stream, alphabet=ALPHABET,
    )
