"""The Ray actor that serves one reward net: request coalescing, snapshots, statistics.

Design decision: a hand-written actor, not Ray Serve.
    Serve's ``@serve.batch`` does the same coalescing, but a Serve application
    brings a controller actor, an HTTP proxy actor and a replica actor per
    deployment, plus a long start-up; on a 2-core node that is three processes
    competing with the env runners for the cores, for an HTTP endpoint nobody
    needs (every caller here is a Ray worker holding a handle). What this module
    needs beyond batching also sits awkwardly in Serve: a replica that owns and
    snapshots mutable normalization statistics, a stats merge across replicas
    (Serve routes requests and hides replica identity), and Ray core's actor
    fault tolerance (``max_restarts`` / ``max_task_retries``), which Serve
    replaces with its own health checks.

How a request travels:
    * Callers on the actor's node send it over a Unix socket straight into the
      actor's process (:mod:`~ray_rewards.actors.channel`): a Ray actor call costs
      about a millisecond of CPU, the socket a tenth of that. The connection's
      reader thread queues what has arrived and, when the net is idle, runs the
      pass itself and sends the answers (no thread hop).
    * Everything else is an ``async`` Ray method call (Ray's default
      ``max_concurrency`` for async actors is 1000, so many calls wait at once);
      the net thread runs those passes and the event loop answers.
    * Both feed one :class:`~ray_rewards.actors.batching.NetThread` queue: one
      thread at a time runs coalesced forward passes, statistics, saves and loads,
      in arrival order, without locks.
    * On CPU the actor uses as many threads as Ray gives it CPUs (``num_cpus``), as
      parts of a big frozen-statistics pass run side by side, each on one torch
      thread: OpenMP's barriers stall whenever another process holds a core
      (measured under load: 2 OpenMP threads took 85-240 ms for a pass that 1
      thread ran in 52-78 ms). Small passes run whole.

Correctness under concurrency and failure:
    * Every request is answered with its own id or number and the client checks
      it and the row count, so a caller can never get another caller's rows.
    * Requests are coalesced only with requests of the same keyword arguments,
      trailing shapes and dtypes; if a coalesced forward pass fails (e.g. one
      caller sent NaN), each of its requests is retried alone so only the bad one
      fails.
    * The actor is created with ``max_restarts`` and ``max_task_retries``: when
      its process dies, Ray restarts it and re-sends the Ray calls that were in
      flight; a client re-sends through Ray what it had sent over a socket that
      broke. A restarted actor loads the net and statistics of its last snapshot
      (an atomic save to ``snapshot_path``, taken at start, every
      ``snapshot_interval_s`` when statistics changed, and on request). Without a
      snapshot it reloads the net it was created with: a path from its
      constructor arguments, or bytes that the clients hold. Net bytes are never a
      constructor argument (Ray keeps large ones in the object store without
      pinning them for restarts, ray-project/ray#53727): the creating client sends
      them with a ``load`` call, and an incarnation without a net answers
      :class:`NeedsNet`, on which a client sends ``load`` again and repeats its
      call. Calls that exhaust their retries raise :class:`RewardActorError`.

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
from typing import Any

import numpy as np
import ray
import torch as th

from ray_rewards import file_format, networks
from ray_rewards.actors.batching import Arrays, Done, NetThread, RewardActorError
from ray_rewards.actors.channel import AVAILABLE, ChannelServer
from ray_rewards.actors.wire import actor_device, load_reward_source
from ray_rewards.reward_function import frozen_stats_kwargs
from ray_rewards.stats import Moments

_SPLIT_WORK = 2**25
"""Rows x parameters from which a CPU pass is split across threads (a 1024-unit MLP
from 32 rows; a 64-unit one never within the default ``max_batch_size``)."""
_MIN_SPLIT_ROWS = 16


class NeedsNet:
    """The answer of an actor incarnation that has no net yet (restarted without a
    snapshot from bytes): the client calls ``load`` with the net and asks again.
    """

    __slots__ = ()

    def __reduce__(self) -> str:
        return "NEEDS_NET"


NEEDS_NET = NeedsNet()


class _Settle:
    """``done`` of a Ray-path request: hands the answer to the actor's event loop."""

    __slots__ = ("answer", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, answer: asyncio.Future):
        self.loop, self.answer = loop, answer

    def __call__(self, rewards: np.ndarray | None, error: BaseException | None) -> None:
        self.loop.call_soon_threadsafe(self._set, rewards, error)

    def _set(self, rewards: np.ndarray | None, error: BaseException | None) -> None:
        if not self.answer.done():
            if error is None:
                self.answer.set_result(rewards)
            else:
                self.answer.set_exception(error)


