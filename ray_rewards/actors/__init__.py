"""Reward nets served by Ray actors: many callers, one net, coalesced forward passes.

:class:`RewardActor` puts one reward net in a Ray actor (on a GPU when the actor
gets one) and serves ``predict_processed`` to any number of concurrent callers:
env runners, evaluation jobs, data pipelines. Requests that arrive close together
are concatenated into one forward pass of at most ``max_batch_size`` rows, waiting
at most ``max_wait_s`` for company, and each caller gets exactly its own rows
back. :class:`RewardActorPool` puts several replicas behind one object and merges
their normalization statistics.

Modules:

- :mod:`~ray_rewards.actors.wire`: what crosses the process boundary (the net as
  saved-format bytes or a path, batches as numpy) and where the net runs.
- :mod:`~ray_rewards.actors.server`: the actor itself: coalescing, failure
  handling, snapshots, statistics (and why it is not Ray Serve).
- :mod:`~ray_rewards.actors.client`: the picklable client handles.

Where it pays: each call is a Ray round trip (about a millisecond), so on a CPU
a small net is faster in the caller's own process; the actor wins when the net
is large or on a GPU (one coalesced pass instead of many small ones), and when
one copy must own the statistics. ``benchmarks/actor_throughput.py`` measures it.
"""

from __future__ import annotations

from ray_rewards.actors.client import PendingRewards, RewardActor, RewardActorPool
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
