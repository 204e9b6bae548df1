"""Snapshots of estimator, optimizer and learner states as plain trees, and their restoration.

``snapshot(obj)`` walks an object's attributes (dataclasses and plain classes alike, less
those its class names ``TRANSIENT``) and
returns a tree of dicts, lists, strings, numbers and cloned tensors, nothing else, so that
``torch.load(weights_only=True)`` reads it back (the file format is ``checkpoint_file``'s):
tuples become lists, dtypes and devices their names, generators their uint8 state; any other
leaf is refused with a ``ValueError`` naming its path.
``restore(obj, tree)`` writes such a tree back into a freshly built object of the same
configuration: tensors are copied in place (so views into shared buffers stay views), numbers
are set, and any mismatch (a missing field, another shape, dtype or kind) raises ``ValueError``
naming the path of the field. Cells are recorded by name and checked, not stored: they are
rebuilt from the configuration. Expanded tensors (a stride of 0, e.g. an identity broadcast
over streams) are constants and skipped.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from rnnsweep.algorithms.cell import Cell
from rnnsweep.algorithms.signs import SignStream

_SCALARS = (int, float, bool, str, type(None))


def _stored_fields(obj: Any) -> dict[str, Any]:
    """An object's attributes that a checkpoint holds: not its functions, nor the names its
    class lists in ``TRANSIENT`` (buffers lent to it for a step, e.g. a gradient's destination)."""
    transient = getattr(type(obj), "TRANSIENT", ())
    return {
        key: value
        for key, value in vars(obj).items()
        if (not callable(value) or isinstance(value, Tensor)) and key not in transient
    }


def _is_constant(tensor: Tensor) -> bool:
    return any(
        stride == 0 and size > 1 for stride, size in zip(tensor.stride(), tensor.shape, strict=True)
    )


def snapshot(obj: Any, path: str = "state", shapes: bool = False) -> Any:
    """``obj`` as a tree of plain values and tensors (see the module's docstring); ``shapes``:
    its tensors as ``meta`` tensors of their shape and dtype (a template, copying nothing)."""
    if isinstance(obj, Tensor):
        if _is_constant(obj):
            return {"__const__": True}
        if shapes:
            return torch.empty(obj.shape, dtype=obj.dtype, device="meta")
        return obj.detach().clone()
    if isinstance(obj, _SCALARS):
        return obj
    if isinstance(obj, torch.dtype | torch.device):
        return str(obj)
    if isinstance(obj, Cell):
        return {"__cell__": obj.name, "sizes": [obj.hidden, obj.inputs, obj.num_params]}
    if isinstance(obj, SignStream):
        return {"__signs__": {**obj.state_dict(), "seeds": obj.seeds.clone()}}
    if isinstance(obj, torch.Generator):
        return {"__generator__": obj.get_state()}
    if isinstance(obj, list | tuple):
        return {"__list__": [snapshot(item, f"{path}[{i}]", shapes) for i, item in enumerate(obj)]}
    if isinstance(obj, dict):
        if not all(isinstance(key, str) for key in obj):
            raise ValueError(f"{path}: a checkpoint stores dicts with string keys only")
        return {
            "__dict__": {key: snapshot(v, f"{path}.{key}", shapes) for key, v in obj.items()}
        }
    if hasattr(obj, "__dict__"):
        return {
            "__object__": type(obj).__name__,
            "fields": {
                key: snapshot(value, f"{path}.{key}", shapes)
                for key, value in _stored_fields(obj).items()
            },
        }
    raise ValueError(f"{path}: a {type(obj).__name__} cannot be stored in a checkpoint")


def restore(obj: Any, tree: Any, path: str = "state") -> Any:
    """Write ``tree`` back into ``obj``; returns the restored value (for immutable leaves)."""
    if isinstance(obj, Tensor):
        if isinstance(tree, dict) and tree.get("__const__"):
            return obj
        if not isinstance(tree, Tensor):
            raise ValueError(f"{path}: expected a tensor in the checkpoint")
        if tree.shape != obj.shape or tree.dtype != obj.dtype:
            raise ValueError(
                f"{path}: checkpoint has {tree.dtype} {tuple(tree.shape)}, this run expects "
                f"{obj.dtype} {tuple(obj.shape)}"
            )
        obj.copy_(tree.to(obj.device))
        return obj
    if isinstance(obj, _SCALARS):
        if type(tree) is not type(obj) and not (obj is None or tree is None):
            raise ValueError(
                f"{path}: checkpoint has {tree!r}, this run expects a {type(obj).__name__}"
            )
        return tree
    if isinstance(obj, torch.device):  # a run may continue on another device
        return obj
    if isinstance(obj, torch.dtype):
        if tree != str(obj):
            raise ValueError(f"{path}: checkpoint has {tree!r}, this run {str(obj)!r}")
        return obj
    if isinstance(obj, Cell):
        expected = {"__cell__": obj.name, "sizes": [obj.hidden, obj.inputs, obj.num_params]}
        if tree != expected:
            raise ValueError(f"{path}: checkpoint is for cell {tree}, this run has {expected}")
        return obj
    if isinstance(obj, SignStream):
        if not isinstance(tree, dict) or "__signs__" not in tree:
            raise ValueError(f"{path}: expected a sign stream in the checkpoint")
        obj.load_state_dict(tree["__signs__"])
        return obj
    if isinstance(obj, torch.Generator):
        obj.set_state(tree["__generator__"])
        return obj
    if isinstance(obj, list | tuple):
        items = tree.get("__list__") if isinstance(tree, dict) else None
        if items is None:
            raise ValueError(f"{path}: expected a list in the checkpoint")
        if isinstance(obj, list) and (not obj or len(obj) != len(items)):
            # Variable-length records (e.g. BPTT's recorded inputs) are replaced whole.
            obj[:] = [_rebuild(item, f"{path}[{i}]") for i, item in enumerate(items)]
            return obj
        if len(obj) != len(items):
            raise ValueError(f"{path}: checkpoint has {len(items)} items, expected {len(obj)}")
        restored = [
            restore(o, t, f"{path}[{i}]") for i, (o, t) in enumerate(zip(obj, items, strict=True))
        ]
        if isinstance(obj, list):
            obj[:] = restored
            return obj
        return type(obj)(restored)
    if isinstance(obj, dict):
        fields = tree.get("__dict__") if isinstance(tree, dict) else None
        if fields is None or set(fields) != set(obj):
            raise ValueError(f"{path}: checkpoint keys {sorted(fields or [])} != {sorted(obj)}")
        for key in obj:
            obj[key] = restore(obj[key], fields[key], f"{path}.{key}")
        return obj
    if hasattr(obj, "__dict__"):
        if not isinstance(tree, dict) or tree.get("__object__") != type(obj).__name__:
            found = tree.get("__object__") if isinstance(tree, dict) else type(tree).__name__
            raise ValueError(f"{path}: checkpoint holds a {found}, this run a {type(obj).__name__}")
        fields = tree["fields"]
        own = set(_stored_fields(obj))
        if set(fields) != own:
            raise ValueError(
                f"{path}: checkpoint fields {sorted(fields)} differ from {sorted(own)}"
            )
        for key in own:
            setattr(obj, key, restore(getattr(obj, key), fields[key], f"{path}.{key}"))
        return obj
    raise TypeError(f"{path}: cannot restore an object of type {type(obj).__name__}")


def _rebuild(tree: Any, path: str) -> Any:
    if isinstance(tree, Tensor | _SCALARS):
        return tree.clone() if isinstance(tree, Tensor) else tree
    if isinstance(tree, dict) and "__list__" in tree:
        return [_rebuild(item, f"{path}[{i}]") for i, item in enumerate(tree["__list__"])]
    raise ValueError(f"{path}: cannot rebuild {type(tree).__name__} from the checkpoint")
