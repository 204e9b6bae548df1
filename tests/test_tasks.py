"""Tests of the task streams: shapes, seeding, save/restore, and each task's generating process."""

from __future__ import annotations

import io
import math
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import torch
from torch.func import jacrev, jvp, vjp, vmap

from rnnsweep.algorithms.cell import make_cell
from rnnsweep.algorithms.loss import check_targets, loss
from rnnsweep.algorithms.system_cell import system_cell
from rnnsweep.tasks import Task, make_task, task_names
from rnnsweep.tasks.entropy import binary_entropy, entropy, nats_to_bits
from rnnsweep.tasks.influence_balancing import fixed_point, optimal_theta
from rnnsweep.tasks.mimic import Teacher
from rnnsweep.tasks.system import System

NAMES = ["add", "anbn", "brackets", "copy", "influence-balancing", "mimic", "text"]


@cache
def task(name: str, **settings) -> Task:
    return make_task(name, **settings)


def run(stream, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*(stream.next() for _ in range(steps)), strict=True)
    return torch.stack(xs), torch.stack(ys)


def symbols(x: torch.Tensor) -> torch.Tensor:
    """One-hot inputs ``[T, B, m]`` back to indices ``[T, B]``."""
    assert bool(((x == 0) | (x == 1)).all()) and bool((x.sum(-1) == 1).all())
    return x.argmax(-1)


# --- registry and settings --------------------------------------------------------------------


def test_all_tasks_registered() -> None:
    assert task_names() == sorted(NAMES)


def test_unknown_task_lists_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown task 'ad'.*add.*influence-balancing"):
        make_task("ad")


def test_unknown_setting_names_key_and_known_keys() -> None:
    with pytest.raises(
        ValueError, match=re.escape("add: unknown setting 'tt1' (known: t1, t2, labels)")
    ):
        make_task("add", tt1=3)


@pytest.mark.parametrize(
    ("name", "settings", "key"),
    [
        ("add", {"t1": -1}, "t1"),
        ("add", {"t2": 2.5}, "t2"),
        ("anbn", {"min_n": 5, "max_n": 4}, "max_n"),
        ("brackets", {"min_gap": "3"}, "min_gap"),
        ("copy", {"threshold": 0.0}, "threshold"),
        ("copy", {"symbols": 1}, "symbols"),
        ("influence-balancing", {"positive": 30}, "positive"),
        ("influence-balancing", {"theta0": float("nan")}, "theta0"),
        ("mimic", {"labels": "mode"}, "labels"),
        ("text", {"max_alphabet": 1}, "max_alphabet"),
    ],
)
def test_bad_setting_value_names_key(name: str, settings: dict, key: str) -> None:
    with pytest.raises(ValueError, match=f"{name}: setting '{key}'"):
        make_task(name, **settings)


def test_settings_are_resolved_with_defaults() -> None:
    assert make_task("add", t1=3.0).settings == {"t1": 3, "t2": 9, "labels": "soft"}
    assert task("anbn").settings == {"min_n": 1, "max_n": 32}


def test_tasks_import_neither_ray_optuna_nor_mlflow() -> None:
    code = (
        "import sys; from rnnsweep import tasks; [tasks.make_task(n) for n in tasks.task_names()]; "
        "print(sorted(m for m in ('ray', 'optuna', 'mlflow') if m in sys.modules))"
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root
    )
    assert out.stdout.strip() == "[]"


def test_new_stream_checks_arguments() -> None:
    with pytest.raises(ValueError, match="batch"):
        task("add").new_stream(0, 0)
    with pytest.raises(ValueError, match="dtype"):
        task("add").new_stream(2, 0, dtype=torch.int64)


