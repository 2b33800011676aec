"""Every place ray_rewards touches RLlib internals, in one module.

RLlib offers no public way to read a config's learner connector, a learner's
built connector pipeline, an algorithm's aggregator actors, or the key aliases
``AlgorithmConfig.update_from_dict`` accepts. We use its private attributes for
those, here only, so a Ray upgrade has one file to check (the package pins Ray's
minor version for that reason; see ``pyproject.toml``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

# A key RLlib's AddOneTsToEpisodesAndTruncate puts in the connector pipeline's
# shared_data when it appended the artificial bootstrap step to every episode.
BOOTSTRAP_STEP_ADDED = "_added_loss_mask_for_valid_episode_ts"


def config_learner_connector(config: Any) -> Any:
    """The learner-connector factory set on an ``AlgorithmConfig`` (None when unset)."""
    return getattr(config, "_learner_connector", None)


def learner_pipeline(learner: Any) -> Any:
    """A Learner's (or aggregator actor's) built learner-connector pipeline, or None."""
    return getattr(learner, "_learner_connector", None)


def aggregator_actors(algorithm: Any) -> Any:
    """The algorithm's aggregator-actor manager (None when it runs none)."""
    return getattr(algorithm, "_aggregator_actor_manager", None)


def config_attribute(config: Any, key: str) -> str:
    """The ``AlgorithmConfig`` attribute a settings key (alias included) sets."""
    return config._translate_special_keys(key, warn_deprecated=False)


def runner_env_seed(runner: Any) -> int | None:
    """The seed an env runner resets its envs with at the start of ``sample()``."""
    return runner._seed


def set_runner_env_seed(runner: Any, seed: int | None) -> None:
    """Set the seed of :func:`runner_env_seed`."""
    runner._seed = seed


def set_frozen(config: Any, attribute: str, value: Any) -> None:
    """Set an attribute of a frozen ``AlgorithmConfig`` (whose ``__setattr__`` refuses)."""
    object.__setattr__(config, attribute, value)


def algorithm_class(name: str) -> type:
    """The RLlib Algorithm class registered as ``name`` (e.g. ``"PPO"``).

    Imports that one algorithm: ``ray.tune.registry.get_trainable_cls`` would import
    every RLlib algorithm (DreamerV3's needs Pillow, which a plain install lacks).
    Names registered with Tune (``ray.tune.register_trainable``) work too.

    Raises:
        ValueError: no algorithm of that name (the message lists RLlib's).
    """
    from ray.rllib.algorithms.registry import ALGORITHMS
    from ray.tune.registry import TRAINABLE_CLASS, _global_registry

    if name in ALGORITHMS:
        return ALGORITHMS[name]()[0]
    if _global_registry.contains(TRAINABLE_CLASS, name):
        return _global_registry.get(TRAINABLE_CLASS, name)
    raise ValueError(
        f"unknown RLlib algorithm {name!r}; expected one of {', '.join(sorted(ALGORITHMS))} "
        "or a name registered with ray.tune.register_trainable"
    )


def map_episode_actions(episodes: list[Any], fn: Any) -> None:
    """Replace the action buffer data (lookback included) of single-agent ``episodes``
    with ``fn`` of it, as new arrays, in one call of ``fn`` over all of them (an offline
    batch is hundreds of one-step episodes): RLlib has no public setter that leaves
    shared data alone (``set_actions`` writes into the buffer in place and checks the
    env's space).
    """
    buffers = [e.actions for e in episodes if len(e.actions.data)]
    if not buffers:
        return
    arrays = [np.asarray(b.data) for b in buffers]
    actions = np.concatenate(arrays)
    mapped = np.asarray(fn(actions)).astype(actions.dtype, copy=False)
    ends = np.cumsum([len(a) for a in arrays])
    for buffer, part in zip(buffers, np.split(mapped, ends[:-1]), strict=True):
        buffer.data = list(part) if isinstance(buffer.data, list) else part
