"""Reading sweep files safely: a "billion laughs" file and an oversized file exit 2 fast and
small (measured in a separate process), alias limits name the problem, plain anchors work."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rnnsweep.orchestrator.spec_file import MAX_ALIASES, SpecError, read_spec_file

# A parent process that runs the command, then reports its exit status, wall time and peak
# memory (RUSAGE_CHILDREN of a fresh process: this command's alone).
MEASURE = """
import json, resource, subprocess, sys, time
start = time.perf_counter()
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
wall = time.perf_counter() - start
rss_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"rc": done.returncode, "wall": wall, "rss_mb": rss_kb / 1024,
                  "err": done.stderr}))
"""


def billion_laughs(path: Path) -> Path:
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]")
    path.write_text("\n".join(lines) + "\n")
    return path


def measure(path: Path) -> dict:
    command = [sys.executable, "-m", "rnnsweep.orchestrator.cli", "launch", str(path)]
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, *command, "--dry-run"],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def test_billion_laughs_exits_2_within_a_second_and_100_mb(tmp_path):
    bomb = billion_laughs(tmp_path / "bomb.yaml")
    result = measure(bomb)
    assert result["rc"] == 2, result["err"]
    assert f"{bomb}: not valid YAML" in result["err"] and "alias expansion limit" in result["err"]
    assert result["wall"] < 1.0, result
    assert result["rss_mb"] < 100, result


def test_file_over_1_mb_exits_2_within_a_second(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("name: big\n" + "# padding\n" * 110_000)
    result = measure(big)
    assert result["rc"] == 2, result["err"]
    assert f"{big}: the sweep file has {big.stat().st_size} bytes" in result["err"]
    assert result["wall"] < 1.0 and result["rss_mb"] < 100, result


def test_too_many_aliases_and_recursive_aliases_are_refused(tmp_path):
    many = tmp_path / "many.yaml"
    many.write_text("x: &x 1\ny: [" + ", ".join(["*x"] * (MAX_ALIASES + 1)) + "]\n")
    with pytest.raises(SpecError, match=f"many.yaml: not valid YAML: .*more than {MAX_ALIASES}"):
        read_spec_file(str(many))
    loop = tmp_path / "loop.yaml"
    loop.write_text("a: &a [1, *a]\n")
    with pytest.raises(SpecError, match="loop.yaml: not valid YAML: recursive alias"):
        read_spec_file(str(loop))


def test_plain_anchors_and_floats_still_load(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("a: &r {low: 1e-4, high: 1e-2}\nb: *r\nc: [*r, *r]\n")
    data = read_spec_file(str(path))
    assert data["b"] == data["a"] == {"low": 1e-4, "high": 1e-2}
    assert data["c"] == [data["a"]] * 2


def test_run_config_files_load_within_the_same_limits(tmp_path, capsys):
    from rnnsweep.orchestrator.cli import main

    bomb = billion_laughs(tmp_path / "best.yaml")
    assert main(["run", "--config", str(bomb), "--no-mlflow"]) == 2
    err = capsys.readouterr().err
    assert f"--config {bomb}: not valid YAML" in err and "alias expansion limit" in err
    assert main(["run", "--config", str(tmp_path / "none.yaml"), "--no-mlflow"]) == 2
    assert "none.yaml: run file does not exist" in capsys.readouterr().err


def test_a_nul_byte_and_a_fifo_are_refused_naming_the_file(tmp_path):
    import os
    import threading

    nul = tmp_path / "nul.yaml"
    nul.write_bytes(b"name: s1\x00\n")
    with pytest.raises(SpecError, match=r"nul.yaml: not valid YAML: unacceptable character #x0000"):
        read_spec_file(str(nul))
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    errors: list[BaseException] = []

    def read() -> None:
        try:
            read_spec_file(str(fifo))
        except BaseException as error:  # noqa: BLE001 - handed to the test's thread
            errors.append(error)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=20)  # opening a FIFO for reading blocks until a writer comes
    assert not reader.is_alive(), "read_spec_file blocked on a FIFO"
    assert isinstance(errors[0], SpecError) and "is not a regular file" in str(errors[0])
