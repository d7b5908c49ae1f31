"""Checkpoints: one file, a JSON header followed by the model's leaves.

Layout of a checkpoint file:

```
MAGIC (10 bytes) | header length, uint64 little-endian (8 bytes) | JSON header | leaves
```

The leaves are what `eqx.tree_serialise_leaves` writes: one `.npy` record per array,
read back with `allow_pickle=False`. The header names the activation and the action
space from fixed tables; nothing in the file is imported, evaluated or unpickled.
"""

import hashlib
import io
import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

import distrax
import equinox as eqx
import jax
import numpy as np

from ._action_spaces import ACTION_SPACES
from ._baseline import MLPActorCritic
from ._model import ACTIVATIONS, LSTMActorCritic
from ._version import __version__


MAGIC = b"EQXLSTMAC\n"
FORMAT_VERSION = 1
_LEN = struct.Struct("<Q")
_MAX_HEADER = 1 << 20

_MODELS: dict[str, type[LSTMActorCritic] | type[MLPActorCritic]] = {
    "LSTMActorCritic": LSTMActorCritic,
    "MLPActorCritic": MLPActorCritic,
}
"""The model classes a checkpoint can name (a fixed table; a header without a `model`
entry holds an `LSTMActorCritic`)."""


def _space_from_header(desc: Any, path: Path, action_space: distrax.Bijector | None):
    if action_space is not None:
        return action_space
    if desc is None:
        return None
    if not isinstance(desc, dict) or "type" not in desc:
        raise ValueError(f"{path}: corrupt checkpoint header: bad action_space {desc!r}.")
    kind = desc["type"]
    if kind == "custom":
        raise ValueError(
            f"{path}: the model was saved with a user-defined action space "
            f"({desc.get('class')!r}); pass it again: load(path, action_space=...)."
        )
    if kind not in ACTION_SPACES:
        raise ValueError(
            f"{path}: unknown action space {kind!r} in checkpoint; expected one of "
            f"{sorted(ACTION_SPACES)}."
        )
    args = desc.get("args", {})
    if not isinstance(args, dict) or not all(isinstance(v, (int, float)) for v in args.values()):
        raise ValueError(f"{path}: corrupt checkpoint header: bad action_space args {args!r}.")
    return ACTION_SPACES[kind](**args)


