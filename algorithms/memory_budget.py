"""Refusing, up front, a tensor larger than the memory the device has free.

An allocation beyond what the system can ever give fails at once (torch's allocator says
"can't allocate memory"), but one that fits the kernel's overcommit and not the RAM succeeds
and is killed later, by the kernel's out-of-memory killer, with the rest of the process. The
few tensors whose size grows as a square of the model's (a full Kalman covariance ``[Q, Q]``)
are checked here first, so that such a request is a ``MemoryError`` naming it.
"""

from __future__ import annotations

import torch


def available_bytes(device: torch.device | str) -> int | None:
    """Free memory on ``device``: ``MemAvailable`` (Linux) on the CPU, the free device memory
    on a CUDA GPU; ``None`` where it cannot be known."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_fits(nbytes: int, device: torch.device | str, what: str) -> None:
    """``MemoryError`` naming ``what`` if ``nbytes`` exceed the free memory of ``device``."""
    free = available_bytes(device)
    if free is not None and nbytes > free:
        raise MemoryError(
            f"{what} needs {nbytes / 2**30:.1f} GiB, more than the {free / 2**30:.1f} GiB free "
            f"on {torch.device(device)}"
        )
