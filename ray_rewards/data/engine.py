"""Which engine relabels: this process (``"local"``) or Ray Data (``"ray"``).

Ray Data pays a fixed cost on every call (planning, and an actor pool of new
processes that import torch and load the net) and then runs one net copy per
actor, computing with the threads of its ``num_cpus``. With one actor
(``concurrency=1``, the default) it cannot beat one process doing the same work:
the local engine reads, decodes, predicts (``num_cpus`` torch threads too) and
writes in the caller, its reading and writing overlapped in threads. Ray Data buys
something only when it spreads the work: several actors, GPUs, or several nodes.

The automatic rule (:func:`choose_engine`), in order:

1. ``num_gpus > 0`` or ``concurrency > 1``: ``"ray"`` (asked for what only Ray Data
   gives).
2. No Ray cluster connected: ``"local"`` (and Ray is not even imported).
3. This process's node offers no CPUs to tasks (a cluster's head kept for
   coordination): ``"ray"``, so the work runs where the cluster wants it.
4. A single node: ``"local"``, at any size.
5. Several nodes: ``"ray"`` when every node can read the input (a URI, or an
   existing Ray Dataset) and it holds at least :data:`LOCAL_MAX_ROWS` rows (or an
   unknown number); else ``"local"`` (a local path may exist on this node only).

Measured with ``benchmarks/relabel_dataset_throughput.py`` (2-core box shared with
other jobs, Pendulum rows in 16 files, tensor columns, net (64, 64), batch 4096,
one torch thread), ``ray-rewards relabel`` as whole processes, best wall clock:

=========  ==========  ==========  ========  =================
rows       plain loop  local       ray       local vs ray
=========  ==========  ==========  ========  =================
1M         2.9 s       3.0 s       16.3 s    5.4x faster
20M        21.1 s      13.0 s      33.6 s    2.6x faster
=========  ==========  ==========  ========  =================

Once Ray runs, Ray Data's fixed cost per call is about 6-7 s (actor pool start and
planning; a whole process adds about 9 s of Ray's own start and stop) and its one
actor then relabels about 1.0M rows/s; the local engine relabels 1.3M (1M rows)
to 1.9M (20M rows) rows/s. Below fixed cost x local rate, 8M to 12M rows, even an
infinitely fast cluster would finish after the local engine: hence
:data:`LOCAL_MAX_ROWS`, the smallest input where Ray Data can win at all.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Literal

Engine = Literal["auto", "local", "ray"]
ENGINES: tuple[str, ...] = ("auto", "local", "ray")

LOCAL_MAX_ROWS = 10_000_000
"""Rows below which the local engine wins even against a cluster (see the module
docstring): Ray Data's fixed cost per call times the local engine's rows/s."""


@dataclass(frozen=True)
class Cluster:
    """The Ray cluster this process is connected to, as the rule needs it.

    Attributes:
        nodes: alive nodes.
        driver_cpus: CPUs this process's node offers to tasks (0 on a head node kept
            for coordination).
    """

    nodes: int
    driver_cpus: float


def connected_cluster() -> Cluster | None:
    """The Ray cluster this process is connected to; None when it is connected to none
    (Ray is not imported then, and this does not import it).
    """
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    here = ray.get_runtime_context().get_node_id()
    alive = [node for node in ray.nodes() if node.get("Alive")]
    cpus = next(
        ((n.get("Resources") or {}).get("CPU", 0.0) for n in alive if n.get("NodeID") == here),
        0.0,
    )
    return Cluster(nodes=len(alive), driver_cpus=float(cpus))


def choose_engine(
    engine: str,
    *,
    rows: int | None,
    shared_input: bool,
    concurrency: int = 1,
    num_gpus: float = 0,
    cluster: Cluster | None = None,
) -> str:
    """``"local"`` or ``"ray"`` for ``engine`` (``"auto"`` applies the module's rule).

    Args:
        engine: ``"auto"``, ``"local"`` or ``"ray"`` (the last two are returned as is).
        rows: the input's rows, if known without reading it (needed only with a
            cluster of several nodes).
        shared_input: whether every node can read the input (a URI, a Ray Dataset).
        concurrency: Ray Data actors asked for.
        num_gpus: GPUs per actor asked for.
        cluster: :func:`connected_cluster`.

    Raises:
        ValueError: an unknown ``engine``.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine: expected one of {list(ENGINES)}, got {engine!r}")
    if engine != "auto":
        return engine
    if num_gpus > 0 or concurrency > 1:
        return "ray"
    if cluster is None:
        return "local"
    if cluster.driver_cpus <= 0:
        return "ray"
    if cluster.nodes <= 1 or not shared_input:
        return "local"
    return "ray" if rows is None or rows >= LOCAL_MAX_ROWS else "local"


__all__ = ["ENGINES", "LOCAL_MAX_ROWS", "Cluster", "Engine", "choose_engine", "connected_cluster"]
