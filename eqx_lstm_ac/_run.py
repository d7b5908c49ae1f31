"""Training runs on disk: the run directory ([`eqx_lstm_ac.RunDir`][]) and
[`eqx_lstm_ac.fit`][], the training loop that writes it (its checkpoints through
`_train_state.py`).

A run directory holds:

```
run.json                        the RunConfig: task, model, seed, PPO settings
metrics.jsonl, metrics.csv      one row per update
checkpoints/update_NNNNNN/      model.eqx (eqx_lstm_ac.save), trainer.eqx, trainer.json
model.eqx                       the latest model, for `eqx-lstm-ac evaluate`
learning_curve.png              the mean return against environment steps
```

Every file is written to a temporary name and renamed into place; a checkpoint directory
appears whole or not at all. Nothing here uses pickle: models go through
[`eqx_lstm_ac.save`][], the rest of a training state through `.npy` records read back
against the shapes the run's settings imply, everything else is JSON.
"""

import contextlib
import csv
import dataclasses
import fcntl
import io
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax

from ._actor_critic import AbstractActorCritic
from ._checkpoint import atomic_write, save
from ._config import RunConfig
from ._envs import Environment, HideObservation, make_env, MemoryTask
from ._ppo import PPO
from ._registry import make_model
from ._train_state import (
    load_train_state,
    read_checkpoint_config,
    read_json,
    RUN_FORMAT,
    save_train_state,
    shard_train_state,
    TrainState,
    write_json,
)
from ._version import __version__


KEEP_CHECKPOINTS = 3

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
"""The columns of `metrics.csv` (and the keys of each `metrics.jsonl` row)."""


def make_run_env(config: RunConfig) -> Environment:
    """The environment of a run: `make_env(config.env, config.hide)`."""
    return make_env(config.env, config.hide)


def memory_task(env: Environment) -> MemoryTask | None:
    """The memory task inside `env`, if that is what it is (for its optimum and chance)."""
    while isinstance(env, HideObservation):
        env = env.env
    return env if isinstance(env, MemoryTask) else None


# ---------------------------------------------------------------------- the run directory


