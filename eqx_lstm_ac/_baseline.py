"""`MLPActorCritic`: the feed-forward baseline, with the heads and the calling interface of
`LSTMActorCritic` but no memory."""

import math
from collections.abc import Callable
from typing import Any

import distrax
import equinox as eqx
import jax
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from ._actor_critic import AbstractActorCritic, metadata_of
from ._heads import (
    activation_name,
    ACTIVATIONS,
    apply_linear,
    init_heads,
    LogStdParameter,
    orthogonal_linear,
    SoftplusStdHead,
)


class MLPActorCritic(AbstractActorCritic):
    r"""A feed-forward actor-critic: a two-layer MLP torso and the same linear policy and
    value heads as [`eqx_lstm_ac.LSTMActorCritic`][].

    It has the calling interface of every [`eqx_lstm_ac.AbstractActorCritic`][], so the
    same trainer runs either model. Its carry is empty, `()`: a step depends on its
    observation only, which makes it the baseline that shows what memory adds.

    !!! example
        ```python
        import equinox as eqx, jax, jax.numpy as jnp
        import eqx_lstm_ac as lac

        model, state = eqx.nn.make_with_state(lac.MLPActorCritic)(
            observation_space_size=8, action_space_size=2,
            action_space=lac.BoxSpace(-1.0, 1.0), key=jax.random.key(0))
        (pi, value), state = model(jnp.zeros((16, 8)), state)
        ```
    """

    encoder: eqx.nn.Linear
    torso_layer: eqx.nn.Linear
    actor_mu: eqx.nn.Linear
    actor_sigma: LogStdParameter | SoftplusStdHead | None
    critic: eqx.nn.Linear
    bij: distrax.Bijector | None
    obs_dim: int = eqx.field(static=True)
    action_dim: int = eqx.field(static=True)
    hidden_features: int = eqx.field(static=True)
    features: int = eqx.field(static=True)
    activation: str = eqx.field(static=True)
    actor_sigma_head: bool = eqx.field(static=True)
    discrete: bool = eqx.field(static=True)
    carry_index: eqx.nn.StateIndex | None = None

    def __init__(
        self,
        observation_space_size: int,
        action_space_size: int,
        hidden_features: int = 64,
        features: int = 128,
        activation: Callable[[Array], Array] | str = jax.nn.gelu,
        action_space: distrax.Bijector | None = None,
        actor_sigma_head: bool = False,
        carry_shape: tuple[int, ...] = (),
        discrete: bool = False,
        *,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `observation_space_size`: `obs_dim`.
        - `action_space_size`: action dimensions (continuous) or actions (discrete).
        - `hidden_features`: width of the first layer.
        - `features`: width of the second layer, the heads' input (the counterpart of
          `lstm_features`).
        - `activation`, `action_space`, `actor_sigma_head`, `discrete`: as for
          [`eqx_lstm_ac.LSTMActorCritic`][].
        - `carry_shape`: accepted for symmetry with `LSTMActorCritic` and ignored (there
          is no carry).
        - `key`: a `jax.random.key`. (Keyword only.)

        **Raises:**

        `ValueError` for a non-positive size, an unknown activation, or an action space
        given together with `discrete=True`.
        """
        self._init_policy(
            {
                "observation_space_size": observation_space_size,
                "action_space_size": action_space_size,
                "hidden_features": hidden_features,
                "features": features,
            },
            {"actor_sigma_head": actor_sigma_head, "discrete": discrete},
            tuple(carry_shape),
            action_space,
        )
        k_enc, k_torso, k_mu, k_sigma, k_critic = jax.random.split(key, 5)
        self.hidden_features = hidden_features
        self.features = features
        self.activation = activation_name(activation)
        self.actor_sigma_head = actor_sigma_head
        gain = math.sqrt(2.0)
        self.encoder = orthogonal_linear(k_enc, observation_space_size, hidden_features, gain)
        self.torso_layer = orthogonal_linear(k_torso, hidden_features, features, gain)
        self.actor_mu, self.actor_sigma, self.critic = init_heads(
            (k_mu, k_sigma, k_critic), features, action_space_size, discrete, actor_sigma_head
        )

    @property
    def metadata(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this model (JSON-serialisable, apart
        from a user-defined `action_space`)."""
        return metadata_of(
            self,
            hidden_features=self.hidden_features,
            features=self.features,
            activation=self.activation,
            actor_sigma_head=self.actor_sigma_head,
        )

    # ------------------------------------------------------------------ the torso

    def zero_carry(self, batch_shape: tuple[int, ...] = ()) -> tuple[()]:
        """The empty carry, `()`, for any batch shape."""
        del batch_shape
        return ()

    def _features(self, x: Array) -> Array:
        act = ACTIVATIONS[self.activation]
        return act(apply_linear(self.torso_layer, act(apply_linear(self.encoder, x))))

    def torso(self, x: Float[Array, "*batch obs"], carry: tuple[()]) -> tuple[Array, tuple[()]]:
        """The two layers; the carry passes through."""
        return self._features(x), carry

    def sequence_readout(
        self,
        xs: Float[Array, "T B obs"],
        carry: tuple[()] | None,
        episode_start: Bool[Array, "T B"] | None,
    ) -> tuple[Float[Array, "T B out"], tuple[()]]:
        """Every step on its own (`carry` and `episode_start` have no effect)."""
        del carry, episode_start
        return self.readout(self._features(xs)), ()
