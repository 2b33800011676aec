"""``LearnedRewardConnector``: the ``learner_connector`` a learned-reward config carries.

:func:`~ray_rewards.rllib.with_learned_reward` sets it on the config; every Learner
(and aggregator actor) calls it to build its pipeline's first pieces, and the
driver's :mod:`~ray_rewards.rllib.reward_state` reads the net and options from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ray.rllib.connectors.connector_v2 import ConnectorV2

from ray_rewards import file_format
from ray_rewards.inspect import format_chain
from ray_rewards.reward_nets import RewardNet
from ray_rewards.rllib.adversarial import AdversarialRewards
from ray_rewards.rllib.relabel_connector import RelabelRewards


class LearnedRewardConnector:
    """The ``learner_connector`` callable: builds ``[RelabelRewards, *previous pieces]``
    (an :class:`~ray_rewards.rllib.adversarial.AdversarialRewards` for GAIL/AIRL).

    Holds the net as the bytes of its ray_rewards save file (plain data, checked for
    safe loading when created) plus the net's module classes, which each learner
    registers with the safe-loading allowlist before loading its copy.
    """

    # GAIL/AIRL: AdversarialRewards' own arguments (algo, demonstrations, ...); None
    # otherwise (a class default, so connectors pickled without it load as plain ones).
    adversarial: dict[str, Any] | None = None

    def __init__(
        self,
        net: RewardNet,
        options: Mapping[str, Any],
        env_actions: bool = True,
        previous: Any = None,
        adversarial: Mapping[str, Any] | None = None,
    ):
        self.net_bytes = file_format.to_bytes(net)
        self.net_chain = format_chain(net)
        self.net_classes = tuple({type(m) for m in net.modules()})
        self.options = dict(options)
        self.env_actions = env_actions
        self.previous = previous
        if adversarial is not None:
            self.adversarial = dict(adversarial)

    def load_net(self) -> RewardNet:
        """A fresh CPU copy of the net."""
        for cls in self.net_classes:
            file_format.register_safe_class(cls)
        return file_format.from_bytes(self.net_bytes, "cpu")

    def __call__(self, input_observation_space: Any, input_action_space: Any) -> list[ConnectorV2]:
        """The pieces to put at the front of a learner pipeline."""
        if self.adversarial is not None:
            first: ConnectorV2 = AdversarialRewards(
                self.load_net(), **self.options, **self.adversarial
            )
        else:
            first = RelabelRewards(self.load_net(), **self.options)
        pieces = [first]
        if self.previous is not None:
            more = self.previous(input_observation_space, input_action_space)
            pieces.extend(more if isinstance(more, (list, tuple)) else [more])
        return pieces

    def __repr__(self) -> str:
        return (
            f"LearnedRewardConnector({self.net_chain}, {self.options}, previous={self.previous!r})"
        )


__all__ = ["LearnedRewardConnector"]
