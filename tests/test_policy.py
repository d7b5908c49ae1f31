import itertools
import math

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_lstm_ac as lac

from .helpers import make_model


N_MC = 200_000


def _policy(space, mu, sigma):
    model, _ = make_model(action_space=space, action_space_size=np.shape(mu)[-1])
    return lac.GaussianPolicy(jnp.asarray(mu), jnp.asarray(sigma), model.bij)


def _mc_entropy(pi, key):
    """Monte-Carlo estimate of the entropy and its standard error."""
    x = pi.distribution.sample(seed=key, sample_shape=(N_MC,))
    log_det = np.asarray(pi.bijector.forward_log_det_jacobian(x), np.float64)
    h_x = float(pi.distribution.entropy())
    return h_x + log_det.mean(), log_det.std() / math.sqrt(N_MC)


def test_policy_structure():
    model, state = make_model(action_space=lac.BoxSpace(-1.0, 1.0), carry_shape=(2,))
    (pi, _), _ = model(jnp.zeros((2, 5)), state)
    assert isinstance(pi, distrax.Transformed)
    assert isinstance(pi.distribution, distrax.MultivariateNormalDiag)
    assert isinstance(pi.bijector, distrax.Block)  # the scalar space lifted to vectors
    assert pi.bijector.bijector == lac.BoxSpace(-1.0, 1.0)
    assert pi.event_shape == (3,) and pi.batch_shape == (2,)

    model, state = make_model(action_space=lac.MaxNormSpace(1.0), carry_shape=(2,))
    (pi, _), _ = model(jnp.zeros((2, 5)), state)
    assert pi.bijector == lac.MaxNormSpace(1.0)  # a vector bijector is used as it is


@pytest.mark.parametrize("space", [lac.BoxSpace(-2.0, 1.0), lac.MaxNormSpace(1.5)])
def test_log_prob_is_change_of_variables(getkey, space):
    # a batch of 64 policies (the model's batch shape; sample_shape stays ())
    mu = jnp.tile(jnp.array([0.3, -0.7, 1.1]), (64, 1))
    sigma = jnp.tile(jnp.array([0.5, 1.2, 0.8]), (64, 1))
    pi = _policy(space, mu, sigma)
    x = pi.distribution.sample(seed=getkey())
    y = pi.bijector.forward(x)
    expected = pi.distribution.log_prob(x) - pi.bijector.forward_log_det_jacobian(x)
    np.testing.assert_allclose(pi.log_prob(y), expected, rtol=1e-4, atol=1e-4)


def test_free_entropy_is_exact():
    mu, sigma = np.array([0.3, -2.0]), np.array([0.5, 2.0])
    pi = _policy(lac.FreeSpace(), mu, sigma)
    exact = np.sum(0.5 * np.log(2 * np.pi * np.e * sigma**2))
    assert float(pi.entropy()) == pytest.approx(exact, rel=1e-6)
    pi_none = _policy(None, mu, sigma)
    assert float(pi_none.entropy()) == pytest.approx(exact, rel=1e-6)


ENTROPY_CASES = [
    (lac.BoxSpace(-1.0, 1.0), [0.0, 0.0], [1.0, 1.0]),
    (lac.BoxSpace(-1.0, 1.0), [0.5, -1.0], [3.0, 0.3]),
    (lac.BoxSpace(-2.0, 5.0, width=0.5), [2.0, 0.0, -0.4], [1.0, 1.5, 0.05]),
    (lac.MaxNormSpace(1.0), [0.5, -1.0], [1.0, 0.3]),
    (lac.MaxNormSpace(1.0), [0.3, -2.0], [1.5, 1.0]),
    (lac.MaxNormSpace(2.0), [0.0, 0.0, 0.0], [1.0, 1.0, 0.5]),
]


@pytest.mark.parametrize("space,mu,sigma", ENTROPY_CASES)
def test_squashed_entropy_matches_monte_carlo(getkey, space, mu, sigma):
    pi = _policy(space, mu, sigma)
    mc, se = _mc_entropy(pi, getkey())
    assert abs(float(pi.entropy()) - mc) < 4 * se, (float(pi.entropy()), mc, se)


def test_five_node_rule_is_not_accurate_enough(getkey):
    """Why the quadrature uses many nodes: a 5-node Gauss-Hermite rule misses the
    Monte-Carlo entropy by far more than its error for a wide Gaussian in a box."""
    space, mu, sigma = lac.BoxSpace(-1.0, 1.0), np.array([0.5, -1.0]), np.array([3.0, 0.3])
    pi = _policy(space, mu, sigma)
    mc, se = _mc_entropy(pi, getkey())
    z, w = np.polynomial.hermite_e.hermegauss(5)
    w = w / w.sum()
    x = jnp.asarray(mu[:, None] + sigma[:, None] * z[None, :], jnp.float32)
    five = float(pi.distribution.entropy()) + float(
        np.sum(np.asarray(space.forward_log_det_jacobian(x)) @ w)
    )
    assert abs(five - mc) > 10 * se
    assert abs(float(pi.entropy()) - mc) < 4 * se


def test_entropy_batched_and_differentiable():
    mu = jnp.array([[0.1, 0.2], [1.0, -1.0], [3.0, 0.0]])
    sigma = jnp.array([[0.5, 0.5], [1.0, 2.0], [0.1, 0.7]])
    for space in (lac.BoxSpace(-1.0, 1.0), lac.MaxNormSpace(1.0)):
        pi = _policy(space, mu, sigma)
        batched = pi.entropy()
        assert batched.shape == (3,)
        for i in range(3):
            single = _policy(space, mu[i], sigma[i]).entropy()
            np.testing.assert_allclose(batched[i], single, rtol=1e-5, atol=1e-6)
        g = jax.grad(lambda s, sp=space: _policy(sp, mu, s).entropy().sum())(sigma)
        assert np.all(np.isfinite(np.asarray(g)))


def test_deterministic_action():
    mu, sigma = jnp.array([0.4, -3.0]), jnp.array([1.0, 1.0])
    pi = _policy(lac.BoxSpace(-1.0, 2.0), mu, sigma)
    np.testing.assert_allclose(
        pi.deterministic_action(), 0.5 + 1.5 * (1 - 1e-6) * np.tanh(np.asarray(mu)), rtol=1e-6
    )


def test_hermite_grid_integrates_polynomials():
    from eqx_lstm_ac._distributions import _hermite_grid

    nodes, weights = _hermite_grid(2)
    # E[Z1^2 Z2^4] = 1 * 3 for independent standard normals
    assert float(np.sum(weights * nodes[:, 0] ** 2 * nodes[:, 1] ** 4)) == pytest.approx(
        3.0, rel=1e-4
    )
    assert float(np.sum(weights)) == pytest.approx(1.0, rel=1e-6)
    assert len(list(itertools.islice(nodes, None))) <= 1024
