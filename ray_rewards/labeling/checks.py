"""What a labeling request may say: the checks of its fields, and the error that
refuses it (an HTTP status, a short code and a message for the person).
"""

from __future__ import annotations

import re
from typing import Any

from ray_rewards.preferences.gatherers import SKIP

PREFERENCES = {1.0: "fragment 1 better", 0.0: "fragment 2 better", 0.5: "equally good"}
"""The answers a person gives (besides skip): the probability that fragment 1 is better."""

_ID_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,200}")


class LabelingError(Exception):
    """A request the service refuses: HTTP ``status``, a short ``code`` and a message
    for the person (or program) that sent it. Nothing was changed.
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def check_labeler(labeler: Any) -> str:
    """The labeler's name, stripped; LabelingError unless a non-empty printable string
    of at most 100 characters.
    """
    if not isinstance(labeler, str) or not labeler.strip():
        raise LabelingError(400, "bad_labeler", "labeler: give your name (a non-empty string)")
    labeler = labeler.strip()
    if len(labeler) > 100 or not labeler.isprintable():
        raise LabelingError(
            400, "bad_labeler", "labeler: at most 100 printable characters, no control characters"
        )
    return labeler


def check_preference(value: Any) -> float:
    """An answer's preference: 1, 0, 0.5, or ``"skip"``/None (:data:`SKIP`)."""
    if value is None or value == "skip":
        return SKIP
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value in PREFERENCES:
        return float(value)
    raise LabelingError(
        400,
        "bad_preference",
        f"preference: expected 1 (fragment 1 better), 0 (fragment 2 better), 0.5 (equally "
        f'good) or "skip", got {value!r}',
    )


def check_query_id(value: Any) -> str:
    """A query id as sent by a client: a short string of letters, digits, ``_.:-``."""
    if not isinstance(value, str) or not _ID_PATTERN.fullmatch(value) or value in (".", ".."):
        raise LabelingError(400, "bad_query_id", f"query_id: not a query id: {value!r:.80}")
    return value


__all__ = ["PREFERENCES", "LabelingError", "check_labeler", "check_preference", "check_query_id"]
