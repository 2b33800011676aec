"""ray_rewards: learned reward functions (imitation's RewardNet API) on Ray."""

from ray_rewards import networks, preprocessing, reward_nets, stats

__version__ = "0.1.0"

__all__ = ["networks", "preprocessing", "reward_nets", "stats"]
