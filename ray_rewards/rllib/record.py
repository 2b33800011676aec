"""Record demonstrations: a trained RLlib policy's transitions, written as Parquet.

GAIL and AIRL learn from expert transitions, and relabeling
(:func:`ray_rewards.data.relabel_dataset`, ``ray-rewards relabel``) reads
transitions. :func:`record_demonstrations` samples complete episodes with a
trained algorithm's own env runner (so its env, wrappers and connectors apply)
and writes them in RLlib's flat column names, the form of RLlib's
``output_write_episodes=False`` offline output: ``obs``, ``actions``,
``new_obs``, ``rewards``, ``terminateds``, ``truncateds`` and ``eps_id``.
Actions are in env units (unsquashed/clipped as the algorithm's config says),
exactly what the env received.

Three things RLlib's sampling does that this module handles:

- every ``sample(num_episodes=...)`` call resets the envs, and when the config
  has a seed it re-seeds them with that same seed, so repeated calls would
  record the same episodes again: each call here gets its own env seed;
- in env-runner relabel mode (:class:`RelabelOnEnvRunner`) the sampled episodes
  carry learned rewards: that callback is left out while recording, so
  ``rewards`` are the env's;
- with several envs per env runner, RLlib returns the first episodes to finish
  and drops the others, which favors short episodes: record with one env per
  runner where episode lengths vary.

Episodes hold the observations the env returned; connectors that rewrite them in
the episode (e.g. RLlib's ``MeanStdFilter``) show up in ``obs`` as rewritten.
"""

from __future__ import annotations

import functools
import math
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ray_rewards import storage
from ray_rewards.rllib._compat import runner_env_seed, set_frozen, set_runner_env_seed
from ray_rewards.rllib.env_runner_relabel import RelabelOnEnvRunner
from ray_rewards.train.oracle import episodes_to_transitions
from ray_rewards.train.schemas import transitions_schema, write_parquet

EXTRA_COLUMNS = ("rewards", "truncateds", "eps_id")


@dataclass(frozen=True)
class RecordResult:
    """What :func:`record_demonstrations` wrote: the folder, the episode and
    transition counts and the mean (undiscounted) env return per episode.
    """

    path: str
    num_episodes: int
    num_transitions: int
    mean_return: float


