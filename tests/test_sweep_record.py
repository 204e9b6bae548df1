"""A sweep record that is not one (valid JSON of another shape, bytes that are not UTF-8) is
refused by every command that reads it, in one line naming the file (exit 2)."""

from __future__ import annotations

import pytest

from rnnsweep.orchestrator.cli import main


@pytest.mark.parametrize(
    "content,problem",
    [
        (b"[1, 2]", "is not a sweep record: a list, not a mapping"),
        (b"{}", "is not a sweep record: its 'name' is missing"),
        (b'{"name": "x", "spec": [], "optuna_storage": "a", "tracking_uri": "b"}',
         "is not a sweep record: its 'spec' is not a dict"),
        (b"\xff\xfe", "is unreadable: 'utf-8' codec can't decode"),
    ],
)
@pytest.mark.parametrize("command", ["status", "best", "report", "resume", "extend"])
def test_a_malformed_record_is_refused_naming_the_file(tmp_path, capsys, content, problem,
                                                       command):
    folder = tmp_path / "sweeps"
    folder.mkdir()
    (folder / "bad.json").write_bytes(content)
    extra = ["--trials", "+1"] if command == "extend" else []
    assert main([command, "bad", "--state-dir", str(tmp_path)] + extra) == 2
    err = capsys.readouterr().err
    assert f"sweep record {folder / 'bad.json'} {problem}" in err
    assert len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweeps"]  # nothing created
