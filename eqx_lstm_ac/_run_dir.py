"""The run directory, [`eqx_lstm_ac.RunDir`][]: the one place that knows where a run
keeps its settings, metrics, checkpoints, latest model and plot, and keeps them safe.

A run directory holds:

```
run.json                        the RunConfig: task, model, seed, PPO settings
metrics.jsonl, metrics.csv      one row per update
checkpoints/update_NNNNNN/      model.eqx (eqx_lstm_ac.save), trainer.eqx, trainer.json
model.eqx                       the latest model, for `eqx-lstm-ac evaluate`
learning_curve.png              the mean return against environment steps
tensorboard/                    the metrics as TensorBoard events (with tensorboardX)
```

Several seeds trained together live in a group directory: `seeds.json` (the seeds and
the shared settings), one run directory `seed_<n>/` per seed, and a
`learning_curve.png` of their mean with a 95% band.

Every file is written to a temporary name and renamed into place; a checkpoint directory
appears whole or not at all. Nothing here uses pickle: models go through
[`eqx_lstm_ac.save`][], the rest of a training state through `.npy` records read back
against the shapes the run's settings imply, everything else is JSON.
"""

import contextlib
import csv
import fcntl
import importlib.util
import io
import itertools
import json
import math
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._checkpoint import atomic_write, save
from ._config import RunConfig
from ._envs import Environment, HideObservation, MemoryTask
from ._train_state import (
    read_json,
    RUN_FORMAT,
    save_train_state,
    TrainState,
    verify_checkpoint,
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
        self.group_file = self.path / "seeds.json"
        self.model_file = self.path / "model.eqx"
        self.metrics_file = self.path / "metrics.jsonl"
        self.plot_file = self.path / "learning_curve.png"

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # ------------------------------------------------------------------ finding runs

    def holds_run(self) -> bool:
        """Whether a run (or a group of seeds) has started here: its settings or a
        checkpoint exist."""
        return self.settings_file.exists() or self.group_file.exists() or bool(self.checkpoints())

    def is_group(self) -> bool:
        """Whether this is the directory of several seeds trained together."""
        return self.group_file.is_file()

    def seed_dir(self, seed: int) -> "RunDir":
        """The run directory of `seed` inside a group directory."""
        return RunDir(self.path / f"seed_{seed}")

    def write_group(self, config: RunConfig, seeds: Sequence[int]) -> None:
        """Write `seeds.json`: the seeds of the group and the settings they share."""
        data = {
            "format": RUN_FORMAT,
            "library_version": __version__,
            "seeds": [int(s) for s in seeds],
            "run": config.to_dict(),
        }
        write_json(self.group_file, data)

    def read_group(self) -> tuple[RunConfig, list[int]]:
        """The shared settings and the seeds of a group directory, from `seeds.json`."""
        data = read_json(self.group_file)
        if not isinstance(data, dict) or data.get("format") != RUN_FORMAT:
            raise ValueError(f"{self.group_file} is not a group description this version can read.")
        seeds = data.get("seeds")
        if (
            not isinstance(seeds, list)
            or not seeds
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
        ):
            raise ValueError(f"{self.group_file} holds no list of seeds.")
        try:
            return RunConfig.from_dict(data["run"]), seeds
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{self.group_file} is a corrupt group description ({e}).") from None

    def usable_checkpoints(self) -> tuple[list[Path], list[str]]:
        """The checkpoints that are complete and pass their checksums, newest first, and
        a one-line reason for each newer one that does not."""
        good, skipped = [], []
        for ckpt in reversed(self.checkpoints()):
            try:
                verify_checkpoint(ckpt)
            except ValueError as e:
                skipped.append(f"skipped {ckpt.name}: {e}")
                continue
            good.append(ckpt)
        return good, skipped

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

    def remove_temporaries(self) -> list[Path]:
        """Delete what an interrupted atomic write leaves behind (a kill between writing
        and renaming): the hidden `.<name>.<random>.tmp` files and `.update_NNNNNN.<random>`
        checkpoint directories, in this directory and its `checkpoints/`, and nothing
        else. Call it only while holding the lock."""
        removed = []
        for folder in (self.path, self.path / "checkpoints"):
            if not folder.is_dir():
                continue
            for p in folder.iterdir():
                if not p.name.startswith("."):
                    continue
                if p.is_file() and p.name.endswith(".tmp"):
                    p.unlink(missing_ok=True)
                elif p.is_dir() and p.name.startswith(".update_"):
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    continue
                removed.append(p)
        return removed

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

    def tensorboard(self, first_step: int) -> "TensorBoardLog":
        """A TensorBoard log in `tensorboard/`, whose events from `first_step` on replace
        any that an earlier, interrupted process wrote there."""
        return TensorBoardLog(self.path / "tensorboard", first_step)

    def plot(
        self, runs: Sequence[list[dict[str, Any]]], title: str, env: Environment
    ) -> Path | None:
        """The learning curve as `learning_curve.png`: the mean return per update of one
        run, or for several runs (seeds) their mean with a 95% band; `None` without
        matplotlib."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return None
        fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
        if len(runs) == 1:
            xs = [r["env_steps"] for r in runs[0] if r.get("mean_return") is not None]
            ys = [r["mean_return"] for r in runs[0] if r.get("mean_return") is not None]
            ax.plot(xs, ys, lw=1.2, label="mean return per update")
        else:
            xs, mean, half = _band(runs)
            ax.plot(xs, mean, lw=1.2, label=f"mean of {len(runs)} seeds")
            ax.fill_between(xs, mean - half, mean + half, alpha=0.25, label="95% band")
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


def tensorboard_available() -> bool:
    """Whether tensorboardX (the `tensorboard` extra) is installed."""
    return importlib.util.find_spec("tensorboardX") is not None


_LOG_IDS = itertools.count()


class TensorBoardLog:
    """Metrics rows as TensorBoard scalars: each field of [`METRIC_FIELDS`] but the
    counters, as `train/<field>` at the row's environment step. Written by tensorboardX
    (the `tensorboard` extra); read by TensorBoard's own tools."""

    def __init__(self, path: Path, first_step: int):
        from tensorboardX import SummaryWriter

        # purge_step: TensorBoard drops events at or past it from earlier files, so a
        # resumed run shows each step once. The writer names its file by the second it
        # opened it and truncates a file of that name: the suffix keeps two logs opened
        # in one second apart, and in the order TensorBoard must read them.
        suffix = f".from{first_step:015d}.{os.getpid()}.{next(_LOG_IDS)}"
        self._writer = SummaryWriter(
            str(path), purge_step=first_step or None, filename_suffix=suffix
        )

    def write(self, row: dict[str, Any]) -> None:
        step = int(row["env_steps"])
        for name in METRIC_FIELDS:
            value = row.get(name)
            if name not in ("update", "env_steps", "wall_time") and value is not None:
                self._writer.add_scalar(f"train/{name}", value, step)

    def close(self) -> None:
        self._writer.close()


def _band(runs: Sequence[list[dict[str, Any]]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps, mean and 95% half-width (normal approximation) of several runs' returns,
    each run's last return carried over updates that finished no episode."""
    n = min(len(rows) for rows in runs)
    table = np.full((len(runs), n), np.nan)
    for i, rows in enumerate(runs):
        last = np.nan
        for j, row in enumerate(rows[:n]):
            value = row.get("mean_return")
            last = last if value is None else value
            table[i, j] = last
    steps = np.array([r["env_steps"] for r in runs[0][:n]], np.float64)
    keep = ~np.isnan(table).any(axis=0)
    table, steps = table[:, keep], steps[keep]
    half = 1.96 * table.std(axis=0, ddof=1) / math.sqrt(len(runs))
    return steps, table.mean(axis=0), half
