"""The checks of one process's environment (here, and in each worker group's probe).

Reason for its length: every finding about one process lives here, each check a
short function of its own; split further, a reader would hop between files.

Parts: findings; the package and its requirements; optional pieces per job kind;
torch and GPUs; storage; Ray's token authentication; :func:`environment_findings`,
all of them for one process. The token check reads Ray internals of the Ray range
the package pins (2.60).
"""

from __future__ import annotations

import dataclasses
import errno
import importlib
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterable
from importlib import metadata
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from packaging.requirements import Requirement

Status = Literal["ok", "warn", "FAIL"]
PACKAGE = "ray_rewards"


@dataclasses.dataclass(frozen=True)
class Finding:
    """One result: ``status`` (FAIL blocks the job), ``what`` was checked, what was
    ``found`` and, unless ok, the ``fix`` (the command or setting that repairs it).
    """

    status: Status
    what: str
    found: str
    fix: str = ""

    def line(self) -> str:
        """The finding as the one line the command prints."""
        text = f"{self.status:<4}  {self.what}: {self.found}"
        return f"{text}  fix: {self.fix}" if self.fix else text


def _ok(what: str, found: str) -> Finding:
    return Finding("ok", what, found)


# --- The package and its requirements ------------------------------------------------------------


def _requirements(dist: str, extras: Iterable[str] = ()) -> list[Requirement]:
    """The installed metadata's requirements of ``dist``: its core ones and ``extras``'."""
    from packaging.requirements import Requirement

    out = []
    for text in metadata.requires(dist) or ():
        req = Requirement(text)
        if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in ("", *extras)):
            out.append(req)
    return out


def _pin(req: Requirement) -> str:
    """A requirement as ``pip install`` takes it (quoted, no marker)."""
    extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
    return f"'{req.name}{extras}{req.specifier}'"


def _version(dist: str) -> str:
    """The installed version of ``dist``, or a word saying it has no metadata."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "(no package metadata)"


def _unmet(req: Requirement) -> str | None:
    """Why what is installed does not satisfy ``req``; None when it does."""
    try:
        version = metadata.version(req.name)
    except metadata.PackageNotFoundError:
        return f"{req.name} is not installed"
    if not req.specifier.contains(version, prereleases=True):
        return f"{req.name} {version} (needs {req.specifier})"
    return None


def check_python() -> list[Finding]:
    """The interpreter against the package's ``Requires-Python``."""
    from packaging.specifiers import SpecifierSet

    need = metadata.metadata(PACKAGE).get("Requires-Python") or ""
    version = platform.python_version()
    found = f"{version} at {sys.executable} (ray_rewards needs {need or 'any'})"
    if SpecifierSet(need).contains(version):
        return [_ok("python", found)]
    return [Finding("FAIL", "python", found, f"run the job with a Python {need}")]


def check_package() -> list[Finding]:
    """The package's version, and whether the imported code is the installed one."""
    import ray_rewards

    installed = metadata.version(PACKAGE)
    where = os.path.dirname(os.path.abspath(ray_rewards.__file__))
    found = f"{ray_rewards.__version__} imported from {where}"
    if installed == ray_rewards.__version__:
        return [_ok("ray_rewards", found)]
    found += f", but the installed metadata says {installed} (a stale install)"
    return [Finding("warn", "ray_rewards", found, _reinstall())]


def _reinstall() -> str:
    """The command that reinstalls the package from where pip installed it."""
    import json

    record = metadata.distribution(PACKAGE).read_text("direct_url.json")
    url = json.loads(record).get("url", "") if record else ""
    if not url.startswith("file://"):
        return f"pip install --force-reinstall '{PACKAGE}=={_version(PACKAGE)}'"
    editable = json.loads(record).get("dir_info", {}).get("editable", False)
    return f"pip install {'-e ' if editable else '--force-reinstall '}{url[len('file://') :]}"


def _ray_requirement() -> Requirement:
    """The package's requirement on Ray (``ray[...]`` and the supported range)."""
    return next(r for r in _requirements(PACKAGE) if r.name == "ray")


def check_ray_version() -> list[Finding]:
    """Ray against the range the package supports (its installed metadata)."""
    req = _ray_requirement()
    problem = _unmet(req)
    if problem is None:
        return [_ok("ray", f"{metadata.version('ray')} (supported: {req.specifier})")]
    return [Finding("FAIL", "ray", f"{problem}: unsupported", f"pip install {_pin(req)}")]