# --- every task: shapes, seeding, save/restore ------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", NAMES)
def test_shapes_and_dtypes(name: str, dtype: torch.dtype) -> None:
    t = task(name)
    assert t.loss_kind in ("ce", "mse")
    stream = t.new_stream(3, seed=1, dtype=dtype)
    for _ in range(5):
        x, y = stream.next()
        assert x.shape == (3, t.inputs) and x.dtype == dtype
        assert bool(torch.isfinite(x).all())
        check_targets(t.loss_kind, y, 3, t.outputs)
        if t.loss_kind == "mse":
            assert y.dtype == dtype
    assert stream.step == 5
    assert all(math.isfinite(v) and v >= 0 for v in t.references.values())


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_stream_different_seed_different(name: str) -> None:
    t = task(name)
    x1, y1 = run(t.new_stream(3, seed=7), 300)  # crosses a chunk boundary
    x2, y2 = run(t.new_stream(3, seed=7), 300)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    x3, y3 = run(t.new_stream(3, seed=8), 300)
    if name == "influence-balancing":  # deterministic by definition
        assert torch.equal(x1, x3) and torch.equal(y1, y3)
    else:
        assert not (torch.equal(x1, x3) and torch.equal(y1, y3))
        # the B streams are not copies of one another
        assert not (torch.equal(x1[:, 0], x1[:, 1]) and torch.equal(y1[:, 0], y1[:, 1]))


@pytest.mark.parametrize("at", [50, 230])  # 230 + 50 crosses the chunk boundary at 256
@pytest.mark.parametrize("name", NAMES)
def test_restore_continues_bit_for_bit(name: str, at: int) -> None:
    t = task(name)
    stream = t.new_stream(3, seed=3, dtype=torch.float64)
    for _ in range(at):
        _, y = stream.next()
        stream.observe(torch.full((3,), 0.01, dtype=torch.float64))
    buffer = io.BytesIO()
    torch.save(stream.state_dict(), buffer)
    expected = run(stream, 50)
    restored = t.new_stream(3, seed=99, dtype=torch.float64)
    buffer.seek(0)
    restored.load_state_dict(torch.load(buffer))  # weights_only: plain data only
    assert restored.step == at
    got = run(restored, 50)
    assert torch.equal(expected[0], got[0]) and torch.equal(expected[1], got[1])
    assert restored.curriculum == stream.curriculum


def test_restore_refuses_other_task_or_shape() -> None:
    state = task("add").new_stream(3, 0).state_dict()
    with pytest.raises(ValueError, match="task 'add'.*this stream is task 'anbn'"):
        task("anbn").new_stream(3, 0).load_state_dict(state)
    with pytest.raises(ValueError, match="batch 3.*batch 4"):
        task("add").new_stream(4, 0).load_state_dict(state)
    with pytest.raises(ValueError, match="settings"):
        make_task("add", t1=4).new_stream(3, 0).load_state_dict(state)


# --- add ---------------------------------------------------------------------------------------


def test_add_soft_labels_are_the_label_distribution() -> None:
    t1, t2 = 5, 9
    x, y = run(task("add").new_stream(4, seed=0, dtype=torch.float64), 120)
    x = x[..., 0]
    assert y.shape == (120, 4, 2) and y.dtype == torch.float64
    p = 0.5 + 0.5 * x[t2 - t1 : -t1] - 0.25 * x[:-t2]
    assert torch.equal(y[t2:, :, 1], p) and torch.equal(
        y[..., 0] + y[..., 1], torch.ones(120, 4, dtype=torch.float64)
    )


def test_add_label_frequencies_follow_the_formula() -> None:
    t1, t2 = 5, 9
    x, y = run(task("add", labels="sampled").new_stream(100, seed=0, dtype=torch.float64), 240)
    x = x[..., 0]
    a, b, label = x[t2 - t1 : -t1], x[:-t2], y[t2:].double()  # x_{t-t1}, x_{t-t2}, y_t
    for va in (0, 1):
        for vb in (0, 1):
            mask = (a == va) & (b == vb)
            count = int(mask.sum())
            p = 0.5 + 0.5 * va - 0.25 * vb
            frequency = float(label[mask].mean())
            sigma = math.sqrt(max(p * (1 - p), 1e-4) / count)
            assert abs(frequency - p) < 4 * sigma, (va, vb, frequency, p)
    assert abs(float(x.mean()) - 0.5) < 0.01


