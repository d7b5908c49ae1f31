import jax.numpy as jnp

from .helpers import make_model


def test_single_step_shapes(getkey):
    model, state = make_model(carry_shape=(4,))
    (pi, value), state = model(jnp.ones((4, 5)), state)
    assert pi.sample(seed=getkey()).shape == (4, 3)
    assert value.shape == (4, 1)
    assert model.carry(state).h.shape == (4, 12)