def check_dependencies() -> list[Finding]:
    """The package's other requirements and the packages of the Ray extras it needs
    (``ray[rllib,train,data]``): installed and in range.
    """
    found: list[str] = []
    unmet: list[tuple[str, Requirement]] = []
    for req in _requirements(PACKAGE):
        if req.name == "ray":  # its own range is check_ray_version's
            extras = f"ray[{','.join(sorted(req.extras))}]"
            subs = _requirements("ray", req.extras) if _unmet(req) is None else []
            unmet += [(f"{p} ({extras})", sub) for sub in subs if (p := _unmet(sub))]
        elif problem := _unmet(req):
            unmet.append((problem, req))
        else:
            found.append(f"{req.name} {metadata.version(req.name)}")
    if not unmet:
        return [_ok("dependencies", ", ".join(found) + "; Ray's extras complete")]
    return [
        Finding(
            "FAIL",
            "dependencies",
            "; ".join(problem for problem, _ in unmet),
            "pip install " + " ".join(_pin(req) for _, req in unmet),
        )
    ]


# --- Optional pieces, per job kind ---------------------------------------------------------------

RLLIB_JOBS = ("rllib", "record", "adversarial", "preferences", "offline")


@dataclasses.dataclass(frozen=True)
class Piece:
    """An optional import: ``module``, from ``dist`` (``version_of``: the distribution
    whose version to show when ``dist`` is an extra), the ``fix`` that installs it
    (``{ray}``: the package's Ray range), why each job kind that may import it does
    (``used_by``; other kinds never do) and ``purpose``, what it is for in general.

    No job imports one unconditionally (each only for a setting or an extra output),
    so a missing one is a warning. ``submit_only`` pieces matter to every job, where
    jobs are submitted (the head), not on the workers.
    """

    module: str
    dist: str
    fix: str
    used_by: dict[str, str]
    purpose: str
    submit_only: bool = False
    version_of: str | None = None


PIECES = (
    Piece(
        "PIL",
        "Pillow",
        "pip install pillow",
        {
            **dict.fromkeys(
                RLLIB_JOBS,
                "RLlib's DreamerV3 imports it, as does Tune's lookup of an algorithm by name",
            ),
            "pipeline": "matplotlib draws the pipeline's plot with it",
        },
        "RLlib's DreamerV3 and matplotlib import it",
    ),
    Piece(
        "matplotlib.pyplot",
        "matplotlib",
        "pip install 'matplotlib>=3.7'",
        {"pipeline": "without it the pipeline writes no learning_curves.png"},
        "the pipeline's plot",
    ),
    Piece(
        "pygame",
        "pygame",
        "pip install 'pygame>=2.1'",
        {"preferences": "preferences.render: true draws classic-control frames with it"},
        "rendering queried fragments: the render extra",
    ),
    Piece(
        "stable_baselines3",
        "stable-baselines3",
        "pip install 'stable-baselines3>=2.5'",
        {},
        "only the SB3 integration, ray_rewards.util and reward_wrapper; no job uses it",
    ),
    Piece(
        "ray.dashboard.modules.job.job_head",
        "ray[default]",
        "pip install 'ray[default]{ray}'",
        {},
        "`ray job submit` needs the dashboard's job server on the head",
        submit_only=True,
        version_of="aiohttp",
    ),
)


def _import_error(module: str) -> ImportError | None:
    """Import ``module`` as a job would; the ImportError, or None when it imports."""
    os.environ.setdefault("MPLBACKEND", "Agg")  # as the pipeline's plot: no display
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")  # keeps stdout to findings
    try:
        importlib.import_module(module)
    except ImportError as err:
        return err
    return None


def check_optional(job: str | None, submit: bool = True) -> list[Finding]:
    """The optional pieces ``job`` may import (all of them when no job is given), each
    imported for real; ``submit``: also those needed where jobs are submitted.
    """
    findings = []
    for piece in PIECES:
        why = piece.purpose if job is None or piece.submit_only else piece.used_by.get(job)
        if why is None or (piece.submit_only and not submit):
            continue
        err = _import_error(piece.module)
        if err is None:
            dist = piece.version_of or piece.dist
            version = f"{dist} {_version(dist)}" if piece.version_of else _version(dist)
            findings.append(_ok(piece.dist, f"{version} ({why})"))
            continue
        # A piece may be missing a piece of its own (matplotlib without Pillow).
        missing = (err.name or "").split(".")[0]
        cause = next((p for p in PIECES if p.module.split(".")[0] == missing), piece)
        found = f"not importable ({err}); {why}"
        fix = cause.fix.format(ray=_ray_requirement().specifier)
        findings.append(Finding("warn", piece.dist, found, fix))
    return findings


