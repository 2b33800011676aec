"""The ``ray-rewards`` command line: one click group, one subcommand per task.

Add a command with ``@main.command()``; report a user error with
``click.ClickException`` (exit code 1, message on stderr), never a traceback.
"""

from __future__ import annotations

import contextlib
import pickle
from collections.abc import Iterator
from typing import Any

import click

from ray_rewards import __version__, imitation_files, jobs, serialize
from ray_rewards._supervise import run_supervised
from ray_rewards.labeling.command import label

_USER_ERRORS = (OSError, ValueError, TypeError, KeyError, pickle.UnpicklingError)


@contextlib.contextmanager
def _reported(what: str, failures: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """User errors, and ``failures`` of the work itself (Ray's), as one-line messages
    (exit code 1) instead of tracebacks.
    """
    try:
        yield
    except _USER_ERRORS as err:
        raise click.ClickException(str(err)) from err
    except failures as err:
        from ray_rewards.data import root_cause

        raise click.ClickException(f"{what} failed: {root_cause(err)}") from err


@click.group()
@click.version_option(__version__, prog_name="ray-rewards")
def main() -> None:
    """Learned reward functions (imitation's RewardNet API) on Ray."""


@main.command("inspect")
@click.argument("path")
def inspect_net(path: str) -> None:
    """Describe the reward net saved at PATH (local path or URI such as s3://...).

    Prints the wrapper chain, the spaces, the parameter count and the statistics of
    every normalization layer. The file is loaded safely (nothing from it is run).
    """
    with _reported("inspect"):
        net = serialize.load(path, device="cpu")
    click.echo(serialize.describe(net).format())


@main.command("import-imitation")
@click.argument("input_path", metavar="IN")
@click.argument("output_path", metavar="OUT")
def import_imitation(input_path: str, output_path: str) -> None:
    """Convert the reward net the imitation library saved at IN (``th.save`` of an
    imitation RewardNet) into ray_rewards' format at OUT (each a local path or URI).

    imitation need not be installed, and nothing from IN is run: only imitation's
    reward-net classes, torch layers and gymnasium spaces are recognized, anything else
    is refused. OUT is written atomically. Prints the converted net in one line.
    """
    with _reported("import"):
        net = imitation_files.load_imitation(input_path, device="cpu")
        serialize.save(net, output_path)
    d = serialize.describe(net)
    click.echo(
        f"saved {output_path}: {d.chain}, observation space {d.observation_space}, action "
        f"space {d.action_space}, {d.num_parameters:,} parameters"
    )


@main.command("relabel")
@click.argument("input_path", metavar="INPUT")
@click.argument("output_path", metavar="OUTPUT")
@click.option("--reward", "reward_path", required=True, help="Reward net saved by ray_rewards.")
@click.option(
    "--reward-type",
    type=click.Choice(serialize.reward_registry.keys()),
    default=None,
    help="A load_reward type; default: the net's predict_processed, statistics frozen.",
)
@click.option("--column", default="learned_rewards", show_default=True, help="New column.")
@click.option(
    "--as-rewards",
    is_flag=True,
    help="Write the learned rewards as RLlib's `rewards` column (what its offline input "
    "trains on), keeping the recorded ones as `env_rewards` (same as --column rewards).",
)
@click.option("--batch-size", default=1024, show_default=True, help="Rows per forward pass.")
@click.option("--concurrency", default=1, show_default=True, help="Actors, one net copy each.")
@click.option("--num-gpus", default=0.0, show_default=True, help="GPUs per actor.")
@click.option(
    "--num-cpus",
    default=1.0,
    show_default=True,
    help="CPUs per actor; the local engine's torch threads.",
)
@click.option("--address", default=None, help="Ray cluster (default: RAY_ADDRESS or local).")
@click.option(
    "--engine",
    type=click.Choice(["auto", "local", "ray"]),
    default="auto",
    show_default=True,
    help="local: stream in this process, no Ray; ray: Ray Data actors; auto: local unless "
    "GPUs, --concurrency > 1, a cluster whose node here takes no tasks, or a large URI "
    "input on a multi-node cluster.",
)
@click.option(
    "--actions",
    type=click.Choice(["env", "module"]),
    default="env",
    show_default=True,
    help="Units of the data's actions. module: the RLModule's normalized actions, as "
    "RLlib's own offline output holds them with normalize_actions (its default), mapped "
    "to the net's action space first; env: what the env received, as `ray-rewards "
    "record` output and the pipeline's transitions hold them.",
)
def relabel(
    input_path: str,
    output_path: str,
    reward_path: str,
    reward_type: str | None,
    column: str,
    as_rewards: bool,
    batch_size: int,
    concurrency: int,
    num_gpus: float,
    num_cpus: float,
    address: str | None,
    engine: str,
    actions: str,
) -> None:
    """Add a learned-reward column to the Parquet transitions at INPUT (e.g. RLlib's
    offline output), writing Parquet to OUTPUT. The net takes env-unit actions: give
    --actions module for RLlib's own offline output of Box actions (normalized).

    The local engine relabels file by file in this process without starting Ray; the
    Ray engine runs Ray Data (which shows progress), on the cluster at --address or
    RAY_ADDRESS if given. With --engine auto, a cluster given that way is joined to see
    its size. OUTPUT appears only when the whole job succeeded.
    """
    import os
    import time

    from ray_rewards import data

    if as_rewards:
        if column not in ("learned_rewards", data.AS_REWARDS):
            raise click.UsageError(f"--as-rewards writes `rewards`; drop --column {column}")
        column = data.AS_REWARDS

    failures: tuple[type[BaseException], ...] = ()
    cluster = address or os.environ.get("RAY_ADDRESS")
    if engine == "ray" or (engine == "auto" and (cluster or concurrency > 1 or num_gpus > 0)):
        import ray

        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False)
        failures = (ray.exceptions.RayError,)
    start = time.perf_counter()
    with _reported("relabeling", failures):
        rows = data.relabel_parquet(
            input_path,
            output_path,
            reward_path,
            reward_type=reward_type,
            column=column,
            batch_size=batch_size,
            concurrency=concurrency,
            num_gpus=num_gpus,
            num_cpus=num_cpus,
            engine=engine,
            actions=actions,
        )
    click.echo(
        f"relabeled {rows} rows into {output_path} (column {column!r}) "
        f"in {time.perf_counter() - start:.1f} s"
    )


