"""A lone learner's whole step as one compiled graph (``compile: true``).

The eager step of a lone learner (``Population`` with one member updating every step without
clipping) runs its estimator's ~20 small operations and then Adam, each a separate kernel
launched from Python. This module hands the same code to ``torch.compile`` (TorchDynamo +
Inductor, which writes C++ kernels and compiles them with the system's C++ compiler) as one
function of explicit arguments, ``lone_step``:

    loss, g = estimator.step(params, state, x_t, y_t)       # g = (g_theta, g_readout)
    g = [g_theta; g_readout]            (theta alone under a fixed readout)
    sums[0, 2] += ||g||
    t <- t + 1;  rate = lr / (1 + lr_decay sqrt(updates));  updates <- updates + 1
    adam:  m <- b1 m + (1 - b1) g,   v <- b2 v + (1 - b2) g^2,
           p <- p - rate / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    sgd:   p <- p - rate g

so that Inductor fuses the estimator's elementwise work, the gradient norm and the update into
a few loops. The counters ``(t, updates)`` and the hyperparameters live in small float64
tensors (``clock``, ``hyper``), so that neither a changing rate nor another member's lr makes
a new graph: one graph serves every learner of the same estimator, cell, shapes and dtype.
The estimator's Python-side counters (the trajectory's buffer index, the sign stream's
position) are replayed by Dynamo as for any traced function.

Compilation pays after warm-up: the first steps of a new (estimator, cell, B, n, dtype) take
seconds (``benchmarks/step_cost`` reports it), later ones a fraction of the eager step. The
math is the eager step's; in float64 the two agree within 1e-12 (``tests/test_compiled_step``).
Where compilation fails (no C++ compiler, an operation Inductor does not take), ``build``'s
step raises ``CompileError`` at its first call, before any state has changed, and the learner
goes on eagerly.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from rnnsweep.algorithms.params import Params

RECOMPILE_LIMIT = 64
# Inductor's checks of every input's sizes, strides and alignment at every call: Dynamo's
# guards have already matched them, and at ~100 us a step they cost several percent.
OPTIONS = {"size_asserts": False, "alignment_asserts": False, "scalar_asserts": False}


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
    x: Tensor,
    y: Tensor,
    m: Tensor,
    v: Tensor,
    clock: Tensor,
    hyper: Tensor,
    sums: Tensor,
    trained: int,
    adam: bool,
) -> Tensor:
    """One step of a lone learner, in place on ``flat [Q]`` (``[theta; readout]``, whose
    first ``trained`` elements are trained), Adam's ``m``, ``v [trained]``, ``clock [2]``
    (float64: Adam's ``t``, ``updates``) and ``sums`` (its ``[0, 2]``: the summed gradient
    norm); ``hyper [5]`` (float64: lr, lr_decay, beta1, beta2, adam_eps). Returns the step's
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
    t, updates = clock[0] + 1.0, clock[1]
    lr, decay, b1, b2, eps = hyper.unbind(0)
    rate = lr / (1.0 + decay * updates.sqrt())
    target = flat[:trained]
    if adam:
        b1g, b2g = b1.to(g.dtype), b2.to(g.dtype)
        m.mul_(b1g).add_((1.0 - b1g) * g)
        v.mul_(b2g).add_((1.0 - b2g) * g * g)
        bc1, bc2 = 1.0 - b1.pow(t), 1.0 - b2.pow(t)
        denom = v.sqrt() / bc2.sqrt().to(g.dtype) + eps.to(g.dtype)
        target.sub_((rate / bc1).to(g.dtype) * m / denom)
    else:
        target.sub_(rate.to(g.dtype) * g)
    clock.add_(1.0)
    return result.loss


def build(dynamic: bool | None = None) -> Callable[..., Tensor]:
    """``lone_step`` compiled (one graph per trajectory parity and sign-chunk position, no graph
    breaks); a failure to compile raises ``CompileError`` from the call that compiles."""
    compiled = torch.compile(lone_step, fullgraph=True, dynamic=dynamic, options=OPTIONS)

    def run(*args: Any) -> Tensor:
        try:
            return compiled(*args)
        except Exception as error:  # Dynamo and Inductor raise many types; all mean "not here"
            # (an error of the step's own arithmetic comes back from the eager step after it)
            lines = str(error).strip().splitlines() or [""]
            raise CompileError(f"{type(error).__name__}: {lines[0]}") from None

    return run


@functools.cache
def shared() -> Callable[..., Tensor]:
    """The process's one compiled ``lone_step``: learners of the same estimator, cell, shapes
    and dtype share its graphs. Dynamo's recompile limit is raised to ``RECOMPILE_LIMIT``: one
    learner takes a few graphs (each trajectory parity, a sign chunk's refill), and a process
    may step learners of several shapes."""
    dynamo_config = torch._dynamo.config
    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, RECOMPILE_LIMIT)
    # Inductor's own use of a deprecated torch helper warns at every compile: not the user's
    warnings.filterwarnings("ignore", message=r".*_prims_common\.check", category=FutureWarning)
    return build()
