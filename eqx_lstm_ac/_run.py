"""Training runs on disk: [`eqx_lstm_ac.fit`][], the training loop that writes a run
directory ([`eqx_lstm_ac.RunDir`][], `_run_dir.py`), and [`eqx_lstm_ac.resume`][].

One loop serves one run and several seeds trained together: the seeds' training states
are stacked and advanced by one compiled program ([`eqx_lstm_ac.PPO.train_steps`][]),
and each seed keeps a run directory of its own, the same as a run of that seed alone.

What a run survives: a kill at any moment (every file is renamed into place whole; the
next run removes the temporary files a kill leaves), Ctrl-C and `SIGTERM` (a checkpoint
of the last finished update is written first), an update that produces non-finite values
([`eqx_lstm_ac.DivergenceError`][]: the last finite state is checkpointed and nothing
non-finite is ever written), a corrupt newest checkpoint (resuming takes the newest one
that passes its checksums), and a second run on the same directory (refused by a lock).
"""

import contextlib
import dataclasses
import functools
import math
import os
import signal
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple, overload, TypedDict, Unpack

import jax
import numpy as np

from ._actor_critic import AbstractActorCritic
from ._config import RunConfig, with_settings
from ._envs import Environment, make_env
from ._ppo import PPO
from ._run_dir import METRIC_FIELDS, RunDir, tensorboard_available
from ._train_state import (
    load_train_state,
    read_checkpoint_config,
    shard_train_state,
    stack,
    TrainState,
    unstack,
)


class DivergenceError(ValueError):
    """A run stopped because an update produced a non-finite loss or non-finite
    parameters. Nothing non-finite was written: `checkpoint` is the checkpoint of the
    last finite state (of the first seed that diverged), and `update` the update that
    failed."""

    def __init__(self, message: str, update: int, checkpoint: Path | None):
        super().__init__(message)
        self.update = update
        self.checkpoint = checkpoint


@dataclasses.dataclass
class FitResult:
    """What [`eqx_lstm_ac.fit`][] did for one run: the trained `model`, the final
    training state `train_state`, the environment `env`, the `run_dir`, the `config`,
    the metrics `rows` of every update of the run (earlier ones of a resumed run
    included), the update it started from (`start_update`), the last checkpoint
    written, whether it was `interrupted` (Ctrl-C or `SIGTERM`), and the seconds it
    took."""

    model: AbstractActorCritic
    train_state: TrainState
    env: Environment
    run_dir: RunDir
    config: RunConfig
    rows: list[dict[str, Any]]
    start_update: int
    last_checkpoint: Path | None
    interrupted: bool
    seconds: float


def make_run_env(config: RunConfig) -> Environment:
    """The environment of a run: `make_env(config.env, config.hide)`."""
    return make_env(config.env, config.hide)


def _initial_state(config: RunConfig, env: Environment, ppo: PPO) -> TrainState:
    return ppo.init_seed(config.seed, functools.partial(config.model.make, env))


