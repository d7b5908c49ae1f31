"""The policy distributions returned by `LSTMActorCritic`."""

import functools
import math

import distrax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from ._action_spaces import _unlift


ELEMENTWISE_NODES = 32
"""Gauss-Hermite nodes per action coordinate for a bijector that acts element-wise."""

GRID_BUDGET = 1024
"""Most nodes of the tensor-product rule for a bijector that mixes coordinates."""


@functools.cache
def _hermite_rule(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights with `E[f(Z)] ~= sum(w * f(z))` for `Z ~ N(0, 1)`."""
    z, w = np.polynomial.hermite_e.hermegauss(n)
    return z.astype(np.float32), (w / w.sum()).astype(np.float32)


@functools.cache
def _hermite_grid(dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Tensor-product rule in `dim` dimensions with at most `GRID_BUDGET` nodes."""
    n = max(2, min(ELEMENTWISE_NODES, int(math.floor(GRID_BUDGET ** (1.0 / dim) + 1e-9))))
    z, w = _hermite_rule(n)
    grids = np.meshgrid(*([z] * dim), indexing="ij")
    nodes = np.stack([g.reshape(-1) for g in grids], axis=-1)
    wgrids = np.meshgrid(*([w] * dim), indexing="ij")
    weights = np.prod(np.stack([g.reshape(-1) for g in wgrids], axis=-1), axis=-1)
    return nodes.astype(np.float32), weights.astype(np.float32)


def _expand(a: Array, ndim: int) -> Array:
    """Append `ndim` unit axes (explicitly: rank promotion is an error in strict mode)."""
    return a.reshape(a.shape + (1,) * ndim)


def expected_log_det(
    bijector: distrax.Bijector,
    loc: Float[Array, "*batch action"],
    scale: Float[Array, "*batch action"],
) -> Float[Array, "*batch"]:
    r"""$E[\log|\det J_f(X)|]$ for $X \sim \mathcal{N}(\mu, \operatorname{diag}\sigma^2)$,
    by Gauss-Hermite quadrature.

    A bijector that acts element-wise (a scalar bijector lifted with `distrax.Block`)
    splits into one-dimensional integrals, each done with `ELEMENTWISE_NODES` nodes. Any
    other bijector is integrated on a tensor-product grid of at most `GRID_BUDGET`
    nodes.
    """
    inner = _unlift(bijector)
    if inner is not bijector and inner.event_ndims_in == 0:
        z, w = _hermite_rule(ELEMENTWISE_NODES)
        z = jnp.asarray(z).reshape((1,) * loc.ndim + z.shape)
        x = _expand(loc, 1) + _expand(scale, 1) * z  # (..., A, n)
        log_det = inner.forward_log_det_jacobian(x)
        return jnp.sum(jnp.asarray(log_det) @ jnp.asarray(w), axis=-1)
    nodes, weights = _hermite_grid(loc.shape[-1])
    grid = jnp.asarray(nodes).reshape((1,) * (loc.ndim - 1) + nodes.shape)
    x = loc[..., None, :] + scale[..., None, :] * grid  # (..., K, A)
    return jnp.asarray(bijector.forward_log_det_jacobian(x)) @ jnp.asarray(weights)


class GaussianPolicy(distrax.Transformed):
    r"""A diagonal Gaussian pushed through an action-space bijector.

    This is `distrax.Transformed(distrax.MultivariateNormalDiag(mu, sigma), bijector)`
    with two additions:

    - `entropy()` works for every bijector. With a constant Jacobian it is exact;
      otherwise it is $H(Y) = H(X) + E[\log|\det J_f(X)|]$ with the expectation taken by
      Gauss-Hermite quadrature (see [`eqx_lstm_ac.expected_log_det`][]).
    - `deterministic_action()` is the bijector applied to the mean, $f(\mu)$, the action
      to take when evaluating a policy without exploration.
    """

    def __init__(
        self,
        loc: Float[Array, "*batch action"],
        scale: Float[Array, "*batch action"],
        bijector: distrax.Bijector,
    ):
        super().__init__(distrax.MultivariateNormalDiag(loc, scale), bijector)
        self.loc = loc
        self.scale = scale

    def entropy(self, input_hint: Array | None = None) -> Array:
        r"""The entropy of the action, of shape `batch_shape`: exact when the bijector's
        Jacobian is constant, else $H(X) + E[\log|\det J_f(X)|]$ by quadrature.
        (`input_hint` is accepted for distrax's signature and ignored.)"""
        del input_hint
        h_x = jnp.asarray(self.distribution.entropy())
        if self.bijector.is_constant_log_det:
            return h_x + jnp.asarray(self.bijector.forward_log_det_jacobian(self.loc))
        return h_x + expected_log_det(self.bijector, self.loc, self.scale)

    def deterministic_action(self) -> Float[Array, "*batch action"]:
        """The bijector applied to the mean of the Gaussian."""
        return jnp.asarray(self.bijector.forward(self.loc))


class CategoricalPolicy(distrax.Categorical):
    """A categorical policy over `action_space_size` discrete actions."""

    def deterministic_action(self) -> Int[Array, "*batch"]:
        """The most probable action."""
        return jnp.asarray(self.mode())
