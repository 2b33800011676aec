"""The jobs that run RLlib algorithms: ``rllib`` (a saved reward net), ``adversarial``
(GAIL/AIRL), ``preferences`` (online preference comparisons), ``offline`` (CQL, IQL,
MARWIL on recorded transitions) and ``record`` (demonstrations from a checkpoint);
all but ``record`` share :func:`algorithm_config` and the training loop
:func:`train_algorithm`.
"""

from __future__ import annotations

import gc
import inspect
import os
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

from ray_rewards import storage
from ray_rewards.jobs.outputs import as_float, log, require_input, storage_join, upload_dir
from ray_rewards.jobs.specs import (
    AdversarialJobConfig,
    JobConfig,
    OfflineJobConfig,
    PreferencesJobConfig,
    RecordJobConfig,
    RLlibJobConfig,
    RLlibTraining,
)

CHECKPOINT_DIR = "checkpoint"
DEMONSTRATIONS_DIR = "demonstrations"
PREFERENCES_DIR = "preferences"
QUEUE_DIR = "queue"
# Learner updates per offline iteration where the config does not say
# (dataset_num_iters_per_learner); RLlib 2.60's local learner fails with exactly 1.
OFFLINE_UPDATES_PER_ITERATION = 20
OFFLINE_ALGORITHMS = ("MARWIL", "CQL", "IQL", "BC")


def algorithm_config(settings: RLlibTraining) -> Any:
    """The job's RLlib ``AlgorithmConfig`` (before the learned reward is wired in).

    Raises ValueError naming the key (under the job's section) for an unknown
    algorithm or setting.
    """
    from ray_rewards.rllib import _compat

    section = settings.section
    try:
        config = _compat.algorithm_class(settings.algorithm).get_default_config()
    except ValueError as err:
        raise ValueError(f"{section}.algorithm: {err}") from None
    options = dict(settings.config)
    model_config = options.pop("model_config", None)
    for key in options:
        if not hasattr(config, _compat.config_attribute(config, key)):
            raise ValueError(
                f"{section}.config.{key}: {type(config).__name__} has no such setting "
                "(keys are AlgorithmConfig attribute names, e.g. num_env_runners, lr)"
            )
    try:
        config.update_from_dict(options)
        if model_config is not None:
            config.rl_module(model_config=model_config)
    except (AttributeError, TypeError, ValueError) as err:
        raise ValueError(f"{section}.config: {err}") from None
    return config


