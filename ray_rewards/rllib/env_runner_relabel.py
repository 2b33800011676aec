"""Env-runner mode: env runners relabel their samples through a RewardActor.

The default integration relabels on the learners (:class:`RelabelRewards`). Where
one net should serve many env runners instead (a big net on a GPU actor, or one
authoritative holder of normalization statistics), pass a
:class:`~ray_rewards.actors.RewardActor` (or a ``RewardActorPool``) to
:func:`~ray_rewards.rllib.with_learned_reward`: every env runner then calls
:class:`RelabelOnEnvRunner` at the end of ``sample()``, which sends all
transitions of that sample to the actor in ONE request and writes the answer into
copies of the episodes (:func:`~ray_rewards.rllib.episodes.detach_rewards`)
that take the originals' place in the returned sample. The env runner computes its
episode metrics from the originals it keeps (in ``get_metrics``, after
``sample()``), so ``result["env_runners"]["episode_return_mean"]`` stays the env's
own return; the learned reward's ``mean``/``min``/``max`` go to
``result["env_runners"]["learned_reward"]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ray.rllib.env.single_agent_episode import SingleAgentEpisode
from ray.rllib.utils.metrics.metrics_logger import MetricsLogger
from ray.rllib.utils.spaces.space_utils import get_base_struct_from_space

from ray_rewards.rllib.episodes import (
    Mode,
    check_mode_and_coef,
    detach_rewards,
    episode_transitions,
    write_rewards,
)
from ray_rewards.rllib.relabel_connector import LEARNED_REWARD


class RelabelOnEnvRunner:
    """An ``on_sample_end`` callback: the samples' rewards from a reward actor.

    Args:
        reward_actor: a RewardActor or RewardActorPool client (picklable; it travels
            to every env runner inside the config).
        action_space: the env's action space (for unsquashing/clipping actions).
        mode, coef: as for :class:`~ray_rewards.rllib.RelabelRewards`.
        update_stats: let the actor update its normalization statistics with these
            transitions (the actor is then their authoritative holder).
        normalize_actions, clip_actions: as the config's env-runner settings, so the
            net sees the actions the env received.
    """

    def __init__(
        self,
        reward_actor: Any,
        action_space: Any,
        *,
        mode: Mode = "replace",
        coef: float = 1.0,
        update_stats: bool = False,
        normalize_actions: bool = False,
        clip_actions: bool = False,
    ):
        self.coef = check_mode_and_coef(mode, coef, "RelabelOnEnvRunner")
        if not callable(getattr(reward_actor, "predict_processed", None)):
            raise TypeError(
                "RelabelOnEnvRunner: expected a RewardActor or RewardActorPool, got "
                f"{type(reward_actor).__name__}"
            )
        self.reward_actor = reward_actor
        self.action_struct = get_base_struct_from_space(action_space)
        self.mode = mode
        self.update_stats = bool(update_stats)
        self.normalize_actions = bool(normalize_actions)
        self.clip_actions = bool(clip_actions)

    def __call__(
        self,
        *,
        samples: list[Any],
        metrics_logger: MetricsLogger | None = None,
        **kwargs: Any,
    ) -> None:
        """Put relabeled copies of the episode chunks in ``samples`` (one actor request)."""
        for e in samples:
            if not isinstance(e, SingleAgentEpisode):
                raise TypeError(
                    "RelabelOnEnvRunner: env-runner mode supports single-agent episodes, "
                    f"got {type(e).__name__}"
                )
        detach_rewards(samples)
        chunks = [(e, len(e)) for e in samples if len(e) > 0]
        if not chunks:
            return
        state, action, next_state, done = episode_transitions(
            chunks, self.action_struct, self.normalize_actions, self.clip_actions
        )
        extra = {"update_stats": True} if self.update_stats else {}
        learned = np.asarray(
            self.reward_actor.predict_processed(state, action, next_state, done, **extra)
        )
        if learned.shape != (len(done),):
            raise ValueError(
                f"RelabelOnEnvRunner: the reward actor returned shape {learned.shape}, "
                f"expected ({len(done)},)"
            )
        env_rewards = write_rewards(chunks, learned, self.mode, self.coef)
        if metrics_logger is not None:
            metrics_logger.log_value((LEARNED_REWARD, "mean"), float(learned.mean()))
            metrics_logger.log_value((LEARNED_REWARD, "min"), float(learned.min()), reduce="min")
            metrics_logger.log_value((LEARNED_REWARD, "max"), float(learned.max()), reduce="max")
            metrics_logger.log_value((LEARNED_REWARD, "env_reward_mean"), float(env_rewards.mean()))
