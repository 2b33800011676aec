"""Quality of preference-learned rewards on Pendulum-v1: the figures the issue asks for.

Runs the end-to-end pipeline (``ray_rewards.train.pipeline``) for each seed and
prints, per seed and on average:

- the Pearson correlation of the learned reward with the true reward on held-out
  transitions (target >= 0.9);
- the final true return of PPO on the learned reward and of PPO on the true reward
  (same config, seed and step budget), and the ratio of their returns normalized
  between the random policy (0) and the true-reward PPO (target >= 0.9).

    python benchmarks/reward_quality.py --seeds 0 1 2 [--ppo-timesteps N]
"""

from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np
import ray

from ray_rewards.train import pipeline


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--ppo-timesteps", type=int, default=pipeline.PipelineConfig.ppo_timesteps)
    p.add_argument("--num-pairs", type=int, default=pipeline.PipelineConfig.num_pairs)
    p.add_argument("--output-dir", default=None, help="default: a temporary directory")
    args = p.parse_args()

    root = args.output_dir or tempfile.mkdtemp(prefix="reward_quality_")
    ray.init(include_dashboard=False, configure_logging=False)
    rows = []
    for seed in args.seeds:
        summary = pipeline.run(
            pipeline.PipelineConfig(
                seed=seed,
                ppo_timesteps=args.ppo_timesteps,
                num_pairs=args.num_pairs,
                output_dir=os.path.join(root, f"seed{seed}"),
            )
        )
        rows.append(
            (
                seed,
                summary["reward_correlation"],
                summary["random_return"],
                summary["true_final_return"],
                summary["learned_final_return"],
                summary["normalized_ratio"],
                summary["seconds"]["total"],
            )
        )

    header = ("seed", "pearson r", "random", "PPO true", "PPO learned", "ratio", "seconds")
    print("\n" + " | ".join(f"{h:>11}" for h in header))
    for row in rows:
        print(" | ".join(f"{v:>11.3f}" if isinstance(v, float) else f"{v:>11}" for v in row))
    mean = np.mean(np.array([r[1:] for r in rows]), axis=0)
    print(" | ".join([f"{'mean':>11}", *(f"{v:>11.3f}" for v in mean)]))
    print(
        f"\nPearson r >= 0.9: {'yes' if mean[0] >= 0.9 else 'NO'} ({mean[0]:.3f}); "
        f"learned/true normalized return >= 0.9: {'yes' if mean[4] >= 0.9 else 'NO'} "
        f"({mean[4]:.3f}); results under {root}"
    )


if __name__ == "__main__":
    main()
