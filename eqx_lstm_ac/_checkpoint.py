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
import math
import os
import struct
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

import distrax
import equinox as eqx
import jax
import jax.tree_util as jtu
import numpy as np

from ._action_spaces import space_from_description
from ._actor_critic import AbstractActorCritic
from ._registry import model_class, MODELS
from ._version import __version__


MAGIC = b"EQXLSTMAC\n"
FORMAT_VERSION = 1
_LEN = struct.Struct("<Q")
_MAX_HEADER = 1 << 20
_MAX_NPY_HEADER = 1 << 16
"""The most bytes one array's `.npy` header may take (NumPy writes 128)."""


def save(path: str | os.PathLike, model: AbstractActorCritic) -> None:
    """Save `model` to the file `path`.

    The file holds a JSON header (format version, library version, the model's class
    and `model.metadata`, with the action space's type and arguments) and then the
    arrays. The carry is not saved: a loaded model works with any batch shape.

    The file is written to a temporary file beside `path` and renamed into place, so an
    interrupted save never leaves a half-written checkpoint and never destroys the file
    that was there before.

    **Arguments:**

    - `path`: where to write.
    - `model`: an [`eqx_lstm_ac.AbstractActorCritic`][]: an
      [`eqx_lstm_ac.LSTMActorCritic`][], an [`eqx_lstm_ac.MLPActorCritic`][], or any
      model in [`eqx_lstm_ac.MODELS`][].

    **Raises:**

    `TypeError` if `model` is not an actor-critic of [`eqx_lstm_ac.MODELS`][].
    """
    if not isinstance(model, AbstractActorCritic):
        names = ", ".join(sorted(cls.__name__ for cls in MODELS.values()))
        raise TypeError(
            f"save expects an actor-critic model ({names}); got {type(model).__name__}."
        )
    try:
        model_class(type(model).__name__)
    except ValueError as e:
        raise TypeError(str(e)) from None
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
    atomic_write(path, MAGIC + _LEN.pack(len(head)) + head + blob)


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to the file `path` through a temporary file beside it, flushed to
    disk and renamed into place: a crash, a kill or a full disk leaves either the old
    file or the new one, never a half-written one, and no temporary file behind."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
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
    with _open(path) as f:
        header, _ = _read_header(f, path)
    return header


def _open(path: Path) -> BinaryIO:
    if path.is_dir():
        raise ValueError(f"{path} is a directory, not a checkpoint file.")
    return open(path, "rb")


def _read_header(f: BinaryIO, path: Path) -> tuple[dict[str, Any], int]:
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
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"{path}: corrupt checkpoint header ({type(e).__name__}).") from None
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
    nbytes = header["weights_nbytes"]
    if not isinstance(nbytes, int) or isinstance(nbytes, bool) or nbytes < 0:
        raise ValueError(f"{path}: corrupt checkpoint header: bad weights_nbytes {nbytes!r}.")
    if not isinstance(header["weights_sha256"], str):
        raise ValueError(f"{path}: corrupt checkpoint header: bad weights_sha256.")
    return header, len(MAGIC) + _LEN.size + n


def _abstract_model(
    header: dict[str, Any], path: Path, action_space: distrax.Bijector | None
) -> AbstractActorCritic:
    """The model the header describes, as shapes and dtypes only: nothing the size of
    the model is allocated or computed."""
    name = header.get("model", "LSTMActorCritic")
    try:
        cls = model_class(name if isinstance(name, str) else repr(name))
        metadata = header["metadata"]
        if isinstance(metadata, dict):  # checked here, eagerly: a user's space is traced below
            space_from_description(metadata.get("action_space"), action_space)
        return eqx.filter_eval_shape(
            cls.from_metadata,
            header["metadata"],
            action_space=action_space,
            key=jax.random.key(0),
        )
    except (ValueError, TypeError, RecursionError, OverflowError) as e:
        msg = str(e)
        raise ValueError(
            f"{path}: the header describes no valid model: {msg[:1].lower()}{msg[1:]}"
        ) from None


