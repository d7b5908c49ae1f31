"""`LSTMActorCritic`: an MLP encoder, a single-layer LSTM torso, linear policy and value
heads."""

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import distrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from ._action_spaces import _lift, _unlift, ActionSpace, FreeSpace
from ._distributions import CategoricalPolicy, GaussianPolicy
from ._lstm_scan import lstm_gates, lstm_sequence, LSTMWeights, matmul_t


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


def _activation_name(activation: Callable[[Array], Array] | str) -> str:
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


class LSTMCarry(NamedTuple):
    """The LSTM carry: hidden state `h` and cell state `c`, each `(..., lstm_features)`."""

    h: Float[Array, "*batch lstm"]
    c: Float[Array, "*batch lstm"]


def _orthogonal(key: PRNGKeyArray, out_features: int, in_features: int, gain: float) -> Array:
    """An `(out, in)` weight whose rows or columns (whichever are fewer) are orthogonal
    with norm `gain`."""
    init = jax.nn.initializers.orthogonal(scale=gain)
    return init(key, (in_features, out_features), jnp.float32).T


def _linear(
    key: PRNGKeyArray, in_features: int, out_features: int, gain: float, bias: float = 0.0
) -> eqx.nn.Linear:
    layer = eqx.nn.Linear(in_features, out_features, key=key)
    weight = _orthogonal(key, out_features, in_features, gain)
    return eqx.tree_at(
        lambda m: (m.weight, m.bias),
        layer,
        (weight, jnp.full((out_features,), bias, jnp.float32)),
    )


def _add_bias(y: Array, bias: Array) -> Array:
    """`y + bias` over the last axis, broadcast explicitly (strict rank promotion)."""
    return y + bias.reshape((1,) * (y.ndim - 1) + bias.shape)


def _apply(layer: eqx.nn.Linear, x: Float[Array, "... in"]) -> Float[Array, "... out"]:
    """A linear layer applied over the last axis of a batch (one matmul, no vmap)."""
    y = matmul_t(x, layer.weight)
    if layer.bias is not None:
        y = _add_bias(y, layer.bias)
    return y


def _init_cell(key: PRNGKeyArray, input_size: int, hidden_size: int) -> eqx.nn.LSTMCell:
    """An `eqx.nn.LSTMCell` initialised as the reference does: LeCun-normal input
    weights, an orthogonal recurrent block per gate, zero bias."""
    k_cell, k_ih, k_hh = jax.random.split(key, 3)
    cell = eqx.nn.LSTMCell(input_size, hidden_size, key=k_cell)
    w_ih = jax.random.normal(k_ih, (4 * hidden_size, input_size)) / math.sqrt(input_size)
    orth = jax.nn.initializers.orthogonal()
    w_hh = jnp.concatenate(
        [orth(k, (hidden_size, hidden_size), jnp.float32) for k in jax.random.split(k_hh, 4)]
    )
    bias = jnp.zeros((4 * hidden_size,), jnp.float32)
    return eqx.tree_at(lambda c: (c.weight_ih, c.weight_hh, c.bias), cell, (w_ih, w_hh, bias))


def _check_options(
    sizes: dict[str, int],
    carry_shape: tuple[int, ...],
    discrete: bool,
    action_space: distrax.Bijector | None,
    actor_sigma_head: bool,
) -> None:
    """The constructor checks shared by the actor-critic models."""
    for name, value in sizes.items():
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}.")
    if any((not isinstance(n, int)) or n < 0 for n in carry_shape):
        raise ValueError(f"carry_shape must be a tuple of sizes, got {carry_shape!r}.")
    if discrete and action_space is not None:
        raise ValueError(
            "A discrete (categorical) policy takes no action_space bijector; got "
            f"{action_space!r} with discrete=True."
        )
    if discrete and actor_sigma_head:
        raise ValueError("actor_sigma_head=True has no meaning with discrete=True.")


def _describe_space(bij: distrax.Bijector | None) -> dict[str, Any] | None:
    """How a checkpoint header names the (lifted) action-space bijector `bij`."""
    if bij is None:
        return None
    space = _unlift(bij)
    if isinstance(space, ActionSpace):
        return {"type": space.kind, "args": space.config()}
    return {"type": "custom", "class": type(space).__qualname__}


