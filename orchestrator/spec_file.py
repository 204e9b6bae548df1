"""Reading a sweep file safely, before anything heavy is imported.

A hostile or broken file cannot make loading expensive:
- a file over ``MAX_BYTES`` (1 MB) is refused before it is read;
- YAML is read with a ``SafeLoader`` (plain types only, never Python objects), YAML 1.2 floats
  (``1e-3`` is a float, not a string) and duplicate keys refused;
- aliases (``*name``) are limited: at most ``MAX_ALIASES`` of them, and the document's size
  with every alias expanded (counted as a copy of the node it names) at most ``MAX_NODES``
  nodes, checked on the composed node graph before any Python object is built. A "billion
  laughs" file (nine levels of nine aliases: 9^9 nodes) thus stops after composing ~100 nodes.
  A recursive alias (a node that contains itself) is refused too.

Every problem raises ``SpecError`` (a ``ValueError``: the CLI exits 2) naming the file.
"""

from __future__ import annotations

import os
import re
import stat
from typing import Any

import yaml

MAX_BYTES = 1_000_000
MAX_ALIASES = 100
MAX_NODES = 100_000


class SpecError(ValueError):
    """An invalid sweep specification; ``key`` is the key path at fault (if one is)."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-3`` as a float (YAML 1.2), refuses duplicate keys and limits
    aliases (``MAX_ALIASES``, ``MAX_NODES`` expanded)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.aliases = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                event = self.peek_event()
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"more than {MAX_ALIASES} aliases: refused (alias expansion limit)",
                    event.start_mark,
                )
        return super().compose_node(parent, index)

    def get_single_node(self) -> yaml.Node | None:
        node = super().get_single_node()
        if node is not None:
            _check_expansion(node)
        return node

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:
                continue  # an unhashable key: the base constructor reports it
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a node graph whose tree (aliases expanded) has more than ``MAX_NODES`` nodes,
    or that contains itself. Iterative, memoised by node: linear in the composed nodes."""
    size: dict[int, int] = {}
    open_: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, closing = stack.pop()
        key = id(node)
        if closing:
            open_.discard(key)
            size[key] = 1 + sum(size[id(child)] for child in _children(node))
            if size[key] > MAX_NODES:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"aliases expand to more than {MAX_NODES} nodes: refused (alias expansion "
                    "limit)",
                    node.start_mark,
                )
            continue
        if key in size:
            continue
        if key in open_:
            raise yaml.composer.ComposerError(
                None, None, "recursive alias: a node contains itself", node.start_mark
            )
        open_.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in size)


def read_yaml(path: str, what: str = "sweep file") -> Any:
    """The YAML document in file ``path`` (any value), read within the limits above;
    ``SpecError`` naming the file (and ``what`` it is) otherwise."""
    try:
        if os.path.exists(path) and not os.path.isdir(path):
            if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO or a device would block
                raise SpecError(f"{path}: the {what} is not a regular file")
        size = os.path.getsize(path)
        if size > MAX_BYTES:
            raise SpecError(
                f"{path}: the {what} has {size} bytes, more than the limit of {MAX_BYTES} "
                "(1 MB): refused"
            )
        with open(path, encoding="utf-8") as handle:
            text = handle.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise SpecError(f"{path}: {what} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise SpecError(f"{path}: cannot read the {what}: {error}") from None
    if len(text.encode("utf-8")) > MAX_BYTES:  # it grew since it was measured
        raise SpecError(f"{path}: the {what} is larger than {MAX_BYTES} bytes (1 MB): refused")
    try:
        loader = _Loader(text)  # its reader refuses characters YAML does not allow (e.g. NUL)
    except yaml.YAMLError as error:
        where = " ".join(str(error).replace('"<unicode string>"', "the file").split())
        raise SpecError(f"{path}: not valid YAML: {where}") from None
    loader.name = path  # marks in messages name the file, not "<unicode string>"
    try:
        return loader.get_single_data()
    except yaml.YAMLError as error:
        raise SpecError(f"{path}: not valid YAML: {error}") from None
    except RecursionError:
        raise SpecError(f"{path}: not valid YAML: nested too deeply") from None
    finally:
        loader.dispose()


def read_spec_file(path: str) -> dict[str, Any]:
    """The mapping in sweep file ``path``; ``SpecError`` naming the file otherwise."""
    data = read_yaml(path)
    if not isinstance(data, dict):
        kind = "an empty file" if data is None else f"a {type(data).__name__}"
        raise SpecError(f"{path}: a sweep file must be a YAML mapping, got {kind}")
    return data
