"""Entropies for reference loss levels, in nats, and the nats/bits conversion."""

from __future__ import annotations

import math
from collections.abc import Iterable


def entropy(probs: Iterable[float]) -> float:
    """``-sum p ln p`` in nats (zero probabilities contribute nothing)."""
    return -sum(p * math.log(p) for p in probs if p > 0.0)


def binary_entropy(p: float) -> float:
    """Entropy of a Bernoulli(p) in nats."""
    return entropy((p, 1.0 - p))


def nats_to_bits(nats: float) -> float:
    return nats / math.log(2.0)


def bits_to_nats(bits: float) -> float:
    return bits * math.log(2.0)
