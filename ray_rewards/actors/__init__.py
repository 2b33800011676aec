"""Reward nets served by Ray actors: many callers, one net, coalesced forward passes.

:class:`RewardActor` puts one reward net in a Ray actor (on a GPU when the actor
gets one) and serves ``predict_processed`` to any number of concurrent callers:
env runners, evaluation jobs, data pipelines. Requests that arrive while a pass
runs are concatenated into the next forward pass of at most ``max_batch_size``
rows (an idle actor starts at once, or waits ``max_wait_s`` for company), and each
caller gets exactly its own rows back. Callers on the actor's node reach it over a
Unix socket; others, through Ray calls. :class:`RewardActorPool` puts several
replicas behind one object and merges their normalization statistics.

Modules:

- :mod:`~ray_rewards.actors.wire`: what crosses the process boundary (the net as
  saved-format bytes or a path, batches as numpy) and where the net runs.
- :mod:`~ray_rewards.actors.batching`: the net thread: coalescing, one pass at a
  time, failures isolated to the request that caused them.
- :mod:`~ray_rewards.actors.channel`: the same-node fast path (socket protocol).
- :mod:`~ray_rewards.actors.server`: the actor itself: restarts, snapshots,
  statistics (and why it is not Ray Serve).
- :mod:`~ray_rewards.actors.client`, :mod:`~ray_rewards.actors.pool`: the
  picklable client handles.

When the actor beats a local net (``benchmarks/actor_throughput.py --rows 256``:
8 callers, each sending 256 transitions and waiting for the answer; "local" is each
caller running its own copy on one torch thread; best of 3 rounds, modes
interleaved, on a 2-core CPU node shared with other jobs; the ranges are separate
runs):

=============================  ===================  ===================
transitions/s                  64-unit net          1024-unit net
=============================  ===================  ===================
local copies                   1.9-2.9M             55-72K
actor, same-node socket        0.75-0.89M (0.26-    51-64K (0.78-0.97;
                               0.40 of local)       0.55 in a run under
                                                    heavy load)
actor, every call through Ray  0.16-0.21M (0.06-    37-50K (0.65-0.73)
                               0.08)
before the socket (Ray calls,  0.16M (0.054)        -
  2 ms window)
=============================  ===================  ===================

On an H200 machine (16 cores: each of the 8 callers has a core of its own; the
same socket path and net thread, timed without Ray, which that machine lacks):
64-unit net: local 11.3M, actor on the GPU 0.82M, actor on 8 CPU threads 0.89M;
1024-unit net: local 0.36M, actor on the GPU 0.89M (2.5x local), actor on 8 CPU
threads 0.21M.

- A small net (tens of thousands of parameters) is fastest in the caller's own
  process: a round trip costs about 0.1 ms of CPU over the socket and 1 ms through
  Ray, more than the forward pass itself (0.1 ms for 256 rows). Serve one only
  when a single copy must own the normalization statistics, or callers must not
  hold the net.
- A big net on CPUs: about on par with local copies, with one copy of the weights
  instead of one per caller. Give the actor the cores its callers leave idle while
  they wait (``num_cpus``: it runs big passes as one part per CPU).
- A GPU: the actor wins once the net is big enough that one GPU pass beats the
  callers' CPU passes (1024 units: 2.5x above), and the callers need no GPU.
- Many callers: coalescing merges their requests; one actor tops out at a few
  thousand requests/s (its Python work per request), then use a pool.
- Callers on other nodes pay a Ray call (about 1 ms) per request: schedule the
  actor on their node, or a replica per node.
- Ray Compiled Graphs were measured and not adopted: 0.40 ms per round trip from
  one driver against 1.0 ms for a Ray call, but a graph holds the actor's single
  ``_ray_system`` execution slot, so an actor serves one graph, i.e. one caller;
  the socket serves every caller on the node in about 0.35 ms per round trip,
  forward pass included.
"""

from __future__ import annotations

from ray_rewards.actors.client import PendingRewards, RewardActor
from ray_rewards.actors.pool import RewardActorPool
from ray_rewards.actors.server import RewardActorError
from ray_rewards.actors.wire import RewardSource, actor_device, load_reward_source, to_wire

__all__ = [
    "PendingRewards",
    "RewardActor",
    "RewardActorError",
    "RewardActorPool",
    "RewardSource",
    "actor_device",
    "load_reward_source",
    "to_wire",
]