def test_add_references_are_the_label_entropies() -> None:
    refs = task("add").references
    # P(y=1 | x_{t-t1}, x_{t-t2}) over the four equally likely cases
    cases = {(0, 0): 0.5, (1, 0): 1.0, (0, 1): 0.25, (1, 1): 0.75}
    marginal = sum(cases.values()) / 4
    t1_only = 0.5 * binary_entropy((0.5 + 0.25) / 2) + 0.5 * binary_entropy((1.0 + 0.75) / 2)
    optimum = sum(binary_entropy(p) for p in cases.values()) / 4
    assert refs["nothing learned"] == pytest.approx(binary_entropy(marginal), abs=1e-12)
    assert refs["t1 only"] == pytest.approx(t1_only, abs=1e-12)
    assert refs["optimum"] == pytest.approx(optimum, abs=1e-12)
    assert (round(refs["nothing learned"], 4), round(refs["t1 only"], 4)) == (0.6616, 0.5192)
    assert round(refs["optimum"], 4) == 0.4545


# --- influence balancing ---------------------------------------------------------------------


def test_influence_balancing_cell_readout_and_initial_state() -> None:
    t = task("influence-balancing")
    system = t.cell()
    assert isinstance(system, System) and system.theta0 == (0.5,)
    cell = system_cell(system)
    assert (cell.num_params, cell.state_size, cell.hidden, cell.inputs) == (1, 23, 23, 1)
    assert cell.out_slice == slice(0, 23) and cell.name == "influence-balancing"
    assert t.hidden == 23 and t.loss_kind == "mse" and t.outputs == 1
    assert torch.equal(t.initial_state, torch.ones(23, dtype=torch.float64))
    assert torch.equal(cell.init_params(dtype=torch.float64), torch.tensor([0.5]).double())
    s = torch.randn(4, 23, dtype=torch.float64)
    hb = torch.cat([s, torch.ones(4, 1, dtype=torch.float64)], 1)
    out = hb @ t.readout.t()
    assert torch.equal(out[:, 0], s[:, 0])
    y = torch.ones(4, 1, dtype=torch.float64)
    assert torch.allclose(loss("mse", out, y), 0.5 * (s[:, 0] - 1) ** 2)


def test_influence_balancing_cell_is_the_linear_system_under_torch_func() -> None:
    cell = system_cell(task("influence-balancing").cell())
    theta = torch.tensor([0.3], dtype=torch.float64)
    s = torch.randn(23, dtype=torch.float64)
    x = torch.zeros(1, dtype=torch.float64)
    a = 0.5 * torch.eye(23, dtype=torch.float64) + 0.5 * torch.diag(torch.ones(22), 1).double()
    c = torch.tensor([1.0] * 10 + [-1.0] * 13, dtype=torch.float64)
    assert torch.allclose(cell.fn(theta, s, x), a @ s + 0.3 * c)
    assert torch.allclose(jacrev(cell.fn, argnums=1)(theta, s, x), a)
    _, tangent = jvp(cell.fn, (theta, s, x), (torch.ones_like(theta), 0 * s, x))
    assert torch.allclose(tangent, c)
    _, pullback = vjp(cell.fn, theta, s, x)
    u = torch.randn(23, dtype=torch.float64)
    g_theta, g_s, _ = pullback(u)
    assert torch.allclose(g_theta, (u * c).sum().view(1)) and torch.allclose(g_s, a.t() @ u)
    batch = torch.randn(5, 23, dtype=torch.float64)
    stepped = vmap(cell.fn, in_dims=(None, 0, None))(theta, batch, x)
    assert torch.allclose(stepped, batch @ a.t() + 0.3 * c)


