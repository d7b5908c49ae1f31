"""The training state: [`eqx_lstm_ac.TrainState`][], its placement over devices, and its
checkpoints: a whole training state and the settings of its run in one directory,
written atomically and read back by field name without running code or allocating more
than the run's settings imply."""

import dataclasses
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray, PyTree

from ._actor_critic import AbstractActorCritic
from ._checkpoint import atomic_write, load, read_npy, save
from ._config import RunConfig
from ._normalize import RunningMoments
from ._parallel import check_num_envs, data_mesh, replicate, shard_batch
from ._version import __version__


class TrainState(eqx.Module):
    """Everything an update changes: the model (with its observation moments), the
    optimiser's state, the environments and the carry, the reward normaliser's state,
    the random key and the update counter. A pytree of arrays (and the model's static
    parts), so it can be passed through `jit` and serialised.

    `discounted_return` is each environment's running discounted return of the
    training rewards and `return_moments` the moments of all of them so far: the
    rewards are divided by `return_moments.std` when `normalize_rewards` is on."""

    model: AbstractActorCritic
    opt_state: PyTree
    model_state: eqx.nn.State
    env_state: PyTree
    obs: Float[Array, "B obs"]
    episode_start: Bool[Array, " B"]
    episode_return: Float[Array, " B"]
    discounted_return: Float[Array, " B"]
    return_moments: RunningMoments
    key: PRNGKeyArray
    update: Int[Array, ""]


def shard_train_state(
    ts: TrainState, devices: int | Sequence[Any] | Mesh | None = None
) -> TrainState:
    """Spread a [`eqx_lstm_ac.TrainState`][] over several devices for data-parallel
    training with JAX's own sharding.

    The per-environment leaves (environment states, observations, reset flags, returns
    and the carry) are split along the `data` axis of a 1-D mesh; the model, the
    optimiser state, the key and the counter are replicated. Then the ordinary compiled
    [`eqx_lstm_ac.PPO.train_step`][] runs on all devices: XLA partitions the rollout per
    device and all-reduces the gradients, and the update is the same computation as on
    one device with the same global batch (a test holds it).

    **Arguments:**

    - `ts`: the training state, e.g. from [`eqx_lstm_ac.PPO.init`][].
    - `devices`: how many local devices, a list of devices, a `Mesh` with a `data` axis,
      or `None` for all local devices.

    **Returns:**

    The same state, placed on the devices.

    **Raises:**

    `ValueError` if the number of environments does not divide by the number of devices.
    """
    mesh = devices if isinstance(devices, Mesh) else data_mesh(devices)
    check_num_envs(int(ts.obs.shape[0]), mesh)
    batched = ("model_state", "env_state", "obs", "episode_start", "episode_return")
    batched += ("discounted_return",)
    placed = {name: shard_batch(getattr(ts, name), mesh) for name in batched}
    for field in dataclasses.fields(ts):
        if field.name not in batched:
            placed[field.name] = replicate(getattr(ts, field.name), mesh)
    return TrainState(**placed)


RUN_FORMAT = 3
"""The format of `run.json` and of a checkpoint's `trainer.json`."""

_MAX_JSON = 1 << 20


def write_json(path: Path, data: Any) -> None:
    atomic_write(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: Path) -> Any:
    try:
        if path.stat().st_size > _MAX_JSON:
            raise ValueError(f"{path} is too large to be a settings file.")
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"{path} is not readable JSON ({type(e).__name__}).") from None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------- training states


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _trainer_fields(ts: TrainState) -> dict[str, list[Any]]:
    """The array leaves of every field of `ts` but the model, by field name (random
    keys as their raw data)."""
    out = {}
    for field in dataclasses.fields(ts):
        if field.name == "model":
            continue
        leaves = jax.tree.leaves(getattr(ts, field.name))
        out[field.name] = [
            jax.random.key_data(x) if _is_key(x) else x for x in leaves if eqx.is_array(x)
        ]
    return out


