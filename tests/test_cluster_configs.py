"""The configs in cluster/ are valid for the tools that read them (fast, no cluster).

- Launcher YAMLs: Ray's own ``prepare_config`` + ``validate_config`` (the autoscaler's
  JSON schema shipped with the installed Ray), as ``ray up`` runs them.
- KubeRay manifests: the CRD structure we rely on (from KubeRay's ray.io/v1 Go types:
  RayClusterSpec, HeadGroupSpec, WorkerGroupSpec, RayJobSpec), then Ray's own KubeRay
  autoscaler code turning the RayCluster into an autoscaler config.
- Job configs: every file parses for its job (the parser itself: test_job_configs.py),
  and every input a job reads is what a job before it writes.
- Sites: cluster/render.py writes these files with a site's values. The checks above
  run on the committed files (the example site) and on a tree rendered for a site
  whose every value differs; rendering changes the site's values everywhere they
  occur and nothing else.
"""

from __future__ import annotations

import copy
import glob
import importlib.util
import os
import re
import shlex
import subprocess
import sys

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.kuberay.autoscaling_config import (
    _derive_autoscaling_config_from_ray_cr,
)
from ray.autoscaler._private.util import prepare_config, validate_config

from ray_rewards import jobs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLUSTER = os.path.join(ROOT, "cluster")
LAUNCHERS = ["aws/ray-cluster.yaml", "gcp/ray-cluster.yaml"]
RAYJOBS = sorted(
    os.path.relpath(p, CLUSTER)
    for p in glob.glob(os.path.join(CLUSTER, "kuberay", "rayjob-*.yaml"))
)
LOCAL_JOB_CONFIGS = sorted(glob.glob(os.path.join(CLUSTER, "local", "jobs", "*.yaml")))
# The custom resource that marks CPU worker nodes (the local worker node has it too).
CPU_WORKER = "cpu_worker"
GPU_INSTANCE_FAMILIES = ("g4dn.", "g5.", "g6.", "g6e.", "p3.", "p4d.", "p5.")
# Where the KubeRay head mounts the job configs (the ConfigMap of the rendered jobs/).
JOB_CONFIG_DIR = "/home/ray/jobs"

_spec = importlib.util.spec_from_file_location("cluster_render", os.path.join(CLUSTER, "render.py"))
render = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(render)

# A site whose every value differs from site.example.yaml's.
SITE = {
    "image": "123456789012.dkr.ecr.eu-central-1.amazonaws.com/rr:1.2.3",
    "storage": "gs://acme-ml/rr",
    "service_account": {
        "name": "rr-runner",
        "annotations": {
            "iam.gke.io/gcp-service-account": "rr@acme-ml-prod.iam.gserviceaccount.com"
        },
    },
    "gpu": {"cuda": "cu126", "node_selector": {"cloud.google.com/gke-accelerator": "nvidia-l4"}},
    "kubernetes": {"storage_class": "standard-rwx"},
    "aws": {
        "region": "eu-central-1",
        "image_id": "ami-0123456789abcdef0",
        "gpu_instance_type": "g6.xlarge",
        "efs_id": "fs-0fedcba987654321f",
    },
    "gcp": {
        "project_id": "acme-ml-prod",
        "region": "europe-west4",
        "gpu_accelerator": "nvidia-l4",
        "gpu_image": "projects/deeplearning-platform-release/global/images/family/common-cu126-x",
        "filestore": "10.1.2.3:/share",
    },
}


def _load(path: str) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


