"""The online learner: settings, save/restore bit-for-bit, divergence as a result, probe."""

from __future__ import annotations

import math

import pytest
import torch

from rnnsweep.algorithms.learner import Learner, LearnerSpec, load_checkpoint, save_checkpoint


def _spec(estimator="uoro", task="add", dtype="float64", **settings):
    settings.setdefault("log_every", 50)
    return LearnerSpec(task, estimator, "tanh", 8, seed=3, dtype=dtype, settings=settings)


def _losses(learner: Learner, steps: int) -> list[float]:
    out = []
    learner.run(steps, on_report=lambda r: out.append(r["loss"]))
    return out


@pytest.mark.parametrize(
    "estimator,settings",
    [
        ("uoro", {"optimizer": "sgd", "lr": 0.01}),
        ("nobacktrack", {"optimizer": "adam", "lr": 1e-3, "update_every": 3}),
        ("nobacktrack-kalman", {}),
        ("tbptt", {"truncation": 7, "stride": 3, "optimizer": "sgd"}),
        (  # the checkpoint at step 200 falls inside the window [190, 210)
            "rtrl",
            {
                "probe_every": 95,
                "probe_window": 10,
                "probe_samples": 8,
                "probe_horizon": 20,
                "probe_full": True,
            },
        ),
    ],
)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_restore_continues_bit_for_bit(tmp_path, estimator, settings, dtype):
    spec = _spec(estimator, dtype=dtype, **settings)
    straight = Learner(spec)
    full = _losses(straight, 400)
    interrupted = Learner(spec)
    part = []
    interrupted.run(
        400,
        on_report=lambda r: part.append(r["loss"]),
        should_stop=lambda: interrupted.counters["t"] >= 200,
    )
    assert interrupted.counters["t"] == 200
    path = tmp_path / "ck.pt"
    save_checkpoint(interrupted, str(path))
    resumed = load_checkpoint(str(path))
    rest = _losses(resumed, 400)
    assert part + rest == full
    for a, b in zip(straight.params, resumed.params, strict=True):
        assert torch.equal(a, b)
    assert resumed.summary()["final_loss"] == straight.summary()["final_loss"]


def test_probe_does_not_change_learning():
    base = _losses(Learner(_spec("uoro", optimizer="sgd", lr=0.02)), 300)
    probed = Learner(
        _spec(
            "uoro",
            optimizer="sgd",
            lr=0.02,
            probe_every=100,
            probe_window=20,
            probe_samples=16,
            probe_horizon=20,
        )
    )
    reports: list[dict] = []
    probed.run(300, on_report=reports.append)
    assert [r["loss"] for r in reports] == base
    # Each window once, in the report that follows it, at its own step; none repeated.
    windows = [w for r in reports for w in r.get("probe", ())]
    assert [w["step"] for w in windows] == [20, 120, 220]
    assert [r["step"] for r in reports if "probe" in r] == [50, 150, 250]
    assert not any(key in r for r in reports for key in ("bias", "staleness"))
    summary = probed.summary()
    assert summary["probe_windows"] == 3
    for key in ("bias", "variance", "cosine", "staleness", "horizon_error", "bias_se"):
        values = [w["metrics"][key] for w in windows]
        assert summary[f"{key}_mean"] == pytest.approx(sum(values) / 3, rel=1e-12)
        assert summary[f"{key}_last"] == values[-1] and summary[f"{key}_max"] == max(values)
        assert math.isfinite(summary[f"{key}_mean"])
    assert "staleness_full_mean" not in summary


def test_rtrl_probe_bias_is_zero():
    learner = Learner(
        _spec(
            "rtrl",
            optimizer="sgd",
            lr=0.02,
            probe_every=100,
            probe_window=40,
            probe_samples=4,
            probe_horizon=40,
        )
    )
    learner.run(300)
    summary = learner.summary()
    assert summary["probe_windows"] == 3
    assert summary["bias_max"] < 1e-10 and summary["variance_max"] < 1e-20


def test_divergence_is_a_result_not_an_exception():
    spec = LearnerSpec(
        "influence-balancing",
        "tbptt",
        seed=0,
        dtype="float32",
        settings={
            "truncation": 1,
            "optimizer": "sgd",
            "lr": 0.1,
            "lr_decay": 0.0,
            "clip": 0.0,
            "log_every": 100,
        },
    )
    summary = Learner(spec).run(20000)
    assert summary["diverged"] is True
    assert "non-finite" in summary["reason"]
    assert summary["steps"] < 20000