def _json_float(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _check_seeds(seeds: Sequence[int], devices: Any) -> list[int]:
    seeds = list(seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct and at least one; got {seeds}.")
    for s in seeds:
        if not isinstance(s, int) or isinstance(s, bool) or not 0 <= s < 2**63:
            raise ValueError(f"seeds must be integers in [0, 2**63); got {s!r}.")
    if devices is not None:
        raise ValueError("Several seeds train on one device; leave devices (--devices) out.")
    return seeds


class _FitOptions(TypedDict, total=False):
    """The keyword arguments of [`eqx_lstm_ac.fit`][] besides `seeds` (for its overloads)."""

    resume_from: str | os.PathLike | None
    devices: int | Sequence[Any] | None
    on_start: Callable[[int, int], None] | None
    on_update: Callable[[dict[str, Any]], None] | None
    plot: bool
    tensorboard: bool | None


@overload
def fit(
    config: RunConfig, out: str | os.PathLike, *, seeds: None = None, **options: Unpack[_FitOptions]
) -> FitResult: ...


@overload
def fit(
    config: RunConfig,
    out: str | os.PathLike,
    *,
    seeds: Sequence[int],
    **options: Unpack[_FitOptions],
) -> list[FitResult]: ...


def fit(
    config: RunConfig,
    out: str | os.PathLike,
    *,
    seeds: Sequence[int] | None = None,
    resume_from: str | os.PathLike | None = None,
    devices: int | Sequence[Any] | None = None,
    on_start: Callable[[int, int], None] | None = None,
    on_update: Callable[[dict[str, Any]], None] | None = None,
    plot: bool = True,
    tensorboard: bool | None = None,
) -> Any:
    """Train a run and keep it on disk: settings, metrics, rotating checkpoints, the
    latest model and the learning curve, in the run directory `out`.

    Everything that can be wrong with the settings is checked before anything is
    written. Ctrl-C (`KeyboardInterrupt`) and `SIGTERM` write a checkpoint of the last
    finished update and return with `interrupted=True`.

    **Arguments:**

    - `config`: the [`eqx_lstm_ac.RunConfig`][].
    - `out`: the run directory: new or empty, or, with `resume_from`, the run's own.
    - `seeds`: train one run per seed (instead of `config.seed`) in one compiled
      program; `out` becomes a group directory with a run directory `seed_<n>/` for
      each, each the same as the run of that seed alone (up to rounding).
    - `resume_from`: a checkpoint directory of the run in `out` to continue from (see
      [`eqx_lstm_ac.resume`][], which finds it).
    - `devices`: local devices to split the environments over (see
      [`eqx_lstm_ac.shard_train_state`][]); not with `seeds`.
    - `on_start`: called with `(start_update, num_updates)` once all checks passed.
    - `on_update`: called with each update's metrics row (with `seeds`: the first
      seed's row, its `mean_return` the mean over the seeds).
    - `plot`: write `learning_curve.png` at the end.
    - `tensorboard`: write the metrics as TensorBoard events to `tensorboard/` of each
      run directory (`tensorboard --logdir out`); `None`: when tensorboardX (the
      `tensorboard` extra) is installed.

    **Returns:**

    A [`eqx_lstm_ac.FitResult`][]; with `seeds`, a list of them, one per seed.

    **Raises:**

    `ValueError` with a one-line message for settings that cannot train or do not match
    the checkpoint, or a directory a run may not write into;
    [`eqx_lstm_ac.DivergenceError`][] (a `ValueError`) when an update produces
    non-finite values.

    !!! example
        ```python
        import eqx_lstm_ac as lac

        config = lac.RunConfig(env="memory", ppo=lac.PPOConfig(total_steps=200_000))
        result = lac.fit(config, "runs/mine")
        result = lac.resume("runs/mine", total_steps=400_000)  # continue it
        ```
    """
    out = Path(out)
    options = _Options(devices, on_start, on_update, plot, tensorboard)
    if seeds is None:
        if resume_from is None:
            RunDir(out).check_new()
        ckpts = None if resume_from is None else [Path(resume_from)]
        return _fit(None, [RunDir(out)], [config], ckpts, options)[0]
    seeds = _check_seeds(seeds, devices)
    if resume_from is not None:
        raise ValueError("Resume a group of seeds with resume(out), not with resume_from.")
    group = RunDir(out)
    group.check_new()
    runs = [group.seed_dir(s) for s in seeds]
    configs = [dataclasses.replace(config, seed=s) for s in seeds]
    return _fit(group, runs, configs, None, options)


class _Options(NamedTuple):
    """What [`eqx_lstm_ac.fit`][] does besides training (its keyword arguments)."""

    devices: int | Sequence[Any] | None = None
    on_start: Callable[[int, int], None] | None = None
    on_update: Callable[[dict[str, Any]], None] | None = None
    plot: bool = True
    tensorboard: bool | None = None

    def use_tensorboard(self) -> bool:
        if self.tensorboard is None:
            return tensorboard_available()
        if self.tensorboard and not tensorboard_available():
            raise ValueError(
                "tensorboard=True needs tensorboardX; install the extra: "
                "pip install 'eqx-lstm-ac[tensorboard]'."
            )
        return self.tensorboard


def _fit(group, runs, configs, ckpts, options: _Options) -> list[FitResult]:
    use_tensorboard = options.use_tensorboard()
    config = configs[0]
    env = make_run_env(config)
    ppo = PPO(config.ppo, env)
    states = [_initial_state(c, env, ppo) for c in configs]
    keep_rows: list[list[dict[str, Any]]] = [[] for _ in runs]
    if ckpts is not None:
        states = [load_train_state(ckpt, ts) for ckpt, ts in zip(ckpts, states, strict=True)]
        keep_rows = [
            [r for r in run.read_metrics() if r["update"] <= int(ts.update)]
            for run, ts in zip(runs, states, strict=True)
        ]
    start = int(states[0].update)
    if any(int(ts.update) != start for ts in states):
        raise ValueError("The seeds' checkpoints are at different updates.")
    num_updates = config.ppo.num_updates
    if start >= num_updates:
        raise ValueError(
            f"The checkpoint is already at update {start} of {num_updates}; raise "
            "--total-steps to train further."
        )
    ts = stack(states) if group is not None else shard_train_state(states[0], options.devices)
    with contextlib.ExitStack() as resources:
        for run in ([group] if group is not None else []) + runs:
            resources.enter_context(run.lock())
            run.remove_temporaries()
        if group is not None:
            group.write_group(config, [c.seed for c in configs])
        logs = []
        if use_tensorboard:
            first_step = (start + 1) * config.ppo.steps_per_update if start else 0
            for run in runs:
                logs.append(run.tensorboard(first_step))
                resources.callback(logs[-1].close)
        return _train_loop(
            group, runs, configs, env, ppo, ts, keep_rows, start, ckpts, logs, options
        )


class _Interrupts:
    """While training, Ctrl-C and `SIGTERM` (what batch schedulers send before a kill)
    raise `KeyboardInterrupt`, which stops the run with a checkpoint; inside `held()`
    they wait for its end, so that an update's state and its metrics rows land
    together."""

    def __init__(self) -> None:
        self.holding = self.pending = False

    def _handler(self, signum: int, frame: Any) -> None:
        if not self.holding:
            raise KeyboardInterrupt
        self.pending = True

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        try:
            previous = [(s, signal.signal(s, self._handler)) for s in _SIGNALS]
        except ValueError:  # not the main thread: leave signals alone
            yield
            return
        try:
            yield
        finally:
            for s, handler in previous:
                signal.signal(s, handler)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self.holding = True
        try:
            yield
        finally:
            self.holding = False
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt


_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _train_loop(group, runs, configs, env, ppo, ts, keep_rows, start, ckpts, logs, options):
    config = configs[0]
    on_start, on_update = options.on_start, options.on_update
    num_updates = config.ppo.num_updates
    per_update = config.ppo.steps_per_update
    every = config.checkpoint_interval
    stacked = group is not None
    step = ppo.train_steps if stacked else ppo.train_step

    def member(tree: Any, i: int) -> Any:
        return unstack(tree, i) if stacked else tree

    for run, cfg, rows in zip(runs, configs, keep_rows, strict=True):
        run.write_config(cfg)
        run.start_metrics(rows)
    if on_start is not None:
        on_start(start, num_updates)
    rows = [list(r) for r in keep_rows]
    last_ckpt: list[Path | None] = list(ckpts) if ckpts is not None else [None for _ in runs]
    written = start  # the update the newest checkpoint of every run holds
    t_start = t_prev = time.perf_counter()
    interrupted = False

    def checkpoint(state: TrainState) -> None:
        nonlocal written
        for i, (run, cfg) in enumerate(zip(runs, configs, strict=True)):
            last_ckpt[i] = run.write_checkpoint(member(state, i), cfg)
        written = int(member(state, 0).update)

    interrupts = _Interrupts()
    try:
        with interrupts.installed():
            for i in range(start, num_updates):
                new_ts, metrics = step(ts)
                values = jax.device_get(metrics)
                finite = np.atleast_1d(np.asarray(values["finite"])) > 0
                if not finite.all():
                    if written < i:
                        checkpoint(ts)
                    _diverged(i + 1, configs, finite, last_ckpt)
                with interrupts.held():
                    ts = new_ts
                    now = time.perf_counter()
                    done = i + 1
                    for j, (run, run_rows) in enumerate(zip(runs, rows, strict=True)):
                        row: dict[str, Any] = {
                            "update": done,
                            "env_steps": done * per_update,
                            "steps_per_second": per_update / max(now - t_prev, 1e-9),
                            "wall_time": now - t_start,
                        }
                        for name in METRIC_FIELDS:
                            if name in values:
                                v = np.asarray(values[name])
                                row[name] = _json_float(float(v[j] if stacked else v))
                        run_rows.append(row)
                        run.append_metrics(row)
                        if logs:
                            logs[j].write(row)
                    t_prev = now
                if on_update is not None:
                    on_update(_summary_row([r[-1] for r in rows]))
                if done % every == 0 or done == num_updates:
                    checkpoint(ts)
    except KeyboardInterrupt:
        interrupted = True
        if int(member(ts, 0).update) > written:
            checkpoint(ts)
    if options.plot and rows[0]:
        what = f"{env.name} with {config.model.model}"
        if group is not None:
            seeds = ", ".join(str(c.seed) for c in configs)
            group.plot(rows, f"{what}, seeds {seeds}", env)
        for run, cfg, run_rows in zip(runs, configs, rows, strict=True):
            run.plot([run_rows], f"{what}, seed {cfg.seed}", env)
    seconds = time.perf_counter() - t_start
    return [
        FitResult(
            member(ts, j).model,
            member(ts, j),
            env,
            run,
            cfg,
            rows[j],
            start,
            last_ckpt[j],
            interrupted,
            seconds,
        )
        for j, (run, cfg) in enumerate(zip(runs, configs, strict=True))
    ]


def _summary_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    returns = [r["mean_return"] for r in rows if r.get("mean_return") is not None]
    return {**rows[0], "mean_return": float(np.mean(returns)) if returns else None}


def _diverged(update: int, configs, finite: np.ndarray, last_ckpt: list[Path | None]) -> None:
    bad = [c.seed for c, ok in zip(configs, finite, strict=True) if not ok]
    first = next(i for i, ok in enumerate(finite) if not ok)
    ckpt = last_ckpt[first]
    where = f"kept at {ckpt}" if ckpt is not None else "none was written (it diverged at once)"
    seeds = "" if len(configs) == 1 else f" (seed {', '.join(map(str, bad))})"
    lr = configs[0].ppo.learning_rate
    raise DivergenceError(
        f"Update {update}{seeds} produced a non-finite loss or parameters, so the run "
        f"stopped; the last finite checkpoint is {where}. Likely cause: a learning rate "
        f"too high for this task (--lr {lr:g}) or rewards too large; start again with a "
        "lower --lr.",
        update,
        ckpt,
    )


# ---------------------------------------------------------------------- resuming


def resume(
    path: str | os.PathLike,
    *,
    total_steps: int | None = None,
    settings: dict[str, Any] | None = None,
    **kwargs: Any,
) -> Any:
    """Continue a run (or a group of seeds) from its latest usable checkpoint, or from
    the checkpoint directory `path`, with the settings it was started with.

    The latest checkpoint that is complete and passes its checksums is taken; a newer
    one that does not is skipped with a warning that says why. A run that was stopped
    after writing its settings but before its first checkpoint starts again from the
    beginning (with a warning).

    **Arguments:**

    - `path`: the run directory, one of its checkpoint directories, or a group
      directory of several seeds.
    - `total_steps`: a new budget, to train further than the run was set to. The
      learning-rate schedule then runs over the new budget from the update reached
      (a warning says so).
    - `settings`: other settings to change, `{"ppo.total_steps": ..., ...}` as
      [`eqx_lstm_ac.with_settings`][] takes them; those fixed for a run are refused.
    - `**kwargs`: as [`eqx_lstm_ac.fit`][] (`devices`, `on_update`, ...).

    **Returns:**

    A [`eqx_lstm_ac.FitResult`][], or a list of them for a group.

    **Raises:**

    `ValueError` for a path that holds no run, or changed settings a run cannot take.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"Cannot resume: {path} does not exist.")
    changes = dict(settings or {})
    if total_steps is not None:
        changes["ppo.total_steps"] = total_steps
    if (path / "trainer.json").is_file():  # an explicit checkpoint: no fallback
        run = RunDir(path.parent.parent)
        config = _changed(read_checkpoint_config(path), changes)
        return fit(config, run.path, resume_from=path, **kwargs)
    top = RunDir(path)
    if not path.is_dir() or not top.holds_run():
        raise ValueError(f"Cannot resume: {path} holds no run (run.json or seeds.json).")
    if top.is_group():
        shared, seeds = top.read_group()
        runs = [top.seed_dir(s) for s in seeds]
    else:
        shared, seeds, runs = None, None, [top]
    picked = _pick_checkpoints(runs)
    if picked is None:
        warnings.warn(
            f"{path} holds no usable checkpoint; training it again from the start with "
            "its settings.",
            RuntimeWarning,
            stacklevel=2,
        )
        base = shared if shared is not None else top.read_config()
        configs = [dataclasses.replace(base, seed=s) for s in seeds] if seeds else [base]
        ckpts = None
    else:
        configs = [read_checkpoint_config(c) for c in picked]
        ckpts = picked
    configs = [_changed(c, changes) for c in configs]
    group = top if seeds is not None else None
    results = _fit(group, runs, configs, ckpts, _Options(**kwargs))
    return results if seeds is not None else results[0]


def _changed(config: RunConfig, changes: dict[str, Any]) -> RunConfig:
    new = with_settings(config, changes, resuming=True)
    old_total, new_total = config.ppo.num_updates, new.ppo.num_updates
    if new_total != old_total and new.ppo.lr_schedule != "constant":
        warnings.warn(
            f"The budget changes from {old_total} to {new_total} updates: the "
            f"{new.ppo.lr_schedule} learning-rate schedule now runs over {new_total} "
            "updates, so the learning rate jumps to that schedule's value at the update "
            "reached.",
            RuntimeWarning,
            stacklevel=3,
        )
    return new


def _pick_checkpoints(runs: list[RunDir]) -> list[Path] | None:
    """The newest update every run has a usable checkpoint of, one path per run;
    `None` if there is none. Skipped newer checkpoints are warned about."""
    usable = []
    for run in runs:
        good, skipped = run.usable_checkpoints()
        for reason in skipped:
            warnings.warn(f"{run.path}: {reason}", RuntimeWarning, stacklevel=3)
        usable.append({c.name: c for c in good})
    common = set(usable[0]).intersection(*usable[1:])
    if not common:
        return None
    name = max(common)
    return [u[name] for u in usable]
