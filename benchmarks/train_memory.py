"""Does the LSTM remember? Recurrent PPO with `eqx_lstm_ac` against its feed-forward
baseline, and against sb3-contrib's `RecurrentPPO`, all on this machine's CPU.

Parts (each merges its results into the JSON file given by --results):

- `memory`: the built-in memory task (a cue shown once, acted on `--delay` steps later),
  LSTM and MLP with the same budget and settings, several seeds: final training return,
  deterministic evaluation return, environment steps per second (rollout plus update,
  after compilation), wall-clock time to a mean training return of `--threshold`.
- `pomdp`: gymnax CartPole-v1 with its velocities hidden (observation entries 1 and 3),
  LSTM and MLP, several seeds (needs the `gymnax` extra).
- `sb3`: sb3-contrib `RecurrentPPO` (PyTorch, CPU) on the same memory task wrapped as a
  gymnasium environment: wall-clock time and environment steps to the same threshold
  (needs the `bench-train` extra).
- `report`: the learning-curve figure `docs/images/memory_benchmark.png` from the results.

Run (each part stays under ten minutes on a 2-core CPU):

    EXTRAS=gymnax,bench-train bash scripts/setup.sh
    .venv/bin/python benchmarks/train_memory.py memory
    .venv/bin/python benchmarks/train_memory.py pomdp
    .venv/bin/python benchmarks/train_memory.py sb3
    .venv/bin/python benchmarks/train_memory.py report
"""

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import eqx_lstm_ac as lac


ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "train_memory.json"
FIGURE = ROOT / "docs" / "images" / "memory_benchmark.png"

# The settings the memory-task figures were measured with (written out, so that a change
# of the library's defaults does not change what this benchmark reproduces).
# fmt: off
MEMORY_CONFIG = dict(num_envs=64, num_steps=128, num_epochs=4, num_minibatches=4,
                     learning_rate=1e-3, gamma=0.99, gae_lambda=0.95, ent_coef=0.0)
# fmt: on
MEMORY_SIZES = dict(hidden_features=32, features=32)
# CartPole without velocities: fewer environments, an entropy bonus, rewards scaled
POMDP_CONFIG = {**MEMORY_CONFIG, "num_envs": 32, "ent_coef": 0.01, "reward_scale": 0.1}
POMDP_SIZES = dict(hidden_features=64, features=64)


def _machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
        "jax": jax.__version__,
        "device": str(jax.devices()[0]),
        "load_average_at_start": os.getloadavg(),
    }