def _check_obs(obs_dim: int, x: Array, what: str) -> None:
    if x.ndim < 1 or x.shape[-1] != obs_dim:
        raise ValueError(
            f"{what} must have last axis of size obs_dim={obs_dim}, i.e. shape "
            f"(..., {obs_dim}); got shape {tuple(x.shape)}."
        )


def _readout_weights(model: Any) -> tuple[Array, Array]:
    """The heads' linear layers stacked into one `(out, lstm)` weight and `(out,)` bias:
    policy (mean or logits), value, then the state-dependent standard deviation's
    pre-activation if there is one. The sequence kernel reads the hidden state out with
    it; the other paths apply it to their features."""
    layers = [model.actor_mu, model.critic]
    if isinstance(model.actor_sigma, SoftplusStdHead):
        layers.append(model.actor_sigma.linear)
    weight = jnp.concatenate([layer.weight for layer in layers], axis=0)
    bias = jnp.concatenate(
        [
            jnp.zeros((layer.weight.shape[0],), weight.dtype) if layer.bias is None else layer.bias
            for layer in layers
        ]
    )
    return weight, bias


def _policy_and_value_from_readout(model: Any, ys: Array) -> tuple[distrax.Distribution, Array]:
    """The policy and the `(..., 1)` values from the readout `ys` of `_readout_weights`."""
    a = model.actor_mu.out_features
    out, value = ys[..., :a], ys[..., a : a + 1]
    if model.discrete:
        return CategoricalPolicy(logits=out), value
    assert model.actor_sigma is not None and model.bij is not None
    if isinstance(model.actor_sigma, SoftplusStdHead):
        sigma = model.actor_sigma.squash(ys[..., a + 1 :])
    else:
        sigma = model.actor_sigma(out)  # reads only the leading shape
    return GaussianPolicy(out, sigma, model.bij), value


def _policy_and_value(model: Any, features: Array) -> tuple[distrax.Distribution, Array]:
    """The heads shared by the actor-critic models: policy and `(..., 1)` values."""
    weight, bias = _readout_weights(model)
    return _policy_and_value_from_readout(model, _add_bias(matmul_t(features, weight), bias))


def _act(
    pi: distrax.Distribution, value: Array, key: PRNGKeyArray, deterministic: bool
) -> tuple[Array, Array, Array]:
    """Action, its log-probability (computed from the action, as `evaluate` does) and
    the value without its trailing axis."""
    if deterministic:
        action = pi.deterministic_action()  # type: ignore[attr-defined]
    else:
        action = pi.sample(seed=key)
    return jnp.asarray(action), jnp.asarray(pi.log_prob(action)), value[..., 0]


class LogStdParameter(eqx.Module):
    """A state-independent standard deviation: $\\sigma = \\exp(\\text{log\\_std})$."""

    log_std: Float[Array, " action"]

    def __init__(self, action_size: int):
        self.log_std = jnp.zeros((action_size,), jnp.float32)

    def __call__(self, features: Float[Array, "*batch lstm"]) -> Float[Array, "*batch action"]:
        return jnp.broadcast_to(jnp.exp(self.log_std), features.shape[:-1] + self.log_std.shape)


class SoftplusStdHead(eqx.Module):
    """A state-dependent standard deviation: $\\sigma = \\operatorname{softplus}(W h + b)$."""

    linear: eqx.nn.Linear

    def __init__(self, lstm_features: int, action_size: int, *, key: PRNGKeyArray):
        self.linear = _linear(key, lstm_features, action_size, gain=0.01, bias=-1.0)

    def __call__(self, features: Float[Array, "*batch lstm"]) -> Float[Array, "*batch action"]:
        return self.squash(_apply(self.linear, features))

    @staticmethod
    def squash(pre: Array) -> Array:
        """The standard deviation from the linear layer's output."""
        return jax.nn.softplus(pre)


