"""Memory measures the benchmarks share: bytes held in tensors, the resident set, and the
largest rise of allocations over some calls.

- ``storage_bytes(obj)``: the bytes of every storage a tensor reachable from ``obj`` (through
  rnnsweep objects' attributes, dicts and sequences) lives in, each storage once; ``meta``
  tensors (shapes only) hold none.
- ``resident_bytes()``: this process's resident set (Linux ``/proc``).
- ``allocation_rise(step, steps)``: the largest rise of CPU allocations over ``steps`` calls,
  from ``torch.profiler``'s memory events.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import torch


def _tensors(obj: Any, seen: set[int]) -> Iterator[torch.Tensor]:
    if id(obj) in seen or isinstance(obj, (str, bytes, int, float, bool, type(None))):
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _tensors(value, seen)
    elif isinstance(obj, (list, tuple, set)):
        for value in obj:
            yield from _tensors(value, seen)
    elif hasattr(obj, "__dict__") and type(obj).__module__.startswith("rnnsweep"):
        yield from _tensors(vars(obj), seen)
    elif hasattr(obj, "__slots__"):
        for name in obj.__slots__:
            yield from _tensors(getattr(obj, name, None), seen)


def storage_bytes(obj: Any) -> int:
    """Bytes of every storage the tensors reachable from ``obj`` live in, each counted once."""
    storages = {}
    for t in _tensors(obj, set()):
        if t.device.type == "meta":  # a shape: no memory
            continue
        storage = t.untyped_storage()
        storages[(storage.data_ptr(), t.device)] = storage.nbytes()
    return sum(storages.values())


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def allocation_rise(step: Callable[[], object], steps: int) -> int:
    """The largest rise of CPU allocations over ``steps`` calls of ``step``: the running sum
    of ``torch.profiler``'s memory events (allocations inside operations, frees) above its
    lowest point so far."""
    from torch.profiler import ProfilerActivity, profile

    # the profiler's native start/stop lines and allocator warnings go to fd 2: not ours to show
    saved, quiet = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(quiet, 2)
    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            for _ in range(steps):
                step()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(quiet)
    events = sorted(
        (e for e in prof.events() if e.self_cpu_memory_usage),
        key=lambda e: e.time_range.start,
    )
    level = low = rise = 0
    for event in events:
        level += event.self_cpu_memory_usage
        low = min(low, level)
        rise = max(rise, level - low)
    return rise
