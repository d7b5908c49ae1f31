"""Checks that need several devices: run by `tests/test_parallel.py` in a subprocess with
`XLA_FLAGS=--xla_force_host_platform_device_count=4`, so that the rest of the suite keeps
one device. The name does not match `test_*.py`, so pytest collects it only when asked:

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python -m pytest tests/parallel_checks.py

`tests/conftest.py` (strict promotion) and the jaxtyping hook of `pyproject.toml` apply
as in the main suite.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import eqx_lstm_ac as lac

from .helpers import make_model


NUM_DEVICES = 4
T, B = 6, 8

if jax.device_count() < NUM_DEVICES:
    raise RuntimeError(
        f"parallel_checks.py needs {NUM_DEVICES} devices, found {jax.device_count()}; run it "
        f"with XLA_FLAGS=--xla_force_host_platform_device_count={NUM_DEVICES} "
        "(tests/test_parallel.py does)."
    )


@pytest.fixture(scope="module")
def mesh():
    return lac.data_mesh(NUM_DEVICES)


@pytest.fixture(scope="module")
def model():
    """One model for the module: building one compiles its initialisers (slow on a
    loaded 2-core machine)."""
    return make_model(action_space=lac.BoxSpace(-1.0, 1.0))[0]


def spec_of(x):
    assert isinstance(x.sharding, NamedSharding), x.sharding
    return x.sharding.spec


def data(seed):
    """Test data from NumPy (jax.random would compile a kernel for every shape)."""
    rng = np.random.default_rng(seed)

    def normal(*shape, scale=1.0):
        return jnp.asarray(scale * rng.standard_normal(shape), jnp.float32)

    def uniform(*shape, low=-0.9, high=0.9):
        return jnp.asarray(rng.uniform(low, high, shape), jnp.float32)

    def bernoulli(p, *shape):
        return jnp.asarray(rng.uniform(size=shape) < p)

    return normal, uniform, bernoulli


def assert_split(x, axis):
    """`x` is split along `axis` over the `data` axis: each device holds 1/4 of it."""
    assert spec_of(x) == P(*([None] * axis), "data"), x.sharding
    shard_shapes = {s.data.shape for s in x.addressable_shards}
    want = list(x.shape)
    want[axis] //= NUM_DEVICES
    assert shard_shapes == {tuple(want)}, shard_shapes


@eqx.filter_jit
def step(model, x, state):
    """The single step, compiled; the policy as its mean (loc)."""
    (pi, v), state = model(x, state)
    return (pi.loc, v), state


@eqx.filter_jit
def sequence(model, xs, carry=None, starts=None):
    """Sequence mode, compiled; the policy as its mean (loc)."""
    (pi, v), carry = model.sequence(xs, carry, starts)
    return (pi.loc, v), carry


def assert_replicated(x):
    assert x.sharding.is_fully_replicated, x.sharding
    assert len(x.sharding.device_set) == NUM_DEVICES


# ---------------------------------------------------------------------- helpers


def test_data_mesh():
    mesh = lac.data_mesh()
    assert mesh.axis_names == ("data",) and mesh.shape["data"] == NUM_DEVICES
    assert lac.data_mesh(2).shape["data"] == 2
    assert lac.data_mesh(jax.devices()[1:3]).devices.tolist() == jax.devices()[1:3]
    with pytest.raises(ValueError, match="between 1 and the number of devices"):
        lac.data_mesh(NUM_DEVICES + 1)
    with pytest.raises(ValueError, match="between 1"):
        lac.data_mesh(0)


def test_divisibility_errors(mesh):
    assert lac.check_num_envs(8, mesh) == 2
    with pytest.raises(ValueError, match=r"environments \(6\) must divide by the number of"):
        lac.check_num_envs(6, mesh)
    with pytest.raises(ValueError, match="must divide by the number of devices"):
        lac.shard_batch(jnp.zeros((6, 3)), mesh)
    with pytest.raises(ValueError, match="no batch axis 1"):
        lac.shard_batch({"x": jnp.zeros((8,))}, mesh, axis=1)
    grad_fn = lac.data_parallel_grad(lambda m, b: jnp.sum(m * b), mesh)
    with pytest.raises(ValueError, match="must divide by the number of devices"):
        grad_fn(jnp.ones(()), jnp.ones((6,)))


def test_shard_replicate_and_process_local(mesh):
    tree = {"xs": jnp.arange(T * B * 2.0).reshape(T, B, 2), "c": jnp.ones((B, 3)), "n": 3}
    sharded = lac.shard_batch(tree, mesh, axis={"xs": 1, "c": 0, "n": 0})
    assert_split(sharded["xs"], 1)
    assert_split(sharded["c"], 0)
    assert sharded["n"] == 3
    np.testing.assert_array_equal(sharded["xs"], tree["xs"])
    rep = lac.replicate({"w": jnp.ones((3, 2)), "s": "static"}, mesh)
    assert_replicated(rep["w"])
    # One process: it owns every environment, and its local batch is the global one.
    assert jax.process_count() == 1
    assert lac.process_slice(B, mesh) == slice(0, B)
    local = lac.shard_local_batch({"xs": np.asarray(tree["xs"])}, mesh, axis=1)
    assert_split(local["xs"], 1)
    np.testing.assert_array_equal(local["xs"], tree["xs"])


# ---------------------------------------------------------------------- inference


def test_single_step_keeps_sharding(mesh, model):
    normal, _, _ = data(0)
    state = model.init_state((B,))
    x = normal(B, 5)
    mask = jnp.arange(B) % 3 == 0
    # The same steps on one device, for the values.
    (_, v1), s1 = step(model, x, model.init_state((B,)))
    (a1, lp1, _), s1 = model.act(x, s1, key=jax.random.key(7))
    s1 = model.reset(s1, x.shape, mask=mask)

    state = lac.shard_batch(state, mesh)
    assert_split(model.carry(state).h, 0)
    xs, mask_s = lac.shard_batch((x, mask), mesh)
    (loc, v), state = step(model, xs, state)
    assert_split(v, 0)
    assert_split(loc, 0)
    np.testing.assert_allclose(v, v1, rtol=1e-5, atol=1e-6)
    (a, lp, val), state = model.act(xs, state, key=jax.random.key(7))
    for out in (a, lp, val, model.carry(state).h, model.carry(state).c):
        assert_split(out, 0)
    np.testing.assert_allclose(lp, lp1, rtol=1e-5, atol=1e-5)
    state = model.reset(state, xs.shape, mask=mask_s)
    assert_split(model.carry(state).h, 0)
    np.testing.assert_allclose(model.carry(state).h, model.carry(s1).h, rtol=1e-5, atol=1e-6)
    state = model.reset(state, xs.shape)  # no mask: all zeros, still split
    assert_split(model.carry(state).c, 0)
    assert not np.any(np.asarray(model.carry(state).c))


def test_single_step_batch_axis_not_first(mesh, model):
    # Observations (2, B, obs) split along axis 1: no flattening, so no gather.
    normal, _, _ = data(1)
    x = lac.shard_batch(normal(2, B, 5), mesh, axis=1)
    state = lac.shard_batch(model.init_state((2, B)), mesh, axis=1)

    (_, v), state2 = step(model, x, state)
    assert_split(v, 1)
    assert_split(model.carry(state2).h, 1)
    hlo = jax.jit(lambda x, s: step(model, x, s)).lower(x, state).compile().as_text()
    assert "all-gather" not in hlo and "all-to-all" not in hlo


def test_sequence_and_evaluate_keep_sharding(mesh, model):
    normal, uniform, bernoulli = data(2)
    xs, starts = normal(T, B, 5), bernoulli(0.2, T, B)
    c0 = lac.LSTMCarry(normal(B, 12), normal(B, 12))
    actions = uniform(T, B, 3)
    want = model.evaluate(xs, actions, c0, starts)
    (_, want_v), want_c = sequence(model, xs, c0, starts)

    xs_s, actions_s, starts_s = lac.shard_batch((xs, actions, starts), mesh, axis=1)
    c0_s = lac.shard_batch(c0, mesh)
    (loc, v), carry = sequence(model, xs_s, c0_s, starts_s)
    assert_split(v, 1)
    assert_split(loc, 1)
    assert_split(carry.h, 0)
    assert_split(carry.c, 0)
    np.testing.assert_allclose(v, want_v, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(carry.h, want_c.h, rtol=1e-5, atol=1e-6)
    (_, v), carry = sequence(model, xs_s)  # zero carry made inside: still split
    assert_split(v, 1)
    assert_split(carry.h, 0)
    got = model.evaluate(xs_s, actions_s, c0_s, starts_s)
    for g, w in zip(got, want, strict=True):
        assert_split(g, 1)
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------- training


AXES = {"xs": 1, "actions": 1, "c0": 0, "starts": 1, "old_lp": 1, "adv": 1, "returns": 1}


def ppo_like_loss(model, b, mean):
    """Clipped policy loss with normalised advantages, value MSE, entropy bonus; `mean`
    averages over the whole (global) batch."""
    lp, ent, v = model.evaluate(b["xs"], b["actions"], b["c0"], b["starts"])
    adv_mean = mean(b["adv"])
    adv = (b["adv"] - adv_mean) / (jnp.sqrt(mean(jnp.square(b["adv"] - adv_mean))) + 1e-8)
    ratio = jnp.exp(lp - b["old_lp"])
    pg = -mean(jnp.minimum(ratio * adv, jnp.clip(ratio, 0.8, 1.2) * adv))
    vf = mean(jnp.square(v - b["returns"]))
    return pg + 0.5 * vf - 0.01 * mean(ent), vf


def global_mean(x):
    return jax.lax.pmean(jnp.mean(x), lac.DATA_AXIS)


def make_batch(model):
    normal, uniform, bernoulli = data(3)
    xs, starts = normal(T, B, 5), bernoulli(0.2, T, B)
    c0 = lac.LSTMCarry(normal(B, 12, scale=0.3), normal(B, 12, scale=0.3))
    actions = uniform(T, B, 3)
    lp, _, _ = model.evaluate(xs, actions, c0, starts)
    return {
        "xs": xs,
        "actions": actions,
        "c0": c0,
        "starts": starts,
        "old_lp": lp + normal(T, B, scale=0.1),
        "adv": normal(T, B),
        "returns": normal(T, B),
    }


def run_updates(grad_fn, model, batch, place, steps=2):
    """`steps` optax updates. `place` puts the model and the optimizer state where they
    live (replicated for several devices) *before* the first step, so that the second
    step sees the same input placement as the first and does not compile again."""
    opt = optax.chain(optax.clip_by_global_norm(0.5), optax.adam(3e-3))
    model, opt_state = place((model, opt.init(eqx.filter(model, eqx.is_array))))

    @eqx.filter_jit
    def update(model, opt_state, batch):
        (loss, vf), grads = grad_fn(model, batch)
        # optax's bias correction raises an int32 step count to a float power, which
        # strict dtype promotion (tests/conftest.py) refuses.
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = opt.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state, loss, vf, grads

    losses, grads = [], None
    for _ in range(steps):
        model, opt_state, loss, vf, grads = update(model, opt_state, batch)
        losses.append((loss, vf))
    return model, opt_state, losses, grads


def test_update_on_4_devices_equals_1_device(mesh, model):
    batch = make_batch(model)

    # Reference: the plain single-device update, no shard_map.
    def plain_loss(m, b):
        return ppo_like_loss(m, b, jnp.mean)

    one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def on_one_device(tree):
        return jtu.tree_map(lambda x: jax.device_put(x, one_device) if eqx.is_array(x) else x, tree)

    ref = run_updates(
        eqx.filter_value_and_grad(plain_loss, has_aux=True), model, batch, on_one_device
    )

    def dp_loss(m, b):
        return ppo_like_loss(m, b, global_mean)

    mesh1 = lac.data_mesh(1)
    one = run_updates(
        lac.data_parallel_grad(dp_loss, mesh1, batch_axis=AXES, has_aux=True),
        model,
        lac.shard_batch(batch, mesh1, axis=AXES),
        lambda tree: lac.replicate(tree, mesh1),
    )
    grad_fn = lac.data_parallel_grad(dp_loss, mesh, batch_axis=AXES, has_aux=True)
    batch4 = lac.shard_batch(batch, mesh, axis=AXES)
    assert_split(batch4["c0"].h, 0)
    assert_split(batch4["xs"], 1)
    four = run_updates(grad_fn, model, batch4, lambda tree: lac.replicate(tree, mesh))

    for name, (m, opt_state, losses, grads) in {"1 device": one, "4 devices": four}.items():
        for (loss, vf), (ref_loss, ref_vf) in zip(losses, ref[2], strict=True):
            np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, err_msg=name)
            np.testing.assert_allclose(vf, ref_vf, rtol=1e-5, err_msg=name)
        leaves = jtu.tree_leaves(eqx.filter((m, opt_state, grads), eqx.is_array))
        ref_leaves = jtu.tree_leaves(eqx.filter((ref[0], ref[1], ref[3]), eqx.is_array))
        assert len(leaves) == len(ref_leaves) > 0
        for x, y in zip(leaves, ref_leaves, strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6, err_msg=name)
    # Parameters, optimizer state and gradients stay replicated on the 4 devices.
    for x in jtu.tree_leaves(eqx.filter((four[0], four[1], four[3]), eqx.is_inexact_array)):
        assert_replicated(x)
    # The update changed the model (the comparison is not trivially between equals).
    assert not np.allclose(four[0].cell.weight_hh, model.cell.weight_hh)


def test_ppo_train_step_on_4_devices_equals_1_device():
    """Two PPO updates (rollout, GAE, epochs of minibatches) with the environments split
    over 4 devices equal the same updates on 1 device, and the per-environment state,
    the carry included, stays split along `data`."""
    env = lac.MemoryTask(delay=3)
    config = lac.PPOConfig(
        num_envs=8,
        num_steps=6,
        total_steps=96,
        num_epochs=2,
        num_minibatches=2,
        lr_schedule="constant",
    )
    ppo = lac.PPO(config, env)
    model = lac.make_model(env, "lstm", hidden_features=8, features=8, key=jax.random.key(0))
    ts0 = ppo.init(model, key=jax.random.key(1))
    one = lac.shard_train_state(ts0, 1)
    four = lac.shard_train_state(ts0, NUM_DEVICES)
    assert_split(four.obs, 0)
    for _ in range(2):
        one, m1 = ppo.train_step(one)
        four, m4 = ppo.train_step(four)
    assert float(m1["first_ratio"]) == pytest.approx(1.0, abs=1e-5)
    for name in ("policy_loss", "value_loss", "entropy"):
        if name in m1:
            assert float(m4[name]) == pytest.approx(float(m1[name]), rel=1e-4, abs=1e-6)
    p1 = jtu.tree_leaves(eqx.filter(one.model, eqx.is_array))
    p4 = jtu.tree_leaves(eqx.filter(four.model, eqx.is_array))
    for a, b in zip(p1, p4, strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6)
    # the parameters moved, so the comparison is not of two untouched models
    p0 = jtu.tree_leaves(eqx.filter(ts0.model, eqx.is_array))
    assert any(not np.allclose(np.asarray(a), np.asarray(b)) for a, b in zip(p0, p1, strict=True))
    np.testing.assert_allclose(np.asarray(four.obs), np.asarray(one.obs), rtol=1e-5, atol=1e-6)
    # the normalisers: the moments of the whole batch on every device
    assert one.model.obs_norm is not None and four.model.obs_norm is not None
    assert float(four.model.obs_norm.count) == float(one.model.obs_norm.count) == 2 * 8 * 6
    for a, b in [
        (one.model.obs_norm.mean, four.model.obs_norm.mean),
        (one.model.obs_norm.var, four.model.obs_norm.var),
        (one.return_moments.var, four.return_moments.var),
        (one.discounted_return, four.discounted_return),
    ]:
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)
    assert_split(four.discounted_return, 0)
    assert_split(four.obs, 0)
    assert_split(four.episode_return, 0)
    carry = four.model.carry(four.model_state)
    assert_split(carry.h, 0)
    assert_split(carry.c, 0)


def test_shard_train_state_refuses_indivisible_envs():
    env = lac.MemoryTask(delay=3)
    config = lac.PPOConfig(num_envs=6, num_steps=4, total_steps=24, num_minibatches=2)
    ppo = lac.PPO(config, env)
    model = lac.make_model(env, "lstm", hidden_features=8, features=8, key=jax.random.key(0))
    ts = ppo.init(model, key=jax.random.key(1))
    with pytest.raises(ValueError, match="6"):
        lac.shard_train_state(ts, NUM_DEVICES)