def _merge(path: Path, key: str, value: Any) -> None:
    data = json.loads(path.read_text()) if path.exists() else {}
    data[key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def run_ours(
    env: lac.Environment,
    model_kind: str,
    seed: int,
    total_steps: int,
    config: dict[str, Any],
    sizes: dict[str, Any],
    threshold: float,
    eval_episodes: int,
) -> dict[str, Any]:
    """One training run with per-update wall-clock times."""
    cfg = lac.PPOConfig(total_steps=total_steps, **config)
    ppo = lac.PPO(cfg, env)
    k_model, k_init = jax.random.split(jax.random.key(seed))
    model = lac.make_model(env, model_kind, key=k_model, **sizes)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    ts = ppo.init(model, key=k_init)
    curve, times = [], []
    for i in range(cfg.num_updates):
        ts, metrics = ppo.train_step(ts)
        ret = float(metrics["mean_return"])
        times.append(time.perf_counter() - t0)
        curve.append([(i + 1) * cfg.steps_per_update, None if np.isnan(ret) else ret])
    total = times[-1]
    steady = (cfg.num_updates - 1) * cfg.steps_per_update / max(times[-1] - times[0], 1e-9)
    reached = next(
        (
            (steps, t)
            for (steps, ret), t in zip(curve, times, strict=True)
            if ret is not None and ret >= threshold
        ),
        None,
    )
    returns = lac.evaluate_policy(
        ts.model, env, key=jax.random.key(10_000 + seed), num_episodes=eval_episodes
    )
    final = [r for _, r in curve[-5:] if r is not None]
    out = {
        "model": model_kind,
        "seed": seed,
        "env_steps": cfg.num_updates * cfg.steps_per_update,
        "wall_s": total,
        "first_update_s": times[0],
        "steps_per_s": steady,
        "final_train_return": float(np.mean(final)) if final else None,
        "eval_return": float(jnp.mean(returns)),
        "threshold": threshold,
        "steps_to_threshold": None if reached is None else reached[0],
        "seconds_to_threshold": None if reached is None else reached[1],
        "curve": curve,
    }
    print(
        f"  {model_kind} seed {seed}: final train return {out['final_train_return']:.3f}, "
        f"eval {out['eval_return']:.3f}, {steady:,.0f} steps/s, first update "
        f"{times[0]:.1f} s, to {threshold}: "
        + ("never" if reached is None else f"{reached[0]:,} steps / {reached[1]:.1f} s"),
        flush=True,
    )
    return out


# sb3-contrib's settings in `part_sb3`: 8 environments, rollouts of 128 steps, minibatches
# of 256 steps (two sequences).
MATCHED_CONFIG = {**MEMORY_CONFIG, "num_envs": 8}


def part_memory(args: argparse.Namespace) -> None:
    env = lac.MemoryTask(delay=args.delay)
    config = MATCHED_CONFIG if args.matched else MEMORY_CONFIG
    print(f"memory task {env.name}: {args.steps:,} steps per run, seeds {args.seeds}")
    runs = [
        run_ours(
            env,
            kind,
            seed,
            args.steps,
            config,
            MEMORY_SIZES,
            args.threshold,
            args.eval_episodes,
        )
        for kind in (("lstm",) if args.matched else ("lstm", "mlp"))
        for seed in range(args.seeds)
    ]
    _merge(
        args.results,
        ("memory" if args.delay == 16 else f"memory_d{args.delay}")
        + ("_matched" if args.matched else ""),
        {
            "task": env.name,
            "delay": args.delay,
            "optimum_return": env.optimum_return,
            "chance_return": env.chance_return,
            "config": {**config, **MEMORY_SIZES},
            "machine": _machine(),
            "runs": runs,
        },
    )


def part_pomdp(args: argparse.Namespace) -> None:
    env = lac.make_env("gymnax:CartPole-v1", hide=(1, 3))
    print(f"{env.name} (velocities hidden): {args.pomdp_steps:,} steps per run")
    with jax.numpy_dtype_promotion("standard"):
        runs = [
            run_ours(
                env,
                kind,
                seed,
                args.pomdp_steps,
                POMDP_CONFIG,
                POMDP_SIZES,
                args.pomdp_threshold,
                args.eval_episodes,
            )
            for kind in ("lstm", "mlp")
            for seed in range(args.seeds)
        ]
    _merge(
        args.results,
        "pomdp",
        {
            "task": env.name,
            "hidden": [1, 3],
            "optimum_return": 500.0,
            "config": {**POMDP_CONFIG, **POMDP_SIZES},
            "machine": _machine(),
            "runs": runs,
        },
    )


def part_sb3(args: argparse.Namespace) -> None:
    import gymnasium as gym
    import torch
    from sb3_contrib import RecurrentPPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    # One intra-op thread: with two on this shared 2-core machine, a batch-8 LSTM step
    # took ~23 ms instead of ~0.15 ms (threads spinning against each other).
    torch.set_num_threads(args.sb3_threads)
    task = lac.MemoryTask(delay=args.delay)
    reset = jax.jit(task.reset)
    step = jax.jit(task.step)

    class MemoryGym(gym.Env):
        """The JAX memory task, one environment, as a gymnasium environment."""

        observation_space = gym.spaces.Box(-1.0, 1.0, (task.observation_size,), np.float32)
        action_space = gym.spaces.Box(-1.0, 1.0, (task.action_size,), np.float32)

        def __init__(self):
            self._key = jax.random.key(0)
            self._state = None

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            if seed is not None:
                self._key = jax.random.key(seed)
            self._key, k = jax.random.split(self._key)
            obs, self._state = reset(k, None)
            return np.asarray(obs), {}

        def step(self, action):
            a = jnp.clip(jnp.asarray(action, jnp.float32), -1.0, 1.0)
            obs, self._state, r, term, trunc, _ = step(self._key, self._state, a, None)
            return np.asarray(obs), float(r), bool(term), bool(trunc), {}

    class Stop(BaseCallback):
        def __init__(self, t0: float):
            super().__init__()
            self.t0 = t0
            self.curve: list[list[float]] = []
            self.reached: tuple[int, float] | None = None

        def _on_step(self) -> bool:
            # Stop at the first step after the threshold was reached, or at the time cap.
            return self.reached is None and time.perf_counter() - self.t0 < args.sb3_seconds

        def _on_rollout_end(self) -> None:
            buf = self.model.ep_info_buffer
            if not buf:
                return
            ret = float(np.mean([e["r"] for e in buf]))
            t = time.perf_counter() - self.t0
            self.curve.append([self.num_timesteps, ret, t])
            if ret >= args.threshold and self.reached is None:
                self.reached = (self.num_timesteps, t)

    runs = []
    for seed in range(args.sb3_seeds):
        t0 = time.perf_counter()
        vec = make_vec_env(MemoryGym, n_envs=args.sb3_envs, seed=seed)
        model = RecurrentPPO(
            "MlpLstmPolicy",
            vec,
            n_steps=128,
            batch_size=128 * args.sb3_envs // 4,
            n_epochs=4,
            learning_rate=1e-3,
            gamma=0.99,
            gae_lambda=0.95,
            ent_coef=0.0,
            clip_range=0.2,
            policy_kwargs=dict(lstm_hidden_size=32, net_arch=dict(pi=[32], vf=[32])),
            seed=seed,
            device="cpu",
            verbose=0,
        )
        cb = Stop(t0)
        model.learn(total_timesteps=args.steps, callback=cb)
        wall = time.perf_counter() - t0
        steps = int(model.num_timesteps)
        out = {
            "seed": seed,
            "n_envs": args.sb3_envs,
            "env_steps": steps,
            "wall_s": wall,
            "steps_per_s": steps / wall,
            "threshold": args.threshold,
            "steps_to_threshold": None if cb.reached is None else cb.reached[0],
            "seconds_to_threshold": None if cb.reached is None else cb.reached[1],
            "final_train_return": cb.curve[-1][1] if cb.curve else None,
            "stopped_by_time_cap": cb.reached is None and wall > args.sb3_seconds,
            "curve": cb.curve,
        }
        runs.append(out)
        print(
            f"  sb3-contrib RecurrentPPO seed {seed}: {steps:,} steps in {wall:.0f} s "
            f"({steps / wall:,.0f} steps/s), last return {out['final_train_return']}, to "
            f"{args.threshold}: "
            + (
                "not reached"
                if cb.reached is None
                else f"{cb.reached[0]:,} steps / {cb.reached[1]:.1f} s"
            ),
            flush=True,
        )
    import sb3_contrib

    _merge(
        args.results,
        "sb3" if args.delay == 16 else f"sb3_d{args.delay}",
        {
            "task": task.name,
            "library": f"sb3-contrib {sb3_contrib.__version__}, torch {torch.__version__}",
            "settings": {
                "n_steps": 128,
                "n_epochs": 4,
                "learning_rate": 1e-3,
                "lstm_hidden_size": 32,
                "net_arch": "pi=[32], vf=[32]",
                "time_cap_s": args.sb3_seconds,
                "torch_threads": args.sb3_threads,
            },
            "machine": _machine(),
            "runs": runs,
        },
    )


def part_report(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(args.results.read_text())
    panels = [k for k in ("memory", "pomdp") if k in data]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.0 * len(panels), 4.0), dpi=100)
    axes = np.atleast_1d(axes)
    colors = {"lstm": "tab:blue", "mlp": "tab:orange"}
    for ax, name in zip(axes, panels, strict=True):
        part = data[name]
        for run in part["runs"]:
            xs = [s for s, r in run["curve"] if r is not None]
            ys = [r for _, r in run["curve"] if r is not None]
            label = f"{run['model'].upper()}" if run["seed"] == 0 else None
            ax.plot(xs, ys, color=colors[run["model"]], lw=1.0, alpha=0.8, label=label)
        if name == "memory":
            for run in data.get("sb3", {}).get("runs", []):
                ax.plot(
                    [c[0] for c in run["curve"]],
                    [c[1] for c in run["curve"]],
                    color="tab:green",
                    lw=1.0,
                    label="sb3-contrib RecurrentPPO" if run["seed"] == 0 else None,
                )
            ax.axhline(part["optimum_return"], color="k", ls="--", lw=0.8, label="optimum")
            ax.axhline(part["chance_return"], color="r", ls=":", lw=0.8, label="feed-forward best")
            ax.set_title(f"memory task, cue {part['delay']} steps before the query")
        else:
            ax.set_title("CartPole-v1, velocities hidden")
        ax.set_xlabel("environment steps")
        ax.set_ylabel("mean training return")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    FIGURE.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(FIGURE)
    print(f"wrote {FIGURE}")
    for name in panels:
        print(f"\n{name}:")
        for run in data[name]["runs"]:
            print(
                f"  {run['model']} seed {run['seed']}: final {run['final_train_return']:.3f} "
                f"eval {run['eval_return']:.3f} {run['steps_per_s']:,.0f} steps/s "
                f"to-threshold {run['seconds_to_threshold']}"
            )
    for name in sorted(k for k in data if k.startswith("memory_")):
        print(f"\n{name}:")
        for run in data[name]["runs"]:
            print(
                f"  {run['model']} seed {run['seed']}: final {run['final_train_return']:.3f} "
                f"{run['steps_per_s']:,.0f} steps/s to-threshold {run['seconds_to_threshold']} s"
                f" / {run['steps_to_threshold']} steps"
            )
    for name in sorted(k for k in data if k.startswith("sb3")):
        for run in data[name]["runs"]:
            print(
                f"  {name} seed {run['seed']}: {run['steps_per_s']:,.0f} steps/s, to threshold "
                f"{run['seconds_to_threshold']} s / {run['steps_to_threshold']} steps"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=("memory", "pomdp", "sb3", "report"))
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument(
        "--matched", action="store_true", help="memory: sb3-contrib's 8 envs instead of 64"
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--delay", type=int, default=16)
    parser.add_argument("--steps", type=int, default=1_500_000, help="budget per memory run")
    parser.add_argument("--threshold", type=float, default=0.9, help="memory-task target return")
    parser.add_argument("--pomdp-steps", type=int, default=1_000_000)
    parser.add_argument("--pomdp-threshold", type=float, default=400.0)
    parser.add_argument("--eval-episodes", type=int, default=1000)
    parser.add_argument("--sb3-seeds", type=int, default=1)
    parser.add_argument("--sb3-envs", type=int, default=8)
    parser.add_argument("--sb3-seconds", type=float, default=480.0, help="wall-clock cap")
    parser.add_argument("--sb3-threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    {"memory": part_memory, "pomdp": part_pomdp, "sb3": part_sb3, "report": part_report}[args.part](
        args
    )


if __name__ == "__main__":
    main()