@eqx.filter_jit
def _init_layers(
    key: PRNGKeyArray,
    obs_dim: int,
    action_dim: int,
    hidden_features: int,
    lstm_features: int,
    discrete: bool,
    sigma_head: bool,
) -> tuple[
    eqx.nn.Linear,
    eqx.nn.LSTMCell,
    eqx.nn.Linear,
    "LogStdParameter | SoftplusStdHead | None",
    eqx.nn.Linear,
]:
    """The initial layers, made in one compiled call (sizes are static): op by op, the
    many small initialisers would each compile on first use, which is slow."""
    k_enc, k_cell, k_mu, k_sigma, k_critic = jax.random.split(key, 5)
    encoder = _linear(k_enc, obs_dim, hidden_features, math.sqrt(2.0))
    cell = _init_cell(k_cell, hidden_features, lstm_features)
    actor_mu = _linear(k_mu, lstm_features, action_dim, gain=0.01 if discrete else 1.0)
    if discrete:
        sigma = None
    elif sigma_head:
        sigma = SoftplusStdHead(lstm_features, action_dim, key=k_sigma)
    else:
        sigma = LogStdParameter(action_dim)
    critic = _linear(k_critic, lstm_features, 1, gain=0.01)
    return encoder, cell, actor_mu, sigma, critic


