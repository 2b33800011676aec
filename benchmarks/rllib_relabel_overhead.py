"""What relabeling with a reward net costs RLlib training.

1. PPO on Pendulum-v1, one config, built twice in one Ray runtime: once as is
   (env reward) and once through ``with_learned_reward`` (``update_stats=True``, so
   the per-iteration statistics merge is included). Training iterations alternate
   between the two (so both see the same machine load); the figures are env steps
   trained per second, best of ``--rounds`` iterations each, and the median ratio
   of adjacent iterations (target >= 0.95). On a noisy machine whole iterations
   vary several-fold, so the connector's own time on one PPO batch (from 2.) is
   also shown as a share of the median iteration.
2. The connector alone: ``RelabelRewards`` on the episode chunks of one PPO train
   batch vs the net's own ``predict_processed`` on the same transitions, already
   gathered into arrays (target >= 0.8); best of ``--repeats``. Also shown: a
   replay-buffer-like sample of one-step episodes (what SAC/DQN learners get),
   relabeled as off-policy learners do (``from_batch``: on the train batch's
   columns) and, for comparison, episode by episode; and the bare ``forward``
   under ``no_grad`` on ready tensors, for reference.
3. Multi-agent: PPO on RLlib's ``MultiAgentCartPole`` with 4 agents (4 RLModules),
   one net shared by all of them (one forward per learner update for all agents),
   built twice as in 1., iterations alternating; env steps/s with vs without, the
   median of the paired iterations (target >= 0.95, at least 4 pairs). The net's
   reward is added with ``coef=0``: both runs then learn the same policy, whose
   episode lengths (CartPole's per-episode costs dominate sampling) stay alike, so
   the ratio is the cost of relabeling alone (with the net's own reward, PPO would
   not learn to balance and the runs would sample different episodes).

Run: ``python benchmarks/rllib_relabel_overhead.py`` (``--help`` for sizes;
``--case multi-agent`` for 3. alone).
"""

from __future__ import annotations

import argparse
import copy
import time
from typing import Any

import gymnasium as gym
import numpy as np
import ray
import torch as th
from ray.rllib.algorithms.ppo import PPOConfig

from ray_rewards import networks
from ray_rewards.reward_nets import BasicRewardNet, NormalizedRewardNet
from ray_rewards.rllib import RelabelRewards, with_learned_reward


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5, help="timed PPO iterations per variant")
    p.add_argument("--repeats", type=int, default=200, help="timed connector calls")
    p.add_argument("--train-batch-size", type=int, default=4000)
    p.add_argument("--num-env-runners", type=int, default=2)
    p.add_argument("--envs-per-runner", type=int, default=4)
    p.add_argument("--num-epochs", type=int, default=10)
    p.add_argument("--hidden", type=int, nargs="+", default=[256, 256], help="reward net MLP")
    p.add_argument("--replay-batch", type=int, default=256, help="one-step episodes")
    p.add_argument(
        "--case", choices=("all", "single-agent", "multi-agent"), default="all", help="what to run"
    )
    p.add_argument("--agents", type=int, default=4, help="multi-agent: agents (= modules)")
    return p.parse_args()


def make_net(hidden: list[int]) -> NormalizedRewardNet:
    env = gym.make("Pendulum-v1")
    base = BasicRewardNet(
        env.observation_space, env.action_space, use_next_state=True, hid_sizes=tuple(hidden)
    )
    return NormalizedRewardNet(base, networks.RunningNorm)


def ppo_config(args: argparse.Namespace) -> PPOConfig:
    return (
        PPOConfig()
        .environment("Pendulum-v1")
        .env_runners(
            num_env_runners=args.num_env_runners, num_envs_per_env_runner=args.envs_per_runner
        )
        .training(
            train_batch_size_per_learner=args.train_batch_size,
            minibatch_size=500,
            num_epochs=args.num_epochs,
        )
        .reporting(min_time_s_per_iteration=0)
    )


