"""The device a command computes on: ``resolve_device("auto" | "cpu" | "cuda[:N]")``."""

from __future__ import annotations


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when CUDA is available, else ``cpu``; ``ValueError`` for a CUDA
    device on a machine without CUDA and for any other name."""
    import torch  # here, not at the top: ``rnnsweep --help`` starts without torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available here")
    if name != "cpu" and not name.startswith("cuda"):
        raise ValueError(f"unknown device {name!r}; use auto, cpu or cuda[:N]")
    return name
