"""RLlib integration: train any new-API-stack RLlib algorithm on a learned reward.

- :class:`RelabelRewards` (``relabel_connector.py``): the learner-connector piece that
  writes a reward net's rewards into the episodes, one batched forward per call;
  ``episodes.py`` gathers the transitions and writes the rewards back.
- :func:`with_learned_reward` (``config.py``): wires it into an AlgorithmConfig
  through a :class:`LearnedRewardConnector` (``learner_connector.py``), with
  statistics merging across learners, learned-reward metrics and checkpoints that
  carry the net (``reward_state.py``, ``algorithm.py``); env-runner mode in
  ``env_runner_relabel.py``.
- :func:`with_adversarial_reward` (``config.py``): GAIL/AIRL, the discriminator
  trained on the learners by :class:`AdversarialRewards` (``adversarial.py``) against
  expert transitions (``demonstrations.py``).
- :func:`with_preference_learning` (``preference_learning.py``): preference
  comparisons in the loop, labels from a ``ray_rewards.preferences`` gatherer.
- :func:`record_demonstrations` (``record.py``): a trained policy's transitions as Parquet.
- :func:`with_env_unit_actions` (``config.py``): offline data recorded in env units
  read by RLlib's offline algorithms (:class:`EnvUnitActions`, ``offline.py``).
- ``_compat.py``: every RLlib internal the integration relies on.

Modules depend one way: config -> algorithm -> reward_state -> learner_connector ->
(adversarial -> relabel_connector -> episodes, offline).
"""

from ray_rewards.rllib.adversarial import AdversarialRewards
from ray_rewards.rllib.algorithm import LearnedRewardAlgorithm, learned_reward_algorithm_class
from ray_rewards.rllib.config import (
    with_adversarial_reward,
    with_env_unit_actions,
    with_learned_reward,
)
from ray_rewards.rllib.learner_connector import LearnedRewardConnector
from ray_rewards.rllib.preference_learning import preference_rounds, with_preference_learning
from ray_rewards.rllib.record import RecordResult, record_demonstrations
from ray_rewards.rllib.relabel_connector import LEARNED_REWARD, RelabelRewards
from ray_rewards.rllib.reward_state import REWARD_NET_FILE, state_of

__all__ = [
    "AdversarialRewards",
    "LEARNED_REWARD",
    "REWARD_NET_FILE",
    "LearnedRewardAlgorithm",
    "LearnedRewardConnector",
    "RecordResult",
    "RelabelRewards",
    "learned_reward_algorithm_class",
    "preference_rounds",
    "record_demonstrations",
    "state_of",
    "with_adversarial_reward",
    "with_env_unit_actions",
    "with_learned_reward",
    "with_preference_learning",
]
