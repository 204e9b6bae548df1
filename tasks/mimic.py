"""``mimic``: labels from a fixed random teacher tanh RNN.

The teacher (float64, fixed by ``teacher_seed``) has ``teacher_hidden`` units:

    x_t ~ N(0, I_m),    h_t = tanh(W h_{t-1} + U x_t),    h_{-1} = 0,    z_t = V h_t,
    W ~ N(0, gain^2 / teacher_hidden),  U ~ N(0, 1 / m),  V ~ N(0, 9 / teacher_hidden),

and the label ``y_t`` is a sample of softmax(z_t) (``labels="sample"``, default) or its argmax
(``labels="argmax"``). The learner sees ``x [B, m]`` and predicts ``y_t`` (ce, ``outputs``
classes); a student with the teacher's architecture can reach the optimum. References (nats per
step) are Monte-Carlo estimates over 256 x 512 steps of a fixed reference stream:
``nothing learned`` = entropy of the label frequencies, ``optimum`` = the teacher's mean
conditional entropy E[H(softmax(z_t))] (0 for argmax labels).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from rnnsweep.tasks.entropy import entropy
from rnnsweep.tasks.settings import Setting
from rnnsweep.tasks.stream import Stream
from rnnsweep.tasks.task import Task

READOUT_SCALE = 3.0
LABELS = ("sample", "argmax")


class Teacher:
    """The teacher's weights: ``W [h, h]``, ``U [h, m]``, ``V [o, h]``, float64 on the CPU."""

    def __init__(self, seed: int, inputs: int, hidden: int, outputs: int, gain: float) -> None:
        g = torch.Generator()
        g.manual_seed(seed)
        self.w = torch.randn(hidden, hidden, generator=g, dtype=torch.float64) * gain / hidden**0.5
        self.u = torch.randn(hidden, inputs, generator=g, dtype=torch.float64) / inputs**0.5
        self.v = torch.randn(outputs, hidden, generator=g, dtype=torch.float64)
        self.v *= READOUT_SCALE / hidden**0.5

    def run(self, h: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """Logits ``[T, B, o]`` for inputs ``x [T, B, m]`` from state ``h [B, h]``; final state."""
        states = x @ self.u.t()  # the input drive, overwritten in place by the states
        wt = self.w.t()
        for t in range(x.shape[0]):
            h = states[t].addmm_(h, wt).tanh_()
        return states @ self.v.t(), h.clone()


def draw_labels(logits: Tensor, labels: str, generator: torch.Generator) -> Tensor:
    """Class indices ``[T, B]``: Gumbel-max samples of softmax(logits), or the argmax."""
    if labels == "argmax":
        return logits.argmax(-1)
    u = torch.rand(logits.shape, generator=generator, dtype=torch.float64)
    gumbel = -torch.log(-torch.log(u.clamp_min(1e-300)))
    return (logits + gumbel).argmax(-1)


def estimate_references(
    teacher: Teacher, inputs: int, outputs: int, labels: str
) -> dict[str, float]:
    g = torch.Generator()
    g.manual_seed(12345)
    batch, steps = 256, 512
    x = torch.randn(steps, batch, inputs, generator=g, dtype=torch.float64)
    logits, _ = teacher.run(torch.zeros(batch, teacher.w.shape[0], dtype=torch.float64), x)
    y = draw_labels(logits, labels, g)
    freq = torch.bincount(y.reshape(-1), minlength=outputs).double() / y.numel()
    logp = torch.log_softmax(logits, -1)
    conditional = float(-(logp.exp() * logp).sum(-1).mean()) if labels == "sample" else 0.0
    return {"nothing learned": entropy(freq.tolist()), "optimum": conditional}


class MimicStream(Stream):
    """Carries the teacher's state ``h [B, teacher_hidden]``."""

    def __init__(self, teacher: Teacher, labels: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.teacher = teacher
        self.labels = labels
        self._h = torch.zeros(self.batch, teacher.w.shape[0], dtype=torch.float64)

    def _generate(self, steps: int) -> tuple[Tensor, Tensor]:
        shape = (steps, self.batch, self.inputs)
        x = torch.randn(shape, generator=self.generator, dtype=torch.float64)
        logits, self._h = self.teacher.run(self._h, x)
        return x, draw_labels(logits, self.labels, self.generator)

    def _extra_state(self) -> dict[str, Any]:
        return {"h": self._h.clone()}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self._h = state["h"].clone()


SETTINGS = (
    Setting("teacher_seed", int, 0, "seed of the fixed random teacher RNN", low=0),
    Setting("inputs", int, 4, "input size m, x_t ~ N(0, I_m)", low=1),
    Setting("teacher_hidden", int, 16, "hidden units of the teacher", low=1),
    Setting("outputs", int, 4, "classes of the teacher's labels", low=2),
    Setting("gain", float, 1.0, "teacher's weights W ~ N(0, gain^2 / teacher_hidden)", low=0.0),
    Setting(
        "labels",
        str,
        "sample",
        "sample: labels drawn from the teacher's softmax; argmax: its most likely class",
        choices=LABELS,
    ),
)


def mimic_task(
    *, teacher_seed: int, inputs: int, teacher_hidden: int, outputs: int, gain: float, labels: str
) -> Task:
    settings: dict[str, Any] = {
        "teacher_seed": teacher_seed, "inputs": inputs, "teacher_hidden": teacher_hidden,
        "outputs": outputs, "gain": gain, "labels": labels,
    }
    teacher = Teacher(teacher_seed, inputs, teacher_hidden, outputs, gain)

    def make_stream(batch: int, seed: int, dtype: torch.dtype, device: torch.device) -> Stream:
        return MimicStream(
            teacher, labels, task="mimic", settings=settings, inputs=inputs, batch=batch,
            seed=seed, dtype=dtype, device=device,
        )

    references = estimate_references(teacher, inputs, outputs, labels)
    return Task("mimic", inputs, outputs, "ce", references, False, settings, make_stream)