@pytest.fixture(scope="module")
def site_tree(tmp_path_factory) -> str:
    """The cluster files rendered for SITE, through the command line."""
    site_file = tmp_path_factory.mktemp("site") / "site.yaml"
    site_file.write_text(yaml.safe_dump(SITE))
    out = tmp_path_factory.mktemp("rendered")
    proc = subprocess.run(
        [sys.executable, os.path.join(CLUSTER, "render.py"), str(site_file), str(out)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    return str(out)


@pytest.fixture(params=["committed", "site"])
def tree(request, site_tree) -> str:
    """The committed files (the example site), then the tree rendered for SITE."""
    return CLUSTER if request.param == "committed" else site_tree


# ------------------------------------------------------------------------------------
# Cluster launcher (ray up)
# ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_config_passes_rays_schema(tree, name):
    config = prepare_config(_load(os.path.join(tree, name)))
    validate_config(config)
    assert config["head_node_type"] in config["available_node_types"]


def _cuda_of_image(image: str) -> str:
    match = re.fullmatch(r"rayproject/ray:[\d.]+-py311-(cu\d+)", image)
    assert match, f"{image}: name its CUDA build (-cuXXX), not the moving -gpu alias"
    return match[1]


def _torch_installs(text: str) -> list[str]:
    """The index each `pip install torch==...` in ``text`` uses (commands, not comments)."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    commands = re.findall(r'install[^;&]*?"torch==[^"]+"[^;&]*', " ".join(lines))
    assert commands
    indexes = []
    for command in commands:
        # PyPI's default torch is a CUDA 13 build that needs an R580 driver.
        match = re.search(r"--index-url https://download\.pytorch\.org/whl/(\w+)", command)
        assert match, f"torch from PyPI's default build: {command}"
        indexes.append(match[1])
    return indexes


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_config_has_cpu_head_cpu_and_gpu_workers(tree, name):
    config = _load(os.path.join(tree, name))
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("CPU") == 0, "the head must not take tasks"
    assert "GPU" not in head["resources"]
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    cpu = [t for t in workers.values() if CPU_WORKER in t["resources"]]
    assert cpu and all(t.get("min_workers", 0) >= 1 for t in cpu)

    def has_gpu(t: dict) -> bool:
        if config["provider"]["type"] == "aws":  # GPUs are detected from the type
            return t["node_config"]["InstanceType"].startswith(GPU_INSTANCE_FAMILIES)
        return t["resources"].get("GPU", 0) >= 1 and bool(t["node_config"]["guestAccelerators"])

    gpu = [t for t in workers.values() if has_gpu(t)]
    assert gpu, "no GPU worker type"
    assert all(t.get("min_workers", 0) == 0 for t in gpu), "GPU nodes start on demand"
    # The GPU nodes' torch is the CUDA build of their image; CPU nodes get the CPU one.
    cudas = {_cuda_of_image(t["docker"]["worker_image"]) for t in gpu}
    assert len(cudas) == 1
    assert sorted(_torch_installs("\n".join(config["setup_commands"]))) == sorted([*cudas, "cpu"])


def test_dockerfile_base_image_and_torch_are_one_cuda_build(tree):
    text = _read(os.path.join(tree, "docker", "Dockerfile"))
    base = next(line.split()[1] for line in text.splitlines() if line.startswith("FROM "))
    assert _torch_installs(text) == [_cuda_of_image(base)]


def test_the_gpu_driver_requirement_is_stated():
    for path in ("docker/Dockerfile", "site.example.yaml", "README.md"):
        assert "R570" in _read(os.path.join(CLUSTER, path)), path


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_setup_installs_torch_then_this_package(tree, name):
    config = _load(os.path.join(tree, name))
    commands = config["setup_commands"]
    torch_at = next(i for i, c in enumerate(commands) if "torch==" in c)
    package_at = next(i for i, c in enumerate(commands) if "ray_rewards" in c)
    # torch first: otherwise the package's torch requirement pulls the default build.
    assert torch_at < package_at
    assert config["file_mounts"]["~/ray_rewards"] == "."
    assert "ray stop" in config["head_start_ray_commands"][0]
    assert any("--head" in c and "--dashboard-host" in c for c in config["head_start_ray_commands"])


def test_aws_launcher_names_the_ami_of_every_node(tree):
    """Without an ImageId Ray falls back to an old Deep Learning AMI (old driver)."""
    config = _load(os.path.join(tree, "aws", "ray-cluster.yaml"))
    for name, node_type in config["available_node_types"].items():
        image = node_type["node_config"].get("ImageId", "")
        assert re.fullmatch(
            r"ami-[0-9a-f]{8,17}|resolve:ssm:/aws/service/deeplearning/ami/x86_64/"
            r"base-oss-nvidia-driver-gpu-ubuntu-[\d.]+/latest/ami-id",
            image,
        ), (name, image)


def test_gcp_scheduling_is_an_object(tree):
    """The Compute API takes ``scheduling`` as an object (ray-project/ray#46248)."""
    config = _load(os.path.join(tree, "gcp", "ray-cluster.yaml"))
    for name, node_type in config["available_node_types"].items():
        node = node_type["node_config"]
        scheduling = node.get("scheduling", {})
        assert isinstance(scheduling, dict), (name, scheduling)
        if node.get("guestAccelerators"):  # GPU VMs cannot live-migrate
            assert scheduling.get("onHostMaintenance") == "TERMINATE", name
        if scheduling.get("preemptible"):
            assert scheduling.get("automaticRestart") is False, name
            assert scheduling.get("onHostMaintenance") == "TERMINATE", name


def test_launcher_schema_rejects_a_broken_config():
    """The validation above can fail: Ray's schema refuses bad types and unknown keys."""
    config = _load(os.path.join(CLUSTER, "aws", "ray-cluster.yaml"))
    bad_type = copy.deepcopy(config)
    bad_type["available_node_types"]["gpu_worker"]["resources"] = {"GPU": "one"}
    with pytest.raises(jsonschema.ValidationError, match="one"):
        validate_config(prepare_config(bad_type))
    unknown = copy.deepcopy(config)
    unknown["available_node_types"]["gpu_worker"]["min_worker"] = 1
    with pytest.raises(jsonschema.ValidationError, match="min_worker"):
        validate_config(prepare_config(unknown))


# ------------------------------------------------------------------------------------
# KubeRay (ray.io/v1)
# ------------------------------------------------------------------------------------

_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_INT32 = {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}
_POD_TEMPLATE = {
    "type": "object",
    "required": ["spec"],
    "properties": {
        "metadata": {"type": "object"},
        "spec": {
            "type": "object",
            "required": ["containers"],
            "properties": {
                "serviceAccountName": {"type": "string", "minLength": 1},
                "nodeSelector": _STRING_MAP,
                "containers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {"type": "object", "required": ["name", "image"]},
                },
                "volumes": {"type": "array", "items": {"type": "object", "required": ["name"]}},
            },
        },
    },
}
# Fields of KubeRay's HeadGroupSpec / WorkerGroupSpec / RayClusterSpec / RayJobSpec
# (ray-operator/apis/ray/v1/*_types.go); "required" lists what the CRD requires plus
# what these manifests rely on. Unknown fields are refused: a typo would be silently
# dropped by the API server.
_HEAD_GROUP = {
    "type": "object",
    "required": ["rayStartParams", "template"],
    "additionalProperties": False,
    "properties": {
        "serviceType": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
        "headService": {"type": "object"},
        "enableIngress": {"type": "boolean"},
        "rayStartParams": _STRING_MAP,
        "template": _POD_TEMPLATE,
        "resources": _STRING_MAP,
        "labels": _STRING_MAP,
    },
}
_WORKER_GROUP = {
    "type": "object",
    "required": [
        "groupName",
        "replicas",
        "minReplicas",
        "maxReplicas",
        "rayStartParams",
        "template",
    ],
    "additionalProperties": False,
    "properties": {
        "groupName": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        "replicas": _INT32,
        "minReplicas": _INT32,
        "maxReplicas": _INT32,
        "numOfHosts": _INT32,
        "idleTimeoutSeconds": _INT32,
        "suspend": {"type": "boolean"},
        "rayStartParams": _STRING_MAP,
        "template": _POD_TEMPLATE,
        "scaleStrategy": {"type": "object"},
        "resources": _STRING_MAP,
        "labels": _STRING_MAP,
    },
}
_RAY_CLUSTER_SPEC = {
    "type": "object",
    "required": ["rayVersion", "headGroupSpec", "workerGroupSpecs"],
    "additionalProperties": False,
    "properties": {
        "rayVersion": {"type": "string"},
        "enableInTreeAutoscaling": {"type": "boolean"},
        "autoscalerOptions": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "upscalingMode": {"enum": ["Default", "Aggressive", "Conservative"]},
                "idleTimeoutSeconds": _INT32,
                "resources": {"type": "object"},
                "image": {"type": "string"},
                "imagePullPolicy": {"type": "string"},
                "env": {"type": "array"},
                "envFrom": {"type": "array"},
                "volumeMounts": {"type": "array"},
                "securityContext": {"type": "object"},
                "version": {"enum": ["v1", "v2"]},
            },
        },
        "headServiceAnnotations": _STRING_MAP,
        "suspend": {"type": "boolean"},
        "managedBy": {"type": "string"},
        "gcsFaultToleranceOptions": {"type": "object"},
        "headGroupSpec": _HEAD_GROUP,
        "workerGroupSpecs": {"type": "array", "items": _WORKER_GROUP},
    },
}


