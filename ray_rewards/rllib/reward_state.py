"""The driver's copy of the reward net, and keeping every learner's copy in step with it.

Every Learner (and every IMPALA/APPO aggregator actor) builds its own learner
pipeline, hence its own :class:`RelabelRewards` with its own copy of the net. The
algorithm's driver process keeps the reference copy here: with ``update_stats``
it merges the normalization statistics of all copies after every training
iteration and hands the merged result back to each, so that every copy, and the
net saved with a checkpoint, holds what one RunningNorm would after seeing every
relabeled transition. Checkpoints save that copy as ``<checkpoint>/reward_net.pt``
(:data:`REWARD_NET_FILE`) and restoring one pushes it to every copy.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pyarrow.fs as pafs
import torch as th
from ray.rllib.connectors.common import BatchIndividualItems, NumpyToTensor
from ray.rllib.connectors.learner import AddNextObservationsFromEpisodesToTrainBatch
from ray.rllib.core.rl_module.multi_rl_module import MultiRLModule
from ray.rllib.env import INPUT_ENV_SINGLE_SPACES

from ray_rewards import file_format, networks, storage
from ray_rewards.inspect import format_chain
from ray_rewards.reward_nets import RewardNet
from ray_rewards.rllib._compat import aggregator_actors, config_learner_connector, learner_pipeline
from ray_rewards.rllib.learner_connector import LearnedRewardConnector
from ray_rewards.rllib.relabel_connector import (
    RelabelRewards,
    find_relabel_pieces,
    numpy_state_dict,
)
from ray_rewards.stats import Moments

if TYPE_CHECKING:
    from ray.rllib.algorithms.algorithm import Algorithm

REWARD_NET_FILE = storage.NET_FILE
OPTIMIZER_FILE = "discriminator_optimizer.pt"
_STATE_ATTR = "_ray_rewards_learned_reward"


class LearnedRewardState:
    """The reference copy of the net for one algorithm, and the options it runs with."""

    def __init__(self, connector: LearnedRewardConnector):
        self.connector = connector
        self.net: RewardNet = connector.load_net()
        self.adversarial = connector.adversarial is not None
        # A discriminator's input statistics move on every learner as it trains.
        self.update_stats: bool = bool(connector.options.get("update_stats", False)) or (
            self.adversarial and bool(networks.norm_moments(self.net))
        )
        self.optimizer_state: dict[str, Any] | None = None

    def check(self, algorithm: Algorithm) -> None:
        """ValueError unless the net fits the algorithm: the env's (single) spaces, and
        action handling still as it was when ``with_learned_reward`` read the config.
        """
        config = algorithm.config
        if self.connector.env_actions and (
            self.connector.options["normalize_actions"] != bool(config.normalize_actions)
            or self.connector.options["clip_actions"] != bool(config.clip_actions)
        ):
            raise ValueError(
                "with_learned_reward: normalize_actions/clip_actions changed after "
                "with_learned_reward read them (it gives the net the actions the env gets); "
                "set env_runners(normalize_actions=..., clip_actions=...) before calling it"
            )
        spaces = getattr(algorithm, "spaces", None) or {}
        if INPUT_ENV_SINGLE_SPACES not in spaces:
            return
        for what, net_space, env_space in zip(
            ("observation", "action"),
            (self.net.observation_space, self.net.action_space),
            spaces[INPUT_ENV_SINGLE_SPACES],
        ):
            if net_space != env_space:
                raise ValueError(
                    f"with_learned_reward: the reward net's {what} space {net_space} does not "
                    f"match the environment's {env_space}"
                )

    def place_pieces(self, algorithm: Algorithm) -> None:
        """Set up every learner's RelabelRewards for where its episodes come from.

        One pass over the learners:

        - Off-policy learners (whose pipeline adds NEXT_OBS): the piece moves to just
          before NumpyToTensor and relabels the train batch (``from_batch``): replay
          samples are hundreds of one-step episodes, and per-episode work would cost
          more than the net. Not with recurrent modules, nor when the config's own
          learner pieces follow the relabeling (they may change episode rewards,
          which a later relabeling would overwrite).
        - Otherwise, where the learner shares its process with the sampling env runner
          (local learner, no remote env runners): the piece relabels copies
          (``copy_episodes``), since that env runner sums the rewards of the chunks
          it returned into its episode-return metrics.
        """
        runners = getattr(algorithm, "env_runner_group", None)
        shares_episodes = algorithm.learner_group.is_local and (
            runners is None or runners.num_remote_env_runners() == 0
        )
        may_move = self.connector.previous is None

        def on_learner(learner: Any) -> None:
            pipeline = learner_pipeline(learner)
            pieces = find_relabel_pieces(pipeline)
            if not pieces:
                return
            kinds = tuple(type(c) for c in pipeline.connectors)
            module = learner.module
            modules = module.values() if isinstance(module, MultiRLModule) else [module]
            batch_mode = (
                may_move
                and AddNextObservationsFromEpisodesToTrainBatch in kinds
                and BatchIndividualItems in kinds
                and NumpyToTensor in kinds
                and not any(m.is_stateful() for m in modules)
            )
            for piece in pieces:
                if batch_mode:
                    pipeline.connectors.remove(piece)
                    pipeline.insert_before(NumpyToTensor, piece)
                    piece.from_batch = True
                elif shares_episodes:
                    piece.copy_episodes = True

        _foreach_learner(algorithm, on_learner)

    def sync(self, algorithm: Algorithm) -> dict[str, Moments] | None:
        """Merge the statistics every copy added since the last sync; give all the result.

        Returns the merged moments per layer, or None when statistics are frozen.
        """
        if not self.update_stats:
            return None
        reports = _foreach_piece(algorithm, lambda piece: piece.norm_report())
        merged = networks.merge_norm_reports(networks.norm_moments(self.net), reports)
        networks.set_norm_moments(self.net, merged)
        _foreach_piece(algorithm, lambda piece: piece.absorb_norm_moments(merged))
        return merged

    def pull(self, algorithm: Algorithm) -> None:
        """GAIL/AIRL: take the trained net and its optimizer's state from the first
        learner (all learners hold the same, their gradients being averaged).
        """
        if not self.adversarial:
            return
        state = _foreach_piece(algorithm, lambda piece: piece.get_state())[0]
        self.net.load_state_dict({k: th.as_tensor(v) for k, v in state["reward_net"].items()})
        self.optimizer_state = state["optimizer"]

    def push(self, algorithm: Algorithm) -> None:
        """Load this copy's parameters and statistics (and a discriminator's optimizer
        state) into every copy.
        """
        state: dict[str, Any] = {"reward_net": numpy_state_dict(self.net)}
        if self.optimizer_state is not None:
            state["optimizer"] = self.optimizer_state
        _foreach_piece(algorithm, lambda piece: piece.set_state(state))

    def learner_moments(self, algorithm: Algorithm) -> list[dict[str, Moments]]:
        """Each copy's current normalization moments (to check they agree)."""
        return _foreach_piece(algorithm, lambda piece: networks.norm_moments(piece.reward_net))

    def save(self, path: str, filesystem: pafs.FileSystem | None = None) -> str:
        """Write the net (merged statistics included) as ``<path>/reward_net.pt``, and a
        discriminator's optimizer state as ``<path>/discriminator_optimizer.pt``.
        """
        target = f"{path.rstrip('/')}/{REWARD_NET_FILE}"
        file_format.save(self.net, target, filesystem=filesystem)
        if self.optimizer_state is not None:
            buffer = io.BytesIO()
            th.save(self.optimizer_state, buffer)
            storage.write_bytes(
                f"{path.rstrip('/')}/{OPTIMIZER_FILE}", buffer.getvalue(), filesystem=filesystem
            )
        return target

    def restore(
        self, algorithm: Algorithm, path: str, filesystem: pafs.FileSystem | None = None
    ) -> bool:
        """Load ``<path>/reward_net.pt`` (if there is one) here and into every copy."""
        target = f"{path.rstrip('/')}/{REWARD_NET_FILE}"
        try:
            net = file_format.load(target, device="cpu", filesystem=filesystem)
        except FileNotFoundError:
            return False
        if type(net) is not type(self.net):
            raise TypeError(
                f"{target}: holds a {format_chain(net)}, but the algorithm relabels "
                f"with a {format_chain(self.net)}"
            )
        self.net = net
        if self.adversarial:
            data = storage.read_bytes(f"{path.rstrip('/')}/{OPTIMIZER_FILE}", filesystem=filesystem)
            self.optimizer_state = th.load(io.BytesIO(data), weights_only=True)
        self.push(algorithm)
        return True


