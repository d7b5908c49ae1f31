"""The learning benchmark page (`docs/examples/learning.md`) and its figure, written from
`benchmarks/results/learning.json` by `python -m benchmarks.learning report`."""

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.learning import ci95, t975, TASKS


SMOOTH_STEPS = 16_384
"""The window of `steps_to_goal`, in environment steps."""


def _digits(x: float) -> int:
    return 2 if abs(x) < 10 else 0


def _fmt(x: float, digits: int | None = None) -> str:
    return f"{x:.{_digits(x) if digits is None else digits}f}"


def _cell(values: list[float]) -> str:
    """Mean ± 95% half-width (worst seed), all to the mean's precision."""
    mean, half = ci95(values)
    d = _digits(mean)
    return f"{_fmt(mean, d)} ± {_fmt(half, d)} (worst {_fmt(min(values), d)})"


def _window(run: dict[str, Any]) -> int:
    """`SMOOTH_STEPS` in updates of `run`, at least one."""
    return max(1, round(SMOOTH_STEPS / (run["env_steps"] / len(run["curves"][0]))))


def _trailing_mean(x: np.ndarray, window: int) -> np.ndarray:
    """Element `i` is the mean of the finite values of `x[i - window + 1 : i + 1]`, for
    plotting (NaN where there are none)."""
    padded = np.concatenate([np.full(window - 1, np.nan), x])
    with warnings.catch_warnings():  # windows before any seed finished an episode
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(np.lib.stride_tricks.sliding_window_view(padded, window), axis=-1)


def steps_to_goal(run: dict[str, Any], goal: float | None) -> int | None:
    """Environment steps until the seeds' mean training return, averaged over the last
    `SMOOTH_STEPS` environment steps, first reaches `goal` (None if it never does).

    The window is a number of environment steps, not of updates, so that settings with
    small updates are not judged over a shorter stretch of experience than large ones."""
    if goal is None:
        return None
    mean, _ = _curve_band(run["curves"])
    window = _window(run)
    # a window that holds an update before any seed finished an episode (NaN) is no hit
    smooth = np.lib.stride_tricks.sliding_window_view(mean, window).mean(axis=-1)
    hits = np.flatnonzero(smooth >= goal)
    if len(hits) == 0:
        return None
    return int((hits[0] + window) * run["env_steps"] / len(mean))


def final_returns(run: dict[str, Any]) -> list[float]:
    """Each seed's mean training return over its last `SMOOTH_STEPS` environment steps."""
    window = _window(run)
    return [float(np.mean([r for r in c[-window:] if r is not None])) for c in run["curves"]]


def _batch_sentence(defaults: dict[str, Any], peer: dict[str, Any]) -> str:
    """How the defaults' update compares with PureJaxRL's, from the recorded settings."""
    ours = defaults["num_envs"] * defaults["num_steps"]
    theirs = peer["num_envs"] * peer["num_steps"]
    return (
        f"The defaults collect {ours / theirs:g} times as many steps per update "
        f"({defaults['num_envs']} environments of {defaults['num_steps']} steps against "
        f"{peer['num_envs']} of {peer['num_steps']}) and step more environments at once."
    )


def _seconds_to(run: dict[str, Any], goal: float) -> str:
    """Wall-clock until `steps_to_goal`, compilation included (the first update's
    time, then the run's mean time per update)."""
    steps = steps_to_goal(run, goal)
    if steps is None:
        return "not reached"
    updates = steps / (run["env_steps"] / len(run["curves"][0]))
    first = run["first_update_s"]
    per_update = (run["wall_s"] - first) / max(len(run["curves"][0]) - 1, 1)
    return f"{first + (updates - 1) * per_update:.0f} s"


def _steps(n: int | None) -> str:
    return "not reached" if n is None else f"{n / 1e3:,.0f} k"


def _command(task: dict[str, Any]) -> str:
    hide = f" --hide {','.join(map(str, task['hide']))}" if task["hide"] else ""
    env = "" if task["env"] == "memory" else f" --env {task['env']}"
    return f"eqx-lstm-ac train{env}{hide}"


def _curve_band(curves: list[list[float | None]]) -> tuple[np.ndarray, np.ndarray]:
    arr = np.array([[np.nan if r is None else r for r in c] for c in curves], np.float64)
    # carry the last reported return forward over updates that finished no episode
    for row in arr:
        for i in range(1, len(row)):
            if np.isnan(row[i]):
                row[i] = row[i - 1]
    with warnings.catch_warnings():  # updates before any seed finished an episode
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(arr, axis=0)
        spread = np.nanstd(arr, axis=0, ddof=1) if len(arr) > 1 else np.zeros_like(mean)
    half = t975(len(arr)) * spread / math.sqrt(len(arr))
    return mean, np.asarray(half)


