import math

import distrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import eqx_lstm_ac as lac

from .helpers import make_model


def _orthogonality_gain(w):
    """The common norm of the orthogonal rows (or columns, whichever are fewer) of w,
    after checking that they are indeed orthogonal and of equal norm."""
    w = np.asarray(w, np.float64)
    g = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
    scale = np.mean(np.diag(g))
    np.testing.assert_allclose(g, scale * np.eye(g.shape[0]), atol=1e-5 * max(scale, 1e-4))
    return math.sqrt(scale)


@pytest.mark.parametrize("sigma_head", [False, True])
def test_initialisation_as_reference(sigma_head):
    model, _ = make_model(
        observation_space_size=6,
        action_space_size=3,
        hidden_features=16,
        lstm_features=24,
        actor_sigma_head=sigma_head,
    )
    assert _orthogonality_gain(model.encoder.weight) == pytest.approx(math.sqrt(2.0), rel=1e-4)
    assert _orthogonality_gain(model.actor_mu.weight) == pytest.approx(1.0, rel=1e-4)
    assert _orthogonality_gain(model.critic.weight) == pytest.approx(0.01, rel=1e-4)
    for layer in (model.encoder, model.actor_mu, model.critic):
        assert layer.bias is not None
        assert not np.any(np.asarray(layer.bias))
    assert not np.any(np.asarray(model.cell.bias))
    if sigma_head:
        assert isinstance(model.actor_sigma, lac.SoftplusStdHead)
        head = model.actor_sigma.linear
        assert _orthogonality_gain(head.weight) == pytest.approx(0.01, rel=1e-4)
        np.testing.assert_array_equal(np.asarray(head.bias), -np.ones(3))
        # sigma = softplus(W h + b): at h = 0 this is softplus(-1)
        sigma = model.actor_sigma(jnp.zeros((2, 24)))
        np.testing.assert_allclose(sigma, np.log1p(np.exp(-1.0)) * np.ones((2, 3)), rtol=1e-6)
    else:
        assert isinstance(model.actor_sigma, lac.LogStdParameter)
        np.testing.assert_array_equal(np.asarray(model.actor_sigma.log_std), np.zeros(3))


