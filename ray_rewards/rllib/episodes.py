"""Transitions out of RLlib episode chunks, and rewards back into them.

Shared by the learner-connector piece (:class:`~ray_rewards.rllib.RelabelRewards`)
and env-runner mode (:class:`~ray_rewards.rllib.env_runner_relabel.RelabelOnEnvRunner`).

What counts as a transition of a chunk of ``len(episode) == L`` steps (lookback
excluded):

- ``state[t] = obs[t]``, ``action[t]``, ``next_state[t] = obs[t + 1]`` for
  ``t = 0 .. L-1``; ``obs[0]`` is the chunk's first observation (the last one of the
  previous chunk when the episode was cut), ``obs[L]`` its last. The lookback
  buffer is never relabeled: it belongs to the previous chunk.
- ``done[t]`` is 1 only for the last step of a terminated episode (truncation, and
  a chunk cut by the sampler, are not terminal).
- When PPO's (or IMPALA's) ``AddOneTsToEpisodesAndTruncate`` ran first, every chunk
  ends in an artificial bootstrap step (a copy of the last observation, reward 0,
  masked out of the loss). That step is not a transition: callers pass ``n = L - 1``
  so that it keeps its 0 reward.
"""

from __future__ import annotations

import copy
import functools
from typing import Any, Literal

import numpy as np
from ray.rllib.env.multi_agent_episode import MultiAgentEpisode
from ray.rllib.env.single_agent_episode import SingleAgentEpisode
from ray.rllib.utils.spaces.space_utils import clip_action, unsquash_action

Mode = Literal["replace", "add"]
MODES: tuple[str, ...] = ("replace", "add")


def check_mode_and_coef(mode: str, coef: float, who: str) -> float:
    """``coef`` as a float after checking both relabeling options; ValueError naming
    ``who``, what was expected and what came.
    """
    if mode not in MODES:
        raise ValueError(f"{who}: mode must be one of {MODES}, got {mode!r}")
    coef = float(coef)
    if not np.isfinite(coef):
        raise ValueError(f"{who}: coef must be finite, got {coef}")
    return coef


def episode_transitions(
    chunks: list[tuple[SingleAgentEpisode, int]],
    action_struct: Any = None,
    normalize_actions: bool = False,
    clip_actions: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Concatenated ``(state, action, next_state, done)`` of the first ``n`` steps of
    each ``(episode, n)`` chunk (see the module docstring for what a transition is).

    With ``normalize_actions`` (or ``clip_actions``) the RLModule's actions are
    unsquashed to (or clipped into) ``action_struct``, the env's action space.
    Per chunk this costs a few array slices (replay samples are hundreds of
    one-step chunks); everything per transition is one numpy call over all chunks.
    """
    observations, actions, n_steps = [], [], []
    lengths = np.fromiter((n for _, n in chunks), dtype=np.int64, count=len(chunks))
    terminated = np.fromiter((e.is_terminated for e, _ in chunks), dtype=bool, count=len(chunks))
    for episode, n in chunks:
        observations.append(_first(episode.observations, n + 1))
        actions.append(_first(episode.actions, n))
        n_step = episode.extra_model_outputs.get("n_step")
        if n_step is not None:
            n_steps.append(n_step.data)
    # axis=None flattens every chunk's n_step data (array or list) in one call.
    all_n_steps = np.concatenate(n_steps, axis=None) if n_steps else np.ones(0)
    if np.any(all_n_steps != 1):
        raise ValueError(
            "RelabelRewards: got replay-buffer episodes sampled with n_step > 1 "
            f"(n_step={np.unique(all_n_steps).tolist()}); their rewards "
            "are discounted sums over several transitions, which a reward net cannot "
            "relabel. Configure the algorithm with n_step=1."
        )
    obs = np.concatenate(observations)
    # Chunk i holds rows [offsets[i], offsets[i] + n_i] of obs (n_i + 1 observations).
    offsets = np.concatenate([[0], np.cumsum(lengths + 1)[:-1]])
    steps = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    state_rows = np.repeat(offsets, lengths) + steps
    done = np.zeros(len(state_rows), dtype=np.float32)
    done[(np.cumsum(lengths) - 1)[terminated]] = 1.0
    action = env_actions(np.concatenate(actions), action_struct, normalize_actions, clip_actions)
    return obs[state_rows], action, obs[state_rows + 1], done


def env_actions(
    action: np.ndarray, action_struct: Any, normalize_actions: bool, clip_actions: bool
) -> np.ndarray:
    """The RLModule's actions as the env received them: unsquashed to (or clipped
    into) ``action_struct``, the env's action space, as RLlib's env runners do.
    """
    if normalize_actions:
        return unsquash_action(action, action_struct)
    if clip_actions:
        return clip_action(action, action_struct)
    return action


def new_rewards(
    learned: np.ndarray, env_rewards: np.ndarray, mode: Mode, coef: float
) -> np.ndarray:
    """``coef * learned``, plus ``env_rewards`` with ``mode="add"`` (float64)."""
    new = coef * learned.astype(np.float64)
    if mode == "add":
        new += env_rewards
    return new


@functools.cache
def reward_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype a relabeled reward buffer keeps: its own, at least float32."""
    return np.result_type(dtype, np.float32)