def _resource(kind: str, spec: dict) -> dict:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "ray.io/v1"},
            "kind": {"const": kind},
            "metadata": {
                "type": "object",
                "required": ["name"],
                "properties": {"name": {"type": "string", "maxLength": 63}},
            },
            "spec": spec,
        },
    }


RAY_CLUSTER_SCHEMA = _resource("RayCluster", _RAY_CLUSTER_SPEC)
RAY_JOB_SCHEMA = _resource(
    "RayJob",
    {
        "type": "object",
        "required": [
            "entrypoint",
            "rayClusterSpec",
            "shutdownAfterJobFinishes",
            "activeDeadlineSeconds",
        ],
        "additionalProperties": False,
        "properties": {
            "activeDeadlineSeconds": {**_INT32, "minimum": 1},
            "backoffLimit": _INT32,
            "rayClusterSpec": _RAY_CLUSTER_SPEC,
            "submitterPodTemplate": _POD_TEMPLATE,
            "metadata": _STRING_MAP,
            "clusterSelector": _STRING_MAP,
            "submitterConfig": {"type": "object"},
            "managedBy": {"type": "string"},
            "deletionStrategy": {"type": "object"},
            "entrypoint": {"type": "string", "minLength": 1},
            "runtimeEnvYAML": {"type": "string"},
            "jobId": {"type": "string"},
            "submissionMode": {
                "enum": ["K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"]
            },
            "entrypointResources": {"type": "string"},
            "entrypointNumCpus": {"type": "number"},
            "entrypointNumGpus": {"type": "number"},
            "ttlSecondsAfterFinished": _INT32,
            "shutdownAfterJobFinishes": {"type": "boolean"},
            "suspend": {"type": "boolean"},
            "schedule": {"type": "string"},
        },
    },
)