# --- torch and GPUs ------------------------------------------------------------------------------


def nvidia_smi() -> tuple[str, str] | str | None:
    """``(driver version, the newest CUDA it supports)`` from ``nvidia-smi``'s header;
    None when there is no ``nvidia-smi``, its error when it fails.
    """
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"nvidia-smi failed: {err}"
    return parse_nvidia_smi(out.stdout) or f"nvidia-smi failed: {(out.stderr or out.stdout)[-300:]}"


def parse_nvidia_smi(text: str) -> tuple[str, str] | None:
    """``(driver version, CUDA version)`` from the header nvidia-smi prints, or None."""
    driver = re.search(r"Driver Version:\s*([\d.]+)", text)
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", text)
    return (driver.group(1), cuda.group(1)) if driver and cuda else None


def _cuda_tuple(version: str) -> tuple[int, int]:
    major, minor = (version.split(".") + ["0"])[:2]
    return int(major), int(minor)


def _torch_fix(torch_version: str, driver: tuple[str, str] | None) -> str:
    """The command that installs the CUDA build of this torch version for ``driver``
    (``(driver version, CUDA version)``; None: unknown).
    """
    base = torch_version.split("+")[0]
    if driver is None:
        tag = "cuXYZ, XYZ at most the driver's CUDA version (nvidia-smi's header shows it)"
    else:
        tag = "cu{}{}".format(*_cuda_tuple(driver[1]))
    return (
        f"pip install --force-reinstall 'torch=={base}' "
        f"--index-url https://download.pytorch.org/whl/{tag}"
    )


def check_torch(gpus: float) -> list[Finding]:
    """Torch's build against the GPUs this node claims (``gpus``: Ray's ``GPU``
    resource; any, when ``nvidia-smi`` is present) and against the driver's CUDA.
    """
    import torch

    smi = nvidia_smi()
    driver = smi if isinstance(smi, tuple) else None
    claim = f"{gpus:g} GPU(s) in Ray's resources" if gpus > 0 else None
    claim = claim or ("nvidia-smi is present" if smi is not None else None)
    version, cuda = torch.__version__, torch.version.cuda
    if cuda is None and claim:
        found = f"CPU-only torch {version}, but this node claims GPUs ({claim})"
        build = Finding("FAIL", "torch build", found, _torch_fix(version, driver))
    else:
        build = _ok("torch build", f"{version}, {f'CUDA {cuda}' if cuda else 'CPU-only'}")
    findings = [build, _check_driver(smi, version, cuda, gpus)]
    if claim and cuda is not None:
        if torch.cuda.is_available():
            names = {torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())}
            found = f"{torch.cuda.device_count()} device(s): {', '.join(sorted(names))}"
            findings.append(_ok("CUDA", found))
        else:
            found = f"torch.cuda.is_available() is False, yet this node claims GPUs ({claim})"
            fix = (
                "check CUDA_VISIBLE_DEVICES and that the container gets the GPU (the pod's "
                "nvidia.com/gpu limit, the NVIDIA container runtime)"
            )
            findings.append(Finding("FAIL", "CUDA", found, fix))
    return findings


def _check_driver(
    smi: tuple[str, str] | str | None, version: str, cuda: str | None, gpus: float
) -> Finding:
    """The NVIDIA driver (``nvidia_smi()``) against torch's CUDA version."""
    if smi is None:
        found = "nvidia-smi not found: no NVIDIA driver here, its CUDA version unknown"
        if gpus <= 0:
            return _ok("GPU driver", found)
        fix = "run GPU work on nodes with the NVIDIA driver and container runtime (nvidia.com/gpu)"
        return Finding("warn", "GPU driver", f"{found}, yet Ray counts {gpus:g} GPU(s)", fix)
    if isinstance(smi, str):
        return Finding("FAIL", "GPU driver", smi, "repair the NVIDIA driver (nvidia-smi must run)")
    found = f"driver {smi[0]} supports CUDA <= {smi[1]}"
    if cuda is None:
        return _ok("GPU driver", found)
    found += f"; torch is built for CUDA {cuda}"
    ours, theirs = _cuda_tuple(cuda), _cuda_tuple(smi[1])
    if ours[0] > theirs[0]:
        return Finding("FAIL", "GPU driver", found, _torch_fix(version, smi))
    if ours > theirs:
        found += " (a newer minor: runs only under CUDA's minor-version compatibility)"
        return Finding("warn", "GPU driver", found, _torch_fix(version, smi))
    return _ok("GPU driver", found)