class RunDir:
    """A run directory: the one place that knows its layout (settings, metrics,
    checkpoints and their rotation, the latest model, the plot) and keeps it safe.

    A run writes only into a directory that is new, empty, or its own (one holding a
    `run.json`), and holds an OS lock on it while it writes (released when the process
    ends, however it ends), so two runs never write into one directory.

    **Arguments:**

    - `path`: the directory.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.settings_file = self.path / "run.json"
        self.model_file = self.path / "model.eqx"
        self.metrics_file = self.path / "metrics.jsonl"
        self.plot_file = self.path / "learning_curve.png"

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # ------------------------------------------------------------------ finding runs

    def holds_run(self) -> bool:
        """Whether a run has started here (its settings or a checkpoint exist)."""
        return self.settings_file.exists() or bool(self.checkpoints())

    def checkpoints(self) -> list[Path]:
        """The complete checkpoint directories, oldest first."""
        root = self.path / "checkpoints"
        if not root.is_dir():
            return []
        found = [
            p
            for p in root.iterdir()
            if p.is_dir() and p.name.startswith("update_") and (p / "trainer.json").is_file()
        ]
        return sorted(found, key=lambda p: p.name)

    @classmethod
    def find(cls, path: str | os.PathLike) -> tuple["RunDir", Path]:
        """`(run_dir, checkpoint)` for a run directory (its latest checkpoint) or a
        checkpoint directory inside one.

        **Raises:**

        `ValueError` if `path` is neither, or holds no checkpoint.
        """
        path = Path(path)
        if not path.exists():
            raise ValueError(f"Cannot resume: {path} does not exist.")
        if (path / "trainer.json").is_file():
            return cls(path.parent.parent), path
        if path.is_dir():
            ckpts = cls(path).checkpoints()
            if not ckpts:
                raise ValueError(
                    f"Cannot resume: {path} holds no checkpoint (checkpoints/update_*)."
                )
            return cls(path), ckpts[-1]
        raise ValueError(
            f"Cannot resume from {path}: not a run directory or a checkpoint directory."
        )

    def read_config(self) -> RunConfig:
        """The run's [`eqx_lstm_ac.RunConfig`][], from `run.json`."""
        data = read_json(self.settings_file)
        if not isinstance(data, dict) or data.get("format") != RUN_FORMAT:
            raise ValueError(
                f"{self.settings_file} is not a run description this version can read."
            )
        try:
            return RunConfig.from_dict(data["run"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{self.settings_file} is a corrupt run description ({e}).") from None

    # ------------------------------------------------------------------ writing

    def check_new(self) -> None:
        """Refuse a path where a new run may not write: a file, or a directory that
        holds a run or anything else."""
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"--out {self.path} exists and is not a directory.")
        if self.holds_run():
            raise ValueError(
                f"{self.path} already holds a run; pass --resume to continue it, or choose "
                "another --out."
            )
        if self.path.is_dir() and any(p.name != ".lock" for p in self.path.iterdir()):
            raise ValueError(
                f"{self.path} is not empty and holds no run: a run writes only into a new "
                "or empty directory, or its own."
            )

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run's lock (created with the directory if need be)."""
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ValueError(
                    f"{self.path} is in use by another run (it holds the lock)."
                ) from None
            yield
        finally:
            os.close(fd)

    def write_config(self, config: RunConfig) -> None:
        """Write `run.json`."""
        data = {"format": RUN_FORMAT, "library_version": __version__, "run": config.to_dict()}
        write_json(self.settings_file, data)

    def write_checkpoint(self, ts: TrainState, config: RunConfig) -> Path:
        """A checkpoint of `ts` (see [`eqx_lstm_ac.save_train_state`][]), the latest
        model beside it as `model.eqx`, and only the newest few checkpoints kept."""
        root = self.path / "checkpoints"
        root.mkdir(exist_ok=True)
        final = save_train_state(root / f"update_{int(ts.update):06d}", ts, config)
        save(self.model_file, ts.model)
        for old in self.checkpoints()[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    # ------------------------------------------------------------------ metrics

    def read_metrics(self) -> list[dict[str, Any]]:
        """The rows of `metrics.jsonl` (a line cut short by a crash is skipped)."""
        if not self.metrics_file.is_file():
            return []
        rows = []
        for line in self.metrics_file.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and isinstance(row.get("update"), int):
                rows.append(row)
        return rows

    def start_metrics(self, keep: list[dict[str, Any]]) -> None:
        """Rewrite `metrics.jsonl` and `metrics.csv` with the rows `keep`."""
        atomic_write(self.metrics_file, "".join(json.dumps(r) + "\n" for r in keep).encode())
        text = io.StringIO()
        writer = csv.DictWriter(text, METRIC_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(keep)
        atomic_write(self.path / "metrics.csv", text.getvalue().encode())

    def append_metrics(self, row: dict[str, Any]) -> None:
        """Append one row to both metrics files."""
        with open(self.metrics_file, "a") as f:
            f.write(json.dumps(row) + "\n")
        with open(self.path / "metrics.csv", "a", newline="") as f:
            csv.DictWriter(f, METRIC_FIELDS, extrasaction="ignore").writerow(row)

    def plot(self, rows: list[dict[str, Any]], title: str, env: Environment) -> Path | None:
        """The learning curve as `learning_curve.png`; `None` without matplotlib."""
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
        base = memory_task(env)
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
        atomic_write(self.plot_file, buf.getvalue())
        return self.plot_file


# ---------------------------------------------------------------------- the training loop


@dataclasses.dataclass
class FitResult:
    """What [`eqx_lstm_ac.fit`][] did: the trained `model`, the final training state
    `train_state`, the environment `env`, the `run_dir`, the metrics `rows` of every
    update of the run (earlier ones of a resumed run included), the update it started
    from (`start_update`), the last checkpoint written, whether it was `interrupted`
    (Ctrl-C), and the seconds it took."""

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


def _json_float(x: float) -> float | None:
    return x if math.isfinite(x) else None


def fit(
    config: RunConfig,
    out: str | os.PathLike,
    *,
    resume_from: str | os.PathLike | None = None,
    devices: int | Sequence[Any] | None = None,
    on_start: Callable[[int, int], None] | None = None,
    on_update: Callable[[dict[str, Any]], None] | None = None,
    plot: bool = True,
) -> FitResult:
    """Train a run and keep it on disk: settings, metrics, rotating checkpoints, the
    latest model and the learning curve, in the run directory `out`.

    Everything that can be wrong with the settings is checked before anything is
    written. Ctrl-C (`KeyboardInterrupt`) writes a checkpoint of the last finished
    update and returns with `interrupted=True`.

    **Arguments:**

    - `config`: the [`eqx_lstm_ac.RunConfig`][].
    - `out`: the run directory: new or empty, or, with `resume_from`, the run's own.
    - `resume_from`: a checkpoint directory of the run in `out` to continue from.
    - `devices`: local devices to split the environments over (see
      [`eqx_lstm_ac.shard_train_state`][]).
    - `on_start`: called with `(start_update, num_updates)` once all checks passed.
    - `on_update`: called with each update's metrics row.
    - `plot`: write `learning_curve.png` at the end.

    **Returns:**

    A [`eqx_lstm_ac.FitResult`][].

    **Raises:**

    `ValueError` with a one-line message for settings that cannot train or do not match
    the checkpoint, or a directory a run may not write into.

    !!! example
        ```python
        import eqx_lstm_ac as lac

        config = lac.RunConfig(env="memory", ppo=lac.PPOConfig(total_steps=200_000))
        result = lac.fit(config, "runs/mine")
        result = lac.resume("runs/mine", total_steps=400_000)  # continue it
        ```
    """
    run = RunDir(out)
    if resume_from is None:
        run.check_new()
    env = make_run_env(config)
    ppo = PPO(config.ppo, env)
    k_model, k_init = jax.random.split(jax.random.key(config.seed))
    m = config.model
    model = make_model(
        env,
        m.model,
        hidden_features=m.hidden_features,
        features=m.features,
        activation=m.activation,
        key=k_model,
    )
    ts = ppo.init(model, key=k_init)
    start_update = 0
    keep_rows: list[dict[str, Any]] = []
    if resume_from is not None:
        ts = load_train_state(resume_from, ts)
        start_update = int(ts.update)
        keep_rows = [r for r in run.read_metrics() if r["update"] <= start_update]
    ts = shard_train_state(ts, devices)
    num_updates = config.ppo.num_updates
    if resume_from is not None and start_update >= num_updates:
        raise ValueError(
            f"The checkpoint is already at update {start_update} of {num_updates}; raise "
            "--total-steps to train further."
        )
    with run.lock():
        return _train_loop(
            run, config, env, ppo, ts, keep_rows, start_update, on_start, on_update, plot
        )


def _train_loop(run, config, env, ppo, ts, keep_rows, start_update, on_start, on_update, plot):
    num_updates = config.ppo.num_updates
    per_update = config.ppo.steps_per_update
    every = config.checkpoint_interval
    run.write_config(config)
    run.start_metrics(keep_rows)
    if on_start is not None:
        on_start(start_update, num_updates)
    rows = list(keep_rows)
    t_start = t_prev = time.perf_counter()
    last_ckpt: Path | None = None
    done_updates = start_update
    interrupted = False
    try:
        for i in range(start_update, num_updates):
            ts, metrics = ppo.train_step(ts)
            values = {name: float(v) for name, v in jax.device_get(metrics).items()}
            now = time.perf_counter()
            done_updates = i + 1
            row: dict[str, Any] = {
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
            run.append_metrics(row)
            if on_update is not None:
                on_update(row)
            if done_updates % every == 0 or done_updates == num_updates:
                last_ckpt = run.write_checkpoint(ts, config)
    except KeyboardInterrupt:
        interrupted = True
        if done_updates > start_update and int(ts.update) == done_updates:
            last_ckpt = run.write_checkpoint(ts, config)
    if plot and rows:
        what = f"{env.name} with {config.model.model}"
        run.plot(rows, f"{what}, seed {config.seed}", env)
    seconds = time.perf_counter() - t_start
    return FitResult(
        ts.model, ts, env, run, config, rows, start_update, last_ckpt, interrupted, seconds
    )


def resume(path: str | os.PathLike, *, total_steps: int | None = None, **kwargs: Any) -> FitResult:
    """Continue a run from its latest checkpoint (or from the checkpoint directory
    `path`), with the settings it was started with.

    **Arguments:**

    - `path`: the run directory or one of its checkpoint directories.
    - `total_steps`: a new budget, to train further than the run was set to.
    - `**kwargs`: as [`eqx_lstm_ac.fit`][] (`devices`, `on_update`, ...).

    **Returns:**

    A [`eqx_lstm_ac.FitResult`][].
    """
    run, ckpt = RunDir.find(path)
    config = read_checkpoint_config(ckpt)
    if total_steps is not None:
        config = dataclasses.replace(
            config, ppo=dataclasses.replace(config.ppo, total_steps=total_steps)
        )
    return fit(config, run.path, resume_from=ckpt, **kwargs)