def _raycluster(tree: str = CLUSTER) -> dict:
    return _load(os.path.join(tree, "kuberay", "raycluster.yaml"))


def _pods(spec: dict) -> list[dict]:
    return [spec["headGroupSpec"]["template"], *(g["template"] for g in spec["workerGroupSpecs"])]


def _check_cluster_spec(spec: dict) -> None:
    """What the KubeRay operator's validation and our jobs need beyond the schema."""
    groups = spec["workerGroupSpecs"]
    assert len({g["groupName"] for g in groups}) == len(groups)
    for g in groups:
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], g["groupName"]
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    pods = _pods(spec)
    images = {c["image"] for p in pods for c in p["spec"]["containers"]}
    assert len(images) == 1
    # An image without a registry only resolves on Docker Hub, where ours is not.
    assert re.fullmatch(r"[\w.-]+\.[\w.-]+(:\d+)?/[\w./-]+:[\w.-]+", images.pop())
    # Every volume mounted is declared in its pod.
    for pod in pods:
        declared = {v["name"] for v in pod["spec"].get("volumes", [])}
        for container in pod["spec"]["containers"]:
            assert {m["name"] for m in container.get("volumeMounts", [])} <= declared


def test_raycluster_matches_the_crd_structure(tree):
    cluster = _raycluster(tree)
    jsonschema.validate(cluster, RAY_CLUSTER_SCHEMA)
    _check_cluster_spec(cluster["spec"])


def test_raycluster_becomes_a_valid_autoscaler_config_with_cpu_head_and_gpu_workers(tree):
    """Ray's KubeRay autoscaler reads the RayCluster (and validates the result)."""
    cluster = _raycluster(tree)
    cluster["metadata"]["namespace"] = "default"
    config = _derive_autoscaling_config_from_ray_cr(cluster)
    validate_config(config)
    types = config["available_node_types"]
    assert types["headgroup"]["resources"]["CPU"] == 0
    assert types["cpu-workers"]["resources"][CPU_WORKER] == types["cpu-workers"]["resources"]["CPU"]
    assert types["gpu-workers"]["resources"]["GPU"] == 1
    assert types["gpu-workers"]["min_workers"] == 0


def test_crd_structure_rejects_broken_manifests():
    cluster = _raycluster()
    typo = copy.deepcopy(cluster)
    typo["spec"]["workerGroupSpecs"][0]["minReplica"] = 1
    with pytest.raises(jsonschema.ValidationError, match="minReplica"):
        jsonschema.validate(typo, RAY_CLUSTER_SCHEMA)
    nameless = copy.deepcopy(cluster)
    del nameless["spec"]["workerGroupSpecs"][1]["groupName"]
    with pytest.raises(jsonschema.ValidationError, match="groupName"):
        jsonschema.validate(nameless, RAY_CLUSTER_SCHEMA)
    job = _load(os.path.join(CLUSTER, RAYJOBS[0]))
    no_deadline = copy.deepcopy(job)
    del no_deadline["spec"]["activeDeadlineSeconds"]
    with pytest.raises(jsonschema.ValidationError, match="activeDeadlineSeconds"):
        jsonschema.validate(no_deadline, RAY_JOB_SCHEMA)
    del job["spec"]["entrypoint"]
    with pytest.raises(jsonschema.ValidationError, match="entrypoint"):
        jsonschema.validate(job, RAY_JOB_SCHEMA)


def test_there_is_a_rayjob_for_every_job():
    assert {os.path.basename(p)[len("rayjob-") : -len(".yaml")] for p in RAYJOBS} == set(jobs.JOBS)


