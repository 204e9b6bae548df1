"""Throughput of a packed population against the same members stepped one after another.

For ``uoro``, ``nobacktrack`` and ``tbptt`` (truncation 16) on the ``add`` task, tanh n in
{32, 128}, float32, each pack size runs twice in one process:

- ``packed``: one ``Population`` of ``pack`` members (seeds 0..pack-1, learning rates spread
  over a decade, so the members really differ) stepping together;
- ``one by one``: the same members as lone ``Learner`` objects, each stepped in turn (the way a
  sweep without packing runs them on one core). Members are alike in cost, so the first
  ``--sample`` of them (all when the pack is smaller) are timed and the rate stands for all.

Both count stream-steps per second (members x streams x steps / seconds of ``step()`` calls);
``speedup`` is packed over one-by-one, the median over ``--repeats`` interleaved repeats, so a
noisy neighbour slows both sides alike. On CUDA every timing ends with a device synchronise.

Large packs (``LARGE``: 1024 members at n=32, 256 at n=128) add the memory a member costs:
``state_bytes_per_member`` (every tensor the population keeps, its parameters, estimator and
optimizer state and stream buffers, counted once per storage), ``held_bytes_per_member``
(what the pack holds after building and stepping it: on CUDA the allocated bytes, on the CPU
the resident set, which adds Python objects and allocator overhead) and
``peak_bytes_per_member`` (on CUDA ``torch.cuda.max_memory_allocated`` over building and
stepping; on the CPU the resident set's high-water mark over the same), each above the level
before the pack was built. The CPU figures come from a fresh process of their own (a process's
high-water mark never goes down). Their speedup
is against a sample of 4 lone learners.

Run: ``python -m rnnsweep.benchmarks.population [--json] [--quick] [--device cuda]``; the target
(``uoro``, n=32, pack 64, CPU, one thread: speedup >= 40, issue 14) is checked at the end.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from rnnsweep.algorithms.learner import Learner, LearnerSpec
from rnnsweep.algorithms.population import Population
from rnnsweep.benchmarks.memory import resident_bytes, storage_bytes

ESTIMATORS = ("uoro", "nobacktrack", "tbptt")
HIDDEN = (32, 128)
CPU_PACKS = (1, 8, 64, 256)
CUDA_PACKS = (1, 64, 256, 1024, 4096)
TARGET = ("uoro", 32, 64, "cpu", 40.0)  # estimator, hidden, pack, device, minimum speedup
LARGE = ((32, 1024), (128, 256))  # (hidden, pack): rows with each member's memory
LARGE_SAMPLE = 4  # lone learners timed for a large pack's speedup


def member_spec(estimator: str, hidden: int, index: int, device: str) -> LearnerSpec:
    settings = {"log_every": 100, "lr": 1e-4 * 10 ** ((index % 8) / 7)}
    if estimator == "tbptt":
        settings["truncation"] = 16
    return LearnerSpec("add", estimator, "tanh", hidden, index, "float32", device, settings)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _rate(step: Callable[[], object], steps: int, streams: int, device: str) -> float:
    """Stream-steps per second of ``steps`` calls of ``step`` covering ``streams`` streams."""
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return streams * steps / (time.perf_counter() - start)


def measure(
    estimator: str,
    hidden: int,
    pack: int,
    device: str,
    steps: int,
    repeats: int,
    sample: int,
    memory: bool = False,
) -> dict:
    specs = [member_spec(estimator, hidden, i, device) for i in range(pack)]
    row: dict[str, Any] = {}
    if memory and device == "cuda":  # this very pack, built and warmed up before anything else
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    population = Population(specs)
    for _ in range(5):  # warm up (the first step validates its inputs)
        population.step()
    if memory and device == "cuda":
        torch.cuda.synchronize()
        row = {
            "state_bytes_per_member": storage_bytes(population) / pack,
            "held_bytes_per_member": (torch.cuda.memory_allocated() - before) / pack,
            "peak_bytes_per_member": (torch.cuda.max_memory_allocated() - before) / pack,
        }
    elif memory:
        row = cpu_member_memory(estimator, hidden, pack, 20)
    lone = [Learner(spec) for spec in specs[: min(pack, sample)]]
    for _ in range(5):
        for learner in lone:
            learner.step()

    def one_by_one() -> None:
        for learner in lone:
            learner.step()

    packed_rates, lone_rates = [], []
    for _ in range(repeats):
        packed_rates.append(_rate(population.step, steps, pack, device))
        lone_rates.append(_rate(one_by_one, max(1, steps // 2), len(lone), device))
    speedup = statistics.median(p / s for p, s in zip(packed_rates, lone_rates, strict=True))
    return {
        "estimator": estimator,
        "hidden": hidden,
        "pack": pack,
        "device": device,
        "stream_steps_per_sec": statistics.median(packed_rates),
        "one_by_one_stream_steps_per_sec": statistics.median(lone_rates),
        "speedup": speedup,
        **row,
    }


def cpu_member_memory(estimator: str, hidden: int, pack: int, steps: int) -> dict:
    """The memory a member of a CPU pack costs, built and stepped ``steps`` times in a fresh
    process (``_measure_memory_here``)."""
    script = (
        "import json, sys; from rnnsweep.benchmarks.population import _measure_memory_here; "
        "print(json.dumps(_measure_memory_here(*json.loads(sys.argv[1]))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps([estimator, hidden, pack, steps])],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _measure_memory_here(estimator: str, hidden: int, pack: int, steps: int) -> dict:
    """``cpu_member_memory`` in the fresh process that runs it: a pack of one first (so that
    lazily loaded libraries are not counted), then the pack."""
    torch.set_num_threads(1)
    warm = Population([member_spec(estimator, hidden, 0, "cpu")])
    for _ in range(3):
        warm.step()
    del warm
    before = resident_bytes()
    population = Population([member_spec(estimator, hidden, i, "cpu") for i in range(pack)])
    for _ in range(steps):
        population.step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before  # Linux: KiB
    return {
        "state_bytes_per_member": storage_bytes(population) / pack,
        "held_bytes_per_member": max(resident_bytes() - before, 0) / pack,
        "peak_bytes_per_member": max(peak, 0) / pack,
    }


def check_target(rows: list[dict]) -> dict | None:
    estimator, hidden, pack, device, bound = TARGET
    for row in rows:
        if (row["estimator"], row["hidden"], row["pack"], row["device"]) == (
            estimator,
            hidden,
            pack,
            device,
        ):
            return {
                **{k: row[k] for k in ("estimator", "hidden", "pack", "device", "speedup")},
                "bound": bound,
                "met": row["speedup"] >= bound,
            }
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog="examples:\n  python -m rnnsweep.benchmarks.population\n"
        "  python -m rnnsweep.benchmarks.population --quick --json\n"
        "  python -m rnnsweep.benchmarks.population --device cuda --hidden 32 128",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", action="store_true", help='print {"rows": [...]} as JSON')
    parser.add_argument("--quick", action="store_true", help="n=32, packs 1 and 8, few steps")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    parser.add_argument("--estimators", nargs="+", default=list(ESTIMATORS))
    parser.add_argument("--hidden", nargs="+", type=int, default=list(HIDDEN))
    parser.add_argument("--packs", nargs="+", type=int, help="default: by device")
    parser.add_argument("--steps", type=int, default=200, help="packed steps per timing")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sample", type=int, default=16, help="lone members timed per row")
    parser.add_argument(
        "--no-large", action="store_true", help="skip the large packs' rows (with memory)"
    )
    parser.add_argument("--memory", action="store_true", help="memory per member in every row")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible to torch")
    torch.set_num_threads(args.threads)
    packs = args.packs or (CUDA_PACKS if args.device == "cuda" else CPU_PACKS)
    hidden, steps, repeats = args.hidden, args.steps, args.repeats
    if args.quick:
        hidden, packs, steps, repeats = [32], [1, 8], 40, 1
    log = (lambda line: print(line, file=sys.stderr, flush=True)) if args.json else print
    if args.device == "cuda":
        log(f"device: {torch.cuda.get_device_name()}")
    rows = []
    for estimator in args.estimators:
        for n in hidden:
            for pack in packs:
                row = measure(
                    estimator, n, pack, args.device, steps, repeats, args.sample, args.memory
                )
                rows.append(row)
                log(
                    f"{estimator:<12} n={n:<4} pack={pack:<5} {args.device:<5} "
                    f"{row['stream_steps_per_sec']:>12.0f} stream-steps/s packed, "
                    f"{row['one_by_one_stream_steps_per_sec']:>9.0f} one by one, "
                    f"speedup {row['speedup']:.1f}x"
                )
    large = [r for r in LARGE if r[0] in hidden]
    if args.quick or args.no_large or args.packs:
        large = []
    for estimator in args.estimators:
        for n, pack in large:
            row = measure(estimator, n, pack, args.device, steps, repeats, LARGE_SAMPLE, True)
            rows.append(row)
            log(
                f"{estimator:<12} n={n:<4} pack={pack:<5} {args.device:<5} "
                f"{row['stream_steps_per_sec']:>12.0f} stream-steps/s packed, "
                f"speedup {row['speedup']:.1f}x, per member: state "
                f"{row['state_bytes_per_member'] / 1024:.1f} KiB, held "
                f"{row['held_bytes_per_member'] / 1024:.1f} KiB, peak "
                f"{row['peak_bytes_per_member'] / 1024:.1f} KiB"
            )
    target = check_target(rows)
    if args.json:
        print(json.dumps({"rows": rows, "target": target}, indent=2))
        return 0
    if target is not None:
        print(
            f"\ntarget: {target['estimator']} n={target['hidden']} pack={target['pack']} "
            f"{target['device']}: {target['speedup']:.1f}x one by one (bound >= "
            f"{target['bound']:.0f}x): {'met' if target['met'] else 'MISSED'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
