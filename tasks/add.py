"""``add``: labels that depend on two inputs in the past.

``x_t ~ Bernoulli(1/2)``, given as one float ``x [B, 1]`` in ``{0, 1}`` (m = 1); the label
``y_t in {0, 1}`` (ce, 2 classes) has ``p_t = P(y_t = 1) = 1/2 + 1/2 x_{t-t1} - 1/4 x_{t-t2}``.
With ``labels = "soft"`` (the default: deterministic two-class labels) the target is that
distribution itself, ``y_t = (1 - p_t, p_t) [B, 2]``, so the loss is
``H(p_t) + KL(p_t || q_t)`` with no label-sampling noise; with ``labels = "sampled"`` it is a
class index drawn from it. The expected losses, hence the references, are the same.
The inputs before ``t = 0`` are drawn too (a hidden warm-up of ``max(t1, t2)`` steps) so the
process is stationary from the first step. References, exact (nats per step): ``nothing
learned`` = H(y), ``t1 only`` = H(y | x_{t-t1}), ``optimum`` = H(y | x_{t-t1}, x_{t-t2});
0.6616 / 0.5192 / 0.4545 for t1 != t2.
"""

from __future__ import annotations

from itertools import product
from typing import Any

import torch
from torch import Tensor

from rnnsweep.tasks.entropy import binary_entropy
from rnnsweep.tasks.settings import Setting
from rnnsweep.tasks.stream import Stream
from rnnsweep.tasks.task import Task


def label_probability(a: float | Tensor, b: float | Tensor) -> float | Tensor:
    """``P(y = 1)`` given ``a = x_{t-t1}``, ``b = x_{t-t2}``."""
    return 0.5 + 0.5 * a - 0.25 * b


def references(t1: int, t2: int) -> dict[str, float]:
    """Exact entropies of the label, in nats."""
    # (x_{t-t1}, x_{t-t2}) is uniform on {0,1}^2, or on the diagonal if t1 == t2.
    cases = [(a, a) for a in (0, 1)] if t1 == t2 else list(product((0, 1), repeat=2))
    weight = 1.0 / len(cases)
    marginal = sum(weight * label_probability(a, b) for a, b in cases)
    t1_only = 0.0
    for a in (0, 1):
        given = [label_probability(a2, b) for a2, b in cases if a2 == a]
        t1_only += 0.5 * binary_entropy(sum(given) / len(given))
    return {
        "nothing learned": binary_entropy(marginal),
        "t1 only": t1_only,
        "optimum": sum(weight * binary_entropy(label_probability(a, b)) for a, b in cases),
    }


class AddStream(Stream):
    """Carries the last ``max(t1, t2)`` inputs ``[H, B]`` from chunk to chunk."""

    def __init__(self, t1: int, t2: int, labels: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.t1, self.t2, self.labels = t1, t2, labels
        self.lag = max(t1, t2)
        self._history = torch.randint(0, 2, (self.lag, self.batch), generator=self.generator)

    def _generate(self, steps: int) -> tuple[Tensor, Tensor]:
        new = torch.randint(0, 2, (steps, self.batch), generator=self.generator)
        full = torch.cat([self._history, new])  # row i is x_{i - lag}
        a = full[self.lag - self.t1 : self.lag - self.t1 + steps].double()
        b = full[self.lag - self.t2 : self.lag - self.t2 + steps].double()
        p = label_probability(a, b)
        if self.labels == "soft":
            y = torch.stack([1.0 - p, p], dim=-1)
        else:
            u = torch.rand(steps, self.batch, generator=self.generator, dtype=torch.float64)
            y = (u < p).long()
        self._history = full[steps:].clone()
        return new.unsqueeze(-1).double(), y

    def _extra_state(self) -> dict[str, Any]:
        return {"history": self._history.clone()}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self._history = state["history"].clone()


MAX_LAG = 10**6

SETTINGS = (
    # the stream keeps the last max(t1, t2) inputs of each stream: a million steps at most
    Setting("t1", int, 5, "first lag: P(y_t = 1) rises by 1/2 with x_{t-t1}", low=0,
            high=MAX_LAG),
    Setting("t2", int, 9, "second lag: P(y_t = 1) falls by 1/4 with x_{t-t2}", low=0,
            high=MAX_LAG),
    Setting(
        "labels",
        str,
        "soft",
        "soft: the label distribution is the target; sampled: labels drawn from it",
        choices=("soft", "sampled"),
    ),
)


def add_task(*, t1: int, t2: int, labels: str) -> Task:
    settings = {"t1": t1, "t2": t2, "labels": labels}

    def make_stream(batch: int, seed: int, dtype: torch.dtype, device: torch.device) -> Stream:
        return AddStream(
            t1,
            t2,
            labels,
            task="add",
            settings=settings,
            inputs=1,
            batch=batch,
            seed=seed,
            dtype=dtype,
            device=device,
        )

    return Task("add", 1, 2, "ce", references(t1, t2), False, settings, make_stream)
