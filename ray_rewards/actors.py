"""Reward nets served by Ray actors: many callers, one net, coalesced forward passes.

:class:`RewardActor` puts one reward net in a Ray actor (on a GPU when the actor
gets one) and serves ``predict_processed`` to any number of concurrent callers:
env runners, evaluation jobs, data pipelines. Requests that arrive close together
are concatenated into one forward pass of at most ``max_batch_size`` rows, waiting
at most ``max_wait_s`` for company, and each caller gets exactly its own rows
back. :class:`RewardActorPool` puts several replicas behind one object and merges
their normalization statistics.

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
never as a pickled module; the net itself crosses it as bytes of ray_rewards'
saved format, loaded in the actor by ``serialize.load`` (a class registered
with ``register_safe_class`` must be registered in the actor's process too).

For callers (env runners, tasks): ``RewardActor.predict_processed(obs, actions,
next_obs, dones, **kwargs)`` takes numpy batches and returns numpy rewards of
shape ``(B,)``; ``submit`` does the same without blocking; the client object is
picklable and a ``RewardFn`` (frozen statistics) when called.

Where it pays: each call is a Ray round trip (about a millisecond), so on a CPU
a small net is faster in the caller's own process; the actor wins when the net
is large or on a GPU (one coalesced pass instead of many small ones), and when
one copy must own the statistics. ``benchmarks/actor_throughput.py`` measures it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import os
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
import torch as th

from ray_rewards import networks, serialize
from ray_rewards.reward_nets import RewardNet
from ray_rewards.stats import Moments

RewardSource = RewardNet | str | os.PathLike | bytes
"""A reward net, a path to one saved by ray_rewards, or the bytes of such a file."""


class RewardActorError(RuntimeError):
    """A request to a reward actor could not be answered (actor gone, bad answer)."""


def net_to_bytes(net: RewardNet) -> bytes:
    """The bytes of ``net`` in ray_rewards' saved format (what crosses process boundaries)."""
    if not isinstance(net, RewardNet):
        raise TypeError(f"expected a RewardNet, got {type(net).__name__}")
    with tempfile.TemporaryDirectory(prefix="ray_rewards_") as tmp:
        path = os.path.join(tmp, "net.pt")
        serialize.save(net, path)
        with open(path, "rb") as f:
            return f.read()