def test_step_matches_eqx_lstmcell(getkey):
    model, _ = make_model()
    x = jax.random.normal(getkey(), (7, 5))
    h = jax.random.normal(getkey(), (7, 12))
    c = jax.random.normal(getkey(), (7, 12))
    h1, c1 = model._step(x, (h, c))
    z = jax.vmap(model.encoder)(x)
    z = jax.nn.gelu(z)
    h2, c2 = jax.vmap(model.cell)(z, (h, c))
    np.testing.assert_allclose(h1, h2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(c1, c2, rtol=1e-5, atol=1e-6)


def _random_starts(key, t, b, p=0.25):
    return jax.random.bernoulli(key, p, (t, b))


@pytest.mark.parametrize(
    "kwargs", [{}, {"action_space": lac.BoxSpace(-2.0, 1.0)}, {"discrete": True}]
)
def test_single_steps_equal_sequence_with_random_resets(getkey, kwargs):
    t_len, batch = 9, 4
    model, state = make_model(carry_shape=(batch,), **kwargs)
    xs = jax.random.normal(getkey(), (t_len, batch, 5))
    starts = _random_starts(getkey(), t_len, batch)
    # a non-zero initial carry, to check that it is used and reset where it should be
    h0 = jax.random.normal(getkey(), (batch, 12))
    c0 = jax.random.normal(getkey(), (batch, 12))
    state = model.set_carry(state, lac.LSTMCarry(h0, c0))
    steps_mu, steps_v = [], []
    for t in range(t_len):
        state = model.reset(state, xs[t].shape, mask=starts[t])
        (pi, v), state = model(xs[t], state)
        steps_mu.append(pi.logits if model.discrete else pi.loc)
        steps_v.append(v)
    (pi_seq, v_seq), carry = model.sequence(xs, carry=(h0, c0), episode_start=starts)
    seq_mu = pi_seq.logits if model.discrete else pi_seq.loc
    np.testing.assert_allclose(jnp.stack(steps_mu), seq_mu, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jnp.stack(steps_v), v_seq, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.carry(state).h, carry.h, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.carry(state).c, carry.c, rtol=1e-5, atol=1e-6)
    assert bool(starts.any())  # the draw did reset somewhere


def test_sequence_with_resets_equals_separate_episodes(getkey):
    model, _ = make_model()
    lengths = [3, 5, 1, 4]
    t_len = sum(lengths)
    xs = jax.random.normal(getkey(), (t_len, 1, 5))
    starts = np.zeros((t_len, 1), bool)
    starts[np.cumsum([0] + lengths[:-1]), 0] = True
    h0 = jax.random.normal(getkey(), (1, 12))
    (pi, v), carry = model.sequence(xs, carry=(h0, h0), episode_start=jnp.asarray(starts))
    begin = 0
    for n in lengths:
        (pi_e, v_e), carry_e = model.sequence(xs[begin : begin + n])  # from zeros
        np.testing.assert_allclose(pi.loc[begin : begin + n], pi_e.loc, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(v[begin : begin + n], v_e, rtol=1e-5, atol=1e-6)
        begin += n
    np.testing.assert_allclose(carry.h, carry_e.h, rtol=1e-5, atol=1e-6)
    # and without the resets the result differs (the test can fail)
    (pi_nr, _), _ = model.sequence(xs, carry=(h0, h0))
    assert not np.allclose(pi_nr.loc, pi.loc, atol=1e-4)


def test_sequence_starts_from_zeros_and_returns_final_carry(getkey):
    model, _ = make_model()
    xs = jax.random.normal(getkey(), (6, 3, 5))
    (_, _), carry = model.sequence(xs)
    (_, _), carry0 = model.sequence(xs, carry=model.zero_carry((3,)))
    np.testing.assert_array_equal(carry.h, carry0.h)
    (_, _), c_a = model.sequence(xs[:4])
    (_, _), c_b = model.sequence(xs[4:], carry=c_a)
    np.testing.assert_allclose(c_b.h, carry.h, rtol=1e-5, atol=1e-6)


def test_lazy_resize_and_reset_shapes(getkey):
    model, state = make_model(carry_shape=(4,))
    state = model.set_carry(state, lac.LSTMCarry(jnp.ones((4, 12)), jnp.ones((4, 12))))
    x = jax.random.normal(getkey(), (2, 3, 5))
    (_, _), state2 = model(x, state)
    assert model.carry(state2).h.shape == (2, 3, 12)
    # the resized step started from zeros, like a fresh state of that shape would
    (_, _), ref = model(x, model.init_state((2, 3)))
    np.testing.assert_array_equal(model.carry(state2).h, model.carry(ref).h)
    # reset with a new shape allocates zeros of it
    state3 = model.reset(state2, (7, 5))
    assert model.carry(state3).h.shape == (7, 12)
    assert not np.any(np.asarray(model.carry(state3).h))
    # reset with no mask zeros all; with a mask only the masked rows
    state4 = model.set_carry(state3, lac.LSTMCarry(jnp.ones((7, 12)), jnp.ones((7, 12))))
    mask = jnp.array([True, False, False, True, False, False, True])
    c = model.carry(model.reset(state4, (7, 5), mask=mask))
    np.testing.assert_array_equal(np.asarray(c.h)[:, 0], np.where(np.asarray(mask), 0.0, 1.0))
    np.testing.assert_array_equal(np.asarray(c.c)[:, 0], np.where(np.asarray(mask), 0.0, 1.0))


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.uint8])
def test_integer_reset_masks_are_truth_values(dtype):
    model, state = make_model(carry_shape=(4,))
    ones = lac.LSTMCarry(jnp.ones((4, 12)), jnp.ones((4, 12)))
    state = model.set_carry(state, ones)
    c = model.carry(model.reset(state, (4, 5), mask=jnp.array([1, 0, 1, 0], dtype)))
    np.testing.assert_array_equal(np.asarray(c.h)[:, 0], [0.0, 1.0, 0.0, 1.0])


def test_float_reset_mask_is_refused():
    model, state = make_model(carry_shape=(4,))
    with pytest.raises(ValueError, match="boolean"):
        model.reset(state, (4, 5), mask=jnp.array([1.0, 0.0, 1.0, 0.0]))


