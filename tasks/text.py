"""``text``: character-level prediction over a real corpus, available offline.

The corpus is the UTF-8 file at ``path`` (undecodable bytes become U+FFFD), or by default the
source code of thirteen pure-Python standard-library modules (argparse, difflib, textwrap, ...:
code and English docstrings, ~480k characters) read with ``inspect.getsource``, which every
CPython installation ships (a module whose source is missing contributes its docstring). The
default corpus therefore varies slightly between Python versions; its references are computed
when the task is made.

Alphabet: the corpus's characters; if there are more than ``max_alphabet``, the
``max_alphabet - 1`` most frequent are kept and the rest share an ``<other>`` symbol. Input:
the one-hot current character ``x [B, |alphabet|]``, target: the next character (ce), reported
in bits per character. Each stream starts at a seeded uniform random offset and wraps around at
the end of the corpus. Reference (nats per step): ``memoryless`` = entropy of the character
frequencies.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rnnsweep.tasks.entropy import entropy
from rnnsweep.tasks.settings import Setting
from rnnsweep.tasks.stream import Stream
from rnnsweep.tasks.task import Task

DEFAULT_MODULES = (
    "argparse", "difflib", "textwrap", "calendar", "fractions", "statistics", "heapq",
    "functools", "random", "contextlib", "pprint", "string", "csv",
)
OTHER = "<other>"


def default_corpus() -> str:
    """The concatenated sources of ``DEFAULT_MODULES`` (docstrings where a source is missing)."""
    parts = []
    for name in DEFAULT_MODULES:
        module = importlib.import_module(name)
        try:
            parts.append(inspect.getsource(module))
        except (OSError, TypeError):
            parts.append(module.__doc__ or "")
    text = "\n".join(parts)
    if len(text) < 1000:
        raise ValueError(
            "text: this Python installation has neither the sources nor the docstrings of the "
            "standard library; set 'path' to a text file"
        )
    return text


def read_corpus(path: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as error:
        raise ValueError(
            f"text: cannot read corpus file {path!r} (setting 'path'): "
            f"{error.strerror or error}"
        ) from error
    if len(text) < 2:
        raise ValueError(f"text: corpus file {path!r} (setting 'path') has fewer than 2 characters")
    return text


def encode(text: str, max_alphabet: int) -> tuple[Tensor, tuple[str, ...]]:
    """Symbol indices ``[N]`` (int32) and the alphabet (``<other>`` last if the cap applies)."""
    points = torch.frombuffer(bytearray(text.encode("utf-32-le")), dtype=torch.int32)
    values, counts = torch.unique(points, return_counts=True)
    if len(values) > max_alphabet:
        order = torch.sort(counts, descending=True, stable=True).indices[: max_alphabet - 1]
        kept = values[order].sort().values
        index = torch.searchsorted(kept, points).clamp_max(len(kept) - 1)
        codes = torch.where(kept[index] == points, index, len(kept))
        names = tuple(chr(v) for v in kept.tolist()) + (OTHER,)
    else:
        codes = torch.searchsorted(values, points)
        names = tuple(chr(v) for v in values.tolist())
    return codes.to(torch.int32), names


class TextStream(Stream):
    """Carries each stream's position ``[B]`` in the corpus."""

    def __init__(self, codes: Tensor, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.codes = codes
        size = codes.shape[0]
        self._position = torch.randint(0, size, (self.batch,), generator=self.generator)

    def _generate(self, steps: int) -> tuple[Tensor, Tensor]:
        offsets = torch.arange(steps + 1, dtype=torch.int64).unsqueeze(1)
        index = (self._position.unsqueeze(0) + offsets) % self.codes.shape[0]
        symbols = self.codes[index].long()
        self._position = (self._position + steps) % self.codes.shape[0]
        return symbols[:-1], symbols[1:]

    def _extra_state(self) -> dict[str, Any]:
        return {"position": self._position.clone()}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self._position = state["position"].clone()


SETTINGS = (
    Setting(
        "path",
        str,
        None,
        "corpus file (UTF-8); null: source of 13 standard-library modules, present everywhere",
        nullable=True,
    ),
    Setting(
        "max_alphabet", int, 128, "most distinct characters kept (the rarest share <other>)", low=2
    ),
)


def text_task(*, path: str | None, max_alphabet: int) -> Task:
    settings: dict[str, Any] = {"path": path, "max_alphabet": max_alphabet}
    codes, alphabet = encode(default_corpus() if path is None else read_corpus(path), max_alphabet)
    size = len(alphabet)
    freq = torch.bincount(codes.long(), minlength=size).double() / codes.shape[0]

    def make_stream(batch: int, seed: int, dtype: torch.dtype, device: torch.device) -> Stream:
        return TextStream(
            codes, task="text", settings=settings, inputs=size, batch=batch, seed=seed,
            dtype=dtype, device=device,
        )

    references = {"memoryless": entropy(freq.tolist())}
    return Task(
        "text", size, size, "ce", references, True, settings, make_stream, alphabet=alphabet
    )