def save(path: str | os.PathLike, model: LSTMActorCritic | MLPActorCritic) -> None:
    """Save `model` to the file `path`.

    The file holds a JSON header (format version, library version, `model.metadata`,
    the action space's type and arguments) and then the arrays. The carry is not saved:
    a loaded model works with any batch shape.

    The file is written to a temporary file beside `path` and renamed into place, so an
    interrupted save never leaves a half-written checkpoint and never destroys the file
    that was there before.

    **Arguments:**

    - `path`: where to write.
    - `model`: an [`eqx_lstm_ac.LSTMActorCritic`][] (or the feed-forward
      [`eqx_lstm_ac.MLPActorCritic`][]).

    **Raises:**

    `TypeError` if `model` is neither.
    """
    if not isinstance(model, (LSTMActorCritic, MLPActorCritic)):
        raise TypeError(
            f"save expects an LSTMActorCritic or MLPActorCritic; got {type(model).__name__}."
        )
    path = Path(path)
    weights = io.BytesIO()
    eqx.tree_serialise_leaves(weights, eqx.nn.delete_init_state(model))
    blob = weights.getvalue()
    header = {
        "format_version": FORMAT_VERSION,
        "library": "eqx_lstm_ac",
        "library_version": __version__,
        "metadata": model.metadata,
        "model": type(model).__name__,
        "weights_nbytes": len(blob),
        "weights_sha256": hashlib.sha256(blob).hexdigest(),
    }
    head = json.dumps(header, sort_keys=True).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC)
            f.write(_LEN.pack(len(head)))
            f.write(head)
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON header of the checkpoint at `path`, validated, without the weights.

    **Raises:**

    `ValueError` naming the problem and the path if the file is not a checkpoint of
    this library, is truncated, or its header is corrupt or of an unknown version;
    `FileNotFoundError` if there is no such file.
    """
    path = Path(path)
    with open(path, "rb") as f:
        header, _ = _read_header(f, path)
    return header


def _read_header(f: io.BufferedIOBase, path: Path) -> tuple[dict[str, Any], int]:
    magic = f.read(len(MAGIC))
    if magic != MAGIC:
        raise ValueError(f"{path}: not an eqx_lstm_ac checkpoint (bad magic bytes).")
    raw_len = f.read(_LEN.size)
    if len(raw_len) != _LEN.size:
        raise ValueError(f"{path}: truncated checkpoint (header length missing).")
    (n,) = _LEN.unpack(raw_len)
    if n > _MAX_HEADER:
        raise ValueError(f"{path}: corrupt checkpoint header (length {n}).")
    raw = f.read(n)
    if len(raw) != n:
        raise ValueError(f"{path}: truncated checkpoint (header cut short).")
    try:
        header = json.loads(raw.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: corrupt checkpoint header ({e}).") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: corrupt checkpoint header (not a JSON object).")
    version = header.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{path}: unknown checkpoint format version {version!r}; this is "
            f"eqx_lstm_ac {__version__}, which reads format {FORMAT_VERSION}."
        )
    for key in ("metadata", "weights_nbytes", "weights_sha256"):
        if key not in header:
            raise ValueError(f"{path}: corrupt checkpoint header (no {key!r}).")
    return header, len(MAGIC) + _LEN.size + n


_INT_KEYS = {
    "LSTMActorCritic": (
        "observation_space_size",
        "action_space_size",
        "hidden_features",
        "lstm_features",
    ),
    "MLPActorCritic": (
        "observation_space_size",
        "action_space_size",
        "hidden_features",
        "features",
    ),
}
_BOOL_KEYS = {
    "LSTMActorCritic": ("actor_sigma_head", "discrete", "remat"),
    "MLPActorCritic": ("actor_sigma_head", "discrete"),
}


def _model_class(header: dict[str, Any], path: Path) -> str:
    name = header.get("model", "LSTMActorCritic")
    if name not in _MODELS:
        raise ValueError(
            f"{path}: unknown model class {name!r} in checkpoint; expected one of "
            f"{sorted(_MODELS)}."
        )
    return name


def _model_kwargs(meta: Any, path: Path, model: str = "LSTMActorCritic") -> dict[str, Any]:
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: corrupt checkpoint header (metadata is not an object).")
    kwargs: dict[str, Any] = {}
    for key in _INT_KEYS[model]:
        value = meta.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{path}: corrupt checkpoint header: bad {key} {value!r}.")
        kwargs[key] = value
    for key in _BOOL_KEYS[model]:
        value = meta.get(key, False)
        if not isinstance(value, bool):
            raise ValueError(f"{path}: corrupt checkpoint header: bad {key} {value!r}.")
        kwargs[key] = value
    activation = meta.get("activation")
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"{path}: unknown activation {activation!r} in checkpoint; expected one of "
            f"{sorted(ACTIVATIONS)}."
        )
    kwargs["activation"] = activation
    return kwargs


def load(
    path: str | os.PathLike, *, action_space: distrax.Bijector | None = None
) -> LSTMActorCritic | MLPActorCritic:
    """Load a model saved with [`eqx_lstm_ac.save`][].

    The model is rebuilt from the header's metadata and its arrays are read back with
    `allow_pickle=False`; no code from the file runs. Make a state for it with
    `model.init_state(carry_shape)` (or `eqx.nn.make_with_state` on the same
    configuration) for any number of environments.

    **Arguments:**

    - `path`: the checkpoint file.
    - `action_space`: only for a model saved with a user-defined bijector, which the
      file cannot name: pass the same bijector again.

    **Returns:**

    The [`eqx_lstm_ac.LSTMActorCritic`][] (or [`eqx_lstm_ac.MLPActorCritic`][], if
    that is what was saved).

    **Raises:**

    `ValueError` naming the problem and the path for a file that is not a checkpoint,
    is truncated or corrupt, has an unknown format version, or holds arrays whose shapes
    disagree with its header; `FileNotFoundError` if there is no such file.
    """
    path = Path(path)
    data = path.read_bytes()
    header, offset = _read_header(io.BytesIO(data), path)
    meta = header["metadata"]
    model_class = _model_class(header, path)
    kwargs = _model_kwargs(meta, path, model_class)
    kwargs["action_space"] = _space_from_header(meta.get("action_space"), path, action_space)
    blob = data[offset:]
    if len(blob) != header["weights_nbytes"]:
        raise ValueError(
            f"{path}: truncated or padded checkpoint: expected {header['weights_nbytes']} "
            f"bytes of weights, found {len(blob)}."
        )
    if hashlib.sha256(blob).hexdigest() != header["weights_sha256"]:
        raise ValueError(f"{path}: corrupt checkpoint: the weights fail their checksum.")
    try:
        cls: Any = _MODELS[model_class]
        like, _ = eqx.nn.make_with_state(cls)(**kwargs, key=jax.random.key(0))
    except ValueError as e:
        raise ValueError(f"{path}: the header describes no valid model: {e}") from None
    stream = io.BytesIO(blob)

    def read_leaf(f: io.BufferedIOBase, leaf: Any) -> Any:
        if not eqx.is_array(leaf):
            return leaf
        try:
            arr = np.load(f, allow_pickle=False)
        except Exception as e:
            raise ValueError(f"{path}: corrupt checkpoint weights ({e}).") from None
        if arr.shape != leaf.shape or arr.dtype != leaf.dtype:
            raise ValueError(
                f"{path}: checkpoint weights disagree with its header: expected an array "
                f"of shape {tuple(leaf.shape)} and dtype {leaf.dtype}, found shape "
                f"{arr.shape} and dtype {arr.dtype}."
            )
        return jax.numpy.asarray(arr)

    try:
        model = eqx.tree_deserialise_leaves(stream, like, filter_spec=read_leaf)
    except Exception as e:
        # Equinox wraps the error of a leaf with the leaf's path: report both, plainly.
        cause: BaseException | None = e
        while cause is not None and not str(cause).startswith(str(path)):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        raise ValueError(f"{cause} ({e})") from None
    if stream.tell() != len(blob):
        raise ValueError(
            f"{path}: checkpoint weights disagree with its header: "
            f"{len(blob) - stream.tell()} bytes left over after the last array."
        )
    return model