def save_train_state(path: str | os.PathLike, ts: TrainState, config: RunConfig) -> Path:
    """Save a whole training state (model, optimiser, environments, carry, keys,
    counters) and the settings of its run into the new checkpoint directory `path`.

    The directory is written under a temporary name and renamed into place, so it
    appears whole or not at all; an existing directory of that name is replaced only
    once the new one is complete.

    **Returns:**

    The checkpoint directory.
    """
    final = Path(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        save(tmp / "model.eqx", ts.model)
        buf = io.BytesIO()
        fields = _trainer_fields(ts)
        for leaves in fields.values():
            for x in leaves:
                np.save(buf, np.asarray(x), allow_pickle=False)
        atomic_write(tmp / "trainer.eqx", buf.getvalue())
        update = int(ts.update)
        meta = {
            "format": RUN_FORMAT,
            "library_version": __version__,
            "update": update,
            "env_steps": update * config.ppo.steps_per_update,
            "run": config.to_dict(),
            "fields": {name: len(leaves) for name, leaves in fields.items()},
            "sha256": {name: _sha256(tmp / name) for name in ("model.eqx", "trainer.eqx")},
        }
        write_json(tmp / "trainer.json", meta)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def read_checkpoint_config(path: str | os.PathLike) -> RunConfig:
    """The [`eqx_lstm_ac.RunConfig`][] stored in the checkpoint directory `path`."""
    meta = _checkpoint_meta(Path(path))
    try:
        return RunConfig.from_dict(meta["run"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path} holds a corrupt run description ({e}).") from None


def _checkpoint_meta(ckpt: Path) -> dict[str, Any]:
    meta = read_json(ckpt / "trainer.json")
    if not isinstance(meta, dict) or meta.get("format") != RUN_FORMAT:
        raise ValueError(f"{ckpt} is not a checkpoint this version can read.")
    return meta


def verify_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Check that the checkpoint directory `path` is complete and passes its checksums,
    and return its `trainer.json`.

    **Raises:**

    `ValueError` naming the file that is missing, unreadable or corrupt.
    """
    ckpt = Path(path)
    meta = _checkpoint_meta(ckpt)
    for name in ("model.eqx", "trainer.eqx"):
        file = ckpt / name
        if not file.is_file():
            raise ValueError(f"{file} is missing: the checkpoint is incomplete.")
        sha = meta.get("sha256")
        if not isinstance(sha, dict) or _sha256(file) != sha.get(name):
            raise ValueError(f"{file} fails its checksum: the checkpoint is corrupt.")
    return meta


def load_train_state(path: str | os.PathLike, like: TrainState) -> TrainState:
    """Load the training state saved in the checkpoint directory `path`.

    `like` is a training state of the same run (e.g. `PPO(config.ppo, env).init(...)`):
    every field is read back by name against its shapes and dtypes, and the file must
    hold exactly those bytes, so nothing is allocated that the run's settings do not
    imply. No code from the files runs.

    **Raises:**

    `ValueError` naming the file for a checkpoint that is incomplete, corrupt, fails its
    checksums, or does not match `like`.
    """
    ckpt = Path(path)
    meta = verify_checkpoint(ckpt)
    model = load(ckpt / "model.eqx")
    if type(model) is not type(like.model) or model.metadata != like.model.metadata:
        raise ValueError(
            f"The checkpoint's model ({type(model).__name__}, {model.metadata}) does not "
            f"match the run's settings."
        )
    want = _trainer_fields(like)
    if meta.get("fields") != {name: len(leaves) for name, leaves in want.items()}:
        raise ValueError(f"{ckpt}/trainer.eqx does not hold this run's training state.")
    blob = (ckpt / "trainer.eqx").read_bytes()
    stream = io.BytesIO(blob)
    read = {}
    for name, leaves in want.items():
        shapes = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves]
        read[name] = [jnp.asarray(read_npy(stream, s, ckpt / "trainer.eqx")) for s in shapes]
    if stream.tell() != len(blob):
        raise ValueError(f"{ckpt}/trainer.eqx holds more than this run's training state.")
    values = {"model": eqx.nn.delete_init_state(model)}
    for name, arrays in read.items():
        tree = getattr(like, name)
        it = iter(arrays)

        def fill(x, it=it):
            if not eqx.is_array(x):
                return x
            a = next(it)
            return jax.random.wrap_key_data(a, impl=jax.random.key_impl(x)) if _is_key(x) else a

        values[name] = jax.tree.map(fill, tree)
    return TrainState(**values)


def stack(trees: Sequence[PyTree]) -> PyTree:
    """Stack pytrees of one structure along a new leading axis: their arrays are
    stacked, everything else (a model's static parts) is taken from the first.

    The inverse of [`eqx_lstm_ac.unstack`][]. Used to run several seeds in one program
    (see [`eqx_lstm_ac.PPO.train_steps`][]).
    """
    arrays = [eqx.filter(t, eqx.is_array) for t in trees]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *arrays)
    return eqx.combine(stacked, eqx.filter(trees[0], eqx.is_array, inverse=True))


def unstack(tree: PyTree, i: int) -> PyTree:
    """Member `i` of a stack made by [`eqx_lstm_ac.stack`][]."""
    return jax.tree.map(lambda x: x[i] if eqx.is_array(x) else x, tree)
