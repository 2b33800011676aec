"""The client handle of a served reward net (:class:`RewardActor`) and its requests.

For callers (env runners, tasks): ``predict_processed(obs, actions, next_obs,
dones, **kwargs)`` takes numpy batches and returns numpy rewards of shape
``(B,)``; ``submit`` does the same without blocking and returns
:class:`PendingRewards`, which checks that the answer is its own (request id or
number, row count). A client on the actor's node sends requests over the actor's
Unix socket (:mod:`~ray_rewards.actors.channel`), one connection per thread;
other clients, and requests that path cannot carry, go through Ray calls. A
client is picklable and, when called, a ``RewardFn`` (frozen statistics).
:class:`RewardActorPool` puts several replicas behind one object and merges their
normalization statistics (:mod:`~ray_rewards.actors.pool`).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from dataclasses import dataclass
from multiprocessing import AuthenticationError
from typing import Any

import numpy as np
import ray
import torch as th

from ray_rewards import storage
from ray_rewards.actors.batching import Arrays
from ray_rewards.actors.channel import Channel, ChannelBroken, encode_request
from ray_rewards.actors.server import NeedsNet, RemoteRewardServer, RewardActorError
from ray_rewards.actors.wire import RewardSource, batch_rows, load_reward_source, to_wire
from ray_rewards.stats import Moments

_RETRY_CONNECT_S = 5.0


class PendingRewards:
    """A submitted request: ``result()`` waits for the rewards and checks they are ours.

    ``ref`` is the Ray object ref when the request went through Ray (for
    ``ray.wait``), None when it went over the same-node socket.
    """

    def __init__(
        self,
        client: RewardActor,
        arrays: Arrays,
        kwargs: dict[str, Any],
        rows: int,
        channel: Channel | None = None,
        number: int = -1,
    ):
        self._client, self._arrays, self._kwargs = client, arrays, kwargs
        self.rows = rows
        self._channel, self._number = channel, number
        self.ref: ray.ObjectRef | None = None
        self.request_id = f"socket request {number}"
        self._rewards: np.ndarray | None = None
        self._error: BaseException | None = None
        if channel is None:
            self._send_via_ray()

    def _resend(self, channel: Channel) -> None:
        """Through Ray, after ``channel`` broke without answering."""
        if self._channel is channel:
            self._channel = None
            self._send_via_ray()

    def _send_via_ray(self) -> None:
        self.request_id = uuid.uuid4().hex
        self.ref = self._client.handle.predict.remote(self.request_id, self._arrays, self._kwargs)

    def result(self, timeout: float | None = None) -> np.ndarray:
        """Rewards of shape ``(rows,)``.

        Raises:
            RewardActorError: the actor died past its restarts/retries, or answered with
                another request's id or a wrong row count.
            ValueError: the net refused the input (shape, NaN, ...).
            ray.exceptions.GetTimeoutError: no answer within ``timeout`` seconds.
        """
        channel = self._channel
        if channel is not None:
            try:
                value = channel.wait(self._number, timeout)
            except TimeoutError as err:
                raise ray.exceptions.GetTimeoutError(str(err)) from None
            except ChannelBroken:
                # The actor's process died or restarted: this request and every other
                # unanswered one of the connection go again through Ray, which waits
                # for the restart (max_task_retries) or says the actor is gone.
                self._client._drop_channel(channel)
                self._resend(channel)  # unless that already did
            else:
                self._channel = None
                if isinstance(value, BaseException):
                    self._error = value
                else:
                    self._rewards = self._check(value)
        if self.ref is not None:
            self._rewards = self._check(self._get_via_ray(timeout))
            self.ref = None
        self._arrays = self._kwargs = None  # answered: nothing left to re-send
        if self._error is not None:
            raise self._error
        return self._rewards

    def _get_via_ray(self, timeout: float | None) -> np.ndarray:
        for _ in range(3):
            try:
                answer = ray.get(self.ref, timeout=timeout)
            except ray.exceptions.RayActorError as err:
                raise RewardActorError(
                    f"request {self.request_id} ({self.rows} rows) was not answered: the "
                    "reward actor died and its restarts or task retries are exhausted"
                ) from err
            if not isinstance(answer, NeedsNet):
                request_id, rewards = answer
                if request_id != self.request_id:
                    raise RewardActorError(
                        f"request {self.request_id}: the actor answered request "
                        f"{request_id} instead"
                    )
                return rewards
            self._client._give_net()
            self._send_via_ray()
        raise RewardActorError(f"request {self.request_id}: the actor keeps losing its net")

    def _check(self, rewards: Any) -> np.ndarray:
        if not isinstance(rewards, np.ndarray) or rewards.shape != (self.rows,):
            raise RewardActorError(
                f"request {self.request_id}: expected rewards of shape ({self.rows},), got "
                f"{getattr(rewards, 'shape', type(rewards).__name__)}"
            )
        return rewards

    def __del__(self) -> None:
        if getattr(self, "_channel", None) is not None:
            self._channel.drop(self._number)


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


@dataclass(frozen=True)
class _Source:
    """A net ready to serve: a path the actor loads itself, or bytes in the object
    store that clients hand to the actor (``load``), never as a constructor argument.
    """

    path: str | None
    ref: ray.ObjectRef | None

    @classmethod
    def of(cls, reward: RewardSource) -> _Source:
        wire = to_wire(reward)
        if isinstance(wire, str) or isinstance(reward, bytes):
            # Fail here, naming the file, rather than in the actor, where a missing or
            # unsafe file would surface as "actor died" at the first request.
            load_reward_source(wire, "cpu")
        if isinstance(wire, str):
            return cls(wire, None)
        return cls(None, ray.put(wire))


class RewardActor(_RewardClient):
    """Client of one reward net served by a Ray actor (see :mod:`ray_rewards.actors`).

    Picklable: hand it to env runners or tasks and they call the same actor.

    Args:
        reward: a RewardNet (shipped as bytes of the saved format), a path saved by
            ray_rewards (loaded by the actor, so it must be readable where the actor
            runs), or the bytes of such a file.
        num_gpus: GPUs for the actor; the net runs on CUDA when it gets one.
        num_cpus: CPUs reserved for the actor; on CPU it runs a big pass as that
            many parts side by side, so give a big net the cores its callers leave
            idle while they wait for it.
        max_batch_size: most rows in one coalesced forward pass (a single larger
            request still runs, alone).
        max_wait_s: how long an idle actor waits for more requests before a pass.
            The default 0 starts at once; requests arriving during a pass share the
            next one, so the window grows with the load by itself.
        coalesce: False serves each request in its own forward pass (a baseline).
        fast_path: let callers on the actor's node use its Unix socket; False sends
            every request through Ray.
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
        reward: RewardSource | _Source,
        *,
        num_gpus: float = 0,
        num_cpus: float = 1,
        max_batch_size: int = 4096,
        max_wait_s: float = 0.0,
        coalesce: bool = True,
        fast_path: bool = True,
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
        source = reward if isinstance(reward, _Source) else _Source.of(reward)
        # The net's bytes stay with the clients (this one and its pickled copies keep
        # the object alive) and reach the actor by a ``load`` call: see the server's
        # docstring on ray-project/ray#53727.
        self._source_ref = source.ref
        self.handle = RemoteRewardServer.options(**options).remote(
            source.path,
            snapshot,
            max_batch_size,
            max_wait_s,
            coalesce,
            snapshot_interval_s,
            fast_path,
        )
        if source.ref is not None:
            self.handle.load.remote(source.ref)
        self._fast_path = fast_path
        self._reset_local()

    # -- per-process state (never pickled) --------------------------------------------

    def _reset_local(self) -> None:
        self._local = threading.local()
        # (pid, (address, key) or None, when to ask again) of the same-node socket.
        self._fast: tuple[int, tuple[str, bytes] | None, float] | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        del state["_local"], state["_fast"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset_local()

    def _channel(self) -> Channel | None:
        """This thread's connection to the actor's socket, when it is on this node."""
        channel = getattr(self._local, "channel", None)
        pid = os.getpid()
        if channel is not None and not channel.broken and channel.pid == pid:
            return channel
        if not self._fast_path:
            return None
        fast = self._fast
        if fast is None or fast[0] != pid or (fast[1] is None and time.monotonic() > fast[2]):
            try:
                info = self._call("channel_address")
            except (RewardActorError, ray.exceptions.RayActorError):
                info = None
            here = ray.get_runtime_context().get_node_id()
            target = None if info is None or info[0] != here else (info[1], info[2])
            fast = self._fast = (pid, target, time.monotonic() + _RETRY_CONNECT_S)
        if fast[1] is None:
            return None
        try:
            channel = Channel(*fast[1])
        except (OSError, EOFError, AuthenticationError):
            self._fast = (pid, None, time.monotonic() + _RETRY_CONNECT_S)
            return None
        self._local.channel = channel
        return channel

    def _drop_channel(self, channel: Channel) -> None:
        channel.close()
        for pending in channel.unanswered():
            pending._resend(channel)
        if getattr(self._local, "channel", None) is channel:
            self._local.channel = None
        self._fast = None  # the actor may have restarted: ask for its new address

    def _give_net(self) -> None:
        if self._source_ref is None:
            raise RewardActorError("the reward actor lost its net and has no path to reload")
        ray.get(self.handle.load.remote(self._source_ref))

    def _call(self, method: str, *args: Any) -> Any:
        """``ray.get`` of an actor method, handing the net to an incarnation that
        answers it has none.
        """
        for _ in range(3):
            answer = ray.get(getattr(self.handle, method).remote(*args))
            if not isinstance(answer, NeedsNet):
                return answer
            self._give_net()
        raise RewardActorError(f"{method}: the reward actor keeps losing its net")

    # -- requests ------------------------------------------------------------------------

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
        arrays = tuple(_as_batch(x) for x in (obs, actions, next_obs, dones))
        rows = batch_rows(*arrays)
        channel = self._channel()
        if channel is not None:
            msg = encode_request(arrays, kwargs)
            if msg is not None:
                try:
                    number = channel.send(msg)
                except ChannelBroken:
                    self._drop_channel(channel)
                else:
                    pending = PendingRewards(self, arrays, kwargs, rows, channel, number)
                    channel.waiting[number] = pending
                    return pending
        return PendingRewards(self, arrays, kwargs, rows)

    def norm_moments(self) -> dict[str, Moments]:
        """The served net's normalization statistics, by layer name."""
        return self._call("norm_moments")

    def set_norm_moments(self, moments: dict[str, Moments]) -> None:
        """Replace the served net's statistics (RunningNorm layers)."""
        self._call("set_norm_moments", moments)

    def save(self, path: str | os.PathLike) -> str:
        """Save the served net with its statistics to ``path`` (atomic, written by the
        actor: the path must be writable where it runs).
        """
        return self._call("save", storage.absolute(path))

    def snapshot(self) -> str:
        """Snapshot now; returns the snapshot path."""
        return self._call("snapshot")

    def serving_stats(self) -> dict[str, Any]:
        """Counters of the current incarnation (see ``_RewardServer.serving_stats``)."""
        return self._call("serving_stats")


__all__ = ["PendingRewards", "RewardActor"]
