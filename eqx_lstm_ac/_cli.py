"""The command line: `eqx-lstm-ac train ...` and `eqx-lstm-ac evaluate CHECKPOINT`.

It only parses arguments, builds a [`eqx_lstm_ac.RunConfig`][] and calls the library:
[`eqx_lstm_ac.fit`][] trains and keeps the run directory (see `eqx_lstm_ac._run` for its
layout). The options of `train` are generated from the config dataclasses, so every
setting, its default and its help text come from one place.
"""

import argparse
import dataclasses
import sys
import typing
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import jax
import jax.numpy as jnp
import numpy as np

from ._checkpoint import load
from ._cli_values import BY_TYPE, indices, Parser, positive_int, seed, seed_list, SPECIAL
from ._config import flag_of, RunConfig, settable_fields, with_settings
from ._envs import make_env
from ._registry import MODELS
from ._rollout import evaluate_policy
from ._run import DivergenceError, fit, FitResult, resume
from ._run_dir import memory_task, RunDir
from ._train_state import read_checkpoint_config
from ._version import __version__


PROG = "eqx-lstm-ac"


class CLIError(Exception):
    """An error to report in one line, without a traceback."""


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in text).strip("-")


def _add_setting(group, path: str, field: dataclasses.Field) -> None:
    """One `train` option for a config field: flag, parser, choices and help from the
    field; the default shown is the dataclass's."""
    kwargs: dict[str, Any] = {"default": None, "dest": path}
    default = field.default
    shown = "none" if default is None else default
    if isinstance(default, tuple):
        shown = ",".join(map(str, default)) or "none"
    elif isinstance(default, int) and not isinstance(default, bool) and default >= 10_000:
        shown = f"{default:_}"
    if field.type is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif typing.get_origin(field.type) is typing.Literal:
        kwargs["choices"] = typing.get_args(field.type)
    elif path == "model.model":
        kwargs["choices"] = tuple(MODELS)
    else:
        kwargs["type"] = SPECIAL.get(path) or BY_TYPE[field.type]
    text = field.metadata["help"]
    if "(default" not in text:
        text = f"{text} (default {shown})"
    group.add_argument(f"--{flag_of(field)}", help=text, **kwargs)


def _parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog=PROG,
        description="Train and evaluate recurrent actor-critics with PPO.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    tr = sub.add_parser(
        "train",
        help="train with PPO (default: the built-in memory task)",
        description=(
            "Train with recurrent PPO. Defaults train an LSTM on the built-in memory task "
            "(a cue shown once, acted on 16 steps later) in a few minutes on a CPU."
        ),
    )
    titles = {"": "what to train", "model": "the model", "ppo": "budget and PPO settings"}
    groups = {section: tr.add_argument_group(title) for section, title in titles.items()}
    for path, field in settable_fields():
        section = path.rpartition(".")[0]
        _add_setting(groups[section], path, field)
    g = groups[""]
    g.add_argument(
        "--seeds",
        type=seed_list,
        default=None,
        help="train one run per seed, e.g. 0,1,2,3, all in one compiled program: a "
        "directory per seed and a plot of their mean (instead of --seed)",
    )
    g.add_argument(
        "--devices",
        type=int,
        default=None,
        help="local devices to split the environments over (default: all); "
        "the number of environments must divide by it",
    )
    g = tr.add_argument_group("output")
    g.add_argument(
        "--out", default=None, help="run directory (default runs/<task>-<model>-s<seed>)"
    )
    g.add_argument(
        "--resume",
        nargs="?",
        const="",
        default=None,
        metavar="PATH",
        help=(
            "continue from the latest checkpoint of --out, or of the run directory or "
            "checkpoint directory PATH"
        ),
    )
    g.add_argument("--no-plot", action="store_true", help="skip the learning-curve PNG")
    g.add_argument(
        "--tensorboard",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=(
            "write TensorBoard events to tensorboard/ of the run directory (default: when "
            "the tensorboard extra is installed)"
        ),
    )
    g.add_argument("--quiet", action="store_true", help="no progress bar")

    ev = sub.add_parser(
        "evaluate",
        help="run deterministic episodes with a saved model and report the return",
        description="Run deterministic episodes with a saved model and report the mean return.",
    )
    ev.add_argument(
        "checkpoint",
        help="a model file (model.eqx), a checkpoint directory or a run directory",
    )
    ev.add_argument("--env", default=None, help="the task (default: the one in the run's run.json)")
    ev.add_argument(
        "--hide", type=indices, default=None, help="observation indices to hide (with --env)"
    )
    ev.add_argument("--episodes", type=positive_int, default=100, help="episodes (default 100)")
    ev.add_argument("--seed", type=seed, default=0, help="random seed (default 0)")
    ev.add_argument(
        "--stochastic", action="store_true", help="sample actions instead of acting greedily"
    )
    ev.add_argument("--max-steps", type=positive_int, default=10_000, help="episode cap")
    return parser


