"""Synthetic preferences: fragments from RLlib rollouts, labeled from the env's reward.

A stand-in for human labelers (imitation's ``SyntheticGatherer``) so the whole
preference-learning pipeline can be tested without humans:

1. :func:`episodes_to_transitions` flattens RLlib ``SingleAgentEpisode`` chunks
   into transition columns (with the env's reward);
2. :func:`sample_fragments` cuts fixed-length fragments out of them, never across
   an episode boundary;
3. :class:`PreferenceOracle` labels pairs of fragments by their (discounted)
   true returns, optionally with Bradley–Terry noise;
4. :func:`preference_pairs` puts it together into the columns of
   :func:`ray_rewards.train.schemas.preference_schema`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium import spaces

from ray_rewards.train import schemas

Columns = dict[str, np.ndarray]


def episodes_to_transitions(
    episodes: Sequence[Any],
    *,
    action_space: spaces.Space | None = None,
    normalize_actions: bool = False,
    clip_actions: bool = False,
) -> tuple[Columns, np.ndarray]:
    """Transition columns of RLlib episode chunks, and each chunk's length.

    Columns: ``obs``, ``actions``, ``new_obs``, ``terminateds`` (True only on the
    last step of a terminated episode; truncation is not a terminal state) and
    ``rewards`` (the env's), each ``(sum of lengths, ...)``, chunks back to back.

    RLlib episodes hold the RLModule's actions; ``normalize_actions`` /
    ``clip_actions`` (set them like the algorithm config's) turn them into the
    actions the env received, exactly as :func:`ray_rewards.rllib.with_learned_reward`
    shows them to the net, so a net trained on these columns sees the same inputs
    during RL. Episodes sampled with ``random_actions=True`` already hold env
    actions: leave both False for them.
    """
    chunks = [e for e in episodes if len(e) > 0]
    if not chunks:
        raise ValueError("episodes_to_transitions: expected at least one non-empty episode")
    lengths = np.array([len(e) for e in chunks], dtype=np.int64)
    obs = [np.asarray(e.get_observations(slice(0, len(e) + 1))) for e in chunks]
    terminateds = np.zeros(lengths.sum(), dtype=bool)
    terminateds[np.cumsum(lengths)[[e.is_terminated for e in chunks]] - 1] = True
    actions = np.concatenate([np.asarray(e.get_actions(slice(0, len(e)))) for e in chunks])
    if normalize_actions or clip_actions:
        if action_space is None:
            raise ValueError("episodes_to_transitions: normalize/clip_actions need action_space")
        from ray.rllib.utils.spaces.space_utils import (
            clip_action,
            get_base_struct_from_space,
            unsquash_action,
        )

        struct = get_base_struct_from_space(action_space)
        actions = (unsquash_action if normalize_actions else clip_action)(actions, struct)
    columns = {
        "obs": np.concatenate([o[:-1] for o in obs]),
        "actions": actions,
        "new_obs": np.concatenate([o[1:] for o in obs]),
        "terminateds": terminateds,
        "rewards": np.concatenate([np.asarray(e.get_rewards(slice(0, len(e)))) for e in chunks]),
    }
    return columns, lengths


def sample_fragments(
    transitions: Mapping[str, np.ndarray],
    lengths: np.ndarray,
    fragment_length: int,
    num_fragments: int,
    rng: np.random.Generator,
) -> Columns:
    """``num_fragments`` windows of ``fragment_length`` consecutive transitions.

    Start points are drawn uniformly (with replacement) among all windows that fit
    inside one chunk of ``lengths``; each column comes back as
    ``(num_fragments, fragment_length, ...)``. One fancy-indexing gather per column.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.sum() != len(transitions["obs"]):
        raise ValueError(
            f"sample_fragments: lengths sum to {lengths.sum()}, but there are "
            f"{len(transitions['obs'])} transitions"
        )
    starts_per_chunk = np.maximum(lengths - fragment_length + 1, 0)
    total = int(starts_per_chunk.sum())
    if total == 0:
        raise ValueError(
            f"sample_fragments: no chunk has {fragment_length} transitions "
            f"(longest: {lengths.max()})"
        )
    # The k-th valid window (k in [0, total)) lies in chunk c at offset k - first[c].
    k = rng.integers(total, size=num_fragments)
    first = np.cumsum(starts_per_chunk) - starts_per_chunk
    chunk = np.searchsorted(np.cumsum(starts_per_chunk), k, side="right")
    starts = (np.cumsum(lengths) - lengths)[chunk] + (k - first[chunk])
    index = starts[:, None] + np.arange(fragment_length)
    return {name: np.asarray(col)[index] for name, col in transitions.items()}


@dataclass(frozen=True)
class PreferenceOracle:
    """Label fragment pairs by their true returns (imitation's ``SyntheticGatherer``).

    ``P(fragment 1 preferred) = sigmoid((R_1 - R_2) / temperature)`` with ``R`` the
    ``discount_factor``-discounted sum of the env's rewards over the fragment.

    Attributes:
        temperature: 0 gives noiseless labels (1, 0, or 0.5 for a tie); larger values
            make the labeler noisier (Bradley–Terry noise).
        discount_factor: γ of the returns the labeler compares.
        sample: draw hard 0/1 labels from the probabilities (a noisy human) instead
            of returning the probabilities themselves (soft labels).
        threshold: clip ``|R_1 - R_2| / temperature`` here, avoiding overflow.
    """

    temperature: float = 0.0
    discount_factor: float = 1.0
    sample: bool = False
    threshold: float = 50.0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.discount_factor <= 1.0:
            raise ValueError(f"discount_factor must be in (0, 1], got {self.discount_factor}")

    def returns(self, rewards: np.ndarray) -> np.ndarray:
        """Discounted returns ``(N,)`` of fragment rewards ``(N, T)``."""
        return np.asarray(rewards, np.float64) @ self.discount_factor ** np.arange(rewards.shape[1])

    def __call__(
        self, rewards_1: np.ndarray, rewards_2: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        """Preference for fragment 1, ``(N,)`` float64 in [0, 1], from ``(N, T)`` rewards."""
        diff = self.returns(rewards_1) - self.returns(rewards_2)
        if self.temperature == 0:
            probs = (np.sign(diff) + 1) / 2
        else:
            probs = 1 / (
                1 + np.exp(-np.clip(diff / self.temperature, -self.threshold, self.threshold))
            )
        return rng.binomial(1, probs).astype(np.float64) if self.sample else probs


def preference_pairs(
    transitions: Mapping[str, np.ndarray],
    lengths: np.ndarray,
    *,
    num_pairs: int,
    fragment_length: int,
    oracle: PreferenceOracle,
    rng: np.random.Generator,
) -> Columns:
    """Columns of :func:`~ray_rewards.train.schemas.preference_schema`: ``num_pairs``
    pairs of independently sampled fragments, labeled by ``oracle``.
    """
    if "rewards" not in transitions:
        raise KeyError("preference_pairs: transitions need a 'rewards' column for the oracle")
    frags = sample_fragments(transitions, lengths, fragment_length, 2 * num_pairs, rng)
    columns: Columns = {}
    for i, part in ((1, slice(0, num_pairs)), (2, slice(num_pairs, None))):
        for name in schemas.FRAGMENT_COLUMNS:
            columns[f"{name}_{i}"] = frags[name][part]
    columns["preference"] = oracle(frags["rewards"][:num_pairs], frags["rewards"][num_pairs:], rng)
    return columns