def detach_rewards(episodes: list[Any]) -> None:
    """Put in place of each episode of ``episodes`` a shallow copy whose reward buffer
    is its own, so that writing rewards into the list's episodes leaves the objects
    the caller holds (an env runner's, for its episode metrics) as they were.

    Only rewards are detached: other buffers stay shared, as RLlib's own learner
    pieces (which append a bootstrap step) expect. A MultiAgentEpisode is copied
    with a new ``agent_episodes`` dict of detached sub-episodes.
    """
    for i, episode in enumerate(episodes):
        if isinstance(episode, MultiAgentEpisode):
            copied = copy.copy(episode)
            copied.agent_episodes = {
                agent: _with_own_rewards(sub) for agent, sub in episode.agent_episodes.items()
            }
            episodes[i] = copied
        else:
            episodes[i] = _with_own_rewards(episode)


def _with_own_rewards(episode: SingleAgentEpisode) -> SingleAgentEpisode:
    copied = copy.copy(episode)
    rewards = copy.copy(episode.rewards)
    # A numpy buffer gets new data when written (see _write_rewards); a list one is
    # written in place, so it needs its own list.
    if not isinstance(rewards.data, np.ndarray):
        rewards.data = list(rewards.data)
    copied.rewards = rewards
    return copied


def write_rewards(
    chunks: list[tuple[SingleAgentEpisode, int]], learned: np.ndarray, mode: Mode, coef: float
) -> np.ndarray:
    """Write ``coef * learned`` (``mode="add"``: plus the env reward) into the chunks'
    first ``n`` rewards, in order; return the env rewards they replaced.
    """
    env_rewards = np.concatenate([_first(e.rewards, n) for e, n in chunks]).astype(np.float64)
    new = new_rewards(learned, env_rewards, mode, coef)
    start = 0
    for episode, n in chunks:
        _write_rewards(episode, new[start : start + n])
        start += n
    return env_rewards


def _first(buffer: Any, n: int) -> np.ndarray:
    """The first ``n`` items after the lookback of an episode's InfiniteLookbackBuffer.

    Finalized (numpy) buffers are sliced directly; list buffers go through ``get``.
    """
    data = buffer.data
    if isinstance(data, np.ndarray):
        return data[buffer.lookback : buffer.lookback + n]
    return np.asarray(buffer.get(slice(0, n)))


def _write_rewards(episode: SingleAgentEpisode, rewards: np.ndarray) -> None:
    """Overwrite the first ``len(rewards)`` rewards of the chunk (lookback untouched).

    A finalized (numpy) reward buffer may be a view into a replay buffer's stored
    episode (``EpisodeReplayBuffer`` slices without copying): it is never written;
    the episode gets a new array, so relabeling a sample never changes the stored
    env rewards.
    """
    buf = episode.rewards
    data = buf.data
    if isinstance(data, np.ndarray):
        # Written directly: InfiniteLookbackBuffer.set would check each value against
        # the reward space one scalar at a time (and warn about casting each).
        dtype = reward_dtype(data.dtype)
        if buf.lookback == 0 and len(data) == len(rewards):
            # The chunk is the whole buffer (replay samples): the rewards become it.
            buf.data = rewards.astype(dtype, copy=False)
        else:
            data = data.astype(dtype, copy=True)
            data[buf.lookback : buf.lookback + len(rewards)] = rewards
            buf.data = data
    else:
        episode.set_rewards(new_data=rewards.tolist(), at_indices=slice(0, len(rewards)))
