"""The jobs' config files: each job's settings, and the table of how each job reads them.

Reason for its length: one settings dataclass per job (eight), each with the
user-facing docstring of its config section and its checks, beside the table
(:data:`JOBS`) and the loader they share.

A config file holds ``storage_path``, one section named after the job (its settings
dataclass, read by :func:`ray_rewards.config_file.build_settings`) and, where the
job's :class:`JobSpec` allows it, ``work_dir``. A job's own rules live in its
:data:`JOBS` entry: the fields it sets itself and a check run on the parsed config.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ray_rewards import config_file as config
from ray_rewards import storage


@dataclass(kw_only=True)
class RLlibTraining:
    """What the jobs that train an RLlib algorithm share (``rllib``, ``adversarial``,
    ``preferences``, ``offline``).

    Attributes:
        algorithm: a registered RLlib algorithm name (``PPO``, ``APPO``, ``SAC``...).
        config: ``AlgorithmConfig`` settings by their attribute names, as
            ``AlgorithmConfig.update_from_dict`` takes them (``env``,
            ``num_env_runners``, ``custom_resources_per_env_runner``,
            ``num_learners``, ``num_gpus_per_learner``, ``lr``...); ``model_config``
            goes to ``rl_module(model_config=...)``.
        iterations, env_steps: stop after this many ``train()`` calls or sampled env
            steps, whichever comes first (at least one is required).
        checkpoint: save the final algorithm (with the net) to
            ``<storage_path>/checkpoint``.
    """

    section: ClassVar[str] = "rllib"
    """The job's section in the config file: error messages name keys under it."""

    algorithm: str = "PPO"
    config: dict[str, Any] = field(default_factory=dict)
    iterations: int | None = None
    env_steps: int | None = None
    checkpoint: bool = True

    def __post_init__(self) -> None:
        if self.iterations is None and self.env_steps is None:
            raise ValueError(f"{self.section}: give iterations, env_steps or both (when to stop)")
        for name in ("iterations", "env_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{self.section}.{name}: expected >= 1, got {value}")


@dataclass(kw_only=True)
class RLlibJobConfig(RLlibTraining):
    """An RLlib algorithm trained on a saved reward net (and the fields of
    :class:`RLlibTraining`).

    Attributes:
        reward: path or URI of a net saved by ``ray_rewards.serialize.save``.
        reward_options: keyword arguments of ``with_learned_reward`` (``mode``,
            ``coef``, ``update_stats``, ``env_actions``, ``predict_kwargs``).
    """

    section: ClassVar[str] = "rllib"

    reward: str = field(metadata=config.PATH_FIELD)
    reward_options: dict[str, Any] = field(default_factory=dict)


ADVERSARIAL_ALGOS = ("gail", "airl")


@dataclass(kw_only=True)
class AdversarialJobConfig(RLlibTraining):
    """GAIL or AIRL inside an RLlib algorithm (``with_adversarial_reward``), and the
    fields of :class:`RLlibTraining`.

    Attributes:
        demonstrations: Parquet file or folder (local path or URI) of expert transitions
            in RLlib's columns (``obs``, ``actions``, ``new_obs``, ``terminateds``),
            e.g. the record job's output. Every learner reads it: on several nodes, a
            URI or a shared filesystem.
        algo: ``"gail"`` or ``"airl"``.
        net: the discriminator's class in ``ray_rewards.reward_nets``, built for the
            spaces of ``config.env``: ``BasicRewardNet`` (the default, for GAIL),
            ``CNNRewardNet``; AIRL needs a shaped net: ``BasicShapedRewardNet``.
        net_kwargs: its keyword arguments, as ``train.net_kwargs`` takes them
            (``hid_sizes``, ``activation: SiLU``, ``normalize_input_layer: RunningNorm``...).
        init_net: start from this saved net (path or URI) instead of building one.
        adversarial_options: the other keyword arguments of ``with_adversarial_reward``
            (``n_disc_updates``, ``disc_batch_size``, ``disc_lr``, ``replay_batches``,
            ``seed``...); unknown ones are refused when the job starts.

    The net's settings are checked as reward training checks them (``TrainConfig``);
    the paths, when the job starts (an earlier job may write them).
    """

    section: ClassVar[str] = "adversarial"

    demonstrations: str = field(metadata=config.PATH_FIELD)
    algo: str = "gail"
    net: str = "BasicRewardNet"
    net_kwargs: dict[str, Any] = field(default_factory=dict)
    init_net: str | None = field(default=None, metadata=config.PATH_FIELD)
    adversarial_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.algo not in ADVERSARIAL_ALGOS:
            raise ValueError(
                f"adversarial.algo: expected one of {list(ADVERSARIAL_ALGOS)}, got {self.algo!r}"
            )
        if "algo" in self.adversarial_options:
            raise ValueError("adversarial.adversarial_options.algo: set it as adversarial.algo")
        if self.init_net is not None:
            return  # the saved net is checked when the job loads it
        self.net_config()
        from ray_rewards import reward_nets

        if self.algo == "airl" and not issubclass(
            getattr(reward_nets, self.net), reward_nets.ShapedRewardNet
        ):
            raise ValueError(
                f"adversarial.net: AIRL needs a shaped reward net (reward plus potential "
                f"shaping) such as 'BasicShapedRewardNet', got {self.net!r}"
            )

    def net_config(self) -> Any:
        """The discriminator as reward training describes a net: a ``TrainConfig`` for
        ``ray_rewards.train.build_net`` (its checks name keys under ``adversarial.``).
        """
        return _net_config(
            self,
            train_data=self.demonstrations,
            loss=self.algo,
            seed=self.adversarial_options.get("seed", self.config.get("seed")),
        )


