"""Recorded data in env units for RLlib's offline algorithms: the pieces behind
:func:`ray_rewards.rllib.with_env_unit_actions` (``config.py``).

Two conventions meet in offline RL. RLlib's offline output (``config.offline_data(
output=...)``) records the RLModule's actions: with ``normalize_actions`` (RLlib's
default) a Box action is in [-1, 1], and RLlib's new-stack offline learners read
``actions`` exactly as recorded (``actions_in_input_normalized`` is an old-stack
setting they ignore). ``ray-rewards record``, the pipeline's transitions and
every reward net trained on them hold the actions the env received, in the env's
bounds (Pendulum: [-2, 2]). An offline algorithm fed env-unit actions learns a policy
for actions its squashed distribution cannot produce.

:func:`~ray_rewards.rllib.with_env_unit_actions` declares the data's actions to be in env units: a
learner-connector piece (:class:`EnvUnitActions`) maps them into the RLModule's
units at the front of the learner pipeline (RLlib's ``OfflinePreLearner`` runs it on
every recorded batch), the inverse of what env runners do to the module's actions.
Everything after it, a learned reward's relabeling included, sees the data as if
RLlib had recorded it, so :func:`~ray_rewards.rllib.with_learned_reward` gives its net
env-unit actions either way.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.utils.spaces.space_utils import get_base_struct_from_space, normalize_action


class EnvUnitActions(ConnectorV2):
    """Learner-connector piece: episodes' actions from env units into the RLModule's.

    Float Box components are mapped from the action space's bounds onto [-1, 1]
    (RLlib's ``normalize_action``, the inverse of the ``unsquash_action`` env runners
    apply); other components are left as they are. Single-agent episodes only.
    """

    def __init__(
        self,
        input_observation_space: Any = None,
        input_action_space: Any = None,
        **kwargs: Any,
    ):
        super().__init__(input_observation_space, input_action_space, **kwargs)
        self._struct = get_base_struct_from_space(input_action_space)

    def __call__(
        self,
        *,
        rl_module: Any,
        batch: dict[str, Any],
        episodes: list[Any],
        explore: bool | None = None,
        shared_data: dict | None = None,
        metrics: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Rewrite every episode's actions in place; ``batch`` passes through."""
        for episode in episodes:
            n = len(episode)
            if n:
                actions = np.asarray(episode.get_actions(slice(0, n)))
                normalized = normalize_action(actions, self._struct)
                normalized = normalized.astype(actions.dtype)
                episode.set_actions(new_data=normalized, at_indices=slice(0, n))
        return batch


class EnvUnitActionsConnector:
    """The ``learner_connector`` callable :func:`with_env_unit_actions` sets: an
    :class:`EnvUnitActions` piece, then the pieces of the config's own learner
    connector (``previous``).
    """

    def __init__(self, previous: Any = None):
        self.previous = previous

    def __call__(self, input_observation_space: Any, input_action_space: Any) -> list[ConnectorV2]:
        """The pieces to put at the front of a learner pipeline."""
        pieces: list[ConnectorV2] = [EnvUnitActions(input_observation_space, input_action_space)]
        if self.previous is not None:
            more = self.previous(input_observation_space, input_action_space)
            pieces.extend(more if isinstance(more, (list, tuple)) else [more])
        return pieces

    def __repr__(self) -> str:
        return f"EnvUnitActionsConnector(previous={self.previous!r})"


__all__ = ["EnvUnitActions", "EnvUnitActionsConnector"]
