"""The configs in cluster/ are valid for the tools that read them (fast, no cluster).

- Launcher YAMLs: Ray's own ``prepare_config`` + ``validate_config`` (the autoscaler's
  JSON schema shipped with the installed Ray), as ``ray up`` runs them.
- KubeRay manifests: the CRD structure we rely on (from KubeRay's ray.io/v1 Go types:
  RayClusterSpec, HeadGroupSpec, WorkerGroupSpec, RayJobSpec), then Ray's own KubeRay
  autoscaler code turning the RayCluster into an autoscaler config.
- Job configs: every file parses for its job (the parser itself: test_job_configs.py).
"""

from __future__ import annotations

import copy
import glob
import os
import shlex
import subprocess

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
LAUNCHER_CONFIGS = sorted(glob.glob(os.path.join(CLUSTER, "*", "ray-cluster.yaml")))
RAYJOBS = sorted(glob.glob(os.path.join(CLUSTER, "kuberay", "rayjob-*.yaml")))
JOB_CONFIGS = sorted(
    glob.glob(os.path.join(CLUSTER, "jobs", "*.yaml"))
    + glob.glob(os.path.join(CLUSTER, "local", "jobs", "*.yaml"))
)
# The custom resource that marks CPU worker nodes (the local worker node has it too).
CPU_WORKER = "cpu_worker"
GPU_INSTANCE_FAMILIES = ("g4dn.", "g5.", "g6.", "p3.", "p4d.", "p5.")


def _load(path: str) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)


def _rel(path: str) -> str:
    return os.path.relpath(path, ROOT)


# ------------------------------------------------------------------------------------
# Cluster launcher (ray up)
# ------------------------------------------------------------------------------------


def test_every_provider_has_a_launcher_config():
    assert {os.path.basename(os.path.dirname(p)) for p in LAUNCHER_CONFIGS} >= {"aws", "gcp"}


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=_rel)
def test_launcher_config_passes_rays_schema(path):
    config = prepare_config(_load(path))
    validate_config(config)
    assert config["head_node_type"] in config["available_node_types"]


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=_rel)
def test_launcher_config_has_cpu_head_cpu_and_gpu_workers(path):
    config = _load(path)
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
    assert all(t["docker"]["worker_image"].endswith("-gpu") for t in gpu)


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=_rel)
def test_launcher_setup_installs_torch_then_this_package(path):
    config = _load(path)
    commands = config["setup_commands"]
    torch_at = next(i for i, c in enumerate(commands) if "torch==" in c)
    package_at = next(i for i, c in enumerate(commands) if "ray_rewards" in c)
    # torch first: otherwise the package's torch requirement pulls the default build.
    assert torch_at < package_at
    assert config["file_mounts"]["~/ray_rewards"] == "."
    assert "ray stop" in config["head_start_ray_commands"][0]
    assert any("--head" in c and "--dashboard-host" in c for c in config["head_start_ray_commands"])


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
        "required": ["entrypoint", "rayClusterSpec", "shutdownAfterJobFinishes"],
        "additionalProperties": False,
        "properties": {
            "activeDeadlineSeconds": _INT32,
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


def _raycluster() -> dict:
    return _load(os.path.join(CLUSTER, "kuberay", "raycluster.yaml"))


def _check_cluster_spec(spec: dict) -> None:
    """What the KubeRay operator's validation and our jobs need beyond the schema."""
    groups = spec["workerGroupSpecs"]
    assert len({g["groupName"] for g in groups}) == len(groups)
    for g in groups:
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], g["groupName"]
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    pods = [spec["headGroupSpec"]["template"], *(g["template"] for g in groups)]
    images = {c["image"] for p in pods for c in p["spec"]["containers"]}
    assert len(images) == 1
    # Every volume mounted is declared in its pod.
    for pod in pods:
        declared = {v["name"] for v in pod["spec"].get("volumes", [])}
        for container in pod["spec"]["containers"]:
            assert {m["name"] for m in container.get("volumeMounts", [])} <= declared


def test_raycluster_matches_the_crd_structure():
    cluster = _raycluster()
    jsonschema.validate(cluster, RAY_CLUSTER_SCHEMA)
    _check_cluster_spec(cluster["spec"])


def test_raycluster_becomes_a_valid_autoscaler_config_with_cpu_head_and_gpu_workers():
    """Ray's KubeRay autoscaler reads the RayCluster (and validates the result)."""
    cluster = _raycluster()
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
    job = _load(RAYJOBS[0])
    del job["spec"]["entrypoint"]
    with pytest.raises(jsonschema.ValidationError, match="entrypoint"):
        jsonschema.validate(job, RAY_JOB_SCHEMA)


def test_there_is_a_rayjob_for_every_job():
    assert {os.path.basename(p)[len("rayjob-") : -len(".yaml")] for p in RAYJOBS} == set(jobs.JOBS)


