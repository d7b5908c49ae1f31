"""What the plain `eqx-lstm-ac train` learns: the command line's defaults on standard
tasks, LSTM against the feed-forward baseline, several seeds trained in one program,
and sb3-contrib's `RecurrentPPO` with RL Zoo's published settings beside it.

Parts (each merges its results into `benchmarks/results/learning.json`):

- `ours`: every task of `TASKS`, LSTM and MLP, `--seeds` seeds at once
  (`PPO.train_steps`), the defaults of `eqx-lstm-ac train` (`RunConfig()`), 2 M steps:
  the deterministic evaluation return of every seed (100 episodes), environment steps,
  wall-clock including compilation (needs the `gymnax` extra).
- `seedcost`: what k seeds in one program cost against k runs one after another.
- `purejaxrl`: PureJaxRL's recurrent PPO configuration (`purejaxrl/ppo_rnn.py`) mapped to
  our flags, on fully observed CartPole-v1: the mean training return of the last 10
  updates of every seed, and steps per second; then the plain command on the same task
  and budget, for the environment steps each needs to reach the goal.
- `sb3`: sb3-contrib `RecurrentPPO` with RL Zoo's `ppo_lstm` settings for
  CartPoleNoVel-v1 and PendulumNoVel-v1, on gymnasium's environments with the same
  observations hidden (needs the `bench-train` extra); capped at `--sb3-seconds`.
- `report`: `docs/examples/learning.md` and `docs/images/learning_benchmark.png`.

Run:

    EXTRAS=gymnax,bench-train bash scripts/setup.sh
    .venv/bin/python -m benchmarks.learning ours seedcost purejaxrl sb3 report
"""

import argparse
import dataclasses
import functools
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

import eqx_lstm_ac as lac


ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "learning.json"
PAGE = ROOT / "docs" / "examples" / "learning.md"
FIGURE = ROOT / "docs" / "images" / "learning_benchmark.png"


class Task(NamedTuple):
    name: str
    env: str
    hide: tuple[int, ...]
    goal: float | None  # the deterministic evaluation return every seed should reach
    about: str
    # the training return (stochastic policy) counted as learned, for steps-to-goal
    train_goal: float | None = None

    @property
    def learned(self) -> float | None:
        return self.goal if self.train_goal is None else self.train_goal


TASKS = [
    Task(
        "memory", "memory", (), 1.0, "the built-in memory task: a cue acted on 16 steps later", 0.9
    ),
    Task("cartpole-novel", "gymnax:CartPole-v1", (1, 3), 475.0, "CartPole, velocities hidden"),
    Task("pendulum-novel", "gymnax:Pendulum-v1", (2,), -300.0, "Pendulum, velocity hidden"),
    Task("memorychain", "gymnax:MemoryChain-bsuite", (), 1.0, "bsuite's memory chain", 0.9),
    Task("acrobot", "gymnax:Acrobot-v1", (), -100.0, "Acrobot, fully observed"),
    Task("acrobot-novel", "gymnax:Acrobot-v1", (4, 5), -120.0, "Acrobot, velocities hidden"),
    Task("reacher", "gymnax:Reacher-misc", (), None, "Reacher, 2-D continuous actions"),
]


def _machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "jax": jax.__version__,
        "device": str(jax.devices()[0]),
        "load_average_at_start": os.getloadavg(),
    }


def _merge(key: str, value: Any) -> None:
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    data[key] = value
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, RESULTS)


def t975(n: int) -> float:
    """Student's t quantile for a two-sided 95% interval over `n` seeds."""
    table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306}
    return table.get(n - 1, 1.96)


