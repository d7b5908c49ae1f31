import jax
import pytest


jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")


@pytest.fixture
def getkey():
    """Return a function that hands out a fresh PRNG key on each call."""
    counter = iter(range(1 << 30))

    def _getkey():
        return jax.random.key(next(counter))

    return _getkey