# --- Storage -------------------------------------------------------------------------------------

PROBE_PREFIX = ".ray_rewards_doctor-"


def _missing_ancestor(path: str) -> str | None:
    """The topmost folder of ``path`` that does not exist yet (what a write creates)."""
    top = None
    while path and not os.path.exists(path):
        top, path = path, os.path.dirname(path)
    return top


def _remove(path: str, created: str | None) -> None:
    """Delete the probe file ``path``, and the folders the write created up to ``created``."""
    from ray_rewards import storage

    fs, fs_path = storage.resolve(path)
    if fs is not None:
        fs.delete_file(fs_path)
        return
    os.remove(fs_path)
    folder = os.path.dirname(fs_path)
    while created and (folder == created or folder.startswith(created + os.sep)):
        try:
            os.rmdir(folder)
        except OSError:
            return
        folder = os.path.dirname(folder)


def _storage_fix(path: str, err: Exception) -> str:
    """The setting that makes ``path`` writable, from what stopped the write."""
    from ray_rewards import storage

    if isinstance(err, ValueError):
        return "give a local path or a URI pyarrow.fs understands (s3://, gs://, abfs://, hdfs://)"
    if storage.is_uri(path):
        return (
            f"give this node write access to {path} (credentials: an IAM role or "
            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY for s3://, GOOGLE_APPLICATION_CREDENTIALS "
            "for gs://) or choose another storage_path"
        )
    code = getattr(err, "errno", None)
    if code == errno.ENOTDIR:
        return f"part of {path} is a file, not a folder: choose another storage_path (--storage)"
    if code == errno.EROFS:
        return f"mount {path}'s volume read-write (readOnly: false) or choose another storage_path"
    if code in (errno.EACCES, errno.EPERM):
        folder = os.path.dirname(_missing_ancestor(path) or path + "/")
        if os.geteuid() == 0:
            return f"{folder} refuses even root (read-only or special): choose another storage_path"
        return (
            f"sudo chown -R {os.getuid()}:{os.getgid()} {folder} (or choose another storage_path)"
        )
    return "choose a storage_path this process can write (--storage)"


def write_probe(path: str) -> tuple[str, bytes, str | None]:
    """Write a small probe file into the storage ``path`` atomically (as jobs write);
    returns the file, its content and the first folder the write created.
    """
    from ray_rewards import storage
    from ray_rewards.jobs.outputs import storage_join

    path = storage.absolute(path)
    fs, fs_path = storage.resolve(path)
    created = _missing_ancestor(fs_path) if fs is None else None
    probe = storage_join(path, f"{PROBE_PREFIX}{uuid.uuid4().hex}")
    content = f"ray_rewards doctor on {socket.gethostname()}".encode()
    storage.write_bytes(probe, content)
    return probe, content, created


def check_storage(path: str, shared: tuple[str, bytes] | None = None) -> list[Finding]:
    """Write, read back and delete a probe file in ``path``; ``shared``: the driver's
    probe file, which every node must see (a shared filesystem or a URI).
    """
    from ray_rewards import storage

    findings = []
    try:
        probe, content, created = write_probe(path)
        if storage.read_bytes(probe) != content:
            raise OSError(errno.EIO, f"{probe} read back different bytes")
        _remove(probe, created)
        findings.append(_ok("storage", f"wrote, read back and deleted a probe file in {path}"))
    except (OSError, ValueError) as err:  # pyarrow: OSError, ArrowInvalid for bad URIs
        found = f"cannot write to {path}: {err}"
        return [Finding("FAIL", "storage", found, _storage_fix(storage.absolute(path), err))]
    if shared is not None:
        try:
            sees = storage.read_bytes(shared[0]) == shared[1]
        except OSError:
            sees = False
        if sees:
            findings.append(_ok("shared storage", f"sees the driver's probe file in {path}"))
        else:
            found = f"does not see the driver's probe file {shared[0]}: {path} is not shared"
            fix = (
                f"mount the same shared volume at {path} on every node (e.g. the "
                "ReadWriteMany volume at /mnt/shared) or use a URI (s3://, gs://)"
            )
            findings.append(Finding("FAIL", "shared storage", found, fix))
    return findings


def check_fresh(path: str) -> list[Finding]:
    """Whether ``path`` already holds a finished job's results (a job refuses to start
    there rather than mix two runs).
    """
    from ray_rewards.jobs.outputs import exists, storage_join
    from ray_rewards.jobs.runners import RESULTS_FILE

    try:
        if not exists(storage_join(path, RESULTS_FILE)):
            return []
    except (OSError, ValueError):
        return []  # unreadable: check_storage says why
    found = f"{path} holds a finished job's {RESULTS_FILE}: the job would refuse to start"
    fix = "choose a new storage_path (or pass the job --storage-path)"
    return [Finding("FAIL", "storage results", found, fix)]


