"""Several replicas of one served net behind one object, their statistics merged."""

from __future__ import annotations

import itertools
import os
from typing import Any

import ray

from ray_rewards import networks
from ray_rewards.actors.client import PendingRewards, RewardActor, _RewardClient, _Source
from ray_rewards.actors.server import NeedsNet
from ray_rewards.actors.wire import RewardSource
from ray_rewards.stats import Moments


def _call_all(replicas: list[RewardActor], method: str, *args: Any) -> list[Any]:
    """``method`` on every replica at once (``RewardActor._call`` for those that ask
    for their net).
    """
    answers = ray.get([getattr(r.handle, method).remote(*args) for r in replicas])
    return [
        r._call(method, *args) if isinstance(a, NeedsNet) else a for r, a in zip(replicas, answers)
    ]


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
        source = _Source.of(reward)
        if snapshot_dir is not None:
            os.makedirs(snapshot_dir, exist_ok=True)
        self.replicas: list[RewardActor] = [
            RewardActor(
                source,
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
        pulled = _call_all(self.replicas, "pull_norm_updates")
        base = pulled[0][0]
        merged = networks.merge_norm_reports(base, [added for _, added in pulled])
        _call_all(self.replicas, "push_norm_base", merged)
        return merged

    def norm_moments(self) -> dict[str, Moments]:
        """The merged statistics (syncs first)."""
        return self.sync_norm_stats()

    def set_norm_moments(self, moments: dict[str, Moments]) -> None:
        """Give every replica these statistics."""
        _call_all(self.replicas, "set_norm_moments", moments)

    def save(self, path: str | os.PathLike) -> str:
        """Sync, then save the net with the merged statistics (atomic)."""
        self.sync_norm_stats()
        return self.replicas[0].save(path)

    def snapshot(self) -> list[str]:
        """Snapshot every replica."""
        return _call_all(self.replicas, "snapshot")

    def serving_stats(self) -> list[dict[str, Any]]:
        """Each replica's counters."""
        return _call_all(self.replicas, "serving_stats")


__all__ = ["RewardActorPool"]
