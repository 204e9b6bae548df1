"""The checkpoint file: a versioned structure of tensors and plain values, never pickled objects.

Layout (format version 2; all integers little-endian)::

    bytes 0..9     MAGIC  b"\\x93RNNSWEEP\\n"
    bytes 10..13   N      uint32, the length of the header (at most 64 KiB)
    next N bytes   header UTF-8 JSON {"format": 2, "step": t, "payload_bytes": L,
                                      "sha256": hex digest of the payload}
    next L bytes   payload, ``torch.save`` of the body below

The header is read without touching the payload (``read_header``): the sweep driver packs
trials by their ``step`` from it, and ``check`` verifies the payload's length and checksum
without deserializing it, so that a truncated or corrupt file is named before any actor sees
it. The payload is read only with ``torch.load(weights_only=True)``: a file holding pickled
objects (anything but the types below) is refused and nothing in it runs.

The body is one learner's state (``Learner.snapshot()``, which a packed member's snapshot
equals) plus ``extra``; its leaves are ``dict`` (string keys), ``list``, ``str``, ``int``,
``float``, ``bool``, ``None`` and ``torch.Tensor`` only (``encode`` refuses anything else,
naming the field's path)::

    version     int, = header format
    spec        the LearnerSpec as plain values: task, estimator, cell, hidden, seed, dtype,
                device, settings {name: value}
    params      [theta [P], readout [o, n+1]]
    opt_state   the optimizer's state as a tree (``checkpoint.snapshot``), or None
    filter      the Kalman filter's state as a tree, or None
    estimator   the estimator's state as a tree (trajectory, influence, sign streams...)
    stream      the task position: {task, settings, batch, seed, step, offset,
                generator (the RNG state, a uint8 tensor), x, y (buffered inputs), extra}
    probe       the probe's ring buffers and counters, or None
    counters    {t, updates, pending, planned, tail_steps, diverged, reason, elapsed}
    sums        float64 [3]: window loss, tail loss, gradient norm
    grad_acc    [theta, readout] gradients accumulated since the last update
    last_probe  the probe windows' statistics {name: number} (``population.add_window``)
    extra       {name: plain value}, e.g. {"mlflow_run_id": ...} of ``rnnsweep run``

Trees (``checkpoint.snapshot``) mark their nodes with string keys: ``{"__object__": class
name, "fields": {...}}``, ``{"__list__": [...]}``, ``{"__dict__": {...}}``,
``{"__generator__": uint8 RNG state}``, ``{"__signs__": {...}}``, ``{"__cell__": name,
"sizes": [...]}`` (checked, rebuilt from the spec), ``{"__const__": True}`` (an expanded
constant, rebuilt). Format 1 (a plain pickle of the snapshot, before this layout) is refused:
it was written by an older rnnsweep.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import re
import struct
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from rnnsweep.algorithms.atomic_file import write_atomic

FORMAT = 2
MAGIC = b"\x93RNNSWEEP\n"
_LENGTH = struct.Struct("<I")
HEADER_LIMIT = 64 * 1024
PREFIX = len(MAGIC) + _LENGTH.size  # bytes before the header's JSON
_ZIP = b"PK\x03\x04"  # torch.save's own format: what format 1 files start with
_BODY_KEYS = (
    "version",
    "spec",
    "params",
    "opt_state",
    "filter",
    "estimator",
    "stream",
    "probe",
    "counters",
    "sums",
    "grad_acc",
    "last_probe",
    "extra",
)
_PLAIN = (str, int, float, bool, type(None))


class CheckpointError(ValueError):
    """A refused checkpoint; the message names the file (and trial) and what is wrong."""


@dataclass(frozen=True)
class Header:
    format: int
    step: int
    payload_bytes: int
    sha256: str
    json_bytes: int  # the header's own length

    @property
    def payload_start(self) -> int:
        return PREFIX + self.json_bytes


@dataclass(frozen=True)
class Checkpoint:
    """A read checkpoint: its step, one learner's snapshot and the writer's ``extra``."""

    step: int
    snapshot: dict[str, Any]
    extra: dict[str, Any]


def describe(path: str, trial: int | None = None) -> str:
    """How messages name a checkpoint: ``'DIR/trial-3.pt' of trial 3``."""
    return f"{path!r}" + (f" of trial {trial}" if trial is not None else "")


def _plain(value: Any, path: str) -> None:
    """Refuse anything ``torch.load(weights_only=True)`` would not read back as it was."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"checkpoint field {path}: key {key!r} is not a string")
            _plain(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _plain(item, f"{path}[{i}]")
    elif type(value) is Tensor or isinstance(value, torch.nn.Parameter):
        if value.layout != torch.strided:
            raise ValueError(f"checkpoint field {path}: a {value.layout} tensor is not stored")
    elif type(value) not in _PLAIN:
        raise ValueError(
            f"checkpoint field {path}: a {type(value).__name__} is not a tensor or plain value "
            "(dict, list, str, int, float, bool, None)"
        )


def encode(snapshot: dict[str, Any], extra: dict[str, Any] | None = None) -> bytes:
    """The file's bytes for one learner's ``snapshot`` and ``extra``; bad leaves are named."""
    body = {**snapshot, "extra": dict(extra or {})}
    missing = [key for key in _BODY_KEYS if key not in body]
    if missing:
        raise ValueError(f"a learner snapshot needs {', '.join(missing)}")
    _plain(body, "checkpoint")
    buffer = io.BytesIO()
    torch.save(body, buffer)
    payload = buffer.getvalue()
    header = json.dumps(
        {
            "format": FORMAT,
            "step": int(snapshot["counters"]["t"]),
            "payload_bytes": len(payload),
            "sha256": hashlib.sha256(payload).hexdigest(),
        }
    ).encode()
    return MAGIC + _LENGTH.pack(len(header)) + header + payload


def read_header(data: bytes, source: str) -> Header:
    """The header from the first bytes of a checkpoint (``data`` may stop after it): format
    and step, without reading the payload. ``source`` names the file in messages."""
    if not data.startswith(MAGIC):
        if data.startswith(_ZIP):
            raise CheckpointError(
                f"checkpoint {source} has format version 1, written by an older rnnsweep; "
                f"this version reads format {FORMAT} only (start the run again)"
            )
        what = "is empty" if not data else "has no rnnsweep checkpoint header"
        raise CheckpointError(f"checkpoint {source} is corrupt or not a checkpoint: it {what}")
    if len(data) < PREFIX:
        raise CheckpointError(f"checkpoint {source} is truncated inside its header")
    (length,) = _LENGTH.unpack_from(data, len(MAGIC))
    if length > HEADER_LIMIT:
        raise CheckpointError(
            f"checkpoint {source} is corrupt: its header claims {length} bytes "
            f"(at most {HEADER_LIMIT})"
        )
    if len(data) < PREFIX + length:
        raise CheckpointError(f"checkpoint {source} is truncated inside its header")
    try:
        fields = json.loads(data[PREFIX : PREFIX + length].decode())
        version = fields["format"]
    except (UnicodeDecodeError, json.JSONDecodeError, TypeError, KeyError) as error:
        raise CheckpointError(f"checkpoint {source} has a corrupt header: {error}") from None
    if version != FORMAT:
        older = isinstance(version, int) and version < FORMAT
        raise CheckpointError(
            f"checkpoint {source} has format version {version!r}"
            + (", written by an older rnnsweep" if older else "")
            + f"; this rnnsweep reads format {FORMAT} only"
        )
    try:
        header = Header(
            int(fields["format"]),
            int(fields["step"]),
            int(fields["payload_bytes"]),
            str(fields["sha256"]),
            length,
        )
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"checkpoint {source} has a corrupt header: {error!r}") from None
    if header.step < 0 or header.payload_bytes < 0:
        raise CheckpointError(f"checkpoint {source} has a corrupt header: {fields}")
    return header


