"""The layers every actor-critic shares: the table of activations, linear layers with
orthogonal initialisation, the two standard-deviation modules, the heads, and the
constructor checks of their options."""

from collections.abc import Callable
from typing import Any

import distrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ._lstm_scan import matmul_t


def _identity(x: Array) -> Array:
    return x


ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "gelu": jax.nn.gelu,
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "elu": jax.nn.elu,
    "leaky_relu": jax.nn.leaky_relu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "softplus": jax.nn.softplus,
    "identity": _identity,
}
"""The fixed table of encoder activations, by name. A model stores the name only, so a
checkpoint names its activation and never carries code."""


def activation_name(activation: Callable[[Array], Array] | str) -> str:
    """The name in [`eqx_lstm_ac.ACTIVATIONS`][] of `activation` (a name or a function)."""
    if isinstance(activation, str):
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"Unknown activation {activation!r}; expected one of {sorted(ACTIVATIONS)}."
            )
        return activation
    for name, fn in ACTIVATIONS.items():
        if fn is activation:
            return name
    raise ValueError(
        f"Activation {activation!r} is not in the table of activations; pass one of "
        f"{sorted(ACTIVATIONS)} (by name, or the function itself, e.g. jax.nn.gelu)."
    )


# ---------------------------------------------------------------------- layers


def add_bias(y: Array, bias: Array) -> Array:
    """`y + bias` over the last axis, broadcast explicitly (strict rank promotion)."""
    return y + bias.reshape((1,) * (y.ndim - 1) + bias.shape)


def apply_linear(layer: eqx.nn.Linear, x: Float[Array, "... in"]) -> Float[Array, "... out"]:
    """A linear layer applied over the last axis of a batch (one matmul, no vmap)."""
    y = matmul_t(x, layer.weight)
    if layer.bias is not None:
        y = add_bias(y, layer.bias)
    return y


def orthogonal_linear(
    key: PRNGKeyArray, in_features: int, out_features: int, gain: float, bias: float = 0.0
) -> eqx.nn.Linear:
    """An `eqx.nn.Linear` with an orthogonal weight of norm `gain` (rows or columns,
    whichever are fewer) and a constant bias."""
    layer = eqx.nn.Linear(in_features, out_features, key=key)
    init = jax.nn.initializers.orthogonal(scale=gain)
    weight = init(key, (in_features, out_features), jnp.float32).T
    return eqx.tree_at(
        lambda m: (m.weight, m.bias),
        layer,
        (weight, jnp.full((out_features,), bias, jnp.float32)),
    )


class LogStdParameter(eqx.Module):
    r"""A state-independent standard deviation: $\sigma = \exp(\ell)$, with $\ell$ the
    learned vector `log_std`."""

    log_std: Float[Array, " action"]

    def __init__(self, action_size: int):
        self.log_std = jnp.zeros((action_size,), jnp.float32)

    def __call__(self, features: Float[Array, "*batch lstm"]) -> Float[Array, "*batch action"]:
        return jnp.broadcast_to(jnp.exp(self.log_std), features.shape[:-1] + self.log_std.shape)


class SoftplusStdHead(eqx.Module):
    """A state-dependent standard deviation: $\\sigma = \\operatorname{softplus}(W h + b)$."""

    linear: eqx.nn.Linear

    def __init__(self, lstm_features: int, action_size: int, *, key: PRNGKeyArray):
        self.linear = orthogonal_linear(key, lstm_features, action_size, gain=0.01, bias=-1.0)

    def __call__(self, features: Float[Array, "*batch lstm"]) -> Float[Array, "*batch action"]:
        return self.squash(apply_linear(self.linear, features))

    @staticmethod
    def squash(pre: Array) -> Array:
        """The standard deviation from the linear layer's output."""
        return jax.nn.softplus(pre)


def init_heads(
    keys: tuple[PRNGKeyArray, PRNGKeyArray, PRNGKeyArray],
    features: int,
    action_dim: int,
    discrete: bool,
    sigma_head: bool,
) -> tuple[eqx.nn.Linear, "LogStdParameter | SoftplusStdHead | None", eqx.nn.Linear]:
    """The heads every model shares, `(actor_mu, actor_sigma, critic)`, reading a torso
    output of width `features`: orthogonal policy head (gain 1, or 0.01 for logits),
    the standard deviation, and the critic (gain 0.01)."""
    k_mu, k_sigma, k_critic = keys
    actor_mu = orthogonal_linear(k_mu, features, action_dim, gain=0.01 if discrete else 1.0)
    sigma: LogStdParameter | SoftplusStdHead | None
    if discrete:
        sigma = None
    elif sigma_head:
        sigma = SoftplusStdHead(features, action_dim, key=k_sigma)
    else:
        sigma = LogStdParameter(action_dim)
    critic = orthogonal_linear(k_critic, features, 1, gain=0.01)
    return actor_mu, sigma, critic


def check_options(
    sizes: dict[str, Any],
    flags: dict[str, Any],
    carry_shape: tuple[int, ...],
    action_space: distrax.Bijector | None,
) -> None:
    """The constructor checks shared by the actor-critic models."""
    for name, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}.")
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be True or False, got {value!r}.")
    if any((not isinstance(n, int)) or n < 0 for n in carry_shape):
        raise ValueError(f"carry_shape must be a tuple of sizes, got {carry_shape!r}.")
    if flags.get("discrete") and action_space is not None:
        raise ValueError(
            "A discrete (categorical) policy takes no action_space bijector; got "
            f"{action_space!r} with discrete=True."
        )
    size, actions = getattr(action_space, "size", None), sizes.get("action_space_size")
    if size is not None and actions is not None and size != actions:
        raise ValueError(
            f"The action space {action_space!r} has bounds for {size} coordinates; the "
            f"model has action_space_size={actions}."
        )
    if flags.get("discrete") and flags.get("actor_sigma_head"):
        raise ValueError("actor_sigma_head=True has no meaning with discrete=True.")
