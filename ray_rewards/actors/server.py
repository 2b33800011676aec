"""The Ray actor that serves one reward net: request coalescing, snapshots, statistics.

Design decision: a hand-written asyncio actor, not Ray Serve.
    Serve's ``@serve.batch`` does the same coalescing, but a Serve application
    brings a controller actor, an HTTP proxy actor and a replica actor per
    deployment, plus a long start-up; on a 2-core node that is three processes
    competing with the env runners for the cores, for an HTTP endpoint nobody
    needs (every caller here is a Ray worker holding a handle). What this module
    needs beyond batching also sits awkwardly in Serve: a replica that owns and
    snapshots mutable normalization statistics, a stats merge across replicas
    (Serve routes requests and hides replica identity), and Ray core's actor
    fault tolerance (``max_restarts`` / ``max_task_retries``), which Serve
    replaces with its own health checks. Coalescing itself needs only a
    concurrent actor: an ``async`` actor receives many calls at once (Ray's
    default ``max_concurrency`` for async actors is 1000), queues them, and one
    serving coroutine runs the forward passes on a single worker thread, so the
    event loop keeps accepting requests while the net computes and the net is
    never touched by two threads at once. Requests that queued during a forward
    pass go into the next one without waiting, so the wait bound only costs
    latency when the actor is idle.

Correctness under concurrency and failure:
    * Every request carries an id; the actor answers ``(id, rewards)`` and the
      client checks both the id and the row count, so a caller can never be
      answered with another caller's rows.
    * Requests are coalesced only with requests of the same keyword arguments
      and trailing shapes; if a coalesced forward pass fails (e.g. one caller
      sent NaN), each of its requests is retried alone so only the bad one fails.
    * The actor is created with ``max_restarts`` and ``max_task_retries``: when
      its process dies, Ray restarts it and re-sends the calls that were in
      flight. A restarted actor loads the net and statistics of its last
      snapshot (an atomic save to ``snapshot_path``, taken at start, every
      ``snapshot_interval_s`` when statistics changed, and on request); without a
      snapshot path it restarts from the net it was created with. Calls that
      exhaust their retries raise :class:`RewardActorError`.

Normalization statistics: by default every call is frozen (a net with a
NormalizedRewardNet gets ``update_stats=False``, as ``load_reward`` does); pass
``update_stats=True`` and the actor's net becomes the authoritative holder of
the statistics. They cross the process boundary as
:class:`~ray_rewards.stats.Moments` (``norm_moments`` / ``set_norm_moments``),
never as a pickled module; replicas of a pool keep in step through a
:class:`~ray_rewards.networks.NormSync` (``pull_norm_updates`` /
``push_norm_base``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray

from ray_rewards import file_format, networks
from ray_rewards.actors.wire import actor_device, batch_rows, load_reward_source
from ray_rewards.reward_function import frozen_stats_kwargs
from ray_rewards.stats import Moments


class RewardActorError(RuntimeError):
    """A request to a reward actor could not be answered (actor gone, bad answer)."""


def _join(parts: list[np.ndarray | None]) -> np.ndarray | None:
    """Rows of all requests in one writable array (arrays from Ray's object store are
    read-only, which torch warns about).
    """
    if parts[0] is None:
        return None
    if len(parts) == 1:
        return parts[0] if parts[0].flags.writeable else parts[0].copy()
    return np.concatenate(parts, axis=0)


@dataclass
class _Request:
    request_id: str
    arrays: tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]
    kwargs: dict[str, Any]
    key: tuple
    rows: int
    future: asyncio.Future
    arrived: float


class _RewardServer:
    """The actor body (see the module docstring); use it through ``RewardActor``."""

    def __init__(
        self,
        source: bytes | str | list[ray.ObjectRef],
        snapshot_path: str | None,
        max_batch_size: int,
        max_wait_s: float,
        coalesce: bool,
        snapshot_interval_s: float | None,
    ):
        self._device = actor_device()
        self._snapshot_path = snapshot_path
        with warnings.catch_warnings():
            # Ray 2.60 implements this flag with its own deprecated ``actor_id``.
            warnings.simplefilter("ignore", DeprecationWarning)
            self._restarted = bool(ray.get_runtime_context().was_current_actor_reconstructed)
        self._net, self._loaded_from = None, "source"
        if self._restarted and snapshot_path:
            try:
                self._net = load_reward_source(snapshot_path, self._device)
                self._loaded_from = "snapshot"
            except FileNotFoundError:
                pass  # died before its first snapshot: start over from the source
        if self._net is None:
            if isinstance(source, list):
                source = ray.get(source[0])
            self._net = load_reward_source(source, self._device)
        # Statistics frozen unless a caller passes update_stats=True (load_reward's rule:
        # only nets with a NormalizedRewardNet get the keyword).
        self._frozen = frozen_stats_kwargs(self._net, {})
        self._max_batch_size = max_batch_size
        self._max_wait_s = max_wait_s
        self._coalesce = coalesce
        self._snapshot_interval_s = snapshot_interval_s
        # One thread runs every computation on the net: forward passes, stats
        # reads/writes and saves are serialized without locks.
        self._executor = concurrent.futures.ThreadPoolExecutor(1, "reward-net")
        self._queue: list[_Request] = []
        self._queued_rows = 0
        self._arrival: asyncio.Event | None = None
        self._tasks: list[asyncio.Task] = []
        self._stats_version = 0
        self._snapshot_version = -1
        self._sync = networks.NormSync(self._net)
        self._counters = {"requests": 0, "rows": 0, "forward_passes": 0, "max_pass_rows": 0}
        if snapshot_path and not self._restarted:
            self._snapshot_now(snapshot_path)

    # -- serving ----------------------------------------------------------------

    def _start(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._arrival is None:
            self._arrival = asyncio.Event()
            self._tasks.append(loop.create_task(self._serve_loop()))
            if self._snapshot_path and self._snapshot_interval_s:
                self._tasks.append(loop.create_task(self._snapshot_loop()))
        return loop

    async def predict_processed(
        self,
        request_id: str,
        obs: np.ndarray,
        actions: np.ndarray,
        next_obs: np.ndarray | None,
        dones: np.ndarray | None,
        kwargs: dict[str, Any],
    ) -> tuple[str, np.ndarray]:
        """Queue one request and answer ``(request_id, rewards of shape (B,))``."""
        loop = self._start()
        arrays = tuple(
            None if a is None else np.asarray(a) for a in (obs, actions, next_obs, dones)
        )
        rows = batch_rows(*arrays)
        kwargs = {**self._frozen, **kwargs}
        key = (
            tuple(sorted((k, repr(v)) for k, v in kwargs.items())),
            tuple(None if a is None else a.shape[1:] for a in arrays),
        )
        req = _Request(request_id, arrays, kwargs, key, rows, loop.create_future(), loop.time())
        self._queue.append(req)
        self._queued_rows += rows
        self._counters["requests"] += 1
        self._arrival.set()
        return request_id, await req.future

    async def _serve_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                self._arrival.clear()
                await self._arrival.wait()
            if self._coalesce:
                deadline = self._queue[0].arrived + self._max_wait_s
                while self._queued_rows < self._max_batch_size:
                    timeout = deadline - loop.time()
                    if timeout <= 0:
                        break
                    self._arrival.clear()
                    try:
                        await asyncio.wait_for(self._arrival.wait(), timeout)
                    except TimeoutError:
                        break
            group = self._take_group()
            await self._run_group(group, loop)

    def _take_group(self) -> list[_Request]:
        """The oldest request and, when coalescing, every queued request that can share
        its forward pass, up to ``max_batch_size`` rows.
        """
        first = self._queue[0]
        group, rest, rows = [first], [], first.rows
        for req in self._queue[1:]:
            fits = rows + req.rows <= self._max_batch_size
            if self._coalesce and req.key == first.key and fits:
                group.append(req)
                rows += req.rows
            else:
                rest.append(req)
        self._queue = rest
        self._queued_rows -= rows
        return group

    async def _run_group(self, group: list[_Request], loop: asyncio.AbstractEventLoop) -> None:
        try:
            arrays = tuple(_join([r.arrays[i] for r in group]) for i in range(4))
            rewards = await loop.run_in_executor(
                self._executor, self._forward, arrays, group[0].kwargs
            )
        except Exception as err:  # noqa: BLE001 - handed to the callers
            if len(group) > 1:
                # Isolate the offending request: each one alone, so only it fails.
                for req in group:
                    await self._run_group([req], loop)
            elif not group[0].future.done():
                group[0].future.set_exception(err)
            return
        total = sum(r.rows for r in group)
        if rewards.shape != (total,):
            err = RewardActorError(
                f"reward net returned shape {rewards.shape} for a pass of {total} rows"
            )
            for req in group:
                if not req.future.done():
                    req.future.set_exception(err)
            return
        offsets = np.cumsum([0] + [r.rows for r in group])
        for req, lo, hi in zip(group, offsets[:-1], offsets[1:]):
            if not req.future.done():
                req.future.set_result(rewards[lo:hi])

    def _forward(self, arrays: tuple, kwargs: dict[str, Any]) -> np.ndarray:
        rewards = np.asarray(self._net.predict_processed(*arrays, **kwargs))
        rows = arrays[0].shape[0]
        self._counters["forward_passes"] += 1
        self._counters["rows"] += rows
        self._counters["max_pass_rows"] = max(self._counters["max_pass_rows"], rows)
        if kwargs.get("update_stats"):
            self._stats_version += 1
        return rewards

    async def _on_net(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # -- statistics ---------------------------------------------------------------

    async def norm_moments(self) -> dict[str, Moments]:
        """Moments of every normalization layer of the served net."""
        return await self._on_net(networks.norm_moments, self._net)

    async def set_norm_moments(self, moments: dict[str, Moments]) -> None:
        """Replace the statistics (they also become the base of the next pool sync)."""
        await self._on_net(self._set_moments, moments)

    def _set_moments(self, moments: dict[str, Moments]) -> None:
        networks.set_norm_moments(self._net, moments)
        self._sync.reset()
        self._stats_version += 1

    async def pull_norm_updates(self) -> tuple[dict[str, Moments], dict[str, Moments]]:
        """Phase 1 of a pool sync: ``(base, added)``, the statistics of the last sync
        and what this replica added to each layer since.
        """
        return await self._on_net(self._pull)

    def _pull(self) -> tuple[dict[str, Moments], dict[str, Moments]]:
        added = self._sync.report()
        return self._sync.synced, added

    async def push_norm_base(self, merged: dict[str, Moments]) -> None:
        """Adopt the pool's merged statistics, keeping what arrived since the pull
        (phase 2 of a sync).
        """
        await self._on_net(self._push, merged)

    def _push(self, merged: dict[str, Moments]) -> None:
        if not self._sync.has_report:
            raise RewardActorError("push_norm_base without a pull_norm_updates first")
        self._sync.absorb(merged)
        self._stats_version += 1

    # -- persistence ----------------------------------------------------------------

    async def save(self, path: str) -> str:
        """Save the served net with its statistics to ``path`` (atomic)."""
        return await self._on_net(self._save, path)

    def _save(self, path: str) -> str:
        file_format.save(self._net, path)
        return path

    async def snapshot(self) -> str:
        """Save to the snapshot path now (what a restart restores)."""
        if not self._snapshot_path:
            raise RewardActorError("this RewardActor was created without a snapshot_path")
        return await self._on_net(self._snapshot_now, self._snapshot_path)

    def _snapshot_now(self, path: str) -> str:
        version = self._stats_version
        self._save(path)
        self._snapshot_version = version
        return path

    async def _snapshot_loop(self) -> None:
        while True:
            await asyncio.sleep(self._snapshot_interval_s)
            if self._stats_version != self._snapshot_version:
                await self._on_net(self._snapshot_now, self._snapshot_path)

    async def serving_stats(self) -> dict[str, Any]:
        """Counters: requests, rows, forward passes, the largest pass, and whether this
        incarnation was restarted by Ray (and loaded from ``"snapshot"`` or ``"source"``).
        """
        return {
            **self._counters,
            "restarted": self._restarted,
            "loaded_from": self._loaded_from,
            "device": str(self._device),
            "pid": os.getpid(),
        }


RemoteRewardServer = ray.remote(_RewardServer)
"""The actor body as a Ray actor class (``.options(...).remote(...)`` creates one)."""


__all__ = ["RemoteRewardServer", "RewardActorError"]
