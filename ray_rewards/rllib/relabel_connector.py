"""``RelabelRewards``: the learner-connector piece that writes a reward net's rewards into
RLlib episodes.

RLlib's learner pipeline turns the episodes that env runners (or a replay buffer)
deliver into a train batch: custom pieces run first, then RLlib's own pieces copy
observations, actions and rewards from the episodes into the batch, and algorithms
such as PPO finish with advantage estimation. ``RelabelRewards`` sits at the front
of that pipeline and overwrites each episode chunk's rewards with the net's
``predict_processed`` reward, so everything after it (returns, GAE, TD targets)
sees the learned reward.

Which steps of a chunk are transitions (the lookback and an artificial bootstrap
step are not) is written down in :mod:`ray_rewards.rllib.episodes`, which gathers
them and writes the rewards back.

Multi-agent: one piece per reward net. Each relabels the agents whose RLModule it
serves (``module_ids``, or every module whose spaces it fits), all agents of all
episodes in one forward pass; each agent's transitions, done flags included, are
its own. Agents of other modules keep their rewards.

Off-policy learners get a replay sample of hundreds of one-step episodes, where
per-episode work would cost more than the net: there the piece sits just before
``NumpyToTensor`` instead and relabels the train batch's columns
(``from_batch``), the same transitions in one vectorized pass.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import numpy as np
import torch as th
from ray.rllib.connectors.connector_pipeline_v2 import ConnectorPipelineV2
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.multi_rl_module import MultiRLModule
from ray.rllib.core.rl_module.rl_module import RLModule
from ray.rllib.utils.metrics import ALL_MODULES
from ray.rllib.utils.metrics.metrics_logger import MetricsLogger
from ray.rllib.utils.spaces.space_utils import get_base_struct_from_space

from ray_rewards import networks, preprocessing
from ray_rewards.reward_nets import NormalizedRewardNet, RewardNet
from ray_rewards.rllib._compat import BOOTSTRAP_STEP_ADDED
from ray_rewards.rllib.episodes import (
    Mode,
    check_mode_and_coef,
    detach_rewards,
    env_actions,
    episode_transitions,
    new_rewards,
    reward_dtype,
    write_rewards,
)
from ray_rewards.stats import Moments

# Where the learner logs what it relabeled: results["learners"][ALL_MODULES][LEARNED_REWARD]
# (and, multi-agent, results["learners"][<module id>][LEARNED_REWARD]).
LEARNED_REWARD = "learned_reward"
# The key of the one net of a single-agent config, or of one net shared by all modules.
SHARED_NET = "shared"

# What from_batch reads from each module's train batch.
_BATCH_COLUMNS = (
    Columns.OBS,
    Columns.ACTIONS,
    Columns.NEXT_OBS,
    Columns.TERMINATEDS,
    Columns.REWARDS,
)


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
        copy_episodes: relabel copies (see
            :func:`~ray_rewards.rllib.episodes.detach_rewards`) put in the place of the
            episodes in the call's list, and leave the objects the caller holds as
            they were. Needed where the learner runs in the process of the env
            runner that sampled the episodes (``num_env_runners=0`` with a local
            learner): that env runner keeps the chunks it returned and sums their
            rewards into its ``episode_return_mean`` when the episode ends.
            Algorithms built by :func:`~ray_rewards.rllib.with_learned_reward` turn
            it on there by themselves.

        on_non_finite: what to do with transitions whose observations or actions
            hold NaN or inf: ``"skip"`` (default) gives them reward 0, keeps them out
            of the net and its statistics, and counts them in the metrics, so one bad
            env step does not stop a cluster run; ``"raise"`` fails the update.
        multi_agent: the episodes are multi-agent: relabel only the agents of the
            modules this net serves (``module_ids``), and log per module too.
        module_ids: the RLModule IDs whose agents this net relabels; None: every
            module whose observation and action spaces equal the net's.
        net_key: which of the algorithm's nets this is (:data:`SHARED_NET` for the
            only one), for merging statistics and checkpoints per net.

    Off-policy algorithms: the replay buffer's episodes must be one-step
    transitions (``n_step=1``); an n-step sample holds a discounted reward sum
    over a transition the net never saw, and raises ValueError here.

    Metrics (when the pipeline has a MetricsLogger, as on a Learner): under
    ``(ALL_MODULES, "learned_reward")`` the ``mean``/``min``/``max`` of the net's
    processed reward, ``env_reward_mean`` (the episodes' rewards before
    relabeling), ``num_transitions`` and ``num_non_finite`` (transitions skipped);
    multi-agent, the same under ``(<module id>, "learned_reward")`` per module.
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
        on_non_finite: str = "skip",
        multi_agent: bool = False,
        module_ids: Collection[str] | None = None,
        net_key: str = SHARED_NET,
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
        if on_non_finite not in ("skip", "raise"):
            raise ValueError(
                f'RelabelRewards: on_non_finite must be "skip" or "raise", got {on_non_finite!r}'
            )
        self.on_non_finite = on_non_finite
        self._predict_kwargs = dict(predict_kwargs or {})
        if normalized:
            # Nets without a NormalizedRewardNet need not accept the keyword.
            self._predict_kwargs["update_stats"] = self.update_stats
        self._action_struct = get_base_struct_from_space(reward_net.action_space)
        self.norm_sync = networks.NormSync(reward_net)
        self.multi_agent = bool(multi_agent)
        self.module_ids = None if module_ids is None else frozenset(module_ids)
        self.net_key = net_key
        self._fits: dict[Any, bool] = {}  # module id -> the shared net fits its spaces

    def relabels(self, module_id: Any, rl_module: RLModule | None) -> bool:
        """Whether this piece relabels the agents of module ``module_id``: all of them
        single-agent; multi-agent, those of its ``module_ids``, or (a shared net)
        those of the modules whose spaces equal the net's.
        """
        if not self.multi_agent:
            return True
        if self.module_ids is not None:
            return module_id in self.module_ids
        if module_id not in self._fits:
            module = rl_module[module_id] if isinstance(rl_module, MultiRLModule) else None
            self._fits[module_id] = module is not None and (
                module.observation_space == self.reward_net.observation_space
                and module.action_space == self.reward_net.action_space
            )
        return self._fits[module_id]

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
        bootstrap_step = bool(shared_data and shared_data.get(BOOTSTRAP_STEP_ADDED))
        if self.copy_episodes:
            detach_rewards(episodes)
        # Each agent's own chunk (its own next observation and done), for this net.
        chunks = [
            (e, len(e) - bootstrap_step)
            for e in self.single_agent_episode_iterator(episodes, agents_that_stepped_only=False)
            if self.relabels(e.module_id, rl_module)
        ]
        chunks = [(e, n) for e, n in chunks if n > 0]
        if not chunks:
            return batch
        self._move_to(_module_device(rl_module))
        state, action, next_state, done = episode_transitions(
            chunks, self._action_struct, self.normalize_actions, self.clip_actions
        )
        learned, skipped = self._predict(state, action, next_state, done)
        env_rewards = write_rewards(chunks, learned, self.mode, self.coef)
        modules = [e.module_id for e, _ in chunks] if self.multi_agent else None
        rows = [n for _, n in chunks]
        self._log(metrics, learned, env_rewards, skipped, modules, rows)
        return batch

    def _relabel_batch(
        self, rl_module: RLModule | None, batch: dict[str, Any], metrics: MetricsLogger | None
    ) -> dict[str, Any]:
        """``from_batch``: the REWARDS column of each module this net serves, from its
        OBS, ACTIONS, NEXT_OBS and TERMINATEDS columns (numpy, one row per
        transition); every module's rows in one forward pass.
        """
        modules = []
        for module_id, columns in batch.items():
            if not self.relabels(module_id, rl_module):
                continue
            missing = [c for c in _BATCH_COLUMNS if c not in columns]
            if missing:
                raise ValueError(
                    f"RelabelRewards(from_batch=True): module {module_id!r}'s batch lacks "
                    f"{missing}; place the piece after RLlib's BatchIndividualItems in a "
                    "pipeline that adds next observations (off-policy learners)"
                )
            if len(columns[Columns.REWARDS]):
                modules.append(module_id)
        if not modules:
            return batch
        self._move_to(_module_device(rl_module))

        def column(name: str) -> np.ndarray:
            return np.concatenate([np.asarray(batch[m][name]) for m in modules])

        env_rewards = column(Columns.REWARDS).astype(np.float64)
        learned, skipped = self._predict(
            column(Columns.OBS),
            env_actions(
                column(Columns.ACTIONS),
                self._action_struct,
                self.normalize_actions,
                self.clip_actions,
            ),
            column(Columns.NEXT_OBS),
            column(Columns.TERMINATEDS).astype(np.float32),
        )
        new = new_rewards(learned, env_rewards, self.mode, self.coef)
        rows = [len(batch[m][Columns.REWARDS]) for m in modules]
        start = 0
        for module_id, n in zip(modules, rows):
            columns = batch[module_id]
            columns[Columns.REWARDS] = new[start : start + n].astype(
                reward_dtype(np.asarray(columns[Columns.REWARDS]).dtype)
            )
            start += n
        self._log(
            metrics, learned, env_rewards, skipped, modules if self.multi_agent else None, rows
        )
        return batch

    @staticmethod
    def _log(
        metrics: MetricsLogger | None,
        learned: np.ndarray,
        env_rewards: np.ndarray,
        skipped: np.ndarray,
        modules: list[Any] | None = None,
        rows: list[int] | None = None,
    ) -> None:
        """Log the call's statistics under ALL_MODULES and, given ``modules`` (one per
        group of ``rows`` consecutive transitions), under each module as well.
        """
        if metrics is None:
            return
        parts: list[tuple[Any, Any]] = [(ALL_MODULES, slice(None))]
        if modules is not None and rows is not None:
            row_module = np.repeat(np.array(modules, dtype=object), rows)
            parts += [(m, row_module == m) for m in dict.fromkeys(modules)]
        for module_id, index in parts:
            key = (module_id, LEARNED_REWARD)
            values, env = learned[index], env_rewards[index]
            metrics.log_value((*key, "num_non_finite"), int(skipped[index].sum()), reduce="sum")
            metrics.log_value((*key, "mean"), float(values.mean()), reduce="mean")
            metrics.log_value((*key, "min"), float(values.min()), reduce="min")
            metrics.log_value((*key, "max"), float(values.max()), reduce="max")
            metrics.log_value((*key, "env_reward_mean"), float(env.mean()), reduce="mean")
            metrics.log_value((*key, "num_transitions"), len(values), reduce="sum")

    def _predict(
        self, state: np.ndarray, action: np.ndarray, next_state: np.ndarray, done: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The net's rewards for every transition, and which had non-finite inputs
        (a boolean mask).

        Those transitions (an env that emitted NaN or inf) get reward 0 and never reach
        the net or its statistics, unless ``on_non_finite="raise"``.
        """
        bad = sorted(
            {
                row
                for arr in (state, action, next_state)
                if np.asarray(arr).dtype.kind == "f"
                for row in preprocessing.non_finite_rows(np.asarray(arr))
            }
        )
        skipped = np.zeros(len(done), dtype=bool)
        if not bad:
            return self._predict_rows(state, action, next_state, done), skipped
        if self.on_non_finite == "raise":
            raise ValueError(
                f"RelabelRewards: {len(bad)} of {len(done)} transitions have NaN or inf "
                f"observations or actions (rows {preprocessing.format_rows(bad)}); "
                'pass on_non_finite="skip" to give them reward 0 and go on'
            )
        skipped[bad] = True
        finite = ~skipped
        learned = np.zeros(len(done), dtype=np.float32)
        if finite.any():
            learned[finite] = self._predict_rows(
                state[finite], action[finite], next_state[finite], done[finite]
            )
        return learned, skipped

    def _predict_rows(
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
        """Per normalization layer, the moments of the data added since the last merge
        (:meth:`ray_rewards.networks.NormSync.report`).
        """
        return self.norm_sync.report()

    def absorb_norm_moments(self, merged: dict[str, Moments]) -> None:
        """Take the statistics merged over all copies, plus anything added since reporting
        (:meth:`ray_rewards.networks.NormSync.absorb`).
        """
        self.norm_sync.absorb(merged)

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
        self.norm_sync.reset()


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