# --- Ray's token authentication ------------------------------------------------------------------


def auth_mode() -> str:
    """This process's Ray authentication mode: ``token`` or ``disabled`` (``RAY_AUTH_MODE``)."""
    from ray._private.authentication.authentication_utils import get_authentication_mode_name
    from ray._raylet import get_authentication_mode

    return get_authentication_mode_name(get_authentication_mode())


def token_source() -> str | None:
    """Where this process's Ray token comes from (never the token), or None without one."""
    from ray._raylet import AuthenticationTokenLoader

    if not AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True):
        return None
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return f"RAY_AUTH_TOKEN_PATH={os.environ['RAY_AUTH_TOKEN_PATH']}"
    return "~/.ray/auth_token"


def check_auth(refused: bool, cluster_modes: set[str] | None) -> list[Finding]:
    """Whether the cluster requires a token and whether this process has one.

    ``refused``: the cluster refused this process's credentials (so it requires a
    token); ``cluster_modes``: the modes its nodes run (from the probes), None when
    not connected or unknown.
    """
    mode, source = auth_mode(), token_source()
    has = (
        f"this process has one ({source}; RAY_AUTH_MODE {mode})"
        if source
        else (f"this process has none (RAY_AUTH_MODE {mode})")
    )
    cluster_token = "the cluster's token (`ray get-auth-token` on the head prints it)"
    if refused:
        if source is None:
            fix = f"export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=<a file holding {cluster_token}>"
        elif mode != "token":
            fix = f"export RAY_AUTH_MODE=token (and point RAY_AUTH_TOKEN_PATH to {cluster_token})"
        else:
            fix = f"point RAY_AUTH_TOKEN_PATH (or RAY_AUTH_TOKEN) to {cluster_token}"
        found = f"the cluster requires a token and refused this process: {has}"
        return [Finding("FAIL", "ray auth", found, fix)]
    if cluster_modes is None:
        return [_ok("ray auth", f"no cluster checked; {has}")]
    if "token" in cluster_modes:
        return [_ok("ray auth", f"the cluster requires a token; {has}, accepted")]
    if cluster_modes:
        modes = ", ".join(sorted(cluster_modes))
        return [_ok("ray auth", f"the cluster requires none (nodes: RAY_AUTH_MODE {modes}); {has}")]
    return [_ok("ray auth", f"the cluster accepted this process; {has}")]


# --- One process's environment: here, and in each probe ------------------------------------------


def environment_findings(
    job: str | None,
    storage_path: str | None,
    gpus: float,
    shared: tuple[str, bytes] | None = None,
    submit: bool = True,
) -> list[Finding]:
    """The checks of the process this runs in (``gpus``: the GPUs its node claims in
    Ray; ``shared``, ``submit``: see :func:`check_storage`, :func:`check_optional`).
    A check that crashes is a FAIL finding, never a traceback.
    """
    checks = {
        "python": check_python,
        "ray_rewards": check_package,
        "ray": check_ray_version,
        "dependencies": check_dependencies,
        "torch": lambda: check_torch(gpus),
        "optional pieces": lambda: check_optional(job, submit),
    }
    if storage_path:
        checks["storage"] = lambda: check_storage(storage_path, shared)
    findings = []
    for what, check in checks.items():
        try:
            findings += check()
        except Exception as err:  # noqa: BLE001 - reported as a finding
            found = f"the check failed: {type(err).__name__}: {err}"
            fix = "repair what the error names (a FAIL of dependencies may be the cause)"
            findings.append(Finding("FAIL", what, found, fix))
    return findings


def facts() -> dict[str, str]:
    """The versions every node must agree on, and the node's Ray authentication mode."""
    return {
        "python": platform.python_version(),
        "ray": _version("ray"),
        "ray_rewards": _version(PACKAGE),
        "torch": _version("torch"),
        "auth": auth_mode(),
    }


def probe(
    job: str | None, storage_path: str | None, shared: tuple[str, bytes] | None, gpus: float
) -> dict[str, Any]:
    """What the probe task runs on a node of a group: its findings (as dicts) and facts."""
    findings = environment_findings(job, storage_path, gpus, shared, submit=False)
    return {"findings": [dataclasses.asdict(f) for f in findings], "facts": facts()}