class LSTMActorCritic(eqx.Module):
    r"""A recurrent actor-critic: an MLP encoder, a single-layer LSTM torso, and linear
    policy and value heads.

    Two calling modes share one cell body:

    - **single step** (rollouts): `model(x, state)` with `x` of shape `(..., obs_dim)`
      reads the carry from `state`, advances it one step, and returns
      `(pi, value), state` with `pi` over `(..., action_space_size)` and `value` of shape
      `(..., 1)`;
    - **sequence** (training): `model.sequence(xs)` with time-major `xs` of shape
      `(T, B, obs_dim)` scans the cell over time and returns `(pi, value), carry` with
      one output per step.

    The carry is state, not a parameter: it lives in an `eqx.nn.State`, never in the
    model, so a saved model does not depend on the number of environments.

    !!! info "The reset convention: `episode_start`"
        `episode_start[t, b] == True` means *observation `t` of environment `b` begins a
        new episode*: the carry of `b` is set to zero **before** step `t`. The
        single-step equivalent is `state = model.reset(state, x.shape, mask=...)` before
        calling the model on the first observation of an episode.

    !!! example
        ```python
        import equinox as eqx, jax, jax.numpy as jnp
        import eqx_lstm_ac as lac

        model, state = eqx.nn.make_with_state(lac.LSTMActorCritic)(
            observation_space_size=8, action_space_size=2,
            action_space=lac.BoxSpace(-1.0, 1.0), carry_shape=(16,),
            key=jax.random.key(0))
        x = jnp.zeros((16, 8))
        (pi, value), state = model(x, state)       # (16, 2) policy, (16, 1) values
        ```
    """

    encoder: eqx.nn.Linear
    cell: eqx.nn.LSTMCell
    actor_mu: eqx.nn.Linear
    actor_sigma: LogStdParameter | SoftplusStdHead | None
    critic: eqx.nn.Linear
    bij: distrax.Bijector | None
    carry_index: eqx.nn.StateIndex
    obs_dim: int = eqx.field(static=True)
    action_dim: int = eqx.field(static=True)
    hidden_features: int = eqx.field(static=True)
    lstm_features: int = eqx.field(static=True)
    activation: str = eqx.field(static=True)
    actor_sigma_head: bool = eqx.field(static=True)
    discrete: bool = eqx.field(static=True)
    remat: bool = eqx.field(static=True)

    def __init__(
        self,
        observation_space_size: int,
        action_space_size: int,
        hidden_features: int = 64,
        lstm_features: int = 128,
        activation: Callable[[Array], Array] | str = jax.nn.gelu,
        action_space: distrax.Bijector | None = None,
        actor_sigma_head: bool = False,
        carry_shape: tuple[int, ...] = (),
        discrete: bool = False,
        remat: bool = False,
        *,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `observation_space_size`: `obs_dim`, the size of the last axis of an
          observation.
        - `action_space_size`: the number of action dimensions (continuous), or of
          actions (`discrete=True`).
        - `hidden_features`: width of the encoder output, the LSTM's input.
        - `lstm_features`: size of the LSTM's hidden and cell states; the heads read it.
        - `activation`: the encoder's activation, a function from
          [`eqx_lstm_ac.ACTIVATIONS`][] (e.g. `jax.nn.gelu`) or its name.
        - `action_space`: a bijector that constrains the Gaussian policy:
          [`eqx_lstm_ac.FreeSpace`][], [`eqx_lstm_ac.BoxSpace`][],
          [`eqx_lstm_ac.MaxNormSpace`][], any `distrax.Bijector`, or `None` (free). A
          scalar bijector is lifted to the action vector with `distrax.Block(b, 1)`.
        - `actor_sigma_head`: `False` for a state-independent `log_std` parameter,
          `True` for a linear head followed by softplus.
        - `carry_shape`: leading shape of the carry in the initial state made by
          `eqx.nn.make_with_state` (e.g. `(num_envs,)`); not part of the model.
        - `discrete`: a categorical policy over `action_space_size` actions, with
          `actor_mu` as its logits head.
        - `remat`: differentiate sequence mode through a plain scan with the step
          under `jax.checkpoint` instead of the hand-written reverse pass: the same
          values and gradients, about twice the memory (it keeps `h` and `c` of every
          step; the default keeps `h` of every step and `c` once per chunk), slower,
          and it supports forward mode (`jax.jvp`) too.
        - `key`: a `jax.random.key` for the initial parameters. (Keyword only.)

        **Raises:**

        `ValueError` for a non-positive size, an unknown activation, an action space
        given together with `discrete=True`, or a bijector of the wrong event rank.
        """
        _check_options(
            {
                "observation_space_size": observation_space_size,
                "action_space_size": action_space_size,
                "hidden_features": hidden_features,
                "lstm_features": lstm_features,
            },
            tuple(carry_shape),
            discrete,
            action_space,
            actor_sigma_head,
        )
        self.obs_dim = observation_space_size
        self.action_dim = action_space_size
        self.hidden_features = hidden_features
        self.lstm_features = lstm_features
        self.activation = _activation_name(activation)
        self.actor_sigma_head = actor_sigma_head
        self.discrete = discrete
        self.remat = remat

        layers = _init_layers(
            key,
            observation_space_size,
            action_space_size,
            hidden_features,
            lstm_features,
            discrete,
            actor_sigma_head,
        )
        self.encoder, self.cell, self.actor_mu, self.actor_sigma, self.critic = layers
        if discrete:
            self.bij = None
        else:
            self.bij = _lift(FreeSpace() if action_space is None else action_space)
        self.carry_index = eqx.nn.StateIndex(self.zero_carry(tuple(carry_shape)))

    # ------------------------------------------------------------------ properties

    @property
    def action_space(self) -> distrax.Bijector | None:
        """The action-space bijector as it was given (before lifting to vectors)."""
        return None if self.bij is None else _unlift(self.bij)

    @property
    def metadata(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this model (JSON-serialisable, apart
        from a user-defined `action_space`). `carry_shape` is not among them: the carry
        is not part of the model."""
        return {
            "observation_space_size": self.obs_dim,
            "action_space_size": self.action_dim,
            "hidden_features": self.hidden_features,
            "lstm_features": self.lstm_features,
            "activation": self.activation,
            "action_space": _describe_space(self.bij),
            "actor_sigma_head": self.actor_sigma_head,
            "discrete": self.discrete,
            "remat": self.remat,
        }

    # ------------------------------------------------------------------ carry

    def zero_carry(self, batch_shape: tuple[int, ...] = ()) -> LSTMCarry:
        """A carry of zeros with leading shape `batch_shape`."""
        z = jnp.zeros(tuple(batch_shape) + (self.lstm_features,), self.cell.weight_hh.dtype)
        return LSTMCarry(z, z)

    def carry(self, state: eqx.nn.State) -> LSTMCarry:
        """The carry held in `state`, e.g. to store with a rollout and feed back to
        [`eqx_lstm_ac.LSTMActorCritic.sequence`][] in training."""
        return state.get(self.carry_index)

    def init_state(self, carry_shape: tuple[int, ...] = ()) -> eqx.nn.State:
        """A fresh `eqx.nn.State` with a zero carry of leading shape `carry_shape`.

        Equivalent to the state `eqx.nn.make_with_state` returns, for any model, loaded
        ones included.
        """
        index = eqx.nn.StateIndex(self.zero_carry(tuple(carry_shape)))
        object.__setattr__(index, "marker", self.carry_index.marker)
        return eqx.nn.State(index)

    def _store(self, state: eqx.nn.State, carry: LSTMCarry) -> eqx.nn.State:
        """Write `carry` into `state`, also when its shape differs from the old one.

        `State.set` refuses a change of shape, so a carry of a new batch shape goes in
        through a substate of the right structure."""
        old = self.carry(state)
        if old.h.shape == carry.h.shape:
            return state.set(self.carry_index, carry)
        sub = state.substate(self.carry_index)
        sub = jtu.tree_unflatten(jtu.tree_structure(sub), jtu.tree_leaves(carry))
        return state.update(sub)

    # ------------------------------------------------------------------ checks

    def _check_carry(self, carry: LSTMCarry, batch: tuple[int, ...]) -> None:
        want = batch + (self.lstm_features,)
        for name, part in zip(("h", "c"), carry, strict=True):
            if tuple(part.shape) != want:
                raise ValueError(
                    f"carry.{name} must have shape {want} (batch shape {batch} and "
                    f"lstm_features={self.lstm_features}); got {tuple(part.shape)}."
                )

    # ------------------------------------------------------------------ the cell body

    def _step(self, x: Array, carry: tuple[Array, Array]) -> tuple[Array, Array]:
        """One step of encoder and LSTM for a batch: `x (..., obs_dim)`, carry `(..., H)`.

        Computes exactly what `eqx.nn.LSTMCell` computes (a test holds it), as batched
        matmuls `(..., I) @ (I, 4H)` rather than a vmap of matrix-vector products. Every
        operation acts on the last axis only, so the leading (batch) axes keep whatever
        sharding they have."""
        h, c = carry
        z = ACTIVATIONS[self.activation](_apply(self.encoder, x))
        cell = self.cell
        gates = matmul_t(z, cell.weight_ih) + matmul_t(h, cell.weight_hh)
        if cell.bias is not None:
            gates = _add_bias(gates, cell.bias)
        i, f, g, o = jnp.split(lstm_gates(gates), 4, axis=-1)
        c = f * c + i * g
        h = o * jnp.tanh(c)
        return h, c

    def _weights(self) -> LSTMWeights:
        """The encoder's, the cell's and the heads' readout arrays, for the sequence kernel."""
        cell = self.cell
        bias = cell.bias
        if bias is None:
            bias = jnp.zeros((4 * self.lstm_features,), cell.weight_hh.dtype)
        b_enc = self.encoder.bias
        if b_enc is None:
            b_enc = jnp.zeros((self.hidden_features,), self.encoder.weight.dtype)
        w_out, b_out = _readout_weights(self)
        return LSTMWeights(
            self.encoder.weight, b_enc, cell.weight_ih, cell.weight_hh, bias, w_out, b_out
        )

    def _scan_remat(
        self, xs: Array, carry: tuple[Array, Array], episode_start: Array | None
    ) -> tuple[tuple[Array, Array], Array]:
        """The plain scan with the step under `jax.checkpoint`: the backward pass keeps
        only the carries and recomputes each step."""

        @jax.checkpoint
        def body(hc, inp):
            x, start = inp
            if start is not None:
                keep = ~start[:, None]
                hc = (jnp.where(keep, hc[0], 0.0), jnp.where(keep, hc[1], 0.0))
            hc = self._step(x, hc)
            return hc, hc[0]

        return jax.lax.scan(body, carry, (xs, episode_start))

    def _heads(self, features: Array) -> tuple[distrax.Distribution, Array]:
        return _policy_and_value(self, features)

    # ------------------------------------------------------------------ single step

    def __call__(
        self, x: Float[Array, "*batch obs"], state: eqx.nn.State
    ) -> tuple[tuple[distrax.Distribution, Float[Array, "*batch 1"]], eqx.nn.State]:
        """Single-step mode: one observation per environment.

        **Arguments:**

        - `x`: observations of shape `(..., obs_dim)`.
        - `state`: the `eqx.nn.State` holding the carry. When the carry's leading shape
          differs from `x.shape[:-1]`, the step starts from zeros of the new shape.

        **Returns:**

        `(pi, value), state`: the policy over `(..., action_space_size)`, the values of
        shape `(..., 1)`, and the state with the advanced carry.

        **Raises:**

        `ValueError` if the last axis of `x` is not `obs_dim`.
        """
        _check_obs(self.obs_dim, x, "The observation x")
        lead = tuple(x.shape[:-1])
        carry = self.carry(state)
        if tuple(carry.h.shape[:-1]) != lead:
            carry = self.zero_carry(lead)
        # No flattening of the leading axes: a reshape would gather a batch axis that is
        # sharded across devices but not the first one.
        carry = LSTMCarry(*self._step(x, (carry.h, carry.c)))
        return self._heads(carry.h), self._store(state, carry)

    @eqx.filter_jit
    def reset(
        self,
        state: eqx.nn.State,
        shape: tuple[int, ...],
        mask: Bool[Array, " n"] | None = None,
    ) -> eqx.nn.State:
        """Zero the carry, all of it or that of the environments in `mask`.

        **Arguments:**

        - `state`: the state holding the carry.
        - `shape`: the shape of the observations that come next, `(..., obs_dim)`.
          If the carry's leading shape differs from `shape[:-1]`, the new state holds
          fresh zeros of that shape (whatever `mask` says).
        - `mask`: `None` to zero everything, or a boolean array of shape `(shape[0],)`:
          `mask[i]` true zeros the carry of environment `i` (the first axis).

        **Returns:**

        The state with the reset carry.

        **Raises:**

        `ValueError` if `shape[-1]` is not `obs_dim` or `mask` is not of shape
        `(shape[0],)`.
        """
        shape = tuple(shape)
        if len(shape) < 1 or shape[-1] != self.obs_dim:
            raise ValueError(
                f"reset needs the observation shape (..., {self.obs_dim}); got {shape}."
            )
        lead = shape[:-1]
        if mask is not None and (len(lead) == 0 or tuple(mask.shape) != (lead[0],)):
            want = f"({lead[0]},)" if lead else "no mask (an unbatched carry)"
            raise ValueError(
                f"reset's mask must have shape {want} for observations of shape {shape}; "
                f"got mask of shape {tuple(mask.shape)}."
            )
        carry = self.carry(state)
        if tuple(carry.h.shape[:-1]) != lead:
            return self._store(state, self.zero_carry(lead))
        # Zero through `where` on the old carry, not with fresh zeros, so that the new
        # carry keeps the old one's placement (e.g. sharded along the batch axis).
        keep = False if mask is None else ~mask.reshape(mask.shape + (1,) * len(lead))
        carry = LSTMCarry(*(jnp.where(keep, part, 0.0) for part in carry))
        return self._store(state, carry)

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
        """One compiled rollout step: choose an action and advance the carry.

        **Arguments:**

        - `x`: observations of shape `(..., obs_dim)`.
        - `state`: the state holding the carry.
        - `key`: a `jax.random.key` for sampling. (Keyword only.)
        - `deterministic`: take the deterministic action (the bijector applied to the
          mean; the most probable action for a discrete policy) instead of sampling.

        **Returns:**

        `(action, log_prob, value), state`: actions `(..., action_space_size)` (or
        `(...)` integers for a discrete policy), their log-probabilities `(...)`, the
        values `(...)`, and the advanced state. The log-probability is computed from the
        action exactly as [`eqx_lstm_ac.LSTMActorCritic.evaluate`][] computes it, so the
        first PPO probability ratio is one.
        """
        (pi, value), state = self(x, state)
        return _act(pi, value, key, deterministic), state

    # ------------------------------------------------------------------ sequences

    def sequence(
        self,
        xs: Float[Array, "T B obs"],
        carry: LSTMCarry | tuple[Float[Array, "B lstm"], Float[Array, "B lstm"]] | None = None,
        episode_start: Bool[Array, "T B"] | None = None,
    ) -> tuple[tuple[distrax.Distribution, Float[Array, "T B 1"]], LSTMCarry]:
        """Sequence mode: scan the LSTM over a time-major batch of sequences.

        **Arguments:**

        - `xs`: observations of shape `(T, B, obs_dim)`.
        - `carry`: the carry `(h, c)`, each `(B, lstm_features)`, before step 0; zeros
          if `None`. In training, pass the carry stored at the start of the rollout
          ([`eqx_lstm_ac.LSTMActorCritic.carry`][]).
        - `episode_start`: boolean `(T, B)`; `episode_start[t, b]` true means
          observation `t` of environment `b` begins a new episode, so the carry of `b`
          is zeroed before step `t`. `None` means no episode starts inside `xs`.

        **Returns:**

        `(pi, value), carry`: the policy over `(T, B, action_space_size)`, values of
        shape `(T, B, 1)`, and the carry after the last step.

        **Raises:**

        `ValueError` if `xs` is not `(T, B, obs_dim)`, or `episode_start` or `carry`
        do not match it.

        !!! info "Differentiation"
            Without `remat`, the reverse pass is hand-written (`jax.custom_vjp`): the
            recurrence runs step by step, and the gates (recomputed) and the weight
            gradients are one matmul per chunk of about 1024 rows (steps x batch). It
            equals `jax.grad` of the plain scan to float32 precision and
            supports reverse mode (`jax.grad`, `jax.vjp`) under `jit` and `vmap`, but
            not forward mode (`jax.jvp`); use `remat=True` for that.
        """
        if xs.ndim != 3:
            raise ValueError(
                f"sequence expects time-major observations of shape (T, B, {self.obs_dim}); "
                f"got a {xs.ndim}-D array of shape {tuple(xs.shape)}. For one step, "
                "call the model itself."
            )
        _check_obs(self.obs_dim, xs, "The observations xs")
        t_len, batch = xs.shape[0], xs.shape[1]
        if episode_start is not None:
            if tuple(episode_start.shape) != (t_len, batch):
                raise ValueError(
                    f"episode_start must have shape (T, B) = {(t_len, batch)}; got "
                    f"{tuple(episode_start.shape)}."
                )
            if episode_start.dtype != jnp.bool_:
                raise ValueError(f"episode_start must be boolean; got dtype {episode_start.dtype}.")
        if carry is None:
            # Zeros made from `xs`, not constants: inside `shard_map` they then vary over
            # the same mesh axes as `xs`, as `lax.scan` requires of its carry.
            zero = jnp.zeros_like(xs[0, :, :1], self.cell.weight_hh.dtype)
            zero = jnp.broadcast_to(zero, (batch, self.lstm_features))
            carry = LSTMCarry(zero, zero)
        else:
            carry = LSTMCarry(*carry)
            self._check_carry(carry, (batch,))

        if self.remat:
            (h, c), features = self._scan_remat(xs, (carry.h, carry.c), episode_start)
            return self._heads(features), LSTMCarry(h, c)
        keep = None if episode_start is None else (~episode_start)[:, :, None].astype(xs.dtype)
        ys, h, c = lstm_sequence(
            ACTIVATIONS[self.activation], self._weights(), xs, keep, carry.h, carry.c
        )
        return _policy_and_value_from_readout(self, ys), LSTMCarry(h, c)

    @eqx.filter_jit
    def evaluate(
        self,
        xs: Float[Array, "T B obs"],
        actions: Float[Array, "T B action"] | Int[Array, "T B"],
        carry: LSTMCarry | tuple[Float[Array, "B lstm"], Float[Array, "B lstm"]] | None = None,
        episode_start: Bool[Array, "T B"] | None = None,
    ) -> tuple[Float[Array, "T B"], Float[Array, "T B"], Float[Array, "T B"]]:
        """The training pass, compiled: log-probabilities of stored actions, entropies
        and values for every step of a batch of sequences.

        **Arguments:** as [`eqx_lstm_ac.LSTMActorCritic.sequence`][], plus `actions`:
        the actions taken, `(T, B, action_space_size)` (or `(T, B)` integers for a
        discrete policy).

        **Returns:**

        `(log_prob, entropy, value)`, each of shape `(T, B)`.
        """
        (pi, value), _ = self.sequence(xs, carry, episode_start)
        return jnp.asarray(pi.log_prob(actions)), jnp.asarray(pi.entropy()), value[..., 0]
