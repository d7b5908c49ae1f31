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