@main.command("record")
@click.argument("checkpoint")
@click.argument("output_path", metavar="OUTPUT")
@click.option(
    "--episodes", "num_episodes", type=click.IntRange(min=1), required=True, help="Episodes."
)
@click.option("--explore", is_flag=True, help="Sample actions instead of the greedy ones.")
@click.option("--seed", type=int, default=None, help="Env seed (default: the algorithm's).")
@click.option("--address", default=None, help="Ray cluster (default: RAY_ADDRESS or local).")
def record(
    checkpoint: str,
    output_path: str,
    num_episodes: int,
    explore: bool,
    seed: int | None,
    address: str | None,
) -> None:
    """Record complete episodes of the RLlib policy saved in CHECKPOINT (path or URI) as
    Parquet transitions at OUTPUT (RLlib's column names, actions in env units): expert
    demonstrations for GAIL/AIRL, or input for `ray-rewards relabel`.

    OUTPUT appears only when the whole recording succeeded.
    """
    import os

    from ray_rewards import storage

    checkpoint = storage.absolute(checkpoint)
    if not storage.is_uri(checkpoint) and not os.path.isdir(checkpoint):
        raise click.ClickException(f"no checkpoint at {checkpoint}")
    out = os.path.abspath(output_path)
    if os.path.exists(out) and not (os.path.isdir(out) and not os.listdir(out)):
        raise click.ClickException(f"{out} already exists; choose a new path")
    import ray

    from ray_rewards.rllib.record import record_demonstrations

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False)
    with _reported("recording", (ray.exceptions.RayError,)):
        result = record_demonstrations(
            checkpoint, output_path, num_episodes=num_episodes, explore=explore, seed=seed
        )
    click.echo(
        f"recorded {result.num_episodes} episodes ({result.num_transitions} transitions, "
        f"mean return {result.mean_return:.2f}) into {result.path}"
    )


@main.command("train")
@click.argument("config_path", metavar="CONFIG")
@click.option("--address", default=None, help="Ray cluster (default: RAY_ADDRESS or local).")
@click.option(
    "--fresh",
    is_flag=True,
    help="Delete the named run's earlier checkpoints and start over instead of resuming.",
)
def train_reward(config_path: str, address: str | None, fresh: bool) -> None:
    """Train a reward net as a Ray Train job described by the YAML (or JSON) file CONFIG.

    CONFIG maps the fields of ray_rewards.train.TrainConfig, e.g. train_data,
    eval_data, loss (preference, airl, gail, regression), env, net_kwargs, epochs,
    batch_size, num_workers, output; relative paths are relative to CONFIG's folder.
    Every problem with CONFIG and its inputs is reported before Ray starts (exit code
    2). A run with a name resumes from its checkpoints; one whose config changed what
    defines the net or the data is refused unless --fresh. Prints one line per epoch.
    """
    from ray_rewards.train import trainer, validation

    try:
        cfg = trainer.TrainConfig.from_file(config_path)
    except (OSError, ValueError, TypeError) as err:
        raise click.UsageError(str(err)) from err
    problems = validation.input_problems(cfg)
    if problems:
        raise click.UsageError("\n".join(problems))
    import ray
    import ray.train

    # In-process training (one CPU worker, local storage) needs no Ray runtime.
    if not trainer.in_process(cfg) and not ray.is_initialized():
        ray.init(address=address, include_dashboard=False)
    with _reported("reward training", (ray.train.TrainingFailedError,)):
        result = trainer.train(cfg, fresh=fresh)
    last = result.history[-1]
    shown = ", ".join(f"{k} {v:.4g}" for k, v in last.items() if k.startswith(("train", "eval")))
    click.echo(f"saved {result.net_path} after {len(result.history)} epochs ({shown})")


