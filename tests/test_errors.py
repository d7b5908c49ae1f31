"""Bad input raises a clear error before any computation.

Two layers guard the public methods. Without runtime type checking (how most users run
the library) the methods' own checks raise `ValueError`s naming what was expected and
what came; those are tested with jaxtyping switched off. With the jaxtyping + beartype
hook (as in this suite) the annotated shapes are checked first, at the call."""

import jax
import jax.numpy as jnp
import jaxtyping
import pytest

from .helpers import make_model


@pytest.fixture
def plain():
    """Run the test without the jaxtyping hook, as a user's program would."""
    jaxtyping.config.update("jaxtyping_disable", True)
    try:
        yield
    finally:
        jaxtyping.config.update("jaxtyping_disable", False)


@pytest.fixture
def model_state():
    return make_model(carry_shape=(4,))


def test_wrong_observation_size(plain, model_state):
    model, state = model_state
    with pytest.raises(ValueError, match=r"obs_dim=5.*\(\.\.\., 5\).*got shape \(4, 6\)"):
        model(jnp.zeros((4, 6)), state)
    with pytest.raises(ValueError, match=r"obs_dim=5.*got shape \(4, 6\)"):
        model.act(jnp.zeros((4, 6)), state, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"obs_dim=5.*got shape \(3, 4, 6\)"):
        model.sequence(jnp.zeros((3, 4, 6)))


def test_sequence_not_3d(plain, model_state):
    model, _ = model_state
    with pytest.raises(ValueError, match=r"\(T, B, 5\).*2-D array of shape \(4, 5\)"):
        model.sequence(jnp.zeros((4, 5)))
    with pytest.raises(ValueError, match=r"\(T, B, 5\).*4-D"):
        model.sequence(jnp.zeros((2, 3, 4, 5)))


def test_mask_of_wrong_length(plain, model_state):
    model, state = model_state
    with pytest.raises(ValueError, match=r"mask must have shape \(4,\).*got mask of shape \(3,\)"):
        model.reset(state, (4, 5), mask=jnp.zeros((3,), bool))
    with pytest.raises(ValueError, match=r"mask must have shape \(4,\).*\(4, 1\)"):
        model.reset(state, (4, 5), mask=jnp.zeros((4, 1), bool))
    with pytest.raises(ValueError, match="observation shape"):
        model.reset(state, (4, 7))


def test_episode_start_of_wrong_shape(plain, model_state):
    model, _ = model_state
    xs = jnp.zeros((6, 4, 5))
    with pytest.raises(
        ValueError, match=r"episode_start must have shape \(T, B\) = \(6, 4\); got \(4, 6\)"
    ):
        model.sequence(xs, episode_start=jnp.zeros((4, 6), bool))
    with pytest.raises(ValueError, match="boolean"):
        model.sequence(xs, episode_start=jnp.zeros((6, 4), jnp.int32))


def test_carry_of_wrong_shape(plain, model_state):
    model, _ = model_state
    xs = jnp.zeros((6, 4, 5))
    with pytest.raises(ValueError, match=r"carry.h must have shape \(4, 12\).*got \(3, 12\)"):
        model.sequence(xs, carry=(jnp.zeros((3, 12)), jnp.zeros((3, 12))))
    with pytest.raises(ValueError, match=r"carry.c must have shape \(4, 12\).*got \(4, 11\)"):
        model.sequence(xs, carry=(jnp.zeros((4, 12)), jnp.zeros((4, 11))))


def test_errors_come_before_any_computation(plain, model_state, monkeypatch):
    model, state = model_state

    def boom(*args, **kwargs):
        raise AssertionError("computation started before the input was checked")

    monkeypatch.setattr(type(model), "_step", boom)
    with pytest.raises(ValueError):
        model.sequence(jnp.zeros((6, 4, 5)), episode_start=jnp.zeros((6, 3), bool))
    with pytest.raises(ValueError):
        model(jnp.zeros((4, 6)), state)


def test_hook_checks_annotated_shapes(model_state):
    """With the jaxtyping hook on, inconsistent shapes fail at the call."""
    model, _ = model_state
    with pytest.raises(jaxtyping.TypeCheckError):
        model.sequence(jnp.zeros((4, 5)))  # not (T, B, obs)
    with pytest.raises(jaxtyping.TypeCheckError):
        # T, B of episode_start disagree with those of xs
        model.sequence(jnp.zeros((6, 4, 5)), episode_start=jnp.zeros((4, 6), bool))
    with pytest.raises(jaxtyping.TypeCheckError):
        model.sequence(jnp.zeros((6, 4, 5), jnp.int32))  # not floating point


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="observation_space_size must be a positive int"):
        make_model(observation_space_size=0)
    with pytest.raises(ValueError, match="lstm_features must be a positive int"):
        make_model(lstm_features=-3)
    with pytest.raises(ValueError, match="carry_shape"):
        make_model(carry_shape=(-1,))