def _net_config(settings: Any, *, train_data: str, loss: str, seed: Any) -> Any:
    """The net of a job that builds one (``net``, ``net_kwargs``, ``init_net``,
    ``config.env`` and, where the job has it, ``normalize_output``) as a ``TrainConfig``
    for ``ray_rewards.train.build_net``; its errors name keys under the job's section.
    """
    from ray_rewards.train import TrainConfig

    if settings.init_net is None and not isinstance(settings.config.get("env"), str):
        raise ValueError(
            f"{settings.section}.config.env: required, a gymnasium id (the net is built for "
            f"its spaces) unless init_net is given; got {settings.config.get('env')!r}"
        )
    if not isinstance(seed, int) or isinstance(seed, bool):
        seed = 0  # a bad seed is the job's function's (or RLlib's) to report
    try:
        return TrainConfig(
            train_data=train_data,
            loss=loss,
            env=settings.config.get("env"),
            net=settings.net,
            net_kwargs=settings.net_kwargs,
            normalize_output=getattr(settings, "normalize_output", False),
            init_net=settings.init_net,
            seed=seed,
        )
    except ValueError as err:
        lines = str(err).splitlines()
        raise ValueError("\n".join(f"{settings.section}.{line}" for line in lines)) from None


GATHERERS = ("synthetic", "async")


@dataclass(kw_only=True)
class PreferencesJobConfig(RLlibTraining):
    """Online preference comparisons inside an RLlib algorithm
    (``with_preference_learning``), and the fields of :class:`RLlibTraining`.

    Attributes:
        net: the reward net's class in ``ray_rewards.reward_nets``, built for the
            spaces of ``config.env`` (default ``BasicRewardNet``; ``selection: active``
            needs a ``RewardEnsemble``).
        net_kwargs: its keyword arguments, as ``train.net_kwargs`` takes them.
        normalize_output: wrap the net in ``NormalizedRewardNet(RunningNorm)``.
        init_net: start from this saved net (path or URI) instead of building one.
        gatherer: who labels the queries: ``"synthetic"`` (from the env's reward,
            ``SyntheticGatherer``) or ``"async"`` (``AsyncGatherer``: query files in
            ``<storage_path>/preferences/queue`` that people or another process answer).
        gatherer_options: ``SyntheticGatherer``'s keyword arguments (``temperature``,
            ``discount_factor``, ``sample``, ``threshold``, ``seed``).
        render: with the async gatherer, render every queried fragment's frames for
            the labeling page (``FragmentRenderer``; classic-control envs need the
            ``render`` extra, pygame).
        preference_options: the keyword arguments of ``with_preference_learning``
            (``total_labels``, ``num_rounds``, ``every``, ``fragment_length``,
            ``selection``, ``epochs``, ``seed``..., and ``with_learned_reward``'s);
            unknown ones are refused when the job starts. ``data_dir`` is the job's:
            ``<storage_path>/preferences`` (labels, retraining files, the queue).

    ``storage_path`` must be a local path (on several nodes, a shared filesystem): the
    labels are written by the driver as files.
    """

    section: ClassVar[str] = "preferences"

    net: str = "BasicRewardNet"
    net_kwargs: dict[str, Any] = field(default_factory=dict)
    normalize_output: bool = True
    init_net: str | None = field(default=None, metadata=config.PATH_FIELD)
    gatherer: str = "synthetic"
    gatherer_options: dict[str, Any] = field(default_factory=dict)
    render: bool = False
    preference_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.gatherer not in GATHERERS:
            raise ValueError(
                f"preferences.gatherer: expected one of {list(GATHERERS)}, got {self.gatherer!r}"
            )
        if self.render and self.gatherer != "async":
            raise ValueError(
                "preferences.render: only the async gatherer shows fragments to people; "
                f"got gatherer {self.gatherer!r}"
            )
        if self.gatherer == "async" and self.gatherer_options:
            raise ValueError(
                "preferences.gatherer_options: the async gatherer takes none (its queue is "
                f"<storage_path>/preferences/queue), got {sorted(self.gatherer_options)}"
            )
        for name in ("data_dir", "gatherer"):
            if name in self.preference_options:
                where = "storage_path" if name == "data_dir" else "preferences.gatherer"
                raise ValueError(
                    f"preferences.preference_options.{name}: set by the job (from {where})"
                )
        if self.init_net is not None:
            return  # the saved net is checked when the job loads it
        self.net_config()

    def net_config(self) -> Any:
        """The reward net as reward training describes it (a ``TrainConfig`` for
        ``ray_rewards.train.build_net``; its checks name keys under ``preferences.``).
        """
        return _net_config(
            self,
            train_data="labels",  # the labels the job gathers (not read from here)
            loss="preference",
            seed=self.preference_options.get("seed", self.config.get("seed")),
        )