def _log(msg: str) -> None:
    print(f"[record {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _runner_info(runner: Any) -> tuple[Any, Any, int, int | None]:
    """The runner's single-env spaces, number of envs and env seed."""
    env = runner.env
    return (
        env.single_observation_space,
        env.single_action_space,
        runner.num_envs,
        runner_env_seed(runner),
    )


def _sample_chunk(
    runner: Any, num_episodes: int, explore: bool, env_seed: int | None, global_seed: int | None
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Sample ``num_episodes`` complete episodes on ``runner``; their transition
    columns (env-unit actions), lengths and truncation flags.

    Runs where the runner lives. Touches two RLlib internals, both restored after:
    the runner's env seed (``_seed``, used on the reset that starts ``sample()``) and
    its frozen config's ``callbacks_on_sample_end`` (without RelabelOnEnvRunner).
    """
    if global_seed is not None:
        from ray.rllib.utils.debug import update_global_seed_if_necessary

        update_global_seed_if_necessary(runner.config.framework_str, global_seed)
    config = runner.config
    saved_seed, saved_callbacks = runner_env_seed(runner), config.callbacks_on_sample_end
    callbacks = saved_callbacks if isinstance(saved_callbacks, list | tuple) else [saved_callbacks]
    kept = [c for c in callbacks if c is not None and not isinstance(c, RelabelOnEnvRunner)]
    try:
        if env_seed is not None:
            set_runner_env_seed(runner, env_seed)
        set_frozen(config, "callbacks_on_sample_end", kept or None)
        episodes = runner.sample(num_episodes=num_episodes, explore=explore)
    finally:
        set_runner_env_seed(runner, saved_seed)
        set_frozen(config, "callbacks_on_sample_end", saved_callbacks)
    # Drop the recording's metrics, so its episodes do not count as training samples.
    runner.get_metrics()
    done = [e for e in episodes if e.is_done and len(e) > 0][:num_episodes]
    columns, lengths = episodes_to_transitions(
        done,
        action_space=runner.env.single_action_space,
        normalize_actions=config.normalize_actions,
        clip_actions=config.clip_actions,
    )
    return columns, lengths, np.array([e.is_truncated for e in done], dtype=bool)


def _chunk_sizes(num_episodes: int) -> list[int]:
    """One sample call, or about ten for long recordings (a progress line after each)."""
    size = num_episodes if num_episodes < 20 else math.ceil(num_episodes / 10)
    full, rest = divmod(num_episodes, size)
    return [size] * full + ([rest] if rest else [])


def _record(
    algo: Any, path: str, num_episodes: int, explore: bool, seed: int | None
) -> RecordResult:
    group = algo.env_runner_group
    remote = group.num_remote_env_runners() > 0

    def on_runner(func: Any, **kwargs: Any) -> Any:
        # As ppo_runs.evaluate: the local runner, or remote runner 1 (the local one
        # has no env when there are remote ones).
        out = group.foreach_env_runner(
            functools.partial(func, **kwargs),
            local_env_runner=not remote,
            remote_worker_ids=[1] if remote else None,
        )
        if not out:
            raise RuntimeError("record_demonstrations: env runner 1 is not healthy")
        return out[0]

    obs_space, act_space, num_envs, runner_seed = on_runner(_runner_info)
    schema = transitions_schema(obs_space, act_space, extra=EXTRA_COLUMNS)
    base_seed = seed if seed is not None else runner_seed
    sizes = _chunk_sizes(num_episodes)
    parts: list[tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]] = []
    for i, size in enumerate(sizes):
        # A vector env seeds its sub-envs seed, seed + 1, ...: no two calls overlap.
        env_seed = None if base_seed is None else base_seed + i * num_envs
        global_seed = seed if (explore and seed is not None and i == 0) else None
        part = on_runner(
            _sample_chunk,
            num_episodes=size,
            explore=explore,
            env_seed=env_seed,
            global_seed=global_seed,
        )
        if len(part[1]) != size:
            raise RuntimeError(
                f"record_demonstrations: asked the env runner for {size} episodes, got "
                f"{len(part[1])}"
            )
        parts.append(part)
        if len(sizes) > 1:
            done = sum(len(p[1]) for p in parts)
            steps = sum(int(p[1].sum()) for p in parts)
            _log(f"{done}/{num_episodes} episodes, {steps} transitions")

    lengths = np.concatenate([p[1] for p in parts])
    columns = {name: np.concatenate([p[0][name] for p in parts]) for name in parts[0][0]}
    ends = np.cumsum(lengths) - 1
    columns["truncateds"] = np.zeros(len(columns["obs"]), dtype=bool)
    columns["truncateds"][ends[np.concatenate([p[2] for p in parts])]] = True
    columns["eps_id"] = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    returns = np.add.reduceat(columns["rewards"].astype(np.float64), ends - lengths + 1)
    written = write_parquet(columns, path, schema)
    return RecordResult(written, len(lengths), int(lengths.sum()), float(returns.mean()))


def record_demonstrations(
    source: Any,
    output: str | os.PathLike,
    *,
    num_episodes: int,
    explore: bool = False,
    seed: int | None = None,
) -> RecordResult:
    """Record ``num_episodes`` complete episodes of a trained RLlib policy as Parquet
    transitions (see the module docstring for the columns).

    Args:
        source: a built ``ray.rllib.algorithms.algorithm.Algorithm``, or the path or
            URI of its checkpoint (loaded with ``Algorithm.from_checkpoint`` and
            stopped afterwards; Ray must be running or startable).
        output: a new local folder (an empty one is fine); it appears only once
            every file is written.
        num_episodes: episodes to record (>= 1).
        explore: sample actions from the policy's distribution; default: greedy.
        seed: seeds the env resets (and, with ``explore``, the sampling process's
            global RNGs); None: the algorithm's own seed, if it has one.

    Returns:
        A :class:`RecordResult`.

    Raises:
        ValueError: ``num_episodes < 1``, an output URI, or spaces Parquet cannot hold.
        FileExistsError: ``output`` exists and is not an empty folder.
        FileNotFoundError: no checkpoint at a local ``source`` path.
    """
    if num_episodes < 1:
        raise ValueError(f"record_demonstrations: num_episodes must be >= 1, got {num_episodes}")
    if storage.is_uri(output):
        raise ValueError(f"record_demonstrations: output must be a local folder, got {output}")
    path = os.path.abspath(os.fspath(output))
    if os.path.exists(path) and not (os.path.isdir(path) and not os.listdir(path)):
        raise FileExistsError(f"record_demonstrations: {path} already exists; choose a new path")
    if not isinstance(source, str | os.PathLike):
        return _record(source, path, num_episodes, explore, seed)

    from ray.rllib.algorithms.algorithm import Algorithm

    checkpoint = storage.absolute(source)
    if not storage.is_uri(checkpoint) and not os.path.isdir(checkpoint):
        raise FileNotFoundError(f"record_demonstrations: no checkpoint at {checkpoint}")
    algo = Algorithm.from_checkpoint(checkpoint)
    try:
        return _record(algo, path, num_episodes, explore, seed)
    finally:
        algo.stop()


__all__ = ["RecordResult", "record_demonstrations"]
