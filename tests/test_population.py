"""Packed populations: each member computes what it computes alone, reports, checkpoints,
diverges and stops on its own; the step loop never waits for the device."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rnnsweep.algorithms.learner import Learner, LearnerSpec
from rnnsweep.algorithms.population import Population, check_packable, pack_key

TOL = 1e-12


def _spec(estimator="uoro", seed=0, task="add", hidden=8, cell="tanh", **settings):
    settings.setdefault("log_every", 50)
    return LearnerSpec(task, estimator, cell, hidden, seed=seed, dtype="float64", settings=settings)


def _alone(spec: LearnerSpec, steps: int) -> tuple[list[dict], Learner]:
    learner = Learner(spec)
    reports: list[dict] = []
    learner.run(steps, on_report=reports.append)
    return reports, learner


def _packed(specs, steps, snapshots=None, stop_at=None):
    pop = Population(specs, snapshots)
    reports: dict[int, list[dict]] = {i: [] for i in range(len(specs))}
    stop = (lambda: pop.counters["t"] >= stop_at) if stop_at else None
    pop.run(steps, on_report=lambda i, r: reports[i].append(r), should_stop=stop)
    return reports, pop


def _close(alone: list[dict], packed: list[dict], key: str = "loss") -> float:
    """The largest difference of ``key`` between two report lists, relative where above 1."""
    assert [r["step"] for r in alone] == [r["step"] for r in packed]
    return max(
        abs(a[key] - b[key]) / max(1.0, abs(a[key])) for a, b in zip(alone, packed, strict=True)
    )


def _params_gap(learner: Learner, pop: Population, i: int) -> float:
    return max(
        float((a - b[i]).abs().max()) for a, b in zip(learner.params, pop.params, strict=True)
    )


# Members differ in seed and every per-member setting the estimator family uses.
CASES = {
    "uoro": [
        {"lr": 1e-3},
        {"lr": 3e-3, "clip": 0.05, "lr_decay": 0.1},
        {"lr": 1e-2, "beta1": 0.8, "adam_eps": 1e-6, "init_scale": 0.5},
    ],
    "nobacktrack": [{"optimizer": "sgd", "lr": 0.01}, {"optimizer": "sgd", "lr": 0.03}],
    "tbptt": [  # stride 4: a checkpoint at step 150 falls between two updates
        {"truncation": 6, "stride": 4, "update_every": 2},
        {"truncation": 6, "stride": 4, "update_every": 2, "lr": 3e-3, "beta2": 0.99},
    ],
    "rtrl": [{"lr": 1e-3}, {"lr": 1e-2, "clip": 0.1}],
    "nobacktrack-kalman": [
        {"process_noise": 1e-5},
        {"process_noise": 1e-4, "obs_noise": 0.1, "p0": 0.05},
    ],
    "uoro-kalman": [
        {"covariance": "block"},
        {"covariance": "block", "p0": 0.02, "obs_noise": 0.05},
    ],
    "snap1": [{"lr": 1e-3}, {"lr": 5e-3}],
    "kf-rtrl": [{"lr": 1e-3}, {"lr": 5e-3}],
    "rflo": [{"lr": 1e-3}, {"lr": 5e-3}],
}


@pytest.mark.parametrize("estimator", sorted(CASES))
def test_member_equals_the_same_learner_alone(estimator):
    specs = [_spec(estimator, seed=5 + i, **s) for i, s in enumerate(CASES[estimator])]
    reports, pop = _packed(specs, 300)
    for i, spec in enumerate(specs):
        alone, learner = _alone(spec, 300)
        assert _close(alone, reports[i]) <= TOL
        assert _close(alone, reports[i], "grad_norm") <= 1e-9
        assert _params_gap(learner, pop, i) <= TOL
        assert abs(pop.summaries()[i]["final_loss"] - learner.summary()["final_loss"]) <= TOL
    # the members really are different learners
    assert reports[0][-1]["loss"] != reports[1][-1]["loss"]


@pytest.mark.parametrize("cell", ["tanh", "gru"])
def test_clip_never_reached_keeps_the_lone_update(cell):
    """A lone learner that clips takes the general update path (``_apply``), one that does not
    the lone one (``_lone_apply``): with a clip its gradients never reach, the two agree."""

    def run(**clip):
        return _alone(_spec("uoro", seed=3, cell=cell, lr=3e-3, lr_decay=0.1, **clip), 300)

    def gap(a: Learner, b: Learner) -> float:
        return max(float((p - q).abs().max()) for p, q in zip(a.params, b.params, strict=True))

    (plain, learner), (clipped, other) = run(), run(clip=1e9)
    assert learner.population._lone and not other.population._lone
    assert _close(plain, clipped) <= TOL
    assert _close(plain, clipped, "grad_norm") <= 1e-9
    assert gap(learner, other) <= TOL
    assert gap(learner, run(clip=1e-3)[1]) > 1e-4  # a clip that is reached changes the run


@pytest.mark.parametrize(
    "specs",
    [
        [_spec("uoro", seed=s, cell="gru", lr=lr) for s, lr in ((1, 1e-3), (2, 4e-3))],
        [
            _spec("uoro", seed=s, task="influence-balancing", hidden=23, log_every=100, lr=lr)
            for s, lr in ((1, 1e-2), (2, 3e-2))
        ],
        [
            _spec("tbptt", seed=s, task="copy", threshold=5.0, truncation=4, lr=lr)
            for s, lr in ((1, 1e-3), (2, 1e-2), (3, 3e-3))
        ],
        [_spec("nobacktrack", seed=s, batch=3, lr=lr) for s, lr in ((1, 1e-3), (2, 3e-3))],
        [
            _spec(
                "uoro",
                seed=s,
                lr=1e-3,
                probe_every=100,
                probe_window=10,
                probe_samples=4,
                probe_horizon=20,
            )
            for s in (1, 2)
        ]
        + [_spec("uoro", seed=3, lr=1e-3)],
    ],
    ids=["gru-generic", "influence-balancing", "copy-curriculum", "batch-3", "probe"],
)
def test_member_equals_alone_across_tasks_cells_and_batches(specs):
    steps = 400
    reports, pop = _packed(specs, steps)
    for i, spec in enumerate(specs):
        alone, learner = _alone(spec, steps)
        assert _close(alone, reports[i]) <= TOL
        assert _params_gap(learner, pop, i) <= TOL
        if "curriculum_length" in alone[-1]:
            assert _close(alone, reports[i], "curriculum_length") <= 1e-9
        windows = [w for r in alone for w in r.get("probe", ())]
        packed = [w for r in reports[i] for w in r.get("probe", ())]
        assert [w["step"] for w in packed] == [w["step"] for w in windows]
        assert len(windows) == (4 if "probe_every" in spec.settings else 0)
        for a, b in zip(windows, packed, strict=True):
            assert a["metrics"].keys() == b["metrics"].keys()
            for key, value in a["metrics"].items():
                assert abs(value - b["metrics"][key]) <= 1e-9 * max(1.0, abs(value)), key


@pytest.mark.parametrize("estimator", ["uoro", "tbptt", "nobacktrack-kalman"])
def test_pack_checkpoint_restore_equals_uninterrupted(estimator):
    specs = [_spec(estimator, seed=7 + i, **s) for i, s in enumerate(CASES[estimator][:2])]
    straight, pop_full = _packed(specs, 400)
    first, pop = _packed(specs, 400, stop_at=150)
    assert pop.counters["t"] == 150
    snaps = pop.snapshots()
    torch.save(snaps, "/dev/null")  # plain, saveable objects
    rest, resumed = _packed(specs, 400, snapshots=snaps)
    for i, spec in enumerate(specs):
        assert _close(straight[i], first[i] + rest[i]) <= TOL
        assert torch.allclose(pop_full.flat[i], resumed.flat[i], rtol=0, atol=TOL)
        # a member's snapshot is a lone learner's: it can leave the pack and go on alone
        lone = Learner(spec)
        lone.restore(snaps[i])
        tail = []
        lone.run(400, on_report=tail.append)
        assert _close(rest[i], tail) <= TOL
        alone, learner = _alone(spec, 400)
        assert _close(alone, first[i] + tail) <= TOL


@pytest.mark.parametrize(
    "spec",
    [
        _spec("tbptt", seed=4, batch=2, truncation=5, lr=3e-3),
        _spec("uoro-kalman", seed=4, batch=2, p0=0.05),
        _spec("rtrl", seed=4, optimizer="sgd", lr=0.05, update_every=2),
    ],
    ids=["tbptt-b2", "kalman-b2", "rtrl-sgd"],
)
def test_pack_of_one_is_the_lone_learner(spec):
    reports, pop = _packed([spec], 400)
    alone, learner = _alone(spec, 400)
    assert _close(alone, reports[0]) <= TOL
    assert _params_gap(learner, pop, 0) <= TOL
    lone = Learner(spec)
    lone.restore(pop.snapshots()[0])
    assert lone.summary() == {
        **pop.summaries()[0],
        "steps_per_sec": lone.summary()["steps_per_sec"],
    }


def test_lone_learners_join_a_pack_midway():
    specs = [_spec("uoro", seed=s, lr=lr) for s, lr in ((1, 1e-3), (2, 5e-3))]
    lone_snaps = []
    for spec in specs:
        learner = Learner(spec)
        learner.run(300, should_stop=lambda learner=learner: learner.counters["t"] >= 100)
        lone_snaps.append(learner.snapshot())
    rest, pop = _packed(specs, 300, snapshots=lone_snaps)
    for i, spec in enumerate(specs):
        alone, learner = _alone(spec, 300)
        assert _close(alone[2:], rest[i]) <= TOL
        assert _params_gap(learner, pop, i) <= TOL


def test_diverging_member_is_frozen_and_the_others_go_on():
    ib = dict(task="influence-balancing", hidden=23, truncation=1, optimizer="sgd", lr_decay=0.0)
    specs = [
        _spec("tbptt", seed=0, lr=0.1, log_every=100, **ib),  # truncation 1 runs away
        _spec("tbptt", seed=1, lr=1e-4, log_every=100, **ib),
    ]
    reports, pop = _packed(specs, 8000)
    summaries = pop.summaries()
    assert summaries[0]["diverged"] is True
    assert "non-finite" in summaries[0]["reason"]
    assert summaries[0]["steps"] < 8000
    assert summaries[1]["diverged"] is False and summaries[1]["steps"] == 8000
    assert reports[0][-1]["step"] == summaries[0]["steps"]  # no report after divergence
    alone, learner = _alone(specs[1], 8000)
    assert _close(alone, reports[1]) <= TOL
    assert _params_gap(learner, pop, 1) <= TOL
    alone0, lone0 = _alone(specs[0], 8000)
    assert lone0.summary()["steps"] == summaries[0]["steps"]
    assert lone0.summary()["reason"] == summaries[0]["reason"]


def test_stopped_member_keeps_its_snapshot_and_compact_changes_nothing_for_the_rest():
    specs = [_spec("uoro", seed=s, lr=lr) for s, lr in ((1, 1e-3), (2, 5e-3), (3, 2e-3))]
    pop = Population(specs)
    seen: dict[int, list[dict]] = {0: [], 1: [], 2: []}
    pop.run(
        400, on_report=lambda i, r: seen[i].append(r), should_stop=lambda: pop.counters["t"] >= 100
    )
    before = pop.snapshots([1])[0]
    pop.stop([1], "pruned at step 100")
    assert pop.snapshots([1])[0]["params"][0].equal(before["params"][0])
    assert pop.summaries()[1]["reason"] == "pruned at step 100"
    assert float(pop.flat[1].abs().max()) == 0.0  # its rows compute zeros now
    pop.run(
        400, on_report=lambda i, r: seen[i].append(r), should_stop=lambda: pop.counters["t"] >= 200
    )
    assert seen[1][-1]["step"] == 100
    kept = pop.compact()
    assert kept == [0, 2] and pop.pack == 2
    rest: dict[int, list[dict]] = {0: [], 1: []}
    pop.run(400, on_report=lambda i, r: rest[i].append(r))
    for j, i in enumerate(kept):
        alone, learner = _alone(specs[i], 400)
        assert _close(alone, seen[i] + rest[j]) <= TOL
        assert _params_gap(learner, pop, j) <= TOL


def test_pack_key_and_incompatible_members_are_named():
    a = _spec("uoro", seed=1, lr=1e-3, clip=1.0)
    probed = _spec("uoro", seed=9, lr=0.1, probe_every=10, probe_window=5, probe_horizon=5)
    assert pack_key(a) == pack_key(probed)
    assert pack_key(a) == pack_key(_spec("uoro", seed=1, eps=1e-7))  # the default, explicit
    with pytest.raises(ValueError, match="member 1 cannot join.*estimator"):
        check_packable([a, _spec("nobacktrack")])
    with pytest.raises(ValueError, match="member 1 cannot join.*update_every"):
        check_packable([a, _spec("uoro", update_every=2)])
    with pytest.raises(ValueError, match="member 1 cannot join.*truncation"):
        check_packable([_spec("tbptt", truncation=4), _spec("tbptt", truncation=5)])
    with pytest.raises(ValueError, match="Kalman filter are packed with batch 1"):
        check_packable([_spec("uoro-kalman", batch=2), _spec("uoro-kalman", batch=2)])
    with pytest.raises(ValueError, match="at least one member"):
        check_packable([])
    with pytest.raises(ValueError, match="unknown setting 'lrr'"):
        Population([a, _spec("uoro", lrr=1.0)])


def test_members_at_different_steps_are_refused():
    specs = [_spec("uoro", seed=s) for s in (1, 2)]
    snaps = []
    for stop in (100, 150):
        learner = Learner(specs[len(snaps)])
        learner.run(300, should_stop=lambda learner=learner, s=stop: learner.counters["t"] >= s)
        snaps.append(learner.snapshot())
    with pytest.raises(ValueError, match="same step"):
        Population(specs, snaps)


class _HostSync(Exception):
    pass


def test_step_loop_never_reads_device_values(monkeypatch):
    """A proxy on the CPU for 'no host synchronisation': between reports, nothing in the step
    loop turns a tensor into a Python value (which on CUDA waits for the device)."""
    specs = [_spec(e, seed=s, log_every=10_000) for e, s in (("uoro", 1), ("uoro", 2))]
    kalman = [_spec("nobacktrack-kalman", seed=s, log_every=10_000) for s in (1, 2)]
    tbptt = [_spec("tbptt", seed=s, truncation=4, log_every=10_000, clip=0.5) for s in (1, 2)]
    pops = [Population(group) for group in (specs, kalman, tbptt)]
    for pop in pops:
        pop.step()  # the first step validates its inputs (a read, on purpose)

    def refuse(*args, **kwargs):
        raise _HostSync("a tensor was read on the host inside the step loop")

    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    for pop in pops:
        for _ in range(300):  # more than one chunk of the streams (256)
            pop.step()
    monkeypatch.undo()
    with pytest.raises(_HostSync):  # the guard does catch a read
        monkeypatch.setattr(torch.Tensor, "item", refuse)
        torch.zeros(1).item()


def test_copy_curricula_are_read_once_per_chunk_for_the_whole_pack(monkeypatch):
    specs = [
        _spec("tbptt", seed=s, task="copy", threshold=5.0, truncation=4, log_every=10_000)
        for s in (1, 2, 3)
    ]
    pop = Population(specs)
    pop.step()
    reads = []

    def counted(name):
        original = getattr(torch.Tensor, name)

        def read(self, *args, **kwargs):
            reads.append(name)
            return original(self, *args, **kwargs)

        return read

    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, counted(name))
    for _ in range(512):  # two chunk refills
        pop.step()
    monkeypatch.undo()
    assert reads == ["tolist", "tolist"]  # one transfer per chunk, not one per member
    assert [s.length for s in pop.stream.members] == [3, 3, 3]  # the curricula moved on


def test_a_member_with_zero_obs_noise_on_ce_is_refused_by_name():
    specs = [_spec("uoro-kalman", seed=1), _spec("uoro-kalman", seed=2, obs_noise=0.0)]
    with pytest.raises(ValueError, match="member 1: obs_noise must be > 0 for ce"):
        Population(specs)


def test_device_out_of_memory_is_raised_not_called_divergence(monkeypatch):
    pop = Population([_spec("uoro", seed=s) for s in (1, 2)])

    def full(self):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(Population, "step", full)
    with pytest.raises(torch.OutOfMemoryError):
        pop.run(100)
    assert pop.diverged == [False, False]


def test_population_benchmark_prints_the_documented_json(capsys):
    from rnnsweep.benchmarks import population as bench

    assert bench.main(["--quick", "--json", "--estimators", "uoro"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [(r["estimator"], r["hidden"], r["pack"], r["device"]) for r in rows] == [
        ("uoro", 32, 1, "cpu"),
        ("uoro", 32, 8, "cpu"),
    ]
    for row in rows:
        # --quick times one repeat: the speedup is that repeat's packed rate over its lone rate.
        rate, lone = row["stream_steps_per_sec"], row["one_by_one_stream_steps_per_sec"]
        assert math.isfinite(rate) and math.isfinite(lone)
        assert row["speedup"] == pytest.approx(rate / lone, rel=1e-12)


def test_population_benchmark_measures_each_members_memory(capsys):
    """``--memory``: a member's state covers at least its parameters and Adam's two moments
    (float32: 12 bytes a parameter), and what the pack holds never exceeds its peak."""
    from rnnsweep.algorithms.cell import make_cell
    from rnnsweep.benchmarks import population as bench

    assert bench.main(["--quick", "--json", "--estimators", "uoro", "--memory"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    cell = make_cell("tanh", 32, 1)  # the add task: one input, two outputs
    params = cell.num_params + 2 * (32 + 1)
    for row in rows:
        assert row["state_bytes_per_member"] >= 12 * params
        assert 0 <= row["held_bytes_per_member"] <= row["peak_bytes_per_member"]
    one, eight = rows
    # shared buffers (the stream's, the step's) spread over more members
    assert eight["state_bytes_per_member"] <= one["state_bytes_per_member"]


@pytest.mark.parametrize("t", [0, 1, 9, 10, 11, 99, 1000, 12345, 10**15])
def test_replan_names_the_least_length_at_once(t):
    """The least run length whose tail (the last max(1, N // 10) steps) starts at or after step
    ``t``: computed in closed form (a checkpoint with an absurd step must not hang it)."""
    pop = Population([_spec("uoro")])
    pop.counters.update(t=t, planned=t + 1, tail_steps=1)
    least = t + 1
    while t < 10**6 and least - max(1, least // 10) < t:  # brute force where it is quick
        least += 1
    if t >= 10**6:
        least = next(n for n in range(t * 10 // 9 - 2, t * 10 // 9 + 3) if n - n // 10 >= t)
    try:
        pop.replan(t + 2)
        named = None
    except ValueError as error:
        named = int(str(error).split("at least ")[1].split()[0])
    assert named == (None if t + 2 - max(1, (t + 2) // 10) >= t else least)


def test_a_short_gradient_ring_folds_the_same_norms(monkeypatch):
    """A lone learner keeps its steps' gradients in a ring of at most ``GRAD_RING_BYTES`` (a
    big network's ring is short): a ring of 3 slots, folded every 3 steps, reports the same
    gradient norms and reaches the same parameters as the full ring and as a pack."""
    from rnnsweep.algorithms import population

    spec = _spec("uoro", seed=2, lr=3e-3)
    full, learner = _alone(spec, 200)
    row_bytes = learner.population._grad_ring[0].numel() * 8
    monkeypatch.setattr(population, "GRAD_RING_BYTES", 3 * row_bytes + 1)
    short, other = _alone(spec, 200)
    assert learner.population._grad_ring.shape[0] == 64
    assert other.population._grad_ring.shape[0] == 3
    assert _close(full, short, "grad_norm") <= 1e-12
    gap = max(float((p - q).abs().max()) for p, q in zip(learner.params, other.params, strict=True))
    assert gap == 0.0
    reports, pop = _packed([spec, _spec("uoro", seed=3, lr=1e-3)], 200)
    assert _close(short, reports[0], "grad_norm") <= 1e-9