def read_npy(f: io.BytesIO, like: jax.ShapeDtypeStruct, path: Path) -> np.ndarray:
    """One `.npy` record of exactly the shape and dtype of `like`, its header checked
    before its data is read; never unpickles."""
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(
                f, max_header_size=_MAX_NPY_HEADER
            )
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(
                f, max_header_size=_MAX_NPY_HEADER
            )
    except Exception as e:
        raise ValueError(f"{path}: corrupt checkpoint weights ({e}).") from None
    want_shape, want_dtype = tuple(like.shape), np.dtype(like.dtype)
    if tuple(shape) != want_shape or dtype != want_dtype or dtype.hasobject:
        raise ValueError(
            f"{path}: checkpoint weights disagree with its header: expected an array of "
            f"shape {want_shape} and dtype {want_dtype}, found shape {tuple(shape)} and "
            f"dtype {dtype}."
        )
    count = math.prod(want_shape)
    data = f.read(count * want_dtype.itemsize)
    if len(data) != count * want_dtype.itemsize:
        raise ValueError(f"{path}: truncated checkpoint weights.")
    order = "F" if fortran else "C"
    return np.frombuffer(data, dtype=want_dtype).reshape(want_shape, order=order)


def load(
    path: str | os.PathLike, *, action_space: distrax.Bijector | None = None
) -> AbstractActorCritic:
    """Load a model saved with [`eqx_lstm_ac.save`][].

    The model is rebuilt from the header's class name (looked up in
    [`eqx_lstm_ac.MODELS`][]) and metadata, and its arrays are read back without
    unpickling; no code from the file runs. Sizes are checked before anything is
    allocated: the header's model must account for exactly the bytes the file holds,
    so a file cannot make the loader allocate more than it honestly contains. Make a
    state for the model with `model.init_state(carry_shape)` for any number of
    environments.

    **Arguments:**

    - `path`: the checkpoint file.
    - `action_space`: only for a model saved with a user-defined bijector, which the
      file cannot name: pass the same bijector again (its class must be the one saved).

    **Returns:**

    The model: an [`eqx_lstm_ac.LSTMActorCritic`][], an
    [`eqx_lstm_ac.MLPActorCritic`][], or whichever model of [`eqx_lstm_ac.MODELS`][]
    was saved.

    **Raises:**

    `ValueError` naming the problem and the path for a path that is a directory or a
    file that is not a checkpoint, is truncated or corrupt, has an unknown format
    version, holds arrays whose shapes disagree with its header, or was saved with
    another action space than `action_space`; `FileNotFoundError` if there is no such
    file.
    """
    path = Path(path)
    with _open(path) as f:
        size = os.fstat(f.fileno()).st_size
        header, offset = _read_header(f, path)
        nbytes = header["weights_nbytes"]
        if size - offset != nbytes:
            raise ValueError(
                f"{path}: truncated or padded checkpoint: expected {nbytes} bytes of "
                f"weights, found {size - offset}."
            )
        abstract = _abstract_model(header, path, action_space)
        leaves, treedef = jtu.tree_flatten(eqx.nn.delete_init_state(abstract))
        arrays = [leaf for leaf in leaves if isinstance(leaf, jax.ShapeDtypeStruct)]
        need = sum(math.prod(a.shape) * np.dtype(a.dtype).itemsize for a in arrays)
        if not need <= nbytes <= need + len(arrays) * _MAX_NPY_HEADER:
            raise ValueError(
                f"{path}: checkpoint weights disagree with its header: the model it "
                f"describes holds {need} bytes of arrays, the file {nbytes}."
            )
        blob = f.read(nbytes)
    if len(blob) != nbytes:
        raise ValueError(f"{path}: truncated checkpoint weights.")
    if hashlib.sha256(blob).hexdigest() != header["weights_sha256"]:
        raise ValueError(f"{path}: corrupt checkpoint: the weights fail their checksum.")
    stream = io.BytesIO(blob)
    out = [
        jax.numpy.asarray(read_npy(stream, leaf, path))
        if isinstance(leaf, jax.ShapeDtypeStruct)
        else leaf
        for leaf in leaves
    ]
    if stream.tell() != len(blob):
        raise ValueError(
            f"{path}: checkpoint weights disagree with its header: "
            f"{len(blob) - stream.tell()} bytes left over after the last array."
        )
    return jtu.tree_unflatten(treedef, out)
