import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_lstm_ac as lac


BOXES = [lac.BoxSpace(-1.0, 1.0), lac.BoxSpace(-3.0, 0.5, width=2.0), lac.BoxSpace(0.0, 10.0, 0.3)]
BALLS = [lac.MaxNormSpace(1.0), lac.MaxNormSpace(2.5)]


def _box_xs(space):
    # near 0, moderate, and far enough out that tanh is within 1e-5 of the bound
    z = np.array([0.0, 1e-7, -1e-4, 0.3, -1.0, 2.0, -3.0, 5.0, -6.0])
    return z * space.width


def _ball_xs(dim):
    rng = np.random.default_rng(0)
    dirs = rng.normal(size=(8, dim))
    dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
    norms = np.array([0.0, 1e-6, 1e-3, 0.1, 0.9, 2.0, 4.0, 6.0])
    return dirs * norms[:, None]


@pytest.mark.parametrize("space", BOXES)
def test_box_round_trip(space):
    # y -> x -> y across the whole box, including within 1e-5 of either bound
    u = np.array([-1 + 1e-5, -0.999, -0.5, 0.0, 1e-6, 0.3, 0.99, 1 - 1e-5])
    y = jnp.asarray(space.center + space.half * u, jnp.float32)
    x = space.inverse(y)
    np.testing.assert_allclose(space.forward(x), y, rtol=1e-6, atol=2e-6 * space.half)
    # x -> y -> x where float32 can represent tanh(x / w) away from 1
    xs = jnp.asarray(_box_xs(space)[:7], jnp.float32)
    np.testing.assert_allclose(space.inverse(space.forward(xs)), xs, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("space", BALLS)
@pytest.mark.parametrize("dim", [1, 2, 3])
def test_max_norm_round_trip(space, dim):
    x = jnp.asarray(_ball_xs(dim)[:6], jnp.float32)
    y = space.forward(x)
    assert np.all(np.linalg.norm(np.asarray(y), axis=-1) < space.max_norm)
    np.testing.assert_allclose(space.inverse(y), x, rtol=1e-4, atol=1e-6)
    # y -> x -> y up to within 1e-5 of the boundary
    y2 = jnp.asarray(_ball_xs(dim) / 6.0 * space.max_norm * (1 - 1e-5), jnp.float32)
    np.testing.assert_allclose(space.forward(space.inverse(y2)), y2, rtol=1e-5, atol=1e-6)


def _reference_log_det(forward, x):
    jac = jax.jacfwd(forward)(x)
    if jac.ndim == 0:
        return jnp.log(jnp.abs(jac))
    return jnp.linalg.slogdet(jac)[1]


@pytest.mark.parametrize("space", BOXES)
def test_box_log_det_matches_jacobian(space):
    with jax.enable_x64(True):
        xs = jnp.asarray(_box_xs(space), jnp.float64)
        ref = jnp.stack([_reference_log_det(space.forward, x) for x in xs])
        ours64 = space.forward_log_det_jacobian(xs)
        np.testing.assert_allclose(ours64, ref, rtol=1e-10, atol=1e-10)
        ref = np.asarray(ref)
    ours32 = space.forward_log_det_jacobian(jnp.asarray(_box_xs(space), jnp.float32))
    np.testing.assert_allclose(ours32, ref, rtol=1e-5, atol=1e-5)
    # the inverse's log-det is minus the forward's at the pre-image
    y = space.forward(jnp.asarray(_box_xs(space)[:7], jnp.float32))
    np.testing.assert_allclose(
        space.inverse_log_det_jacobian(y), -np.asarray(ref[:7]), rtol=1e-4, atol=1e-4
    )


@pytest.mark.parametrize("space", BALLS)
@pytest.mark.parametrize("dim", [1, 2, 4])
def test_max_norm_log_det_matches_jacobian(space, dim):
    with jax.enable_x64(True):
        xs = jnp.asarray(_ball_xs(dim), jnp.float64)
        ref = jnp.stack([_reference_log_det(space.forward, x) for x in xs])
        ours64 = space.forward_log_det_jacobian(xs)
        np.testing.assert_allclose(ours64, ref, rtol=1e-8, atol=1e-8)
        ref = np.asarray(ref)
    ours32 = space.forward_log_det_jacobian(jnp.asarray(_ball_xs(dim), jnp.float32))
    np.testing.assert_allclose(ours32, ref, rtol=1e-5, atol=2e-5)
    x = jnp.asarray(_ball_xs(dim)[:6], jnp.float32)
    np.testing.assert_allclose(
        space.inverse_log_det_jacobian(space.forward(x)), -ref[:6], rtol=1e-4, atol=1e-4
    )


def test_max_norm_gradient_finite_at_zero():
    space = lac.MaxNormSpace(1.0)
    g = jax.grad(lambda x: space.forward(x).sum() + space.forward_log_det_jacobian(x))(jnp.zeros(3))
    assert np.all(np.isfinite(np.asarray(g)))
    np.testing.assert_allclose(g, np.ones(3), atol=1e-6)  # d y_i / d x_i = m at 0


def test_free_space_is_identity():
    space = lac.FreeSpace()
    x = jnp.array([-3.0, 0.0, 2.5])
    np.testing.assert_array_equal(space.forward(x), x)
    np.testing.assert_array_equal(space.inverse(x), x)
    np.testing.assert_array_equal(space.forward_log_det_jacobian(x), np.zeros(3))
    assert space.is_constant_jacobian


@pytest.mark.parametrize("bounds", [(1.0, 1.0), (2.0, -1.0)])
def test_box_bad_bounds(bounds):
    with pytest.raises(ValueError, match="x_min < x_max"):
        lac.BoxSpace(*bounds)


def test_other_bad_parameters():
    with pytest.raises(ValueError, match="width"):
        lac.BoxSpace(0.0, 1.0, width=0.0)
    with pytest.raises(ValueError, match="eps"):
        lac.BoxSpace(0.0, 1.0, eps=1.0)
    with pytest.raises(ValueError, match="max_norm"):
        lac.MaxNormSpace(-1.0)


def test_spaces_have_no_array_leaves_and_compare_by_value():
    for space in BOXES + BALLS + [lac.FreeSpace()]:
        assert jax.tree_util.tree_leaves(space) == []
        rebuilt = type(space)(**space.config())
        assert rebuilt == space and hash(rebuilt) == hash(space)
    assert lac.BoxSpace(-1.0, 1.0) != lac.BoxSpace(-1.0, 2.0)


def test_box_bounds_per_coordinate():
    space = lac.BoxSpace([-1.0, 0.0, 5.0], np.array([1.0, 0.5, 9.0]))
    assert space.size == 3 and space.x_min == (-1.0, 0.0, 5.0)
    lo, hi = np.array(space.x_min), np.array(space.x_max)
    lifted = lac.LSTMActorCritic(4, 3, 8, 8, action_space=space, key=jax.random.key(0)).bij
    x = jnp.asarray(np.linspace(-30, 30, 60, dtype=np.float32).reshape(20, 3))
    y = np.asarray(lifted.forward(x))
    assert np.all(y >= lo) and np.all(y <= hi)
    # each coordinate is its own box
    for i in range(3):
        one = lac.BoxSpace(space.x_min[i], space.x_max[i])
        np.testing.assert_allclose(y[:, i], np.asarray(one.forward(x[:, i])), rtol=1e-6)
    inner = jnp.asarray(lo + (hi - lo) * np.array([0.1, 0.5, 0.9]), jnp.float32)[None]
    np.testing.assert_allclose(lifted.forward(lifted.inverse(inner)), inner, rtol=1e-5)


def test_box_bounds_per_coordinate_are_checked():
    with pytest.raises(ValueError, match="one length"):
        lac.BoxSpace([0.0, 0.0], [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="x_min < x_max"):
        lac.BoxSpace([0.0, 2.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="1-D"):
        lac.BoxSpace(np.zeros((2, 2)), 1.0)
    with pytest.raises(ValueError, match="finite"):
        lac.BoxSpace([0.0, -np.inf], 1.0)
    with pytest.raises(ValueError, match="3 coordinates"):
        lac.LSTMActorCritic(4, 2, action_space=lac.BoxSpace([0.0] * 3, 1.0), key=jax.random.key(0))


def test_box_bounds_per_coordinate_survive_transformations_and_checkpoints(tmp_path):
    import equinox as eqx

    space = lac.BoxSpace([-2.0, 0.0], [2.0, 0.1])
    model = lac.MLPActorCritic(3, 2, 8, 8, action_space=space, key=jax.random.key(0))
    assert jax.tree.leaves(space) == []  # no arrays: nothing for grad, jit or tree_at
    moved = eqx.tree_at(lambda m: m.critic.bias, model, model.critic.bias + 1.0)
    assert moved.action_space == space

    @eqx.filter_jit
    @eqx.filter_grad
    def grad(m, x):
        (pi, value), _ = m(x, m.init_state((4,)))
        return jnp.sum(pi.log_prob(jnp.full((4, 2), 0.05))) + jnp.sum(value)

    g = grad(model, jnp.ones((4, 3)))
    assert np.isfinite(np.asarray(g.actor_mu.weight)).all()
    lac.save(tmp_path / "m.eqx", model)
    loaded = lac.load(tmp_path / "m.eqx")
    assert loaded.action_space == space and loaded.action_space.x_max == (2.0, 0.1)
    assert lac.read_header(tmp_path / "m.eqx")["metadata"]["action_space"]["args"]["x_max"] == [
        2.0,
        0.1,
    ]


@pytest.mark.parametrize(
    "space", [lac.BoxSpace(0.1, 0.7), lac.BoxSpace([-1e-3, 3.0], [7e-3, 3.3]), lac.BoxSpace(-2, 2)]
)
def test_box_actions_never_leave_the_box_in_float32(space):
    lifted = lac.MLPActorCritic(3, 2, 8, 8, action_space=space, key=jax.random.key(0)).bij
    x = jnp.asarray([[1e3, -1e3], [40.0, -40.0], [17.0, 9.5], [-9.5, 17.0]], jnp.float32)
    y = np.asarray(lifted.forward(x))
    assert y.dtype == np.float32
    lo = np.broadcast_to(np.asarray(space.x_min, np.float32), (2,))
    hi = np.broadcast_to(np.asarray(space.x_max, np.float32), (2,))
    assert np.all(y >= lo) and np.all(y <= hi)
    # on the boundary the inverse still gives a finite pre-image
    assert np.all(np.isfinite(np.asarray(lifted.inverse(jnp.asarray(y)))))


@pytest.mark.parametrize("m", [1.0, 0.3, 7.0])
def test_ball_actions_never_leave_the_ball_in_float32(m):
    space = lac.MaxNormSpace(m)
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(512, 3)) * 50.0, jnp.float32)
    y = np.asarray(space.forward(x))
    assert y.dtype == np.float32
    assert np.all(np.linalg.norm(y.astype(np.float32), axis=-1) <= np.float32(m))
