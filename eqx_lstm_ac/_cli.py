"""The command line: `eqx-lstm-ac train ...` and `eqx-lstm-ac evaluate CHECKPOINT`.

A run directory (`--out`) holds:

```
run.json                        what was trained: task, model, seed, PPO settings
metrics.jsonl, metrics.csv      one row per update
checkpoints/update_NNNNNN/      model.eqx (eqx_lstm_ac.save), trainer.eqx, trainer.json
model.eqx                       the latest model, for `eqx-lstm-ac evaluate`
learning_curve.png              the mean return against environment steps
```

Every file is written to a temporary name and renamed into place; a checkpoint directory
appears whole or not at all. Nothing here uses pickle: models go through
`eqx_lstm_ac.save`, the trainer's arrays through `eqx.tree_serialise_leaves` with
`allow_pickle=False`, everything else is JSON.
"""

import argparse
import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._checkpoint import load, save
from ._envs import Environment, HideObservation, make_env, MemoryTask
from ._ppo import (
    ActorCritic,
    evaluate_policy,
    make_model,
    PPO,
    PPOConfig,
    shard_train_state,
    TrainState,
)
from ._version import __version__


PROG = "eqx-lstm-ac"
RUN_FORMAT = 1
KEEP_CHECKPOINTS = 3

# Defaults of `train`: the memory task, sized to train on a 2-core CPU in a few minutes.
DEFAULT_TASK = "memory"
DEFAULTS: dict[str, Any] = dict(
    env=DEFAULT_TASK,
    hide="",
    model="lstm",
    seed=0,
    hidden=32,
    features=32,
    activation="gelu",
    total_steps=2_000_000,
    num_envs=64,
    num_steps=128,
    epochs=4,
    minibatches=4,
    bptt=None,
    lr=1e-3,
    lr_schedule="linear",
    ent_coef=0.0,
    gamma=0.99,
    gae_lambda=0.95,
    reward_scale=1.0,
    clip_eps=0.2,
    max_grad_norm=0.5,
)
# The settings that define what a run trains; resuming with other values is an error.
IDENTITY = ("env", "hide", "model", "seed", "hidden", "features", "activation")


class CLIError(Exception):
    """An error to report in one line, without a traceback."""


# ---------------------------------------------------------------------- small file helpers


