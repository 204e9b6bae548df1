"""The checkpoint file: documented layout, header-only step reads, weights-only loading (a
planted pickle never runs, through every entry point), clear refusals, atomic writes."""

from __future__ import annotations

import io
import json
import os
import re
import struct
from dataclasses import asdict

import pytest
import torch

from rnnsweep.algorithms import checkpoint, checkpoint_file
from rnnsweep.algorithms.atomic_file import write_atomic
from rnnsweep.algorithms.learner import Learner, LearnerSpec, load_checkpoint, save_checkpoint
from rnnsweep.orchestrator.actors import LearnerHost
from rnnsweep.orchestrator.cli import main
from rnnsweep.orchestrator.stores import checkpoint_step


class Payload:
    """Unpickled by anything but a weights-only loader, it creates the file ``marker``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _spec(**settings) -> LearnerSpec:
    return LearnerSpec("add", "uoro", "tanh", 8, seed=3, dtype="float64", settings=settings)


def _learner(steps: int = 120) -> Learner:
    learner = Learner(_spec(log_every=40))
    learner.run(steps)
    return learner


def _with_header(payload: bytes, **fields) -> bytes:
    """A file of the documented layout around ``payload`` (a valid checksum unless given)."""
    import hashlib

    header = {
        "format": checkpoint_file.FORMAT,
        "step": 120,
        "payload_bytes": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
        **fields,
    }
    text = json.dumps(header).encode()
    return checkpoint_file.MAGIC + struct.pack("<I", len(text)) + text + payload


def _saved(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def test_layout_is_magic_length_json_header_then_torch_payload(tmp_path):
    learner = _learner()
    path = tmp_path / "ck.pt"
    save_checkpoint(learner, str(path), {"mlflow_run_id": "abc"})
    data = path.read_bytes()
    assert data.startswith(checkpoint_file.MAGIC)
    (length,) = struct.unpack_from("<I", data, len(checkpoint_file.MAGIC))
    start = checkpoint_file.PREFIX + length
    header = json.loads(data[checkpoint_file.PREFIX : start])
    assert header["format"] == 2 and header["step"] == 120
    assert header["payload_bytes"] == len(data) - start
    body = torch.load(io.BytesIO(data[start:]), weights_only=True)  # plain values only
    assert body["extra"] == {"mlflow_run_id": "abc"} and body["version"] == 2
    assert body["spec"] == asdict(learner.spec)
    saved = checkpoint_file.read(str(path))
    assert saved.step == 120 and saved.extra == {"mlflow_run_id": "abc"}
    assert torch.equal(saved.snapshot["params"][0], learner.params.theta)


def test_the_step_is_read_from_the_header_without_deserializing(monkeypatch):
    data = checkpoint_file.encode(_learner().snapshot())
    (length,) = struct.unpack_from("<I", data, len(checkpoint_file.MAGIC))
    header_only = data[: checkpoint_file.PREFIX + length]

    def no_load(*args, **kwargs):
        raise AssertionError("the header read deserialized the payload")

    monkeypatch.setattr(torch, "load", no_load)
    assert checkpoint_file.read_header(header_only, "x").step == 120
    assert checkpoint_step(header_only) == 120  # the driver's read: the first bytes suffice
    truncated = data[: len(data) - 100]
    assert checkpoint_step(truncated) == 120
    with pytest.raises(checkpoint_file.CheckpointError, match="'x' is truncated"):
        checkpoint_file.check(truncated, "'x'")  # the driver's verification, still no load


def test_every_leaf_is_plain_and_unstorable_leaves_are_named():
    tree = checkpoint.snapshot({"a": (1, torch.float32, torch.device("cpu"))})
    assert tree == {"__dict__": {"a": {"__list__": [1, "torch.float32", "cpu"]}}}
    with pytest.raises(ValueError, match=r"state\.a\[1\]: a set cannot be stored"):
        checkpoint.snapshot({"a": [1, {2}]})
    snap = _learner().snapshot()
    snap["spec"]["settings"]["odd"] = {1, 2}
    with pytest.raises(ValueError, match=r"checkpoint field checkpoint\.spec\.settings\.odd"):
        checkpoint_file.encode(snap)


@pytest.mark.parametrize("headed", [False, True], ids=["bare-pickle", "behind-a-valid-header"])
def test_a_planted_pickle_runs_nowhere(tmp_path, capsys, headed):
    marker = tmp_path / "pwned"
    live = tmp_path / "live"
    # the payload is live: an ordinary unpickler would create its file
    torch.load(io.BytesIO(_saved({"x": Payload(str(live))})), weights_only=False)
    assert live.exists()

    snap = _learner().snapshot()
    snap["last_probe"] = {"p": Payload(str(marker))}
    payload = _saved({**snap, "extra": {}})
    data = _with_header(payload) if headed else payload
    path = tmp_path / "evil.pt"
    path.write_bytes(data)
    refused = "holds pickled objects" if headed else "format version 1, written by an older"

    named = f"{re.escape(str(path))}.*{refused}"
    with pytest.raises(ValueError, match=named):
        checkpoint_file.read(str(path))
    with pytest.raises(ValueError, match=named):
        load_checkpoint(str(path))
    assert main(["run", "--resume", str(path), "--no-mlflow"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and refused in err

    class Host(LearnerHost):
        def device(self):
            return "cpu"

    host = Host(1)
    spec = asdict(_spec(log_every=40))
    if headed:
        assert checkpoint_step(data) == 120  # the driver reads the header only
        started = host.start([(4, spec, data), (5, {**spec, "seed": 5}, None)], 400, 100)
        assert refused in started["refused"][4]
        members = host.advance(0.01)["members"]
        assert members[4]["state"] == "failed" and "trial 4" in members[4]["reason"]
        assert members[5]["state"] in ("running", "done")  # the other member goes on
    else:
        with pytest.raises(ValueError, match=refused):
            checkpoint_step(data)
    assert not marker.exists()


def test_truncated_corrupt_and_foreign_versions_are_named(tmp_path):
    data = checkpoint_file.encode(_learner().snapshot())
    start = checkpoint_file.read_header(data, "x").payload_start
    flipped = bytearray(data)
    flipped[-50] ^= 0xFF
    cases = {
        "truncated.pt": (data[:-10], "is truncated: "),
        "half-header.pt": (data[: checkpoint_file.PREFIX + 3], "truncated inside its header"),
        "flipped.pt": (bytes(flipped), "fails its checksum"),
        "v3.pt": (_with_header(data[start:], format=3), "has format version 3; this rnnsweep"),
        "v1.pt": (_saved({"version": 1, "spec": {}}), "format version 1, written by an older"),
        "text.pt": (b"garbage", "corrupt or not a checkpoint"),
        "header.pt": (_with_header(data[start:], step=7), "its body is at step 120, its head"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(checkpoint_file.CheckpointError) as error:
            checkpoint_file.read(str(path), trial=3)
        assert f"checkpoint {str(path)!r} of trial 3 " in str(error.value), name
        assert message in str(error.value), (name, str(error.value))


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "record.json"
    write_atomic(str(path), b"old")
    with pytest.raises(TypeError):
        write_atomic(str(path), "not bytes")  # type: ignore[arg-type]
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["record.json"]
    write_atomic(str(tmp_path / "sub" / "new.bin"), b"new")
    assert (tmp_path / "sub" / "new.bin").read_bytes() == b"new"
