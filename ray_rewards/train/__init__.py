"""Reward training: Ray Train (``TorchTrainer``) jobs, or the same loop in process.

- ``schemas``: Arrow schemas of transitions and preference pairs; Parquet in and out.
- ``losses``: preference (Bradley–Terry), AIRL and GAIL discriminator, regression.
- ``oracle``: fragments from RLlib episodes, labeled by a synthetic preference oracle.
- ``trainer``: :class:`TrainConfig` -> ``TorchTrainer``; :func:`train` runs it.
- ``pipeline``: the end-to-end job (``ray-rewards pipeline``).
"""

from ray_rewards.train.losses import (
    LOSSES,
    airl_discriminator_loss,
    gail_discriminator_loss,
    preference_loss,
    regression_loss,
)
from ray_rewards.train.oracle import (
    PreferenceOracle,
    episodes_to_transitions,
    preference_pairs,
    sample_fragments,
)
from ray_rewards.train.schemas import (
    collect_numpy,
    preference_schema,
    read_parquet,
    to_table,
    transitions_schema,
    write_parquet,
)
from ray_rewards.train.trainer import TrainConfig, TrainResult, build_net, build_trainer, train

__all__ = [
    "LOSSES",
    "PreferenceOracle",
    "TrainConfig",
    "TrainResult",
    "airl_discriminator_loss",
    "build_net",
    "build_trainer",
    "collect_numpy",
    "episodes_to_transitions",
    "gail_discriminator_loss",
    "preference_loss",
    "preference_pairs",
    "preference_schema",
    "read_parquet",
    "regression_loss",
    "sample_fragments",
    "to_table",
    "train",
    "transitions_schema",
    "write_parquet",
]
