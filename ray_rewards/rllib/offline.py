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
Whether to map is decided when the function is called, from the config's
``normalize_actions``: set that first.
Everything after it, a learned reward's relabeling included, sees the data as if
RLlib had recorded it, so :func:`~ray_rewards.rllib.with_learned_reward` gives its net
env-unit actions either way.
"""

from __future__ import annotations

from typing import Any

from ray.rllib.connectors.connector_v2 import ConnectorV2

from ray_rewards.data.batches import check_action_units, module_actions
from ray_rewards.rllib._compat import map_episode_actions


class EnvUnitActions(ConnectorV2):
    """Learner-connector piece: episodes' actions from env units into the RLModule's.

    The exact inverse of the ``unsquash_action`` env runners apply
    (:func:`ray_rewards.data.batches.module_actions`): a float Box with finite bounds
    is mapped from them onto [-1, 1], an integer Box shifted by ``-low``, other spaces
    left as they are; Dict and Tuple spaces are refused when the piece is built.
    Each episode gets new action arrays (lookback included), so data a replay buffer
    or the data set shares with it is never rewritten. Single-agent episodes only.
    """

    def __init__(
        self,
        input_observation_space: Any = None,
        input_action_space: Any = None,
        **kwargs: Any,
    ):
        super().__init__(input_observation_space, input_action_space, **kwargs)
        try:
            check_action_units("module", input_action_space)
        except ValueError as err:
            raise ValueError(f"with_env_unit_actions: {err}") from None
        self._space = input_action_space

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
        """Give every episode its actions in the RLModule's units; ``batch`` passes
        through.
        """
        map_episode_actions(episodes, lambda a: module_actions(a, self._space))
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
