"""The placement report of ``results.json``: which cluster nodes ran a job's work."""

from __future__ import annotations

import collections
from collections.abc import Iterable
from typing import Any


def work_placement() -> dict[str, Any]:
    """Which nodes ran this job: the driver, and every task and actor of the job by node.

    ``{"driver_node": id, "nodes": {id: {"address", "head", "resources"}},
    "tasks": {id: {name: count}}, "actors": {id: {class: count}}}``. Tasks and actors
    come from Ray's state API (it needs the dashboard, which ``ray job submit`` has);
    without it ``error`` says why and only the driver and nodes are given.
    """
    import ray

    ctx = ray.get_runtime_context()
    nodes = {
        n["NodeID"]: {
            "address": n["NodeManagerAddress"],
            "head": "node:__internal_head__" in n["Resources"],
            "resources": n["Resources"],
        }
        for n in ray.nodes()
        if n["Alive"]
    }
    out: dict[str, Any] = {"driver_node": ctx.get_node_id(), "nodes": nodes}
    try:
        from ray.util import state

        job = [("job_id", "=", ctx.get_job_id())]
        tasks = state.list_tasks(filters=job, limit=10_000, raise_on_missing_output=False)
        actors = state.list_actors(filters=job, limit=10_000, raise_on_missing_output=False)
    except Exception as err:  # noqa: BLE001 - any failure only costs the report
        out["error"] = f"state API unavailable: {type(err).__name__}: {err}"
        return out
    out["tasks"] = _count_by_node(
        (t.node_id, t.func_or_class_name) for t in tasks if t.type == "NORMAL_TASK"
    )
    out["actors"] = _count_by_node((a.node_id, a.class_name) for a in actors)
    return out


def _count_by_node(pairs: Iterable[tuple[str | None, str]]) -> dict[str, dict[str, int]]:
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for node, name in pairs:
        if node:
            counts[node][name] += 1
    return {node: dict(c) for node, c in counts.items()}