@pytest.mark.parametrize("theta", [0.0, 0.3, -1.0 / 6.0])
def test_influence_balancing_iteration_converges_to_the_fixed_point(theta: float) -> None:
    t = task("influence-balancing")
    cell = system_cell(t.cell())
    th = torch.tensor([theta], dtype=torch.float64)
    s = t.initial_state.unsqueeze(0)
    x = torch.zeros(1, 1, dtype=torch.float64)
    for _ in range(400):
        s = cell.step(th, s, x)
    star = fixed_point(theta)
    assert torch.allclose(
        (
            torch.eye(23).double()
            - 0.5 * torch.eye(23).double()
            - 0.5 * torch.diag(torch.ones(22), 1).double()
        )
        @ star,
        theta * torch.tensor([1.0] * 10 + [-1.0] * 13).double(),
    )
    assert torch.allclose(s[0], star, atol=1e-9)
    assert float(star[0]) == pytest.approx(-6 * theta, abs=1e-12)
    assert optimal_theta() == pytest.approx(-1 / 6)


def test_influence_balancing_exact_gradient_converges_truncated_diverges() -> None:
    """Online SGD with the exact influence (RTRL) reaches theta* = -1/6; one-step truncation
    (tBPTT, T = 1) sees only the positive short-term effect and runs away."""
    t = task("influence-balancing")
    cell = system_cell(t.cell())
    x = torch.zeros(1, dtype=torch.float64)
    a = jacrev(cell.fn, argnums=1)(torch.zeros(1).double(), t.initial_state, x)
    c = jacrev(cell.fn, argnums=0)(torch.zeros(1).double(), t.initial_state, x)[:, 0]
    star = optimal_theta()
    finals = {}
    for truncated in (False, True):
        theta, s, g = 0.5, t.initial_state.clone(), torch.zeros(23, dtype=torch.float64)
        for _ in range(3000):
            s = a @ s + theta * c
            g = c.clone() if truncated else a @ g + c
            theta -= 2e-4 * float(s[0] - 1) * float(g[0])
        finals[truncated] = abs(theta - star)
    assert finals[False] < 1e-2
    assert finals[True] > 5 * abs(0.5 - star)


# --- anbn ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("min_n", "max_n"), [(1, 32), (2, 4)])
def test_anbn_structure(min_n: int, max_n: int) -> None:
    t = make_task("anbn", min_n=min_n, max_n=max_n)
    x, y = run(t.new_stream(3, seed=0), 2000)
    x = symbols(x)
    assert torch.equal(x[1:], y[:-1])  # the input is the previous target
    for b in range(3):
        text = "".join(t.alphabet[i] for i in [int(x[0, b])] + y[:, b].tolist())
        complete = text[: text.rindex("b\n") + 2]
        episodes = re.findall(r"(a+)\n(b+)\n", complete)
        assert "".join(f"{a}\n{bs}\n" for a, bs in episodes) == complete
        assert len(episodes) > 10
        for a_run, b_run in episodes:
            assert len(a_run) == len(b_run) and min_n <= len(a_run) <= max_n
    if (min_n, max_n) == (1, 32):
        assert nats_to_bits(t.references["optimum"]) == pytest.approx(5 / 35)
        assert round(nats_to_bits(t.references["optimum"]), 3) == 0.143
        assert t.bits_per_char and t.in_report_units(math.log(2)) == pytest.approx(1.0)


# --- brackets -----------------------------------------------------------------------------------