@main.command("pipeline")
@click.option("--output-dir", default=None, help="Default: ./results/<timestamp>/.")
@click.option("--seed", default=0, show_default=True)
@click.option("--ppo-timesteps", default=None, type=int, help="Env steps of each PPO run.")
@click.option("--num-pairs", default=None, type=int, help="Training preference pairs.")
@click.option("--epochs", default=None, type=int, help="Reward-training epochs.")
@click.option("--num-workers", default=None, type=int, help="Reward-training workers.")
@click.option(
    "--online",
    is_flag=True,
    help="Learn the reward inside the PPO run from preferences on its own fragments.",
)
@click.option("--num-labels", default=None, type=int, help="--online: the label budget (500).")
@click.option(
    "--selection",
    default=None,
    type=click.Choice(["uniform", "active"]),
    help="--online: pairs at random, or where a 3-net ensemble disagrees (uniform).",
)
def pipeline(
    output_dir: str | None, seed: int, online: bool, selection: str | None, **sizes: int | None
) -> None:
    """The main job: rollouts -> synthetic preferences -> reward net (Ray Train) -> PPO on
    the learned reward vs PPO on the true reward (Pendulum-v1), summary and plot.

    With --online, PPO learns its reward while it trains (with_preference_learning):
    rounds of synthetic labels on its own fragments, the net retrained after each.
    """
    from ray_rewards.train import pipeline as pipeline_module

    overrides: dict[str, Any] = {k: v for k, v in sizes.items() if v is not None}
    if selection is not None:
        overrides["selection"] = selection
    given = sorted("--" + k.replace("_", "-") for k in overrides)
    offline_only = [o for o in given if o in ("--num-pairs", "--epochs", "--num-workers")]
    online_only = [o for o in given if o in ("--num-labels", "--selection")]
    if online and offline_only:
        raise click.UsageError(f"{', '.join(offline_only)}: the offline pipeline's; not --online")
    if not online and online_only:
        raise click.UsageError(f"{', '.join(online_only)}: only with --online")
    cfg = pipeline_module.PipelineConfig(
        output_dir=output_dir, seed=seed, online=online, **overrides
    )
    pipeline_module.run(cfg)


@main.command("job")
@click.argument("job_name", metavar="JOB", type=click.Choice(sorted(jobs.JOBS)))
@click.option(
    "--config", "config_path", required=True, help="The job's YAML (or JSON) config file."
)
@click.option(
    "--storage-path", default=None, help="Where results go; overrides the file's storage_path."
)
def job(job_name: str, config_path: str, storage_path: str | None) -> None:
    """Run JOB (pipeline, train, rllib, record, relabel, offline, adversarial,
    preferences) on the connected Ray cluster with the settings in --config; results
    go to its storage_path (see ray_rewards.jobs).

    This is what `ray job submit ... -- python -m ray_rewards.jobs JOB --config FILE` runs.
    """
    try:
        cfg = jobs.load_config(config_path, job_name, storage_path=storage_path)
    except (OSError, ValueError, TypeError) as err:
        raise click.UsageError(str(err)) from err
    jobs.run_job(cfg)


@main.command("doctor")
@click.option(
    "--job",
    "job_name",
    metavar="KIND",
    type=click.Choice(sorted(jobs.JOBS)),
    default=None,
    help=f"The job to check for: {', '.join(sorted(jobs.JOBS))} (default: any).",
)
@click.option(
    "--storage", "storage_path", metavar="PATH_OR_URI", default=None, help="Its storage_path."
)
@click.option(
    "--address",
    metavar="ADDR",
    default=None,
    help="Ray cluster (default: RAY_ADDRESS, else none: this process only).",
)
@click.option(
    "--timeout",
    metavar="SECONDS",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    help="For joining the cluster and for each group's probe.",
)
def doctor(
    job_name: str | None, storage_path: str | None, address: str | None, timeout: float
) -> None:
    """Check what would stop a job before it starts: Python, Ray and package versions,
    torch vs GPUs and driver, the optional pieces the job imports, writing to its
    storage, Ray's auth token and, on a Ray cluster, one probe on every worker group.

    Prints one line per finding (ok / warn / FAIL, what, what was found, and the fix of
    every non-ok one); exit code 1 when a FAIL would stop the job.
    """
    from ray_rewards import doctor as doctor_module

    findings = doctor_module.run_checks(job_name, storage_path, address, timeout)
    for finding in findings:
        click.echo(finding.line())
    failures = [f for f in findings if f.status == "FAIL"]
    if failures:
        raise click.ClickException(f"{len(failures)} FAIL finding(s): fix them before the job")


main.add_command(label)


def entry() -> None:
    """The ``ray-rewards`` executable: :func:`main`, in a process tree that dies with it
    (a SIGKILL leaves none of Ray's processes behind; see ``ray_rewards._supervise``).
    """
    run_supervised(main)


if __name__ == "__main__":
    entry()