def _recorded(learner: Learner) -> list[float]:
    """The mean loss of each step ``learner`` takes from now on (its ``step`` wrapped)."""
    losses: list[float] = []
    original = learner.step

    def recording_step():
        loss = original()
        losses.append(float(loss.mean()))
        return loss

    learner.step = recording_step
    return losses


def test_final_loss_is_mean_of_last_tenth():
    learner = Learner(_spec("uoro", optimizer="sgd", lr=0.0, log_every=10))
    losses = _recorded(learner)
    summary = learner.run(100)
    assert summary["final_loss"] == pytest.approx(sum(losses[90:]) / 10, rel=1e-12)


def test_final_loss_and_window_loss_across_device_ring_folds():
    # 150 steps in one report window: the losses pass through the step's device ring (folded
    # every 64 steps and at the tail's first step, 135) on their way to the sums.
    learner = Learner(_spec("uoro", log_every=1000))
    losses, reports = _recorded(learner), []
    summary = learner.run(150, on_report=reports.append)
    assert [r["step"] for r in reports] == [150]
    assert reports[0]["loss"] == pytest.approx(sum(losses) / 150, rel=1e-12)
    assert summary["final_loss"] == pytest.approx(sum(losses[135:]) / 15, rel=1e-12)


@pytest.mark.parametrize(
    "settings,message",
    [
        ({"lrr": 0.1}, "unknown setting 'lrr'"),
        ({"lr": "fast"}, "setting 'lr' must be a finite number"),
        ({"lr": -1.0}, "setting 'lr' must be >= 0"),
        ({"optimizer": "rmsprop"}, "setting 'optimizer' must be one of"),
        ({"truncation": 0}, "truncation"),
        ({"t1": -2}, "t1"),
        ({"update_every": 0}, "setting 'update_every' must be >= 1"),
        ({"probe_every": 10, "probe_window": 20}, "probe_window"),
        ({"probe_every": 10, "probe_window": 5, "probe_horizon": 20}, "'probe_horizon' must not"),
        ({"probe_every": 10, "probe_window": 8, "probe_horizon": 5}, "exceed 'probe_horizon'"),
        ({"probe_every": 10, "probe_window": 5, "probe_horizon": 5, "probe_full": 1}, "probe_full"),
    ],
)
def test_bad_settings_are_named(settings, message):
    estimator = "tbptt" if "truncation" in settings else "uoro"
    with pytest.raises(ValueError, match=message):
        Learner(_spec(estimator, **settings))


def test_unknown_names_and_offline_bptt():
    with pytest.raises(ValueError, match="unknown task"):
        Learner(_spec(task="nope"))
    with pytest.raises(ValueError, match="unknown estimator"):
        Learner(_spec("nope"))
    with pytest.raises(ValueError, match="offline"):
        Learner(_spec("bptt"))
    with pytest.raises(ValueError, match="contradicts"):
        Learner(_spec("nobacktrack-kalman", optimizer="sgd"))
    with pytest.raises(ValueError, match="needs an estimator with an influence"):
        Learner(_spec("tbptt", optimizer="kalman"))


def test_corrupt_and_mismatched_checkpoints_are_refused(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt or not a checkpoint"):
        load_checkpoint(str(bad))
    with pytest.raises(ValueError, match="does not exist"):
        load_checkpoint(str(tmp_path / "missing.pt"))
    learner = Learner(_spec("uoro"))
    learner.run(100)
    good = tmp_path / "good.pt"
    save_checkpoint(learner, str(good))
    with pytest.raises(ValueError, match="belongs to another run"):
        load_checkpoint(str(good), _spec("nobacktrack"))
    snap = learner.snapshot()
    other = Learner(
        LearnerSpec("add", "uoro", "tanh", 9, seed=3, dtype="float64", settings={"log_every": 50})
    )
    with pytest.raises(ValueError, match="different run specification"):
        other.restore(snap)
    snap["spec"] = other.snapshot()["spec"]
    with pytest.raises(ValueError, match="params"):
        other.restore(snap)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    learner = Learner(_spec("uoro"))
    learner.run(50)
    path = tmp_path / "ck.pt"
    save_checkpoint(learner, str(path))
    before = path.read_bytes()

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint(learner, str(path))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]