def _check_action_units(section: str, actions: Any) -> None:
    """The data layer's own check of ``actions`` (env or module units), naming the key."""
    from ray_rewards.data.batches import check_action_units

    try:
        check_action_units(actions)
    except ValueError as err:
        raise ValueError(f"{section}.{err}") from None


@dataclass(kw_only=True)
class OfflineJobConfig(RLlibTraining):
    """An RLlib offline algorithm (MARWIL by default, CQL, IQL, BC) trained on recorded
    transitions, and the fields of :class:`RLlibTraining` (``iterations``; offline
    algorithms sample no env steps, so ``env_steps`` is refused).

    MARWIL is the default because it is the one ``benchmarks/offline_quality.py``
    saw learn Pendulum within a CPU budget (CQL and IQL with RLlib's settings did not
    in a few thousand updates).

    Attributes:
        input: Parquet file or folder (local path or URI) of flat transitions in
            RLlib's columns (``obs``, ``actions``, ``rewards``, ``new_obs``,
            ``terminateds``...): the record job's demonstrations, the relabel job's
            output written with ``column: rewards``, or RLlib's own offline output
            (``output_write_episodes=False``).
        actions: the units of the data's actions: ``"env"`` (what the env received,
            as ``ray-rewards record`` writes them; mapped into the RLModule's units,
            ``with_env_unit_actions``) or ``"module"`` (RLlib's own output).
        reward: a saved reward net (path or URI) whose rewards replace the recorded
            ones in every batch (``with_learned_reward``, relabeled in RLlib's
            offline pre-learner); None trains on the data's ``rewards`` column.
        reward_options: keyword arguments of ``with_learned_reward`` (``mode``,
            ``coef``, ``predict_kwargs``...).
        eval_episodes: greedy episodes of ``config.env`` (required: the algorithm's
            spaces and the evaluation) that RLlib's evaluation runs after the last
            iteration (and every ``config.evaluation_interval`` iterations, if set).

    ``config`` takes the offline algorithm's settings (``train_batch_size_per_learner``,
    ``dataset_num_iters_per_learner``: updates per iteration, 20 unless given...).
    """

    section: ClassVar[str] = "offline"

    algorithm: str = "MARWIL"
    input: str = field(metadata=config.PATH_FIELD)
    actions: str = "env"
    reward: str | None = field(default=None, metadata=config.PATH_FIELD)
    reward_options: dict[str, Any] = field(default_factory=dict)
    eval_episodes: int = 10

    def __post_init__(self) -> None:
        if self.env_steps is not None:
            raise ValueError(
                "offline.env_steps: offline algorithms sample no env steps; give "
                f"offline.iterations instead (got env_steps={self.env_steps})"
            )
        if self.iterations is None:
            raise ValueError("offline.iterations: required (how many train() calls)")
        super().__post_init__()
        interval = self.config.get("evaluation_interval")
        if isinstance(interval, int) and interval > 0 and self.iterations % interval:
            raise ValueError(
                f"offline.config.evaluation_interval: {interval} does not divide "
                f"offline.iterations ({self.iterations}), so the last iteration would not be "
                "evaluated (final_return)"
            )
        _check_action_units("offline", self.actions)
        if not isinstance(self.config.get("env"), str):
            raise ValueError(
                "offline.config.env: required, a gymnasium id (the algorithm's spaces and "
                f"its evaluation); got {self.config.get('env')!r}"
            )
        for key in ("input", "input_", "offline_data"):
            if key in self.config:
                raise ValueError(f"offline.config.{key}: the data is offline.input")
        if self.eval_episodes < 1:
            raise ValueError(f"offline.eval_episodes: expected >= 1, got {self.eval_episodes}")
        if self.reward is None and self.reward_options:
            raise ValueError("offline.reward_options: given without offline.reward")