def test_brackets_structure_and_symbol_frequencies() -> None:
    t = task("brackets")
    x, y = run(t.new_stream(20, seed=0), 3000)
    x = symbols(x)
    assert torch.equal(x[1:], y[:-1])
    for b in range(3):
        text = "".join(t.alphabet[i] for i in [int(x[0, b])] + y[:, b].tolist())
        last_close = max(text.rfind(c) for c in ")]}")
        episodes = re.findall(r"([(\[{])([abcd]*)([)\]}])", text[: last_close + 1])
        assert "".join("".join(e) for e in episodes) == text[: last_close + 1]
        for opening, gap, closing in episodes:
            assert "([{".index(opening) == ")]}".index(closing)
            assert 1 <= len(gap) <= 10
    frequency = torch.bincount(y.reshape(-1), minlength=10).double() / y.numel()
    assert entropy(frequency.tolist()) == pytest.approx(t.references["memoryless"], abs=0.01)
    refs = t.references
    assert refs["optimum"] < refs["no bracket memory"] < refs["memoryless"] < math.log(10)


# --- copy ---------------------------------------------------------------------------------------


def copy_pattern_holds(x: torch.Tensor, y: torch.Tensor, length: int, symbols_: int) -> None:
    """Episode of length 2L: x = s_1..s_L, D, blanks; y = blanks, s_1..s_L."""
    blank_class, delimiter, blank_input = symbols_, symbols_, symbols_ + 1
    period = 2 * length
    for start in range(0, x.shape[0] - period + 1, period):
        ex, ey = x[start : start + period], y[start : start + period]
        assert bool((ex[:length] < symbols_).all()) and bool((ex[length] == delimiter).all())
        assert bool((ex[length + 1 :] == blank_input).all())
        assert bool((ey[:length] == blank_class).all()) and torch.equal(ey[length:], ex[:length])


def test_copy_curriculum_grows_after_low_losses_only() -> None:
    t = task("copy")
    low, high = t.new_stream(3, seed=0), t.new_stream(3, seed=0)
    assert low.curriculum == {"length": 1.0}
    xs, ys = [], []
    for _ in range(256 + 256):
        x, y = low.next()
        xs.append(symbols(x.unsqueeze(0))[0])
        ys.append(y)
        low.observe(torch.full((3,), 0.01))
        high.next()
        high.observe(torch.full((3,), 1.0))
    assert low.curriculum == {"length": 2.0}  # checked when the second chunk was drawn
    low.next()
    high.next()
    assert low.curriculum == {"length": 3.0}  # and again for the third
    assert high.curriculum == {"length": 1.0}
    x, y = torch.stack(xs), torch.stack(ys)
    copy_pattern_holds(x[:256], y[:256], 1, 2)
    copy_pattern_holds(x[256:], y[256:], 2, 2)


def test_copy_curriculum_ignores_blank_steps_and_respects_max_length() -> None:
    t = make_task("copy", max_length=2, symbols=3)
    stream = t.new_stream(2, seed=0)
    for _ in range(3 * 256):
        stream.next()
        # low loss on output steps only: blanks (high loss here) do not count
        scored = stream._scored[stream._offset - 1]
        stream.observe(torch.full((2,), 0.0 if scored else 5.0))
    stream.next()
    assert stream.curriculum == {"length": 2.0}
    refs = t.references
    assert refs["nothing learned"] == pytest.approx(entropy([0.5] + [1 / 6] * 3))
    assert refs["blanks only"] == pytest.approx(0.5 * math.log(3))


# --- mimic --------------------------------------------------------------------------------------


def test_mimic_labels_are_the_teachers_argmax() -> None:
    t = make_task("mimic", labels="argmax")
    x, y = run(t.new_stream(4, seed=0, dtype=torch.float64), 300)
    teacher = Teacher(0, 4, 16, 4, 1.0)
    # the teacher is a tanh RNN in the cells' convention: Theta = [W | b = 0 | U]
    cell = make_cell("tanh", 16, 4)
    theta = torch.cat([teacher.w, torch.zeros(16, 1).double(), teacher.u], 1).reshape(-1)
    h = torch.zeros(4, 16, dtype=torch.float64)
    for step in range(300):
        h = cell.step(theta, h, x[step])
        assert torch.equal((h @ teacher.v.t()).argmax(-1), y[step])
    assert t.references["optimum"] == 0.0


