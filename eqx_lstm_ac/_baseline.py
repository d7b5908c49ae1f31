"""`MLPActorCritic`: the feed-forward baseline, with the heads and the calling interface of
`LSTMActorCritic` but no memory."""

import math
from collections.abc import Callable
from typing import Any

import distrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from ._action_spaces import _lift, _unlift, FreeSpace
from ._model import (
    _act,
    _activation_name,
    _apply,
    _check_obs,
    _check_options,
    _describe_space,
    _linear,
    _policy_and_value,
    ACTIVATIONS,
    LogStdParameter,
    SoftplusStdHead,
)


class MLPActorCritic(eqx.Module):
    r"""A feed-forward actor-critic: a two-layer MLP torso and the same linear policy and
    value heads as [`eqx_lstm_ac.LSTMActorCritic`][].

    It has the same calling interface (`__call__`, `reset`, `act`, `sequence`,
    `evaluate`, `carry`, `init_state`), so the same trainer runs either model. Its carry
    is empty, `()`: a step depends on its observation only, which makes it the baseline
    that shows what memory adds.

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
    torso: eqx.nn.Linear
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
        _check_options(
            {
                "observation_space_size": observation_space_size,
                "action_space_size": action_space_size,
                "hidden_features": hidden_features,
                "features": features,
            },
            tuple(carry_shape),
            discrete,
            action_space,
            actor_sigma_head,
        )
        k_enc, k_torso, k_mu, k_sigma, k_critic = jax.random.split(key, 5)
        self.obs_dim = observation_space_size
        self.action_dim = action_space_size
        self.hidden_features = hidden_features
        self.features = features
        self.activation = _activation_name(activation)
        self.actor_sigma_head = actor_sigma_head
        self.discrete = discrete
        gain = math.sqrt(2.0)
        self.encoder = _linear(k_enc, observation_space_size, hidden_features, gain)
        self.torso = _linear(k_torso, hidden_features, features, gain)
        self.actor_mu = _linear(k_mu, features, action_space_size, gain=0.01 if discrete else 1.0)
        if discrete:
            self.actor_sigma = None
            self.bij = None
        else:
            if actor_sigma_head:
                self.actor_sigma = SoftplusStdHead(features, action_space_size, key=k_sigma)
            else:
                self.actor_sigma = LogStdParameter(action_space_size)
            self.bij = _lift(FreeSpace() if action_space is None else action_space)
        self.critic = _linear(k_critic, features, 1, gain=0.01)

    @property
    def action_space(self) -> distrax.Bijector | None:
        """The action-space bijector as it was given (before lifting to vectors)."""
        return None if self.bij is None else _unlift(self.bij)

    @property
    def metadata(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this model (JSON-serialisable, apart
        from a user-defined `action_space`)."""
        return {
            "observation_space_size": self.obs_dim,
            "action_space_size": self.action_dim,
            "hidden_features": self.hidden_features,
            "features": self.features,
            "activation": self.activation,
            "action_space": _describe_space(self.bij),
            "actor_sigma_head": self.actor_sigma_head,
            "discrete": self.discrete,
        }

    # ------------------------------------------------------------------ the (empty) carry

    def zero_carry(self, batch_shape: tuple[int, ...] = ()) -> tuple[()]:
        """The empty carry, `()`, for any batch shape."""
        del batch_shape
        return ()

    def carry(self, state: eqx.nn.State) -> tuple[()]:
        """The empty carry, `()`."""
        del state
        return ()

    def init_state(self, carry_shape: tuple[int, ...] = ()) -> eqx.nn.State:
        """An (empty) `eqx.nn.State`, for symmetry with `LSTMActorCritic`."""
        del carry_shape
        return eqx.nn.State(self)

    # ------------------------------------------------------------------ forward

    def _features(self, x: Array) -> Array:
        act = ACTIVATIONS[self.activation]
        return act(_apply(self.torso, act(_apply(self.encoder, x))))

    def _heads(self, features: Array) -> tuple[distrax.Distribution, Array]:
        return _policy_and_value(self, features)

    def __call__(
        self, x: Float[Array, "*batch obs"], state: eqx.nn.State
    ) -> tuple[tuple[distrax.Distribution, Float[Array, "*batch 1"]], eqx.nn.State]:
        """One step: `(pi, value), state` for observations `x` of shape `(..., obs_dim)`
        (the state passes through unchanged)."""
        _check_obs(self.obs_dim, x, "The observation x")
        return self._heads(self._features(x)), state

    def reset(
        self,
        state: eqx.nn.State,
        shape: tuple[int, ...],
        mask: Bool[Array, " n"] | None = None,
    ) -> eqx.nn.State:
        """Nothing to reset: returns `state` (checks `shape` like `LSTMActorCritic`)."""
        del mask
        if len(shape) < 1 or shape[-1] != self.obs_dim:
            raise ValueError(
                f"reset needs the observation shape (..., {self.obs_dim}); got {tuple(shape)}."
            )
        return state

    @eqx.filter_jit
    def act(
        self,
        x: Float[Array, "*batch obs"],
        state: eqx.nn.State,
        *,
        key: PRNGKeyArray,
        deterministic: bool = False,
    ) -> tuple[
        tuple[
            Float[Array, "*batch action"] | Int[Array, "*batch"],
            Float[Array, "*batch"],
            Float[Array, "*batch"],
        ],
        eqx.nn.State,
    ]:
        """As [`eqx_lstm_ac.LSTMActorCritic.act`][]."""
        (pi, value), state = self(x, state)
        return _act(pi, value, key, deterministic), state

    def sequence(
        self,
        xs: Float[Array, "T B obs"],
        carry: tuple[()] | None = None,
        episode_start: Bool[Array, "T B"] | None = None,
    ) -> tuple[tuple[distrax.Distribution, Float[Array, "T B 1"]], tuple[()]]:
        """As [`eqx_lstm_ac.LSTMActorCritic.sequence`][]; `carry` and `episode_start`
        are accepted and have no effect."""
        del carry, episode_start
        if xs.ndim != 3:
            raise ValueError(
                f"sequence expects time-major observations of shape (T, B, {self.obs_dim}); "
                f"got shape {tuple(xs.shape)}."
            )
        _check_obs(self.obs_dim, xs, "The observations xs")
        return self._heads(self._features(xs)), ()

    @eqx.filter_jit
    def evaluate(
        self,
        xs: Float[Array, "T B obs"],
        actions: Float[Array, "T B action"] | Int[Array, "T B"],
        carry: tuple[()] | None = None,
        episode_start: Bool[Array, "T B"] | None = None,
    ) -> tuple[Float[Array, "T B"], Float[Array, "T B"], Float[Array, "T B"]]:
        """As [`eqx_lstm_ac.LSTMActorCritic.evaluate`][]."""
        (pi, value), _ = self.sequence(xs, carry, episode_start)
        return jnp.asarray(pi.log_prob(actions)), jnp.asarray(pi.entropy()), value[..., 0]
