"""Client handles of served reward nets: one actor (:class:`RewardActor`) or a pool.

For callers (env runners, tasks): ``predict_processed(obs, actions, next_obs,
dones, **kwargs)`` takes numpy batches and returns numpy rewards of shape
``(B,)``; ``submit`` does the same without blocking and returns
:class:`PendingRewards`, which checks that the answer carries its own request id
and row count. A client is picklable and, when called, a ``RewardFn`` (frozen
statistics). :class:`RewardActorPool` puts several replicas behind one object and
merges their normalization statistics.
"""

from __future__ import annotations

import itertools
import os
import uuid
from typing import Any

import numpy as np
import ray
import torch as th

from ray_rewards import networks, storage
from ray_rewards.actors.server import RemoteRewardServer, RewardActorError
from ray_rewards.actors.wire import RewardSource, batch_rows, load_reward_source, to_wire
from ray_rewards.stats import Moments


class PendingRewards:
    """A submitted request: ``result()`` waits for the rewards and checks they are ours.

    ``ref`` is the Ray object ref (for ``ray.wait`` over many pending requests).
    """

    def __init__(self, ref: ray.ObjectRef, request_id: str, rows: int):
        self.ref = ref
        self.request_id = request_id
        self.rows = rows

    def result(self, timeout: float | None = None) -> np.ndarray:
        """Rewards of shape ``(rows,)``.

        Raises:
            RewardActorError: the actor died past its restarts/retries, or answered with
                another request's id or a wrong row count.
            ValueError: the net refused the input (shape, NaN, ...).
        """
        try:
            request_id, rewards = ray.get(self.ref, timeout=timeout)
        except ray.exceptions.RayActorError as err:
            raise RewardActorError(
                f"request {self.request_id} ({self.rows} rows) was not answered: the reward "
                "actor died and its restarts or task retries are exhausted"
            ) from err
        if request_id != self.request_id:
            raise RewardActorError(
                f"request {self.request_id}: the actor answered request {request_id} instead"
            )
        if not isinstance(rewards, np.ndarray) or rewards.shape != (self.rows,):
            raise RewardActorError(
                f"request {self.request_id}: expected rewards of shape ({self.rows},), got "
                f"{getattr(rewards, 'shape', type(rewards).__name__)}"
            )
        return rewards


