"""Building blocks of preference learning (imitation's ``PreferenceComparisons``), free
of RLlib: the loop in :mod:`ray_rewards.rllib` calls them.

- ``fragments``: fragment pairs as numpy columns; cutting and pairing fragments; the
  preference-schema table ``ray-rewards train`` reads.
- ``gatherers``: who labels pairs, without blocking: :class:`SyntheticGatherer` (from
  the env's reward) and :class:`AsyncGatherer` (people, through a queue folder).
- ``selection``: uniform pairs, or the pairs a reward ensemble disagrees on most.
- ``schedule``: how many pairs to query per round, resumable.
- ``store``: every label so far, an append-only Parquet folder to train from.
"""

from ray_rewards.preferences.fragments import (
    Pairs,
    concat,
    fragment_pairs,
    make_pairs,
    num_pairs,
    preference_table,
    take,
    to_preference_columns,
)
from ray_rewards.preferences.gatherers import (
    SKIP,
    AsyncGatherer,
    PreferenceGatherer,
    SyntheticGatherer,
)
from ray_rewards.preferences.schedule import SCHEDULES, QuerySchedule
from ray_rewards.preferences.selection import active_pairs, member_returns, uniform_pairs
from ray_rewards.preferences.store import PreferenceStore

__all__ = [
    "SCHEDULES",
    "SKIP",
    "AsyncGatherer",
    "Pairs",
    "PreferenceGatherer",
    "PreferenceStore",
    "QuerySchedule",
    "SyntheticGatherer",
    "active_pairs",
    "concat",
    "fragment_pairs",
    "make_pairs",
    "member_returns",
    "num_pairs",
    "preference_table",
    "take",
    "to_preference_columns",
    "uniform_pairs",
]