def train_algorithm(
    config: Any,
    settings: RLlibTraining,
    storage_path: str,
    metrics: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Build ``config``'s algorithm, train it until ``iterations``/``env_steps`` (a
    progress line per iteration), save the checkpoint and stop it.

    Each history entry holds ``iteration``, ``env_steps``, ``episode_return_mean`` (the
    env's own reward, as the env runners saw it), ``learned_reward_mean`` (the net's
    reward on the transitions learned from), ``eval_return_mean`` (RLlib's evaluation,
    in the iterations that ran one) and what ``metrics(result)`` adds.
    Returns ``history``, ``env_runner_nodes`` and ``files`` (``checkpoint`` and, for an
    algorithm on a learned reward, the ``reward_net`` inside it, with
    ``settings.checkpoint``).
    """
    import ray

    from ray_rewards.rllib import LearnedRewardAlgorithm

    algo = config.build_algo()
    history: list[dict[str, Any]] = []
    files: dict[str, str] = {}
    try:
        group = algo.env_runner_group  # None for an offline algorithm given its spaces
        runner_nodes = (
            []
            if group is None
            else group.foreach_env_runner(
                lambda _: ray.get_runtime_context().get_node_id(), local_env_runner=False
            )
        )
        steps = 0
        while (settings.iterations is None or len(history) < settings.iterations) and (
            settings.env_steps is None or steps < settings.env_steps
        ):
            result = algo.train()
            runners = result.get("env_runners", {})
            steps = int(runners.get("num_env_steps_sampled_lifetime", 0))
            evaluation = result.get("evaluation", {}).get("env_runners", {})
            history.append(
                {
                    "iteration": len(history) + 1,
                    "env_steps": steps,
                    "episode_return_mean": as_float(runners.get("episode_return_mean")),
                    "learned_reward_mean": as_float(result.get("learned_reward", {}).get("mean")),
                    **(
                        {"eval_return_mean": as_float(evaluation["episode_return_mean"])}
                        if "episode_return_mean" in evaluation
                        else {}
                    ),
                    **(metrics(result) if metrics is not None else {}),
                }
            )
            log(f"{settings.section}: iteration {len(history)}: {history[-1]}")
        if settings.checkpoint:
            # save_to_path returns the path inside the filesystem (no URI scheme): keep ours.
            path = storage_join(storage_path, CHECKPOINT_DIR)
            algo.save_to_path(path)
            files = {"checkpoint": path}
            if isinstance(algo, LearnedRewardAlgorithm):  # its checkpoints carry the net
                files["reward_net"] = storage_join(path, storage.NET_FILE)
    finally:
        algo.stop()
        # An offline learner holds a Ray Data iterator: end it now, while Ray is up
        # (left to the interpreter's exit, it logs a traceback after ray.shutdown).
        del algo
        gc.collect()
    return {"history": history, "env_runner_nodes": runner_nodes, "files": files}


def run_rllib(cfg: JobConfig) -> dict[str, Any]:
    """Train on the saved reward net (:func:`train_algorithm`); checkpoint at the end."""
    from ray_rewards.rllib import with_learned_reward

    settings: RLlibJobConfig = cfg.settings
    config = with_learned_reward(
        algorithm_config(settings), settings.reward, **settings.reward_options
    )
    return train_algorithm(config, settings, cfg.storage_path)


def run_adversarial(cfg: JobConfig) -> dict[str, Any]:
    """GAIL/AIRL: the discriminator built for ``config.env``'s spaces (or ``init_net``)
    trains on the learners against ``demonstrations`` while the policy learns
    (:func:`train_algorithm`; history adds ``disc_accuracy`` and ``disc_loss``).

    Settings that cannot run (unknown options, missing inputs, kwargs the net refuses,
    a net that does not suit ``algo`` or the demonstrations) fail with ValueError
    naming the key before the algorithm is built.
    """
    from ray_rewards.rllib import with_adversarial_reward

    settings: AdversarialJobConfig = cfg.settings
    _check_options(
        "adversarial.adversarial_options",
        settings.adversarial_options,
        [with_adversarial_reward],
        exclude=("algo",),
    )
    require_input(
        "adversarial.demonstrations",
        settings.demonstrations,
        "Parquet transitions, e.g. the record job's demonstrations/",
    )
    net = _reward_net(settings)
    base = algorithm_config(settings)
    try:
        config = with_adversarial_reward(
            base,
            net,
            settings.demonstrations,
            algo=settings.algo,
            **settings.adversarial_options,
        )
    except (TypeError, ValueError) as err:
        raise ValueError(f"adversarial: {err}") from None

    def disc_metrics(result: Mapping[str, Any]) -> dict[str, Any]:
        learned = result.get("learned_reward", {})
        return {
            "disc_accuracy": as_float(learned.get("disc_accuracy")),
            "disc_loss": as_float(learned.get("disc_loss")),
        }

    return train_algorithm(config, settings, cfg.storage_path, disc_metrics)


def run_preferences(cfg: JobConfig) -> dict[str, Any]:
    """Online preference comparisons: the net built for ``config.env``'s spaces (or
    ``init_net``) is retrained on the gatherer's labels while the policy learns
    (:func:`train_algorithm`; history adds ``num_labels`` and ``train_accuracy``).
    Labels and retraining files go to ``<storage>/preferences`` (the async gatherer's
    queue to ``<storage>/preferences/queue``), the checkpoint to ``<storage>/checkpoint``.

    Settings that cannot run (unknown options, a missing ``init_net``, kwargs the net
    or the gatherer refuses) fail with ValueError naming the key before the algorithm
    is built.
    """
    from ray_rewards.preferences import AsyncGatherer, SyntheticGatherer
    from ray_rewards.rllib import with_learned_reward, with_preference_learning

    settings: PreferencesJobConfig = cfg.settings
    _check_options(
        "preferences.preference_options",
        settings.preference_options,
        [with_preference_learning, with_learned_reward],
        exclude=("data_dir",),
    )
    data_dir = storage_join(cfg.storage_path, PREFERENCES_DIR)
    files = {"labels": storage_join(data_dir, "labels")}
    if settings.gatherer == "async":
        files["queue"] = storage_join(data_dir, QUEUE_DIR)
        renderer = None
        if settings.render:
            from ray_rewards.preferences.render import FragmentRenderer

            try:
                env_config = settings.config.get("env_config") or {}
                renderer = FragmentRenderer(str(settings.config.get("env")), **env_config)
            except (ValueError, ImportError) as err:
                raise ValueError(f"preferences.render: {err}") from None
        gatherer: Any = AsyncGatherer(files["queue"], renderer)
    else:
        try:
            gatherer = SyntheticGatherer(**settings.gatherer_options)
        except TypeError as err:
            raise ValueError(f"preferences.gatherer_options: {err}") from None
    net = _reward_net(settings)
    base = algorithm_config(settings)
    try:
        config = with_preference_learning(
            base, net, gatherer, data_dir=data_dir, **settings.preference_options
        )
    except (TypeError, ValueError) as err:
        raise ValueError(f"preferences: {err}") from None

    def preference_metrics(result: Mapping[str, Any]) -> dict[str, Any]:
        prefs = result.get("learned_reward", {}).get("preferences", {})
        return {
            "num_labels": prefs.get("num_labels"),
            "train_accuracy": as_float(prefs.get("train_accuracy")),
        }

    out = train_algorithm(config, settings, cfg.storage_path, preference_metrics)
    out["files"] = {**out["files"], **files}
    return out


def run_offline(cfg: JobConfig) -> dict[str, Any]:
    """An offline algorithm on ``input`` (:func:`train_algorithm`), on the data's rewards
    or ``reward``'s; RLlib's greedy evaluation of ``eval_episodes`` after the last
    iteration (``final_return``). Settings that cannot run (a missing input, an
    algorithm that ignores rewards given a ``reward``) fail with ValueError naming the
    key before the algorithm is built.
    """
    from ray_rewards.rllib import with_env_unit_actions, with_learned_reward

    settings: OfflineJobConfig = cfg.settings
    require_input("offline.input", settings.input, "Parquet transitions, e.g. the relabel job's")
    if settings.algorithm not in OFFLINE_ALGORITHMS:
        raise ValueError(
            f"offline.algorithm: expected one of RLlib's offline algorithms "
            f"{list(OFFLINE_ALGORITHMS)}, got {settings.algorithm!r}"
        )
    config = algorithm_config(settings)
    if hasattr(config, "actor_lr") and "lr" not in settings.config:
        # RLlib 2.60's CQLConfig defaults lr to a number that its own validation
        # refuses (actor_lr/critic_lr/alpha_lr are CQL's learning rates).
        config.training(lr=None)
    if "dataset_num_iters_per_learner" not in settings.config:
        config.offline_data(dataset_num_iters_per_learner=OFFLINE_UPDATES_PER_ITERATION)
    config.offline_data(input_=[settings.input])
    if "evaluation_interval" not in settings.config:
        config.evaluation(evaluation_interval=settings.iterations)
    config.evaluation(
        evaluation_duration=settings.eval_episodes,
        evaluation_duration_unit="episodes",
        evaluation_config={"explore": False},
    )
    if settings.reward is not None:
        require_input("offline.reward", settings.reward, "a saved reward net")
        _check_options(
            "offline.reward_options", settings.reward_options, [with_learned_reward], exclude=()
        )
    try:
        if settings.actions == "env":
            config = with_env_unit_actions(config)
        if settings.reward is not None:
            config = with_learned_reward(config, settings.reward, **settings.reward_options)
    except (TypeError, ValueError) as err:
        raise ValueError(f"offline: {err}") from None
    out = train_algorithm(config, settings, cfg.storage_path)
    evaluated = [h["eval_return_mean"] for h in out["history"] if "eval_return_mean" in h]
    out["final_return"] = evaluated[-1] if evaluated else None
    if evaluated:
        log(f"offline: greedy return after the last iteration: {evaluated[-1]:.1f}")
    return out


def _check_options(
    key: str, options: Mapping[str, Any], functions: list[Callable[..., Any]], exclude: tuple
) -> None:
    """Refuse ``options`` that are not keyword-only arguments of ``functions``."""
    known = {
        name
        for fn in functions
        for name, p in inspect.signature(fn).parameters.items()
        if p.kind is p.KEYWORD_ONLY and name not in exclude
    }
    unknown = sorted(set(options) - known)
    if unknown:
        names = " or ".join(fn.__name__ for fn in functions)
        raise ValueError(f"{key}: {unknown} are not options of {names}; known: {sorted(known)}")


def _reward_net(settings: AdversarialJobConfig | PreferencesJobConfig) -> Any:
    """``init_net`` loaded, or ``net(**net_kwargs)`` for the env's spaces (seeded); errors
    name keys under the job's section.
    """
    from ray_rewards.train import build_net

    section = settings.section
    net_config = settings.net_config()
    if settings.init_net is not None:
        require_input(f"{section}.init_net", settings.init_net, "a saved reward net")
        try:
            return build_net(net_config, None, None)
        except (OSError, TypeError, ValueError) as err:
            raise ValueError(f"{section}.init_net: {err}") from None
    import gymnasium as gym

    env_id = settings.config["env"]
    try:
        env = gym.make(env_id, **settings.config.get("env_config", None) or {})
    except gym.error.Error as err:
        raise ValueError(f"{section}.config.env: {env_id!r}: {err}") from None
    try:
        return build_net(net_config, env.observation_space, env.action_space)
    except TypeError as err:
        raise ValueError(f"{section}.net_kwargs: {settings.net} refused them: {err}") from None
    except ValueError as err:
        raise ValueError(f"{section}.net: {settings.net} for {env_id}: {err}") from None
    finally:
        env.close()


def run_record(cfg: JobConfig) -> dict[str, Any]:
    """``episodes`` of the checkpoint's policy as Parquet transitions in
    ``<storage>/demonstrations`` (recorded on the driver; uploaded to a URI storage).
    """
    from ray_rewards.rllib import record_demonstrations

    settings: RecordJobConfig = cfg.settings
    require_input(
        "record.checkpoint", settings.checkpoint, "an RLlib checkpoint, e.g. the rllib job's"
    )
    output = storage_join(cfg.storage_path, DEMONSTRATIONS_DIR)
    options = {"num_episodes": settings.episodes, "explore": settings.explore}
    if storage.is_uri(output):
        # record_demonstrations writes a local folder: record there, then upload it.
        with tempfile.TemporaryDirectory() as tmp:
            result = record_demonstrations(
                settings.checkpoint, os.path.join(tmp, DEMONSTRATIONS_DIR), **options
            )
            upload_dir(result.path, output)
    else:
        result = record_demonstrations(settings.checkpoint, output, **options)
    log(
        f"record: {result.num_episodes} episodes, {result.num_transitions} transitions, "
        f"mean return {result.mean_return:.2f}"
    )
    return {
        "episodes": result.num_episodes,
        "transitions": result.num_transitions,
        "mean_return": result.mean_return,
        "files": {"demonstrations": output},
    }