def test_mimic_teacher_seed_changes_labels_not_inputs() -> None:
    t0, t1 = task("mimic"), make_task("mimic", teacher_seed=1)
    x0, y0 = run(t0.new_stream(4, seed=0), 300)
    x1, y1 = run(t1.new_stream(4, seed=0), 300)
    assert torch.equal(x0, x1) and not torch.equal(y0, y1)
    refs = t0.references
    assert 0 < refs["optimum"] < refs["nothing learned"] <= math.log(4) + 1e-9


# --- text ---------------------------------------------------------------------------------------


def test_text_custom_corpus_and_wraparound(tmp_path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text("abcabcabc")
    t = make_task("text", path=str(path))
    assert t.alphabet == ("a", "b", "c") and t.inputs == t.outputs == 3
    assert t.references["memoryless"] == pytest.approx(math.log(3))
    x, y = run(t.new_stream(5, seed=0), 600)
    x = symbols(x)
    assert torch.equal(y, (x + 1) % 3)  # the next character, across the wrap-around
    assert t.settings == {"path": str(path), "max_alphabet": 128}


def test_text_alphabet_cap_uses_an_other_bucket(tmp_path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text("aaaabbbcdé" * 3)
    t = make_task("text", path=path, max_alphabet=3)
    assert t.alphabet == ("a", "b", "<other>")
    x, y = run(t.new_stream(2, seed=0), 40)
    assert set(y.unique().tolist()) == {0, 1, 2}


def test_text_missing_or_unreadable_path_names_it(tmp_path) -> None:
    missing = tmp_path / "nope.txt"
    with pytest.raises(ValueError, match=re.escape(repr(str(missing)))):
        make_task("text", path=str(missing))
    with pytest.raises(ValueError, match=re.escape(repr(str(tmp_path)))):
        make_task("text", path=str(tmp_path))
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="fewer than 2 characters"):
        make_task("text", path=str(empty))


def test_text_default_corpus() -> None:
    t = task("text")
    assert t.settings["path"] is None and len(t.alphabet) == t.inputs > 50
    assert 2.0 < nats_to_bits(t.references["memoryless"]) < 6.0


def test_text_path_beside_an_estimator_path_is_qualified(tmp_path) -> None:
    """The text task's ``path`` (a corpus) and uoro's ``path`` (closed form or torch.func) share a
    name: bare, ``path`` is ambiguous and the message names ``text.path``, which reaches the
    task; a sweep's ``task_settings.path`` is qualified so, and its learners are built."""
    from rnnsweep.algorithms.learner import Learner, LearnerSpec, split_settings
    from rnnsweep.orchestrator import spec as spec_

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("abcab cabba " * 50)
    bare = LearnerSpec("text", "uoro", hidden=4, settings={"path": str(corpus)})
    with pytest.raises(ValueError, match=r"ambiguous: .* text\.path names the task's"):
        split_settings(bare)
    both = {"text.path": str(corpus), "path": "closed-form"}
    spec = LearnerSpec("text", "uoro", hidden=4, settings=both)
    _, hyper, task_keys, _, _ = split_settings(spec)
    assert task_keys == {"path": str(corpus)} and hyper["path"] == "closed-form"
    assert Learner(spec).task.settings["path"] == str(corpus)

    sweep = spec_.load_spec_dict({
        "name": "tx", "task": "text", "hidden": 4, "steps": 100, "trials": 2,
        "estimators": ["uoro", "rflo"], "task_settings": {"path": str(corpus)},
    })
    for estimator in ("uoro", "rflo"):
        built = spec_.learner_spec(sweep, estimator, {}, seed=0)
        assert Learner(built).task.settings["path"] == str(corpus)
    assert "text.path" in spec_.learner_spec(sweep, "uoro", {}, 0).settings
    assert "path" in spec_.learner_spec(sweep, "rflo", {}, 0).settings  # no clash: as it was
