"""The fast paths compute what the plain ones compute.

- single-step and sequence mode equal a `vmap` of `eqx.nn.LSTMCell`;
- the hand-written reverse pass of sequence mode equals `jax.grad` of a plain scan,
  for the parameters, the observations and the initial carry, with episode starts
  inside the sequence;
- `remat=True` gives the same values and gradients;
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_lstm_ac as lac
from eqx_lstm_ac import _lstm_scan

from .helpers import make_model


T, B = 6, 3
CHUNK = 5
LENGTHS = [CHUNK - 2, 2 * CHUNK, 2 * CHUNK + 3]
"""Sequence lengths for the kernel: shorter than one chunk, whole chunks, and whole
chunks after a shorter first one."""
RTOL, ATOL = 2e-5, 2e-6


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """Chunks of `CHUNK` steps at batch `B`, so that these small sequences cross chunk
    boundaries (by default a chunk has about 1024 rows: the whole sequence here)."""
    monkeypatch.setattr(_lstm_scan, "CHUNK_ROWS", CHUNK * B)
    assert _lstm_scan.chunk_steps(100, B) == CHUNK


def test_chunk_steps(monkeypatch):
    monkeypatch.setattr(_lstm_scan, "CHUNK_ROWS", 1024)
    assert _lstm_scan.chunk_steps(128, 256) == 4
    assert _lstm_scan.chunk_steps(7, 1) == 7  # never more than T
    assert _lstm_scan.chunk_steps(128, 10**6) == 2  # never one-step chunks


def _perturbed(model, key):
    """Random (not initial) weights everywhere, so no gradient is trivially zero."""
    leaves, treedef = jax.tree.flatten(eqx.filter(model, eqx.is_inexact_array))
    keys = jax.random.split(key, len(leaves))
    leaves = [
        leaf + 0.3 * jax.random.normal(k, leaf.shape, leaf.dtype)
        for leaf, k in zip(leaves, keys, strict=True)
    ]
    return eqx.combine(jax.tree.unflatten(treedef, leaves), model)


def _inputs(key, model, t_len=T):
    k_x, k_s, k_h, k_c, k_a = jax.random.split(key, 5)
    xs = jax.random.normal(k_x, (t_len, B, model.obs_dim))
    starts = jax.random.bernoulli(k_s, 0.3, (t_len, B))
    carry = lac.LSTMCarry(
        jax.random.normal(k_h, (B, model.lstm_features)),
        jax.random.normal(k_c, (B, model.lstm_features)),
    )
    actions = jax.random.normal(k_a, (t_len, B, model.action_dim))
    return xs, starts, carry, actions


@eqx.filter_jit
def _reference_features(model, xs, carry, starts):
    """The plain scan: encoder, then `jax.vmap(model.cell)`, resets by `jnp.where`."""
    act = lac.ACTIVATIONS[model.activation]

    def body(hc, inp):
        x, start = inp
        keep = ~start[:, None]
        h, c = jnp.where(keep, hc[0], 0.0), jnp.where(keep, hc[1], 0.0)
        z = act(jax.vmap(model.encoder)(x))
        h, c = jax.vmap(model.cell)(z, (h, c))
        return (h, c), h

    (h, c), hs = jax.lax.scan(body, (carry.h, carry.c), (xs, starts))
    return hs, lac.LSTMCarry(h, c)


@eqx.filter_jit
def _sequence(model, xs, carry, starts):
    (pi, value), last = model.sequence(xs, carry, starts)
    return pi.loc, value, last


@eqx.filter_jit
def _reference(model, xs, carry, starts):
    hs, last = _reference_features(model, xs, carry, starts)
    pi, value = model.heads(hs)
    return pi.loc, value, last


def _close(a, b):
    """Equal to float32 precision, relative to the scale of the array (sums of many
    terms in another order differ in their last bits)."""
    a, b = np.asarray(a), np.asarray(b)
    scale = float(np.max(np.abs(b))) if b.size else 0.0
    np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL + RTOL * scale)


def _loss_terms(pi, value, carry, actions):
    return (
        jnp.sum(pi.log_prob(actions))
        + jnp.sum(jnp.sin(value))
        + jnp.sum(carry.h**2)
        + jnp.sum(jnp.cos(carry.c))
    )


def _ours_loss(model, xs, carry, starts, actions):
    (pi, value), last = model.sequence(xs, carry, starts)
    return _loss_terms(pi, value, last, actions)


def _reference_loss(model, xs, carry, starts, actions):
    hs, last = _reference_features(model, xs, carry, starts)
    pi, value = model.heads(hs)
    return _loss_terms(pi, value, last, actions)


@eqx.filter_jit
def _grads(loss, model, xs, carry, starts, actions):
    """Gradients w.r.t. the parameters, the observations and the initial carry."""
    params = eqx.filter(model, eqx.is_inexact_array)
    return jax.grad(
        lambda p, x, c: loss(eqx.combine(p, model), x, c, starts, actions), argnums=(0, 1, 2)
    )(params, xs, carry)


@pytest.mark.parametrize("t_len", LENGTHS)
def test_sequence_equals_vmapped_cell(getkey, t_len):
    model, _ = make_model(activation="tanh")
    model = _perturbed(model, getkey())
    xs, starts, carry, _ = _inputs(getkey(), model, t_len)
    for s in (starts, None):
        loc, value, last = _sequence(model, xs, carry, s)
        s_ref = jnp.zeros((t_len, B), bool) if s is None else s
        loc_ref, value_ref, last_ref = _reference(model, xs, carry, s_ref)
        _close(value, value_ref)
        _close(loc, loc_ref)
        _close(last.h, last_ref.h)
        _close(last.c, last_ref.c)


def test_single_step_equals_cell(getkey):
    model, state = make_model(carry_shape=(B,))
    model = _perturbed(model, getkey())
    xs, _, carry, _ = _inputs(getkey(), model)
    state = model.set_carry(state, carry)
    h, c = carry

    @eqx.filter_jit
    def step(model, x, state):
        (_, value), state = model(x, state)
        return value, state

    for x in xs:
        value, state = step(model, x, state)
        z = jax.nn.gelu(jax.vmap(model.encoder)(x))
        h, c = jax.vmap(model.cell)(z, (h, c))
        _close(model.carry(state).h, h)
        _close(model.carry(state).c, c)
        _close(value, jax.vmap(model.critic)(h))


@pytest.mark.parametrize(
    ("remat", "t_len", "heads"),
    [(False, t, "sigma_head") for t in LENGTHS]
    + [(False, LENGTHS[-1], "log_std"), (False, LENGTHS[-1], "discrete")]
    + [(True, LENGTHS[-1], "sigma_head")],
)
def test_gradients_equal_plain_scan(getkey, remat, t_len, heads):
    """Every gradient, with the heads read out inside the kernel: policy mean or
    logits, value and (with `sigma_head`) the state-dependent standard deviation."""
    model, _ = make_model(
        remat=remat, actor_sigma_head=heads == "sigma_head", discrete=heads == "discrete"
    )
    model = _perturbed(model, getkey())
    xs, starts, carry, actions = _inputs(getkey(), model, t_len)
    if heads == "discrete":
        actions = jax.random.randint(getkey(), (t_len, B), 0, model.action_dim)
    starts = starts.at[0, 0].set(True).at[0, 1].set(False)  # one reset at t = 0, one not
    got = _grads(_ours_loss, model, xs, carry, starts, actions)
    want = _grads(_reference_loss, model, xs, carry, starts, actions)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert g.shape == w.shape
        _close(g, w)
    d_carry = got[2]
    # The carry of environment 0 is reset before step 0: it gets no gradient.
    assert np.all(np.asarray(d_carry.h[0]) == 0.0)
    assert np.any(np.asarray(d_carry.h[1]) != 0.0)


def test_float64_gradients_equal_plain_scan(getkey):
    """In float64 the reverse pass agrees with the plain scan to float64 precision, far
    tighter than the float32 tests can check (and the default carry takes the model's
    dtype)."""
    with jax.enable_x64(True):
        model, _ = make_model(actor_sigma_head=True)
        model = _perturbed(model, getkey())
        model = jax.tree.map(
            lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, model
        )
        xs, starts, carry, actions = _inputs(getkey(), model, LENGTHS[-1])
        assert xs.dtype == jnp.float64 and carry.h.dtype == jnp.float64
        got = _grads(_ours_loss, model, xs, carry, starts, actions)
        want = _grads(_reference_loss, model, xs, carry, starts, actions)
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            assert g.dtype == jnp.float64
            scale = float(np.max(np.abs(np.asarray(w))))
            np.testing.assert_allclose(g, w, rtol=1e-11, atol=1e-12 * scale)
        (pi, _), last = model.sequence(xs)  # no carry given: zeros of the model's dtype
        assert pi.loc.dtype == jnp.float64 and last.h.dtype == jnp.float64


@pytest.mark.parametrize("used", ["outputs", "carry"])
def test_gradients_of_part_of_the_outputs(getkey, used):
    """A loss of the per-step outputs only, or of the last carry only: the unused
    cotangents reach the reverse pass as symbolic zeros and must count as zeros."""
    model, _ = make_model()
    model = _perturbed(model, getkey())
    xs, starts, carry, actions = _inputs(getkey(), model, LENGTHS[-1])

    def part(full):
        def loss(model, xs, carry, starts, actions):
            (pi, value), last = full(model, xs, carry, starts)
            if used == "outputs":
                return jnp.sum(pi.log_prob(actions)) + jnp.sum(jnp.sin(value))
            return jnp.sum(last.h**2) + jnp.sum(jnp.cos(last.c))

        return loss

    def ours(model, xs, carry, starts):
        return model.sequence(xs, carry, starts)

    def reference(model, xs, carry, starts):
        hs, last = _reference_features(model, xs, carry, starts)
        return model.heads(hs), last

    got = _grads(part(ours), model, xs, carry, starts, actions)
    want = _grads(part(reference), model, xs, carry, starts, actions)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        _close(g, w)
    d_critic = got[0].critic.weight
    # The value head gets a gradient only from a loss of the outputs.
    assert np.any(np.asarray(d_critic) != 0.0) == (used == "outputs")


def test_remat_same_values(getkey):
    k = getkey()
    model = _perturbed(make_model()[0], k)
    remat = _perturbed(make_model(remat=True)[0], k)
    xs, starts, carry, actions = _inputs(getkey(), model)
    _, value, last = _sequence(model, xs, carry, starts)
    _, value_r, last_r = _sequence(remat, xs, carry, starts)
    _close(value, value_r)
    _close(last.h, last_r.h)
    g = _grads(_ours_loss, model, xs, carry, starts, actions)
    g_r = _grads(_ours_loss, remat, xs, carry, starts, actions)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_r), strict=True):
        _close(a, b)


def test_jit_and_vmap_of_sequence(getkey):
    """The custom reverse pass composes with jit and vmap (e.g. over seeds)."""
    model, _ = make_model()
    xs, starts, carry, actions = _inputs(getkey(), model)
    loss = eqx.filter_jit(eqx.filter_grad(_ours_loss))
    g = loss(model, xs, carry, starts, actions)
    xs2 = jnp.stack([xs, xs + 1.0])
    g2 = jax.vmap(lambda x: loss(model, x, carry, starts, actions))(xs2)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g2), strict=True):
        _close(a, b[0])


@pytest.mark.parametrize("kind", ["lstm", "lstm_discrete", "mlp"])
def test_actor_equals_act_and_reset(getkey, kind):
    """`Actor` is `act` and `reset` with the model split once: the same outputs."""
    if kind == "mlp":
        model = lac.MLPActorCritic(
            observation_space_size=5, action_space_size=3, hidden_features=8, key=getkey()
        )
        state = model.init_state((B,))
    else:
        model, state = make_model(carry_shape=(B,), discrete=kind == "lstm_discrete")
        model = _perturbed(model, getkey())
    actor = lac.Actor(model)
    xs = jax.random.normal(getkey(), (T, B, model.obs_dim))
    starts = jax.random.bernoulli(getkey(), 0.3, (T, B))
    st_a, st_b = state, state
    for t in range(T):
        key = getkey()
        for det in (False, True):
            out_a, _ = model.act(xs[t], st_a, key=key, deterministic=det)
            out_b, _ = actor(xs[t], st_b, key=key, deterministic=det)
            for a, b in zip(out_a, out_b, strict=True):
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        _, st_a = model.act(xs[t], st_a, key=key)
        _, st_b = actor(xs[t], st_b, key=key)
        st_a = model.reset(st_a, xs[t].shape, mask=starts[t])
        st_b = actor.reset(st_b, xs[t].shape, mask=starts[t])
        for a, b in zip(jax.tree.leaves(st_a), jax.tree.leaves(st_b), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    if kind == "lstm":
        # The carry really advanced and some of it was reset (the check is not vacuous).
        assert np.any(np.asarray(model.carry(st_b).h) != 0.0)
        assert np.all(np.asarray(model.carry(actor.reset(st_b, xs[0].shape)).h) == 0.0)
    with pytest.raises(ValueError, match="obs|observation"):
        actor(jnp.zeros((B, model.obs_dim + 1)), st_b, key=getkey())