def ci95(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of a 95% confidence interval (Student's t over seeds)."""
    x = np.asarray(values, np.float64)
    if len(x) < 2:
        return float(x.mean()), float("nan")
    half = t975(len(x)) * x.std(ddof=1) / math.sqrt(len(x))
    return float(x.mean()), float(half)


def train_seeds(config: lac.RunConfig, seeds: list[int], eval_episodes: int) -> dict[str, Any]:
    """Train `seeds` runs of `config` in one program; evaluate each deterministically."""
    env = lac.make_env(config.env, config.hide)
    ppo = lac.PPO(config.ppo, env)
    t0 = time.perf_counter()
    ts = ppo.init_seeds(seeds, functools.partial(config.model.make, env))
    curves: list[list[float | None]] = [[] for _ in seeds]
    first = None
    for _ in range(config.ppo.num_updates):
        ts, metrics = ppo.train_steps(ts)
        returns = np.asarray(jax.device_get(metrics["mean_return"]))
        first = first or time.perf_counter() - t0
        for curve, r in zip(curves, returns, strict=True):
            curve.append(None if np.isnan(r) else float(r))
    wall = time.perf_counter() - t0
    evals = []
    for j, seed in enumerate(seeds):
        model = lac.unstack(ts, j).model
        got = lac.evaluate_policy(
            model, env, key=jax.random.key(10_000 + seed), num_episodes=eval_episodes
        )
        evals.append(float(np.mean(np.asarray(got))))
    steps = config.ppo.num_updates * config.ppo.steps_per_update
    return {
        "seeds": seeds,
        "eval_returns": evals,
        "env_steps": steps,
        "wall_s": wall,
        "first_update_s": first,
        "steps_per_s_all_seeds": len(seeds) * steps / wall,
        "curves": curves,
    }


def part_ours(args: argparse.Namespace) -> None:
    results = {}
    for task in TASKS:
        for kind in ("lstm", "mlp"):
            base = lac.RunConfig()
            config = dataclasses.replace(
                base,
                env=task.env,
                hide=task.hide,
                model=dataclasses.replace(base.model, model=kind),
                ppo=dataclasses.replace(base.ppo, total_steps=args.steps),
            )
            out = train_seeds(config, list(range(args.seeds)), args.eval_episodes)
            mean, half = ci95(out["eval_returns"])
            print(
                f"{task.name} {kind}: eval {mean:.3f} +- {half:.3f} "
                f"({', '.join(f'{r:.2f}' for r in out['eval_returns'])}), "
                f"{out['wall_s']:.0f} s for {len(out['seeds'])} seeds",
                flush=True,
            )
            results[f"{task.name}/{kind}"] = {**out, "task": task._asdict(), "model": kind}
    _merge(
        "ours",
        {"config": lac.RunConfig().to_dict(), "machine": _machine(), "runs": results},
    )


def part_seedcost(args: argparse.Namespace) -> None:
    task = TASKS[1]
    base = lac.RunConfig(env=task.env, hide=task.hide)
    config = dataclasses.replace(base, ppo=dataclasses.replace(base.ppo, total_steps=500_000))
    seeds = list(range(args.seeds))
    together = train_seeds(config, seeds, 10)["wall_s"]
    apart = sum(train_seeds(config, [s], 10)["wall_s"] for s in seeds)
    print(f"{len(seeds)} seeds: {together:.1f} s in one program, {apart:.1f} s one by one")
    _merge(
        "seedcost",
        {
            "task": task.name,
            "env_steps_per_seed": config.ppo.num_updates * config.ppo.steps_per_update,
            "seeds": len(seeds),
            "one_program_s": together,
            "separate_s": apart,
            "machine": _machine(),
        },
    )


# PureJaxRL's `ppo_rnn.py` configuration for CartPole-v1, in our flags (its GRU and its
# 128-unit actor and critic layers become our 128-unit encoder and LSTM).
PUREJAXRL = dict(
    num_envs=4,
    num_steps=128,
    total_steps=500_000,
    num_epochs=4,
    num_minibatches=4,
    bptt_chunk=128,
    learning_rate=2.5e-4,
    ent_coef=0.01,
    gamma=0.99,
    gae_lambda=0.95,
    clip_eps=0.2,
    vf_coef=0.5,
    max_grad_norm=0.5,
)
PUREJAXRL_MODEL = dict(hidden_features=128, features=128, activation="relu")


def part_purejaxrl(args: argparse.Namespace) -> None:
    base = lac.RunConfig()
    config = dataclasses.replace(
        base,
        env="gymnax:CartPole-v1",
        model=dataclasses.replace(base.model, **PUREJAXRL_MODEL),
        ppo=dataclasses.replace(base.ppo, **PUREJAXRL),
    )
    seeds = list(range(args.seeds))
    out = train_seeds(config, seeds, args.eval_episodes)
    from benchmarks.learning_report import final_returns

    print(f"PureJaxRL configuration: final training returns {final_returns(out)}")
    # the plain command on the same task and budget, for steps-to-goal beside it
    plain = dataclasses.replace(
        base,
        env="gymnax:CartPole-v1",
        ppo=dataclasses.replace(base.ppo, total_steps=PUREJAXRL["total_steps"]),
    )
    defaults = train_seeds(plain, seeds, args.eval_episodes)
    print(f"defaults on CartPole-v1: eval {defaults['eval_returns']}")
    _merge(
        "purejaxrl",
        {
            "config": {**PUREJAXRL, **PUREJAXRL_MODEL},
            "machine": _machine(),
            **out,
            "defaults": defaults,
        },
    )


# RL Zoo's `ppo_lstm` settings (rl-baselines3-zoo, hyperparams/ppo_lstm.yml).
ZOO = {
    "cartpole-novel": dict(
        gym_id="CartPole-v1",
        keep=(0, 2),
        n_envs=8,
        n_timesteps=100_000,
        kwargs=dict(
            n_steps=32,
            batch_size=256,
            gae_lambda=0.8,
            gamma=0.98,
            n_epochs=20,
            ent_coef=0.0,
            learning_rate="lin_0.001",
            clip_range="lin_0.2",
        ),
    ),
    "pendulum-novel": dict(
        gym_id="Pendulum-v1",
        keep=(0, 1),
        n_envs=4,
        n_timesteps=100_000,
        kwargs=dict(
            n_steps=1024,
            gae_lambda=0.95,
            gamma=0.9,
            n_epochs=10,
            ent_coef=0.0,
            learning_rate=1e-3,
            clip_range=0.2,
            use_sde=True,
            sde_sample_freq=4,
        ),
    ),
}


def part_sb3(args: argparse.Namespace) -> None:
    import gymnasium as gym
    import torch
    from sb3_contrib import RecurrentPPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.vec_env import VecNormalize

    torch.set_num_threads(1)

    class Hide(gym.ObservationWrapper):
        def __init__(self, env, keep):
            super().__init__(env)
            self.keep = list(keep)
            box = env.observation_space
            self.observation_space = gym.spaces.Box(
                box.low[self.keep], box.high[self.keep], dtype=np.float32
            )

        def observation(self, observation):
            return np.asarray(observation, np.float32)[self.keep]

    class Cap(BaseCallback):
        def __init__(self, seconds):
            super().__init__()
            self.t0, self.seconds = time.perf_counter(), seconds

        def _on_step(self) -> bool:
            return time.perf_counter() - self.t0 < self.seconds

    def schedule(v):
        if isinstance(v, str) and v.startswith("lin_"):
            start = float(v[4:])
            return lambda progress: progress * start
        return v

    results = {}
    for name, zoo in ZOO.items():
        runs = []
        for seed in range(args.sb3_seeds):
            t0 = time.perf_counter()

            def make_env(zoo=zoo):
                return Hide(gym.make(zoo["gym_id"]), zoo["keep"])

            vec = VecNormalize(
                make_vec_env(make_env, n_envs=zoo["n_envs"], seed=seed),
                norm_obs=True,
                norm_reward=False,
            )
            kwargs = {k: schedule(v) for k, v in zoo["kwargs"].items()}
            model = RecurrentPPO(
                "MlpLstmPolicy",
                vec,
                policy_kwargs=dict(
                    ortho_init=False,
                    activation_fn=torch.nn.ReLU,
                    lstm_hidden_size=64,
                    enable_critic_lstm=True,
                    net_arch=dict(pi=[64], vf=[64]),
                ),
                seed=seed,
                device="cpu",
                verbose=0,
                **kwargs,
            )
            model.learn(total_timesteps=zoo["n_timesteps"], callback=Cap(args.sb3_seconds))
            wall = time.perf_counter() - t0
            vec.training = False
            mean, _ = evaluate_policy(
                model, vec, n_eval_episodes=args.sb3_eval_episodes, deterministic=True
            )
            run = {
                "seed": seed,
                "env_steps": int(model.num_timesteps),
                "wall_s": wall,
                "eval_return": float(mean),
                "capped": int(model.num_timesteps) < zoo["n_timesteps"],
            }
            print(f"sb3 {name} seed {seed}: {run}", flush=True)
            runs.append(run)
        results[name] = {"zoo": {k: v for k, v in zoo.items() if k != "kwargs"}, "runs": runs}
        results[name]["zoo"]["kwargs"] = zoo["kwargs"]
    _merge("sb3", {"machine": _machine(), "seconds_cap": args.sb3_seconds, "tasks": results})


def part_report(args: argparse.Namespace) -> None:
    from benchmarks.learning_report import write_report

    write_report(json.loads(RESULTS.read_text()), PAGE, FIGURE)


PARTS = {
    "ours": part_ours,
    "seedcost": part_seedcost,
    "purejaxrl": part_purejaxrl,
    "sb3": part_sb3,
    "report": part_report,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="+", choices=sorted(PARTS))
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=lac.PPOConfig().total_steps)
    parser.add_argument("--eval-episodes", type=int, default=100)
    parser.add_argument("--sb3-seeds", type=int, default=2)
    parser.add_argument("--sb3-seconds", type=float, default=600.0)
    parser.add_argument("--sb3-eval-episodes", type=int, default=20)
    args = parser.parse_args()
    with jax.numpy_dtype_promotion("standard"):
        for part in args.parts:
            PARTS[part](args)


if __name__ == "__main__":
    main()
