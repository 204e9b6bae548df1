"""Members' rows of a packed state: slice a pack's snapshot into members, stack members back.

A packed population keeps its members' estimator, optimizer and filter states as one batched
state, and a snapshot of it (``checkpoint.snapshot``) has the same tree structure as one
member's. Which axis of a tensor leaf holds the members is found by comparing two *fresh*
templates, one built for the pack and one for a single member: the one axis whose size differs
(e.g. UORO's ``w [B, n, n+1+m]`` with B = pack·b streams against b, Adam's ``m [pack, P]``
against ``[P]``... ``[P]`` has no such axis, so member rows are then taken along a new leading
one). Leaves with equal shapes are shared by all members (e.g. RFLO's feedback matrix) and must
be equal when members are stacked. Scalars are shared counters (equal across members, e.g. the
step) unless the templates differ, as for a filter's count of filters: each side then keeps its
own template's value. Constants (``{"__const__": True}``, an expanded identity) are rebuilt by
whoever restores the tree. A state must allocate its tensors at its start: a leaf that is
``None`` in the fresh templates and a tensor later is refused (its layout is unknown).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

_CONST = "__const__"


def _is_const(leaf: Any) -> bool:
    return isinstance(leaf, dict) and leaf.get(_CONST) is True


def _map(fn: Callable[..., Any], trees: Sequence[Any], path: str) -> Any:
    """Apply ``fn(path, *leaves)`` over trees of the same structure (dicts, lists, leaves)."""
    first = trees[0]
    if isinstance(first, dict) and not _is_const(first):
        for tree in trees:
            if not isinstance(tree, dict) or set(tree) != set(first):
                raise ValueError(f"{path}: members' states differ in structure")
        return {key: _map(fn, [t[key] for t in trees], f"{path}.{key}") for key in first}
    if isinstance(first, list | tuple):
        for tree in trees:
            if not isinstance(tree, list | tuple) or len(tree) != len(first):
                raise ValueError(f"{path}: members' states differ in structure")
        return [_map(fn, [t[i] for t in trees], f"{path}[{i}]") for i in range(len(first))]
    return fn(path, *trees)


def _axis(packed: Tensor, member: Tensor, path: str) -> int | None:
    """The members' axis of ``packed``: ``None`` if shared, ``-1`` for a new leading axis."""
    if packed.shape == member.shape:
        return None
    if packed.dim() == member.dim() + 1 and packed.shape[1:] == member.shape:
        return -1
    differ = [i for i, (a, b) in enumerate(zip(packed.shape, member.shape, strict=False)) if a != b]
    if packed.dim() != member.dim() or len(differ) != 1:
        raise ValueError(
            f"{path}: cannot tell the members' axis of {tuple(packed.shape)} against "
            f"{tuple(member.shape)}"
        )
    return differ[0]


def _check_allocated(path: str, value: Any, packed: Any) -> None:
    if isinstance(value, Tensor) and not isinstance(packed, Tensor):
        raise ValueError(f"{path}: a tensor the fresh state does not have; cannot pack it")


def take(tree: Any, packed_template: Any, member_template: Any, index: int) -> Any:
    """Member ``index``'s tree, cut from a packed ``tree`` (tensors are cloned)."""

    def leaf(path: str, value: Any, packed: Any, member: Any) -> Any:
        if _is_const(value) or _is_const(packed) or _is_const(member):
            return member.clone() if isinstance(member, Tensor) else member
        _check_allocated(path, value, packed)
        if isinstance(value, Tensor):
            axis = _axis(packed, member, path)
            if axis is None:
                return value.clone()
            if axis == -1:
                return value[index].clone()
            width = member.shape[axis]
            return value.narrow(axis, index * width, width).clone()
        return value if packed == member else member

    return _map(leaf, [tree, packed_template, member_template], "state")


def stack(trees: Sequence[Any], packed_template: Any, member_template: Any) -> Any:
    """The packed tree of members' ``trees`` (in order); shared leaves must agree."""

    def leaf(path: str, packed: Any, member: Any, *values: Any) -> Any:
        if _is_const(packed) or any(_is_const(v) for v in values) or _is_const(member):
            return packed
        for value in values:
            _check_allocated(path, value, packed)
        if isinstance(packed, Tensor):
            axis = _axis(packed, member, path)
            if axis == -1:
                return torch.stack(list(values))
            if axis is not None:
                return torch.cat(list(values), dim=axis)
            for i, value in enumerate(values[1:], 1):
                if not torch.equal(value, values[0]):
                    raise ValueError(f"{path}: member {i} differs from member 0 in a shared value")
            return values[0]
        if packed != member:
            return packed
        for i, value in enumerate(values[1:], 1):
            if value != values[0]:
                raise ValueError(
                    f"{path}: member {i} has {value!r}, member 0 {values[0]!r}; members of a "
                    "pack must stand at the same step"
                )
        return values[0]

    return _map(leaf, [packed_template, member_template, *trees], "state")


def zero_rows(tree: Any, packed_template: Any, member_template: Any, indices: Sequence[int]) -> Any:
    """``tree`` with members ``indices``' rows set to zero (in place; returns the tree)."""

    def leaf(path: str, value: Any, packed: Any, member: Any) -> Any:
        if not isinstance(value, Tensor) or _is_const(packed) or _is_const(member):
            return value
        _check_allocated(path, value, packed)
        axis = _axis(packed, member, path)
        if axis is None or not value.is_floating_point():
            return value
        for index in indices:
            if axis == -1:
                value[index].zero_()
            else:
                width = member.shape[axis]
                value.narrow(axis, index * width, width).zero_()
        return value

    return _map(leaf, [tree, packed_template, member_template], "state")