@dataclass
class RecordJobConfig:
    """Demonstrations recorded from an RLlib checkpoint (``record_demonstrations``).

    Attributes:
        checkpoint: path or URI of the checkpoint (e.g. the rllib job's); it is
            restored as it was configured, env runners and learners included.
        episodes: complete episodes to record.
        explore: sample the policy's actions instead of taking the greedy ones.
    """

    checkpoint: str = field(metadata=config.PATH_FIELD)
    episodes: int = 100
    explore: bool = False

    def __post_init__(self) -> None:
        if self.episodes < 1:
            raise ValueError(f"record.episodes: expected >= 1, got {self.episodes}")


@dataclass
class RelabelJobConfig:
    """Parquet transitions relabeled with a saved reward net (``relabel_dataset``'s options).

    Attributes:
        input: Parquet file or directory (local path or URI) with RLlib's columns.
        reward: path or URI of the saved net.
        column: the new column; reward_type: a ``load_reward`` type or None for the
            net's ``predict_processed``; update_stats: update the net's normalization
            statistics with every batch, merged over all actors, and save the net.
        batch_size, concurrency, num_cpus, num_gpus: rows per forward pass, number of
            actors, and resources of each (a GPU per actor puts the net on CUDA).
        predict_kwargs: more keyword arguments of ``predict_processed``.
        actions: the units of the data's actions: ``"env"`` (what the env received, as
            ``ray-rewards record`` writes them: what the net takes) or ``"module"``
            (RLlib's own offline output with ``normalize_actions``: mapped to the
            net's action space before it predicts).
    """

    input: str = field(metadata=config.PATH_FIELD)
    reward: str = field(metadata=config.PATH_FIELD)
    column: str = "learned_rewards"
    reward_type: str | None = None
    update_stats: bool = False
    batch_size: int = 1024
    concurrency: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    predict_kwargs: dict[str, Any] = field(default_factory=dict)
    actions: str = "env"

    def __post_init__(self) -> None:
        _check_action_units("relabel", self.actions)


@dataclass
class JobConfig:
    """A parsed config file: which job, its settings and where its results go."""

    job: str
    storage_path: str
    settings: Any
    work_dir: str | None = None
    source: str | None = None


def _no_check(cfg: JobConfig, where: str) -> None:
    """A job without rules beyond its settings class's own."""


@dataclass(frozen=True)
class JobSpec:
    """How a job reads its config file.

    Attributes:
        settings: returns the settings dataclass (looked up when used:
            ``ray_rewards.train`` imports this package's config loader).
        owned: fields the job sets itself from ``storage_path`` (refused in the file).
        work_dir: whether the file may give ``work_dir``, a local scratch directory.
        check: the job's rules across settings, given the parsed config and the file's
            name; raises ValueError naming the key.
    """

    settings: Callable[[], type]
    owned: tuple[str, ...] = ()
    work_dir: bool = False
    check: Callable[[JobConfig, str], None] = _no_check


def _pipeline_config() -> type:
    from ray_rewards.train.pipeline import PipelineConfig

    return PipelineConfig


def _train_config() -> type:
    from ray_rewards.train.trainer import TrainConfig

    return TrainConfig


def _check_pipeline(cfg: JobConfig, where: str) -> None:
    if cfg.work_dir is not None and (
        not isinstance(cfg.work_dir, str) or storage.is_uri(cfg.work_dir)
    ):
        raise ValueError(
            f"{where}: 'work_dir' must be a local (shared) directory path, got {cfg.work_dir!r}"
        )
    if storage.is_uri(cfg.storage_path) and cfg.work_dir is None:
        raise ValueError(
            f"{where}: storage_path {cfg.storage_path!r} is a URI, but the pipeline writes "
            "local files: set 'work_dir' to a directory every node can read (e.g. an "
            "NFS/EFS mount); results are uploaded to storage_path at the end"
        )