def check(data: bytes, source: str) -> Header:
    """The header, once the payload's length and SHA-256 match it (nothing deserialized)."""
    header = read_header(data, source)
    payload = memoryview(data)[header.payload_start :]
    if len(payload) < header.payload_bytes:
        raise CheckpointError(
            f"checkpoint {source} is truncated: {len(payload)} of {header.payload_bytes} "
            "payload bytes"
        )
    if len(payload) > header.payload_bytes:
        raise CheckpointError(
            f"checkpoint {source} is corrupt: {len(payload) - header.payload_bytes} bytes "
            "after its payload"
        )
    if hashlib.sha256(payload).hexdigest() != header.sha256:
        raise CheckpointError(f"checkpoint {source} is corrupt: its payload fails its checksum")
    return header


def decode(data: bytes, source: str) -> Checkpoint:
    """A checkpoint from its bytes, loaded with ``torch.load(weights_only=True)`` only."""
    header = check(data, source)
    payload = io.BytesIO(memoryview(data)[header.payload_start :])
    try:
        body = torch.load(payload, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.findall(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
        what = f" ({', '.join(sorted(set(found)))})" if found else ""
        raise CheckpointError(
            f"checkpoint {source} holds pickled objects{what}, not only tensors and plain "
            "values: refused, nothing in it was run"
        ) from None
    except Exception as error:  # noqa: BLE001 - any other failure means a corrupt payload
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"checkpoint {source} is corrupt: {first}") from None
    if not isinstance(body, dict):
        raise CheckpointError(f"checkpoint {source} is corrupt: its body is not a mapping")
    missing = [key for key in _BODY_KEYS if key not in body]
    if missing:
        raise CheckpointError(
            f"checkpoint {source} is not a learner checkpoint: it lacks {', '.join(missing)}"
        )
    counters, extra = body["counters"], body["extra"]
    if not isinstance(body["spec"], dict) or not isinstance(extra, dict):
        raise CheckpointError(f"checkpoint {source} is corrupt: spec or extra is not a mapping")
    if body["version"] != header.format:
        raise CheckpointError(
            f"checkpoint {source} is corrupt: its body has version {body['version']!r}, "
            f"its header {header.format}"
        )
    if not isinstance(counters, dict) or counters.get("t") != header.step:
        step = counters.get("t") if isinstance(counters, dict) else None
        raise CheckpointError(
            f"checkpoint {source} is corrupt: its body is at step {step!r}, "
            f"its header at {header.step}"
        )
    snapshot = {key: value for key, value in body.items() if key != "extra"}
    return Checkpoint(header.step, snapshot, extra)


def write(path: str, snapshot: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
    """Write one learner's ``snapshot`` (and ``extra``) to ``path`` atomically."""
    write_atomic(path, encode(snapshot, extra))


def read(path: str, trial: int | None = None) -> Checkpoint:
    """The checkpoint in ``path``; ``CheckpointError`` naming the file (and trial) if refused."""
    source = describe(path, trial)
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {source} does not exist") from None
    except OSError as error:
        raise CheckpointError(f"checkpoint {source} is unreadable: {error.strerror}") from None
    return decode(data, source)