def _atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_json(path: Path, data: Any) -> None:
    _atomic_write(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CLIError(f"{path} does not exist.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CLIError(f"{path} is not readable JSON ({e}).") from None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _serialise_leaf(f: io.BufferedIOBase, x: Any) -> None:
    if _is_key(x):
        np.save(f, np.asarray(jax.random.key_data(x)), allow_pickle=False)
    elif eqx.is_array(x):
        np.save(f, np.asarray(x), allow_pickle=False)


def _deserialise_leaf(f: io.BufferedIOBase, x: Any) -> Any:
    if not (_is_key(x) or eqx.is_array(x)):
        return x
    arr = np.load(f, allow_pickle=False)
    like = np.asarray(jax.random.key_data(x)) if _is_key(x) else np.asarray(x)
    if arr.shape != like.shape or arr.dtype != like.dtype:
        raise CLIError(
            f"the trainer state does not match this run (an array of shape {arr.shape} "
            f"and dtype {arr.dtype} where {like.shape} {like.dtype} was expected)."
        )
    if _is_key(x):
        return jax.random.wrap_key_data(jnp.asarray(arr), impl=jax.random.key_impl(x))
    return jnp.asarray(arr)


def _trainer_part(ts: TrainState) -> tuple:
    """What a checkpoint holds besides the model."""
    return (
        ts.opt_state,
        ts.model_state,
        ts.env_state,
        ts.obs,
        ts.episode_start,
        ts.episode_return,
        ts.key,
        ts.update,
    )


# ---------------------------------------------------------------------- run settings


@dataclasses.dataclass
class RunSpec:
    """What a run trains and how: the command line's settings, as saved in run.json."""

    env: str
    hide: str
    model: str
    seed: int
    hidden: int
    features: int
    activation: str
    ppo: PPOConfig
    checkpoint_every: int

    def to_json(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in IDENTITY}
        out["ppo"] = self.ppo.to_dict()
        out["checkpoint_every"] = self.checkpoint_every
        out["format"] = RUN_FORMAT
        out["library_version"] = __version__
        return out

    @classmethod
    def from_json(cls, data: Any, path: Path) -> "RunSpec":
        if not isinstance(data, dict) or data.get("format") != RUN_FORMAT:
            raise CLIError(f"{path} is not a run description this version can read.")
        try:
            return cls(
                **{name: data[name] for name in IDENTITY},
                ppo=PPOConfig.from_dict(data["ppo"]),
                checkpoint_every=int(data["checkpoint_every"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise CLIError(f"{path} is a corrupt run description ({e}).") from None

    def make_env(self) -> Environment:
        return _make_env(self.env, self.hide)


def _parse_hide(text: str) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise CLIError(f"--hide takes comma-separated indices like 1,3; got {text!r}.") from None


def _make_env(spec: str, hide: str) -> Environment:
    try:
        return make_env(spec, _parse_hide(hide))
    except (ValueError, ImportError) as e:
        raise CLIError(str(e)) from None


def _memory_task(env: Environment) -> MemoryTask | None:
    """The memory task inside `env`, if that is what it is (for its optimum and chance)."""
    while isinstance(env, HideObservation):
        env = env.env
    return env if isinstance(env, MemoryTask) else None


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in text).strip("-")


# ---------------------------------------------------------------------- the argument parser


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _budget(text: str) -> int:
    try:
        value = int(float(text.replace("_", "")))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of steps, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"the budget must not be negative, got {value}")
    return value


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Train and evaluate recurrent actor-critics with PPO.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    tr = sub.add_parser(
        "train",
        help="train with PPO (default: the built-in memory task)",
        description=(
            "Train with recurrent PPO. Defaults train an LSTM on the built-in memory task "
            "(a cue shown once, acted on 16 steps later) in a few minutes on a CPU."
        ),
    )
    d = DEFAULTS
    g = tr.add_argument_group("what to train")
    g.add_argument(
        "--env",
        default=None,
        help=(
            f"task: 'memory', 'memory:delay=N,cue_size=N' or 'gymnax:NAME' "
            f"(e.g. gymnax:CartPole-v1) (default {d['env']})"
        ),
    )
    g.add_argument(
        "--hide",
        default=None,
        help="comma-separated observation indices to hide, e.g. 1,3 (CartPole velocities)",
    )
    g.add_argument(
        "--model",
        choices=("lstm", "mlp"),
        default=None,
        help="lstm, or the feed-forward baseline mlp (default lstm)",
    )
    g.add_argument(
        "--devices",
        type=int,
        default=None,
        help="local devices to split the environments over (default: all); "
        "the number of environments must divide by it",
    )
    g.add_argument("--seed", type=int, default=None, help=f"random seed (default {d['seed']})")
    g.add_argument(
        "--hidden",
        type=_positive_int,
        default=None,
        help=f"encoder width (default {d['hidden']})",
    )
    g.add_argument(
        "--features",
        type=_positive_int,
        default=None,
        help=f"LSTM size, or the MLP's second layer (default {d['features']})",
    )
    g.add_argument("--activation", default=None, help="encoder activation (default gelu)")

    g = tr.add_argument_group("budget and PPO settings")
    g.add_argument(
        "--total-steps",
        type=_budget,
        default=None,
        help=f"environment steps to train for (default {d['total_steps']:_})",
    )
    g.add_argument("--num-envs", type=_positive_int, default=None, help="parallel environments")
    g.add_argument("--num-steps", type=_positive_int, default=None, help="rollout length")
    g.add_argument("--epochs", type=_positive_int, default=None, help="PPO epochs per rollout")
    g.add_argument("--minibatches", type=_positive_int, default=None, help="minibatches per epoch")
    g.add_argument(
        "--bptt",
        type=_positive_int,
        default=None,
        help="truncated BPTT length (a divisor of --num-steps; default: the whole rollout)",
    )
    g.add_argument("--lr", type=_float, default=None, help=f"learning rate (default {d['lr']})")
    g.add_argument(
        "--lr-schedule", choices=("linear", "cosine", "constant"), default=None, help="schedule"
    )
    g.add_argument("--ent-coef", type=_float, default=None, help="entropy bonus weight")
    g.add_argument("--gamma", type=_float, default=None, help="discount")
    g.add_argument("--gae-lambda", type=_float, default=None, help="GAE lambda")
    g.add_argument(
        "--reward-scale",
        type=_float,
        default=None,
        help="multiply rewards by this for training (e.g. 0.1 for CartPole; default 1)",
    )
    g.add_argument("--clip-eps", type=_float, default=None, help="policy clip range")
    g.add_argument("--max-grad-norm", type=_float, default=None, help="gradient clipping")

    g = tr.add_argument_group("output")
    g.add_argument(
        "--out",
        default=None,
        help="run directory (default runs/<task>-<model>-s<seed>)",
    )
    g.add_argument(
        "--checkpoint-every",
        type=_positive_int,
        default=None,
        help="updates between checkpoints (default: a tenth of the run)",
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
    ev.add_argument("--hide", default=None, help="observation indices to hide (with --env)")
    ev.add_argument("--episodes", type=_positive_int, default=100, help="episodes (default 100)")
    ev.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ev.add_argument(
        "--stochastic", action="store_true", help="sample actions instead of acting greedily"
    )
    ev.add_argument("--max-steps", type=_positive_int, default=10_000, help="episode cap")
    return parser


# ---------------------------------------------------------------------- checkpoints


def _checkpoint_dirs(run_dir: Path) -> list[Path]:
    """The complete checkpoint directories of a run, oldest first."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = [
        p
        for p in root.iterdir()
        if p.is_dir() and p.name.startswith("update_") and (p / "trainer.json").is_file()
    ]
    return sorted(found, key=lambda p: p.name)


def _write_checkpoint(run_dir: Path, ts: TrainState, spec: RunSpec) -> Path:
    """Write a checkpoint directory (through a temporary directory and a rename), point
    `run_dir/model.eqx` at the newest model, and keep the newest few checkpoints."""
    update = int(ts.update)
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"update_{update:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
    try:
        save(tmp / "model.eqx", ts.model)
        buf = io.BytesIO()
        eqx.tree_serialise_leaves(buf, _trainer_part(ts), filter_spec=_serialise_leaf)
        _atomic_write(tmp / "trainer.eqx", buf.getvalue())
        meta = {
            "format": RUN_FORMAT,
            "update": update,
            "env_steps": update * spec.ppo.steps_per_update,
            "run": spec.to_json(),
            "sha256": {name: _sha256(tmp / name) for name in ("model.eqx", "trainer.eqx")},
        }
        _write_json(tmp / "trainer.json", meta)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    save(run_dir / "model.eqx", ts.model)
    for old in _checkpoint_dirs(run_dir)[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _read_checkpoint(ckpt: Path) -> tuple[dict[str, Any], ActorCritic, bytes]:
    meta = _read_json(ckpt / "trainer.json")
    if not isinstance(meta, dict) or meta.get("format") != RUN_FORMAT:
        raise CLIError(f"{ckpt} is not a checkpoint this version can read.")
    for name in ("model.eqx", "trainer.eqx"):
        path = ckpt / name
        if not path.is_file():
            raise CLIError(f"{path} is missing: the checkpoint is incomplete.")
        if _sha256(path) != meta.get("sha256", {}).get(name):
            raise CLIError(f"{path} fails its checksum: the checkpoint is corrupt.")
    try:
        model = load(ckpt / "model.eqx")
    except (ValueError, OSError) as e:
        raise CLIError(str(e)) from None
    return meta, model, (ckpt / "trainer.eqx").read_bytes()


def _find_resume(arg: str, out: str | None) -> tuple[Path, Path]:
    """`(run_dir, checkpoint_dir)` for `--resume [PATH]`."""
    if arg == "":
        if out is None:
            raise CLIError("--resume without a PATH needs --out (the run directory to resume).")
        path = Path(out)
    else:
        path = Path(arg)
    if not path.exists():
        raise CLIError(f"Cannot resume: {path} does not exist.")
    if (path / "trainer.json").is_file():
        return path.parent.parent, path
    if path.is_dir():
        ckpts = _checkpoint_dirs(path)
        if not ckpts:
            raise CLIError(f"Cannot resume: {path} holds no checkpoint (checkpoints/update_*).")
        return path, ckpts[-1]
    raise CLIError(f"Cannot resume from {path}: not a run directory or a checkpoint directory.")


# ---------------------------------------------------------------------- metrics


METRIC_FIELDS: tuple[str, ...] = (
    "update",
    "env_steps",
    "mean_return",
    "episodes",
    "loss",
    "policy_loss",
    "value_loss",
    "entropy",
    "approx_kl",
    "clip_fraction",
    "learning_rate",
    "steps_per_second",
    "wall_time",
)


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        if isinstance(row, dict) and isinstance(row.get("update"), int):
            rows.append(row)
    return rows


class _MetricsWriter:
    """Appends one row per update to metrics.jsonl and metrics.csv."""

    def __init__(self, run_dir: Path, keep: list[dict[str, Any]]):
        self.jsonl = run_dir / "metrics.jsonl"
        self.csv = run_dir / "metrics.csv"
        # Rewrite both files with the rows up to the checkpoint being resumed (or none).
        _atomic_write(self.jsonl, "".join(json.dumps(r) + "\n" for r in keep).encode())
        text = io.StringIO()
        writer = csv.DictWriter(text, METRIC_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(keep)
        _atomic_write(self.csv, text.getvalue().encode())

    def write(self, row: dict[str, Any]) -> None:
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
        with open(self.csv, "a", newline="") as f:
            csv.DictWriter(f, METRIC_FIELDS, extrasaction="ignore").writerow(row)


def _json_float(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _plot(rows: list[dict[str, Any]], path: Path, title: str, env: Environment) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    xs = [r["env_steps"] for r in rows if r.get("mean_return") is not None]
    ys = [r["mean_return"] for r in rows if r.get("mean_return") is not None]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    ax.plot(xs, ys, lw=1.2, label="mean return per update")
    base = _memory_task(env)
    if base is not None:
        ax.axhline(base.optimum_return, color="k", ls="--", lw=0.8, label="optimum")
        ax.axhline(base.chance_return, color="r", ls=":", lw=0.8, label="feed-forward best")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    _atomic_write(path, buf.getvalue())
    return path


# ---------------------------------------------------------------------- train


def _spec_from_args(args: argparse.Namespace, base: dict[str, Any] | None) -> RunSpec:
    """The run's settings: `base` (a resumed run's) or the defaults, overridden by the
    arguments given."""
    values = dict(DEFAULTS)
    ppo_base: dict[str, Any] = {}
    if base is not None:
        values.update({name: base[name] for name in IDENTITY})
        ppo_base = dict(base["ppo"])
    for name in IDENTITY:
        given = getattr(args, name)
        if given is None:
            continue
        if base is not None and given != base[name]:
            raise CLIError(
                f"The checkpoint does not match the task: it was trained with "
                f"--{name} {base[name]!r}, not {given!r}."
            )
        values[name] = given
    ppo_args = {
        "num_envs": ("num_envs", args.num_envs),
        "num_steps": ("num_steps", args.num_steps),
        "total_steps": ("total_steps", args.total_steps),
        "num_epochs": ("epochs", args.epochs),
        "num_minibatches": ("minibatches", args.minibatches),
        "bptt_chunk": ("bptt", args.bptt),
        "learning_rate": ("lr", args.lr),
        "lr_schedule": ("lr_schedule", args.lr_schedule),
        "ent_coef": ("ent_coef", args.ent_coef),
        "gamma": ("gamma", args.gamma),
        "gae_lambda": ("gae_lambda", args.gae_lambda),
        "reward_scale": ("reward_scale", args.reward_scale),
        "clip_eps": ("clip_eps", args.clip_eps),
        "max_grad_norm": ("max_grad_norm", args.max_grad_norm),
    }
    fields: dict[str, Any] = {}
    for field, (name, given) in ppo_args.items():
        if base is not None:
            if given is not None and field not in ("total_steps",) and given != ppo_base[field]:
                raise CLIError(
                    f"--{name.replace('_', '-')} cannot change when resuming (the run used "
                    f"{ppo_base[field]!r})."
                )
            fields[field] = ppo_base[field] if given is None else given
        else:
            fields[field] = DEFAULTS[name] if given is None else given
    try:
        ppo = PPOConfig(**fields)
    except ValueError as e:
        raise CLIError(str(e)) from None
    if args.checkpoint_every is not None:
        every = args.checkpoint_every
    elif base is not None:
        every = int(base["checkpoint_every"])
    else:
        every = max(1, ppo.num_updates // 10)
    return RunSpec(
        env=values["env"],
        hide=values["hide"],
        model=values["model"],
        seed=int(values["seed"]),
        hidden=int(values["hidden"]),
        features=int(values["features"]),
        activation=values["activation"],
        ppo=ppo,
        checkpoint_every=every,
    )


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


def cmd_train(args: argparse.Namespace) -> int:
    # ---- everything that can go wrong with the arguments is checked before writing
    resume_from: Path | None = None
    base: dict[str, Any] | None = None
    if args.resume is not None:
        run_dir, resume_from = _find_resume(args.resume, args.out)
        if args.out is not None and Path(args.out).resolve() != run_dir.resolve():
            raise CLIError(
                f"--out {args.out} differs from the run directory {run_dir} of the "
                "checkpoint; leave --out out when resuming."
            )
        meta = _read_json(resume_from / "trainer.json")
        if not isinstance(meta, dict) or "run" not in meta:
            raise CLIError(f"{resume_from} is not a checkpoint this version can read.")
        base = meta["run"]
        if not isinstance(base, dict) or "ppo" not in base:
            raise CLIError(f"{resume_from} holds a corrupt run description.")
        spec = _spec_from_args(args, base)
    else:
        spec = _spec_from_args(args, None)
        if args.out is not None:
            run_dir = Path(args.out)
        else:  # the default directory: a fresh one, never one that holds a run
            stem = Path("runs") / _slug(f"{spec.env}-{spec.model}-s{spec.seed}")
            run_dir, n = stem, 1
            while run_dir.exists():
                n += 1
                run_dir = stem.with_name(f"{stem.name}-{n}")
        if (run_dir / "run.json").exists() or _checkpoint_dirs(run_dir):
            raise CLIError(
                f"{run_dir} already holds a run; pass --resume to continue it, or choose "
                "another --out."
            )
        if run_dir.exists() and not run_dir.is_dir():
            raise CLIError(f"--out {run_dir} exists and is not a directory.")
    env = spec.make_env()
    ppo = PPO(spec.ppo, env)
    key = jax.random.key(spec.seed)
    k_model, k_init = jax.random.split(key)
    try:
        model = make_model(
            env,
            spec.model,  # type: ignore[arg-type]
            hidden_features=spec.hidden,
            features=spec.features,
            activation=spec.activation,
            key=k_model,
        )
    except ValueError as e:
        raise CLIError(str(e)) from None
    ts = ppo.init(model, key=k_init)
    start_update = 0
    keep_rows: list[dict[str, Any]] = []
    if resume_from is not None:
        meta, loaded, blob = _read_checkpoint(resume_from)
        if type(loaded) is not type(model) or loaded.metadata != model.metadata:
            raise CLIError(
                f"The checkpoint's model ({type(loaded).__name__}, {loaded.metadata}) does not "
                f"match the run's settings."
            )
        try:
            rest = eqx.tree_deserialise_leaves(
                io.BytesIO(blob), _trainer_part(ts), filter_spec=_deserialise_leaf
            )
        except CLIError:
            raise
        except Exception as e:
            raise CLIError(f"{resume_from}/trainer.eqx is unreadable ({e}).") from None
        opt_state, model_state, env_state, obs, start, ep_ret, k, update = rest
        ts = TrainState(
            eqx.nn.delete_init_state(loaded),
            opt_state,
            model_state,
            env_state,
            obs,
            start,
            ep_ret,
            k,
            update,
        )
        start_update = int(update)
        keep_rows = [
            r for r in _read_metrics(run_dir / "metrics.jsonl") if r["update"] <= start_update
        ]
    if args.devices is not None and not 1 <= args.devices <= jax.local_device_count():
        raise CLIError(
            f"--devices must be between 1 and the {jax.local_device_count()} local "
            f"device(s); got {args.devices}."
        )
    try:
        ts = shard_train_state(ts, args.devices)
    except ValueError as e:
        raise CLIError(str(e)) from None
    num_updates = spec.ppo.num_updates
    if start_update >= num_updates and resume_from is not None:
        raise CLIError(
            f"The checkpoint is already at update {start_update} of {num_updates}; raise "
            "--total-steps to train further."
        )

    # ---- from here on files are written
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_json(run_dir / "run.json", spec.to_json())
    metrics_out = _MetricsWriter(run_dir, keep_rows)
    per_update = spec.ppo.steps_per_update
    what = f"{env.name} with {spec.model}"
    print(
        f"{PROG}: training {what} for {num_updates * per_update:_} steps "
        f"({num_updates} updates of {spec.ppo.num_envs} envs x {spec.ppo.num_steps} steps)"
        + (f", resuming at update {start_update}" if start_update else "")
        + "; compiling...",
        file=sys.stderr,
        flush=True,
    )
    bar = _progress(num_updates * per_update, start_update * per_update, args.quiet)
    rows = list(keep_rows)
    t_start = time.perf_counter()
    last_ckpt: Path | None = None
    done_updates = start_update
    interrupted = False
    last_return = float("nan")
    try:
        t_prev = t_start
        for i in range(start_update, num_updates):
            ts, metrics = ppo.train_step(ts)
            values = {name: float(v) for name, v in jax.device_get(metrics).items()}
            now = time.perf_counter()
            done_updates = i + 1
            row = {
                "update": done_updates,
                "env_steps": done_updates * per_update,
                "steps_per_second": per_update / max(now - t_prev, 1e-9),
                "wall_time": now - t_start,
            }
            row.update(
                {name: _json_float(values[name]) for name in METRIC_FIELDS if name in values}
            )
            t_prev = now
            rows.append(row)
            metrics_out.write(row)
            if row["mean_return"] is not None:
                last_return = row["mean_return"]
            if bar is not None:
                bar.update(per_update)
                bar.set_postfix_str(
                    f"return {last_return:.3f}, update {done_updates}/{num_updates}"
                )
            if done_updates % spec.checkpoint_every == 0 or done_updates == num_updates:
                last_ckpt = _write_checkpoint(run_dir, ts, spec)
    except KeyboardInterrupt:
        interrupted = True
        if done_updates > start_update and int(ts.update) == done_updates:
            last_ckpt = _write_checkpoint(run_dir, ts, spec)
    finally:
        if bar is not None:
            bar.close()
    elapsed = time.perf_counter() - t_start
    trained = (done_updates - start_update) * per_update
    plot = None
    if not args.no_plot and rows:
        plot = _plot(rows, run_dir / "learning_curve.png", f"{what}, seed {spec.seed}", env)
    # A deterministic evaluation of the final model.
    eval_line = ""
    if not interrupted:
        returns = evaluate_policy(
            ts.model, env, key=jax.random.key(spec.seed + 1), num_episodes=100
        )
        eval_line = (
            f"deterministic evaluation: mean return {float(jnp.mean(returns)):.3f} over "
            "100 episodes"
        )
    new_rows = rows[len(keep_rows) :]
    if len(new_rows) > 1:  # the first update of a process includes compilation
        steady = (len(new_rows) - 1) * per_update
        rate = f"{steady / max(new_rows[-1]['wall_time'] - new_rows[0]['wall_time'], 1e-9):,.0f}"
        speed = (
            f"{rate} steps/s after the first update, which took {new_rows[0]['wall_time']:.1f} s"
        )
    else:
        speed = "one update, including compilation"
    lines = [
        f"{'interrupted' if interrupted else 'trained'} {what}: {trained:_} steps in "
        f"{elapsed:.1f} s ({speed})",
        f"last mean training return {last_return:.3f}",
    ]
    base_env = _memory_task(env)
    if base_env is not None:
        lines[-1] += (
            f" (optimum {base_env.optimum_return}, best feed-forward {base_env.chance_return})"
        )
    if eval_line:
        lines.append(eval_line)
    lines.append(f"run directory: {run_dir}")
    lines.append(f"  settings     {run_dir / 'run.json'}")
    lines.append(f"  metrics      {run_dir / 'metrics.jsonl'} and metrics.csv")
    if last_ckpt is not None:
        lines.append(f"  checkpoint   {last_ckpt}  (resume: {PROG} train --resume {run_dir})")
        lines.append(
            f"  model        {run_dir / 'model.eqx'}  ({PROG} evaluate {run_dir / 'model.eqx'})"
        )
    if plot is not None:
        lines.append(f"  plot         {plot}")
    elif not args.no_plot:
        lines.append("  plot         skipped: matplotlib is not installed")
    print("\n".join(lines))
    return 130 if interrupted else 0


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
        env = _make_env(args.env, args.hide or "")
    elif run_json is not None:
        spec = RunSpec.from_json(_read_json(run_json), run_json)
        env = _make_env(spec.env, args.hide if args.hide is not None else spec.hide)
    else:
        raise CLIError(f"No run.json beside {model_file}; name the task with --env.")
    try:
        model = load(model_file)
    except (ValueError, OSError) as e:
        raise CLIError(str(e)) from None
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
    base_env = _memory_task(env)
    if base_env is not None:
        msg += f"; optimum {base_env.optimum_return}, best feed-forward {base_env.chance_return}"
    print(msg)
    return 0


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
    except CLIError as e:
        print(f"{PROG} {args.command}: error: {e}", file=sys.stderr)
        return 2


def entry_point() -> NoReturn:
    """The console script."""
    sys.exit(main())
