"""The sequence-mode kernel: encoder + LSTM + the heads' linear readout scanned over
time, with a hand-written reverse pass.

The sequence is cut into chunks of a few steps (`chunk_steps`). Inside a chunk,
everything that does not depend on the recurrence is one matmul over all the chunk's
`steps * B` rows: the encoder, the input projection and the readout in the forward
pass; the gate pre-activations (recomputed), the weight gradients and the input
gradients in the reverse pass. Only the recurrent part runs step by step: `h @ W_hh`
forward, `d_gates @ W_hh` backward.

For the reverse pass the forward pass keeps the hidden state `h` of every step and the
cell state `c` entering each chunk; the reverse pass recomputes the gates, and from
them the cell states, chunk by chunk. Since the readout happens inside, the `(T, B, H)`
hidden states never leave the kernel and their cotangent is never materialised. At
T=128, B=256 the whole forward + backward needs 31 MiB of temporaries: on Linux, under
the 32 MiB above which glibc maps (and the kernel page-faults in) fresh memory on every
call.

Three more choices measured on CPU:

- every gate comes from one `tanh` over the `4H` pre-activations, with
  `sigmoid(x) = tanh(x / 2) / 2 + 1/2` (halving is exact: a power of two); XLA's CPU
  `tanh` is several times faster than its `logistic`, an exponential and a division;
- chunks of a few steps keep the recomputed gates in cache; one chunk over the whole
  sequence (a `(T, B, 4H)` tensor) is slower, and so is one step at a time;
- the gradient of `[W_ih; W_hh]` multiplies an explicitly transposed copy of the gate
  gradients (see `_backward_chunk`).

It matches `jax.grad` of a plain scan to float32 precision
(`tests/test_speed_exactness.py` holds it).
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, PyTree


CHUNK_ROWS = 1024
"""Rows (steps x batch) per chunk: the bulk matmuls run over about this many rows, few
enough that a chunk's recomputed gates stay in cache and that the temporaries stay
small (512 and 2048 rows were slower at T=128, B=256)."""


def chunk_steps(t_len: int, batch: int) -> int:
    """Steps per chunk for a `(T, B)` sequence: about `CHUNK_ROWS / B`, at least 2
    (one-step chunks lose the bulk matmuls), at most `T`."""
    return max(1, min(t_len, max(2, CHUNK_ROWS // max(batch, 1))))


class Affine(NamedTuple):
    """A linear layer's arrays in `eqx` layout: weight `(out, in)`, bias `(out,)`."""

    w: Float[Array, "out in"]
    b: Float[Array, " out"]


class CellWeights(NamedTuple):
    """The LSTM cell's input and recurrent weights and its bias (gates `i, f, g, o`)."""

    w_ih: Float[Array, "gates hidden"]
    w_hh: Float[Array, "gates lstm"]
    b: Float[Array, " gates"]


class LSTMWeights(NamedTuple):
    """The differentiable arrays of the kernel: the encoder, the cell and the linear
    readout of the hidden state."""

    encoder: Affine
    cell: CellWeights
    readout: Affine


