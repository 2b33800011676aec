"""GAIL and AIRL on RLlib: how well the imitators do on CartPole-v1 and Pendulum-v1.

For each env, an expert PPO is trained on the true reward, checked over
``--eval-episodes`` greedy episodes (CartPole-v1 must average 500, Pendulum-v1 at
least -200; otherwise the run says so and stops with exit code 1) and records 60
demonstration episodes (Parquet). Then every (env, algorithm, seed) run trains a PPO
generator with :func:`ray_rewards.rllib.with_adversarial_reward` on those
demonstrations and is judged by the env's true reward:

- normalized return ``(learner - random) / (expert - random)`` of the greedy
  policy, ``random`` being uniformly random actions; targets (mean over seeds):
  CartPole-v1 GAIL >= 0.9, AIRL >= 0.85 (<= 300k env steps); Pendulum-v1 GAIL >= 0.7
  (<= 500k env steps); Pendulum-v1 AIRL is reported, with the Pearson r of its base
  (unshaped) net's reward with the true reward on 10k held-out transitions, half
  from a uniformly random policy and half from the expert;
- env steps and wall time of each run, imitation 1.0.1's figures printed beside.

Run it (``--help`` for every option; ``--cpus`` defaults to all of them)::

    python benchmarks/adversarial_quality.py                 # the full benchmark
    python benchmarks/adversarial_quality.py --quick         # smoke test, < 3 min on 2 cores
    python benchmarks/adversarial_quality.py --experts-only  # check the experts' budgets

Every expert and every run is a Ray task of one CPU: sampling and learning happen in
that task's process (``num_env_runners=0``, ``num_learners=0``, one torch thread),
so runs go side by side across the machine's CPUs. An env's runs start as soon as
its expert is ready. Ray is given one CPU more than ``--cpus`` while at most
``--cpus`` tasks run at a time: ``record_demonstrations`` writes through Ray Data,
whose write task needs a free CPU. The exit code is 0 even when a target is missed:
this is a measurement; ``--quick`` judges no target and no expert bar.

Decisions:

- PPO settings per env, the same for the expert and the generator: CartPole-v1 with
  2000-step batches (500-step minibatches, 10 epochs, lr 3e-4, 8 envs); Pendulum-v1
  with :func:`ray_rewards.train.ppo_runs.ppo_config` (its learning rate decays over
  the run's step budget). The discriminators are the library's defaults:
  ``BasicRewardNet`` (GAIL) and ``BasicShapedRewardNet`` (AIRL), the latter's
  shaping discounted with the generator's gamma; ``with_adversarial_reward``'s
  default options (AIRL's policy reward is its ``"logit"``).
- Early stop: every ``--eval-every`` env steps the greedy policy plays 10 episodes;
  once their mean reaches the expert's return the run stops (CartPole-v1: 500, the
  maximum). The budgets are caps; the steps actually used are printed. The expert
  trains the same way, stopping once 10 and then ``--eval-episodes`` greedy
  episodes reach its bar. ``--no-early-stop`` spends the whole budgets.
- Evaluation plays each episode to its end in its own gymnasium env, all of them
  stepped together, with the RLModule's greedy action (as RLlib's env runner picks
  it with ``explore=False``, in env units): RLlib's ``sample(num_episodes=n)`` with
  several envs keeps the first ``n`` episodes to end, which favors short ones.
  Episodes start from fixed seeds, the same for every run, apart from those of the
  demonstrations and of the held-out transitions.
- Wall time: the training iterations' time (first env step to last update), not
  counting building the algorithm or the periodic evaluations.
- Expert budgets are caps (300k CartPole-v1, 500k Pendulum-v1 steps, the latter
  also the span of its learning-rate decay): on 2 loaded cores, expert seeds 0-2
  reached their bars after 40-160k (CartPole-v1) and 40-80k (Pendulum-v1) steps.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

# Ray folds log lines that differ only in their numbers (every progress line) unless
# told not to, when it is imported; and no color codes in the task prefixes.
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_COLOR_PREFIX", "0")

import numpy as np  # noqa: E402
import ray  # noqa: E402

from ray_rewards.train import ppo_runs  # noqa: E402

ENVS = ("CartPole-v1", "Pendulum-v1")
ALGOS = ("gail", "airl")
# The expert's greedy mean return must reach this (over --eval-episodes episodes).
EXPERT_BARS = {"CartPole-v1": 500.0, "Pendulum-v1": -200.0}
# Mean normalized return over seeds; (env, algo) pairs without one are reported only.
TARGETS = {
    ("CartPole-v1", "gail"): 0.9,
    ("CartPole-v1", "airl"): 0.85,
    ("Pendulum-v1", "gail"): 0.7,
}
# imitation 1.0.1, SB3 PPO generator, 8 envs, 60 expert episodes (from the issue).
IMITATION = {
    ("CartPole-v1", "gail"): "1.00 (500) in 200k steps, 36 s",
    ("Pendulum-v1", "gail"): "-0.03 in 300k steps, 49 s",
    ("Pendulum-v1", "airl"): "-0.17 in 300k steps, 54 s",
}
MID_EVAL_EPISODES = 10
# Env seeds of evaluation episodes and held-out transitions, far from the
# demonstrations' (the expert's seed onwards).
EVAL_SEED, MID_EVAL_SEED, HELDOUT_SEED = 1_000_000, 2_000_000, 3_000_000

# Tasks also take one of --cpus of these; Ray gets one CPU more than --cpus, so that the
# Ray Data write inside record_demonstrations always finds a free CPU (with every CPU
# held by a task, it would wait forever).
SLOT = "adversarial_quality_slot"

Policy = Callable[[np.ndarray], np.ndarray]


def _log(msg: str) -> None:
    print(f"[adversarial {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _quiet_task() -> None:
    """Per task: one torch thread, no RLlib/gymnasium warnings."""
    import ray.data
    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    ray.data.DataContext.get_current().enable_progress_bars = False
    for name in ("ray.rllib", "ray.tune", "ray.train", "ray.data", "ray._common"):
        logging.getLogger(name).setLevel(logging.ERROR)


# ---------------------------------------------------------------------------------------
# PPO configs and evaluation
# ---------------------------------------------------------------------------------------


def ppo_config(env: str, seed: int, timesteps: int) -> Any:
    """The PPO config of the expert and the generator on ``env`` (all in-process)."""
    if env == "Pendulum-v1":
        return ppo_runs.ppo_config(env, seed, timesteps, num_env_runners=0)
    from ray.rllib.algorithms.ppo import PPOConfig

    return (
        PPOConfig()
        .environment(env)
        .env_runners(num_env_runners=0, num_envs_per_env_runner=8)
        .learners(num_learners=0)
        .training(train_batch_size_per_learner=2000, minibatch_size=500, num_epochs=10, lr=3e-4)
        .reporting(metrics_num_episodes_for_smoothing=8, min_time_s_per_iteration=0)
        .debugging(seed=seed)
    )


def greedy_policy(algo: Any) -> Policy:
    """The algorithm's greedy policy, env-unit actions for a batch of observations."""
    import torch
    from gymnasium import spaces
    from ray.rllib.core.columns import Columns
    from ray.rllib.utils.spaces.space_utils import clip_action, unsquash_action

    module = algo.get_module()
    dist_cls = module.get_inference_action_dist_cls()
    space = algo.env_runner.env.single_action_space
    config = algo.config

    def act(obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = module.forward_inference({Columns.OBS: torch.as_tensor(obs, dtype=torch.float32)})
            dist = dist_cls.from_logits(out[Columns.ACTION_DIST_INPUTS]).to_deterministic()
            actions = dist.sample().numpy()
        if isinstance(space, spaces.Box):
            if config.normalize_actions:
                actions = unsquash_action(actions, space)
            elif config.clip_actions:
                actions = clip_action(actions, space)
        return actions

    return act


def random_policy(env: str, seed: int) -> Policy:
    """Uniformly random actions."""
    import gymnasium as gym

    space = gym.make(env).action_space
    space.seed(seed)
    return lambda obs: np.array([space.sample() for _ in range(len(obs))])


def play(
    env: str, policy: Policy, episodes: int, seed: int, transitions: bool = False
) -> tuple[np.ndarray, dict[str, np.ndarray] | None]:
    """Play ``episodes`` whole episodes, each in its own env (seeds ``seed``, ``seed +
    1``, ...), stepped together; their true returns and, if asked, their transitions.
    """
    import gymnasium as gym

    envs = [gym.make(env) for _ in range(episodes)]
    obs = np.stack([e.reset(seed=seed + i)[0] for i, e in enumerate(envs)])
    returns = np.zeros(episodes)
    active = np.ones(episodes, dtype=bool)
    cols: dict[str, list[Any]] = {k: [] for k in ("obs", "actions", "new_obs", "terminateds")}
    cols["rewards"] = []
    while active.any():
        live = np.flatnonzero(active)
        actions = policy(obs[live])
        for i, action in zip(live, actions):
            new_obs, reward, terminated, truncated, _ = envs[i].step(action)
            returns[i] += reward
            if transitions:
                for key, value in zip(cols, (obs[i], action, new_obs, terminated, reward)):
                    cols[key].append(np.copy(value))
            obs[i] = new_obs
            active[i] = not (terminated or truncated)
    for e in envs:
        e.close()
    return returns, ({k: np.array(v) for k, v in cols.items()} if transitions else None)


def play_transitions(env: str, policy: Policy, n: int, seed: int) -> dict[str, np.ndarray]:
    """At least ``n`` transitions of whole episodes, cut to ``n``."""
    parts: list[dict[str, np.ndarray]] = []
    while sum(len(p["obs"]) for p in parts) < n:
        parts.append(play(env, policy, 10, seed + 10 * len(parts), transitions=True)[1])
    return {k: np.concatenate([p[k] for p in parts])[:n] for k in parts[0]}


def evaluate(algo: Any, env: str, episodes: int, seed: int) -> float:
    """Mean true return of the greedy policy over ``episodes`` episodes."""
    return float(play(env, greedy_policy(algo), episodes, seed)[0].mean())


# ---------------------------------------------------------------------------------------
# Training loop: to a step budget, early stop, progress every 25 %
# ---------------------------------------------------------------------------------------


def train(
    algo: Any,
    env: str,
    budget: int,
    label: str,
    eval_every: int,
    stop_at: float | None,
    confirm_episodes: int | None = None,
) -> dict[str, Any]:
    """Train to ``budget`` env steps, or until the greedy return reaches ``stop_at``
    on 10 episodes (then also on ``confirm_episodes`` others, if given).

    Returns the env steps used, the training iterations' seconds, whether it stopped
    early and the last iteration's result.
    """
    steps, seconds, next_eval, next_report = 0, 0.0, eval_every, budget / 4
    last_return, result, stopped = float("nan"), {}, False
    while steps < budget:
        t0 = time.perf_counter()
        result = algo.train()
        seconds += time.perf_counter() - t0
        steps = int(result["env_runners"]["num_env_steps_sampled_lifetime"])
        ret = float(result["env_runners"].get("episode_return_mean", np.nan))
        last_return = last_return if np.isnan(ret) else ret
        if steps >= next_report or steps >= budget:
            next_report += budget / 4
            disc = result.get("learned_reward", {}).get("disc_accuracy")
            shown = "-" if np.isnan(last_return) else f"{last_return:.1f}"
            _log(
                f"{label}: {steps}/{budget} env steps, {seconds:.0f} s, episode return {shown}"
                + ("" if disc is None else f", disc accuracy {disc:.2f}")
            )
        if stop_at is None or steps < next_eval or steps >= budget:
            continue
        next_eval = (steps // eval_every + 1) * eval_every
        ret = evaluate(algo, env, MID_EVAL_EPISODES, MID_EVAL_SEED)
        if ret >= stop_at and confirm_episodes:
            ret = evaluate(algo, env, confirm_episodes, EVAL_SEED)
        if ret >= stop_at:
            _log(f"{label}: greedy return {ret:.1f} >= {stop_at:.1f} at {steps} env steps: stop")
            stopped = True
            break
    return {"steps": steps, "seconds": seconds, "early_stop": stopped, "result": result}


# ---------------------------------------------------------------------------------------
# The Ray tasks
# ---------------------------------------------------------------------------------------


@ray.remote(num_cpus=1, resources={SLOT: 1})
def expert_task(env: str, opts: dict[str, Any], out_dir: str) -> dict[str, Any]:
    """Train, check and record the expert of ``env``; also the random policy's return and
    the held-out transitions (half random, half expert) with true rewards.
    """
    _quiet_task()
    from ray_rewards.rllib import record_demonstrations

    budget = opts["expert_steps"][env]
    bar = EXPERT_BARS[env]
    algo = ppo_config(env, opts["expert_seed"], budget).build_algo()
    try:
        run = train(
            algo,
            env,
            budget,
            f"{env} expert",
            opts["eval_every"],
            stop_at=bar if opts["early_stop"] else None,
            confirm_episodes=opts["eval_episodes"],
        )
        expert_return = evaluate(algo, env, opts["eval_episodes"], EVAL_SEED)
        random_return = float(
            play(env, random_policy(env, 0), opts["eval_episodes"], EVAL_SEED)[0].mean()
        )
        out = {
            "env": env,
            "steps": run["steps"],
            "seconds": run["seconds"],
            "expert_return": expert_return,
            "random_return": random_return,
            "bar": bar,
            "ok": expert_return >= bar,
        }
        if not out["ok"] and not opts["quick"]:
            return out
        with contextlib.redirect_stdout(io.StringIO()):  # its progress lines
            demos = record_demonstrations(
                algo, os.path.join(out_dir, f"{env}_demos"), num_episodes=opts["demo_episodes"]
            )
        half = opts["heldout"] // 2
        parts = [
            play_transitions(env, random_policy(env, 1), opts["heldout"] - half, HELDOUT_SEED),
            play_transitions(env, greedy_policy(algo), half, HELDOUT_SEED + 500_000),
        ]
        out.update(
            demos=demos.path,
            demo_episodes=demos.num_episodes,
            demo_transitions=demos.num_transitions,
            demo_return=demos.mean_return,
            heldout={k: np.concatenate([p[k] for p in parts]) for k in parts[0]},
        )
        return out
    finally:
        algo.stop()


@ray.remote(num_cpus=1, resources={SLOT: 1})
def adversarial_task(
    env: str, algo_name: str, seed: int, expert: dict[str, Any], opts: dict[str, Any]
) -> dict[str, Any]:
    """One GAIL/AIRL run: PPO generator on the expert's demonstrations, to its budget."""
    _quiet_task()
    import gymnasium as gym

    from ray_rewards import serialize
    from ray_rewards.reward_nets import BasicRewardNet, BasicShapedRewardNet
    from ray_rewards.rllib import state_of, with_adversarial_reward

    budget = opts["steps"][env]
    config = ppo_config(env, seed, budget)
    probe = gym.make(env)
    spaces = (probe.observation_space, probe.action_space)
    if algo_name == "gail":
        net = BasicRewardNet(*spaces)
    else:
        net = BasicShapedRewardNet(*spaces, discount_factor=config.gamma)
    config = with_adversarial_reward(config, net, expert["demos"], algo=algo_name, seed=seed)
    label = f"{env} {algo_name} seed {seed}"
    algo = config.build_algo()
    try:
        stop_at = expert["expert_return"] if opts["early_stop"] else None
        run = train(algo, env, budget, label, opts["eval_every"], stop_at)
        final = evaluate(algo, env, opts["eval_episodes"], EVAL_SEED)
        pearson = None
        heldout = expert["heldout"]
        if algo_name == "airl" and np.std(heldout["rewards"]) > 0:
            state = state_of(algo)
            state.pull(algo)
            with tempfile.TemporaryDirectory() as tmp:
                base = serialize.load_reward("RewardNet_unshaped", state.save(tmp), None)
                pred = base(heldout["obs"], heldout["actions"], heldout["new_obs"],
                            heldout["terminateds"])  # fmt: skip
            pearson = float(np.corrcoef(pred, heldout["rewards"])[0, 1])
    finally:
        algo.stop()
    learned = run["result"].get("learned_reward", {})
    return {
        "env": env,
        "algo": algo_name,
        "seed": seed,
        "steps": run["steps"],
        "seconds": run["seconds"],
        "early_stop": run["early_stop"],
        "return": final,
        "normalized": ppo_runs.normalized_score(
            final, expert["random_return"], expert["expert_return"]
        ),
        "pearson": pearson,
        "disc_accuracy": learned.get("disc_accuracy"),
    }


# ---------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--envs", default=",".join(ENVS), help="comma-separated, of " + ", ".join(ENVS))
    p.add_argument("--algos", default=",".join(ALGOS), help="comma-separated: gail, airl")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1 per (env, algo)")
    p.add_argument("--cartpole-steps", type=int, default=300_000, help="env steps per run")
    p.add_argument("--pendulum-steps", type=int, default=500_000, help="env steps per run")
    p.add_argument("--expert-steps-cartpole", type=int, default=300_000, help="expert's cap")
    p.add_argument("--expert-steps-pendulum", type=int, default=500_000, help="expert's cap")
    p.add_argument("--expert-seed", type=int, default=0, help="seed of both experts")
    p.add_argument("--demo-episodes", type=int, default=60, help="recorded per expert")
    p.add_argument("--eval-episodes", type=int, default=50, help="final greedy evaluation")
    p.add_argument("--eval-every", type=int, default=20_000, help="env steps between checks")
    p.add_argument("--heldout", type=int, default=10_000, help="transitions for Pearson r")
    p.add_argument("--no-early-stop", action="store_true", help="spend the whole budgets")
    p.add_argument(
        "--experts-only", action="store_true", help="train and check the experts, then stop"
    )
    p.add_argument("--cpus", type=int, default=os.cpu_count(), help="tasks at a time")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: tiny budgets, 1 seed, 10 demo episodes; judges nothing",
    )
    args = p.parse_args(argv)
    args.envs = [e for e in args.envs.split(",") if e]
    args.algos = [a for a in args.algos.split(",") if a]
    for name, values, allowed in (("--envs", args.envs, ENVS), ("--algos", args.algos, ALGOS)):
        bad = sorted(set(values) - set(allowed))
        if bad or not values:
            p.error(f"{name}: unknown or empty {bad}; choose from {', '.join(allowed)}")
    if args.quick:
        args.seeds, args.demo_episodes, args.eval_episodes, args.heldout = 1, 10, 10, 1000
        args.cartpole_steps, args.pendulum_steps, args.eval_every = 10_000, 4096, 4000
        args.expert_steps_cartpole, args.expert_steps_pendulum = 20_000, 4096
    return args


def _options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "quick": args.quick,
        "early_stop": not args.no_early_stop,
        "eval_every": args.eval_every,
        "eval_episodes": args.eval_episodes,
        "demo_episodes": args.demo_episodes,
        "heldout": args.heldout,
        "expert_seed": args.expert_seed,
        "steps": {"CartPole-v1": args.cartpole_steps, "Pendulum-v1": args.pendulum_steps},
        "expert_steps": {
            "CartPole-v1": args.expert_steps_cartpole,
            "Pendulum-v1": args.expert_steps_pendulum,
        },
    }


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def summary(
    experts: dict[str, dict[str, Any]], runs: list[dict[str, Any]], args: argparse.Namespace
) -> str:
    """The summary: experts, then means per (env, algo) against their targets."""
    lines = ["", "== experts (PPO on the true reward) and the random policy =="]
    rows = [("env", "expert", "bar", "random", "env steps", "train s", "demonstrations")]
    for env, e in sorted(experts.items(), key=lambda item: args.envs.index(item[0])):
        rows.append(
            (
                env,
                f"{e['expert_return']:.1f}",
                f">= {e['bar']:.0f}" + ("" if e["ok"] else " (missed)"),
                f"{e['random_return']:.1f}",
                str(e["steps"]),
                f"{e['seconds']:.0f}",
                f"{e['demo_episodes']} episodes, {e['demo_transitions']} transitions, "
                f"return {e['demo_return']:.1f}",
            )
        )
    lines.append(_table(rows))
    if not runs:
        return "\n".join(lines)
    lines.append("")
    lines.append(
        f"== GAIL/AIRL, PPO generator: means over {args.seeds} seed(s), "
        f"greedy return over {args.eval_episodes} episodes =="
    )
    rows = [
        (
            "env",
            "algo",
            "env steps",
            "wall s",
            "return",
            "normalized (min..max)",
            "Pearson r",
            "target",
            "",
            "imitation 1.0.1",
        )
    ]
    for env in args.envs:
        for algo in args.algos:
            mine = [r for r in runs if r["env"] == env and r["algo"] == algo]
            if not mine:
                continue
            norm = np.array([r["normalized"] for r in mine])
            pearson = [r["pearson"] for r in mine if r["pearson"] is not None]
            target = TARGETS.get((env, algo))
            if target is None:
                verdict = "reported"
            elif args.quick:
                verdict = "not judged (--quick)"
            else:
                verdict = "met" if norm.mean() >= target else "MISSED"
            rows.append(
                (
                    env,
                    algo,
                    f"{np.mean([r['steps'] for r in mine]):.0f}",
                    f"{np.mean([r['seconds'] for r in mine]):.0f}",
                    f"{np.mean([r['return'] for r in mine]):.1f}",
                    f"{norm.mean():.2f} ({norm.min():.2f}..{norm.max():.2f})",
                    f"{np.mean(pearson):.3f}" if pearson else "-",
                    "-" if target is None else f">= {target:.2f}",
                    verdict,
                    IMITATION.get((env, algo), "-"),
                )
            )
    lines.append(_table(rows))
    lines.append(
        "normalized: (learner - random) / (expert - random); wall s: training iterations, "
        "first env step to last update; imitation: SB3 PPO, 8 envs, 60 expert episodes"
    )
    return "\n".join(lines)


