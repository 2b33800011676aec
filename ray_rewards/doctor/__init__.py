"""``ray-rewards doctor``: what would stop a job, found before the job starts.

Each check is a small function returning findings (:class:`Finding`): ok, warn or
FAIL (FAIL blocks the job), what was checked, what was found and, for every non-ok
finding, the fix. :func:`~ray_rewards.doctor.checks.environment_findings` checks the
process it runs in (``checks.py``); connected to a Ray cluster (``--address``,
``RAY_ADDRESS`` or a Ray already initialized), :func:`run_checks` also runs it in one
probe task per worker group, pinned to one node of the group, and the probes send
their findings back as plain data (``cluster.py``).
"""

from ray_rewards.doctor.checks import Finding, parse_nvidia_smi
from ray_rewards.doctor.cluster import run_checks

__all__ = ["Finding", "parse_nvidia_smi", "run_checks"]
