"""ray_rewards: learned reward functions (imitation's RewardNet API) on Ray."""

# serialize (through file_format) registers the safe-loading allowlist with torch at import.
from ray_rewards import networks, preprocessing, reward_nets, serialize, stats

__version__ = "0.1.0"

__all__ = ["networks", "preprocessing", "reward_nets", "serialize", "stats"]