def call_times(fns: dict, repeats: int) -> dict[str, np.ndarray]:
    """Seconds of every call of each function, calls interleaved (same load for all)."""
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: np.array(t) for name, t in times.items()}


def ppo_throughput(
    args: argparse.Namespace,
    net: NormalizedRewardNet,
    config: PPOConfig | None = None,
    **reward_options: Any,
) -> tuple[dict, dict, list]:
    """Env steps/s and seconds of every round with and without the learned reward,
    and one batch of episodes."""
    config = config or ppo_config(args)
    learned = with_learned_reward(config, net, update_stats=True, **reward_options)
    algos = {"env reward": config.build_algo(), "learned reward": learned.build_algo()}
    rates = {name: [] for name in algos}
    seconds = {name: [] for name in algos}
    try:
        for algo in algos.values():  # warm-up
            algo.train()
        for _ in range(args.rounds):
            for name, algo in algos.items():
                t0 = time.perf_counter()
                result = algo.train()
                seconds[name].append(time.perf_counter() - t0)
                rates[name].append(
                    result["env_runners"]["num_env_steps_sampled"] / seconds[name][-1]
                )
            print(
                "  env steps/s: " + ", ".join(f"{name} {r[-1]:,.0f}" for name, r in rates.items()),
                flush=True,
            )
        episodes = algos["env reward"].env_runner_group.foreach_env_runner(
            lambda er: er.sample(
                num_timesteps=args.train_batch_size // max(1, args.num_env_runners)
            ),
            local_env_runner=args.num_env_runners == 0,
        )
    finally:
        for algo in algos.values():
            algo.stop()
    return rates, seconds, [e for eps in episodes for e in eps]


def transitions_of(episodes):
    obs = [np.asarray(e.get_observations()) for e in episodes]
    return (
        np.concatenate([o[:-1] for o in obs]),
        np.concatenate([np.asarray(e.get_actions()) for e in episodes]),
        np.concatenate([o[1:] for o in obs]),
        np.concatenate([_dones(e) for e in episodes]),
    )


def _dones(episode) -> np.ndarray:
    done = np.zeros(len(episode), dtype=np.float32)
    done[-1] = float(episode.is_terminated)
    return done


def connector_vs_raw(
    net, episodes, repeats: int, from_batch: bool = False
) -> tuple[dict[str, np.ndarray], int]:
    """Seconds per call: connector on the chunks (or, ``from_batch``, on the train batch
    of their transitions), predict_processed on arrays, bare forward."""
    piece = RelabelRewards(net, from_batch=from_batch)
    arrays = transitions_of(episodes)
    tensors = net.preprocess(*arrays)
    obs, actions, new_obs, dones = arrays
    columns = {
        "obs": obs, "actions": actions, "new_obs": new_obs, "terminateds": dones.astype(bool),
        "rewards": np.concatenate([np.asarray(e.get_rewards()) for e in episodes]),
    }  # fmt: skip

    def forward():
        with th.no_grad(), networks.evaluating(net):
            net(*tensors)

    def connector():
        batch = {"default_policy": columns} if from_batch else {}
        piece(rl_module=None, batch=batch, episodes=episodes, shared_data={})

    times = call_times(
        {
            "connector": connector,
            "raw": lambda: net.predict_processed(*arrays, update_stats=False),
            "forward": forward,
        },
        repeats,
    )
    return times, len(arrays[0])