@contextlib.contextmanager
def reward_file(source: bytes | str | os.PathLike) -> Iterator[str]:
    """A path to read a saved net from: a path (or URI) as is, bytes via a temporary file."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        with tempfile.TemporaryDirectory(prefix="ray_rewards_") as tmp:
            path = os.path.join(tmp, "net.pt")
            with open(path, "wb") as f:
                f.write(source)
            yield path
    elif isinstance(source, (str, os.PathLike)):
        yield os.fspath(source)
    else:
        raise TypeError(
            "reward: expected a RewardNet, a path saved by ray_rewards or its bytes, "
            f"got {type(source).__name__}"
        )


def load_reward_source(
    source: bytes | str | os.PathLike, device: th.device | str = "cpu"
) -> RewardNet:
    """Load a net from a path or saved-format bytes onto ``device`` (safely, see serialize)."""
    with reward_file(source) as path:
        return serialize.load(path, device=device)


def to_wire(source: RewardSource) -> bytes | str:
    """What to ship to another process for ``source``: a path stays a path, a net
    becomes bytes of the saved format (never a pickled module).
    """
    if isinstance(source, RewardNet):
        return net_to_bytes(source)
    if isinstance(source, (str, os.PathLike)):
        return _absolute(source)
    if isinstance(source, bytes):
        return source
    raise TypeError(
        "reward: expected a RewardNet, a path saved by ray_rewards or its bytes, "
        f"got {type(source).__name__}"
    )


def set_running_moments(net: RewardNet, moments: dict[str, Moments]) -> None:
    """Write merged moments into ``net``'s RunningNorm layers; other norm layers (EMANorm,
    whose statistics do not merge) must be unchanged and are left alone.
    """
    for name, layer in net.named_modules():
        if isinstance(layer, networks.RunningNorm):
            layer.set_moments(moments[name])
        elif isinstance(layer, networks.BaseNorm) and not layer.moments().allclose(moments[name]):
            raise TypeError(
                f"layer {name!r} is {type(layer).__name__}; only RunningNorm statistics "
                "merge across copies of a net"
            )


def _absolute(path: str | os.PathLike) -> str:
    """An absolute local path (the actor may run in another working directory); URIs as is."""
    path = os.fspath(path)
    return path if "://" in path else os.path.abspath(path)


def actor_device() -> th.device:
    """CUDA when Ray gave the current worker a GPU and torch can use it, else CPU."""
    if ray.get_gpu_ids() and th.cuda.is_available():
        return th.device("cuda")
    return th.device("cpu")


def _rows(name: str, x: np.ndarray | None, expected: int | None) -> int | None:
    if x is None:
        return expected
    if x.ndim == 0:
        raise ValueError(f"{name}: expected a batch with a leading batch axis, got a scalar")
    if expected is not None and x.shape[0] != expected:
        raise ValueError(f"{name}: expected {expected} rows (as obs), got {x.shape[0]}")
    return int(x.shape[0])


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
    """The actor body (see the module docstring); use it through :class:`RewardActor`."""

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
        self._frozen = serialize._frozen_stats(self._net, {})
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
        self._synced = networks.norm_moments(self._net)
        self._pulled: dict[str, Moments] | None = None
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
        rows = _rows("obs", arrays[0], None)
        for name, a in zip(("actions", "next_obs", "dones"), arrays[1:]):
            _rows(name, a, rows)
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
        self._synced = dict(moments)
        self._pulled = None
        self._stats_version += 1

    async def pull_norm_updates(self) -> tuple[dict[str, Moments], dict[str, Moments]]:
        """Phase 1 of a pool sync: ``(base, added)``, the statistics of the last sync
        and what this replica added to each layer since.
        """
        return await self._on_net(self._pull)

    def _pull(self) -> tuple[dict[str, Moments], dict[str, Moments]]:
        current = networks.norm_moments(self._net)
        layers = dict(self._net.named_modules())
        delta = {}
        for name, cur in current.items():
            base = self._synced[name]
            changed = cur.count != base.count
            if changed and not isinstance(layers[name], networks.RunningNorm):
                raise TypeError(
                    f"layer {name!r} is {type(layers[name]).__name__} and its statistics "
                    "changed; only RunningNorm statistics merge across replicas"
                )
            delta[name] = cur.subtract(base) if changed else Moments.empty(base.mean.shape)
        self._pulled = current
        return self._synced, delta

    async def push_norm_base(self, merged: dict[str, Moments]) -> None:
        """Adopt the pool's merged statistics, keeping what arrived since the pull
        (phase 2 of a sync).
        """
        await self._on_net(self._push, merged)

    def _push(self, merged: dict[str, Moments]) -> None:
        if self._pulled is None:
            raise RewardActorError("push_norm_base without a pull_norm_updates first")
        current = networks.norm_moments(self._net)
        set_running_moments(
            self._net,
            {
                name: merged[name].merge(current[name].subtract(self._pulled[name]))
                for name in current
            },
        )
        self._synced = dict(merged)
        self._pulled = None
        self._stats_version += 1

    # -- persistence ----------------------------------------------------------------

    async def save(self, path: str) -> str:
        """Save the served net with its statistics to ``path`` (atomic)."""
        return await self._on_net(self._save, path)

    def _save(self, path: str) -> str:
        serialize.save(self._net, path)
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


_RemoteServer = ray.remote(_RewardServer)


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
    """Client of one reward net served by a Ray actor (see the module docstring).

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
        snapshot = None if snapshot_path is None else _absolute(snapshot_path)
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
        if isinstance(wire, bytes):
            # The net's bytes go to the object store once, and this client keeps them
            # alive: Ray re-runs the constructor on a restart and does not pin large
            # constructor arguments itself (ray-project/ray#53727). Nested in a list so
            # the actor fetches them itself, only when it has no snapshot to load.
            self._source_ref = ray.put(wire)
            source: Any = [self._source_ref]
        else:
            source = wire
        self.handle = _RemoteServer.options(**options).remote(
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
        rows = _rows("obs", arrays[0], None)
        for name, a in zip(("actions", "next_obs", "dones"), arrays[1:]):
            _rows(name, a, rows)
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
        return ray.get(self.handle.save.remote(_absolute(path)))

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
        merged = {
            name: Moments.merge_all([base_m, *(added[name] for _, added in pulled)])
            for name, base_m in base.items()
        }
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


__all__ = [
    "PendingRewards",
    "RewardActor",
    "RewardActorError",
    "RewardActorPool",
    "RewardSource",
    "actor_device",
    "load_reward_source",
    "net_to_bytes",
    "reward_file",
    "set_running_moments",
    "to_wire",
]
