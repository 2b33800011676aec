"""``RelabelRewards``: the learner-connector piece that writes a reward net's rewards into
RLlib episodes.

RLlib's learner pipeline turns the episodes that env runners (or a replay buffer)
deliver into a train batch: custom pieces run first, then RLlib's own pieces copy
observations, actions and rewards from the episodes into the batch, and algorithms
such as PPO finish with advantage estimation. ``RelabelRewards`` sits at the front
of that pipeline and overwrites each episode chunk's rewards with the net's
``predict_processed`` reward, so everything after it (returns, GAE, TD targets)
sees the learned reward.

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
  masked out of the loss). That step is not a transition: it keeps its 0 reward.

Off-policy learners get a replay sample of hundreds of one-step episodes, where
per-episode work would cost more than the net: there the piece sits just before
``NumpyToTensor`` instead and relabels the train batch's columns
(``from_batch``), the same transitions in one vectorized pass.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import torch as th
from ray.rllib.connectors.connector_pipeline_v2 import ConnectorPipelineV2
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.multi_rl_module import MultiRLModule
from ray.rllib.core.rl_module.rl_module import RLModule
from ray.rllib.env.multi_agent_episode import MultiAgentEpisode
from ray.rllib.env.single_agent_episode import SingleAgentEpisode
from ray.rllib.utils.metrics import ALL_MODULES
from ray.rllib.utils.metrics.metrics_logger import MetricsLogger
from ray.rllib.utils.spaces.space_utils import (
    clip_action,
    get_base_struct_from_space,
    unsquash_action,
)

from ray_rewards import networks
from ray_rewards.reward_nets import NormalizedRewardNet, RewardNet
from ray_rewards.stats import Moments

Mode = Literal["replace", "add"]
MODES: tuple[str, ...] = ("replace", "add")

# Where the learner logs what it relabeled: results["learners"][ALL_MODULES][LEARNED_REWARD].
LEARNED_REWARD = "learned_reward"

# What from_batch reads from each module's train batch.
_BATCH_COLUMNS = (
    Columns.OBS,
    Columns.ACTIONS,
    Columns.NEXT_OBS,
    Columns.TERMINATEDS,
    Columns.REWARDS,
)

# Set by RLlib's AddOneTsToEpisodesAndTruncate once it has appended the artificial
# bootstrap step to every episode in this pipeline call.
_BOOTSTRAP_STEP_ADDED = "_added_loss_mask_for_valid_episode_ts"


class RelabelRewards(ConnectorV2):
    """Learner-connector piece: episode rewards from a reward net, one forward pass per call.

    Each call gathers the transitions of every episode chunk it is given, runs
    ``reward_net.predict_processed`` once over all of them on the learner's device
    (the RLModule's; CUDA when the learner has a GPU), and writes the result into
    the episodes' rewards, which the rest of the pipeline turns into the train batch.

    Args:
        reward_net: the net; moved to the RLModule's device on the first call.
        mode: ``"replace"``: reward = ``coef * r_net``; ``"add"``: reward =
            ``r_env + coef * r_net``.
        coef: scale of the net's reward.
        update_stats: passed to ``predict_processed`` of nets with a
            :class:`~ray_rewards.reward_nets.NormalizedRewardNet`: normalize, then
            update the running statistics with this call's rewards (ValueError when
            the net has no NormalizedRewardNet). With several learners, keep the
            copies in step with :func:`ray_rewards.rllib.with_learned_reward`, which
            merges them every iteration.
        normalize_actions, clip_actions: set these like the algorithm config's
            ``env_runners(normalize_actions=..., clip_actions=...)``: episodes hold
            the RLModule's actions, and the net is then given the actions the env
            received (unsquashed to the action space's bounds and clipped, or only
            clipped), as ``imitation``'s reward wrappers give it. Both False: the
            net sees the RLModule's raw actions.
        predict_kwargs: further keyword arguments of ``predict_processed`` (e.g.
            ``alpha`` for an AddSTDRewardWrapper).
        from_batch: relabel the train batch instead of the episodes: each module's
            REWARDS column from its OBS, ACTIONS, NEXT_OBS and TERMINATEDS columns,
            one vectorized pass with no per-episode work. For a piece placed after
            RLlib's BatchIndividualItems in an off-policy learner pipeline (SAC,
            DQN, ... add NEXT_OBS), where one-step replay episodes make per-episode
            work the main cost. Algorithms built by
            :func:`~ray_rewards.rllib.with_learned_reward` place it so themselves
            where that applies.
        copy_episodes: relabel copies (see :func:`detach_rewards`) put in the place of
            the episodes in the call's list, and leave the objects the caller holds
            as they were. Needed where the learner runs in the process of the env
            runner that sampled the episodes (``num_env_runners=0`` with a local
            learner): that env runner keeps the chunks it returned and sums their
            rewards into its ``episode_return_mean`` when the episode ends.
            Algorithms built by :func:`~ray_rewards.rllib.with_learned_reward` turn
            it on there by themselves.

    Off-policy algorithms: the replay buffer's episodes must be one-step
    transitions (``n_step=1``); an n-step sample holds a discounted reward sum
    over a transition the net never saw, and raises ValueError here.

    Metrics (when the pipeline has a MetricsLogger, as on a Learner): under
    ``(ALL_MODULES, "learned_reward")`` the ``mean``/``min``/``max`` of the net's
    processed reward, ``env_reward_mean`` (the episodes' rewards before
    relabeling) and ``num_transitions``.
    """

    def __init__(
        self,
        reward_net: RewardNet,
        *,
        mode: Mode = "replace",
        coef: float = 1.0,
        update_stats: bool = False,
        normalize_actions: bool = False,
        clip_actions: bool = False,
        predict_kwargs: Mapping[str, Any] | None = None,
        from_batch: bool = False,
        copy_episodes: bool = False,
        input_observation_space: Any = None,
        input_action_space: Any = None,
        **kwargs: Any,
    ):
        super().__init__(input_observation_space, input_action_space, **kwargs)
        if not isinstance(reward_net, RewardNet):
            raise TypeError(
                f"RelabelRewards: expected a ray_rewards RewardNet, got {type(reward_net).__name__}"
            )
        coef = check_mode_and_coef(mode, coef, "RelabelRewards")
        normalized = any(isinstance(m, NormalizedRewardNet) for m in reward_net.modules())
        if update_stats and not normalized:
            raise ValueError(
                "RelabelRewards: update_stats=True needs a net with a NormalizedRewardNet, "
                f"got {type(reward_net).__name__} without one"
            )
        self.reward_net = reward_net
        self.mode = mode
        self.coef = coef
        self.update_stats = bool(update_stats)
        self.normalize_actions = bool(normalize_actions)
        self.clip_actions = bool(clip_actions)
        self.from_batch = bool(from_batch)
        self.copy_episodes = bool(copy_episodes)
        self._predict_kwargs = dict(predict_kwargs or {})
        if normalized:
            # Nets without a NormalizedRewardNet need not accept the keyword.
            self._predict_kwargs["update_stats"] = self.update_stats
        self._action_struct = get_base_struct_from_space(reward_net.action_space)
        # Normalization statistics at the last merge across copies, and as last
        # reported (see norm_report / absorb_norm_moments).
        self._synced_moments = networks.norm_moments(reward_net)
        self._reported_moments = self._synced_moments

    def __call__(
        self,
        *,
        rl_module: RLModule | None,
        batch: dict[str, Any],
        episodes: list[Any],
        explore: bool | None = None,
        shared_data: dict | None = None,
        metrics: MetricsLogger | None = None,
        **kwargs: Any,
    ) -> Any:
        """Relabel the rewards of every chunk in ``episodes`` in place (or, with
        ``from_batch``, the batch's reward column); returns the batch.
        """
        if self.from_batch:
            return self._relabel_batch(rl_module, batch, metrics)
        bootstrap_step = bool(shared_data and shared_data.get(_BOOTSTRAP_STEP_ADDED))
        if self.copy_episodes:
            detach_rewards(episodes)
        chunks = [
            (e, len(e) - bootstrap_step)
            for e in self.single_agent_episode_iterator(episodes, agents_that_stepped_only=False)
        ]
        chunks = [(e, n) for e, n in chunks if n > 0]
        if not chunks:
            return batch
        self._move_to(_module_device(rl_module))
        state, action, next_state, done = episode_transitions(
            chunks, self._action_struct, self.normalize_actions, self.clip_actions
        )
        learned = self._predict(state, action, next_state, done)
        env_rewards = write_rewards(chunks, learned, self.mode, self.coef)
        self._log(metrics, learned, env_rewards)
        return batch

    def _relabel_batch(
        self, rl_module: RLModule | None, batch: dict[str, Any], metrics: MetricsLogger | None
    ) -> dict[str, Any]:
        """``from_batch``: each module's REWARDS column from its OBS, ACTIONS, NEXT_OBS
        and TERMINATEDS columns (numpy, one row per transition).
        """
        self._move_to(_module_device(rl_module))
        for module_id, columns in batch.items():
            missing = [c for c in _BATCH_COLUMNS if c not in columns]
            if missing:
                raise ValueError(
                    f"RelabelRewards(from_batch=True): module {module_id!r}'s batch lacks "
                    f"{missing}; place the piece after RLlib's BatchIndividualItems in a "
                    "pipeline that adds next observations (off-policy learners)"
                )
            env_rewards = np.asarray(columns[Columns.REWARDS], dtype=np.float64)
            if not len(env_rewards):
                continue
            learned = self._predict(
                columns[Columns.OBS],
                env_actions(
                    columns[Columns.ACTIONS],
                    self._action_struct,
                    self.normalize_actions,
                    self.clip_actions,
                ),
                columns[Columns.NEXT_OBS],
                np.asarray(columns[Columns.TERMINATEDS], dtype=np.float32),
            )
            new = self.coef * learned.astype(np.float64)
            if self.mode == "add":
                new += env_rewards
            columns[Columns.REWARDS] = new.astype(_reward_dtype(columns[Columns.REWARDS].dtype))
            self._log(metrics, learned, env_rewards)
        return batch

    @staticmethod
    def _log(metrics: MetricsLogger | None, learned: np.ndarray, env_rewards: np.ndarray) -> None:
        if metrics is None:
            return
        key = (ALL_MODULES, LEARNED_REWARD)
        metrics.log_value((*key, "mean"), float(learned.mean()), reduce="mean")
        metrics.log_value((*key, "min"), float(learned.min()), reduce="min")
        metrics.log_value((*key, "max"), float(learned.max()), reduce="max")
        metrics.log_value((*key, "env_reward_mean"), float(env_rewards.mean()), reduce="mean")
        metrics.log_value((*key, "num_transitions"), len(learned), reduce="sum")

    def _predict(
        self, state: np.ndarray, action: np.ndarray, next_state: np.ndarray, done: np.ndarray
    ) -> np.ndarray:
        kwargs = self._predict_kwargs
        learned = np.asarray(
            self.reward_net.predict_processed(state, action, next_state, done, **kwargs)
        )
        if learned.shape != (len(done),):
            raise ValueError(
                f"RelabelRewards: {type(self.reward_net).__name__}.predict_processed returned "
                f"shape {learned.shape}, expected ({len(done)},)"
            )
        if not np.all(np.isfinite(learned)):
            raise ValueError(
                f"RelabelRewards: {type(self.reward_net).__name__}.predict_processed returned "
                f"{int(np.sum(~np.isfinite(learned)))} non-finite rewards of {len(learned)}"
            )
        return learned

    def _move_to(self, device: th.device | None) -> None:
        if device is not None and self.reward_net.device != device:
            self.reward_net.to(device)

    # ----------------------------------------------------------------------------------
    # Keeping several copies of the net in step (driven by ray_rewards.rllib.with_learned_reward)
    # ----------------------------------------------------------------------------------

    def norm_report(self) -> dict[str, Moments]:
        """Per normalization layer, the moments of the data added since the last merge.

        Remembers what it reported, so :meth:`absorb_norm_moments` keeps data that
        arrives between the report and the merge.
        """
        current = networks.norm_moments(self.reward_net)
        self._reported_moments = current
        return {name: m.subtract(self._synced_moments[name]) for name, m in current.items()}

    def absorb_norm_moments(self, merged: Mapping[str, Moments]) -> None:
        """Take the statistics merged over all copies (plus anything added since reporting)."""
        current = networks.norm_moments(self.reward_net)
        new = {
            name: m.merge(current[name].subtract(self._reported_moments[name]))
            for name, m in merged.items()
        }
        networks.set_norm_moments(self.reward_net, new)
        self._synced_moments = dict(merged)
        self._reported_moments = dict(merged)

    def get_state(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The net's parameters and buffers as numpy arrays (plain data, no module)."""
        return {"reward_net": numpy_state_dict(self.reward_net)}

    def set_state(self, state: dict[str, Any]) -> None:
        """Load :meth:`get_state`'s output into the net; it becomes the merged baseline."""
        if "reward_net" not in state:
            return
        device = self.reward_net.device
        self.reward_net.load_state_dict(
            {k: th.as_tensor(np.asarray(v), device=device) for k, v in state["reward_net"].items()}
        )
        self._synced_moments = networks.norm_moments(self.reward_net)
        self._reported_moments = self._synced_moments


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
    new = coef * learned.astype(np.float64)
    if mode == "add":
        new += env_rewards
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


def find_relabel_pieces(connector: ConnectorV2 | None) -> list[RelabelRewards]:
    """Every RelabelRewards in ``connector`` (a piece or a pipeline, nested pipelines too)."""
    if isinstance(connector, RelabelRewards):
        return [connector]
    if isinstance(connector, ConnectorPipelineV2):
        return [p for c in connector.connectors for p in find_relabel_pieces(c)]
    return []


def numpy_state_dict(net: th.nn.Module) -> dict[str, np.ndarray]:
    """``net.state_dict()`` as numpy arrays on the CPU: plain data that ships cheaply."""
    return {k: v.detach().cpu().numpy() for k, v in net.state_dict().items()}


def _module_device(rl_module: RLModule | None) -> th.device | None:
    """Device of the RLModule's first parameter (None without torch parameters)."""
    modules = rl_module.values() if isinstance(rl_module, MultiRLModule) else [rl_module]
    for module in modules:
        if isinstance(module, th.nn.Module):
            for p in module.parameters():
                return p.device
    return None


@functools.cache
def _reward_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype a relabeled reward buffer keeps: its own, at least float32."""
    return np.result_type(dtype, np.float32)


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
        dtype = _reward_dtype(data.dtype)
        if buf.lookback == 0 and len(data) == len(rewards):
            # The chunk is the whole buffer (replay samples): the rewards become it.
            buf.data = rewards.astype(dtype, copy=False)
        else:
            data = data.astype(dtype, copy=True)
            data[buf.lookback : buf.lookback + len(rewards)] = rewards
            buf.data = data
    else:
        episode.set_rewards(new_data=rewards.tolist(), at_indices=slice(0, len(rewards)))
