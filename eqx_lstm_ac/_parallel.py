"""Data parallelism with JAX's own SPMD machinery: a 1-D device mesh with a `data` axis,
batches (environments) split along it, parameters and optimizer state replicated, and
gradients averaged with one all-reduce per step.

Nothing here is specific to the model: the helpers work on any pytree, so a training
loop adopts them by building a mesh once, placing its batch and its parameters, and
wrapping its loss in [`eqx_lstm_ac.data_parallel_grad`][].
"""

from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.tree_util as jtu
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import PyTree


DATA_AXIS = "data"
"""The name of the mesh axis that the batch (the environments) is split along."""


def data_mesh(devices: int | Sequence[Any] | None = None) -> Mesh:
    """A 1-D device mesh with the single axis `"data"`.

    **Arguments:**

    - `devices`: `None` for all devices (`jax.devices()`: every device of every
      process, so on several hosts the mesh spans all of them); an `int` `n` for the
      first `n` of `jax.devices()`; or an explicit sequence of `jax.Device`s.

    **Returns:**

    A `jax.sharding.Mesh` of shape `{"data": len(devices)}`.

    **Raises:**

    `ValueError` if `devices` asks for no device, or for more devices than there are.
    """
    available = jax.devices()
    if devices is None:
        chosen = list(available)
    elif isinstance(devices, int):
        if isinstance(devices, bool) or not 1 <= devices <= len(available):
            raise ValueError(
                f"devices must be between 1 and the number of devices ({len(available)}: "
                f"{available[0].platform}); got {devices!r}. On the CPU, more devices can "
                "be simulated with XLA_FLAGS=--xla_force_host_platform_device_count=N set "
                "before JAX starts."
            )
        chosen = list(available[:devices])
    else:
        chosen = list(devices)
        if not chosen:
            raise ValueError("devices must name at least one device; got an empty sequence.")
    return Mesh(np.array(chosen, dtype=object), (DATA_AXIS,))


def _num_shards(mesh: Mesh) -> int:
    if DATA_AXIS not in mesh.shape:
        raise ValueError(
            f"The mesh must have an axis named {DATA_AXIS!r} (see eqx_lstm_ac.data_mesh); "
            f"got axes {tuple(mesh.shape)}."
        )
    return mesh.shape[DATA_AXIS]


