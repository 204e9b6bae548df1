"""Adam's two implementations: torch's private fused kernel and the public-operation fallback
(forced by ``fused=False`` or ``$RNNSWEEP_FUSED_ADAM=0``) give the same numbers in float64."""

from __future__ import annotations

import pytest
import torch

from rnnsweep.algorithms import optimizer
from rnnsweep.algorithms.optimizer import FUSED_ADAM_AVAILABLE, FUSED_ADAM_ENV

F64 = torch.float64
SHAPES = [(4, 3, 5), (4, 7)]  # a pack of 4: per-row learning rates apply to the first dim
BETA1, BETA2, EPS = 0.9, 0.999, 1e-8

needs_fused = pytest.mark.skipif(
    not FUSED_ADAM_AVAILABLE, reason="this torch has no fused Adam kernel to compare with"
)


def _grads(step: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + step)
    return [torch.randn(shape, generator=gen, dtype=F64) for shape in SHAPES]


def _textbook(grads_per_step: list[list[torch.Tensor]]) -> list[list[torch.Tensor]]:
    """The unit steps ``-m_hat / (sqrt(v_hat) + eps)`` written out, for every step."""
    m = [torch.zeros(shape, dtype=F64) for shape in SHAPES]
    v = [torch.zeros(shape, dtype=F64) for shape in SHAPES]
    out = []
    for t, grads in enumerate(grads_per_step, start=1):
        m = [BETA1 * a + (1 - BETA1) * g for a, g in zip(m, grads, strict=True)]
        v = [BETA2 * b + (1 - BETA2) * g * g for b, g in zip(v, grads, strict=True)]
        out.append(
            [
                -(a / (1 - BETA1**t)) / ((b / (1 - BETA2**t)).sqrt() + EPS)
                for a, b in zip(m, v, strict=True)
            ]
        )
    return out


def _unit_steps(fused: bool, steps: int = 25) -> list[list[torch.Tensor]]:
    m = [torch.zeros(shape, dtype=F64) for shape in SHAPES]
    v = [torch.zeros(shape, dtype=F64) for shape in SHAPES]
    return [
        optimizer.adam_unit_steps(_grads(t), m, v, t, BETA1, BETA2, EPS, fused=fused)
        for t in range(1, steps + 1)
    ]


@needs_fused
def test_fused_and_public_unit_steps_agree_to_1e_12_and_match_the_formula() -> None:
    fused, public = _unit_steps(True), _unit_steps(False)
    reference = _textbook([_grads(t) for t in range(1, 26)])
    for a, b, r in zip(fused, public, reference, strict=True):
        for x, y, z in zip(a, b, r, strict=True):
            torch.testing.assert_close(x, y, rtol=0, atol=1e-12)
            torch.testing.assert_close(y, z, rtol=0, atol=1e-12)
    assert not torch.equal(fused[0][0], fused[1][0])  # the steps move


def test_public_path_matches_the_formula_without_the_kernel() -> None:
    reference = _textbook([_grads(t) for t in range(1, 26)])
    for a, r in zip(_unit_steps(False), reference, strict=True):
        for x, z in zip(a, r, strict=True):
            torch.testing.assert_close(x, z, rtol=0, atol=1e-12)


def _in_place(fused: bool, lr: float = 0.01, steps: int = 25) -> list[list[torch.Tensor]]:
    """Parameters after each of ``steps`` in-place ``adam_`` updates from zero."""
    params = [torch.zeros(shape, dtype=F64) for shape in SHAPES]
    m = [torch.zeros(shape, dtype=F64) for shape in SHAPES]
    v = [torch.zeros(shape, dtype=F64) for shape in SHAPES]
    count = [torch.zeros(1) for _ in SHAPES]
    out = []
    for t in range(1, steps + 1):
        for c in count:
            c.add_(1.0)
        optimizer.adam_(params, _grads(t), m, v, count, t, lr, BETA1, BETA2, EPS, fused=fused)
        out.append([p.clone() for p in params])
    return out


@pytest.mark.parametrize("fused", [pytest.param(True, marks=needs_fused), False])
def test_in_place_adam_at_a_float_rate_matches_the_formula(fused: bool) -> None:
    lr, position = 0.01, [torch.zeros(shape, dtype=F64) for shape in SHAPES]
    reference = []
    for steps in _textbook([_grads(t) for t in range(1, 26)]):
        position = [p + lr * s for p, s in zip(position, steps, strict=True)]
        reference.append(position)
    for a, r in zip(_in_place(fused, lr), reference, strict=True):
        for x, z in zip(a, r, strict=True):
            torch.testing.assert_close(x, z, rtol=0, atol=1e-12)
    assert float(reference[-1][0].abs().max()) > 0.1  # the parameters moved


def test_the_switch_chooses_the_path(monkeypatch) -> None:
    available = "fused" if FUSED_ADAM_AVAILABLE else "public"
    monkeypatch.delenv(FUSED_ADAM_ENV, raising=False)
    assert optimizer.adam_path() == available
    assert optimizer.adam_path(False) == "public"
    monkeypatch.setenv(FUSED_ADAM_ENV, "0")
    assert optimizer.adam_path() == "public"
    monkeypatch.setenv(FUSED_ADAM_ENV, "1")
    assert optimizer.adam_path() == available
    monkeypatch.setenv(FUSED_ADAM_ENV, "yes")
    with pytest.raises(ValueError, match=r"\$RNNSWEEP_FUSED_ADAM must be 0 or 1, got 'yes'"):
        optimizer.adam_path()


def _packed_adam(steps: int = 30) -> list[torch.Tensor]:
    """A pack's row-wise Adam updates (per-row learning rates, shared betas and eps)."""
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(shape, generator=gen, dtype=F64) for shape in SHAPES]
    lr = torch.tensor([1e-3, 3e-3, 1e-2, 3e-2], dtype=F64)
    state = optimizer.init("adam", params)
    for t in range(1, steps + 1):
        optimizer.update(state, params, _grads(t), lr, beta1=BETA1, beta2=BETA2, eps=EPS)
    return params


@needs_fused
def test_env_switch_gives_the_same_packed_updates(monkeypatch) -> None:
    monkeypatch.delenv(FUSED_ADAM_ENV, raising=False)
    fused = _packed_adam()
    monkeypatch.setenv(FUSED_ADAM_ENV, "0")
    public = _packed_adam()
    for x, y in zip(fused, public, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-12)
    start = torch.randn(SHAPES[0], generator=torch.Generator().manual_seed(0), dtype=F64)
    assert (fused[0] - start).abs().max() > 1e-3  # the parameters moved
