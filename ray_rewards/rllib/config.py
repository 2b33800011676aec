"""``with_learned_reward``: one call that makes any RLlib algorithm train on a reward net.

Reason for its length: the public entry points (``with_learned_reward``,
``with_adversarial_reward``) with their long user-facing docstrings and every check of
their arguments (single- and multi-agent, online and offline), so each refusal is
found next to the option it guards.

It returns a copy of the config with three additions:

1. A learner connector
   (:class:`~ray_rewards.rllib.learner_connector.LearnedRewardConnector`) that puts a
   :class:`~ray_rewards.rllib.RelabelRewards` at the front of every learner
   pipeline, ahead of any learner connector the config already had (but for
   ``with_env_unit_actions``' piece, which runs first; so a user's
   piece, e.g. a curiosity bonus, adds to the learned reward instead of being
   overwritten by it). Off-policy learners without such pieces move it to the end
   of the pipeline to relabel the train batch (see ``RelabelRewards.from_batch``).
   The net travels inside it as the bytes of its ray_rewards save file; each
   Learner loads its own copy once.
2. An ``on_train_result`` callback (:class:`LearnedRewardResults`), appended to any
   the config has: it merges normalization statistics across all copies of the net
   (with ``update_stats``) and puts ``result["learned_reward"]``, beside the env's
   own ``result["env_runners"]["episode_return_mean"]``.
3. ``algo_class`` becomes the algorithm class plus
   :class:`~ray_rewards.rllib.algorithm.LearnedRewardAlgorithm`, whose checkpoints
   carry ``reward_net.pt``.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from typing import Any

from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
from ray.rllib.utils.metrics import AGGREGATOR_ACTOR_RESULTS, ALL_MODULES, LEARNER_RESULTS

from ray_rewards import file_format, networks
from ray_rewards.actors import RewardActor, RewardActorPool
from ray_rewards.inspect import format_chain
from ray_rewards.reward_nets import (
    NormalizedRewardNet,
    PredictProcessedWrapper,
    RewardNet,
    RewardNetFromDiscriminatorLogit,
)
from ray_rewards.rllib._compat import config_learner_connector
from ray_rewards.rllib.adversarial import AIRL_REWARDS, ALGOS
from ray_rewards.rllib.algorithm import learned_reward_algorithm_class
from ray_rewards.rllib.demonstrations import Demonstrations
from ray_rewards.rllib.env_runner_relabel import RelabelOnEnvRunner
from ray_rewards.rllib.episodes import Mode
from ray_rewards.rllib.learner_connector import LearnedRewardConnector
from ray_rewards.rllib.offline import EnvUnitActionsConnector
from ray_rewards.rllib.relabel_connector import LEARNED_REWARD, SHARED_NET, RelabelRewards
from ray_rewards.rllib.reward_state import state_of
from ray_rewards.train import losses

RewardSource = RewardNet | str | os.PathLike | RewardActor | RewardActorPool
UNMATCHED_MODULES = ("env_reward", "raise")


def with_learned_reward(
    config: AlgorithmConfig,
    reward: RewardSource | Mapping[str, RewardNet | str | os.PathLike],
    *,
    mode: Mode = "replace",
    coef: float = 1.0,
    update_stats: bool = False,
    env_actions: bool = True,
    predict_kwargs: Mapping[str, Any] | None = None,
    on_non_finite: str = "skip",
    unmatched_modules: str = "env_reward",
) -> AlgorithmConfig:
    """A copy of ``config`` whose algorithm trains on ``reward`` instead of the env reward.

    Works with any new-API-stack algorithm whose learners build their train batch
    from episodes (PPO, APPO, IMPALA, SAC, DQN, ...). The env runners are not
    touched: ``result["env_runners"]`` still reports returns under the env's own
    reward, and ``result["learned_reward"]`` the net's reward on the transitions the
    learners trained on (``mean``/``min``/``max``, ``env_reward_mean``,
    ``num_transitions``, ``num_non_finite``; with ``update_stats`` also ``norm``: the
    merged statistics).

    Env-runner mode: pass a :class:`~ray_rewards.actors.RewardActor` (or
    ``RewardActorPool``) as ``reward`` and the env runners relabel each sample
    through it (one request per ``sample()``), so the learners receive relabeled
    episodes; see :mod:`ray_rewards.rllib.env_runner_relabel` (single-agent).

    Offline algorithms that use rewards (MARWIL, CQL, IQL, reading
    ``config.offline_data(input_=...)``): RLlib's ``OfflinePreLearner`` runs the
    learner pipeline in Ray Data workers, so the recorded rewards of every batch
    are replaced (or added to) there, one forward per batch. The recorded actions
    are taken to be the RLModule's, as RLlib's offline output holds them, and given
    to the net in env units like online ones; data recorded in env units
    (``ray-rewards record``) needs :func:`with_env_unit_actions`. Statistics stay
    frozen there (``update_stats`` is refused) and ``result["learned_reward"]``
    stays empty (those workers have no metrics logger in RLlib 2.60). BC, which ignores
    rewards, is refused.

    Multi-agent configs: ``reward`` is one net shared by every RLModule whose
    observation and action spaces it fits, or a mapping ``{module_id: net or path}``
    (RLModule IDs, not agent IDs; modules mapped to the same net object or path share
    it). Each net relabels all agents of its modules in one forward pass per learner
    update, each agent's transitions (next observation, done) its own. Modules no
    net serves keep the env's reward, or are refused (``unmatched_modules``).
    Spaces are checked per module when the algorithm is built. Statistics merge
    per net; checkpoints hold one file per net (``reward_nets/<key>.pt``, with
    ``index.json``) unless there is one net (``reward_net.pt``).
    ``result["learned_reward"]`` then holds the totals under ``ALL_MODULES`` and
    each module's metrics under its ID.

    Args:
        config: the algorithm config; it is not modified. Set its learner_connector
            (if any) before this call: it is kept, after the relabeling.
        reward: a :class:`~ray_rewards.reward_nets.RewardNet`, or the path/URI of one
            saved by :func:`ray_rewards.serialize.save`; multi-agent, also a mapping
            of RLModule IDs to those.
        mode: ``"replace"`` (reward = ``coef * r_net``) or ``"add"`` (``r_env + coef *
            r_net``).
        coef: scale of the net's reward.
        update_stats: keep updating the normalization statistics of a
            NormalizedRewardNet with every relabeled transition, merged across all
            learners every iteration. Default False: statistics fitted during reward
            training stay frozen, as with ``load_reward``. Every relabeled transition
            counts, so with a replay buffer a transition counts each time it is sampled.
        env_actions: give the net the actions the env received (RLlib's
            ``normalize_actions``/``clip_actions`` applied to the RLModule's actions),
            as imitation's reward wrappers do; False gives it the RLModule's raw
            actions.
        predict_kwargs: extra keyword arguments of ``predict_processed``.
        on_non_finite: transitions with NaN/inf observations or actions get reward 0,
            stay out of the statistics and are counted (``"skip"``, the default: one
            bad env step must not stop a cluster run), or fail the update
            (``"raise"``).
        unmatched_modules: multi-agent: ``"env_reward"`` (modules no net serves
            train on the env's reward) or ``"raise"`` (refuse them at build).

    Returns:
        The new config; build it with ``build_algo()`` (or pass ``config.algo_class``
        to Tune) to get checkpoints that carry the reward net.

    Raises:
        TypeError: ``config`` is not an AlgorithmConfig, or ``reward`` is not a
            RewardNet or path.
        ValueError: old API stack, an off-policy config with ``n_step != 1``, a config
            that already has a learned reward, bad ``mode``/``coef``,
            ``update_stats`` with a net whose statistics cannot be merged, a mapping
            on a single-agent config or naming modules the config lacks; at build, a
            net whose spaces do not fit its modules.
    """
    if not isinstance(config, AlgorithmConfig):
        raise TypeError(f"with_learned_reward: expected an AlgorithmConfig, got {type(config)}")
    if not (config.enable_rl_module_and_learner and config.enable_env_runner_and_connector_v2):
        raise ValueError(
            "with_learned_reward: needs RLlib's new API stack (RLModule/Learner/ConnectorV2); "
            "this config has it disabled"
        )
    if unmatched_modules not in UNMATCHED_MODULES:
        raise ValueError(
            f"with_learned_reward: unmatched_modules must be one of {UNMATCHED_MODULES}, "
            f"got {unmatched_modules!r}"
        )
    if isinstance(reward, (RewardActor, RewardActorPool)):
        if config.is_multi_agent:
            raise ValueError(
                "with_learned_reward: env-runner mode (a RewardActor) relabels single-agent "
                "episodes only; pass the net or a {module_id: net} mapping (learner mode)"
            )
        return _relabel_on_env_runners(
            config,
            reward,
            mode=mode,
            coef=coef,
            update_stats=update_stats,
            env_actions=env_actions,
            predict_kwargs=predict_kwargs,
        )
    if _reads_offline_data(config):
        _check_offline(config, update_stats)
    n_step = getattr(config, "n_step", 1)
    if n_step != 1:
        raise ValueError(
            f"with_learned_reward: n_step={n_step!r}, but learners relabel replayed "
            "transitions one at a time; an n-step sample's reward is a discounted sum over "
            "transitions the net never sees. Set config.training(n_step=1)."
        )
    previous = config_learner_connector(config)
    if isinstance(previous, LearnedRewardConnector):
        raise ValueError("with_learned_reward: this config already trains on a learned reward")
    nets, modules = _nets_by_key(config, reward)
    if update_stats:
        for key, net in nets.items():
            where = "" if len(nets) == 1 else f" (net {key!r})"
            networks.require_mergeable(
                net, f"with_learned_reward: update_stats=True{where}", ValueError
            )
    options = {
        "mode": mode,
        "coef": coef,
        "update_stats": update_stats,
        "normalize_actions": bool(env_actions and config.normalize_actions),
        "clip_actions": bool(env_actions and config.clip_actions),
        "predict_kwargs": dict(predict_kwargs or {}),
        "on_non_finite": on_non_finite,
    }
    # Validate the options here, on the driver, rather than on each learner.
    for net in nets.values():
        RelabelRewards(net, **options)
    connector = LearnedRewardConnector(
        nets,
        options,
        env_actions,
        previous,
        modules=modules,
        unmatched_modules=unmatched_modules,
    )
    new = config.copy(copy_frozen=False)
    new.learners(learner_connector=connector)
    on_train_result = _as_list(new.callbacks_on_train_result)
    new.callbacks(on_train_result=[*on_train_result, LearnedRewardResults()])
    new.algo_class = learned_reward_algorithm_class(new.algo_class)
    return new


def with_env_unit_actions(config: AlgorithmConfig) -> AlgorithmConfig:
    """A copy of the offline ``config`` that reads its recorded actions as env units
    (as ``ray-rewards record`` and the pipeline write them) and maps them into the
    RLModule's units before anything else in its learner pipeline sees them
    (:class:`~ray_rewards.rllib.offline.EnvUnitActions`; why in
    :mod:`ray_rewards.rllib.offline`). RLlib's own recorded output holds the
    RLModule's actions: read it without this.

    Works before or after :func:`with_learned_reward`: the mapping runs first either
    way, so the net is given the recorded env-unit actions back (``env_actions=True``,
    its default). A copy without changes where the RLModule acts in env units
    already (``normalize_actions=False``).

    Raises:
        TypeError: ``config`` is not an AlgorithmConfig.
        ValueError: the config samples from an env (its episodes hold the RLModule's
            actions already), is multi-agent, or reads env-unit actions already.
    """
    if not isinstance(config, AlgorithmConfig):
        raise TypeError(f"with_env_unit_actions: expected an AlgorithmConfig, got {type(config)}")
    if not _reads_offline_data(config):
        raise ValueError(
            "with_env_unit_actions: this config samples from its env (input_='sampler'), "
            "whose episodes hold the RLModule's actions already; it is for recorded data "
            "read through config.offline_data(input_=...)"
        )
    if config.is_multi_agent:
        raise ValueError("with_env_unit_actions: single-agent offline configs only")
    previous = config_learner_connector(config)
    inner = previous.previous if isinstance(previous, LearnedRewardConnector) else previous
    if isinstance(inner, EnvUnitActionsConnector):
        raise ValueError("with_env_unit_actions: this config reads env-unit actions already")
    new = config.copy(copy_frozen=False)
    if not config.normalize_actions:
        return new
    if isinstance(previous, LearnedRewardConnector):
        # The learned reward's connector stays outermost (the driver finds the net
        # there); it runs EnvUnitActions pieces ahead of its relabeling.
        connector = copy.copy(previous)
        connector.previous = EnvUnitActionsConnector(inner)
    else:
        connector = EnvUnitActionsConnector(previous)
    new.learners(learner_connector=connector)
    return new


def _relabel_on_env_runners(
    config: AlgorithmConfig,
    actor: RewardActor | RewardActorPool,
    *,
    mode: Mode,
    coef: float,
    update_stats: bool,
    env_actions: bool,
    predict_kwargs: Mapping[str, Any] | None,
) -> AlgorithmConfig:
    """Env-runner mode: an ``on_sample_end`` callback relabels through ``actor``."""
    if predict_kwargs:
        raise ValueError(
            "with_learned_reward: predict_kwargs are not supported with a reward actor; "
            "configure the actor's net instead"
        )
    env = config.env
    if not isinstance(env, str):
        raise ValueError(
            "with_learned_reward: env-runner mode needs config.environment(env=<registered "
            f"name>) to know the action space, got {env!r}"
        )
    import gymnasium as gym

    probe = gym.make(env, **(config.env_config or {}))
    action_space = probe.action_space
    probe.close()
    callback = RelabelOnEnvRunner(
        actor,
        action_space,
        mode=mode,
        coef=coef,
        update_stats=update_stats,
        normalize_actions=bool(env_actions and config.normalize_actions),
        clip_actions=bool(env_actions and config.clip_actions),
    )
    new = config.copy(copy_frozen=False)
    new.callbacks(on_sample_end=[*_as_list(new.callbacks_on_sample_end), callback])
    return new


def with_adversarial_reward(
    config: AlgorithmConfig,
    reward_net: RewardNet | str | os.PathLike,
    demonstrations: Any,
    *,
    algo: str = "gail",
    n_disc_updates: int = 4,
    disc_batch_size: int = 512,
    disc_lr: float = 1e-3,
    replay_batches: int = 1,
    env_actions: bool = True,
    on_non_finite: str = "skip",
    buffer_rows: int = 200_000,
    seed: int | None = None,
    airl_reward: str = "logit",
) -> AlgorithmConfig:
    """A copy of ``config`` that learns its reward adversarially while the policy learns.

    GAIL (Ho & Ermon, 2016) or AIRL (Fu et al., 2018) as imitation runs them, with any
    new-API-stack algorithm (PPO, SAC, ...), any number of env runners and learners:
    each learner update first relabels its transitions with the policy's reward under
    the current discriminator, then trains the discriminator ``n_disc_updates`` steps
    against the demonstrations (see :mod:`ray_rewards.rllib.adversarial`).
    ``result["learned_reward"]`` reports the relabeled reward (as
    :func:`with_learned_reward`) and the discriminator: ``disc_loss``,
    ``disc_accuracy`` (overall, ``_expert``, ``_policy``), ``disc_entropy``,
    ``expert_logit_mean``, ``policy_logit_mean``. Checkpoints hold the policy's
    reward net as ``reward_net.pt`` (GAIL: ``RewardNetFromDiscriminatorLogit`` of the
    discriminator; AIRL: the shaped net, whose reward without shaping is
    ``load_reward("RewardNet_unshaped", path)``) and the discriminator's optimizer
    state; ``Algorithm.from_checkpoint`` resumes both.

    Args:
        config: the algorithm config (new API stack, single agent); not modified.
        reward_net: the discriminator: any RewardNet for GAIL (its ``forward`` is the
            logit of "expert"), a shaped net (e.g. ``BasicShapedRewardNet``, possibly
            under a ``NormalizedRewardNet``) for AIRL; or the path of one.
        demonstrations: expert transitions in env units: a Parquet path/URI in RLlib's
            columns, a ``ray.data.Dataset``, a mapping of arrays, or imitation's
            ``Transitions`` (see :mod:`ray_rewards.rllib.demonstrations`).
        algo: ``"gail"`` or ``"airl"``.
        n_disc_updates: discriminator steps per learner update (imitation's
            ``n_disc_updates_per_round``).
        disc_batch_size: expert transitions per step on each learner, with as many of
            the policy's (imitation's ``demo_batch_size``).
        disc_lr: the discriminator's Adam learning rate.
        replay_batches: earlier updates whose policy transitions the discriminator
            may still draw (imitation's generator replay buffer).
        env_actions: give the discriminator the actions the env received, as the
            demonstrations hold them (see :func:`with_learned_reward`).
        on_non_finite: as in :func:`with_learned_reward`.
        buffer_rows: rows of a Parquet source that each learner holds at a time.
        seed: seeds the discriminator's draws (default: the config's seed, else 0).
        airl_reward: AIRL's reward for the policy: ``"logit"`` (default), ``f - log
            pi(a|s)``, the AIRL paper's ``log D - log(1 - D)``, which carries the
            policy's entropy in the reward; or ``"f"``, the shaped net alone
            (imitation's ``reward_train``), which relies on fixed-horizon envs: ``f``
            is negative on average, so where episodes can end early the policy learns
            to end them (PPO on CartPole-v1: 9.4-step episodes after 20k steps, where
            ``"logit"`` reached 500). RLlib's entropy bonus is a loss term, not part
            of the return, so it does not make up for it.

    Raises:
        TypeError: a bad config, net or demonstrations type.
        ValueError: a net that does not suit ``algo`` (AIRL needs a shaped net; GAIL's
            must not post-process its output), demonstrations that do not fit the net
            or are empty, an off-policy config with ``n_step != 1``, a multi-agent
            config, IMPALA/APPO aggregator actors, or a bad option.
    """
    if algo not in ALGOS:
        raise ValueError(f"with_adversarial_reward: algo must be one of {ALGOS}, got {algo!r}")
    if airl_reward not in AIRL_REWARDS:
        raise ValueError(
            f"with_adversarial_reward: airl_reward must be one of {AIRL_REWARDS}, got "
            f"{airl_reward!r}"
        )
    for name, value, low in (
        ("n_disc_updates", n_disc_updates, 1),
        ("disc_batch_size", disc_batch_size, 1),
        ("replay_batches", replay_batches, 0),
        ("buffer_rows", buffer_rows, 1),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(
                f"with_adversarial_reward: {name} must be an integer >= {low}, got {value!r}"
            )
    if not (isinstance(disc_lr, (int, float)) and disc_lr > 0):
        raise ValueError(f"with_adversarial_reward: disc_lr must be a number > 0, got {disc_lr!r}")
    if not isinstance(config, AlgorithmConfig):
        raise TypeError(f"with_adversarial_reward: expected an AlgorithmConfig, got {type(config)}")
    if config.is_multi_agent or isinstance(reward_net, Mapping):
        raise ValueError(
            "with_adversarial_reward: single-agent configs and one net only (the "
            "discriminator trains on one module's transitions, its gradients averaged over "
            "learners that all hold that module's data); multi-agent configs and "
            "{module_id: net} mappings are refused"
        )
    if getattr(config, "num_aggregator_actors_per_learner", 0):
        raise ValueError(
            "with_adversarial_reward: the discriminator trains on the learners, but this "
            "config builds train batches on aggregator actors; set "
            "learners(num_aggregator_actors_per_learner=0)"
        )
    disc = _load(reward_net)
    if algo == "airl" and not losses.is_shaped(disc):
        raise ValueError(
            "with_adversarial_reward: AIRL needs a shaped reward net (reward plus potential "
            f"shaping, e.g. BasicShapedRewardNet), got {format_chain(disc)}"
        )
    if algo == "gail" and isinstance(disc, PredictProcessedWrapper):
        raise ValueError(
            "with_adversarial_reward: GAIL trains the net's forward as the logit of "
            f"'expert'; pass the plain net, got {format_chain(disc)}"
        )
    policy_net = RewardNetFromDiscriminatorLogit(disc) if algo == "gail" else disc
    demos = Demonstrations.from_source(demonstrations, disc)
    new = with_learned_reward(
        config,
        policy_net,
        update_stats=any(isinstance(m, NormalizedRewardNet) for m in policy_net.modules()),
        env_actions=env_actions,
        on_non_finite=on_non_finite,
    )
    connector = config_learner_connector(new)
    connector.adversarial = {
        "algo": algo,
        "demonstrations": demos,
        "n_disc_updates": n_disc_updates,
        "disc_batch_size": disc_batch_size,
        "disc_lr": float(disc_lr),
        "replay_batches": replay_batches,
        "buffer_rows": buffer_rows,
        "seed": int(seed if seed is not None else (config.seed or 0)),
        "airl_reward": airl_reward,
    }
    return new


class LearnedRewardResults:
    """``on_train_result`` callback: merge statistics, report ``result["learned_reward"]``."""

    def __call__(self, *, algorithm: Any, result: dict, **kwargs: Any) -> None:
        """Sync the copies of the net and add the learned-reward metrics to ``result``."""
        reward_state = state_of(algorithm)
        merged = reward_state.sync(algorithm)
        # Learners log what they relabeled; with IMPALA/APPO aggregator actors, those do.
        logged: dict[str, Any] = {}
        for key in (LEARNER_RESULTS, AGGREGATOR_ACTOR_RESULTS):
            logged = result.get(key, {})
            if logged.get(ALL_MODULES, {}).get(LEARNED_REWARD):
                break
        learned = dict(logged.get(ALL_MODULES, {}).get(LEARNED_REWARD, {}))
        if reward_state.connector.multi_agent:
            # Totals under ALL_MODULES; each module's own, and which net relabels it
            # (None: it trains on the env's reward).
            learned = {ALL_MODULES: learned}
            for module_id, net_key in sorted(reward_state.routing.items()):
                own = logged.get(module_id, {}).get(LEARNED_REWARD, {})
                learned[module_id] = {**own, "net": net_key}
        if merged is not None:
            learned["norm"] = {
                name: {"count": m.count, "mean": m.mean.tolist(), "std": m.std.tolist()}
                for name, m in merged.items()
            }
        result[LEARNED_REWARD] = learned


def _reads_offline_data(config: AlgorithmConfig) -> bool:
    """Whether the algorithm trains on recorded data (``config.offline_data(input_=...)``)."""
    return config.input_ != "sampler"


def _check_offline(config: AlgorithmConfig, update_stats: bool) -> None:
    """Offline algorithms: ValueError for those that ignore rewards (BC) and for
    ``update_stats``.
    """
    from ray.rllib.algorithms.bc import BCConfig
    from ray.rllib.algorithms.marwil import MARWILConfig

    if isinstance(config, BCConfig) or (isinstance(config, MARWILConfig) and config.beta == 0):
        raise ValueError(
            f"with_learned_reward: {type(config).__name__} is behaviour cloning (MARWIL with "
            "beta=0): it ignores rewards, so a learned reward would change nothing; use "
            "MARWIL (beta > 0), CQL or IQL"
        )
    if update_stats:
        raise ValueError(
            "with_learned_reward: update_stats=True cannot merge statistics offline: RLlib "
            "relabels offline batches in Ray Data workers (OfflinePreLearner) that the "
            "driver does not reach. Fit the statistics when training the reward, or "
            "relabel the data set with `ray-rewards relabel --update-stats`"
        )


def _nets_by_key(
    config: AlgorithmConfig, reward: Any
) -> tuple[dict[str, RewardNet], dict[str, tuple[str, ...] | None] | None]:
    """The nets by key and, multi-agent, each net's module IDs (None: shared by every
    module it fits); see :func:`with_learned_reward`.
    """
    if not isinstance(reward, Mapping):
        net = _load(reward)
        return {SHARED_NET: net}, ({SHARED_NET: None} if config.is_multi_agent else None)
    if not config.is_multi_agent:
        raise ValueError(
            "with_learned_reward: a {module_id: net} mapping needs a multi-agent config; "
            "pass one net for a single-agent one"
        )
    known = _module_ids(config)
    unknown = sorted(str(m) for m in reward if m not in known)
    if unknown:
        raise ValueError(
            f"with_learned_reward: the reward mapping names modules {unknown} that the config "
            f"does not have; its RLModule IDs are {sorted(known)} (not agent IDs)"
        )
    if not reward:
        raise ValueError("with_learned_reward: the reward mapping is empty")
    # Modules given the same net object (or path) share one copy of it.
    groups: dict[Any, list[str]] = {}
    sources: dict[Any, Any] = {}
    for module_id, source in reward.items():
        ident = os.fspath(source) if isinstance(source, (str, os.PathLike)) else id(source)
        groups.setdefault(ident, []).append(module_id)
        sources[ident] = source
    nets, modules = {}, {}
    for ident, module_ids in groups.items():
        key = "+".join(sorted(module_ids))
        try:
            nets[key] = _load(sources[ident])
        except (TypeError, ValueError, OSError) as err:
            raise type(err)(f"with_learned_reward: module {module_ids[0]!r}: {err}") from None
        modules[key] = tuple(sorted(module_ids))
    return nets, modules


def _module_ids(config: AlgorithmConfig) -> set[str]:
    """A multi-agent config's RLModule IDs (its RLModule spec's, else its policies)."""
    specs = getattr(config.rl_module_spec, "rl_module_specs", None)
    if isinstance(specs, Mapping):
        return set(specs)
    return set(config.policies)


def _load(reward: RewardSource) -> RewardNet:
    if isinstance(reward, RewardNet):
        return reward
    if isinstance(reward, (str, os.PathLike)):
        return file_format.load(reward, device="cpu")
    raise TypeError(
        "with_learned_reward: reward must be a RewardNet or the path of one saved with "
        f"ray_rewards.serialize.save, got {type(reward).__name__}"
    )


def _as_list(callbacks: Any) -> list[Any]:
    if callbacks is None:
        return []
    return list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]


__all__ = [
    "LearnedRewardConnector",
    "LearnedRewardResults",
    "with_adversarial_reward",
    "with_learned_reward",
]