def check_num_envs(num_envs: int, mesh: Mesh) -> int:
    """Check that `num_envs` environments split evenly over the `data` axis of `mesh`.

    Call it once, before building the environments, for an early and clear error.

    **Arguments:**

    - `num_envs`: the global number of environments (the batch size).
    - `mesh`: a mesh with a `"data"` axis, e.g. from [`eqx_lstm_ac.data_mesh`][].

    **Returns:**

    The number of environments per device, `num_envs // mesh.shape["data"]`.

    **Raises:**

    `ValueError` if `num_envs` is not a positive multiple of the number of devices.
    """
    n = _num_shards(mesh)
    if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs <= 0:
        raise ValueError(f"The number of environments must be a positive int; got {num_envs!r}.")
    if num_envs % n != 0:
        below, above = (num_envs // n) * n, (num_envs // n + 1) * n
        raise ValueError(
            f"The number of environments ({num_envs}) must divide by the number of devices "
            f"({n}) on the {DATA_AXIS!r} axis; use e.g. "
            + (f"{below} or {above}" if below > 0 else f"{above}")
            + " environments, or fewer devices."
        )
    return num_envs // n


def _batch_spec(axis: int) -> PartitionSpec:
    return PartitionSpec(*([None] * axis), DATA_AXIS)


def _map_batch(fn: Callable[[Any, int, str], Any], tree: Any, axis: Any) -> Any:
    """Apply `fn(leaf, axis, path)` to every array leaf of `tree`, where `axis` is an
    int or a pytree prefix of `tree` whose leaves are ints."""

    def per_subtree(ax, sub):
        if isinstance(ax, bool) or not isinstance(ax, int) or ax < 0:
            raise ValueError(f"A batch axis must be a non-negative int; got {ax!r}.")
        return jtu.tree_map_with_path(
            lambda path, leaf: fn(leaf, ax, jtu.keystr(path)) if eqx.is_array(leaf) else leaf,
            sub,
        )

    return jtu.tree_map(per_subtree, axis, tree)


def _checked_spec(leaf: Any, axis: int, path: str, n: int) -> PartitionSpec:
    where = f"Leaf {path or '(root)'}" + f" of shape {tuple(leaf.shape)}"
    if leaf.ndim <= axis:
        raise ValueError(f"{where} has no batch axis {axis} to split over the devices.")
    if leaf.shape[axis] % n != 0:
        raise ValueError(
            f"{where}: the number of environments ({leaf.shape[axis]}, axis {axis}) must "
            f"divide by the number of devices ({n}) on the {DATA_AXIS!r} axis."
        )
    return _batch_spec(axis)


def shard_batch(tree: PyTree, mesh: Mesh, axis: int | PyTree[int] = 0) -> PyTree:
    """Place a batch on the devices of `mesh`, split along the `data` axis.

    For one process (one host). With several processes, where each one holds only its
    own environments, use [`eqx_lstm_ac.shard_local_batch`][].

    **Arguments:**

    - `tree`: a pytree of arrays: observations, a carry, an `eqx.nn.State`, a rollout.
      Leaves that are not arrays are left as they are.
    - `mesh`: a mesh with a `"data"` axis.
    - `axis`: the batch axis of the leaves: an `int` for all of them (`0` for
      `(B, ...)` such as a carry or single-step observations, `1` for time-major
      `(T, B, ...)` sequences), or a pytree prefix of `tree` with an `int` per subtree,
      e.g. `{"obs": 1, "carry": 0}`.

    **Returns:**

    `tree` with every array a `jax.Array` with sharding
    `NamedSharding(mesh, PartitionSpec(None, ..., "data"))`.

    **Raises:**

    `ValueError` if a leaf has no such axis or its size does not divide by the number
    of devices.
    """
    n = _num_shards(mesh)

    def put(leaf, ax, path):
        return jax.device_put(leaf, NamedSharding(mesh, _checked_spec(leaf, ax, path, n)))

    return _map_batch(put, tree, axis)


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
    """Place a full copy of every array of `tree` on each device of `mesh`: parameters
    (a model), optimizer state, PRNG keys.

    **Arguments:**

    - `tree`: any pytree; leaves that are not arrays are left as they are.
    - `mesh`: the device mesh.

    **Returns:**

    `tree` with every array replicated, `NamedSharding(mesh, PartitionSpec())`.
    """
    sharding = NamedSharding(mesh, PartitionSpec())
    return jtu.tree_map(lambda x: jax.device_put(x, sharding) if eqx.is_array(x) else x, tree)


def process_slice(num_envs: int, mesh: Mesh) -> slice:
    """The environments this process owns, on one host of several.

    With `jax.distributed.initialize`, every process runs the same program but holds
    only the environments that live on its own devices. Process `p` builds (and steps)
    the environments `range(num_envs)[process_slice(num_envs, mesh)]`, e.g. from the
    keys `jax.random.split(key, num_envs)[process_slice(num_envs, mesh)]`, and places
    its rollouts with [`eqx_lstm_ac.shard_local_batch`][]. With one process this is
    `slice(0, num_envs)`.

    **Arguments:**

    - `num_envs`: the global number of environments.
    - `mesh`: the global mesh, e.g. [`eqx_lstm_ac.data_mesh`][]`()`.

    **Returns:**

    A `slice` of the global environment indices, contiguous.

    **Raises:**

    `ValueError` if `num_envs` does not divide by the number of devices, or this
    process's devices do not hold one contiguous block of the mesh.
    """
    per_device = check_num_envs(num_envs, mesh)
    mine = [i for i, d in enumerate(mesh.devices.flat) if d.process_index == jax.process_index()]
    if not mine or mine != list(range(mine[0], mine[0] + len(mine))):
        raise ValueError(
            "The devices of this process do not form one contiguous block of the mesh; "
            "build the mesh with eqx_lstm_ac.data_mesh() (jax.devices() order)."
        )
    start, stop = mine[0] * per_device, (mine[-1] + 1) * per_device
    return slice(start, stop)


def shard_local_batch(tree: PyTree, mesh: Mesh, axis: int | PyTree[int] = 0) -> PyTree:
    """Assemble a global batch from the part each process holds (several hosts).

    Each process passes its own environments' data (the slice
    [`eqx_lstm_ac.process_slice`][] names); the result is one global `jax.Array` per
    leaf, sharded along `data`, whose batch axis is the process-local size times the
    number of processes. Built on `jax.make_array_from_process_local_data`; nothing is
    sent between hosts. With one process it equals [`eqx_lstm_ac.shard_batch`][].

    **Arguments:**

    - `tree`: a pytree of process-local arrays (NumPy or JAX).
    - `mesh`: the global mesh.
    - `axis`: the batch axis, as for [`eqx_lstm_ac.shard_batch`][].

    **Returns:**

    `tree` with every array a global `jax.Array` sharded along `data`.

    **Raises:**

    `ValueError` if the local batch does not divide by this process's devices.
    """
    n = _num_shards(mesh)
    n_local = len([d for d in mesh.devices.flat if d.process_index == jax.process_index()])
    n_proc = n // n_local

    def put(leaf, ax, path):
        _checked_spec(leaf, ax, path, n_local)
        global_shape = list(leaf.shape)
        global_shape[ax] *= n_proc
        sharding = NamedSharding(mesh, _batch_spec(ax))
        return jax.make_array_from_process_local_data(sharding, leaf, tuple(global_shape))

    return _map_batch(put, tree, axis)


def data_parallel_grad(
    loss_fn: Callable[..., Any],
    mesh: Mesh,
    *,
    batch_axis: int | PyTree[int] = 0,
    has_aux: bool = False,
) -> Callable[..., Any]:
    r"""Data-parallel `eqx.filter_value_and_grad`: each device computes the loss and its
    gradient on its own slice of the batch, and the results are averaged over the
    `data` axis (one all-reduce of the gradients).

    Built on `jax.shard_map`: the model (any pytree; its arrays are the parameters) is
    replicated, every array of `batch` is split along its batch axis. Because the batch
    divides evenly, the mean of the per-device mean losses is the mean loss of the
    global batch, and the result equals the single-device value and gradient on the
    same global batch up to float rounding.

    **Arguments:**

    - `loss_fn`: `loss_fn(model, batch) -> loss` (a scalar), or `-> (loss, aux)` with
      `has_aux=True`. It sees the **local** slice of `batch`. Statistics over the batch
      inside the loss (for example advantage normalisation) are local too; for the
      global figure, average with `jax.lax.pmean(x, "data")`, which is the identity
      on a one-device mesh.
    - `mesh`: a mesh with a `"data"` axis (one device is fine: the same code runs on
      one device and on many).
    - `batch_axis`: the batch axis of the leaves of `batch`, as `axis` in
      [`eqx_lstm_ac.shard_batch`][]; e.g. `{"obs": 1, "carry": 0}`.
    - `has_aux`: whether `loss_fn` returns `(loss, aux)`. `aux` (floating arrays) is
      averaged over the devices as well.

    **Returns:**

    A compiled function `grad_fn(model, batch) -> (loss, grads)` (or
    `((loss, aux), grads)`), with `loss`, `aux` and `grads` replicated on every device.
    `grads` has the structure of `model`, `None` where a leaf is not a floating array,
    like `eqx.filter_value_and_grad`.

    **Raises:**

    `grad_fn` raises `ValueError` if a leaf of `batch` has a batch axis that does not
    divide by the number of devices.

    !!! example
        ```python
        mesh = lac.data_mesh()                       # all local devices
        grad_fn = lac.data_parallel_grad(loss_fn, mesh, batch_axis={"xs": 1, "c0": 0})
        model, opt_state = lac.replicate((model, opt_state), mesh)
        batch = lac.shard_batch(batch, mesh, axis={"xs": 1, "c0": 0})
        loss, grads = grad_fn(model, batch)
        updates, opt_state = opt.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        model = eqx.apply_updates(model, updates)
        ```
    """
    n = _num_shards(mesh)

    def global_loss(model, batch):
        # Averaging the loss (not the gradients) inside shard_map is what JAX's
        # varying-manual-axes autodiff wants: the transpose of the implicit broadcast
        # of the replicated parameters is the all-reduce of their gradients.
        out = loss_fn(model, batch)
        return jax.lax.pmean(out, DATA_AXIS)

    value_and_grad = eqx.filter_value_and_grad(global_loss, has_aux=has_aux)

    @eqx.filter_jit
    def grad_fn(model, batch):
        specs = _map_batch(
            lambda leaf, ax, path: _checked_spec(leaf, ax, path, n), batch, batch_axis
        )
        params, static = eqx.partition(model, eqx.is_array)

        def local(params, batch):
            return value_and_grad(eqx.combine(params, static), batch)

        return jax.shard_map(
            local,
            mesh=mesh,
            in_specs=(PartitionSpec(), specs),
            out_specs=PartitionSpec(),
        )(params, batch)

    return grad_fn