def _run_line(r: dict[str, Any]) -> str:
    line = (
        f"{r['env']} {r['algo']} seed {r['seed']}: {r['steps']} env steps"
        f"{' (early stop)' if r['early_stop'] else ''}, {r['seconds']:.1f} s, greedy return "
        f"{r['return']:.1f}, normalized {r['normalized']:.2f}"
    )
    if r["disc_accuracy"] is not None:
        line += f", disc accuracy {r['disc_accuracy']:.2f}"
    if r["pearson"] is not None:
        line += f", Pearson r {r['pearson']:.3f}"
    return line


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    opts = _options(args)
    t_start = time.perf_counter()
    tmp = tempfile.mkdtemp(prefix="adversarial_quality_")
    # Workers inherit the environment of the Ray runtime this process starts.
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    ray.init(
        address="local",
        num_cpus=args.cpus + 1,
        resources={SLOT: args.cpus},
        include_dashboard=False,
        log_to_driver=True,
        logging_level=logging.ERROR,
    )
    try:
        _log(
            f"{len(args.envs)} expert(s), then {len(args.envs) * len(args.algos) * args.seeds} "
            f"runs on {args.cpus} CPUs" + (" (--quick: tiny budgets, nothing judged)" * args.quick)
        )
        pending = {expert_task.remote(env, opts, tmp): env for env in args.envs}
        experts: dict[str, dict[str, Any]] = {}
        runs: list[dict[str, Any]] = []
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            kind = pending.pop(done[0])
            out = ray.get(done[0])
            if kind in ENVS:
                env = kind
                _log(
                    f"{env} expert: greedy return {out['expert_return']:.1f} over "
                    f"{args.eval_episodes} episodes (bar {out['bar']:.0f}) after "
                    f"{out['steps']} env steps, {out['seconds']:.0f} s; random "
                    f"{out['random_return']:.1f}"
                )
                if not out["ok"]:
                    if not args.quick:
                        print(
                            f"\nThe {env} expert's greedy return {out['expert_return']:.1f} is "
                            f"below the bar {out['bar']:.0f}: the benchmark needs a real "
                            f"expert. Raise --expert-steps-{env.split('-')[0].lower()} or "
                            "change --expert-seed. Stopping.",
                            file=sys.stderr,
                            flush=True,
                        )
                        return 1
                    _log(f"{env} expert is below its bar (--quick: going on)")
                experts[env] = out
                if args.experts_only:
                    continue
                for algo in args.algos:
                    for seed in range(args.seeds):
                        ref = adversarial_task.remote(env, algo, seed, out, opts)
                        pending[ref] = "run"
            else:
                runs.append(out)
                _log("done " + _run_line(out))
        print(summary(experts, runs, args), flush=True)
        _log(f"total {time.perf_counter() - t_start:.0f} s")
        return 0
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