@pytest.mark.parametrize("remat", [False, True])
def test_nan_before_an_episode_start_never_survives_it(getkey, remat):
    """The carry after a reset is exactly zero, whatever came before (NaN included), in
    sequence mode as step by step."""
    model, state = make_model(carry_shape=(2,), remat=remat)
    xs = jax.random.normal(getkey(), (6, 2, 5))
    xs = xs.at[2, 0].set(jnp.nan)
    starts = jnp.zeros((6, 2), bool).at[3, 0].set(True)
    (pi, value), carry = model.sequence(xs, episode_start=starts)
    assert np.all(np.isfinite(np.asarray(value[3:, 0])))
    assert np.all(np.isfinite(np.asarray(carry.h)))
    # the same episode run alone from zeros
    (_, alone), _ = model.sequence(xs[3:, :1])
    np.testing.assert_allclose(value[3:, :1], alone, rtol=1e-5, atol=1e-6)
    for t in range(6):
        state = model.reset(state, xs[t].shape, mask=starts[t])
        (_, v), state = model(xs[t], state)
    np.testing.assert_allclose(v, value[-1], rtol=1e-5, atol=1e-6)


def test_unbatched_single_step(getkey):
    model, state = make_model()
    (pi, v), state = model(jax.random.normal(getkey(), (5,)), state)
    assert v.shape == (1,)
    assert pi.sample(seed=getkey()).shape == (3,)
    assert model.carry(state).h.shape == (12,)


def test_act_deterministic_is_bijector_of_mean(getkey):
    space = lac.BoxSpace(-1.0, 3.0)
    model, state = make_model(carry_shape=(4,), action_space=space)
    x = jax.random.normal(getkey(), (4, 5))
    (pi, _), _ = model(x, model.init_state((4,)))
    (a, lp, v), _ = model.act(x, state, key=getkey(), deterministic=True)
    np.testing.assert_allclose(a, space.forward(pi.loc), rtol=1e-6)
    np.testing.assert_allclose(lp, pi.log_prob(a), rtol=1e-5)
    (a2, _, _), _ = model.act(x, model.init_state((4,)), key=getkey())
    assert a2.shape == (4, 3)
    assert np.all((np.asarray(a2) > -1.0) & (np.asarray(a2) < 3.0))
    assert not np.allclose(a2, a)


def test_discrete_policy(getkey):
    model, state = make_model(carry_shape=(4,), discrete=True, action_space_size=5)
    assert model.bij is None and model.actor_sigma is None
    (pi, _), _ = model(jnp.zeros((4, 5)), state)
    assert isinstance(pi, distrax.Categorical)
    assert pi.logits.shape == (4, 5)
    (a, lp, v), _ = model.act(jnp.zeros((4, 5)), model.init_state((4,)), key=getkey())
    assert a.shape == (4,) and jnp.issubdtype(a.dtype, jnp.integer)
    np.testing.assert_allclose(lp, pi.log_prob(a), rtol=1e-6)
    with pytest.raises(ValueError, match="discrete"):
        make_model(discrete=True, action_space=lac.BoxSpace(0.0, 1.0))


