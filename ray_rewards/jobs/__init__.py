r"""Cluster jobs: each job reads one config file and writes to one storage path.

Submit a job to any Ray cluster (local, cloud, KubeRay) with::

    ray job submit --address http://HEAD:8265 --working-dir cluster/jobs \
        -- python -m ray_rewards.jobs pipeline --config pipeline.yaml

(``python -m ray_rewards.jobs`` is ``ray-rewards job``.) Jobs (``JOBS``), each the
library's own function run on the cluster:

- ``pipeline``: the end-to-end preference-learning job
  (:func:`ray_rewards.train.pipeline.run`): rollouts, oracle preferences, reward
  training with Ray Train, PPO on the learned reward vs the true reward.
- ``train``: reward training alone (:func:`ray_rewards.train.trainer.train`).
- ``rllib``: any RLlib algorithm trained on a saved reward net
  (:func:`ray_rewards.rllib.with_learned_reward`).
- ``relabel``: a learned-reward column added to Parquet transitions
  (:func:`ray_rewards.data.relabel_dataset`).
- ``record``: demonstrations, a checkpoint's policy recorded as Parquet transitions
  (:func:`ray_rewards.rllib.record_demonstrations`).
- ``adversarial``: GAIL/AIRL inside any RLlib algorithm, on such demonstrations
  (:func:`ray_rewards.rllib.with_adversarial_reward`).
- ``offline``: an offline algorithm (CQL, IQL, MARWIL) on recorded transitions, on
  their rewards (e.g. the relabel job's output with ``column: rewards``) or a saved
  net's (:func:`ray_rewards.rllib.with_learned_reward` in RLlib's offline pre-learner).
- ``preferences``: online preference comparisons inside any RLlib algorithm: the
  reward net retrained on a gatherer's labels while the policy learns
  (:func:`ray_rewards.rllib.with_preference_learning`).

Config file (YAML or JSON): a mapping with ``storage_path`` (a local path or a URI
that ``pyarrow.fs`` understands: ``s3://``, ``gs://``, ``abfs://``, ``hdfs://``) and
one section named after the job, whose keys are the fields of that job's settings
(``PipelineConfig``, ``TrainConfig``, :class:`RLlibJobConfig`,
:class:`RelabelJobConfig`, :class:`RecordJobConfig`, :class:`AdversarialJobConfig`,
:class:`PreferencesJobConfig`, :class:`OfflineJobConfig`).
Unknown keys, missing keys, wrong types and a section for another job are errors
that name the key, what was expected and what came.
Relative local paths are resolved against the config file's directory (not the
job's working directory, which Ray picks).

Results: ``<storage_path>/results.json`` (the job, its settings, metrics, output
files, timings and *placement*: which cluster nodes ran the driver and every task
and actor of the job, from Ray's state API) is written last, atomically, so its
presence means the job finished. Next to it: ``reward_net.pt`` (pipeline, train;
relabel with ``update_stats``), ``checkpoint/`` (rllib, adversarial,
preferences, offline: RLlib's checkpoint with ``reward_net.pt`` inside, offline only
with a ``reward``), ``preferences/``
(preferences: the labels as Parquet, retraining files, the async gatherer's queue),
``relabeled/`` (relabel: Parquet), ``demonstrations/`` (record: Parquet).

Multi-node note: Ray Train checkpoints, the pipeline's Parquet data and reward
file are read by tasks on other nodes, so those must live where every node sees
them: a cloud URI or a shared filesystem (NFS/EFS, a ReadWriteMany volume). The
pipeline writes local files, so with a URI ``storage_path`` it needs ``work_dir``
on a shared filesystem and uploads the results when done.

Modules: ``specs`` (the jobs' settings and the table of their rules), ``runners``
(running a job, ``results.json``), ``rllib_runners`` (the RLlib jobs and their
shared training loop), ``outputs`` (paths under ``storage_path``, progress lines),
``placement`` (where its work ran). Config files
are read by :mod:`ray_rewards.config_file`, the loader every settings file goes
through (``ray-rewards train`` too).
"""

from ray_rewards.config_file import build_settings
from ray_rewards.jobs.outputs import storage_join
from ray_rewards.jobs.placement import work_placement
from ray_rewards.jobs.rllib_runners import (
    algorithm_config,
    run_adversarial,
    run_offline,
    run_preferences,
    run_record,
    run_rllib,
    train_algorithm,
)
from ray_rewards.jobs.runners import (
    RESULTS_FILE,
    RUNNERS,
    run_job,
    run_pipeline,
    run_relabel,
    run_train,
)
from ray_rewards.jobs.specs import (
    JOBS,
    AdversarialJobConfig,
    JobConfig,
    JobSpec,
    OfflineJobConfig,
    PreferencesJobConfig,
    RecordJobConfig,
    RelabelJobConfig,
    RLlibJobConfig,
    RLlibTraining,
    load_config,
    parse_config,
)
from ray_rewards.storage import NET_FILE

__all__ = [
    "JOBS",
    "NET_FILE",
    "RESULTS_FILE",
    "RUNNERS",
    "AdversarialJobConfig",
    "JobConfig",
    "JobSpec",
    "OfflineJobConfig",
    "PreferencesJobConfig",
    "RLlibJobConfig",
    "RLlibTraining",
    "RecordJobConfig",
    "RelabelJobConfig",
    "algorithm_config",
    "build_settings",
    "load_config",
    "parse_config",
    "run_adversarial",
    "run_job",
    "run_offline",
    "run_pipeline",
    "run_preferences",
    "run_record",
    "run_relabel",
    "run_rllib",
    "run_train",
    "storage_join",
    "train_algorithm",
    "work_placement",
]
