"""Which fragment pairs to ask about: uniformly drawn, or the ones a reward ensemble
is least sure about (imitation's ``RandomFragmenter`` / ``ActiveSelectionFragmenter``).

``candidates`` are fragments ``(M, T, ...)`` (columns ``obs``, ``actions``, ``new_obs``,
``terminateds``, optionally ``rewards``), e.g. from
:func:`ray_rewards.train.oracle.sample_fragments`; both functions return
:data:`~ray_rewards.preferences.fragments.Pairs` with fresh query ids.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ray_rewards.preferences.fragments import Pairs, make_pairs
from ray_rewards.reward_nets import RewardEnsemble, RewardNet

UNCERTAINTY = ("logit", "probability", "label")


def _num_fragments(candidates: Mapping[str, np.ndarray]) -> int:
    if "obs" not in candidates:
        raise KeyError(f"candidates: expected fragment columns, got {sorted(candidates)}")
    return len(candidates["obs"])


def _draw(m: int, num_pairs: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Fragment indices of ``num_pairs`` pairs: distinct fragments while there are enough."""
    if m < 2:
        raise ValueError(f"expected at least 2 candidate fragments, got {m}")
    index = rng.choice(m, 2 * num_pairs, replace=m < 2 * num_pairs)
    return index[:num_pairs], index[num_pairs:]


def uniform_pairs(
    candidates: Mapping[str, np.ndarray], num_pairs: int, rng: np.random.Generator
) -> Pairs:
    """``num_pairs`` pairs of candidate fragments drawn uniformly (without replacement
    while ``2 * num_pairs <= M``).
    """
    return make_pairs(candidates, *_draw(_num_fragments(candidates), num_pairs, rng))


def member_returns(
    ensemble: RewardEnsemble | Sequence[RewardNet],
    fragments: Mapping[str, np.ndarray],
    discount_factor: float = 1.0,
) -> np.ndarray:
    """Each member's discounted return of each fragment, ``(num_members, M)``.

    One batched ``predict_processed`` call per member over all ``M * T`` transitions
    (processed rewards, as imitation's preference model uses; normalization
    statistics are not updated).
    """
    members = list(ensemble.members if isinstance(ensemble, RewardEnsemble) else ensemble)
    m, length = np.shape(fragments["obs"])[:2]

    def flat(name: str) -> np.ndarray:
        col = np.asarray(fragments[name])
        return col.reshape(m * length, *col.shape[2:])

    inputs = [flat(c) for c in ("obs", "actions", "new_obs", "terminateds")]
    rewards = np.stack([net.predict_processed(*inputs, update_stats=False) for net in members])
    discounts = discount_factor ** np.arange(length)
    return rewards.reshape(len(members), m, length).astype(np.float64) @ discounts


def pair_uncertainty(
    returns_1: np.ndarray, returns_2: np.ndarray, uncertainty_on: str = "logit"
) -> np.ndarray:
    """Disagreement of the members about each pair, ``(P,)``, from returns ``(K, P)``.

    ``logit``: variance (ddof=1) of ``R_1 - R_2`` over members; ``probability``:
    variance (ddof=0) of ``sigmoid(R_1 - R_2)``; ``label``: ``p (1 - p)`` with ``p``
    the fraction of members predicting fragment 1 (imitation's three estimates).
    """
    diff = np.asarray(returns_1, np.float64) - np.asarray(returns_2, np.float64)
    if uncertainty_on == "logit":
        return diff.var(0, ddof=1)
    if uncertainty_on not in UNCERTAINTY:
        raise ValueError(f"uncertainty_on: expected one of {UNCERTAINTY}, got {uncertainty_on!r}")
    probs = 1 / (1 + np.exp(-np.clip(diff, -50.0, 50.0)))
    if uncertainty_on == "probability":
        return probs.var(0)
    p = (probs > 0.5).mean(0)
    return p * (1 - p)


def active_pairs(
    candidates: Mapping[str, np.ndarray],
    num_pairs: int,
    ensemble: RewardEnsemble | Sequence[RewardNet],
    rng: np.random.Generator,
    oversampling: float = 5,
    uncertainty_on: str = "logit",
    discount_factor: float = 1.0,
) -> Pairs:
    """The ``num_pairs`` most uncertain of ``int(oversampling * num_pairs)`` uniformly
    drawn candidate pairs (:func:`pair_uncertainty`, highest first).

    Every candidate fragment goes through each member once (:func:`member_returns`);
    pairs are scored from those returns. ``discount_factor`` discounts the returns
    (imitation's ``logit`` estimate always sums them undiscounted; 1.0 matches it).
    """
    if uncertainty_on not in UNCERTAINTY:
        raise ValueError(f"uncertainty_on: expected one of {UNCERTAINTY}, got {uncertainty_on!r}")
    num_candidates = int(oversampling * num_pairs)
    if num_pairs <= 0:
        return uniform_pairs(candidates, 0, rng)
    if num_candidates < num_pairs:
        raise ValueError(f"oversampling must be >= 1, got {oversampling}")
    first, second = _draw(_num_fragments(candidates), num_candidates, rng)
    used, inverse = np.unique(np.concatenate([first, second]), return_inverse=True)
    fragments = {name: np.asarray(col)[used] for name, col in candidates.items()}
    returns = member_returns(ensemble, fragments, discount_factor)
    scores = pair_uncertainty(
        returns[:, inverse[:num_candidates]], returns[:, inverse[num_candidates:]], uncertainty_on
    )
    best = np.argsort(-scores, kind="stable")[:num_pairs]
    return make_pairs(candidates, first[best], second[best])


__all__ = ["UNCERTAINTY", "active_pairs", "member_returns", "pair_uncertainty", "uniform_pairs"]