def one_step_episodes(episodes, n: int, seed: int = 0):
    """``n`` one-step slices of random steps, like EpisodeReplayBuffer samples."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        e = episodes[rng.integers(len(episodes))]
        t = int(rng.integers(len(e)))
        out.append(e.slice(slice(t, t + 1)))
    return out


def multi_agent(args: argparse.Namespace) -> None:
    """3.: PPO on MultiAgentCartPole, a net shared by every module, with vs without."""
    from ray.rllib.examples.envs.classes.multi_agent import MultiAgentCartPole

    env = MultiAgentCartPole({"num_agents": args.agents})
    base = BasicRewardNet(
        env.get_observation_space(0),
        env.get_action_space(0),
        use_next_state=True,
        hid_sizes=tuple(args.hidden),
    )
    net = NormalizedRewardNet(base, networks.RunningNorm)
    config = (
        ppo_config(args)
        .environment(MultiAgentCartPole, env_config={"num_agents": args.agents})
        .multi_agent(
            policies={f"p{i}" for i in range(args.agents)},
            policy_mapping_fn=lambda agent_id, *a, **k: f"p{agent_id}",
        )
    )
    print(
        f"multi-agent: MultiAgentCartPole, {args.agents} agents = {args.agents} modules, one "
        "shared net"
    )
    rates, _, _ = ppo_throughput(args, net, config, mode="add", coef=0.0)
    env_r, learned_r = np.array(rates["env reward"]), np.array(rates["learned reward"])
    print(
        f"multi-agent PPO env steps trained/s, median of {args.rounds} rounds: env reward "
        f"{np.median(env_r):,.0f}, learned reward {np.median(learned_r):,.0f}; median of "
        f"paired rounds {np.median(learned_r / env_r):.3f} (target >= 0.95)"
    )


def main() -> None:
    args = parse_args()
    # Both algorithms hold their env runners at once (they train in turns): reserve
    # logical CPUs for all of them, whatever the machine has.
    ray.init(num_cpus=2 * args.num_env_runners + 2, include_dashboard=False, log_to_driver=False)
    if args.case != "single-agent":
        multi_agent(args)
    if args.case == "multi-agent":
        ray.shutdown()
        return
    net = make_net(args.hidden)
    print(
        f"reward net: NormalizedRewardNet(BasicRewardNet(hid={tuple(args.hidden)})); "
        f"PPO batch {args.train_batch_size}, {args.num_env_runners} env runners x "
        f"{args.envs_per_runner} envs, {args.num_epochs} epochs"
    )
    rates, seconds, episodes = ppo_throughput(args, net)
    env_r, learned_r = np.array(rates["env reward"]), np.array(rates["learned reward"])
    print(
        f"PPO env steps trained/s, best of {args.rounds}: env reward {env_r.max():,.0f}, "
        f"learned reward {learned_r.max():,.0f} -> ratio {learned_r.max() / env_r.max():.3f}; "
        f"median of paired rounds {np.median(learned_r / env_r):.3f} (target >= 0.95)"
    )
    replay = one_step_episodes(episodes, args.replay_batch)
    cases = {
        f"PPO batch ({len(episodes)} chunks)": (copy.deepcopy(episodes), False),
        f"replay sample as off-policy learners relabel it (train batch of {args.replay_batch} "
        "one-step episodes)": (replay, True),
        f"replay sample relabeled episode by episode ({args.replay_batch})": (replay, False),
    }
    for i, (label, (eps, from_batch)) in enumerate(cases.items()):
        times, n = connector_vs_raw(net, eps, args.repeats, from_batch)
        t_conn, t_raw, t_fwd = (times[k].min() for k in ("connector", "raw", "forward"))
        print(
            f"{label}, {n} transitions: connector {n / t_conn:,.0f}/s, "
            f"predict_processed on arrays {n / t_raw:,.0f}/s (best of {args.repeats}) -> "
            f"ratio {t_raw / t_conn:.3f}, median of paired calls "
            f"{np.median(times['raw'] / times['connector']):.3f} (target >= 0.8); "
            f"bare forward {n / t_fwd:,.0f}/s"
        )
        if i == 0:
            share = t_conn / float(np.median(seconds["learned reward"]))
            print(
                f"  relabeling this batch takes {1000 * t_conn:.1f} ms = {100 * share:.2f}% of "
                f"a median learned-reward PPO iteration (throughput ratio {1 / (1 + share):.3f} "
                "from the connector's own cost)"
            )
    ray.shutdown()


if __name__ == "__main__":
    main()
