"""RLlib integration: train any new-API-stack RLlib algorithm on a learned reward.

- :class:`RelabelRewards` (``relabel_connector.py``): the learner-connector piece that
  writes a reward net's rewards into the episodes, one batched forward per call.
- :func:`with_learned_reward` (``config.py``): wires it into an AlgorithmConfig,
  with statistics merging across learners, learned-reward metrics and checkpoints
  that carry the net (``reward_state.py``, ``algorithm.py``).
"""

from ray_rewards.rllib.algorithm import LearnedRewardAlgorithm, learned_reward_algorithm_class
from ray_rewards.rllib.config import LearnedRewardConnector, with_learned_reward
from ray_rewards.rllib.relabel_connector import LEARNED_REWARD, RelabelRewards
from ray_rewards.rllib.reward_state import REWARD_NET_FILE, state_of

__all__ = [
    "LEARNED_REWARD",
    "REWARD_NET_FILE",
    "LearnedRewardAlgorithm",
    "LearnedRewardConnector",
    "RelabelRewards",
    "learned_reward_algorithm_class",
    "state_of",
    "with_learned_reward",
]