class _RewardServer:
    """The actor body (see the module docstring); use it through ``RewardActor``.

    Constructor arguments are small (no net bytes): ``path`` is the net's path when
    it was created from one, else None and the net arrives with :meth:`load`.
    """

    def __init__(
        self,
        path: str | None,
        snapshot_path: str | None,
        max_batch_size: int,
        max_wait_s: float,
        coalesce: bool,
        snapshot_interval_s: float | None,
        fast_path: bool,
    ):
        self._device = actor_device()
        self._snapshot_path = snapshot_path
        with warnings.catch_warnings():
            # Ray 2.60 implements this flag with its own deprecated ``actor_id``.
            warnings.simplefilter("ignore", DeprecationWarning)
            self._restarted = bool(ray.get_runtime_context().was_current_actor_reconstructed)
        self._net = None
        self._loaded_from: str | None = None
        self._helpers: concurrent.futures.ThreadPoolExecutor | None = None
        self._cpu_threads = th.get_num_threads()  # Ray sets it to num_cpus
        if self._device.type == "cpu" and self._cpu_threads > 1:
            # Big CPU passes run as one part per thread (see _split_forward), each part on
            # one torch thread: parts share the cores without OpenMP barriers, which
            # stall whenever another process holds one of the cores.
            th.set_num_threads(1)
            self._helpers = concurrent.futures.ThreadPoolExecutor(
                self._cpu_threads - 1, "reward-net-part"
            )
        self._stats_version = 0
        self._snapshot_version = -1
        periodic = snapshot_path is not None and snapshot_interval_s is not None
        self._thread = NetThread(
            self._forward,
            max_batch_size=max_batch_size,
            max_wait_s=max_wait_s,
            coalesce=coalesce,
            tick=self._snapshot_if_changed if periodic else None,
            tick_s=snapshot_interval_s if periodic else None,
        )
        if self._restarted and snapshot_path:
            try:
                self._adopt(load_reward_source(snapshot_path, self._device), "snapshot")
            except FileNotFoundError:
                pass  # died before its first snapshot: start over from the source
        if self._net is None and path is not None:
            self._adopt(load_reward_source(path, self._device), "source")
        on = fast_path and AVAILABLE
        self._max_wait_s = max_wait_s
        self._channel = ChannelServer(self._predict_on_channel, self._flush_channel) if on else None

    def _adopt(self, net: Any, loaded_from: str) -> None:
        # Statistics frozen unless a caller passes update_stats=True (load_reward's rule:
        # only nets with a NormalizedRewardNet get the keyword).
        self._frozen = frozen_stats_kwargs(net, {})
        self._sync = networks.NormSync(net)
        self._params = sum(p.numel() for p in net.parameters())
        net.eval()  # predictions evaluate anyway; parts of a split pass share the mode
        self._net, self._loaded_from = net, loaded_from
        if self._snapshot_path and loaded_from == "source":
            self._snapshot_now(self._snapshot_path)

    async def load(self, source: bytes) -> None:
        """Give a net-less incarnation its net (saved-format bytes); a no-op otherwise."""
        if self._net is None:
            await self._on_net(self._load, source)

    def _load(self, source: bytes) -> None:
        if self._net is None:
            self._adopt(load_reward_source(source, self._device), "source")

    # -- serving --------------------------------------------------------------------

    async def predict(
        self, request_id: str, arrays: Arrays, kwargs: dict[str, Any]
    ) -> tuple[str, np.ndarray] | NeedsNet:
        """Queue one request and answer ``(request_id, rewards of shape (B,))``."""
        if self._net is None:
            return NEEDS_NET
        arrays = tuple(None if a is None else np.asarray(a) for a in arrays)
        loop = asyncio.get_running_loop()
        answer = loop.create_future()
        self._thread.predict(arrays, {**self._frozen, **kwargs}, _Settle(loop, answer))
        return request_id, await answer

    def _predict_on_channel(self, arrays: Arrays, kwargs: dict[str, Any], done: Done) -> None:
        if self._net is None:  # never: the address is only handed out with a net
            raise RewardActorError("this reward actor has no net loaded")
        self._thread.predict(arrays, {**self._frozen, **kwargs}, done, hold=True)

    def _flush_channel(self) -> None:
        # A reader runs the passes itself unless passes wait for company: then the
        # net thread waits while the readers keep reading.
        self._thread.kick(lead=self._max_wait_s == 0)

    async def channel_address(self) -> tuple[str, str, bytes] | NeedsNet | None:
        """``(node id, socket address, key)`` of the same-node fast path, or None."""
        if self._net is None:
            return NEEDS_NET
        if self._channel is None:
            return None
        node = ray.get_runtime_context().get_node_id()
        return node, self._channel.address, self._channel.authkey

    def _forward(self, arrays: Arrays, kwargs: dict[str, Any]) -> np.ndarray:
        rows = arrays[0].shape[0]
        if kwargs.get("update_stats"):
            self._stats_version += 1
        elif self._helpers is not None and rows * self._params >= _SPLIT_WORK:
            return self._split_forward(arrays, kwargs, rows)
        return np.asarray(self._net.predict_processed(*arrays, **kwargs))

    def _split_forward(self, arrays: Arrays, kwargs: dict[str, Any], rows: int) -> np.ndarray:
        """A frozen-statistics pass cut into one part per CPU thread, run side by side
        (torch releases the GIL in its kernels).
        """
        parts = min(self._cpu_threads, max(1, rows // _MIN_SPLIT_ROWS))
        cuts = [rows * i // parts for i in range(parts + 1)]
        chunks = [
            tuple(None if a is None else a[lo:hi] for a in arrays)
            for lo, hi in zip(cuts[:-1], cuts[1:])
        ]
        predict = self._net.predict_processed
        others = [self._helpers.submit(predict, *c, **kwargs) for c in chunks[1:]]
        first = np.asarray(predict(*chunks[0], **kwargs))
        return np.concatenate([first, *(np.asarray(f.result()) for f in others)])

    async def _on_net(self, fn: Any, *args: Any) -> Any:
        return await asyncio.wrap_future(self._thread.run(fn, *args))

    # -- statistics -------------------------------------------------------------------

    async def norm_moments(self) -> dict[str, Moments] | NeedsNet:
        """Moments of every normalization layer of the served net."""
        if self._net is None:
            return NEEDS_NET
        return await self._on_net(networks.norm_moments, self._net)

    async def set_norm_moments(self, moments: dict[str, Moments]) -> NeedsNet | None:
        """Replace the statistics (they also become the base of the next pool sync)."""
        if self._net is None:
            return NEEDS_NET
        await self._on_net(self._set_moments, moments)
        return None

    def _set_moments(self, moments: dict[str, Moments]) -> None:
        networks.set_norm_moments(self._net, moments)
        self._sync.reset()
        self._stats_version += 1

    async def pull_norm_updates(
        self,
    ) -> tuple[dict[str, Moments], dict[str, Moments]] | NeedsNet:
        """Phase 1 of a pool sync: ``(base, added)``, the statistics of the last sync
        and what this replica added to each layer since.
        """
        if self._net is None:
            return NEEDS_NET
        return await self._on_net(self._pull)

    def _pull(self) -> tuple[dict[str, Moments], dict[str, Moments]]:
        added = self._sync.report()
        return self._sync.synced, added

    async def push_norm_base(self, merged: dict[str, Moments]) -> NeedsNet | None:
        """Adopt the pool's merged statistics, keeping what arrived since the pull
        (phase 2 of a sync).
        """
        if self._net is None:
            return NEEDS_NET
        await self._on_net(self._push, merged)
        return None

    def _push(self, merged: dict[str, Moments]) -> None:
        if not self._sync.has_report:
            raise RewardActorError("push_norm_base without a pull_norm_updates first")
        self._sync.absorb(merged)
        self._stats_version += 1

    # -- persistence --------------------------------------------------------------------

    async def save(self, path: str) -> str | NeedsNet:
        """Save the served net with its statistics to ``path`` (atomic)."""
        if self._net is None:
            return NEEDS_NET
        return await self._on_net(self._save, path)

    def _save(self, path: str) -> str:
        file_format.save(self._net, path)
        return path

    async def snapshot(self) -> str | NeedsNet:
        """Save to the snapshot path now (what a restart restores)."""
        if not self._snapshot_path:
            raise RewardActorError("this RewardActor was created without a snapshot_path")
        if self._net is None:
            return NEEDS_NET
        return await self._on_net(self._snapshot_now, self._snapshot_path)

    def _snapshot_now(self, path: str) -> str:
        version = self._stats_version
        self._save(path)
        self._snapshot_version = version
        return path

    def _snapshot_if_changed(self) -> None:
        if self._net is not None and self._stats_version != self._snapshot_version:
            self._snapshot_now(self._snapshot_path)

    async def serving_stats(self) -> dict[str, Any] | NeedsNet:
        """Counters: requests, rows, forward passes, the largest pass; whether this
        incarnation was restarted by Ray (and loaded from ``"snapshot"`` or
        ``"source"``); device, CPU threads for passes, pid and whether the fast path
        is on.
        """
        if self._net is None:
            return NEEDS_NET
        return {
            **self._thread.counters,
            "restarted": self._restarted,
            "loaded_from": self._loaded_from,
            "device": str(self._device),
            "cpu_threads": self._cpu_threads,
            "fast_path": self._channel is not None,
            "pid": os.getpid(),
        }


RemoteRewardServer = ray.remote(_RewardServer)
"""The actor body as a Ray actor class (``.options(...).remote(...)`` creates one)."""


__all__ = ["NEEDS_NET", "NeedsNet", "RemoteRewardServer", "RewardActorError"]
