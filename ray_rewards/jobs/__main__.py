"""``python -m ray_rewards.jobs JOB --config FILE``: the ``ray-rewards job`` command."""

from ray_rewards.cli import job

if __name__ == "__main__":
    job(prog_name="python -m ray_rewards.jobs")
