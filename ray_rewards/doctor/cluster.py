"""The cluster side of ``ray-rewards doctor``: joining the cluster, one probe per worker
group (pinned to one of its nodes, findings back as plain data), and
:func:`run_checks`, everything together. The autoscaler check reads Ray internals of
the Ray range the package pins (2.60).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import threading
from typing import Any

from ray_rewards.doctor.checks import (
    PACKAGE,
    Finding,
    Status,
    _ok,
    _remove,
    _version,
    check_auth,
    check_fresh,
    environment_findings,
    facts,
    probe,
    write_probe,
)

# --- Joining the cluster -------------------------------------------------------------------------

_CLUSTER_FIX = (
    "start the cluster, or give its head's GCS address (--address HOST:6379 or RAY_ADDRESS)"
)


def _within(fn: Any, timeout: float) -> BaseException | None:
    """Run ``fn`` in a daemon thread: its exception, None, or TimeoutError if it is still
    running after ``timeout`` (Ray's clients retry for minutes on their own).
    """
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            fn()
            outcome.append(None)
        except BaseException as err:  # noqa: BLE001 - handed to the caller
            outcome.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else TimeoutError(f"no answer within {timeout:g} s")


def connect(address: str, timeout: float) -> tuple[Finding | None, bool]:
    """Join the Ray cluster at ``address``: ``(a FAIL finding or None, whether it
    refused this process's token)``. A ``host:port`` is first tried without Ray (a TCP
    connection, then a GCS client), so that a wrong address or token fails within
    ``timeout`` instead of after Ray's minutes of retries.
    """
    import ray
    from ray.exceptions import AuthenticationError

    if address.startswith(("http://", "https://")):
        found = f"{address} is the dashboard's address (for `ray job submit`), not the cluster's"
        return Finding("FAIL", "ray cluster", found, "--address HOST:6379 (the head's GCS)"), False
    host_port = address.removeprefix("ray://")
    if ":" in host_port:
        host, port = host_port.rsplit(":", 1)
        try:
            socket.create_connection((host, int(port)), timeout=timeout).close()
        except (OSError, ValueError) as err:
            found = f"nothing answers at {address}: {err}"
            return Finding("FAIL", "ray cluster", found, _CLUSTER_FIX), False
        if host_port == address:  # a GCS address
            from ray._raylet import GcsClient

            err = _within(lambda: GcsClient(address=address), timeout)
            if isinstance(err, AuthenticationError):
                return None, True
            if err is not None:
                found = f"no Ray cluster answers at {address}: {err}"
                return Finding("FAIL", "ray cluster", found, _CLUSTER_FIX), False
    try:
        ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    except AuthenticationError:
        return None, True
    except Exception as err:  # noqa: BLE001 - ConnectionError, RuntimeError...
        found = f"cannot connect to {address}: {err}"
        return Finding("FAIL", "ray cluster", found, _CLUSTER_FIX), False
    return None, False


# --- The cluster's groups, one probe each --------------------------------------------------------


def _resource_names(node: dict[str, Any]) -> list[str]:
    """The resources a node advertises that tell groups apart (CPU, GPU, custom ones)."""
    skip = ("memory", "object_store_memory")
    return sorted(
        k
        for k, v in node["Resources"].items()
        if v > 0 and k not in skip and not k.startswith(("node:", "accelerator_type:"))
    )


def node_groups(nodes: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Live nodes (``ray.nodes()``) by group: the ``ray.io/node-group`` label KubeRay
    sets, else the head apart and the others by the resources they advertise (e.g. the
    ``cpu_worker`` of our CPU workers, ``GPU``).
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for node in nodes:
        if not node["Alive"]:
            continue
        name = node.get("Labels", {}).get("ray.io/node-group")
        if not name:
            kind = "head" if "node:__internal_head__" in node["Resources"] else "nodes"
            name = f"{kind} with {'+'.join(_resource_names(node)) or 'no resources'}"
        groups.setdefault(name, []).append(node)
    return groups


def check_idle_groups(groups: dict[str, list[dict[str, Any]]]) -> list[Finding]:
    """The groups the autoscaler reported to Ray (its node group configs) that have no
    live node: reported, not probed (a probe would make the autoscaler start a node).
    """
    import ray._private.state

    try:
        config = ray._private.state.state.get_cluster_config()
    except Exception:  # noqa: BLE001 - a Ray internal: without it, nothing to report
        return []
    live = {tuple(_resource_names(n)) for nodes in groups.values() for n in nodes}
    findings = []
    for group in config.node_group_configs if config else ():
        names = tuple(sorted(k for k, v in group.resources.items() if v > 0))
        if group.name in groups or names in live:
            continue
        most = group.max_count if group.max_count >= 0 else "unlimited"
        found = (
            f"no live node (autoscaler: min {group.min_count}, max {most}, each node "
            f"{dict(group.resources)}): not probed"
        )
        fix = f"start a node of {group.name} (min replicas >= 1) and rerun the doctor to check it"
        findings.append(Finding("warn", f"group {group.name}", found, fix))
    return findings


def _probe_failure(err: BaseException) -> tuple[str, str]:
    """What a failed probe says and its fix."""
    cause = getattr(err, "cause", None) or err
    text = f"{type(cause).__name__}: {cause}".strip().splitlines()[-1]
    if isinstance(cause, ImportError) or "No module named" in text:
        fix = f"install ray_rewards {_version(PACKAGE)} and its dependencies in the group's image"
        return f"the probe failed: {text}", fix
    return f"the probe failed: {text}", "repair what the error names, then rerun the doctor"


def probe_groups(
    groups: dict[str, list[dict[str, Any]]],
    job: str | None,
    storage_path: str | None,
    shared: tuple[str, bytes] | None,
    timeout: float,
) -> tuple[list[Finding], set[str]]:
    """One probe task per group, pinned to its first node (no CPU asked, so the head's
    ``num-cpus: 0`` takes it too), all within ``timeout``: their findings, compared with
    this process's versions, and the authentication modes the nodes run.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    remote = ray.remote(probe)
    refs = {}
    for name, nodes in groups.items():
        node = nodes[0]
        pin = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        options = {"num_cpus": 0, "max_retries": 0, "scheduling_strategy": pin}
        gpus = node["Resources"].get("GPU", 0.0)
        ref = remote.options(**options).remote(job, storage_path, shared, gpus)
        refs[ref] = f"group {name} ({node['NodeManagerAddress']})"
    if not refs:
        return [], set()
    _, pending = ray.wait(list(refs), num_returns=len(refs), timeout=timeout)
    for ref in pending:
        ray.cancel(ref, force=True)
    here, findings, modes = facts(), [], set()
    for ref, where in refs.items():
        if ref in pending:
            found = f"its probe did not finish within {timeout:g} s (node busy or gone?)"
            fix = "check the node (`ray status`, its raylet.out) or rerun with a longer --timeout"
            findings.append(Finding("FAIL", where, found, fix))
            continue
        try:
            result = ray.get(ref)
        except Exception as err:  # noqa: BLE001 - RayTaskError, WorkerCrashedError...
            findings.append(Finding("FAIL", where, *_probe_failure(err)))
            continue
        modes.add(result["facts"]["auth"])
        found = [Finding(**f) for f in result["findings"]]
        findings += [
            dataclasses.replace(f, what=f"{where} {f.what}") for f in found if f.status != "ok"
        ]
        oks = [f.what for f in found if f.status == "ok"]
        findings += _compare(where, here, result["facts"])
        findings.append(_ok(where, f"{len(oks)} checks ok: {', '.join(oks)}"))
    return findings, modes


def _compare(where: str, here: dict[str, str], there: dict[str, str]) -> list[Finding]:
    """FAIL where a node's Python minor, Ray or ray_rewards version differs from this
    process's (Ray pickles code and data between them), warn for torch.
    """
    findings = []
    for key in ("python", "ray", "ray_rewards", "torch"):
        a, b = here[key], there[key]
        if key == "python":
            a, b = a.rsplit(".", 1)[0], b.rsplit(".", 1)[0]
        if a != b:
            status: Status = "warn" if key == "torch" else "FAIL"
            found = f"{key} {there[key]} there, {here[key]} here (the driver)"
            fix = f"install {key} {here[key]} on every node (one image for the whole cluster)"
            findings.append(Finding(status, f"{where} {key}", found, fix))
    return findings


def cluster_findings(
    job: str | None, storage_path: str | None, timeout: float
) -> tuple[list[Finding], set[str]]:
    """The connected cluster: its groups, the groups without a node, one probe per
    group; with ``storage_path``, a probe file of this process's that every node must
    see. Also returns the authentication modes the nodes run.
    """
    import ray

    groups = node_groups(ray.nodes())
    address = ray.get_runtime_context().gcs_address
    nodes = sum(len(n) for n in groups.values())
    found = f"connected to {address}: {nodes} live node(s) in groups {', '.join(groups)}"
    findings = [_ok("ray cluster", found), *check_idle_groups(groups)]
    marker = None
    if storage_path:
        with contextlib.suppress(OSError, ValueError):  # this process's check reports it
            marker = write_probe(storage_path)
    try:
        shared = marker[:2] if marker else None
        probed, modes = probe_groups(groups, job, storage_path, shared, timeout)
    finally:
        if marker:
            with contextlib.suppress(OSError):
                _remove(marker[0], marker[2])
    return findings + probed, modes


# --- Everything ----------------------------------------------------------------------------------


def _local_gpus() -> float:
    """The GPUs Ray counts on this process's node."""
    import ray

    here = ray.get_runtime_context().get_node_id()
    return next((n["Resources"].get("GPU", 0.0) for n in ray.nodes() if n["NodeID"] == here), 0.0)


def run_checks(
    job: str | None = None,
    storage_path: str | None = None,
    address: str | None = None,
    timeout: float = 60.0,
) -> list[Finding]:
    """Everything that would stop ``job`` (a kind of ``ray_rewards.jobs.JOBS``; None:
    any), writing to ``storage_path``: this process's environment, Ray's token
    authentication and, on the Ray cluster at ``address`` (default ``RAY_ADDRESS``, or
    the one this process already joined), each worker group, every probe within
    ``timeout`` seconds. A cluster this joins it leaves again.
    """
    import ray

    address = address or os.environ.get("RAY_ADDRESS") or None
    cluster: list[Finding] = []
    refused = joined = False
    if not ray.is_initialized() and address:
        failure, refused = connect(address, timeout)
        joined = failure is None and not refused
        cluster += [failure] if failure else []
    elif not ray.is_initialized():
        found = "none given (--address, RAY_ADDRESS): only this process was checked"
        cluster.append(_ok("ray cluster", found))
    try:
        connected = ray.is_initialized()
        findings = environment_findings(job, storage_path, _local_gpus() if connected else 0.0)
        findings += check_fresh(storage_path) if job and storage_path else []
        modes = None
        if connected:
            probed, modes = cluster_findings(job, storage_path, timeout)
            cluster += probed
        return findings + check_auth(refused, modes) + cluster
    finally:
        if joined:
            ray.shutdown()
