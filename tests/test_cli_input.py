"""Bad command-line input to the quick commands: exit 2 with one line that names the problem
(and the closest known value where there is one), before any work."""

from __future__ import annotations

import pytest

from rnnsweep.orchestrator.cli import main

CASES = [
    (["settings", "--estimator", "uorro"], "unknown estimator 'uorro' (did you mean 'uoro'?)"),
    (["settings", "--estimator", "uoro", "--optimizer", "adm"], "(did you mean 'adam'?)"),
    (["ui", "x", "--port", "99999"], "expected a TCP port in 1..65535, got 99999"),
    (["gradcheck", "--cell", "lstm", "--estimators", "kf-rtrl,rflo"],
     "none of kf-rtrl, rflo supports the lstm cell: nothing to check"),
    (["run", "--task", "addd", "--estimator", "uoro", "--no-mlflow"],
     "unknown task 'addd' (did you mean 'add'?)"),
    (["run", "--task", "add", "--estimator", "uoro", "--cell", "tanhh", "--no-mlflow"],
     "must be one of tanh, gru, lstm (did you mean 'tanh'?), got 'tanhh'"),
    (["run", "--task", "add", "--estimator", "uoro", "--seed", "4294967296", "--no-mlflow"],
     "setting 'seed' must be in [0, 4294967295], got 4294967296"),
]


def _exit_code(argv: list[str]) -> int:
    """``main``'s exit status, argparse's refusals (``SystemExit``) included."""
    try:
        return main(argv)
    except SystemExit as stop:
        return int(stop.code)


@pytest.mark.parametrize("argv,message", CASES, ids=[" ".join(a[:3]) for a, _ in CASES])
def test_bad_input_is_one_line_naming_it(argv, message, capsys):
    assert _exit_code(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_dry_run_shows_the_state_directory_it_was_given(tmp_path, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text("name: s\ntask: add\nhidden: 4\nsteps: 100\ntrials: 1\nestimators: [uoro]\n")
    state = tmp_path / "elsewhere"
    assert main(["launch", str(spec), "--dry-run", "--state-dir", str(state)]) == 0
    assert f"  state directory: {state}\n" in capsys.readouterr().out
    assert not state.exists()
