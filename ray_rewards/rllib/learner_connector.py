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
from ray_rewards.rllib.offline import EnvUnitActions
from ray_rewards.rllib.relabel_connector import RelabelRewards


class LearnedRewardConnector:
    """The ``learner_connector`` callable: builds one :class:`RelabelRewards` per reward
    net (an :class:`~ray_rewards.rllib.adversarial.AdversarialRewards` for GAIL/AIRL),
    then the pieces of the config's own learner connector (``previous``), except
    :class:`~ray_rewards.rllib.offline.EnvUnitActions` pieces, which run first: the
    relabeling then sees recorded actions in the RLModule's units, as online.

    Holds each net as the bytes of its ray_rewards save file (plain data, checked for
    safe loading when created) plus the nets' module classes, which each learner
    registers with the safe-loading allowlist before loading its copies.

    Args:
        nets: the nets by key (``{SHARED_NET: net}`` for one net).
        options: RelabelRewards' options, the same for every net.
        env_actions: the nets see the actions the env received.
        previous: the config's learner connector before this one, kept after it.
        adversarial: AdversarialRewards' own arguments (GAIL/AIRL; one net only).
        modules: multi-agent: each net's RLModule IDs, None for a shared net (the
            modules whose spaces it fits); None for a single-agent config.
        unmatched_modules: multi-agent: ``"env_reward"`` (modules no net serves keep
            the env's reward) or ``"raise"`` (refused when the algorithm is built).
    """

    # GAIL/AIRL: AdversarialRewards' own arguments (algo, demonstrations, ...); None
    # otherwise (a class default, so connectors pickled without it load as plain ones).
    adversarial: dict[str, Any] | None = None
    unmatched_modules = "env_reward"

    def __init__(
        self,
        nets: Mapping[str, RewardNet],
        options: Mapping[str, Any],
        env_actions: bool = True,
        previous: Any = None,
        adversarial: Mapping[str, Any] | None = None,
        modules: Mapping[str, tuple[str, ...] | None] | None = None,
        unmatched_modules: str = "env_reward",
    ):
        if adversarial is not None and len(nets) != 1:
            raise ValueError("LearnedRewardConnector: GAIL/AIRL trains exactly one net")
        self.nets_bytes = {key: file_format.to_bytes(net) for key, net in nets.items()}
        self.net_chains = {key: format_chain(net) for key, net in nets.items()}
        self.net_classes = tuple({type(m) for net in nets.values() for m in net.modules()})
        self.options = dict(options)
        self.env_actions = env_actions
        self.previous = previous
        self.modules = None if modules is None else dict(modules)
        self.unmatched_modules = unmatched_modules
        if adversarial is not None:
            self.adversarial = dict(adversarial)

    @property
    def multi_agent(self) -> bool:
        """Whether the config is multi-agent (nets relabel per module)."""
        return self.modules is not None

    def load_nets(self) -> dict[str, RewardNet]:
        """Fresh CPU copies of the nets, by key."""
        for cls in self.net_classes:
            file_format.register_safe_class(cls)
        return {key: file_format.from_bytes(data, "cpu") for key, data in self.nets_bytes.items()}

    def __call__(self, input_observation_space: Any, input_action_space: Any) -> list[ConnectorV2]:
        """The pieces to put at the front of a learner pipeline."""
        previous: list[ConnectorV2] = []
        if self.previous is not None:
            more = self.previous(input_observation_space, input_action_space)
            previous = list(more) if isinstance(more, (list, tuple)) else [more]
        # Recorded env-unit actions are mapped into the RLModule's units before the
        # relabeling, which gives the net env units as it does online.
        pieces = [p for p in previous if isinstance(p, EnvUnitActions)]
        for key, net in self.load_nets().items():
            routing = {
                "multi_agent": self.multi_agent,
                "module_ids": None if self.modules is None else self.modules[key],
                "net_key": key,
            }
            if self.adversarial is not None:
                pieces.append(AdversarialRewards(net, **self.options, **self.adversarial))
            else:
                pieces.append(RelabelRewards(net, **self.options, **routing))
        return pieces + [p for p in previous if not isinstance(p, EnvUnitActions)]

    def __repr__(self) -> str:
        return (
            f"LearnedRewardConnector({self.net_chains}, {self.options}, "
            f"modules={self.modules}, previous={self.previous!r})"
        )


__all__ = ["LearnedRewardConnector"]