def state_of(algorithm: Algorithm) -> LearnedRewardState:
    """The algorithm's LearnedRewardState, created on first use from its config."""
    state = getattr(algorithm, _STATE_ATTR, None)
    if state is None:
        connector = config_learner_connector(algorithm.config)
        if not isinstance(connector, LearnedRewardConnector):
            raise ValueError(
                "this algorithm's config has no learned reward: its learner_connector is "
                f"{connector!r}. Build it from ray_rewards.rllib.with_learned_reward(config, "
                "...), and set no learner_connector on the config afterwards (pass yours "
                "before calling with_learned_reward; it is kept)."
            )
        state = LearnedRewardState(connector)
        setattr(algorithm, _STATE_ATTR, state)
    return state


def _foreach_piece(algorithm: Algorithm, fn: Callable[[RelabelRewards], Any]) -> list[Any]:
    """``fn(piece)`` for every RelabelRewards of every Learner and aggregator actor."""

    def on_learner(learner: Any) -> list[Any]:
        return [fn(p) for p in find_relabel_pieces(learner_pipeline(learner))]

    results = [r for per_learner in _foreach_learner(algorithm, on_learner) for r in per_learner]
    aggregators = aggregator_actors(algorithm)
    if aggregators is not None:
        for result in aggregators.foreach_actor(on_learner):
            if not result.ok:
                raise result.get()
            results.extend(result.get())
    return results


def _foreach_learner(algorithm: Algorithm, fn: Callable[[Any], Any]) -> list[Any]:
    """``fn(learner)`` on every Learner (local or remote); a learner's error is raised."""
    results = []
    for result in algorithm.learner_group.foreach_learner(fn):
        if not result.ok:
            raise result.get()
        results.append(result.get())
    return results
