"""The online learner: one task stream, a cell, a readout, an estimator and an optimizer.

A ``Learner`` is a population of one: ``Learner(spec)`` wraps ``Population([spec])``
(``rnnsweep.algorithms.population``, the one stepping engine) and shows its single member as a
lone learner. Every step: ``x_t, y_t`` from the stream -> the estimator's step (cell forward,
readout, loss, gradient estimate) -> every ``update_every`` steps, the mean of the accumulated
gradients is clipped to global norm ``clip`` and applied by the optimizer (``sgd``, ``adam``)
at the rate ``lr / (1 + lr_decay sqrt(t))`` — or, with ``optimizer = kalman``, the extended
Kalman filter over the parameters takes the step from the estimator's influence. Losses are
accumulated on the device; every ``log_every`` steps (the only host synchronisation) the
learner reports its running loss, bits per character where the task counts characters,
gradient norm and stream-steps per second, and checks for divergence: a non-finite loss or
parameter ends the run with ``diverged = True`` and a reason, never an exception.

``snapshot()`` / ``restore()`` cover the whole state (parameters, optimizer or filter,
estimator state, stream position and RNG, probe, counters), so that a restored learner
continues bit-for-bit like one never interrupted; the snapshot is the population's member
snapshot (``member.Member`` builds and reads it). ``final_loss`` is the mean loss (nats) over
the last 10% of the planned steps. The run's specification (``LearnerSpec``,
``split_settings``) lives in ``learner_spec`` and is re-exported here; every setting's type,
default and bounds in the settings table (``rnnsweep.algorithms.settings``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from torch import Tensor

from rnnsweep.algorithms import checkpoint_file
from rnnsweep.algorithms.learner_spec import (
    CHECKPOINT_VERSION,
    DTYPES,
    KALMAN_RULES,
    PROBE_METRICS,
    LearnerSpec,
    split_settings,
    unused_settings,
)
from rnnsweep.algorithms.params import Params
from rnnsweep.algorithms.population import Population

__all__ = [  # the specification's names are re-exported from learner_spec, where they live
    "CHECKPOINT_VERSION",
    "DTYPES",
    "KALMAN_RULES",
    "PROBE_METRICS",
    "Learner",
    "LearnerSpec",
    "learner_from",
    "load_checkpoint",
    "save_checkpoint",
    "split_settings",
    "unused_settings",
]
PACK_ONLY = ("pack_steps_per_sec",)  # report fields that mean something only for a pack


class Learner:
    """One online learner, a ``Population`` of one (``population``); build it from a
    ``LearnerSpec`` (validated before any work).

    ``params`` are views of the population's row 0 (``theta [P]``, ``readout [o, n + 1]``);
    ``counters`` is a lone learner's (``t``, ``updates``, ``pending``, ``planned``,
    ``tail_steps``, ``diverged``, ``reason``, ``elapsed``); ``config`` its resolved settings;
    ``stream`` the population's stream of ``batch`` rows.
    """

    def __init__(self, spec: LearnerSpec) -> None:
        self.spec = spec
        self._engine(Population([spec]))

    def _engine(self, population: Population) -> None:
        self.population = population
        self.config: dict[str, Any] = population.member_config[0]
        self.task, self.cell = population.task, population.cell
        self.loss_kind = population.loss_kind
        self.batch, self.dtype, self.device = population.width, population.dtype, population.device
        self.stream = population.stream
        self._params = Params(population.params.theta[0], population.params.readout[0])

    @property
    def params(self) -> Params:
        """The parameters (those it diverged with, once stopped)."""
        frozen = self.population.frozen.get(0)
        return Params(*frozen["params"]) if frozen is not None else self._params

    @property
    def counters(self) -> dict[str, Any]:
        """A copy of the counters; the population owns them."""
        pop = self.population
        if 0 in pop.frozen:
            return dict(pop.frozen[0]["counters"])
        return {
            **pop.counters,
            "diverged": pop.diverged[0],
            "reason": pop.reasons[0],
            "elapsed": pop.elapsed[0],
        }

    @property
    def step(self) -> Callable[[], Tensor]:
        """One time step of the ``batch`` streams: ``step() -> loss [batch]``. Assigning a
        callable (e.g. one that records the loss around the original) makes ``run`` step
        through it."""
        return self.population.step

    @step.setter
    def step(self, step: Callable[[], Tensor]) -> None:
        self.population.step = step

    def run(
        self,
        steps: int,
        on_report: Callable[[dict[str, Any]], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> dict[str, Any]:
        """Step until ``steps`` steps in total are done (a restored learner continues);
        ``on_report(report)`` every ``log_every`` steps; returns ``summary()``."""

        def report(_: int, fields: dict[str, Any]) -> None:
            on_report({k: v for k, v in fields.items() if k not in PACK_ONLY})

        return self.population.run(steps, report if on_report else None, should_stop)[0]

    def summary(self) -> dict[str, Any]:
        return self.population.summaries()[0]

    def snapshot(self) -> dict[str, Any]:
        return self.population.snapshots()[0]

    def restore(self, snap: dict[str, Any]) -> None:
        """Continue from ``snap``; another version, run specification (the device aside) or
        any mismatched field is refused with a ``ValueError`` naming it."""
        self._engine(Population([self.spec], [snap]))


def save_checkpoint(learner: Learner, path: str, extra: dict[str, Any] | None = None) -> None:
    """Write the learner's snapshot (and ``extra``, e.g. a tracking run id) atomically, in the
    format of ``checkpoint_file``."""
    checkpoint_file.write(path, learner.snapshot(), extra)


def learner_from(
    saved: checkpoint_file.Checkpoint, source: str, spec: LearnerSpec | None = None
) -> Learner:
    """Rebuild the learner of a read checkpoint; ``source`` names it in messages. ``spec``, if
    given, must be the checkpoint's own."""
    try:
        saved_spec = LearnerSpec(**saved.snapshot["spec"])
    except TypeError as error:
        raise checkpoint_file.CheckpointError(
            f"checkpoint {source} has a malformed run specification: {error}"
        ) from None
    if spec is not None and asdict(spec) != asdict(saved_spec):
        raise checkpoint_file.CheckpointError(
            f"checkpoint {source} belongs to another run: {asdict(saved_spec)} != {asdict(spec)}"
        )
    try:
        learner = Learner(saved_spec)
        learner.restore(saved.snapshot)
    except (ValueError, TypeError, KeyError) as error:
        raise checkpoint_file.CheckpointError(
            f"checkpoint {source} does not fit its run: {error}"
        ) from None
    return learner


def load_checkpoint(path: str, spec: LearnerSpec | None = None) -> Learner:
    """Rebuild a learner from a checkpoint file; a corrupt or mismatched file is refused."""
    return learner_from(checkpoint_file.read(path), checkpoint_file.describe(path), spec)
