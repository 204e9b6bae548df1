"""Episodes laid end to end: where each of the next T characters falls, for B streams at once.

A renewal stream (anbn, brackets) is a sequence of episodes with random parameters. Each
stream carries the episode in progress (its length and how many of its characters were already
emitted); a chunk draws enough new episodes ``[B, E]`` to cover T more characters and locates
every character by counting the episode starts before it (a scatter and a cumulative sum):
no loop over time or streams.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import torch
from torch import Tensor

from rnnsweep.tasks.stream import Stream


def locate(
    current_length: Tensor, current_done: Tensor, new_lengths: Tensor, steps: int
) -> tuple[Tensor, Tensor]:
    """Episode index and offset of the next ``steps`` characters of each stream.

    ``current_length [B]``, ``current_done [B]`` (characters of the current episode already
    emitted, ``<= current_length``), ``new_lengths [B, E]`` (``>= 1``, covering ``steps``).
    Returns ``episode [B, steps]`` (0 = the current episode, ``e`` = ``new_lengths[:, e - 1]``)
    and ``offset [B, steps]`` within that episode.
    """
    lengths = torch.cat([(current_length - current_done).unsqueeze(1), new_lengths], dim=1)
    ends = lengths.cumsum(1)
    if bool((ends[:, -1] < steps).any()):
        raise ValueError("not enough episodes drawn to cover the chunk")
    # episode e + 1 starts at ends[:, e]: count the starts at or before each t
    starts = torch.zeros(ends.shape[0], steps + 1, dtype=torch.int64)
    starts.scatter_add_(1, ends[:, :-1].clamp_max(steps), torch.ones_like(ends[:, :-1]))
    episode = starts[:, :steps].cumsum(1)
    t = torch.arange(steps, dtype=torch.int64)
    start = (ends - lengths).gather(1, episode)
    offset = t - start + torch.where(episode == 0, current_done.unsqueeze(1), 0)
    return episode, offset


class EpisodeStream(Stream):
    """A symbol stream made of random episodes; input = current symbol, target = the next.

    Carries the episode in progress (its parameters ``[B]`` each and ``done [B]``) and the last
    emitted symbol ``[B]``, the input of the next step. Subclasses draw episode parameters,
    give their lengths and render symbols from (parameters, offset).
    """

    min_length: int  # the shortest possible episode

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        first = self._draw(1)
        self._current = {key: value[:, 0] for key, value in first.items()}
        self._done = torch.zeros(self.batch, dtype=torch.int64)
        self._last = self._advance(1)[0]

    @abstractmethod
    def _draw(self, count: int) -> dict[str, Tensor]:
        """Parameters of ``count`` new episodes per stream, each ``[B, count]`` int64."""

    @abstractmethod
    def _length(self, params: dict[str, Tensor]) -> Tensor:
        """Episode lengths, shaped like the parameters."""

    @abstractmethod
    def _render(self, params: dict[str, Tensor], offset: Tensor) -> Tensor:
        """Symbols ``[B, T]`` at ``offset [B, T]`` of episodes with ``params`` (each ``[B, T]``)."""

    def _advance(self, steps: int) -> Tensor:
        """The next ``steps`` symbols ``[steps, B]``."""
        new = self._draw(steps // self.min_length + 1)
        episode, offset = locate(self._length(self._current), self._done, self._length(new), steps)
        params = {
            key: torch.cat([self._current[key].unsqueeze(1), value], dim=1).gather(1, episode)
            for key, value in new.items()
        }
        symbols = self._render(params, offset)
        self._current = {key: value[:, -1].clone() for key, value in params.items()}
        self._done = offset[:, -1] + 1
        return symbols.t()

    def _generate(self, steps: int) -> tuple[Tensor, Tensor]:
        targets = self._advance(steps)
        inputs = torch.cat([self._last.unsqueeze(0), targets[:-1]])
        self._last = targets[-1].clone()
        return inputs.contiguous(), targets.contiguous()

    def _extra_state(self) -> dict[str, Any]:
        return {
            "current": {key: value.clone() for key, value in self._current.items()},
            "done": self._done.clone(),
            "last": self._last.clone(),
        }

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self._current = {key: value.clone() for key, value in state["current"].items()}
        self._done = state["done"].clone()
        self._last = state["last"].clone()