# ---------------------------------------------------------------------- train


def _given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given on the command line, `{path: value}`."""
    return {
        path: getattr(args, path)
        for path, _ in settable_fields()
        if getattr(args, path) is not None
    }


def _progress(total: int, initial: int, quiet: bool):
    if quiet:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(
        total=total,
        initial=initial,
        unit="step",
        unit_scale=True,
        dynamic_ncols=True,
        mininterval=0.5,
        file=sys.stderr,
    )


def _default_out(config: RunConfig, seeds: Sequence[int] | None) -> Path:
    """A fresh directory under `runs/`, never one that holds anything."""
    who = f"s{config.seed}" if seeds is None else "seeds" + "-".join(map(str, seeds))
    stem = Path("runs") / _slug(f"{config.env}-{config.model.model}-{who}")
    path, n = stem, 1
    while path.exists():
        n += 1
        path = stem.with_name(f"{stem.name}-{n}")
    return path


def _warn(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr, flush=True)


def cmd_train(args: argparse.Namespace) -> int:
    given = _given_settings(args)
    if args.seeds is not None and "seed" in given:
        raise CLIError("Give --seed or --seeds, not both.")
    if args.seeds is not None and args.devices is not None:
        raise CLIError("--seeds trains on one device; leave --devices out.")
    if args.devices is not None and not 1 <= args.devices <= jax.local_device_count():
        raise CLIError(
            f"--devices must be between 1 and the {jax.local_device_count()} local "
            f"device(s); got {args.devices}."
        )
    if args.resume is not None:
        if args.resume == "" and args.out is None:
            raise CLIError("--resume without a PATH needs --out (the run directory to resume).")
        if args.seeds is not None:
            raise CLIError("--seeds starts a group; --resume continues one without it.")
        target = Path(args.resume or args.out)
        if args.out is not None and args.resume:
            run_path = target.parent.parent if (target / "trainer.json").is_file() else target
            if Path(args.out).resolve() != run_path.resolve():
                raise CLIError(
                    f"--out {args.out} differs from the run directory {run_path} of the "
                    "checkpoint; leave --out out when resuming."
                )
        config, out = None, target
    else:
        config = with_settings(RunConfig(), given)
        out = Path(args.out) if args.out is not None else _default_out(config, args.seeds)
    state: dict[str, Any] = {"bar": None, "last": float("nan")}

    def on_start(start: int, num_updates: int) -> None:
        c = state["config"]
        per_update = c.ppo.steps_per_update
        who = "" if args.seeds is None else f", seeds {','.join(map(str, args.seeds))} at once"
        print(
            f"{PROG}: training {c.env} with {c.model.model}{who} for "
            f"{num_updates * per_update:_} steps ({num_updates} updates of "
            f"{c.ppo.num_envs} envs x {c.ppo.num_steps} steps)"
            + (f", resuming at update {start}" if start else "")
            + "; compiling...",
            file=sys.stderr,
            flush=True,
        )
        state["bar"] = _progress(num_updates * per_update, start * per_update, args.quiet)
        state["updates"], state["per_update"] = num_updates, per_update

    def on_update(row: dict[str, Any]) -> None:
        if row["mean_return"] is not None:
            state["last"] = row["mean_return"]
        bar = state["bar"]
        if bar is not None:
            bar.update(state["per_update"])
            bar.set_postfix_str(
                f"return {state['last']:.3f}, update {row['update']}/{state['updates']}"
            )

    kwargs: dict[str, Any] = dict(
        on_start=on_start, on_update=on_update, plot=not args.no_plot, tensorboard=args.tensorboard
    )
    if args.devices is not None:
        kwargs["devices"] = args.devices
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", RuntimeWarning)
            warnings.showwarning = _warn
            if config is None:
                state["config"] = _peek_config(out)
                result = resume(out, settings=given, **kwargs)
            else:
                state["config"] = config
                result = fit(config, out, seeds=args.seeds, **kwargs)
    except DivergenceError as e:
        raise CLIError(str(e)) from None
    finally:
        if state["bar"] is not None:
            state["bar"].close()
    results = result if isinstance(result, list) else [result]
    if len(results) == 1 and not (Path(out) / "seeds.json").is_file():
        print(_summary(results[0], args.no_plot))
    else:
        print(_group_summary(results, Path(out), args.no_plot))
    return 130 if results[0].interrupted else 0


def _peek_config(path: Path) -> RunConfig:
    """The settings of the run (or group) at `path`, for the progress line."""
    if not path.exists():
        raise ValueError(f"Cannot resume: {path} does not exist.")
    if (path / "trainer.json").is_file():
        return read_checkpoint_config(path)
    run = RunDir(path)
    if run.is_group():
        return run.read_group()[0]
    if run.settings_file.is_file():
        return run.read_config()
    raise ValueError(f"Cannot resume: {path} holds no run (run.json or seeds.json).")


def _evaluate(result: FitResult) -> float:
    returns = evaluate_policy(
        result.model, result.env, key=jax.random.key(result.config.seed + 1), num_episodes=100
    )
    return float(jnp.mean(returns))


def _group_summary(results: list[FitResult], path: Path, no_plot: bool) -> str:
    first = results[0]
    what = f"{first.env.name} with {first.config.model.model}"
    steps = len([r for r in first.rows if r["update"] > first.start_update])
    steps *= first.config.ppo.steps_per_update
    lines = [
        f"{'interrupted' if first.interrupted else 'trained'} {what}, {len(results)} seeds "
        f"at once: {steps:_} steps each in {first.seconds:.1f} s"
    ]
    if not first.interrupted:
        scores = [_evaluate(r) for r in results]
        mean = float(np.mean(scores))
        each = ", ".join(
            f"seed {r.config.seed} {v:.3f}" for r, v in zip(results, scores, strict=True)
        )
        lines.append(f"deterministic evaluation (100 episodes per seed): mean {mean:.3f}; {each}")
    lines.append(f"group directory: {path}  (resume: {PROG} train --resume {path})")
    for r in results:
        lines.append(f"  seed {r.config.seed}: {r.run_dir.path}  (model {r.run_dir.model_file})")
    plot = RunDir(path).plot_file
    if not no_plot and plot.is_file():
        lines.append(f"  plot         {plot}")
    if any((r.run_dir.path / "tensorboard").is_dir() for r in results):
        lines.append(f"  tensorboard  one log per seed  (tensorboard --logdir {path})")
    return "\n".join(lines)


def _summary(result: FitResult, no_plot: bool) -> str:
    """What the run did and where it wrote it; a deterministic evaluation of the
    final model unless interrupted."""
    config, env, run = result.config, result.env, result.run_dir
    per_update = config.ppo.steps_per_update
    what = f"{env.name} with {config.model.model}"
    new_rows = [r for r in result.rows if r["update"] > result.start_update]
    trained = len(new_rows) * per_update
    if len(new_rows) > 1:  # the first update of a process includes compilation
        steady = (len(new_rows) - 1) * per_update
        rate = f"{steady / max(new_rows[-1]['wall_time'] - new_rows[0]['wall_time'], 1e-9):,.0f}"
        speed = (
            f"{rate} steps/s after the first update, which took {new_rows[0]['wall_time']:.1f} s"
        )
    else:
        speed = "one update, including compilation"
    returns = [r["mean_return"] for r in new_rows if r["mean_return"] is not None]
    last = returns[-1] if returns else float("nan")
    lines = [
        f"{'interrupted' if result.interrupted else 'trained'} {what}: {trained:_} steps in "
        f"{result.seconds:.1f} s ({speed})",
        f"last mean training return {last:.3f}",
    ]
    base = memory_task(env)
    if base is not None:
        lines[-1] += f" (optimum {base.optimum_return}, best feed-forward {base.chance_return})"
    if not result.interrupted:
        score = _evaluate(result)
        lines.append(f"deterministic evaluation: mean return {score:.3f} over 100 episodes")
    lines.append(f"run directory: {run.path}")
    lines.append(f"  settings     {run.settings_file}")
    lines.append(f"  metrics      {run.metrics_file} and metrics.csv")
    if result.last_checkpoint is not None:
        lines.append(
            f"  checkpoint   {result.last_checkpoint}  (resume: {PROG} train --resume {run.path})"
        )
        lines.append(f"  model        {run.model_file}  ({PROG} evaluate {run.model_file})")
    if not no_plot:
        if run.plot_file.is_file():
            lines.append(f"  plot         {run.plot_file}")
        else:
            lines.append("  plot         skipped: matplotlib is not installed")
    events = run.path / "tensorboard"
    if events.is_dir():
        lines.append(f"  tensorboard  {events}  (tensorboard --logdir {run.path})")
    return "\n".join(lines)


# ---------------------------------------------------------------------- evaluate


def _locate_model(arg: str) -> tuple[Path, Path | None]:
    """`(model_file, run_json_or_None)` for the argument of `evaluate`."""
    path = Path(arg)
    if not path.exists():
        raise CLIError(f"{path} does not exist.")
    if path.is_dir():
        if (path / "trainer.json").is_file():  # a checkpoint directory
            model_file, run_dir = path / "model.eqx", path.parent.parent
        else:
            model_file, run_dir = path / "model.eqx", path
        if not model_file.is_file():
            raise CLIError(f"{path} holds no model.eqx.")
    else:
        model_file = path
        run_dir = path.parent
        if (run_dir / "trainer.json").is_file():
            run_dir = run_dir.parent.parent
    run_json = run_dir / "run.json"
    return model_file, run_json if run_json.is_file() else None


def cmd_evaluate(args: argparse.Namespace) -> int:
    model_file, run_json = _locate_model(args.checkpoint)
    if args.env is not None:
        env = make_env(args.env, args.hide or ())
    elif run_json is not None:
        config = RunDir(run_json.parent).read_config()
        env = make_env(config.env, args.hide if args.hide is not None else config.hide)
    else:
        raise CLIError(f"No run.json beside {model_file}; name the task with --env.")
    model = load(model_file)
    if (
        model.obs_dim != env.observation_size
        or model.action_dim != env.action_size
        or model.discrete != env.discrete
    ):
        kind = "discrete" if model.discrete else "continuous"
        raise CLIError(
            f"The checkpoint does not match the task: the model takes {model.obs_dim} "
            f"observations and {model.action_dim} {kind} actions; {env.name} has "
            f"{env.observation_size} observations and {env.action_size} "
            f"{'discrete' if env.discrete else 'continuous'} actions."
        )
    returns = evaluate_policy(
        model,
        env,
        key=jax.random.key(args.seed),
        num_episodes=args.episodes,
        deterministic=not args.stochastic,
        max_steps=args.max_steps,
    )
    returns = np.asarray(returns)
    mode = "stochastic" if args.stochastic else "deterministic"
    msg = (
        f"{env.name}: mean return {returns.mean():.3f} +- {returns.std():.3f} "
        f"(min {returns.min():.3f}, max {returns.max():.3f}) over {len(returns)} {mode} episodes"
    )
    base_env = memory_task(env)
    if base_env is not None:
        msg += f"; optimum {base_env.optimum_return}, best feed-forward {base_env.chance_return}"
    print(msg)
    return 0


# ---------------------------------------------------------------------- reference


def reference_markdown() -> str:
    """Every subcommand and option of the parser as Markdown tables (option, default,
    what it does): the command-line reference of the docs, written from the parser
    itself so that it cannot drift from it."""
    parser = _parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    out = []
    for name, command in sub.choices.items():
        out += [f"### `{PROG} {name}`", "", command.description or "", ""]
        for group in command._action_groups:
            actions = [a for a in group._group_actions if not isinstance(a, argparse._HelpAction)]
            if not actions:
                continue
            title = group.title or ""
            if title in ("options", "optional arguments"):
                title = "arguments"
            out += [f"**{title[:1].upper()}{title[1:]}**", "", "| option | what it does |"]
            out += ["|---|---|"]
            for a in actions:
                if a.option_strings:
                    flags = ", ".join(
                        f"`{f}`"
                        if a.nargs == 0 or isinstance(a, argparse.BooleanOptionalAction)
                        else f"`{f} {(a.metavar or a.dest.rpartition('.')[2]).upper()}`"
                        for f in a.option_strings
                    )
                else:
                    flags = f"`{a.metavar or a.dest}`"
                text = (a.help or "").replace("|", "\\|")
                out.append(f"| {flags} | {text} |")
            out.append("")
    return "\n".join(out)


# ---------------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> int:
    """The `eqx-lstm-ac` command. Returns the exit status.

    **Arguments:**

    - `argv`: the arguments (without the program name); `sys.argv[1:]` if `None`.
    """
    args = _parser().parse_args(argv)
    try:
        if args.command == "train":
            return cmd_train(args)
        return cmd_evaluate(args)
    except (CLIError, ValueError, ImportError) as e:
        print(f"{PROG} {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"{PROG} {args.command}: error: {e.strerror or e} ({e.filename})", file=sys.stderr)
        return 2


def cli(argv: Sequence[str] | None = None) -> NoReturn:
    """Run the command line on `argv` (`sys.argv[1:]` if `None`) and exit with its
    status, as `eqx-lstm-ac` does. End a script that registers environments of your own
    ([`eqx_lstm_ac.register_env`][]) with it, and the script is the command line for
    them: `python my_script.py train --env NAME`."""
    sys.exit(main(argv))


def entry_point() -> NoReturn:
    """The console script."""
    cli()
