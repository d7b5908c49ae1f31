"""Shared helpers for the tests."""

import equinox as eqx
import jax

import eqx_lstm_ac as lac


def make_model(*, key=None, carry_shape=(), **kwargs):
    """A small model and its state (sizes chosen for fast tests)."""
    opts = dict(observation_space_size=5, action_space_size=3, hidden_features=8, lstm_features=12)
    opts.update(kwargs)
    key = jax.random.key(0) if key is None else key
    return eqx.nn.make_with_state(lac.LSTMActorCritic)(carry_shape=carry_shape, key=key, **opts)