def _check_preferences(cfg: JobConfig, where: str) -> None:
    if storage.is_uri(cfg.storage_path):
        raise ValueError(
            f"{where}: storage_path {cfg.storage_path!r} is a URI, but the preferences job "
            "writes its labels (and the async gatherer's queue) as local files: give a path "
            "(on several nodes, a shared filesystem such as /mnt/shared)"
        )


def _check_train(cfg: JobConfig, where: str) -> None:
    for name in ("train_data", "eval_data"):
        value = getattr(cfg.settings, name)
        if value is not None and storage.is_uri(value):
            raise ValueError(
                f"{where}: train.{name} is a URI ({value!r}); reward training reads "
                "Parquet from a path every node can read (a shared filesystem)"
            )


JOBS: dict[str, JobSpec] = {
    "pipeline": JobSpec(
        _pipeline_config, owned=("output_dir",), work_dir=True, check=_check_pipeline
    ),
    "train": JobSpec(_train_config, owned=("output", "storage_path"), check=_check_train),
    "rllib": JobSpec(lambda: RLlibJobConfig),
    "relabel": JobSpec(lambda: RelabelJobConfig),
    "record": JobSpec(lambda: RecordJobConfig),
    "adversarial": JobSpec(lambda: AdversarialJobConfig),
    "preferences": JobSpec(lambda: PreferencesJobConfig, check=_check_preferences),
    "offline": JobSpec(lambda: OfflineJobConfig),
}


def load_config(path: storage.PathLike, job: str, storage_path: str | None = None) -> JobConfig:
    """Read and check the config file of ``job``; ``storage_path`` overrides the file's
    (a relative override is relative to the working directory, like any command-line path).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a mapping, unknown job, unknown/missing keys or a section for
            another job (the message names the file and the key).
        TypeError: a value of the wrong type.
    """
    path = os.path.abspath(os.fspath(path))
    if storage_path is not None:
        storage_path = storage.absolute(storage_path)
    _spec(job)  # an unknown job fails before the file is read
    return parse_config(
        config.read_file(path),
        job,
        base_dir=os.path.dirname(path),
        source=path,
        storage_path=storage_path,
    )


def parse_config(
    data: Any,
    job: str,
    *,
    base_dir: str | None = None,
    source: str | None = None,
    storage_path: str | None = None,
) -> JobConfig:
    """Check a config mapping (see :func:`load_config`); relative paths join ``base_dir``."""
    where = source or "config"
    spec = _spec(job)
    data = config.require_mapping(data, where)
    others = sorted(set(data) & (set(JOBS) - {job}))
    if others:
        raise ValueError(
            f"{where}: has a section for job {others[0]!r}, but the job to run is {job!r}"
        )
    with_work_dir = [name for name, s in JOBS.items() if s.work_dir]
    unknown = sorted(set(data) - {"storage_path", "work_dir", job})
    if unknown:
        raise ValueError(
            f"{where}: unknown top-level keys {unknown}; expected 'storage_path', "
            f"'{job}' (the job's settings) and, for the {', '.join(with_work_dir)}, 'work_dir'"
        )
    if "work_dir" in data and not spec.work_dir:
        raise ValueError(
            f"{where}: 'work_dir' is a {', '.join(with_work_dir)} setting; job {job!r} has none"
        )
    base_dir = base_dir or os.getcwd()
    storage_path = storage_path if storage_path is not None else data.get("storage_path")
    if not isinstance(storage_path, str) or not storage_path:
        raise ValueError(
            f"{where}: 'storage_path' is required: a local path or a URI (s3://..., gs://...) "
            f"where results go; got {storage_path!r}"
        )
    section = {} if data.get(job) is None else data[job]
    owned = sorted(set(section) & set(spec.owned)) if isinstance(section, Mapping) else []
    if owned:
        raise ValueError(
            f"{where}: {job}.{owned[0]} is set by the job from 'storage_path'; remove it"
        )
    settings = config.build_settings(
        spec.settings(), section, prefix=job, base_dir=base_dir, exclude=spec.owned
    )
    work_dir = data.get("work_dir")
    if isinstance(work_dir, str):
        work_dir = config.resolve_path(work_dir, base_dir)
    cfg = JobConfig(job, config.resolve_path(storage_path, base_dir), settings, work_dir, source)
    spec.check(cfg, where)
    return cfg


def _spec(job: str) -> JobSpec:
    if job not in JOBS:
        raise ValueError(f"unknown job {job!r}; expected one of {sorted(JOBS)}")
    return JOBS[job]
