"""What a saved net is made of: its wrapper chain, spaces, size and statistics.

:func:`describe` is what ``ray-rewards inspect`` prints.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ray_rewards import networks, reward_nets
from ray_rewards.stats import Moments


def wrapper_chain(net: reward_nets.RewardNet) -> list[reward_nets.RewardNet]:
    """``net``, its base, its base's base, ... down to the innermost net."""
    chain = [net]
    while isinstance(chain[-1], reward_nets.RewardNetWrapper):
        chain.append(chain[-1].base)
    return chain


def format_chain(net: reward_nets.RewardNet) -> str:
    """The wrapper chain as nested calls, e.g. ``NormalizedRewardNet(BasicRewardNet)``.

    An ensemble shows its members: ``RewardEnsemble[BasicRewardNet, BasicRewardNet]``.
    """
    names = []
    for n in wrapper_chain(net):
        name = type(n).__name__
        if isinstance(n, reward_nets.RewardEnsemble):
            name += "[" + ", ".join(format_chain(m) for m in n.members) + "]"
        names.append(name)
    return "(".join(names) + ")" * (len(names) - 1)


@dataclasses.dataclass(frozen=True)
class NormStats:
    """Statistics of one normalization layer: its name in the net, class and moments."""

    layer: str
    kind: str
    moments: Moments


@dataclasses.dataclass(frozen=True)
class NetDescription:
    """What :func:`describe` reports about a net (printed by ``ray-rewards inspect``)."""

    chain: str
    observation_space: str
    action_space: str
    num_parameters: int
    num_trainable: int
    device: str
    dtype: str
    norm_stats: tuple[NormStats, ...]

    def format(self) -> str:
        """Human-readable multi-line report."""

        def arr(x: np.ndarray) -> str:
            return np.array2string(x, precision=4, threshold=8, edgeitems=3)

        lines = [
            f"wrapper chain:     {self.chain}",
            f"observation space: {self.observation_space}",
            f"action space:      {self.action_space}",
            f"parameters:        {self.num_parameters:,} ({self.num_trainable:,} trainable), "
            f"{self.dtype} on {self.device}",
        ]
        if not self.norm_stats:
            lines.append("normalization:     none")
        else:
            lines.append("normalization statistics:")
            for s in self.norm_stats:
                m = s.moments
                lines.append(
                    f"  {s.layer} ({s.kind}): count={m.count} mean={arr(m.mean)} std={arr(m.std)}"
                )
        return "\n".join(lines)


def describe(net: reward_nets.RewardNet) -> NetDescription:
    """Wrapper chain, spaces, parameter counts and per-layer normalization statistics."""
    params = list(net.parameters())
    moments = networks.norm_moments(net)
    return NetDescription(
        chain=format_chain(net),
        observation_space=str(net.observation_space),
        action_space=str(net.action_space),
        num_parameters=sum(p.numel() for p in params),
        num_trainable=sum(p.numel() for p in params if p.requires_grad),
        device=str(net.device),
        dtype=str(net.dtype),
        norm_stats=tuple(
            NormStats(name, type(net.get_submodule(name)).__name__, m)
            for name, m in moments.items()
        ),
    )
