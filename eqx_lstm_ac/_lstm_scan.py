"""The sequence-mode kernel: encoder + LSTM scanned over time, with a hand-written
reverse pass.

`jax.grad` of a plain `lax.scan` accumulates the weight gradients one step at a time,
with small `(4H, B) @ (B, I)` matmuls inside the reverse scan. The reverse pass here
runs only the recurrent part step by step (the gate gradients and `dh @ W_hh`) and
computes every weight gradient afterwards as one large matmul over all `T * B` rows, the
way fused cuDNN-class kernels do. It matches `jax.grad` of the plain scan to float32
precision (`tests/test_speed_exactness.py` holds it).
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float


class LSTMWeights(NamedTuple):
    """The differentiable arrays of the encoder and the cell (`eqx` layout: `(out, in)`)."""

    w_enc: Float[Array, "hidden obs"]
    b_enc: Float[Array, " hidden"]
    w_ih: Float[Array, "gates hidden"]
    w_hh: Float[Array, "gates lstm"]
    b: Float[Array, " gates"]


def _row(v: Array) -> Array:
    return v.reshape((1,) + v.shape)


def _cell(
    wt: LSTMWeights, act: Callable[[Array], Array], x: Array, h: Array, c: Array
) -> tuple[Array, Array, Array]:
    """One step for a batch `x (B, obs)`, `h, c (B, H)`, with the weights `wt` already
    transposed to `(in, out)`; returns `(h', c', gates)` with the gates after their
    nonlinearities, laid out `(B, 4H)` as `i, f, g, o`."""
    z = act(x @ wt.w_enc + _row(wt.b_enc))
    pre = z @ wt.w_ih + h @ wt.w_hh + _row(wt.b)
    n = h.shape[-1]
    i = jax.nn.sigmoid(pre[:, :n])
    f = jax.nn.sigmoid(pre[:, n : 2 * n])
    g = jnp.tanh(pre[:, 2 * n : 3 * n])
    o = jax.nn.sigmoid(pre[:, 3 * n :])
    c = f * c + i * g
    h = o * jnp.tanh(c)
    return h, c, jnp.concatenate([i, f, g, o], axis=-1)


def _transposed(w: LSTMWeights) -> LSTMWeights:
    # Transposed once, outside the scan: a transposed operand inside the step costs a
    # copy per step (10-25% at small batches on CPU).
    return w._replace(w_enc=w.w_enc.T, w_ih=w.w_ih.T, w_hh=w.w_hh.T)


def _scan(
    act: Callable[[Array], Array],
    w: LSTMWeights,
    xs: Array,
    keep: Array | None,
    h0: Array,
    c0: Array,
    with_residuals: bool,
):
    wt = _transposed(w)

    def body(hc, inp):
        h, c = hc
        x, k = inp
        if k is not None:
            h = h * k
            c = c * k
        h_new, c_new, gates = _cell(wt, act, x, h, c)
        out = (h_new, gates, c) if with_residuals else h_new
        return (h_new, c_new), out

    return jax.lax.scan(body, (h0, c0), (xs, keep))


def _lstm_primal(act, w, xs, keep, h0, c0):
    (h, c), hs = _scan(act, w, xs, keep, h0, c0, with_residuals=False)
    return hs, h, c


def _lstm_fwd(act, w, xs, keep, h0, c0):
    (h, c), (hs, gates, c_prev) = _scan(act, w, xs, keep, h0, c0, with_residuals=True)
    return (hs, h, c), (w, xs, keep, h0, hs, gates, c_prev)


def _lstm_bwd(act, res, cts):
    w, xs, keep, h0, hs, gates, c_prev = res
    d_hs, d_h_last, d_c_last = cts
    t_len, batch, n = hs.shape

    def body(dhc, inp):
        dh_next, dc_next = dhc
        dh_out, gate, cp, k = inp
        i = gate[:, :n]
        f = gate[:, n : 2 * n]
        g = gate[:, 2 * n : 3 * n]
        o = gate[:, 3 * n :]
        tc = jnp.tanh(f * cp + i * g)
        dh = dh_out + dh_next
        dc = dc_next + dh * o * (1.0 - tc * tc)
        d_pre = jnp.concatenate(
            [
                dc * g * i * (1.0 - i),
                dc * cp * f * (1.0 - f),
                dc * i * (1.0 - g * g),
                dh * tc * o * (1.0 - o),
            ],
            axis=-1,
        )
        dh_prev = d_pre @ w.w_hh
        dc_prev = dc * f
        if k is not None:
            dh_prev = dh_prev * k
            dc_prev = dc_prev * k
        return (dh_prev, dc_prev), d_pre

    (dh0, dc0), d_pre = jax.lax.scan(
        body, (d_h_last, d_c_last), (d_hs, gates, c_prev, keep), reverse=True
    )

    # Everything below is one large matmul over all T * B rows.
    rows = t_len * batch
    g_rows = d_pre.reshape(rows, 4 * n)
    h_prev = jnp.concatenate([h0[None], hs[:-1]], axis=0)
    if keep is not None:
        h_prev = h_prev * keep
    h_prev = h_prev.reshape(rows, n)
    x_rows = xs.reshape(rows, xs.shape[-1])
    enc_pre, act_vjp = jax.vjp(act, x_rows @ w.w_enc.T + _row(w.b_enc))
    (d_enc_pre,) = act_vjp(g_rows @ w.w_ih)
    grads = LSTMWeights(
        w_enc=d_enc_pre.T @ x_rows,
        b_enc=jnp.sum(d_enc_pre, axis=0),
        w_ih=g_rows.T @ enc_pre,
        w_hh=g_rows.T @ h_prev,
        b=jnp.sum(g_rows, axis=0),
    )
    d_xs = (d_enc_pre @ w.w_enc).reshape(xs.shape)
    d_keep = None if keep is None else jnp.zeros_like(keep)
    return grads, d_xs, d_keep, dh0, dc0


_lstm = jax.custom_vjp(_lstm_primal, nondiff_argnums=(0,))
_lstm.defvjp(_lstm_fwd, _lstm_bwd)


def lstm_sequence(
    act: Callable[[Array], Array],
    w: LSTMWeights,
    xs: Float[Array, "T B obs"],
    keep: Float[Array, "T B 1"] | None,
    h0: Float[Array, "B lstm"],
    c0: Float[Array, "B lstm"],
) -> tuple[Float[Array, "T B lstm"], Float[Array, "B lstm"], Float[Array, "B lstm"]]:
    """Encoder + LSTM over a time-major batch, with the fused reverse pass.

    `keep[t, b]` is `0.0` where observation `t` of environment `b` begins an episode
    (the carry is zeroed before step `t`) and `1.0` elsewhere; `None` means no episode
    starts inside the sequence. Returns the hidden state
    after every step `(T, B, H)` and the final carry.
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
