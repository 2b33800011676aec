"""Shared fixtures: one Ray runtime per test session, started only when a test asks."""

from __future__ import annotations

import os

import pytest

# Keep Ray quiet and local: no dashboard, no usage stats, loopback only.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(scope="session")
def ray_session():
    """A single local Ray runtime for the whole session (oversubscribed 2-core CI box).

    8 logical CPUs so RLlib tests can place 2 learners and 2 env runners; it is shut
    down once at the end of the session.
    """
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=8,
            address="local",
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            _node_ip_address="127.0.0.1",
        )
    yield ray
    ray.shutdown()
