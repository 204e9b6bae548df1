"""Whether the Ray cluster can host a trial: its demand (``resources.cpus``/``gpus`` of the
spec) against each node, not the cluster's total, since one actor runs on one node.

``check(resources)`` runs once Ray is up and before anything is created: when no live node
and no node type of the cluster's autoscaler (``ray up``'s ``available_node_types``, which
``ray`` keeps in its cluster config) offers the demand, it raises ``ValueError`` naming the
resource, what each node has and how to fix it; without that check the actors would wait for
ever, silently. ``waiting(resources)`` says, during a sweep, whether the live nodes can host
a trial now (a node that offered it may have left), for the progress output's "waiting for
resources" line. ``capacity(resources)`` says how many actors the live nodes can hold at once
(the scheduler never creates more: an actor beyond it would wait for ever, silently) and which
nodes those are, so that a lost or added node resizes the pool.
"""

from __future__ import annotations

import math
from typing import Any

# spec key -> Ray resource name
_NAMES = {"cpus": "CPU", "gpus": "GPU"}


def demand(resources: Any) -> dict[str, float]:
    """What one actor asks of its node, by Ray resource name (zero amounts left out)."""
    wanted = {ray_name: float(getattr(resources, key)) for key, ray_name in _NAMES.items()}
    return {name: amount for name, amount in wanted.items() if amount > 0}


def _fits(offer: dict[str, float], wanted: dict[str, float]) -> bool:
    return all(offer.get(name, 0.0) >= amount for name, amount in wanted.items())


def live_nodes() -> list[tuple[str, dict[str, float]]]:
    """``(address, total resources)`` of every live node."""
    import ray

    return [
        (node.get("NodeManagerAddress", "?"), dict(node.get("Resources", {})))
        for node in ray.nodes()
        if node.get("Alive")
    ]


def capacity(resources: Any) -> tuple[int | None, set[str]]:
    """``(actors, node ids)``: how many actors the live nodes can hold (Σ over nodes of
    min over resources of ⌊total / demand⌋), ``None`` when unbounded (nothing demanded, or an
    autoscaler may add nodes for waiting actors), and the live nodes' ids."""
    import ray

    wanted = demand(resources)
    alive = [node for node in ray.nodes() if node.get("Alive")]
    ids = {str(node.get("NodeID", "")) for node in alive}
    if not wanted or _node_types():
        return None, ids
    total = 0
    for node in alive:
        offer = node.get("Resources", {})
        total += min(math.floor(offer.get(key, 0.0) / need + 1e-9) for key, need in wanted.items())
    return total, ids


def _node_types() -> list[tuple[str, dict[str, float]]]:
    """``(name, resources)`` of the autoscaler's node types that may be launched; none when
    the cluster does not autoscale (or its config cannot be read)."""
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:  # noqa: BLE001 - a private API: absent means "no autoscaler known"
        return []
    if config is None:
        return []
    return [
        (group.name, dict(group.resources))
        for group in config.node_group_configs
        if group.max_count != 0
    ]


def _amounts(wanted: dict[str, float], offer: dict[str, float]) -> str:
    return ", ".join(f"{offer.get(name, 0.0):g} {name}" for name in wanted)


def _ask(wanted: dict[str, float]) -> str:
    return ", ".join(f"{amount:g} {name}" for name, amount in wanted.items())


def check(resources: Any) -> None:
    """``ValueError`` (one line) when no node, live or launchable, can host one trial."""
    wanted = demand(resources)
    nodes = live_nodes()
    if any(_fits(offer, wanted) for _, offer in nodes):
        return
    if any(_fits(offer, wanted) for _, offer in _node_types()):
        return  # the autoscaler adds such a node once the actors ask for it
    short = [
        key
        for key, name in _NAMES.items()
        if name in wanted and not any(offer.get(name, 0.0) >= wanted[name] for _, offer in nodes)
    ] or list(wanted)
    have = "; ".join(f"{address}: {_amounts(wanted, offer)}" for address, offer in nodes)
    keys = " and ".join(f"resources.{key}" for key in short)
    raise ValueError(
        f"{keys}: a trial needs {_ask(wanted)} on one node, but no node of the Ray cluster "
        f"has that (nodes: {have or 'none'}); lower {keys} in the spec, or add a node "
        "that has it (see cluster.yaml)"
    )


def waiting(resources: Any) -> str:
    """Empty when a live node can host a trial; else what a trial needs and what the nodes
    have, for the "waiting for resources" line."""
    wanted = demand(resources)
    nodes = live_nodes()
    if any(_fits(offer, wanted) for _, offer in nodes):
        return ""
    have = "; ".join(f"{address}: {_amounts(wanted, offer)}" for address, offer in nodes)
    return f"each needs {_ask(wanted)} on one node; live nodes: {have or 'none'}"