@pytest.mark.parametrize("path", RAYJOBS, ids=_rel)
def test_rayjob_runs_its_job_with_a_valid_config_on_the_raycluster_spec(path):
    job = _load(path)
    jsonschema.validate(job, RAY_JOB_SCHEMA)
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    # One cluster spec for every manifest: the RayJobs must not drift from it.
    assert spec["rayClusterSpec"] == _raycluster()["spec"]
    _check_cluster_spec(spec["rayClusterSpec"])
    argv = shlex.split(spec["entrypoint"])
    assert argv[:3] == ["python", "-m", "ray_rewards.jobs"]
    name = argv[3]
    assert path.endswith(f"rayjob-{name}.yaml") and name in jobs.JOBS
    config_path = argv[argv.index("--config") + 1]
    # The config is the file of cluster/jobs/ that the head mounts from the ConfigMap.
    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in head["containers"][0]["volumeMounts"]}
    configmaps = {v["name"] for v in head["volumes"] if "configMap" in v}
    assert any(os.path.dirname(config_path) == mounts[v] for v in configmaps)
    local_copy = os.path.join(CLUSTER, "jobs", os.path.basename(config_path))
    assert jobs.load_config(local_copy, name).job == name


def test_kuberay_shared_volume_claim_is_defined():
    claim = _load(os.path.join(CLUSTER, "kuberay", "shared-storage.yaml"))
    assert claim["kind"] == "PersistentVolumeClaim"
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    spec = _raycluster()["spec"]
    pods = [spec["headGroupSpec"]["template"], *(g["template"] for g in spec["workerGroupSpecs"])]
    for pod in pods:
        claims = [
            v["persistentVolumeClaim"]["claimName"]
            for v in pod["spec"]["volumes"]
            if "persistentVolumeClaim" in v
        ]
        assert claims == [claim["metadata"]["name"]]


def test_every_config_uses_one_ray_version():
    versions = {_raycluster()["spec"]["rayVersion"]}
    for path in LAUNCHER_CONFIGS:
        config = _load(path)
        images = [config["docker"]["image"]] + [
            t["docker"]["worker_image"]
            for t in config["available_node_types"].values()
            if "docker" in t
        ]
        versions |= {image.split(":")[1].split("-")[0] for image in images}
    with open(os.path.join(CLUSTER, "docker", "Dockerfile")) as f:
        base = next(line.split()[1] for line in f if line.startswith("FROM "))
    versions.add(base.split(":")[1].split("-")[0])
    assert len(versions) == 1, versions


# ------------------------------------------------------------------------------------
# Job configs and entrypoints
# ------------------------------------------------------------------------------------


def test_every_job_has_a_cloud_and_a_local_config():
    for folder in ("jobs", os.path.join("local", "jobs")):
        names = {
            os.path.basename(p)[: -len(".yaml")]
            for p in JOB_CONFIGS
            if os.path.dirname(p) == os.path.join(CLUSTER, folder)
        }
        assert names == set(jobs.JOBS), folder


@pytest.mark.parametrize("path", JOB_CONFIGS, ids=_rel)
def test_job_config_file_is_valid(path):
    name = os.path.basename(path)[: -len(".yaml")]
    cfg = jobs.load_config(path, name)
    assert cfg.job == name and cfg.storage_path
    if name in ("rllib", "adversarial", "preferences"):
        algo = jobs.algorithm_config(cfg.settings)
        custom = algo.custom_resources_per_env_runner
        # Env runners are pinned to CPU workers by the resource those nodes offer.
        assert custom == {CPU_WORKER: 1}


@pytest.mark.parametrize("folder", ["jobs", os.path.join("local", "jobs")])
def test_record_and_adversarial_read_what_the_jobs_before_them_write(folder):
    """rllib -> record (its checkpoint) -> adversarial (the recorded demonstrations, on
    the env the policy was trained on), in the cloud configs and the local ones.
    """

    def load(name: str) -> jobs.JobConfig:
        return jobs.load_config(os.path.join(CLUSTER, folder, f"{name}.yaml"), name)

    rllib, record, adversarial = load("rllib"), load("record"), load("adversarial")
    assert record.settings.checkpoint == jobs.storage_join(rllib.storage_path, "checkpoint")
    assert adversarial.settings.demonstrations == jobs.storage_join(
        record.storage_path, "demonstrations"
    )
    assert adversarial.settings.config["env"] == rllib.settings.config["env"]
    assert rllib.settings.checkpoint


def test_cpu_worker_resource_is_what_the_local_cluster_and_the_cloud_configs_offer():
    with open(os.path.join(CLUSTER, "local", "start.sh")) as f:
        assert f'{{\\"{CPU_WORKER}\\": $WORKER_CPUS}}' in f.read()
    for path in LAUNCHER_CONFIGS:
        types = _load(path)["available_node_types"].values()
        assert any(CPU_WORKER in t["resources"] for t in types)


@pytest.mark.parametrize(
    "script", sorted(glob.glob(os.path.join(CLUSTER, "local", "*.sh"))), ids=_rel
)
def test_local_cluster_scripts_parse(script):
    subprocess.run(["bash", "-n", script], check=True)
