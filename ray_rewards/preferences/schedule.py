"""How many pairs to query in each round (imitation's ``PreferenceComparisons.train``
schedule), resumable.

Of a budget of ``total_labels`` comparisons, an initial round gets
``int(total_labels * initial_fraction)``; the rest is shared among ``num_rounds``
rounds in proportion to ``kind(t)`` at ``t = linspace(0, 1, num_rounds)``, rounded to
integers that sum exactly to it (largest remainders get the extra units). As in
imitation, the initial round comes *before* the ``num_rounds`` scheduled ones, so there
are ``num_rounds + 1`` rounds in all (``len(schedule)``); ``num_rounds`` is imitation's
``num_iterations``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

SCHEDULES: dict[str, Callable[[float], float]] = {
    "constant": lambda t: 1.0,
    "hyperbolic": lambda t: 1.0 / (1.0 + t),
    "inverse_quadratic": lambda t: 1.0 / (1.0 + t**2),
}
"""Named query schedules: relative query volume at training progress ``t`` in [0, 1]."""


def integer_shares(amounts: np.ndarray) -> np.ndarray:
    """Round non-negative ``amounts`` (summing to an integer) to integers with the same
    sum: floors, plus one for the largest fractional parts (first ones on ties).
    """
    amounts = np.asarray(amounts, np.float64)
    floors = np.floor(amounts)
    extra = int(round(amounts.sum() - floors.sum()))
    order = np.argsort(-(amounts - floors), kind="stable")
    floors[order[:extra]] += 1
    return floors.astype(np.int64)


class QuerySchedule:
    """Pairs to query per round; :meth:`next` walks through the rounds.

    Args:
        total_labels: the whole label budget (imitation's ``total_comparisons``).
        num_rounds: scheduled rounds after the initial one (imitation's ``num_iterations``).
        kind: ``"hyperbolic"``, ``"constant"``, ``"inverse_quadratic"``, or a callable
            ``t -> relative volume`` (a callable's schedule restores only when given
            again to :meth:`from_state`).
        initial_fraction: share of the budget for the initial round
            (imitation's ``initial_comparison_frac``).
    """

    def __init__(
        self,
        total_labels: int,
        num_rounds: int,
        kind: str | Callable[[float], float] = "hyperbolic",
        initial_fraction: float = 0.1,
    ) -> None:
        if total_labels < 0 or num_rounds < 1:
            raise ValueError(
                f"expected total_labels >= 0 and num_rounds >= 1, got {total_labels}, {num_rounds}"
            )
        if not 0.0 <= initial_fraction <= 1.0:
            raise ValueError(f"initial_fraction must be in [0, 1], got {initial_fraction}")
        if not callable(kind) and kind not in SCHEDULES:
            raise ValueError(
                f"kind: expected one of {sorted(SCHEDULES)} or a callable, got {kind!r}"
            )
        self.total_labels, self.num_rounds = int(total_labels), int(num_rounds)
        self.kind, self.initial_fraction = kind, float(initial_fraction)
        schedule = kind if callable(kind) else SCHEDULES[kind]
        initial = int(self.total_labels * self.initial_fraction)
        weights = np.array([schedule(t) for t in np.linspace(0, 1, self.num_rounds)], np.float64)
        if np.any(weights < 0) or not np.isfinite(weights).all() or weights.sum() <= 0:
            raise ValueError(f"kind: expected finite, non-negative volumes, got {weights}")
        shares = integer_shares(weights / weights.sum() * (self.total_labels - initial))
        self.counts: tuple[int, ...] = (initial, *(int(s) for s in shares))
        self.round = 0

    def __len__(self) -> int:
        """Number of rounds, the initial one included (``num_rounds + 1``)."""
        return len(self.counts)

    def __getitem__(self, round_index: int) -> int:
        """Pairs to query in round ``round_index`` (0 is the initial round)."""
        return self.counts[round_index]

    @property
    def done(self) -> bool:
        """Whether every round has been handed out."""
        return self.round >= len(self.counts)

    @property
    def remaining(self) -> int:
        """Labels of the rounds not handed out yet."""
        return sum(self.counts[self.round :])

    def next(self) -> int:
        """Pairs to query in the current round; moves on to the next round."""
        if self.done:
            raise StopIteration(f"QuerySchedule: all {len(self.counts)} rounds are done")
        count = self.counts[self.round]
        self.round += 1
        return count

    def get_state(self) -> dict[str, Any]:
        """A JSON-able state; :meth:`from_state` rebuilds the schedule at the same round."""
        return {
            "total_labels": self.total_labels,
            "num_rounds": self.num_rounds,
            "kind": None if callable(self.kind) else self.kind,
            "initial_fraction": self.initial_fraction,
            "round": self.round,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Continue at the round of ``state`` (from a schedule of the same settings)."""
        mine = self.get_state()
        changed = [
            k for k in ("total_labels", "num_rounds", "initial_fraction") if state[k] != mine[k]
        ]
        if state["kind"] is not None and state["kind"] != mine["kind"]:
            changed.append("kind")
        if changed:
            raise ValueError(f"QuerySchedule.set_state: settings differ: {changed}")
        self.round = int(state["round"])

    @classmethod
    def from_state(
        cls, state: dict[str, Any], kind: Callable[[float], float] | None = None
    ) -> QuerySchedule:
        """The schedule of ``state``, at its round (pass ``kind`` again if it was a callable)."""
        if state["kind"] is None and kind is None:
            raise ValueError("QuerySchedule.from_state: the schedule was a callable; pass kind")
        schedule = cls(
            state["total_labels"],
            state["num_rounds"],
            state["kind"] or kind,
            state["initial_fraction"],
        )
        schedule.round = int(state["round"])
        return schedule

    def __repr__(self) -> str:
        return f"QuerySchedule(counts={list(self.counts)}, round={self.round})"


__all__ = ["SCHEDULES", "QuerySchedule", "integer_shares"]
