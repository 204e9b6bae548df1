"""The cells by name: ``make_cell(name, hidden, inputs, **options)``.

``CELLS`` is an explicit table of factories ``(hidden, inputs, **options) -> Cell``: this
module imports the implementations, and they import only the interface
(``rnnsweep.algorithms.cell_base``, whose public names are re-exported here), so there is no
import cycle. ``register_cell`` adds a cell of one's own.
"""

from __future__ import annotations

from collections.abc import Callable

from rnnsweep.algorithms.cell_base import Cell, CellFn, column
from rnnsweep.algorithms.gru import gru_cell
from rnnsweep.algorithms.lstm import lstm_cell
from rnnsweep.algorithms.tanh_rnn import tanh_cell

__all__ = ["CELLS", "Cell", "CellFn", "column", "make_cell", "register_cell"]

CellFactory = Callable[..., Cell]
CELLS: dict[str, CellFactory] = {"tanh": tanh_cell, "gru": gru_cell, "lstm": lstm_cell}


def register_cell(name: str) -> Callable[[CellFactory], CellFactory]:
    """Decorator: add a factory ``(hidden, inputs, **options) -> Cell`` under ``name``."""

    def add(factory: CellFactory) -> CellFactory:
        CELLS[name] = factory
        return factory

    return add


def make_cell(name: str, hidden: int, inputs: int, **options: float) -> Cell:
    """Build a registered cell; unknown names and bad sizes raise ``ValueError``."""
    if name not in CELLS:
        raise ValueError(f"unknown cell {name!r}; known cells: {', '.join(sorted(CELLS))}")
    if hidden < 1 or inputs < 0:
        raise ValueError(f"cell sizes must be hidden >= 1 and inputs >= 0, got {hidden}, {inputs}")
    return CELLS[name](hidden, inputs, **options)