def test_remat_same_values_and_gradients(getkey):
    model, _ = make_model()
    model_r, _ = make_model(remat=True)  # same key: same parameters
    assert model_r.remat and not model.remat
    xs = jax.random.normal(getkey(), (6, 3, 5))
    acts = jax.random.normal(getkey(), (6, 3, 3))
    starts = _random_starts(getkey(), 6, 3)

    def loss(m):
        lp, ent, v = m.evaluate(xs, acts, episode_start=starts)
        return -lp.mean() + jnp.mean(v**2) - 0.01 * ent.mean()

    l1, g1 = eqx.filter_value_and_grad(loss)(model)
    l2, g2 = eqx.filter_value_and_grad(loss)(model_r)
    assert float(l1) == pytest.approx(float(l2), rel=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_gradients_flow_through_the_carry(getkey):
    model, _ = make_model()
    xs = jax.random.normal(getkey(), (5, 2, 5))

    def last_value(m, h0):
        (_, v), _ = m.sequence(xs, carry=(h0, jnp.zeros_like(h0)))
        return v[-1].sum()

    g_h0 = jax.grad(last_value, argnums=1)(model, jnp.zeros((2, 12)))
    assert np.all(np.isfinite(np.asarray(g_h0))) and np.any(np.asarray(g_h0) != 0)
    # the recurrent weights influence the last value only through the carry
    g_model = eqx.filter_grad(last_value)(model, jnp.zeros((2, 12)))
    assert np.any(np.asarray(g_model.cell.weight_hh) != 0)


def test_jit_vmap_grad(getkey):
    model, _ = make_model()
    xs = jax.random.normal(getkey(), (4, 6, 2, 5))  # 4 independent batches of (T, B)

    def values(m, x):
        (_, v), _ = m.sequence(x)
        return v

    v_vmap = eqx.filter_jit(jax.vmap(values, in_axes=(None, 0)))(model, xs)
    for i in range(4):
        np.testing.assert_allclose(v_vmap[i], values(model, xs[i]), rtol=1e-5, atol=1e-7)

    # vmap over single steps with a per-example state
    def step(x):
        (_, v), _ = model(x, model.init_state((2,)))
        return v

    v_steps = jax.vmap(step)(xs[:, 0])
    (_, v_direct), _ = model(xs[:, 0], model.init_state((4, 2)))
    np.testing.assert_allclose(v_steps, v_direct, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "space", [None, lac.FreeSpace(), lac.BoxSpace(-1.0, 1.0), lac.MaxNormSpace(2.0)]
)
def test_tree_at_and_filter_jit_grad_with_every_space(getkey, space):
    model, _ = make_model(action_space=space)
    model2 = eqx.tree_at(lambda m: m.critic.bias, model, jnp.ones(1))
    assert float(model2.critic.bias[0]) == 1.0
    xs = jax.random.normal(getkey(), (4, 2, 5))
    acts = model.sequence(xs)[0][0].sample(seed=getkey())

    def loss(m):
        lp, ent, v = m.evaluate(xs, acts)
        return -lp.mean() - ent.mean() + jnp.mean(v**2)

    grads = eqx.filter_jit(eqx.filter_grad(loss))(model2)
    leaves = jax.tree_util.tree_leaves(grads)
    assert leaves and all(np.all(np.isfinite(np.asarray(g))) for g in leaves)
    assert np.any(np.asarray(grads.actor_mu.weight) != 0)


def test_optax_trains_values_on_a_toy_regression(getkey):
    """The value of each step should predict the running sum of the first observation
    coordinate: a target that needs memory."""
    model, _ = make_model(observation_space_size=2, hidden_features=16, lstm_features=16)
    xs = jax.random.normal(getkey(), (12, 16, 2))
    target = jnp.cumsum(xs[..., 0], axis=0) / 4.0
    opt = optax.adam(1e-2)
    opt_state = opt.init(eqx.filter(model, eqx.is_array))

    def loss_fn(m):
        (_, v), _ = m.sequence(xs)
        return jnp.mean((v[..., 0] - target) ** 2)

    @eqx.filter_jit
    def step(m, s):
        loss, g = eqx.filter_value_and_grad(loss_fn)(m)
        updates, s = opt.update(g, s, eqx.filter(m, eqx.is_array))
        return eqx.apply_updates(m, updates), s, loss

    first = float(loss_fn(model))
    # optax's adam mixes a Python float with its int32 step count, which the suite's
    # strict dtype promotion refuses; allow standard promotion for the optimizer only.
    with jax.numpy_dtype_promotion("standard"):
        for _ in range(150):
            model, opt_state, loss = step(model, opt_state)
    assert float(loss) < 0.2 * first


def test_metadata_rebuilds_the_model():
    model, _ = make_model(action_space=lac.BoxSpace(-2.0, 2.0, width=0.5), activation="tanh")
    meta = model.metadata
    assert meta["activation"] == "tanh"
    assert meta["action_space"] == {
        "type": "BoxSpace",
        "args": {"x_min": -2.0, "x_max": 2.0, "width": 0.5, "eps": 1e-6},
    }
    assert "carry_shape" not in meta
    kwargs = {k: v for k, v in meta.items() if k != "action_space"}
    rebuilt = lac.LSTMActorCritic(
        **kwargs, action_space=lac.BoxSpace(-2.0, 2.0, width=0.5), key=jax.random.key(1)
    )
    assert rebuilt.metadata == meta


def test_unknown_activation_is_refused():
    with pytest.raises(ValueError, match="not in the table"):
        make_model(activation=lambda x: x)
    with pytest.raises(ValueError, match="Unknown activation"):
        make_model(activation="swishy")
