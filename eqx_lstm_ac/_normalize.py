"""Running moments: the mean and variance of a stream of batches, for normalising
observations (the model's input) and rewards (by the spread of the discounted return)."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float


OBS_CLIP = 10.0
"""Normalised observations are clipped to `[-OBS_CLIP, OBS_CLIP]`."""

EPS = 1e-8
"""Added to the variance before its square root is taken."""


class RunningMoments(eqx.Module):
    r"""The running mean and variance, per feature, of every sample seen so far.

    A batch is merged exactly (Chan, Golub and LeVeque's pairwise update): after any
    sequence of updates, `mean` and `var` are those of all samples together, up to
    rounding. Before the first update the moments are `mean = 0`, `var = 1`, so
    normalising is the identity.

    An `eqx.Module` of arrays: it is saved with the model that holds it, sharded and
    replicated like any other leaf, and the trainer never differentiates it.

    **Arguments:**

    - `shape`: the shape of one sample (`()` for scalars such as returns).
    """

    mean: Float[Array, "*shape"]
    var: Float[Array, "*shape"]
    count: Float[Array, ""]

    def __init__(self, shape: tuple[int, ...] = ()):
        self.mean = jnp.zeros(shape, jnp.float32)
        self.var = jnp.ones(shape, jnp.float32)
        self.count = jnp.zeros((), jnp.float32)

    def update(
        self, x: Float[Array, "n ..."], axis_name: str | None = None
    ) -> "RunningMoments":
        """The moments with the samples `x` (stacked along the first axis) merged in.

        With `axis_name`, `x` is one device's part of a batch spread over that named
        axis (inside `shard_map` or `pmap`): the batch's moments are reduced over it, so
        every device holds the moments of the whole batch.
        """
        x = jnp.asarray(x, self.mean.dtype)

        def total(v: Array) -> Array:
            return v if axis_name is None else jax.lax.psum(v, axis_name)

        n = total(jnp.asarray(x.shape[0], self.count.dtype))
        batch_mean = total(jnp.sum(x, axis=0)) / n
        batch_m2 = total(jnp.sum(jnp.square(x - batch_mean[None]), axis=0))
        count = self.count + n
        delta = batch_mean - self.mean
        mean = self.mean + delta * (n / count)
        m2 = self.var * self.count + batch_m2 + jnp.square(delta) * (self.count * n / count)
        return eqx.tree_at(lambda m: (m.mean, m.var, m.count), self, (mean, m2 / count, count))

    @property
    def std(self) -> Float[Array, "*shape"]:
        """`sqrt(var + EPS)`."""
        return jnp.sqrt(self.var + EPS)

    def normalize(self, x: Float[Array, "..."]) -> Float[Array, "..."]:
        """`(x - mean) / std`, clipped to `[-OBS_CLIP, OBS_CLIP]`."""
        lead = (1,) * (x.ndim - self.mean.ndim)
        mean = jax.lax.stop_gradient(self.mean).reshape(lead + self.mean.shape)
        std = jax.lax.stop_gradient(self.std).reshape(lead + self.mean.shape)
        return jnp.clip((x - mean) / std, -OBS_CLIP, OBS_CLIP).astype(x.dtype)
