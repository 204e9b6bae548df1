"""A lone learner's whole step as one compiled graph (``compile: true``).

The eager step of a lone learner (``Population`` with one member updating every step without
clipping) runs its estimator's ~20 small operations and then Adam, each a separate kernel
launched from Python. This module hands the same code to ``torch.compile`` (TorchDynamo +
Inductor, which writes C++ kernels and compiles them with the system's C++ compiler) as one
function of explicit arguments, ``lone_step``:

    loss, g = estimator.step(params, state, x_t, y_t)       # g = (g_theta, g_readout)
    g = [g_theta; g_readout]            (theta alone under a fixed readout)
    sums[0, 2] += ||g||
    adam:  m <- b1 m + (1 - b1) g,   v <- b2 v + (1 - b2) g^2,
           p <- p - rate / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    sgd:   p <- p - rate g,         rate = lr / (1 + lr_decay sqrt(updates))

so that Inductor fuses the estimator's elementwise work, the gradient norm and the update into
a few loops. The rate and the bias corrections are computed on the host in double precision,
as torch's fused Adam computes them, and passed as floats, which Dynamo takes as inputs: no
new graph for a new step or another learner's lr. The same graphs serve every learner of the
same estimator, cell, shapes and dtype.
The estimator's Python-side counters (the trajectory's buffer index, the sign stream's
position) are replayed by Dynamo as for any traced function.

Compilation pays after warm-up: the first steps of a new (estimator, cell, n, dtype) take
seconds (``benchmarks/step_cost`` reports it), later ones a fraction of the eager step. The
math is the eager step's; in float64 the two agree within 1e-12 (``tests/test_compiled_step``).
Where a graph cannot be built (no C++ compiler, an operation Inductor does not take, more
graphs than ``RECOMPILE_LIMIT``), ``build``'s step raises ``CompileError`` from the call that
needed it (the first steps, a sign chunk's refill), before that graph runs, so the learner
goes on eagerly from the same state; running out of memory comes through as it is.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from rnnsweep.algorithms import optimizer
from rnnsweep.algorithms.params import Params

RECOMPILE_LIMIT = 64
# Inductor's checks of every input's sizes, strides and alignment at every call: Dynamo's
# guards have already matched them, and at ~100 us a step they cost several percent.
# ``decompose_mm_pass``: a one-row product (``[1, k] @ [k, n]``: every matrix-vector product of
# one stream) becomes a multiply and a sum that Inductor fuses into its loops, instead of a
# call into BLAS (a few microseconds each; about 10 us of uoro's step at n=64).
OPTIONS = {
    "size_asserts": False,
    "alignment_asserts": False,
    "scalar_asserts": False,
    "post_grad_fusion_options": {"decompose_mm_pass": {}},
}


class CompileError(RuntimeError):
    """``torch.compile`` could not compile a lone step (the reason is the message)."""


class CompileWarning(UserWarning):
    """A learner asked for ``compile`` steps eagerly: its step could not be compiled."""


def lone_step(
    step: Callable[..., Any],
    flat: Tensor,
    theta_size: int,
    readout_shape: tuple[int, int],
    state: Any,
    m: Tensor,
    v: Tensor,
    sums: Tensor,
    trained: int,
    adam: bool,
    coefficients: tuple[float, float, float, float, float],
    x: Tensor,
    y: Tensor,
) -> Tensor:
    """One step of a lone learner, in place on ``flat [Q]`` (``[theta; readout]``, whose
    first ``trained`` elements are trained), Adam's ``m``, ``v [trained]`` and ``sums`` (its
    ``[0, 2]``: the summed gradient norm). ``coefficients``: Adam's ``(rate / (1 - b1^t),
    sqrt(1 - b2^t), b1, b2, eps)``, or sgd's ``(rate, ...)``, floats the host computes per
    step (Dynamo takes them as inputs, not constants: no graph per value). Returns the step's
    loss ``[B]``. The parameters are views of ``flat`` made here, so that no two arguments
    share memory (aliased inputs that are written make a compiled graph slow)."""
    params = Params(flat[:theta_size], flat[theta_size:].view(readout_shape))
    result = step(params, state, x, y)
    g_theta, g_readout = result.grad
    if trained > theta_size:
        g = torch.cat([g_theta.reshape(-1), g_readout.reshape(-1)])
    else:
        g = g_theta.reshape(-1)
    sums[0, 2] += torch.linalg.vector_norm(g).to(sums.dtype)
    target = flat[:trained]
    step_size, bc2_sqrt, b1, b2, eps = coefficients
    # every float multiplies a tensor (never an ``alpha=``, which Dynamo must specialize)
    if adam:
        m.mul_(b1).add_((1.0 - b1) * g)
        v.mul_(b2).add_((1.0 - b2) * (g * g))
        target.sub_(step_size * m / (v.sqrt() / bc2_sqrt + eps))
    else:
        target.sub_(step_size * g)
    return result.loss


def coefficients(
    adam: bool, lr: float, lr_decay: float, b1: float, b2: float, eps: float, t: int, updates: int
) -> tuple[float, float, float, float, float]:
    """``lone_step``'s coefficients for Adam's step ``t`` (from 1) after ``updates`` updates:
    the rate ``lr / (1 + lr_decay sqrt(updates))`` and the bias corrections, in double
    precision on the host, as torch's fused Adam takes them."""
    rate = optimizer.learning_rate(lr, lr_decay, updates)
    if not adam:
        return rate, 1.0, b1, b2, eps
    return rate / (1.0 - b1**t), (1.0 - b2**t) ** 0.5, b1, b2, eps


def build(dynamic: bool | None = None) -> Callable[..., Tensor]:
    """``lone_step`` compiled (one graph per trajectory parity and sign-chunk position, no graph
    breaks); a failure to compile raises ``CompileError`` from the call that compiles."""
    compiled = torch.compile(
        lone_step,
        fullgraph=True,
        dynamic=dynamic,
        options=OPTIONS,
        recompile_limit=RECOMPILE_LIMIT,  # this function's alone, not the process's
    )

    def run(*args: Any) -> Tensor:
        try:
            return compiled(*args)
        except (MemoryError, torch.OutOfMemoryError):
            raise  # running out of memory is the machine's fault, reported as such
        except Exception as error:  # Dynamo and Inductor raise many types; all mean "not here"
            if "can't allocate memory" in str(error):
                raise
            lines = str(error).strip().splitlines() or [""]
            raise CompileError(f"{type(error).__name__}: {lines[0]}") from None

    return run


@functools.cache
def shared() -> Callable[..., Tensor]:
    """The process's one compiled ``lone_step``: learners of the same estimator, cell, shapes
    and dtype share its graphs (a learner takes about seven: each trajectory parity, a sign
    chunk's refill; ``RECOMPILE_LIMIT`` leaves room for learners of several shapes)."""
    # Inductor's own use of a deprecated torch helper warns at every compile: not the user's
    warnings.filterwarnings("ignore", message=r".*_prims_common\.check", category=FutureWarning)
    return build()
