"""The driver's copy of the reward net, and keeping every learner's copy in step with it.

Every Learner (and every IMPALA/APPO aggregator actor) builds its own learner
pipeline, hence its own :class:`RelabelRewards` with its own copy of the net. The
algorithm's driver process keeps the reference copy here: with ``update_stats``
it merges the normalization statistics of all copies after every training
iteration and hands the merged result back to each, so that every copy, and the
net saved with a checkpoint, holds what one RunningNorm would after seeing every
relabeled transition. Checkpoints save that copy as ``<checkpoint>/reward_net.pt``
(:data:`REWARD_NET_FILE`) and restoring one pushes it to every copy.

Multi-agent configs may relabel with several nets (one per group of RLModules): each
is kept, merged and pushed by its key, and checkpoints hold one file per net under
``<checkpoint>/reward_nets/`` (:data:`REWARD_NETS_DIR`) with an ``index.json`` that
maps module IDs to files.
"""

from __future__ import annotations

import io
import json
import re
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
    SHARED_NET,
    RelabelRewards,
    find_relabel_pieces,
    numpy_state_dict,
)
from ray_rewards.stats import Moments

if TYPE_CHECKING:
    from ray.rllib.algorithms.algorithm import Algorithm

REWARD_NET_FILE = storage.NET_FILE
REWARD_NETS_DIR = "reward_nets"
INDEX_FILE = "index.json"
OPTIMIZER_FILE = "discriminator_optimizer.pt"
_STATE_ATTR = "_ray_rewards_learned_reward"