def _as_batch(x: Any) -> np.ndarray | None:
    if x is None:
        return None
    if isinstance(x, th.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


class _RewardClient:
    """Blocking calls for served rewards, on top of a subclass's ``submit(obs, actions,
    next_obs, dones, **kwargs) -> PendingRewards``.
    """

    def predict_processed(
        self,
        obs: Any,
        actions: Any,
        next_obs: Any | None = None,
        dones: Any | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """Processed rewards of shape ``(B,)`` for numpy ``obs``, ``actions``,
        ``next_obs``, ``dones`` (the net's ``predict_processed``, served).
        """
        return self.submit(obs, actions, next_obs, dones, **kwargs).result()

    def __call__(
        self, obs: Any, actions: Any, next_obs: Any | None, dones: Any | None
    ) -> np.ndarray:
        """A ``RewardFn``: frozen-statistics rewards, for RewardVecEnvWrapper and friends."""
        return self.predict_processed(obs, actions, next_obs, dones)


class RewardActor(_RewardClient):
    """Client of one reward net served by a Ray actor (see :mod:`ray_rewards.actors`).

    Picklable: hand it to env runners or tasks and they call the same actor.

    Args:
        reward: a RewardNet (shipped as bytes of the saved format), a path saved by
            ray_rewards (loaded by the actor, so it must be readable where the actor
            runs), or the bytes of such a file.
        num_gpus: GPUs for the actor; the net runs on CUDA when it gets one.
        num_cpus: CPUs reserved for the actor.
        max_batch_size: most rows in one coalesced forward pass (a single larger
            request still runs, alone).
        max_wait_s: longest an idle actor waits for more requests to join a pass.
        coalesce: False serves each request in its own forward pass (a baseline).
        snapshot_path: where snapshots go (shared storage on a multi-node cluster);
            a restarted actor restores the net and statistics from it.
        snapshot_interval_s: snapshot this often when statistics changed.
        max_restarts: how often Ray restarts a dead actor (-1: always).
        max_task_retries: how often an in-flight call is re-sent after a restart
            (-1: until the actor is out of restarts).
        name: optional Ray actor name.
        **actor_options: more ``ray.remote`` options (e.g. ``scheduling_strategy``).
    """

    def __init__(
        self,
        reward: RewardSource,
        *,
        num_gpus: float = 0,
        num_cpus: float = 1,
        max_batch_size: int = 4096,
        max_wait_s: float = 0.002,
        coalesce: bool = True,
        snapshot_path: str | os.PathLike | None = None,
        snapshot_interval_s: float | None = None,
        max_restarts: int = 3,
        max_task_retries: int = -1,
        name: str | None = None,
        **actor_options: Any,
    ):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size: expected >= 1, got {max_batch_size}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s: expected >= 0, got {max_wait_s}")
        if snapshot_interval_s is not None and snapshot_interval_s <= 0:
            raise ValueError(f"snapshot_interval_s: expected > 0, got {snapshot_interval_s}")
        if snapshot_interval_s is not None and snapshot_path is None:
            raise ValueError("snapshot_interval_s needs a snapshot_path")
        snapshot = None if snapshot_path is None else storage.absolute(snapshot_path)
        options = dict(
            num_gpus=num_gpus,
            num_cpus=num_cpus,
            max_restarts=max_restarts,
            max_task_retries=max_task_retries,
            **actor_options,
        )
        if name is not None:
            options["name"] = name
        wire = to_wire(reward)
        if isinstance(wire, str):
            # Fail here, naming the file, rather than in the actor's constructor, where a
            # missing or unsafe file would surface as "actor died" at the first request.
            load_reward_source(wire, "cpu")
        if isinstance(wire, bytes):
            # The net's bytes go to the object store once, and this client keeps them
            # alive: Ray re-runs the constructor on a restart and does not pin large
            # constructor arguments itself (ray-project/ray#53727). Nested in a list so
            # the actor fetches them itself, only when it has no snapshot to load.
            self._source_ref = ray.put(wire)
            source: Any = [self._source_ref]
        else:
            source = wire
        self.handle = RemoteRewardServer.options(**options).remote(
            source, snapshot, max_batch_size, max_wait_s, coalesce, snapshot_interval_s
        )

    def submit(
        self,
        obs: Any,
        actions: Any,
        next_obs: Any | None = None,
        dones: Any | None = None,
        **kwargs: Any,
    ) -> PendingRewards:
        """Send a batch of ``B`` transitions without waiting; kwargs go to the net's
        ``predict_processed`` (``update_stats`` defaults to False).
        """
        arrays = [_as_batch(x) for x in (obs, actions, next_obs, dones)]
        rows = batch_rows(*arrays)
        request_id = uuid.uuid4().hex
        ref = self.handle.predict_processed.remote(request_id, *arrays, kwargs)
        return PendingRewards(ref, request_id, rows)

    def norm_moments(self) -> dict[str, Moments]:
        """The served net's normalization statistics, by layer name."""
        return ray.get(self.handle.norm_moments.remote())

    def set_norm_moments(self, moments: dict[str, Moments]) -> None:
        """Replace the served net's statistics (RunningNorm layers)."""
        ray.get(self.handle.set_norm_moments.remote(moments))

    def save(self, path: str | os.PathLike) -> str:
        """Save the served net with its statistics to ``path`` (atomic, written by the
        actor: the path must be writable where it runs).
        """
        return ray.get(self.handle.save.remote(storage.absolute(path)))

    def snapshot(self) -> str:
        """Snapshot now; returns the snapshot path."""
        return ray.get(self.handle.snapshot.remote())

    def serving_stats(self) -> dict[str, Any]:
        """Counters of the current incarnation (see ``_RewardServer.serving_stats``)."""
        return ray.get(self.handle.serving_stats.remote())


class RewardActorPool(_RewardClient):
    """Several :class:`RewardActor` replicas of one net behind one object.

    Requests go round-robin to the replicas (each coalesces its own). When the
    replicas update normalization statistics, :meth:`sync_norm_stats` merges them:
    each replica reports what it added since the last sync, the pool merges those
    into the common base (exact :class:`Moments` merges) and every replica adopts
    the result, keeping whatever arrived in between. :meth:`save` and
    :meth:`norm_moments` sync first. Run syncs from one place (one driver or
    learner); a replica restarted from its snapshot rejoins at the next sync.

    Args:
        reward: as for :class:`RewardActor` (serialized once for all replicas).
        num_replicas: how many actors.
        snapshot_dir: replica ``i`` snapshots to ``snapshot_dir/replica-i.pt``.
        **actor_kwargs: passed to each :class:`RewardActor`.
    """

    def __init__(
        self,
        reward: RewardSource,
        num_replicas: int = 2,
        *,
        snapshot_dir: str | os.PathLike | None = None,
        **actor_kwargs: Any,
    ):
        if num_replicas < 1:
            raise ValueError(f"num_replicas: expected >= 1, got {num_replicas}")
        if "snapshot_path" in actor_kwargs:
            raise ValueError("RewardActorPool: use snapshot_dir, not snapshot_path")
        wire = to_wire(reward)
        if snapshot_dir is not None:
            os.makedirs(snapshot_dir, exist_ok=True)
        self.replicas: list[RewardActor] = [
            RewardActor(
                wire,
                snapshot_path=None
                if snapshot_dir is None
                else os.path.join(snapshot_dir, f"replica-{i}.pt"),
                **actor_kwargs,
            )
            for i in range(num_replicas)
        ]
        self._turn = itertools.count()

    def submit(
        self,
        obs: Any,
        actions: Any,
        next_obs: Any | None = None,
        dones: Any | None = None,
        **kwargs: Any,
    ) -> PendingRewards:
        """As :meth:`RewardActor.submit`, on the next replica in turn."""
        replica = self.replicas[next(self._turn) % len(self.replicas)]
        return replica.submit(obs, actions, next_obs, dones, **kwargs)

    def sync_norm_stats(self) -> dict[str, Moments]:
        """Merge every replica's statistics into one and give it to all; returns it."""
        pulled = ray.get([r.handle.pull_norm_updates.remote() for r in self.replicas])
        base = pulled[0][0]
        merged = networks.merge_norm_reports(base, [added for _, added in pulled])
        ray.get([r.handle.push_norm_base.remote(merged) for r in self.replicas])
        return merged

    def norm_moments(self) -> dict[str, Moments]:
        """The merged statistics (syncs first)."""
        return self.sync_norm_stats()

    def set_norm_moments(self, moments: dict[str, Moments]) -> None:
        """Give every replica these statistics."""
        ray.get([r.handle.set_norm_moments.remote(moments) for r in self.replicas])

    def save(self, path: str | os.PathLike) -> str:
        """Sync, then save the net with the merged statistics (atomic)."""
        self.sync_norm_stats()
        return self.replicas[0].save(path)

    def snapshot(self) -> list[str]:
        """Snapshot every replica."""
        return ray.get([r.handle.snapshot.remote() for r in self.replicas])

    def serving_stats(self) -> list[dict[str, Any]]:
        """Each replica's counters."""
        return ray.get([r.handle.serving_stats.remote() for r in self.replicas])


__all__ = ["PendingRewards", "RewardActor", "RewardActorPool"]