def _supervisor_argv(entrypoint: str) -> list[str]:
    """What Ray's job supervisor runs for a RayJob's entrypoint.

    KubeRay's submitter pod runs ``ray job submit ... -- <entrypoint> ; fi ; ...`` in a
    shell (ray-operator/controllers/ray/common/job.go), Ray 2.60's ``ray job submit``
    shlex-joins the words after ``--``, and the supervisor runs that in a shell.
    """
    submitter = f"ray job submit --address http://head:8265 --no-wait -- {entrypoint} ; fi ;"
    lexer = shlex.shlex(submitter, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    words = list(lexer)
    words = words[words.index("--") + 1 :]
    words = words[: words.index(";")]
    # A shell operator here ends `ray job submit` early: the rest would run in the
    # submitter pod.
    assert not [w for w in words if set(w) <= set("();<>|&")], words
    return shlex.split(shlex.join(words))


def _entrypoint_commands(entrypoint: str) -> list[list[str]]:
    """The commands of a RayJob's entrypoint, in order (all must succeed: ``&&``)."""
    argv = _supervisor_argv(entrypoint)
    assert argv[:2] == ["bash", "-c"] and len(argv) == 3, argv
    lexer = shlex.shlex(argv[2], posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for word in lexer:
        if word == "&&":
            commands.append([])
        else:
            assert not set(word) <= set("();<>|&"), f"only && joins the commands: {argv[2]}"
            commands[-1].append(word)
    return commands


def test_entrypoint_parsing_catches_a_bare_and():
    with pytest.raises(AssertionError, match="&&"):
        _supervisor_argv("ray-rewards doctor && python -m ray_rewards.jobs train")


@pytest.mark.parametrize("name", RAYJOBS)
def test_rayjob_checks_its_environment_then_runs_its_job_on_the_raycluster_spec(tree, name):
    job = _load(os.path.join(tree, name))
    jsonschema.validate(job, RAY_JOB_SCHEMA)
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    # A stuck job (no GPU node ever comes) must not hold its cluster forever.
    assert spec["activeDeadlineSeconds"] >= 3600
    # One cluster spec for every manifest: the RayJobs must not drift from it.
    assert spec["rayClusterSpec"] == _raycluster(tree)["spec"]
    _check_cluster_spec(spec["rayClusterSpec"])

    doctor, run = _entrypoint_commands(spec["entrypoint"])
    assert run[:3] == ["python", "-m", "ray_rewards.jobs"]
    kind = run[3]
    assert name == f"kuberay/rayjob-{kind}.yaml" and kind in jobs.JOBS
    assert run[4:] == ["--config", f"{JOB_CONFIG_DIR}/{kind}.yaml"]
    # The config is the file of jobs/ that the head mounts from the ConfigMap.
    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in head["containers"][0]["volumeMounts"]}
    configmaps = {v["name"] for v in head["volumes"] if "configMap" in v}
    assert any(JOB_CONFIG_DIR == mounts[v] for v in configmaps)
    cfg = jobs.load_config(os.path.join(tree, "jobs", f"{kind}.yaml"), kind)
    assert cfg.job == kind
    # The environment check first, on the storage the job writes to.
    assert doctor == ["ray-rewards", "doctor", "--job", kind, "--storage", cfg.storage_path]


def test_every_pod_that_touches_storage_runs_as_the_service_account(tree):
    """Every Ray pod reads or writes the jobs' storage (drivers on the head, Ray Data,
    Ray Train and learners on the workers): all run as the service account whose
    annotation grants the cloud identity.
    """
    account = _load(os.path.join(tree, "kuberay", "service-account.yaml"))
    assert account["apiVersion"] == "v1" and account["kind"] == "ServiceAccount"
    assert isinstance(account["metadata"]["annotations"], dict)
    name = account["metadata"]["name"]
    manifests = [_raycluster(tree)["spec"]] + [
        _load(os.path.join(tree, p))["spec"]["rayClusterSpec"] for p in RAYJOBS
    ]
    for spec in manifests:
        for pod in _pods(spec):
            assert pod["spec"].get("serviceAccountName") == name


def test_kuberay_shared_volume_claim_is_defined(tree):
    claim = _load(os.path.join(tree, "kuberay", "shared-storage.yaml"))
    assert claim["kind"] == "PersistentVolumeClaim"
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["spec"]["storageClassName"]
    for pod in _pods(_raycluster(tree)["spec"]):
        claims = [
            v["persistentVolumeClaim"]["claimName"]
            for v in pod["spec"]["volumes"]
            if "persistentVolumeClaim" in v
        ]
        assert claims == [claim["metadata"]["name"]]


def test_every_config_uses_one_ray_version(tree):
    versions = {_raycluster(tree)["spec"]["rayVersion"]}
    for name in LAUNCHERS:
        config = _load(os.path.join(tree, name))
        images = [config["docker"]["image"]] + [
            t["docker"]["worker_image"]
            for t in config["available_node_types"].values()
            if "docker" in t
        ]
        versions |= {image.split(":")[1].split("-")[0] for image in images}
    with open(os.path.join(tree, "docker", "Dockerfile")) as f:
        base = next(line.split()[1] for line in f if line.startswith("FROM "))
    versions.add(base.split(":")[1].split("-")[0])
    assert len(versions) == 1, versions


# ------------------------------------------------------------------------------------
# Job configs and what they read from each other
# ------------------------------------------------------------------------------------


def test_every_job_has_a_cloud_and_a_local_config():
    for folder in ("jobs", os.path.join("local", "jobs")):
        names = {
            os.path.basename(p)[: -len(".yaml")]
            for p in glob.glob(os.path.join(CLUSTER, folder, "*.yaml"))
        }
        assert names == set(jobs.JOBS), folder


def _check_job_config(path: str) -> None:
    name = os.path.basename(path)[: -len(".yaml")]
    cfg = jobs.load_config(path, name)
    assert cfg.job == name and cfg.storage_path
    if name in ("rllib", "adversarial", "preferences", "offline"):
        algo = jobs.algorithm_config(cfg.settings)
        custom = algo.custom_resources_per_env_runner
        # Env runners are pinned to CPU workers by the resource those nodes offer (the
        # offline job's only env runners are its evaluation's, if any: else the driver's).
        if name != "offline" or algo.evaluation_num_env_runners:
            assert custom == {CPU_WORKER: 1}


@pytest.mark.parametrize("job", sorted(jobs.JOBS))
def test_cloud_job_config_is_valid(tree, job):
    _check_job_config(os.path.join(tree, "jobs", f"{job}.yaml"))


@pytest.mark.parametrize("path", LOCAL_JOB_CONFIGS, ids=os.path.basename)
def test_local_job_config_is_valid(path):
    _check_job_config(path)


def _run_order() -> list[str]:
    """The order cluster/local/run_jobs.sh runs the jobs in (the cloud runs follow it)."""
    match = re.search(
        r"JOBS=\$\{JOBS:-([a-z ]+)\}", _read(os.path.join(CLUSTER, "local", "run_jobs.sh"))
    )
    order = match[1].split()
    assert sorted(order) == sorted(jobs.JOBS)
    return order


# What each job writes under its storage_path (the pipeline also in its work_dir), and
# the settings by which a job reads another's output: cluster/README.md's table.
OUTPUTS = {
    "pipeline": ["reward_net.pt", "data/train_pairs", "data/eval_pairs", "data/eval_transitions"],
    "train": ["reward_net.pt"],
    "rllib": ["checkpoint", "checkpoint/reward_net.pt"],
    "relabel": ["relabeled", "reward_net.pt"],
    "record": ["demonstrations"],
    "adversarial": ["checkpoint", "checkpoint/reward_net.pt"],
    "preferences": ["checkpoint", "checkpoint/reward_net.pt"],
    "offline": ["checkpoint", "checkpoint/reward_net.pt"],
}
INPUTS = {
    "train": ["train_data", "eval_data", "init_net"],
    "rllib": ["reward"],
    "relabel": ["input", "reward"],
    "record": ["checkpoint"],
    "adversarial": ["demonstrations", "init_net"],
    "preferences": ["init_net"],
    "offline": ["input", "reward"],
}


@pytest.mark.parametrize(
    "folder", ["committed:jobs", "site:jobs", "committed:local/jobs"], ids=lambda f: f
)
def test_every_input_is_what_a_job_before_it_writes(request, folder):
    """pipeline -> train -> rllib -> record -> relabel (the recorded demonstrations,
    the train job's net) -> offline (the relabeled transitions) -> adversarial (the
    recorded demonstrations): each path a job reads is an output of a job that runs
    before it, in the cloud configs (as committed and as rendered for a site) and in
    the local ones.
    """
    which, sub = folder.split(":")
    base = CLUSTER if which == "committed" else request.getfixturevalue("site_tree")

    def load(name: str) -> jobs.JobConfig:
        return jobs.load_config(os.path.join(base, sub, f"{name}.yaml"), name)

    written: dict[str, str] = {}
    for name in _run_order():
        cfg = load(name)
        for field in INPUTS.get(name, []):
            path = getattr(cfg.settings, field)
            if path is not None:
                assert path in written, f"{name}.{field}: {path} is no earlier job's output"
        roots = [cfg.storage_path] + ([cfg.work_dir] if cfg.work_dir else [])
        for root in roots:
            written.update(
                {jobs.storage_join(root, *out.split("/")): name for out in OUTPUTS[name]}
            )
    relabel, offline = load("relabel"), load("offline")
    assert relabel.settings.input.endswith("/record/demonstrations")
    # The learned rewards replace the recorded ones, as RLlib's offline input reads them.
    assert relabel.settings.column == "rewards"
    assert offline.settings.input.endswith("/relabel/relabeled")
    assert offline.settings.actions == "env"  # as the record job writes them
    # The policy the demonstrations come from is trained on the adversarial job's env.
    rllib, adversarial = load("rllib"), load("adversarial")
    assert adversarial.settings.config["env"] == rllib.settings.config["env"]
    assert offline.settings.config["env"] == rllib.settings.config["env"]
    assert rllib.settings.checkpoint


def test_cpu_worker_resource_is_what_the_local_cluster_and_the_cloud_configs_offer():
    with open(os.path.join(CLUSTER, "local", "start.sh")) as f:
        assert f'{{\\"{CPU_WORKER}\\": $WORKER_CPUS}}' in f.read()
    for name in LAUNCHERS:
        types = _load(os.path.join(CLUSTER, name))["available_node_types"].values()
        assert any(CPU_WORKER in t["resources"] for t in types)


@pytest.mark.parametrize(
    "script", sorted(glob.glob(os.path.join(CLUSTER, "local", "*.sh"))), ids=os.path.basename
)
def test_local_cluster_scripts_parse(script):
    subprocess.run(["bash", "-n", script], check=True)


# ------------------------------------------------------------------------------------
# Sites: cluster/render.py
# ------------------------------------------------------------------------------------


def test_rendering_the_example_site_reproduces_the_committed_files(tmp_path):
    written = render.render(render.load_site(os.path.join(CLUSTER, "site.example.yaml")), tmp_path)
    assert len(written) == len(render.templates()) > len(RAYJOBS)
    for rel in render.templates():
        assert (tmp_path / rel).read_text() == _read(os.path.join(CLUSTER, rel)), rel


def _example_values() -> dict:
    return _load(os.path.join(CLUSTER, "site.example.yaml"))


def _flat(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict) and value and not any("/" in str(k) for k in value):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# Site values that occur inside longer text, and where (file:YAML path) they may; a
# CUDA build occurs in the image tag and the torch index (not in VM image names).
EMBEDDED = {
    "image": ("{}", r"kuberay/.*:.*containers\.\d+\.image"),
    "storage": ("{}", r"jobs/.*|kuberay/rayjob-.*:spec\.entrypoint"),
    "gpu.cuda": (
        "-py311-{}|download.pytorch.org/whl/{}",
        r"(aws|gcp)/ray-cluster\.yaml:(available_node_types\.gpu_worker\.docker\.worker_image"
        r"|setup_commands\.0)",
    ),
    "aws.region": (
        "{}",
        r"aws/.*:(provider\.(region|availability_zone)|initialization_commands\.0)",
    ),
    "aws.efs_id": ("{}", r"aws/.*:initialization_commands\.0"),
    "gcp.region": ("{}", r"gcp/.*:provider\.(region|availability_zone)"),
    "gcp.filestore": ("{}", r"gcp/.*:initialization_commands\.0"),
}
# Site values that are a whole YAML value, and where they are.
WHOLE = {
    "service_account.name": (
        r"kuberay/service-account\.yaml:metadata\.name|kuberay/.*\.serviceAccountName"
    ),
    "service_account.annotations": r"kuberay/service-account\.yaml:metadata\.annotations",
    "gpu.node_selector": r"kuberay/.*gpu-workers.*\.nodeSelector",
    "kubernetes.storage_class": r"kuberay/shared-storage\.yaml:spec\.storageClassName",
    "aws.image_id": r"aws/.*:available_node_types\.\w+\.node_config\.ImageId",
    "aws.gpu_instance_type": r"aws/.*:available_node_types\.gpu_worker\.node_config\.InstanceType",
    "gcp.project_id": r"gcp/.*:provider\.project_id",
    "gcp.gpu_accelerator": r"gcp/.*gpu_worker\.node_config\.guestAccelerators\.0\.acceleratorType",
    "gcp.gpu_image": r"gcp/.*gpu_worker\.node_config\.disks\.0\.initializeParams\.sourceImage",
}


def _leaves(data, path: str):
    """(path, value) of every scalar, and of every mapping of scalars with a "/" key or
    none (annotations, node selectors: compared whole). Worker groups are named by
    groupName so paths say which group.
    """
    if isinstance(data, dict) and data and not any("/" in str(k) for k in data):
        for key, value in data.items():
            yield from _leaves(value, f"{path}.{key}" if path[-1] != ":" else f"{path}{key}")
    elif isinstance(data, list):
        for i, value in enumerate(data):
            name = value.get("groupName") if isinstance(value, dict) else None
            yield from _leaves(value, f"{path}.{name or i}")
    else:
        yield path, data


def test_rendering_changes_the_site_values_everywhere_and_nothing_else(site_tree):
    example, site = _flat(_example_values()), _flat(SITE)
    assert set(site) == set(example) == set(render.CHECKS)
    swaps = {}  # example text -> (key, site text)
    for key, (patterns, _) in EMBEDDED.items():
        for pattern in patterns.split("|"):
            swaps[pattern.format(example[key])] = (key, pattern.format(site[key]))
    places: dict[str, set[str]] = {key: set() for key in example}

    for rel in render.templates():
        before, after = _read(os.path.join(CLUSTER, rel)), _read(os.path.join(site_tree, rel))
        # Every occurrence, comments included: no example value is left behind.
        for old in swaps:
            assert old not in after, (rel, old)
        expected = before
        for old, (_, new) in swaps.items():
            expected = expected.replace(old, new)
        if not rel.endswith(".yaml"):  # the Dockerfile: its base image and torch index
            assert after == expected and after != before, rel
            continue
        old_leaves = dict(_leaves(_load(os.path.join(CLUSTER, rel)), f"{rel}:"))
        new_leaves = dict(_leaves(_load(os.path.join(site_tree, rel)), f"{rel}:"))
        assert set(old_leaves) == set(new_leaves), rel
        for path, old in old_leaves.items():
            new = new_leaves[path]
            if new == old:
                continue
            whole = [k for k in WHOLE if old == example[k] and new == site[k]]
            if whole:
                (key,) = whole
                assert re.fullmatch(WHOLE[key], path), (key, path)
                places[key].add(path)
                continue
            embedded = [key for o, (key, _) in swaps.items() if isinstance(old, str) and o in old]
            assert embedded, f"{path}: {old!r} -> {new!r} is no site value"
            for o, (_, n) in swaps.items():
                old = old.replace(o, n) if isinstance(old, str) else old
            assert new == old, path
            for key in embedded:
                assert re.fullmatch(EMBEDDED[key][1], path), (key, path)
                places[key].add(path)

    # Every site value landed somewhere; the whole values (and the image) in every
    # field where they belong, not only some.
    assert all(places.values()), [k for k, v in places.items() if not v]
    fields = [
        p
        for rel in render.templates()
        if rel.endswith(".yaml")
        for p, _ in _leaves(_load(os.path.join(CLUSTER, rel)), f"{rel}:")
    ]
    for key, where in [*WHOLE.items(), ("image", EMBEDDED["image"][1])]:
        assert places[key] == {p for p in fields if re.fullmatch(where, p)}, key
    assert {p.split(":")[0] for p in places["storage"]} == {
        *(f"jobs/{j}.yaml" for j in jobs.JOBS if j != "preferences"),
        *(r for r in RAYJOBS if "preferences" not in r),
    }


def test_render_refuses_bad_site_values_and_the_template_folder(tmp_path):
    def run(site: dict, out: str) -> subprocess.CompletedProcess:
        path = tmp_path / "site.yaml"
        path.write_text(yaml.safe_dump(site))
        return subprocess.run(
            [sys.executable, os.path.join(CLUSTER, "render.py"), str(path), out],
            capture_output=True,
            text=True,
        )

    out = str(tmp_path / "out")
    for site, message in [
        ({"imagee": "x"}, "unknown keys ['imagee']"),
        ({"image": "ray-rewards:0.1.0"}, "image: expected an image in a registry"),
        ({"storage": "s3://bucket/prefix/"}, "no trailing /"),
        ({"gpu": {"cuda": "12.8"}}, "gpu.cuda: expected a CUDA build tag"),
        ({"aws": {"gpu_instance_type": "m5.xlarge"}}, "aws.gpu_instance_type"),
        ({"service_account": {"annotations": ["a"]}}, "service_account.annotations"),
    ]:
        proc = run(site, out)
        assert proc.returncode == 1 and message in proc.stderr, (site, proc.stderr)
        assert not os.path.exists(out)
    proc = run({}, os.path.join(CLUSTER, "rendered"))
    assert proc.returncode == 1 and "inside" in proc.stderr
    assert not os.path.exists(os.path.join(CLUSTER, "rendered"))
    proc = run({}, out)  # the example's values: rendered, with a note on what they are
    assert proc.returncode == 0 and "still site.example.yaml's values" in proc.stdout


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("fs-0123456789abcdef0", "fs-0000000000000000a", r"no template holds .*aws\.efs_id"),
        ("efs-sc  # site:", "gp3  # site:", r"does not hold .*kubernetes\.storage_class"),
        ("# site: gpu.node_selector", "# site: gpu.selector", "unknown site key"),
    ],
)
def test_render_refuses_templates_that_drifted_from_the_example(tmp_path, old, new, message):
    """A site value the templates no longer hold would be ignored silently."""
    src = tmp_path / "cluster"
    for rel in render.templates():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(_read(os.path.join(CLUSTER, rel)).replace(old, new))
    with pytest.raises(ValueError, match=message):
        render.render(render.load_site(None), tmp_path / "out", src=str(src))
    assert not (tmp_path / "out").exists()