def _figure(ours: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in TASKS if f"{t.name}/lstm" in ours["runs"]]
    cols = 4
    rows = math.ceil(len(tasks) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.6 * rows), squeeze=False)
    for ax, task in zip(axes.flat, tasks, strict=False):
        for kind, color in (("lstm", "tab:blue"), ("mlp", "tab:orange")):
            run = ours["runs"].get(f"{task.name}/{kind}")
            if run is None:
                continue
            mean, half = (_trailing_mean(a, _window(run)) for a in _curve_band(run["curves"]))
            steps = np.arange(1, len(mean) + 1) * run["env_steps"] / len(mean)
            ax.plot(steps / 1e6, mean, color=color, label=kind.upper())
            ax.fill_between(steps / 1e6, mean - half, mean + half, color=color, alpha=0.25)
        if task.goal is not None:
            ax.axhline(task.goal, color="grey", lw=0.8, ls="--")
        ax.set_title(task.about, fontsize=9)
        ax.set_xlabel("env steps (M)", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(tasks) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(
        f"Training return over the last {SMOOTH_STEPS / 1e3:.0f} k steps, mean and 95% band "
        "over seeds (dashed: goal)",
        fontsize=10,
    )
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def write_report(data: dict[str, Any], page: Path, figure: Path) -> None:
    ours = data["ours"]
    seeds = len(next(iter(ours["runs"].values()))["seeds"])
    steps = next(iter(ours["runs"].values()))["env_steps"]
    lines = [
        "# What the defaults learn",
        "",
        "Every row below is the plain command, with no setting changed: "
        f"`eqx-lstm-ac train --env NAME [--hide ...]` for {steps / 1e6:.0f} M environment "
        f"steps, with {seeds} seeds, for the LSTM and for the feed-forward baseline "
        "(`--model mlp`). The score is the deterministic evaluation return of each seed's "
        "final model over 100 episodes: the mean over seeds, a 95% confidence interval "
        "(Student's t) and the worst seed.",
        "",
        "![Training curves, LSTM against MLP, on every task](../images/learning_benchmark.png)",
        "",
        "| task | command | goal | LSTM | MLP | LSTM steps to goal | time, all seeds |",
        "|---|---|---|---|---|---|---|",
    ]
    for task in TASKS:
        lstm, mlp = ours["runs"].get(f"{task.name}/lstm"), ours["runs"].get(f"{task.name}/mlp")
        if lstm is None or mlp is None:
            continue
        goal = "MLP's return" if task.goal is None else f"≥ {_fmt(task.goal)}"
        lines.append(
            f"| {task.about} | `{_command(lstm['task'])}` | {goal} | "
            f"{_cell(lstm['eval_returns'])} | {_cell(mlp['eval_returns'])} | "
            f"{'—' if task.learned is None else _steps(steps_to_goal(lstm, task.learned))} | "
            f"{lstm['wall_s']:.0f} s / {mlp['wall_s']:.0f} s |"
        )
    lines += [
        "",
        f"Times are wall-clock on a 2-core CPU, compilation included, for all {seeds} seeds "
        "trained together in one compiled program (LSTM / MLP). *Steps to goal* counts "
        "the environment steps until the seeds' mean training return (stochastic policy, "
        f"averaged over the last {SMOOTH_STEPS / 1e3:.0f} k environment steps) first "
        "reaches the goal (0.9 on the two memory tasks, "
        "whose goal is the largest return). The defaults are those of "
        "`eqx-lstm-ac train --help`; observations and rewards are normalised by running "
        "statistics, which is what lets one set of settings serve tasks whose rewards "
        "range from 1 to hundreds per episode.",
        "",
    ]
    if "purejaxrl" in data:
        p = data["purejaxrl"]
        last = ", ".join(f"{r:.0f}" for r in final_returns(p))
        flags = (
            "--env gymnax:CartPole-v1 --num-envs 4 --num-steps 128 \\\n"
            "    --epochs 4 --minibatches 4 --lr 2.5e-4 --ent-coef 0.01 \\\n"
            "    --hidden 128 --features 128 --activation relu --total-steps 5e5"
        )
        lines += [
            "## PureJaxRL's configuration",
            "",
            "PureJaxRL's recurrent PPO (`purejaxrl/ppo_rnn.py`: a GRU with 128-unit layers) "
            "trains fully observed CartPole-v1 with 4 environments of 128 steps, 4 epochs "
            "of 4 minibatches, Adam at 2.5e-4 annealed, entropy 0.01, for 5e5 steps, and "
            "reaches a training return of 500. The same settings here:",
            "",
            f"```bash\neqx-lstm-ac train {flags}\n```",
            "",
            f"| settings | training return, last {SMOOTH_STEPS / 1e3:.0f} k steps, per seed "
            "| evaluation "
            "| steps to 475 | steps/s, all seeds together | seconds to 475 |",
            "|---|---|---|---|---|---|",
            f"| PureJaxRL's | {last} | {_cell(p['eval_returns'])} | "
            f"{_steps(steps_to_goal(p, 475.0))} | {p['steps_per_s_all_seeds']:,.0f} | "
            f"{_seconds_to(p, 475.0)} |",
        ]
        if "defaults" in p:
            d = p["defaults"]
            plain = ", ".join(f"{r:.0f}" for r in final_returns(d))
            lines.append(
                f"| the defaults (`eqx-lstm-ac train --env gymnax:CartPole-v1 "
                f"--total-steps 5e5`) | {plain} | {_cell(d['eval_returns'])} | "
                f"{_steps(steps_to_goal(d, 475.0))} | {d['steps_per_s_all_seeds']:,.0f} | "
                f"{_seconds_to(d, 475.0)} |"
            )
        lines += [
            "",
            f"{len(p['seeds'])} seeds each; *steps to 475* as above, on the seeds' mean "
            "training return; *seconds to 475* is the wall-clock of the program that "
            "trains all seeds together until then, compilation included. "
            f"{_batch_sentence(ours['config']['ppo'], p['config'])} PureJaxRL itself is not "
            "on the package registry, so its own speed is not measured here.",
            "",
        ]
    if "sb3" in data:
        s = data["sb3"]
        lines += [
            "## Beside sb3-contrib's RecurrentPPO",
            "",
            "sb3-contrib `RecurrentPPO` with RL Zoo's published `ppo_lstm` settings for "
            "CartPoleNoVel-v1 and PendulumNoVel-v1 (observation normalisation, and gSDE "
            "for Pendulum), on gymnasium's CartPole-v1 and Pendulum-v1 with the same "
            "observations hidden, PyTorch on the same CPU, each run capped at "
            f"{s['seconds_cap'] / 60:.0f} minutes; evaluated deterministically. RL Zoo's "
            "budget for both is 1e5 steps. sb3-contrib runs one seed at a time on one "
            "PyTorch thread; our time per seed is the time of the program that trains all "
            "seeds together, divided by their number.",
            "",
            "| task | sb3-contrib: steps, time per seed | sb3-contrib evaluation "
            "| ours: steps, time per seed | ours (LSTM) evaluation | steps/s per seed, "
            "ours / sb3-contrib |",
            "|---|---|---|---|---|---|",
        ]
        for name, task in s["tasks"].items():
            runs = task["runs"]
            mine = ours["runs"].get(f"{name}/lstm")
            if mine is None:
                continue
            per_seed = mine["wall_s"] / len(mine["seeds"])
            theirs = np.mean([r["env_steps"] / r["wall_s"] for r in runs])
            lines.append(
                f"| {name} | {np.mean([r['env_steps'] for r in runs]):,.0f}, "
                f"{np.mean([r['wall_s'] for r in runs]):.0f} s | "
                f"{_cell([r['eval_return'] for r in runs])} ({len(runs)} seeds) | "
                f"{mine['env_steps']:,}, {per_seed:.0f} s | {_cell(mine['eval_returns'])} | "
                f"{mine['env_steps'] / per_seed / theirs:.0f}x |"
            )
        lines.append("")
    if "seedcost" in data:
        c = data["seedcost"]
        lines += [
            "## Many seeds at once",
            "",
            f"`--seeds 0,1,...` trains the runs in one compiled program (`jax.vmap` over the "
            f"whole training). {c['seeds']} seeds of {c['env_steps_per_seed'] / 1e6:.1f} M "
            f"steps on {c['task']}: {c['one_program_s']:.0f} s in one program, "
            f"{c['separate_s']:.0f} s one after another "
            f"({c['separate_s'] / c['one_program_s']:.1f}x), on 2 CPU cores.",
            "",
        ]
    lines += [
        "## Reproduce",
        "",
        "```bash",
        "EXTRAS=gymnax,bench-train bash scripts/setup.sh",
        ".venv/bin/python -m benchmarks.learning ours seedcost purejaxrl sb3 report",
        "```",
        "",
        "The figures are in `benchmarks/results/learning.json`.",
        "",
    ]
    tmp = page.with_suffix(".tmp")
    tmp.write_text("\n".join(lines))
    tmp.replace(page)
    _figure(ours, figure)