class LearnedRewardState:
    """The reference copies of the nets for one algorithm, and the options they run with."""

    def __init__(self, connector: LearnedRewardConnector):
        self.connector = connector
        self.nets: dict[str, RewardNet] = connector.load_nets()
        self.adversarial = connector.adversarial is not None
        # A discriminator's input statistics move on every learner as it trains.
        self.update_stats: bool = bool(connector.options.get("update_stats", False)) or (
            self.adversarial and bool(networks.norm_moments(self.net))
        )
        self.optimizer_state: dict[str, Any] | None = None
        # Multi-agent: module id -> key of the net relabeling it (None: the env's reward).
        self.routing: dict[str, str | None] = {}

    @property
    def net(self) -> RewardNet:
        """The net (of a config with one; multi-agent configs with several: :attr:`nets`)."""
        if len(self.nets) != 1:
            raise ValueError(
                f"this algorithm relabels with {len(self.nets)} nets ({sorted(self.nets)}): "
                "use .nets[key]"
            )
        return next(iter(self.nets.values()))

    @net.setter
    def net(self, net: RewardNet) -> None:
        (key,) = self.nets
        self.nets[key] = net

    def check(self, algorithm: Algorithm) -> None:
        """ValueError unless the nets fit the algorithm: the env's (single) spaces, or
        multi-agent each module's; and action handling still as it was when
        ``with_learned_reward`` read the config.
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
        if self.connector.multi_agent:
            self._route(algorithm)
            return
        spaces = getattr(algorithm, "spaces", None) or {}
        if INPUT_ENV_SINGLE_SPACES not in spaces:
            return
        _check_spaces(self.net, spaces[INPUT_ENV_SINGLE_SPACES], "the environment's")

    def _route(self, algorithm: Algorithm) -> None:
        """Multi-agent: check each net against the spaces of the modules it serves (as
        the learners built them) and record which net relabels which module.
        """
        module_spaces = _foreach_learner(
            algorithm,
            lambda learner: {
                mid: (m.observation_space, m.action_space) for mid, m in learner.module.items()
            },
        )[0]
        routing: dict[str, str | None] = dict.fromkeys(module_spaces)
        for key, module_ids in (self.connector.modules or {}).items():
            net = self.nets[key]
            if module_ids is None:  # a shared net: every module it fits
                fits = [m for m, sp in module_spaces.items() if _fits(net, sp)]
                if not fits:
                    raise ValueError(
                        f"with_learned_reward: the reward net (observation space "
                        f"{net.observation_space}, action space {net.action_space}) fits none "
                        f"of the modules: {_describe(module_spaces)}"
                    )
                routing.update(dict.fromkeys(fits, key))
                continue
            for mid in module_ids:
                if mid not in module_spaces:
                    raise ValueError(
                        f"with_learned_reward: no RLModule {mid!r}; the algorithm has "
                        f"{sorted(module_spaces)}"
                    )
                _check_spaces(net, module_spaces[mid], f"module {mid!r}'s")
                routing[mid] = key
        left = sorted(m for m, key in routing.items() if key is None)
        if left and self.connector.unmatched_modules == "raise":
            raise ValueError(
                f"with_learned_reward: no reward net for modules {left} "
                '(unmatched_modules="raise"); map them, or let them keep the env reward '
                'with unmatched_modules="env_reward"'
            )
        self.routing = routing

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

        Returns the merged moments per layer (several nets: per ``"<key>/<layer>"``),
        or None when statistics are frozen.
        """
        if not self.update_stats:
            return None
        reports = _foreach_piece(algorithm, lambda piece: (piece.net_key, piece.norm_report()))
        merged: dict[str, dict[str, Moments]] = {}
        for key, net in self.nets.items():
            own = [report for k, report in reports if k == key]
            merged[key] = networks.merge_norm_reports(networks.norm_moments(net), own)
            networks.set_norm_moments(net, merged[key])
        _foreach_piece(algorithm, lambda piece: piece.absorb_norm_moments(merged[piece.net_key]))
        if len(merged) == 1:
            return next(iter(merged.values()))
        return {f"{key}/{layer}": m for key, per in merged.items() for layer, m in per.items()}

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
        """Load these copies' parameters and statistics (and a discriminator's optimizer
        state) into every learner's copy of the same net.
        """
        states: dict[str, dict[str, Any]] = {}
        for key, net in self.nets.items():
            states[key] = {"reward_net": numpy_state_dict(net)}
            if self.optimizer_state is not None:
                states[key]["optimizer"] = self.optimizer_state
        _foreach_piece(algorithm, lambda piece: piece.set_state(states[piece.net_key]))

    def learner_moments(
        self, algorithm: Algorithm, key: str | None = None
    ) -> list[dict[str, Moments]]:
        """Each learner copy's current normalization moments of net ``key`` (default:
        the only net), to check they agree.
        """
        if key is None:
            if len(self.nets) != 1:
                raise ValueError(f"learner_moments: name the net, one of {sorted(self.nets)}")
            key = next(iter(self.nets))
        return [
            moments
            for k, moments in _foreach_piece(
                algorithm, lambda piece: (piece.net_key, networks.norm_moments(piece.reward_net))
            )
            if k == key
        ]

    def save(self, path: str, filesystem: pafs.FileSystem | None = None) -> str:
        """Write the net (merged statistics included) as ``<path>/reward_net.pt`` (several
        nets: ``<path>/reward_nets/<key>.pt`` and ``index.json``), and a
        discriminator's optimizer state as ``<path>/discriminator_optimizer.pt``.
        Returns the net's file (several: the index).
        """
        root = path.rstrip("/")
        if len(self.nets) == 1:
            target = f"{root}/{REWARD_NET_FILE}"
            file_format.save(self.net, target, filesystem=filesystem)
        else:
            files = {key: f"{_file_name(key)}.pt" for key in self.nets}
            for key, net in self.nets.items():
                file_format.save(
                    net, f"{root}/{REWARD_NETS_DIR}/{files[key]}", filesystem=filesystem
                )
            index = {"files": files, "modules": self.routing}
            target = f"{root}/{REWARD_NETS_DIR}/{INDEX_FILE}"
            storage.write_bytes(target, json.dumps(index, indent=1).encode(), filesystem=filesystem)
        if self.optimizer_state is not None:
            buffer = io.BytesIO()
            th.save(self.optimizer_state, buffer)
            storage.write_bytes(
                f"{root}/{OPTIMIZER_FILE}", buffer.getvalue(), filesystem=filesystem
            )
        return target

    def restore(
        self, algorithm: Algorithm, path: str, filesystem: pafs.FileSystem | None = None
    ) -> bool:
        """Load the checkpoint's net files (if there are any) here and into every copy."""
        root = path.rstrip("/")
        if len(self.nets) == 1:
            targets = {next(iter(self.nets)): f"{root}/{REWARD_NET_FILE}"}
        else:
            try:
                index = json.loads(
                    storage.read_bytes(
                        f"{root}/{REWARD_NETS_DIR}/{INDEX_FILE}", filesystem=filesystem
                    )
                )
            except FileNotFoundError:
                return False
            if sorted(index["files"]) != sorted(self.nets):
                raise ValueError(
                    f"{root}: holds the nets {sorted(index['files'])}, but the algorithm "
                    f"relabels with {sorted(self.nets)}"
                )
            targets = {k: f"{root}/{REWARD_NETS_DIR}/{f}" for k, f in index["files"].items()}
        loaded = {}
        for key, target in targets.items():
            try:
                net = file_format.load(target, device="cpu", filesystem=filesystem)
            except FileNotFoundError:
                return False
            if type(net) is not type(self.nets[key]):
                raise TypeError(
                    f"{target}: holds a {format_chain(net)}, but the algorithm relabels "
                    f"with a {format_chain(self.nets[key])}"
                )
            loaded[key] = net
        self.nets.update(loaded)
        if self.adversarial:
            data = storage.read_bytes(f"{root}/{OPTIMIZER_FILE}", filesystem=filesystem)
            self.optimizer_state = th.load(io.BytesIO(data), weights_only=True)
        self.push(algorithm)
        return True


def _fits(net: RewardNet, spaces: tuple[Any, Any]) -> bool:
    return net.observation_space == spaces[0] and net.action_space == spaces[1]


def _check_spaces(net: RewardNet, spaces: tuple[Any, Any], whose: str) -> None:
    """ValueError naming the space of ``net`` that differs from ``whose`` ``spaces``."""
    for what, net_space, space in zip(
        ("observation", "action"), (net.observation_space, net.action_space), spaces
    ):
        if net_space != space:
            raise ValueError(
                f"with_learned_reward: the reward net's {what} space {net_space} does not "
                f"match {whose} {space}"
            )


def _describe(module_spaces: dict[str, tuple[Any, Any]]) -> str:
    return "; ".join(f"{mid!r}: {obs}, {act}" for mid, (obs, act) in sorted(module_spaces.items()))


def _file_name(key: str) -> str:
    """A file name for net ``key`` (module IDs are any strings)."""
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", key) or SHARED_NET


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