def gate_scales(n: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """`(scale, shift)` over the `4n` gate columns `i, f, g, o`: `(1/2, 1/2)` for the
    sigmoid gates, `(1, 0)` for `g`, so that `tanh(scale * pre) * scale + shift` is every
    gate at once. NumPy arrays: constants of the compiled program, not computed in it."""
    is_g = np.zeros(4 * n, bool)
    is_g[2 * n : 3 * n] = True
    scale = np.where(is_g, 1.0, 0.5).astype(dtype)
    return scale, np.where(is_g, 0.0, 0.5).astype(dtype)


def _row(v, ndim: int):
    """A vector shaped to broadcast over the last axis of an `ndim`-D array (the tests
    run with `jax_numpy_rank_promotion="raise"`)."""
    return v.reshape((1,) * (ndim - 1) + v.shape)


def lstm_gates(pre: Array) -> Array:
    """The four gates `i, f, g, o` after their nonlinearities, from the pre-activations
    `(..., 4H)`: `sigmoid` for `i, f, o` and `tanh` for `g`, as one `tanh`. (Halving is
    exact, so this is `sigmoid` to the last bits of `tanh`.)"""
    scale, shift = gate_scales(pre.shape[-1] // 4, pre.dtype)
    scale, shift = _row(scale, pre.ndim), _row(shift, pre.ndim)
    return jnp.tanh(pre * scale) * scale + shift


def matmul_t(a: Array, w: Array) -> Array:
    """`a @ w.T` over the last axis of `a`, for a weight in `eqx` layout `(out, in)`,
    contracted in place.

    Written as one `dot_general`, XLA's CPU backend multiplies by the weight as it is
    stored. Written as `a @ w.T` it may make a transposed copy first: a compiled kernel
    more per weight, and in a single step at batch 1, a copy of `W_hh` that took most of
    the call (a step went from about 100 us to about 65 us without it)."""
    return jax.lax.dot_general(a, w, (((a.ndim - 1,), (1,)), ((), ())))


def lstm_update(pre: Array, c: Array) -> tuple[Array, Array]:
    """One LSTM step from the gate pre-activations `pre (..., 4H)` and the cell state
    `c (..., H)`: `(h, c)` after the step. The one step function of every path: the
    single step, the sequence kernel and `remat`."""
    n = c.shape[-1]
    gates = lstm_gates(pre)
    i, f, g, o = (gates[..., j * n : (j + 1) * n] for j in range(4))
    c = f * c + i * g
    return o * jnp.tanh(c), c


def keep_where(keep: Array | None, x: Array) -> Array:
    """`x` where `keep`, exactly zero elsewhere (a `where`, not a product, so that a
    NaN or an infinity before an episode start never survives it); `x` itself for
    `keep=None`."""
    return x if keep is None else jnp.where(keep, x, jnp.zeros((), x.dtype))


class Chunks(NamedTuple):
    """A time-major array cut for the kernel: a `head` of `T % k` steps (possibly
    empty) and the `body`, `(T // k, k, ...)`. Leaves may be `None`."""

    head: PyTree
    body: PyTree


def split_chunks(tree: PyTree, k: int) -> Chunks:
    """Cut every `(T, ...)` leaf of `tree` into [`Chunks`][] of `k` steps."""

    def head(a: Array) -> Array:
        return a[: a.shape[0] % k]

    def body(a: Array) -> Array:
        r = a.shape[0] % k
        return a[r:].reshape((a.shape[0] // k, k) + a.shape[1:])

    return Chunks(jax.tree.map(head, tree), jax.tree.map(body, tree))


def over_chunks(f, carry, chunks: Chunks, has_head: bool, has_body: bool, reverse: bool = False):
    """`f(carry, inputs, j) -> (carry, out)` over the head chunk (`j = None`) and, in a
    `jax.lax.scan`, the body chunks (`j` their index), in time order or `reverse`d.
    Returns the last carry and the outputs as [`Chunks`][] (`None` for a part that has
    no steps)."""
    out_head = out_body = None

    def run_head(carry):
        return f(carry, chunks.head, None)

    def run_body(carry):
        n = jax.tree.leaves(chunks.body)[0].shape[0]
        return jax.lax.scan(
            lambda c, inp: f(c, inp[1], inp[0]),
            carry,
            (jnp.arange(n), chunks.body),
            reverse=reverse,
        )

    if has_head and not reverse:
        carry, out_head = run_head(carry)
    if has_body:
        carry, out_body = run_body(carry)
    if has_head and reverse:
        carry, out_head = run_head(carry)
    return carry, Chunks(out_head, out_body)


def join_chunks(parts: Chunks) -> Array:
    """The inverse of [`split_chunks`][] for one array: `(T, ...)` again."""
    arrays = []
    if parts.head is not None:
        arrays.append(parts.head)
    if parts.body is not None:
        arrays.append(parts.body.reshape((-1,) + parts.body.shape[2:]))
    return arrays[0] if len(arrays) == 1 else jnp.concatenate(arrays, axis=0)


class ChunkResiduals(NamedTuple):
    """What the forward pass keeps of one chunk (or of the stacked body chunks) for the
    reverse pass: the hidden state after every step and the cell state entering it."""

    hs: Float[Array, "*chunks steps B lstm"]
    c_entry: Float[Array, "*chunks B lstm"]


class Saved(NamedTuple):
    """Everything the reverse pass reads: the weights and inputs, the initial hidden
    state, the residuals of the head chunk and of the body chunks, and whether the
    observations' gradient is asked for."""

    w: LSTMWeights
    xs: Array
    keep: Array | None
    h0: Array
    residuals: Chunks
    d_xs_needed: bool


def _forward(act, w: LSTMWeights, xs, keep, h0, c0, residuals: bool):
    """The readouts `(T, B, out)`, the last carry, and (with `residuals`) the
    [`ChunkResiduals`][] of the head chunk and of the body chunks.

    Per chunk: the encoder and the input projection as one matmul, then the recurrence
    step by step, then the readout as one matmul."""
    # The recurrent weight is transposed once per call: contracted in place, the step's
    # `(B, H) @ (H, 4H)` ran 7% slower at B=16.
    w_hh_t = w.cell.w_hh.T
    b = _row(w.cell.b, 2)  # added in the step, inside its elementwise fusion
    k = chunk_steps(xs.shape[0], xs.shape[1])
    t_len = xs.shape[0]

    def chunk(hc, inp, j):
        xs_j, keep_j = inp
        zi = matmul_t(act(matmul_t(xs_j, w.encoder.w) + _row(w.encoder.b, 3)), w.cell.w_ih)

        def step(hc, inp):
            zi_t, k_t = inp
            h, c = keep_where(k_t, hc[0]), keep_where(k_t, hc[1])
            hc = lstm_update(zi_t + h @ w_hh_t + b, c)
            return hc, hc[0]

        hc_last, hs = jax.lax.scan(step, hc, (zi, keep_j))
        ys = matmul_t(hs, w.readout.w) + _row(w.readout.b, 3)
        return hc_last, (ys, ChunkResiduals(hs, hc[1]) if residuals else None)

    hc, out = over_chunks(chunk, (h0, c0), split_chunks((xs, keep), k), t_len % k > 0, t_len >= k)
    ys = join_chunks(Chunks(*(None if o is None else o[0] for o in out)))
    saved = Chunks(*(None if o is None else o[1] for o in out))
    return hc, ys, saved


def _lstm_primal(act, w, xs, keep, h0, c0):
    (h, c), ys, _ = _forward(act, w, xs, keep, h0, c0, residuals=False)
    return ys, h, c


def _value(a):
    """The array inside a `CustomVJPPrimal` (the forward rule sees symbolic zeros)."""
    return a.value


def _lstm_fwd(act, w, xs, keep, h0, c0):
    # With `symbolic_zeros`, every array comes wrapped with whether it is differentiated.
    # The observations usually are not: then their gradient is not computed at all.
    d_xs_needed = xs.perturbed
    w, xs, keep, h0, c0 = jax.tree.map(_value, (w, xs, keep, h0, c0))
    (h, c), ys, res = _forward(act, w, xs, keep, h0, c0, residuals=True)
    return (ys, h, c), Saved(w, xs, keep, h0, res, d_xs_needed)


def _instantiate(ct, like: Array) -> Array:
    """A cotangent as an array: zeros for a symbolic zero (an unused output), made from
    `like` so that inside `shard_map` they vary over the same mesh axes."""
    if isinstance(ct, jax.custom_derivatives.SymbolicZero):
        aval: jax.ShapeDtypeStruct = ct.aval  # type: ignore[assignment]  # a ShapedArray
        return jnp.zeros_like(like, shape=aval.shape, dtype=aval.dtype)
    return ct


def _backward_chunk(
    w: LSTMWeights, w_zh: Array, act, d_xs_needed: bool, carry, xs, keep, hs, h_entry, c_entry, d_ys
):
    """The reverse pass over one chunk: recompute its gates in one matmul and its cell
    states elementwise, run the recurrence backwards step by step, then every gradient
    in one matmul each."""
    dh_next, dc_next, acc = carry
    steps, batch, obs = xs.shape
    n = hs.shape[-1]
    # The hidden state entering every step, after its reset.
    h_prev = keep_where(keep, jnp.concatenate([h_entry[None], hs[:-1]], axis=0))
    z, act_vjp = jax.vjp(act, matmul_t(xs, w.encoder.w) + _row(w.encoder.b, 3))
    zh = jnp.concatenate([z, h_prev], axis=-1)
    gates = lstm_gates(matmul_t(zh, w_zh) + _row(w.cell.b, 3))
    i, f, g, o = (gates[..., j * n : (j + 1) * n] for j in range(4))

    def c_step(c, inp):
        f_t, ig_t, k_t = inp
        c = keep_where(k_t, c)
        c_new = f_t * c + ig_t
        return c_new, (c, c_new)

    _, (c_prev, cs) = jax.lax.scan(c_step, c_entry, (f, i * g, keep))
    tc = jnp.tanh(cs)
    dc_dh = o * (1.0 - tc * tc)
    # d pre-activation = [dc, dc, dc, dh] * local, elementwise.
    local = jnp.concatenate(
        [g * i * (1.0 - i), c_prev * f * (1.0 - f), i * (1.0 - g * g), tc * o * (1.0 - o)],
        axis=-1,
    )
    d_hs = d_ys @ w.readout.w

    def step(dhc, inp):
        dh_next, dc_next = dhc
        dh_out, local_t, dc_dh_t, f_t, k_t = inp
        dh = dh_out + dh_next
        dc = dc_next + dh * dc_dh_t
        d_pre = jnp.concatenate([dc, dc, dc, dh], axis=-1) * local_t
        return (keep_where(k_t, d_pre @ w.cell.w_hh), keep_where(k_t, dc * f_t)), d_pre

    (dh, dc), d_pre = jax.lax.scan(
        step, (dh_next, dc_next), (d_hs, local, dc_dh, f, keep), reverse=True
    )
    rows = steps * batch
    d_pre = d_pre.reshape(rows, 4 * n)
    zh = zh.reshape(rows, zh.shape[-1])
    # `d_pre.T @ zh` as written would contract over the rows of both operands, which
    # XLA's CPU backend runs as a slow transposed product; the transpose made once (the
    # barrier keeps XLA from folding it back into the product) lets it run as a plain
    # matmul, about 8% of the whole pass at T=128, B=256.
    d_zh = jax.lax.optimization_barrier(d_pre.T) @ zh
    (d_enc,) = act_vjp((d_pre @ w.cell.w_ih).reshape(z.shape))
    d_enc = d_enc.reshape(rows, d_enc.shape[-1])
    x_rows = xs.reshape(rows, obs)
    hidden = z.shape[-1]
    grads = (
        Affine(d_enc.T @ x_rows, jnp.sum(d_enc, axis=0)),
        CellWeights(d_zh[:, :hidden], d_zh[:, hidden:], jnp.sum(d_pre, axis=0)),
    )
    acc = jax.tree.map(jnp.add, acc, grads)
    d_xs = (d_enc @ w.encoder.w).reshape(xs.shape) if d_xs_needed else None
    return (dh, dc, acc), d_xs


def _lstm_bwd(act, saved: Saved, cts):
    w, xs, keep, h0, res, d_xs_needed = saved
    d_ys, d_h_last, d_c_last = (_instantiate(ct, xs) for ct in cts)
    # (4H, hidden + H), for [z, h_prev]
    w_zh = jnp.concatenate([w.cell.w_ih, w.cell.w_hh], axis=1)
    k = chunk_steps(xs.shape[0], xs.shape[1])
    chunks = split_chunks((xs, keep, d_ys), k)
    res_head, res_body = res

    def chunk(carry, inp, j):
        xs_j, keep_j, d_ys_j = inp
        if j is None:  # the head chunk starts the sequence
            hs_j, c_j, h_j = res_head.hs, res_head.c_entry, h0
        else:
            # The hidden state entering chunk `j` is the last one of chunk `j - 1` (of
            # the head chunk, or `h0`, for the first): read in place, not stored twice.
            hs_all = res_body.hs
            _, steps, batch, n = hs_all.shape
            last = jax.lax.dynamic_slice(
                hs_all, (jnp.maximum(j - 1, 0), steps - 1, 0, 0), (1, 1, batch, n)
            )
            h_start = h0 if res_head is None else res_head.hs[-1]
            h_j = jnp.where(j > 0, last.reshape(batch, n), h_start)
            hs_j, c_j = res_body.hs[j], res_body.c_entry[j]
        return _backward_chunk(
            w, w_zh, act, d_xs_needed, carry, xs_j, keep_j, hs_j, h_j, c_j, d_ys_j
        )

    # The gradients of the encoder and the cell, accumulated chunk by chunk.
    carry = (d_h_last, d_c_last, jax.tree.map(jnp.zeros_like, (w.encoder, w.cell)))
    carry, d_xs = over_chunks(
        chunk, carry, chunks, res_head is not None, res_body is not None, reverse=True
    )
    dh0, dc0, (d_encoder, d_cell) = carry
    # The readout's gradients: one matmul over all the steps, after the chunks.
    hs_rows = join_chunks(Chunks(*(None if r is None else r.hs for r in res)))
    hs_rows = hs_rows.reshape(-1, w.readout.w.shape[1])
    d_w_out = d_ys.reshape(hs_rows.shape[0], -1).T @ hs_rows
    d_b_out = jnp.sum(d_ys, axis=(0, 1))
    grads = LSTMWeights(d_encoder, d_cell, Affine(d_w_out, d_b_out))
    # `keep` is data (episode starts), never differentiated.
    return grads, join_chunks(d_xs) if d_xs_needed else None, None, dh0, dc0


_lstm = jax.custom_vjp(_lstm_primal, nondiff_argnums=(0,))
_lstm.defvjp(_lstm_fwd, _lstm_bwd, symbolic_zeros=True)


def lstm_sequence(
    act: Callable[[Array], Array],
    w: LSTMWeights,
    xs: Float[Array, "T B obs"],
    keep: Bool[Array, "T B 1"] | None,
    h0: Float[Array, "B lstm"],
    c0: Float[Array, "B lstm"],
) -> tuple[Float[Array, "T B out"], Float[Array, "B lstm"], Float[Array, "B lstm"]]:
    """Encoder + LSTM + linear readout over a time-major batch, with the fused reverse
    pass.

    `keep[t, b]` is false where observation `t` of environment `b` begins an episode
    (the carry is zeroed before step `t`) and true elsewhere; `None` means no episode
    starts inside the sequence. Returns the readout of every step,
    `h_t @ w.readout.w.T + w.readout.b` of shape `(T, B, out)`, and the final carry.
    The hidden states themselves never leave the kernel: their `(T, B, H)` cotangent
    is never materialised.
    """
    w, xs, keep, h0, c0 = _same_variance((w, xs, keep, h0, c0))
    return _lstm(act, w, xs, keep, h0, c0)


def _varying_axes(a: Array) -> frozenset:
    """The manual mesh axes that `a` varies over inside `shard_map` (empty outside)."""
    aval = jax.typeof(a)
    manual = getattr(aval, "manual_axis_type", None)  # newer JAX
    if manual is not None:
        return frozenset(manual.varying)
    return frozenset(getattr(aval, "vma", frozenset()))  # older JAX


def _same_variance(args):
    """Inside `shard_map`, mark every array as varying over the mesh axes that any of
    them varies over (outside, a no-op).

    The reverse pass returns a weight gradient that varies over `data` when the inputs
    do; a `custom_vjp` must return cotangents of the same type as its inputs, so the
    replicated weights enter as varying. The transpose of that cast is the sum over
    devices, exactly what automatic differentiation inserts for a replicated parameter.
    """
    leaves = jax.tree_util.tree_leaves(args)
    axes = frozenset().union(*(_varying_axes(a) for a in leaves))
    if not axes:
        return args

    def cast(a):
        missing = tuple(sorted(axes - _varying_axes(a)))
        return jax.lax.pcast(a, missing, to="varying") if missing else a

    return jax.tree_util.tree_map(cast, args)
